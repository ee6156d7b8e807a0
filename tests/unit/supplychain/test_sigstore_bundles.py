"""The real Sigstore bundles in tests/data/sigstore, verified offline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.policy.spec import KeylessIdentity
from samplerguard.supplychain import load_trusted_root, verify_artifact_bundle, verify_dsse_bundle

GH_OAUTH = "https://github.com/login/oauth"
GHA = "https://token.actions.githubusercontent.com"
RFC8785 = "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2"
BEACON = (
    "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/"
    ".github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main"
)

ARTIFACT_CASES = [
    ("bundle.txt", "bundle.txt.sigstore", "staging", "a@tny.town", GH_OAUTH),
    ("bundle_v3.txt", "bundle_v3.txt.sigstore", "staging", "william@yossarian.net", GH_OAUTH),
    (
        "bundle_v3_alt.txt",
        "bundle_v3_alt.txt.sigstore",
        "staging",
        "william@yossarian.net",
        GH_OAUTH,
    ),
    ("bundle_v3_github.whl", "bundle_v3_github.whl.sigstore", "production", RFC8785, GHA),
]


@pytest.fixture(scope="module")
def sig(shared_testdata: Path) -> Path:
    return shared_testdata / "sigstore"


@pytest.fixture(scope="module")
def roots(sig: Path) -> dict[str, object]:
    return {
        "staging": load_trusted_root(sig / "trusted_root.staging.json"),
        "production": load_trusted_root(sig / "trusted_root.production.json"),
    }


@pytest.mark.parametrize(("artifact", "bundle", "root", "subject", "issuer"), ARTIFACT_CASES)
def test_real_bundles_verify(
    sig: Path,
    roots: dict[str, object],
    artifact: str,
    bundle: str,
    root: str,
    subject: str,
    issuer: str,
) -> None:
    identity = verify_artifact_bundle(
        (sig / bundle).read_bytes(),
        (sig / artifact).read_bytes(),
        [KeylessIdentity(subject=subject, issuer=issuer)],
        roots[root],
    )
    assert subject in identity.subjects and identity.issuer == issuer


@pytest.mark.parametrize(("artifact", "bundle", "root", "subject", "issuer"), ARTIFACT_CASES)
def test_real_bundles_fail_against_the_other_root(
    sig: Path,
    roots: dict[str, object],
    artifact: str,
    bundle: str,
    root: str,
    subject: str,
    issuer: str,
) -> None:
    other = roots["production" if root == "staging" else "staging"]
    with pytest.raises(VerificationError, match="does not verify"):
        verify_artifact_bundle(
            (sig / bundle).read_bytes(),
            (sig / artifact).read_bytes(),
            [KeylessIdentity(subject=subject, issuer=issuer)],
            other,
        )


@pytest.mark.parametrize(("artifact", "bundle", "root", "subject", "issuer"), ARTIFACT_CASES)
@pytest.mark.parametrize("wrong", ["subject", "issuer"])
def test_real_bundles_fail_for_another_identity(
    sig: Path,
    roots: dict[str, object],
    artifact: str,
    bundle: str,
    root: str,
    subject: str,
    issuer: str,
    wrong: str,
) -> None:
    ident = (
        KeylessIdentity(subject="mallory@evil.example", issuer=issuer)
        if wrong == "subject"
        else KeylessIdentity(subject=subject, issuer="https://accounts.google.com")
    )
    with pytest.raises(VerificationError, match="identity mismatch"):
        verify_artifact_bundle(
            (sig / bundle).read_bytes(), (sig / artifact).read_bytes(), [ident], roots[root]
        )


def test_real_bundle_fails_for_another_artifact(sig: Path, roots: dict[str, object]) -> None:
    with pytest.raises(VerificationError, match="does not verify"):
        verify_artifact_bundle(
            (sig / "bundle.txt.sigstore").read_bytes(),
            b"not the signed artifact",
            [KeylessIdentity(subject="a@tny.town", issuer=GH_OAUTH)],
            roots["staging"],
        )


def test_cve_2022_36056_bundle_fails(sig: Path, roots: dict[str, object]) -> None:
    # The log entry does not match the other materials: with any identity, it must fail.
    for ident in (
        KeylessIdentity(subject="a@tny.town", issuer=GH_OAUTH),
        KeylessIdentity(subjectRegExp=".*", issuerRegExp=".*"),
    ):
        with pytest.raises(VerificationError):
            verify_artifact_bundle(
                (sig / "bundle_cve_2022_36056.txt.sigstore").read_bytes(),
                (sig / "bundle_cve_2022_36056.txt").read_bytes(),
                [ident],
                roots["staging"],
            )


def test_invalid_bundle_version_does_not_parse(sig: Path, roots: dict[str, object]) -> None:
    with pytest.raises(MalformedInputError, match="not a Sigstore bundle"):
        verify_artifact_bundle(
            (sig / "bundle_invalid_version.txt.sigstore").read_bytes(),
            (sig / "bundle_invalid_version.txt").read_bytes(),
            [KeylessIdentity(subjectRegExp=".*", issuerRegExp=".*")],
            roots["staging"],
        )


A_TXT = "sha256:a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf"


def test_real_dsse_bundle(sig: Path, roots: dict[str, object]) -> None:
    raw = (sig / "a.dsse.staging-rekor-v2.txt.sigstore.json").read_bytes()
    statement, identity = verify_dsse_bundle(
        raw, [KeylessIdentity(subject=BEACON, issuer=GHA)], roots["staging"], digest=A_TXT
    )
    assert statement.predicate_type == "https://slsa.dev/provenance/v1"
    assert [s.name for s in statement.subjects] == ["a.txt"]
    assert BEACON in identity.subjects
    with pytest.raises(VerificationError, match="identity mismatch"):
        verify_dsse_bundle(
            raw, [KeylessIdentity(subject=BEACON, issuer=GH_OAUTH)], roots["staging"], digest=A_TXT
        )
    with pytest.raises(VerificationError):
        verify_dsse_bundle(
            raw, [KeylessIdentity(subject=BEACON, issuer=GHA)], roots["production"], digest=A_TXT
        )


def test_real_dsse_bundle_is_bound_to_its_artifact(sig: Path, roots: dict[str, object]) -> None:
    """A valid bundle about a.txt does not vouch for any other digest."""
    raw = (sig / "a.dsse.staging-rekor-v2.txt.sigstore.json").read_bytes()
    other = "sha256:" + hashlib.sha256(b"another artifact").hexdigest()
    with pytest.raises(
        VerificationError,
        match=r"is for another artifact \(subject digest mismatch: got \['sha256:a0cfc7.*" + other,
    ):
        verify_dsse_bundle(
            raw, [KeylessIdentity(subject=BEACON, issuer=GHA)], roots["staging"], digest=other
        )


def test_garbage_is_not_a_bundle(roots: dict[str, object]) -> None:
    for raw in (b"", b"{}", b"[]", b"\xff\xfe", b'{"mediaType": 5}', b"{" * 10000):
        with pytest.raises(MalformedInputError):
            verify_artifact_bundle(
                raw, b"x", [KeylessIdentity(subject="a", issuer="b")], roots["staging"]
            )


def test_v01_bundle_with_only_the_inclusion_promise(sig: Path, roots: dict[str, object]) -> None:
    """A v0.1 bundle needs no inclusion proof: the real v0.1 bundle without its proof still
    verifies on its promise, and still fails every must-fail check."""
    doc = json.loads((sig / "bundle.txt.sigstore").read_bytes())
    del doc["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]
    raw = json.dumps(doc).encode()
    artifact = (sig / "bundle.txt").read_bytes()
    who = [KeylessIdentity(subject="a@tny.town", issuer=GH_OAUTH)]
    identity = verify_artifact_bundle(raw, artifact, who, roots["staging"])
    assert "a@tny.town" in identity.subjects
    with pytest.raises(VerificationError, match="signature does not verify"):
        verify_artifact_bundle(raw, artifact + b"x", who, roots["staging"])
    with pytest.raises(VerificationError, match="certificate identity mismatch"):
        verify_artifact_bundle(
            raw,
            artifact,
            [KeylessIdentity(subject="b@tny.town", issuer=GH_OAUTH)],
            roots["staging"],
        )
    with pytest.raises(VerificationError, match="Rekor SET does not verify"):
        verify_artifact_bundle(raw, artifact, who, roots["production"])
    del doc["verificationMaterial"]["tlogEntries"][0]["inclusionPromise"]
    with pytest.raises(MalformedInputError, match="inclusion promise"):
        verify_artifact_bundle(json.dumps(doc).encode(), artifact, who, roots["staging"])
