"""Real npm attestations (tests/data/supplychain/npm-provenance, from slsa-verifier's test data):
Sigstore bundles v0.1 (inclusion promise only) and v0.2, Rekor ``intoto`` 0.0.2 entries,
keyless SLSA provenance and the npm registry's managed-key publish attestations."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.policy.spec import KeylessIdentity
from samplerguard.supplychain import load_trusted_root, verify_dsse_bundle, verify_key_bundle
from samplerguard.supplychain.keys import PublicKey, load_public_key
from tests.support.publish import Signer

DATA = Path(__file__).parents[2] / "data" / "supplychain"
NPM = DATA / "npm-provenance"
GHA = "https://token.actions.githubusercontent.com"
PUBLISH = "https://github.com/npm/attestation/tree/main/specs/publish/v0.1"
PACKAGES = {
    # package: (bundle version, SLSA predicate, workflow identity)
    "gundam-visor-cli-v1-tag": (
        "0.2",
        "https://slsa.dev/provenance/v1",
        "https://github.com/ramonpetgrave64/gundam-visor/.github/workflows/npm-publish.yml"
        "@refs/tags/v1.0.1",
    ),
    "provenance-npm-test-cli-v1-prega": (
        "0.2",
        "https://slsa.dev/provenance/v1",
        "https://github.com/sigstore/sigstore-js/.github/workflows/release.yml@refs/heads/main",
    ),
    "provenance-npm-test-cli-v02-prega": (
        "0.1",
        "https://slsa.dev/provenance/v0.2",
        "https://github.com/laurentsimon/provenance-npm-test/.github/workflows/release.yml"
        "@refs/heads/main",
    ),
    "supreme-googles-cli-v02-tag": (
        "0.1",
        "https://slsa.dev/provenance/v0.2",
        "https://github.com/trishankatdatadog/supreme-goggles/.github/workflows/npm-publish.yml"
        "@refs/tags/v1.0.5",
    ),
}


@pytest.fixture(scope="module")
def production() -> Any:
    return load_trusted_root(DATA / "trusted_root.production.json")


@pytest.fixture(scope="module")
def npm_key() -> PublicKey:
    return load_public_key((NPM / "npm-registry-key.pem").read_text())


def _bundles(package: str) -> tuple[str, dict[str, bytes]]:
    doc = json.loads((NPM / f"{package}.tgz.json").read_text())
    digest = "sha512:" + hashlib.sha512((NPM / f"{package}.tgz").read_bytes()).hexdigest()
    return digest, {
        a["predicateType"]: json.dumps(a["bundle"]).encode() for a in doc["attestations"]
    }


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_keyless_provenance_verifies(package: str, production: Any) -> None:
    version, predicate, workflow = PACKAGES[package]
    digest, bundles = _bundles(package)
    raw = bundles[predicate]
    assert json.loads(raw)["mediaType"].endswith(f"version={version}")
    statement, identity = verify_dsse_bundle(
        raw, [KeylessIdentity(subject=workflow, issuer=GHA)], production, digest=digest
    )
    assert statement.predicate_type == predicate
    assert workflow in identity.subjects
    with pytest.raises(VerificationError, match="certificate identity mismatch"):
        verify_dsse_bundle(
            raw,
            [KeylessIdentity(subject=workflow + "x", issuer=GHA)],
            production,
            digest=digest,
        )
    with pytest.raises(VerificationError, match="is for another artifact"):
        verify_dsse_bundle(
            raw, [KeylessIdentity(subject=workflow, issuer=GHA)], production, digest="sha512:00"
        )


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_managed_key_publish_attestation_verifies(
    package: str, production: Any, npm_key: PublicKey
) -> None:
    digest, bundles = _bundles(package)
    statement = verify_key_bundle(bundles[PUBLISH], npm_key, production, digest=digest)
    assert statement.predicate_type == PUBLISH
    other = Signer.generate()
    with pytest.raises(VerificationError, match="DSSE signature does not verify with key"):
        verify_key_bundle(
            bundles[PUBLISH], PublicKey(other.key.public_key()), production, digest=digest
        )
    with pytest.raises(VerificationError, match="signed with a managed key, not a certificate"):
        verify_dsse_bundle(
            bundles[PUBLISH], [KeylessIdentity(subject="a", issuer=GHA)], production, digest=digest
        )
    _, predicate, _ = PACKAGES[package]
    with pytest.raises(VerificationError, match="signed with a certificate"):
        verify_key_bundle(bundles[predicate], npm_key, production, digest=digest)


def test_altered_statements_fail(production: Any, npm_key: PublicKey) -> None:
    workflow = PACKAGES["gundam-visor-cli-v1-tag"][2]
    identities = [KeylessIdentity(subject=workflow, issuer=GHA)]
    for name, predicate, message in (
        ("invalidsigprov", "https://slsa.dev/provenance/v1", "signature does not verify"),
        ("invalidsigpub", PUBLISH, "DSSE signature does not verify with key"),
    ):
        doc = json.loads((NPM / f"gundam-visor-cli-v1-tag-{name}.tgz.json").read_text())
        raw = json.dumps(
            next(a["bundle"] for a in doc["attestations"] if a["predicateType"] == predicate)
        ).encode()
        digest, _ = _bundles("gundam-visor-cli-v1-tag")
        with pytest.raises(VerificationError, match=message):
            if predicate == PUBLISH:
                verify_key_bundle(raw, npm_key, production, digest=digest)
            else:
                verify_dsse_bundle(raw, identities, production, digest=digest)


def test_log_evidence_is_checked(production: Any, npm_key: PublicKey) -> None:
    digest, bundles = _bundles("gundam-visor-cli-v1-tag")
    good = json.loads(bundles[PUBLISH])

    def mutate(change: Any) -> bytes:
        doc = copy.deepcopy(good)
        change(doc["verificationMaterial"]["tlogEntries"][0])
        return json.dumps(doc).encode()

    def proof_hash(entry: dict[str, Any]) -> None:
        hashes = entry["inclusionProof"]["hashes"]
        hashes[0] = hashes[1]

    def later(entry: dict[str, Any]) -> None:
        entry["integratedTime"] = str(int(entry["integratedTime"]) + 1)

    def no_promise(entry: dict[str, Any]) -> None:
        del entry["inclusionPromise"]

    with pytest.raises(VerificationError, match="Rekor inclusion proof does not verify"):
        verify_key_bundle(mutate(proof_hash), npm_key, production, digest=digest)
    with pytest.raises(VerificationError, match="Rekor SET does not verify"):
        verify_key_bundle(mutate(later), npm_key, production, digest=digest)
    with pytest.raises(MalformedInputError, match="inclusion promise"):
        verify_key_bundle(mutate(no_promise), npm_key, production, digest=digest)
    staging = load_trusted_root(DATA / "trusted_root.staging.json")
    with pytest.raises(VerificationError, match="Rekor SET does not verify"):
        verify_key_bundle(bundles[PUBLISH], npm_key, staging, digest=digest)
