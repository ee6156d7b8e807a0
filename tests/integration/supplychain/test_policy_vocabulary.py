"""Keys held in Secrets, any-of attestation rules and CEL conditions, on the real registry."""

from __future__ import annotations

import base64
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from samplerguard.errors import TemporaryError, VerificationError
from samplerguard.policy.spec import SamplerPolicySpec, SecretKeyRef
from samplerguard.supplychain import ImageVerifier, RegistryClient, TrustedRoots
from samplerguard.supplychain.provenance import SLSA_V1
from samplerguard.supplychain.sigstore_bundles import COSIGN_SIGN_PREDICATE
from samplerguard.webhook.kube import KubernetesKeySecrets
from tests.support.publish import (
    Signer,
    attach_bundle,
    make_statement,
    push_image,
    slsa_v1_predicate,
)
from tests.support.sc_scenario import BUILDER, REPO, Published
from tests.support.supplychain import PrivateSigstore

pytestmark = pytest.mark.registry


def _with_secret_key(spec: SamplerPolicySpec) -> SamplerPolicySpec:
    doc = spec.to_wire()
    doc["images"][0]["authorities"][0]["key"] = {"secretRef": {"name": "release-key"}}
    return SamplerPolicySpec.model_validate(doc)


def _with_rule(spec: SamplerPolicySpec, rule: dict[str, Any]) -> SamplerPolicySpec:
    doc = spec.to_wire()
    doc["attestations"] = [{"name": "slsa", **rule}]
    return SamplerPolicySpec.model_validate(doc)


class _CoreV1:
    """The one call KubernetesKeySecrets makes, answering from a dict (or failing)."""

    def __init__(self, secrets: dict[tuple[str, str], dict[str, str]], status: int = 0) -> None:
        self.secrets, self.status, self.reads = secrets, status, 0

    def read_namespaced_secret(self, name: str, namespace: str, **_: Any) -> Any:
        self.reads += 1
        if self.status:
            raise ApiException(status=self.status, reason="Refused")
        if (namespace, name) not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        data = {
            k: base64.b64encode(v.encode()).decode()
            for k, v in self.secrets[(namespace, name)].items()
        }
        return SimpleNamespace(data=data)


def test_key_from_a_secret(
    client: RegistryClient,
    publish: Callable[..., Published],
    policy_for: Callable[..., SamplerPolicySpec],
) -> None:
    pub = publish(keyless=False)
    spec = _with_secret_key(policy_for(pub))
    api = _CoreV1({("team-a", "release-key"): {"cosign.pub": pub.release.public_pem}})
    source = KubernetesKeySecrets("samplerguard", api)
    verifier = ImageVerifier(client, key_source=source)
    verdict = verifier.verify(pub.ref, spec, policy_name="p", policy_namespace="team-a")
    assert verdict.passed, verdict.summary()
    verifier.verify(pub.ref, spec, policy_name="p", policy_namespace="team-a")
    assert api.reads == 1  # cached

    # A cluster policy reads samplerguard's namespace, where the Secret is not.
    verdict = verifier.verify(pub.ref, spec, policy_name="p")
    assert not verdict.passed
    assert "public key Secret samplerguard/release-key cannot be read (HTTP 404)" in (
        verdict.summary()
    )
    # Without a Secret reader the authority fails and says why.
    verdict = ImageVerifier(client).verify(pub.ref, spec, policy_name="p")
    assert not verdict.passed
    assert "no Secret reader is configured here" in verdict.summary()


def test_key_secret_errors() -> None:
    ref = SecretKeyRef(name="k", namespace="ns", key="key.pem")
    with pytest.raises(
        VerificationError,
        match=r"Secret ns/k has no data key 'key.pem' \(got keys \['cosign.pub'\]\)",
    ):
        KubernetesKeySecrets("sg", _CoreV1({("ns", "k"): {"cosign.pub": "x"}}))(ref, None)
    with pytest.raises(TemporaryError, match="Secret ns/k: API server answered 500"):
        KubernetesKeySecrets("sg", _CoreV1({}, status=500))(ref, None)
    # absent or forbidden is permanent: the authority fails, it is not retried
    with pytest.raises(VerificationError, match=r"Secret ns/k cannot be read \(HTTP 403\)"):
        KubernetesKeySecrets("sg", _CoreV1({}, status=403))(ref, None)
    with pytest.raises(VerificationError, match=r"Secret ns/k cannot be read \(HTTP 404\)"):
        KubernetesKeySecrets("sg", _CoreV1({}))(ref, None)


