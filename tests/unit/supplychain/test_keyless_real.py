"""The legacy keyless path (cosign's certificate + ``dev.sigstore.cosign/bundle`` annotations)
against real public-good material: the Fulcio certificates, Rekor inclusion promises and
hashedrekord entries of the real bundles in tests/data/sigstore, rearranged into the
annotation format cosign writes. This exercises the real Rekor log keys, the real Fulcio
chains at the signing time, and the real CT log SCTs of the trusted roots."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from samplerguard.errors import VerificationError
from samplerguard.policy.spec import KeylessIdentity
from samplerguard.supplychain import load_trusted_root
from samplerguard.supplychain.keyless import verify_keyless

GH_OAUTH = "https://github.com/login/oauth"
GHA = "https://token.actions.githubusercontent.com"
RFC8785 = "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2"

CASES = [
    ("bundle.txt", "staging", "a@tny.town", GH_OAUTH),
    ("bundle_v3.txt", "staging", "william@yossarian.net", GH_OAUTH),
    ("bundle_v3_alt.txt", "staging", "william@yossarian.net", GH_OAUTH),
    ("bundle_v3_github.whl", "production", RFC8785, GHA),
]


def legacy_material(sig: Path, artifact: str) -> dict[str, Any]:
    """What cosign would have put in the signature layer's annotations for this signing."""
    bundle = json.loads((sig / f"{artifact}.sigstore").read_text())
    vm = bundle["verificationMaterial"]
    raw_cert = (
        vm["certificate"]["rawBytes"]
        if "certificate" in vm
        else vm["x509CertificateChain"]["certificates"][0]["rawBytes"]
    )
    cert = x509.load_der_x509_certificate(base64.b64decode(raw_cert))
    entry = vm["tlogEntries"][0]
    return {
        "certificate_pem": cert.public_bytes(Encoding.PEM),
        "chain_pem": None,
        "rekor_bundle": {
            "SignedEntryTimestamp": entry["inclusionPromise"]["signedEntryTimestamp"],
            "Payload": {
                "body": entry["canonicalizedBody"],
                "integratedTime": int(entry["integratedTime"]),
                "logIndex": int(entry["logIndex"]),
                "logID": base64.b64decode(entry["logId"]["keyId"]).hex(),
            },
        },
        "signature": base64.b64decode(bundle["messageSignature"]["signature"]),
        "signed_bytes": (sig / artifact).read_bytes(),
        "payload": (sig / artifact).read_bytes(),
    }


@pytest.fixture(scope="module")
def sig(shared_testdata: Path) -> Path:
    return shared_testdata / "sigstore"


@pytest.fixture(scope="module")
def roots(sig: Path) -> dict[str, Any]:
    return {
        "staging": load_trusted_root(sig / "trusted_root.staging.json"),
        "production": load_trusted_root(sig / "trusted_root.production.json"),
    }


@pytest.mark.parametrize(("artifact", "root", "subject", "issuer"), CASES)
def test_real_keyless_material_verifies(
    sig: Path, roots: dict[str, Any], artifact: str, root: str, subject: str, issuer: str
) -> None:
    identity = verify_keyless(
        **legacy_material(sig, artifact),
        identities=[KeylessIdentity(subject=subject, issuer=issuer)],
        trusted_root=roots[root],
    )
    assert subject in identity.subjects and identity.issuer == issuer


@pytest.mark.parametrize(("artifact", "root", "subject", "issuer"), CASES)
def test_real_keyless_material_fails_elsewhere(
    sig: Path, roots: dict[str, Any], artifact: str, root: str, subject: str, issuer: str
) -> None:
    material = legacy_material(sig, artifact)
    ident = [KeylessIdentity(subject=subject, issuer=issuer)]
    other = roots["production" if root == "staging" else "staging"]
    with pytest.raises(VerificationError, match="Rekor SET does not verify"):
        verify_keyless(**material, identities=ident, trusted_root=other)
    with pytest.raises(VerificationError, match="identity mismatch"):
        verify_keyless(
            **material,
            identities=[KeylessIdentity(subjectRegExp=".*", issuer="https://accounts.google.com")],
            trusted_root=roots[root],
        )
    tampered = {
        **material,
        "signed_bytes": material["signed_bytes"] + b"!",
        "payload": material["payload"] + b"!",
    }
    with pytest.raises(VerificationError, match="signature does not verify"):
        verify_keyless(**tampered, identities=ident, trusted_root=roots[root])
    # A forged SET (one bit) is caught before anything else is believed.
    forged_set = base64.b64decode(material["rekor_bundle"]["SignedEntryTimestamp"])
    forged_set = forged_set[:-1] + bytes([forged_set[-1] ^ 1])
    forged = {
        **material,
        "rekor_bundle": {
            **material["rekor_bundle"],
            "SignedEntryTimestamp": base64.b64encode(forged_set).decode(),
        },
    }
    with pytest.raises(VerificationError, match="Rekor SET"):
        verify_keyless(**forged, identities=ident, trusted_root=roots[root])
    # The log saw it at another time: the SET no longer covers the entry.
    shifted = json.loads(json.dumps(material["rekor_bundle"]))
    shifted["Payload"]["integratedTime"] += 3600
    with pytest.raises(VerificationError, match="Rekor SET"):
        verify_keyless(
            **{**material, "rekor_bundle": shifted}, identities=ident, trusted_root=roots[root]
        )


def test_cve_2022_36056_material_fails(sig: Path, roots: dict[str, Any]) -> None:
    """The entry is genuine and promised by the log, but about other materials."""
    material = legacy_material(sig, "bundle_cve_2022_36056.txt")
    with pytest.raises(VerificationError, match="Rekor entry is for"):
        verify_keyless(
            **material,
            identities=[KeylessIdentity(subjectRegExp=".*", issuerRegExp=".*")],
            trusted_root=roots["staging"],
        )


BAD_PEM = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


def test_malformed_rekor_annotations(sig: Path, roots: dict[str, Any]) -> None:
    from samplerguard.errors import MalformedInputError

    material = legacy_material(sig, "bundle_v3.txt")
    ident = [KeylessIdentity(subject="william@yossarian.net", issuer=GH_OAUTH)]
    good = material["rekor_bundle"]
    broken: list[Any] = [
        {},
        {"SignedEntryTimestamp": "!!", "Payload": good["Payload"]},
        {**good, "Payload": {**good["Payload"], "integratedTime": "soon"}},
        {**good, "Payload": {**good["Payload"], "logID": "zz"}},
        {**good, "Payload": {**good["Payload"], "body": "bm90IGpzb24="}},
    ]
    for bad in broken:
        with pytest.raises(MalformedInputError):
            verify_keyless(
                **{**material, "rekor_bundle": bad}, identities=ident, trusted_root=roots["staging"]
            )
    with pytest.raises(VerificationError, match="no Rekor bundle"):
        verify_keyless(
            **{**material, "rekor_bundle": None}, identities=ident, trusted_root=roots["staging"]
        )
    with pytest.raises(VerificationError, match="no certificate"):
        verify_keyless(
            **{**material, "certificate_pem": None}, identities=ident, trusted_root=roots["staging"]
        )
    with pytest.raises(MalformedInputError, match="not PEM"):
        verify_keyless(
            **{
                **material,
                "certificate_pem": BAD_PEM,
            },
            identities=ident,
            trusted_root=roots["staging"],
        )
