"""A real Sigstore DSSE bundle attached to an image as an OCI referrer (bundle format)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from samplerguard.policy.spec import (
    AttestationRule,
    Authority,
    ImageRule,
    KeyAuthority,
    KeylessAuthority,
    KeylessIdentity,
    SamplerPolicySpec,
)
from samplerguard.supplychain import ImageVerifier, TrustedRoots, load_trusted_root
from samplerguard.supplychain.cosign import (
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    simple_signing_payload,
    tag_for,
)
from tests.support.fakeregistry import HOST, OCI_MANIFEST, FakeRegistry, digest_of
from tests.support.publish import Signer

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
# The statement inside a.dsse.staging-rekor-v2.txt.sigstore.json is about this digest.
SUBJECT = "sha256:a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf"
BEACON = (
    "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/"
    ".github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main"
)
GHA = "https://token.actions.githubusercontent.com"


def _attach_bundle(reg: FakeRegistry, subject: str, raw: bytes) -> None:
    layer = reg.put_blob(raw)
    layer["mediaType"] = BUNDLE_TYPE
    config = reg.put_blob(b"{}")
    config["mediaType"] = "application/vnd.oci.empty.v1+json"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": BUNDLE_TYPE,
            "config": config,
            "layers": [layer],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
        }
    ).encode()
    reg.put_manifest("acme/x", manifest)
    desc = {
        "mediaType": OCI_MANIFEST,
        "digest": digest_of(manifest),
        "size": len(manifest),
        "artifactType": BUNDLE_TYPE,
    }
    reg.referrers = {**(reg.referrers or {}), subject: [desc]}


def _sign_legacy(reg: FakeRegistry, signer: Signer, digest: str) -> None:
    payload = simple_signing_payload(f"{HOST}/acme/x", digest)
    layer = reg.put_blob(payload)
    layer["mediaType"] = SIMPLE_SIGNING_MEDIA_TYPE
    layer["annotations"] = {SIGNATURE_ANNOTATION: base64.b64encode(signer.sign(payload)).decode()}
    config = reg.put_blob(b"{}")
    raw = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
    ).encode()
    reg.put_manifest("acme/x", raw, tag=tag_for(digest, "sig"))


@pytest.fixture
def setup(shared_testdata: Path) -> tuple[ImageVerifier, Signer, FakeRegistry, SamplerPolicySpec]:
    sig = shared_testdata / "sigstore"
    reg = FakeRegistry()
    _attach_bundle(reg, SUBJECT, (sig / "a.dsse.staging-rekor-v2.txt.sigstore.json").read_bytes())
    release = Signer.generate()
    _sign_legacy(reg, release, SUBJECT)
    roots = TrustedRoots(named={"staging": load_trusted_root(sig / "trusted_root.staging.json")})
    spec = SamplerPolicySpec(
        images=[
            ImageRule(
                glob=f"{HOST}/acme/*",
                authorities=[
                    Authority(name="release", key=KeyAuthority(public_key=release.public_pem)),
                    Authority(
                        name="beacon",
                        keyless=KeylessAuthority(
                            identities=[KeylessIdentity(subject=BEACON, issuer=GHA)],
                            trusted_root="staging",
                        ),
                    ),
                ],
            )
        ],
        attestations=[
            AttestationRule(
                name="slsa",
                predicate_type="https://slsa.dev/provenance/v1",
                builder_ids=[
                    "https://github.com/sigstore-conformance/rekor2-dsse-hashedrekord-regen"
                ],
            )
        ],
    )
    return ImageVerifier(reg.client(), trusted_roots=roots), release, reg, spec


def test_bundle_attestation_for_this_digest_passes(
    setup: tuple[ImageVerifier, Signer, FakeRegistry, SamplerPolicySpec],
) -> None:
    verifier, _, _, spec = setup
    verdict = verifier.verify(f"{HOST}/acme/x@{SUBJECT}", spec, policy_name="p")
    assert verdict.passed, verdict.summary()
    slsa = next(c for c in verdict.checks if c.name == "attestation/slsa")
    assert "bundle referrer" in slsa.detail and f"beacon ({BEACON}" in slsa.detail


def test_bundle_attestation_for_another_image_is_rejected(
    setup: tuple[ImageVerifier, Signer, FakeRegistry, SamplerPolicySpec],
    shared_testdata: Path,
) -> None:
    verifier, release, reg, spec = setup
    other = reg.image()
    _sign_legacy(reg, release, other)
    # The same genuine bundle, attached to another image.
    raw = (shared_testdata / "sigstore" / "a.dsse.staging-rekor-v2.txt.sigstore.json").read_bytes()
    _attach_bundle(reg, other, raw)
    verdict = verifier.verify(f"{HOST}/acme/x:1.0", spec, policy_name="p")
    assert not verdict.passed
    assert [c.name for c in verdict.failed] == ["attestation/slsa"]
    detail = verdict.failed[0].detail
    assert "is for another artifact" in detail and f"got ['{SUBJECT}'], expected {other}" in detail


def test_bundle_with_wrong_identity_is_not_kept(
    setup: tuple[ImageVerifier, Signer, FakeRegistry, SamplerPolicySpec],
) -> None:
    verifier, _, _, spec = setup
    rule = spec.images[0]
    wrong = rule.authorities[1].model_copy(
        update={
            "keyless": KeylessAuthority(
                identities=[KeylessIdentity(subject="someone@else.example", issuer=GHA)],
                trusted_root="staging",
            )
        }
    )
    spec = spec.model_copy(
        update={"images": [rule.model_copy(update={"authorities": [rule.authorities[0], wrong]})]}
    )
    verdict = verifier.verify(f"{HOST}/acme/x@{SUBJECT}", spec, policy_name="p")
    assert not verdict.passed
    assert [c.name for c in verdict.failed] == ["attestation/slsa"]
