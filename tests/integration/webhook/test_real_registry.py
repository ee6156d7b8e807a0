"""The webhook end to end: real HTTPS server, real ImageVerifier, real docker-registry with
cosign signatures and SLSA provenance pushed to it; then the registry goes away."""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from samplerguard.policy import parse_policy
from samplerguard.supplychain import DockerConfig, ImageVerifier, RegistryClient
from samplerguard.webhook import (
    Admission,
    InjectionConfig,
    ReloadingCertificate,
    StaticNamespaceLabels,
    StaticPolicySource,
    VerdictCache,
    WebhookConfig,
    WebhookServer,
)
from tests.support.publish import (
    Signer,
    attest_image,
    push_image,
    sign_image,
    slsa_v1_predicate,
)
from tests.support.supplychain import LocalRegistry, registry_binary
from tests.support.webhook import patched, post, review, workload, write_self_signed

pytestmark = pytest.mark.registry

BUILDER = "https://github.com/acme/sampler/.github/workflows/release.yml@refs/heads/main"
SOURCE = "git+https://github.com/acme/sampler"


@dataclass
class World:
    registry: LocalRegistry
    client: RegistryClient
    release: Signer
    good: str
    unsigned: str
    wrong_key: str
    unattested: str
    sidecar: str
    digests: dict[str, str]


def _publish(
    world_client: RegistryClient, ref: str, *, sign: Signer | None, attest: Signer | None
) -> str:
    digest = push_image(world_client, ref, layers=[ref.encode()])
    if sign is not None:
        sign_image(world_client, ref, digest, sign)
    if attest is not None:
        attest_image(
            world_client,
            ref,
            digest,
            attest,
            "https://slsa.dev/provenance/v1",
            slsa_v1_predicate(builder_id=BUILDER, repository=SOURCE, ref="refs/heads/main"),
        )
    return digest


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    if registry_binary() is None:
        pytest.skip("docker-registry is not installed")
    with LocalRegistry() as reg, reg.client() as client:
        release, intruder = Signer.generate("ecdsa-p256"), Signer.generate("ecdsa-p256")
        h = reg.host
        refs = {
            "good": (f"{h}/acme/sampler:1.0", release, release),
            "unsigned": (f"{h}/acme/unsigned:1.0", None, release),
            "wrong_key": (f"{h}/acme/forged:1.0", intruder, intruder),
            "unattested": (f"{h}/acme/unattested:1.0", release, None),
            "sidecar": (f"{h}/samplerguard/sidecar:0.1", release, release),
        }
        digests = {ref: _publish(client, ref, sign=s, attest=a) for ref, s, a in refs.values()}
        yield World(
            reg,
            client,
            release,
            good=refs["good"][0],
            unsigned=refs["unsigned"][0],
            wrong_key=refs["wrong_key"][0],
            unattested=refs["unattested"][0],
            sidecar=refs["sidecar"][0],
            digests=digests,
        )


def _policy(world: World) -> dict[str, object]:
    authorities = [{"name": "release", "key": {"publicKey": world.release.public_pem}}]
    return {
        "apiVersion": "samplerguard.dev/v1alpha1",
        "kind": "ClusterSamplerPolicy",
        "metadata": {"name": "acme"},
        "spec": {
            "images": [
                {"glob": f"{world.registry.host}/acme/**", "authorities": authorities},
                {"glob": f"{world.registry.host}/samplerguard/**", "authorities": authorities},
            ],
            "attestations": [
                {
                    "name": "slsa",
                    "builderIds": [BUILDER],
                    "sourceUris": [SOURCE],
                    "sourceRefs": ["refs/heads/main"],
                }
            ],
        },
    }


@pytest.fixture
def setup(world: World, tmp_path: Path) -> Iterator[tuple[httpx.Client, Admission]]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_self_signed(cert, key)
    config = WebhookConfig(
        port=0,
        certfile=str(cert),
        keyfile=str(key),
        injection=InjectionConfig(sidecar_image=world.sidecar, drbg_secret="samplerguard-drbg"),
    )
    client = world.registry.client(timeout=1.0, retries=0)
    admission = Admission(
        config,
        StaticPolicySource([parse_policy(_policy(world))]),
        ImageVerifier(client),
        client,
        namespaces=StaticNamespaceLabels({"ml": {"samplerguard.dev/enforce": "true"}}),
    )
    with (
        WebhookServer(config, admission, ReloadingCertificate(cert, key)) as srv,
        httpx.Client(
            base_url=srv.url, verify=ssl.create_default_context(cafile=str(cert)), timeout=15
        ) as http,
    ):
        yield http, admission
    client.close()


