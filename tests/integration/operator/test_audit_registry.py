"""The background audit against a real OCI registry (Debian's docker-registry on loopback)
and the real ImageVerifier: a key rotation or a removed signature turns a running pod's
image into a failing ``signature`` result."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from samplerguard.operator.audit import audit, image_checker
from samplerguard.supplychain import ImageVerifier, RegistryClient
from tests.support.publish import (
    Signer,
    attest_image,
    push_image,
    sign_image,
    slsa_v1_predicate,
)
from tests.support.supplychain import LocalRegistry, registry_binary

pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(registry_binary() is None, reason="docker-registry not installed"),
]
BUILDER = "https://github.com/actions/runner/github-hosted"
NAMESPACES = [{"metadata": {"name": "ml", "labels": {"samplerguard.dev/enforce": "true"}}}]


@pytest.fixture(scope="module")
def registry() -> Iterator[LocalRegistry]:
    with LocalRegistry() as reg:
        yield reg


def _policy(host: str, key_pem: str) -> dict[str, Any]:
    return {
        "apiVersion": "samplerguard.dev/v1alpha1",
        "kind": "ClusterSamplerPolicy",
        "metadata": {"name": "audit-e2e", "uid": "u1", "resourceVersion": "1"},
        "spec": {
            "images": [
                {
                    "glob": f"{host}/acme/**",
                    "authorities": [{"name": "k", "key": {"publicKey": key_pem}}],
                }
            ],
            "attestations": [
                {
                    "name": "slsa",
                    "builderIds": [BUILDER],
                    "sourceUris": ["git+https://github.com/acme/s"],
                }
            ],
        },
    }


def _pod(image: str, digest: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ml", "name": "sampler-0", "uid": "pod-uid"},
        "spec": {"containers": [{"name": "sampler", "image": image}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "sampler", "imageID": f"{image.split(':')[0]}@{digest}"}
            ],
        },
    }


@pytest.fixture
def client(registry: LocalRegistry) -> Iterator[RegistryClient]:
    with registry.client() as c:
        yield c


def test_audit_passes_then_fails_after_key_rotation(
    registry: LocalRegistry, client: RegistryClient
) -> None:
    key = Signer.generate()
    ref = f"{registry.host}/acme/sampler:1.0"
    digest = push_image(client, ref, layers=[b"audit"])
    sign_image(client, ref, digest, key)
    pred = slsa_v1_predicate(
        builder_id=BUILDER, repository="git+https://github.com/acme/s", ref="refs/heads/main"
    )
    attest_image(client, ref, digest, key, "https://slsa.dev/provenance/v1", pred)
    check = image_checker(ImageVerifier(client))

    ok = audit(
        [_pod(ref, digest)], NAMESPACES, [_policy(registry.host, key.public_pem)], check, "sg"
    )
    assert {(r.rule, r.result) for r in ok} == {("signature", "pass"), ("provenance", "pass")}
    assert ok[0].properties["digest"] == digest

    rotated = Signer.generate()  # the policy now trusts a new key; the image was never re-signed
    bad = audit(
        [_pod(ref, digest)], NAMESPACES, [_policy(registry.host, rotated.public_pem)], check, "sg"
    )
    sig = next(r for r in bad if r.rule == "signature")
    assert sig.result == "fail" and sig.severity == "high"
    assert digest in sig.message and sig.resources[0].name == "sampler-0"


def test_unsigned_image_fails_and_registry_outage_is_an_error(
    registry: LocalRegistry, client: RegistryClient
) -> None:
    key = Signer.generate()
    ref = f"{registry.host}/acme/unsigned:1.0"
    digest = push_image(client, ref, layers=[b"unsigned"])
    check = image_checker(ImageVerifier(client))
    res = audit(
        [_pod(ref, digest)], NAMESPACES, [_policy(registry.host, key.public_pem)], check, "sg"
    )
    assert any(r.rule == "signature" and r.result == "fail" for r in res)

    gone = "127.0.0.1:9/acme/sampler:1.0"  # nothing listens on port 9: fail closed, as error
    with RegistryClient(plain_http=["127.0.0.1:9"], timeout=1.0, retries=0) as dead:
        down = image_checker(ImageVerifier(dead))
        res = audit(
            [_pod(gone, "sha256:" + "0" * 64)],
            NAMESPACES,
            [_policy("127.0.0.1:9", key.public_pem)],
            down,
            "sg",
        )
    assert [(r.rule, r.result) for r in res] == [("signature", "error")]
