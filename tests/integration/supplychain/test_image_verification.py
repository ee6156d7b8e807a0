"""End to end against the real registry: sign and attest in cosign's formats, then verify."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from samplerguard.errors import MalformedInputError, TemporaryError, VerificationError
from samplerguard.policy.spec import (
    Authority,
    GoldenDigests,
    ImageRule,
    KeyAuthority,
    KeylessIdentity,
    SamplerPolicySpec,
)
from samplerguard.supplychain import ImageVerdict, ImageVerifier, RegistryClient
from samplerguard.supplychain.cosign import simple_signing_payload
from tests.support.publish import (
    Signer,
    attest_image,
    make_envelope,
    make_statement,
    push_image,
    sign_image,
    slsa_v02_predicate,
    slsa_v1_predicate,
)
from tests.support.sc_scenario import BUILDER, CI_ID, CI_ISSUER, REPO, SCHEDULER, WEIGHTS, Published
from tests.support.supplychain import PrivateSigstore

pytestmark = pytest.mark.registry

Publish = Callable[..., Published]
PolicyFor = Callable[..., SamplerPolicySpec]


def check(verdict: ImageVerdict, name: str) -> Any:
    found = [c for c in verdict.checks if c.name.startswith(name)]
    assert found, f"no check {name} in {verdict.summary()}"
    return found[0]


def test_key_signature_and_slsa_attestation_pass(
    verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish()
    verdict = verifier.verify(pub.ref, policy_for(pub), policy_name="prod")
    assert verdict.passed, verdict.summary()
    assert verdict.digest == pub.digest
    assert verdict.pinned == pub.ref.rsplit(":", 1)[0] + "@" + pub.digest
    assert [c.name for c in verdict.checks] == [
        "image-rule",
        "resolve",
        "signatures[127.0.0.1:*/acme/**]",
        "attestation/slsa",
    ]
    assert "release: ok, key ecdsa-secp256r1-sha256" in check(verdict, "signatures").detail
    verdict.raise_for_failure()


def test_two_of_two_key_and_keyless(
    verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish()
    verdict = verifier.verify(pub.ref, policy_for(pub, threshold=2, keyless=True), policy_name="p")
    assert verdict.passed, verdict.summary()
    detail = check(verdict, "signatures").detail
    assert "2 of 2 authorities" in detail
    assert f"keyless {CI_ID} (issuer {CI_ISSUER})" in detail


def test_threshold_not_met_names_the_missing_authority(
    verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish(keyless=False)
    verdict = verifier.verify(pub.ref, policy_for(pub, threshold=2, keyless=True), policy_name="p")
    assert not verdict.passed
    sig = check(verdict, "signatures")
    assert not sig.passed
    assert "1 of 2 authorities" in sig.detail and "(threshold 2)" in sig.detail
    assert "ci: no signature verifies" in sig.detail
    # 1-of-2 with the same material passes.
    assert verifier.verify(
        pub.ref, policy_for(pub, threshold=1, keyless=True), policy_name="p"
    ).passed


def test_unsigned_image_is_rejected(
    verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish(sign=False, keyless=False, attest=False)
    verdict = verifier.verify(pub.ref, policy_for(pub, attest=False), policy_name="prod")
    assert not verdict.passed
    reason = verdict.reasons[0]
    assert pub.ref in reason and "policy 'prod'" in reason and "no signatures found" in reason


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa"])
def test_every_cosign_key_type(
    kind: str, client: RegistryClient, verifier: ImageVerifier, new_ref: Callable[[], str]
) -> None:
    ref = new_ref()
    digest = push_image(client, ref)
    signer = Signer.generate(kind)  # type: ignore[arg-type]
    sign_image(client, ref, digest, signer)
    spec = SamplerPolicySpec(
        images=[
            ImageRule(
                glob="127.0.0.1:*/acme/**",
                authorities=[
                    Authority(
                        name="k",
                        # hashAlgorithm unset: it follows the curve, as in cosign.
                        key=KeyAuthority(public_key=signer.public_pem),
                    )
                ],
            )
        ]
    )
    verdict = verifier.verify(ref, spec, policy_name="p")
    assert verdict.passed, verdict.summary()
    # Another key of the same kind does not verify it.
    other = Signer.generate(kind)  # type: ignore[arg-type]
    spec2 = SamplerPolicySpec(
        images=[
            ImageRule(
                glob="127.0.0.1:*/acme/**",
                authorities=[Authority(name="k", key=KeyAuthority(public_key=other.public_pem))],
            )
        ]
    )
    bad = verifier.verify(ref, spec2, policy_name="p")
    assert not bad.passed
    assert "signature does not verify with key" in check(bad, "signatures").detail


def test_tampered_payload_is_rejected(
    client: RegistryClient, verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish(sign=False, keyless=False, attest=False)
    good = simple_signing_payload(pub.ref.rsplit(":", 1)[0], pub.digest)
    tampered = good.replace(
        b"cosign container image signature", b"cosign container image signaturE"
    )
    sign_image(
        client, pub.ref, pub.digest, pub.release, payload=tampered, signature=pub.release.sign(good)
    )
    verdict = verifier.verify(pub.ref, policy_for(pub, attest=False), policy_name="p")
    assert not verdict.passed
    assert "signature does not verify with key" in check(verdict, "signatures").detail


def test_signature_for_another_digest_is_rejected(
    client: RegistryClient, verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish(sign=False, keyless=False, attest=False)
    other = push_image(client, pub.ref.replace(":1.0", ":other"), layers=[b"other image"])
    # A genuine signature, over a payload naming the other image, copied under this digest.
    payload = simple_signing_payload(pub.ref.rsplit(":", 1)[0], other)
    sign_image(client, pub.ref, pub.digest, pub.release, payload=payload)
    verdict = verifier.verify(pub.ref, policy_for(pub, attest=False), policy_name="p")
    assert not verdict.passed
    assert f"signed digest mismatch (got {other}, expected {pub.digest})" in verdict.reasons[0]


def test_swapped_signature_is_rejected(
    client: RegistryClient, verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    a = publish(sign=False, keyless=False, attest=False)
    b = publish(sign=False, keyless=False, attest=False)
    sig_b = a.release.sign(simple_signing_payload(b.ref.rsplit(":", 1)[0], b.digest))
    sign_image(client, a.ref, a.digest, a.release, signature=sig_b)
    verdict = verifier.verify(a.ref, policy_for(a, attest=False), policy_name="p")
    assert not verdict.passed
    assert "signature does not verify" in check(verdict, "signatures").detail


def test_wrong_keyless_identity_is_rejected(
    verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish(sign=False)
    spec = policy_for(
        pub,
        keyless=True,
        attest=False,
        identity=KeylessIdentity(subject="mallory@evil.example", issuer=CI_ISSUER),
    )
    verdict = verifier.verify(pub.ref, spec, policy_name="p")
    assert not verdict.passed
    detail = check(verdict, "signatures").detail
    assert f"certificate identity mismatch (got {CI_ID} (issuer {CI_ISSUER})" in detail
    assert "expected mallory@evil.example" in detail


def test_keyless_identity_regexp(
    verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish(sign=False)
    ok = KeylessIdentity(
        subjectRegExp=r"https://github\.com/acme/.*", issuerRegExp=r"https://token\..*"
    )
    assert verifier.verify(
        pub.ref,
        policy_for(pub, keyless=True, threshold=1, attest=False, identity=ok),
        policy_name="p",
    ).passed
    # A regex must match the whole identity, not a substring of it.
    partial = KeylessIdentity(subjectRegExp=r"acme", issuer=CI_ISSUER)
    spec = policy_for(pub, keyless=True, threshold=2, attest=False, identity=partial)
    assert not verifier.verify(pub.ref, spec, policy_name="p").passed


def test_expired_certificate_is_rejected(
    client: RegistryClient,
    sigstore: PrivateSigstore,
    verifier: ImageVerifier,
    publish: Publish,
    policy_for: PolicyFor,
) -> None:
    pub = publish(sign=True, keyless=False, attest=False)
    # The certificate lived for ten minutes, an hour ago; the log saw the signature now.
    expired = sigstore.keyless_signer(
        CI_ID, CI_ISSUER, not_before=datetime.now(UTC) - timedelta(hours=1)
    )
    sign_image(client, pub.ref, pub.digest, expired)
    verdict = verifier.verify(
        pub.ref, policy_for(pub, keyless=True, threshold=2, attest=False), policy_name="p"
    )
    assert not verdict.passed
    assert "does not chain to a Fulcio root" in check(verdict, "signatures").detail


def test_certificate_from_another_ca_is_rejected(
    client: RegistryClient, verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish(sign=True, keyless=False, attest=False)
    rogue = PrivateSigstore().keyless_signer(CI_ID, CI_ISSUER)
    sign_image(client, pub.ref, pub.digest, rogue)
    verdict = verifier.verify(
        pub.ref, policy_for(pub, keyless=True, threshold=2, attest=False), policy_name="p"
    )
    assert not verdict.passed
    # The rogue log key signs the SET: the first check that fails is the inclusion promise.
    assert "Rekor SET does not verify" in check(verdict, "signatures").detail


def test_forged_rekor_entry_for_other_content_is_rejected(
    client: RegistryClient,
    sigstore: PrivateSigstore,
    verifier: ImageVerifier,
    publish: Publish,
    policy_for: PolicyFor,
) -> None:
    pub = publish(sign=True, keyless=False, attest=False)
    signer = sigstore.keyless_signer(CI_ID, CI_ISSUER)
    assert signer.certificate_pem is not None
    # A genuine log entry, but about other content (CVE-2022-36056's shape).
    other_entry = sigstore.rekor_bundle(
        "hashedrekord", signer.certificate_pem, b"x" * 70, b"other content", datetime.now(UTC)
    )
    signer.witness = lambda kind, sig, payload: other_entry
    sign_image(client, pub.ref, pub.digest, signer)
    verdict = verifier.verify(
        pub.ref, policy_for(pub, keyless=True, threshold=2, attest=False), policy_name="p"
    )
    assert not verdict.passed
    assert "Rekor entry is for other content" in check(verdict, "signatures").detail


def test_attestation_for_another_image_is_rejected(
    client: RegistryClient, verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish(attest=False)
    other = "sha256:" + "12" * 32
    predicate = slsa_v1_predicate(builder_id=BUILDER, repository=REPO, ref="refs/heads/main")
    attest_image(
        client,
        pub.ref,
        pub.digest,
        pub.release,
        "https://slsa.dev/provenance/v1",
        predicate,
        subject_digest=other,
    )
    verdict = verifier.verify(pub.ref, policy_for(pub), policy_name="p")
    assert not verdict.passed
    detail = check(verdict, "attestation/slsa").detail
    assert "is for another image" in detail
    assert f"subject digest mismatch: got ['{other}'], expected {pub.digest}" in detail


def test_tampered_attestation_is_rejected(
    client: RegistryClient, verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish(attest=False)
    name = pub.ref.rsplit(":", 1)[0]
    honest = make_statement(
        name,
        pub.digest,
        "https://slsa.dev/provenance/v1",
        slsa_v1_predicate(builder_id=BUILDER, repository=REPO, ref="refs/heads/main"),
    )
    envelope, _ = make_envelope(honest, [pub.release])
    doc = json.loads(envelope)
    forged = honest.replace(b"refs/heads/main", b"refs/heads/evil")
    doc["payload"] = base64.b64encode(forged).decode()
    attest_image(
        client,
        pub.ref,
        pub.digest,
        pub.release,
        "https://slsa.dev/provenance/v1",
        {},
        envelope=json.dumps(doc).encode(),
    )
    verdict = verifier.verify(pub.ref, policy_for(pub), policy_name="p")
    assert not verdict.passed
    assert "is signed by no authority" in check(verdict, "attestation/slsa").detail


@pytest.mark.parametrize("version", ["v1", "v0.2"])
def test_slsa_provenance_versions_pass(
    version: str,
    client: RegistryClient,
    verifier: ImageVerifier,
    publish: Publish,
    policy_for: PolicyFor,
) -> None:
    pub = publish(attest=False)
    ptype, build = SLSA[version]
    args = {"builder_id": BUILDER, "repository": REPO, "ref": "refs/heads/main"}
    attest_image(client, pub.ref, pub.digest, pub.release, ptype, build(**args))
    verdict = verifier.verify(pub.ref, _with_type(policy_for(pub), ptype), policy_name="p")
    assert verdict.passed, verdict.summary()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "builder_id",
            "https://github.com/evil/x/.github/workflows/a.yml@refs/heads/main",
            "builder id mismatch",
        ),
        ("repository", "https://github.com/evil/sampler", "source URI mismatch"),
        ("ref", "refs/heads/feature", "source ref mismatch"),
    ],
)
@pytest.mark.parametrize("version", ["v1", "v0.2"])
def test_slsa_rules_reject(
    field: str,
    value: str,
    message: str,
    version: str,
    client: RegistryClient,
    verifier: ImageVerifier,
    publish: Publish,
    policy_for: PolicyFor,
) -> None:
    ptype, build = SLSA[version]
    args = {"builder_id": BUILDER, "repository": REPO, "ref": "refs/heads/main", field: value}
    bad = publish(attest=False)
    attest_image(client, bad.ref, bad.digest, bad.release, ptype, build(**args))
    verdict = verifier.verify(bad.ref, _with_type(policy_for(bad), ptype), policy_name="p")
    assert not verdict.passed
    detail = check(verdict, "attestation/slsa").detail
    assert message in detail
    assert value in detail


SLSA: dict[str, tuple[str, Callable[..., dict[str, Any]]]] = {
    "v1": ("https://slsa.dev/provenance/v1", slsa_v1_predicate),
    "v0.2": ("https://slsa.dev/provenance/v0.2", slsa_v02_predicate),
}


def _with_type(spec: SamplerPolicySpec, ptype: str) -> SamplerPolicySpec:
    rule = spec.attestations[0].model_copy(update={"predicate_type": ptype})
    return spec.model_copy(update={"attestations": [rule]})


def test_golden_digests_bind(
    verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish()
    ok = GoldenDigests(model_weights=[WEIGHTS], scheduler_config=[SCHEDULER])
    verdict = verifier.verify(pub.ref, policy_for(pub, golden=ok), policy_name="p")
    assert verdict.passed, verdict.summary()
    assert check(verdict, "golden/model-weights").passed
    wrong = "sha256:" + "ef" * 32
    verdict = verifier.verify(
        pub.ref, policy_for(pub, golden=GoldenDigests(model_weights=[wrong])), policy_name="p"
    )
    assert not verdict.passed
    detail = check(verdict, "golden/model-weights").detail
    assert (
        "model-weights digest mismatch for 'samplerguard:model-weights/unet.safetensors' "
        f"(got {WEIGHTS}, expected one of ['{wrong}'])" in detail
    )
    missing = GoldenDigests(solver_code=["sha256:" + "01" * 32])
    verdict = verifier.verify(pub.ref, policy_for(pub, golden=missing), policy_name="p")
    assert not verdict.passed
    assert (
        "no verified attestation carries a solver-code digest"
        in check(verdict, "golden/solver-code").detail
    )


def test_golden_digests_need_a_signed_attestation(
    client: RegistryClient, verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish(attest=False)
    stranger = Signer.generate()
    predicate = slsa_v1_predicate(
        builder_id=BUILDER,
        repository=REPO,
        ref="refs/heads/main",
        ml_artifacts={"model-weights": ("unet.safetensors", WEIGHTS)},
    )
    attest_image(client, pub.ref, pub.digest, stranger, "https://slsa.dev/provenance/v1", predicate)
    spec = policy_for(pub, attest=False, golden=GoldenDigests(model_weights=[WEIGHTS]))
    verdict = verifier.verify(pub.ref, spec, policy_name="p")
    assert not verdict.passed
    assert (
        "no verified attestation carries a model-weights digest" in check(verdict, "golden").detail
    )


def test_keyless_attestation(
    client: RegistryClient, verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish(attest=False)
    predicate = slsa_v1_predicate(builder_id=BUILDER, repository=REPO, ref="refs/heads/main")
    attest_image(client, pub.ref, pub.digest, pub.ci, "https://slsa.dev/provenance/v1", predicate)
    verdict = verifier.verify(pub.ref, policy_for(pub, keyless=True, threshold=2), policy_name="p")
    assert verdict.passed, verdict.summary()
    assert "signed by ci (keyless" in check(verdict, "attestation/slsa").detail


def test_image_index_is_verified_by_index_digest(
    client: RegistryClient,
    verifier: ImageVerifier,
    new_ref: Callable[[], str],
    policy_for: PolicyFor,
) -> None:
    ref = new_ref()
    digest = push_image(client, ref, platforms=["linux/amd64", "linux/arm64"])
    manifest = client.get_manifest(ref)
    assert manifest.is_index and len(manifest.manifests) == 2 and manifest.digest == digest
    signer = Signer.generate()
    sign_image(client, ref, digest, signer)
    pub = Published(ref, digest, signer, signer)
    verdict = verifier.verify(ref, policy_for(pub, attest=False), policy_name="p")
    assert verdict.passed and verdict.digest == digest


def test_digest_reference_and_given_digest(
    verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish()
    pinned = pub.ref.rsplit(":", 1)[0] + "@" + pub.digest
    verdict = verifier.verify(pinned, policy_for(pub), policy_name="p")
    assert verdict.passed and check(verdict, "resolve").detail == f"pinned {pub.digest}"
    verdict = verifier.verify(pub.ref, policy_for(pub), policy_name="p", digest=pub.digest)
    assert verdict.passed
    with pytest.raises(MalformedInputError, match="contradicts"):
        verifier.verify(pinned, policy_for(pub), policy_name="p", digest="sha256:" + "0" * 64)


def test_no_matching_rule_fails_closed(
    verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish()
    spec = policy_for(pub)
    spec = spec.model_copy(
        update={"images": [spec.images[0].model_copy(update={"glob": "ghcr.io/acme/*"})]}
    )
    verdict = verifier.verify(pub.ref, spec, policy_name="p")
    assert not verdict.passed
    assert "no image rule matches" in verdict.reasons[0]
    with pytest.raises(VerificationError, match="no image rule matches"):
        verdict.raise_for_failure()


def test_missing_image_is_a_rejection(
    verifier: ImageVerifier, new_ref: Callable[[], str], publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish()
    verdict = verifier.verify(new_ref(), policy_for(pub), policy_name="p")
    assert not verdict.passed
    assert "not found" in check(verdict, "resolve").detail


def test_unreachable_registry_is_temporary(
    roots: Any, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish()
    port = pub.ref.split("/")[0].split(":")[1]
    dead = pub.ref.replace(f":{port}/", ":9/")  # discard port: nothing listens
    with (
        RegistryClient(plain_http=["127.0.0.1:9"], timeout=0.5, retries=1, backoff=0.01) as c,
        pytest.raises(TemporaryError, match="unreachable"),
    ):
        ImageVerifier(c, trusted_roots=roots).verify(dead, policy_for(pub), policy_name="p")


def test_bad_reference_is_malformed(
    verifier: ImageVerifier, publish: Publish, policy_for: PolicyFor
) -> None:
    pub = publish(sign=False, keyless=False, attest=False)
    with pytest.raises(MalformedInputError):
        verifier.verify("127.0.0.1:5000/UPPER/case:x", policy_for(pub), policy_name="p")
