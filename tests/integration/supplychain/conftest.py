"""Fixtures: a real docker-registry on loopback (open, htpasswd basic auth, token auth), a
private Sigstore instance, and factories for signed and attested images.

The webhook's tests build the same things from :mod:`tests.support.supplychain`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from samplerguard.policy.spec import (
    SamplerPolicySpec,
)
from samplerguard.supplychain import (
    ImageVerifier,
    RegistryClient,
    TrustedRoots,
    load_trusted_root,
)
from tests.support.publish import (
    Signer,
    attest_image,
    push_image,
    sign_image,
    slsa_v1_predicate,
)
from tests.support.sc_scenario import BUILDER, CI_ID, CI_ISSUER, REPO, SCHEDULER, WEIGHTS, Published
from tests.support.sc_scenario import policy_for as scenario_policy_for
from tests.support.supplychain import LocalRegistry, PrivateSigstore, registry_binary


@pytest.fixture(scope="session")
def registry() -> Iterator[LocalRegistry]:
    if registry_binary() is None:
        pytest.skip("docker-registry is not installed")
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture
def client(registry: LocalRegistry) -> Iterator[RegistryClient]:
    with registry.client() as c:
        yield c


@pytest.fixture(scope="session")
def sigstore() -> PrivateSigstore:
    return PrivateSigstore()


@pytest.fixture(scope="session")
def roots(sigstore: PrivateSigstore) -> TrustedRoots:
    return TrustedRoots(named={"private": load_trusted_root(sigstore.trusted_root_json())})


@pytest.fixture
def verifier(client: RegistryClient, roots: TrustedRoots) -> ImageVerifier:
    return ImageVerifier(client, trusted_roots=roots)


_counter = itertools.count()


@pytest.fixture
def new_ref(registry: LocalRegistry) -> Callable[[], str]:
    """A fresh repository:tag on the registry for each call."""

    def make() -> str:
        return f"{registry.host}/acme/sampler-{next(_counter)}:1.0"

    return make


@pytest.fixture
def publish(
    client: RegistryClient, sigstore: PrivateSigstore, new_ref: Callable[[], str]
) -> Callable[..., Published]:
    """Push an image, sign it with a release key and a keyless CI identity, and attest SLSA v1
    provenance (with model weights and scheduler config) with the release key."""

    def make(*, sign: bool = True, keyless: bool = True, attest: bool = True) -> Published:
        ref = new_ref()
        digest = push_image(client, ref)
        release = Signer.generate("ecdsa-p256")
        ci = sigstore.keyless_signer(CI_ID, CI_ISSUER)
        if sign:
            sign_image(client, ref, digest, release)
        if keyless:
            sign_image(client, ref, digest, ci)
        if attest:
            attest_image(
                client,
                ref,
                digest,
                release,
                "https://slsa.dev/provenance/v1",
                slsa_v1_predicate(
                    builder_id=BUILDER,
                    repository=REPO,
                    ref="refs/heads/main",
                    ml_artifacts={
                        "model-weights": ("unet.safetensors", WEIGHTS),
                        "scheduler-config": ("scheduler_config.json", SCHEDULER),
                    },
                ),
            )
        return Published(ref, digest, release, ci)

    return make


@pytest.fixture
def policy_for() -> Callable[..., SamplerPolicySpec]:
    """``policy_for(published, threshold=, keyless=, attest=, golden=, identity=)``: a policy
    naming the published image's release key (and the keyless CI identity)."""
    return scenario_policy_for