def test_any_of_and_conditions(
    client: RegistryClient,
    publish: Callable[..., Published],
    policy_for: Callable[..., SamplerPolicySpec],
) -> None:
    pub = publish(keyless=False)
    verifier = ImageVerifier(client)
    base = policy_for(pub)
    v02 = {"predicateType": "https://slsa.dev/provenance/v0.2", "builderIds": [BUILDER]}
    v1 = {"predicateType": "https://slsa.dev/provenance/v1", "builderIds": [BUILDER]}
    wrong_v1 = {**v1, "builderIds": ["https://github.com/acme/other"]}
    assert verifier.verify(pub.ref, _with_rule(base, {"anyOf": [v02, v1]}), policy_name="p").passed
    verdict = verifier.verify(
        pub.ref, _with_rule(base, {"anyOf": [v02, wrong_v1]}), policy_name="p"
    )
    assert not verdict.passed
    assert "builder id mismatch" in verdict.summary()
    holds = {
        **v1,
        "conditions": [{"expression": "size(predicate.buildDefinition.resolvedDependencies) >= 1"}],
    }
    assert verifier.verify(pub.ref, _with_rule(base, holds), policy_name="p").passed
    fails = {
        **v1,
        "conditions": [
            {
                "expression": "predicate.runDetails.builder.id.startsWith('https://gitlab')",
                "message": "built on GitLab",
            }
        ],
    }
    verdict = verifier.verify(pub.ref, _with_rule(base, fails), policy_name="p")
    assert not verdict.passed
    assert (
        "condition 'built on GitLab' does not hold (got false, expected true)" in verdict.summary()
    )


def test_managed_key_bundles_sign_and_attest(
    client: RegistryClient,
    new_ref: Callable[[], str],
    sigstore: PrivateSigstore,
    roots: TrustedRoots,
) -> None:
    """An image with no .sig: a managed-key bundle of cosign's sign predicate signs it, and a
    managed-key bundle of SLSA provenance admits it on its own."""
    ref = new_ref()
    digest = push_image(client, ref)
    release = Signer.generate()
    name = ref.rsplit(":", 1)[0]
    provenance = make_statement(
        name,
        digest,
        SLSA_V1,
        slsa_v1_predicate(builder_id=BUILDER, repository=REPO, ref="refs/heads/main"),
    )
    attach_bundle(client, ref, digest, sigstore.key_bundle(release, provenance))
    key = {"publicKey": release.public_pem, "trustedRoot": "private"}
    spec = SamplerPolicySpec.model_validate(
        {
            "images": [
                {
                    "glob": "127.0.0.1:*/acme/**",
                    "authorities": [{"name": "release", "key": key, "attestations": ["slsa"]}],
                }
            ],
            "attestations": [{"name": "slsa", "builderIds": [BUILDER]}],
        }
    )
    verifier = ImageVerifier(client, trusted_roots=roots)
    verdict = verifier.verify(ref, spec, policy_name="p")
    assert verdict.passed, verdict.summary()

    # Another key: the bundle is not its signature, and the image is refused.
    other = Signer.generate()
    wire = spec.to_wire()
    wire["images"][0]["authorities"][0]["key"]["publicKey"] = other.public_pem
    verdict = verifier.verify(ref, SamplerPolicySpec.model_validate(wire), policy_name="p")
    assert not verdict.passed
    assert "DSSE signature does not verify with key" in verdict.summary()

    # A managed-key bundle of cosign's sign predicate is a signature.
    signed = make_statement(name, digest, COSIGN_SIGN_PREDICATE, {})
    attach_bundle(client, ref, digest, sigstore.key_bundle(other, signed))
    del wire["images"][0]["authorities"][0]["attestations"]
    del wire["attestations"]
    verdict = verifier.verify(ref, SamplerPolicySpec.model_validate(wire), policy_name="p")
    assert verdict.passed, verdict.summary()
    assert "release: ok, bundle release (key ecdsa-secp256r1-sha256)" in verdict.summary()