def test_signed_and_attested_image_is_pinned_and_injected(
    world: World, setup: tuple[httpx.Client, Admission]
) -> None:
    http, _ = setup
    pod = workload("Pod", world.good)
    response = post(http, "/mutate", review(pod))
    assert response["allowed"] is True, response
    out = patched(pod, response)
    assert out["spec"]["containers"][0]["image"] == (
        f"{world.registry.host}/acme/sampler@{world.digests[world.good]}"
    )
    sidecar = out["spec"]["initContainers"][1]
    assert sidecar["name"] == "samplerguard-sidecar"
    assert sidecar["image"].endswith(world.digests[world.sidecar])
    assert post(http, "/validate", review(out))["allowed"] is True


@pytest.mark.parametrize(
    ("which", "reason"),
    [("unsigned", "signature"), ("wrong_key", "signature"), ("unattested", "attestation")],
)
def test_rejections_name_image_policy_and_check(
    world: World, setup: tuple[httpx.Client, Admission], which: str, reason: str
) -> None:
    http, _ = setup
    image = getattr(world, which)
    response = post(http, "/validate", review(workload("Pod", world.good, image)))
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert f"image {image}" in message
    assert "ClusterSamplerPolicy/acme" in message
    assert reason in message
    assert f"image {world.good}:" not in message


def test_registry_outage_last_known_good(
    world: World, setup: tuple[httpx.Client, Admission]
) -> None:
    http, admission = setup
    # Verify one digest while the registry is up; then always ask the registry again.
    good = f"{world.registry.host}/acme/sampler@{world.digests[world.good]}"
    assert post(http, "/validate", review(workload("Pod", good)))["allowed"] is True
    admission.cache.fresh_ttl = 0
    never_checked = f"{world.registry.host}/samplerguard/sidecar@{world.digests[world.sidecar]}"
    world.registry.stop()  # the module's last test: nothing after it needs the registry
    response = post(http, "/validate", review(workload("Pod", good)))
    assert response["allowed"] is True
    assert "last-known-good" in response["warnings"][0]
    response = post(http, "/validate", review(workload("Pod", never_checked)))
    assert response["allowed"] is False
    assert "registry unreachable" in response["status"]["message"]
    response = post(http, "/validate", review(workload("Pod", world.good)))  # a tag
    assert response["allowed"] is False
    # Past the window: the old pass no longer counts either.
    admission.cache = VerdictCache(fresh_ttl=0, last_known_good_ttl=0)
    assert post(http, "/validate", review(workload("Pod", good)))["allowed"] is False


class _Secrets:
    """Pull secrets by (namespace, name), as the API server would hand them out."""

    def __init__(self, secrets: dict[tuple[str, str], bytes]) -> None:
        self.secrets = secrets

    async def credentials(self, namespace: str, names: Sequence[str]) -> DockerConfig | None:
        found = [
            DockerConfig.from_dockerconfigjson(self.secrets[(namespace, n)])
            for n in names
            if (namespace, n) in self.secrets
        ]
        return DockerConfig.merged(found) if found else None


def test_private_registry_needs_the_pods_pull_secret(tmp_path: Path) -> None:
    if registry_binary() is None:
        pytest.skip("docker-registry is not installed")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_self_signed(cert, key)
    with LocalRegistry(auth="basic") as reg, reg.client() as publisher:
        release = Signer.generate("ecdsa-p256")
        image = f"{reg.host}/acme/sampler:1.0"
        _publish(publisher, image, sign=release, attest=release)
        world = World(reg, publisher, release, image, "", "", "", image, {})
        config = WebhookConfig(port=0, certfile=str(cert), keyfile=str(key))
        anonymous = reg.client(authenticated=False, timeout=2.0, retries=0)
        admission = Admission(
            config,
            StaticPolicySource([parse_policy(_policy(world))]),
            ImageVerifier(anonymous),
            anonymous,
            namespaces=StaticNamespaceLabels({"ml": {"samplerguard.dev/enforce": "true"}}),
            pull_secrets=_Secrets({("ml", "regcred"): reg.dockerconfigjson()}),
        )
        with (
            WebhookServer(config, admission, ReloadingCertificate(cert, key)) as srv,
            httpx.Client(
                base_url=srv.url, verify=ssl.create_default_context(cafile=str(cert)), timeout=15
            ) as http,
        ):
            bare = workload("Pod", image)
            denied = post(http, "/validate", review(bare))
            assert denied["allowed"] is False
            with_secret = workload("Pod", image)
            with_secret["spec"]["imagePullSecrets"] = [{"name": "regcred"}]
            # The anonymous rejection just cached does not stick to a pod with credentials.
            assert post(http, "/validate", review(with_secret))["allowed"] is True
            other_ns = post(http, "/validate", review(with_secret, namespace="ml2"))
            assert other_ns["allowed"] is True  # not opted in: ml2 has no enforce label
        anonymous.close()
