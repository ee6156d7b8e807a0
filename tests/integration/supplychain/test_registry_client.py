"""The registry client against the real docker-registry: auth flows, manifests, blobs, tags."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from samplerguard.errors import TemporaryError
from samplerguard.supplychain import (
    DockerConfig,
    ManifestNotFoundError,
    RegistryAuthError,
    RegistryClient,
    RegistryUnavailableError,
)
from tests.support.publish import push_image
from tests.support.supplychain import LocalRegistry, registry_binary

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module", params=["basic", "token"])
def auth_registry(request: pytest.FixtureRequest) -> Iterator[LocalRegistry]:
    if registry_binary() is None:
        pytest.skip("docker-registry is not installed")
    with LocalRegistry(auth=request.param) as reg:
        yield reg


def test_push_resolve_and_read_back(registry: LocalRegistry, client: RegistryClient) -> None:
    ref = f"{registry.host}/acme/roundtrip:v1"
    digest = push_image(client, ref, layers=[b"layer one", b"layer two"])
    assert client.resolve(ref) == digest
    manifest = client.get_manifest(ref)
    assert manifest.digest == digest and not manifest.is_index
    assert [layer.size for layer in manifest.layers] == [9, 9]
    assert client.get_blob(ref, manifest.layers[1].digest) == b"layer two"
    by_digest = client.get_manifest(f"{registry.host}/acme/roundtrip@{digest}")
    assert by_digest.raw == manifest.raw


def test_missing_tag_and_referrers_fallback(
    registry: LocalRegistry, client: RegistryClient
) -> None:
    with pytest.raises(ManifestNotFoundError, match="not found"):
        client.resolve(f"{registry.host}/acme/nothing:here")
    assert client.get_manifest_if_exists(f"{registry.host}/acme/nothing:here") is None
    # distribution 2.8 has no referrers API: None tells callers to use the tag scheme.
    digest = push_image(client, f"{registry.host}/acme/ref:v1")
    assert client.referrers(f"{registry.host}/acme/ref:v1", digest) is None


@pytest.mark.parametrize("via", ["docker_config", "dockerconfigjson"])
def test_authenticated_pull_and_push(auth_registry: LocalRegistry, via: str) -> None:
    creds = (
        auth_registry.docker_config()
        if via == "docker_config"
        else DockerConfig.from_dockerconfigjson(auth_registry.dockerconfigjson())
    )
    with RegistryClient(credentials=creds, plain_http=[auth_registry.host]) as client:
        ref = f"{auth_registry.host}/acme/private:v1"
        digest = push_image(client, ref)
        assert client.resolve(ref) == digest
        before = auth_registry.token_issuer.issued if auth_registry.token_issuer else 0
        for _ in range(3):
            assert client.resolve(ref) == digest
        if auth_registry.token_issuer is not None:
            # The pull-scoped token is cached: no new token for repeated reads.
            assert auth_registry.token_issuer.issued - before <= 1


def test_anonymous_client_is_refused(auth_registry: LocalRegistry) -> None:
    with (
        auth_registry.client(authenticated=True) as writer,
        auth_registry.client(authenticated=False) as anonymous,
    ):
        ref = f"{auth_registry.host}/acme/locked:v1"
        push_image(writer, ref)
        expected = "requires credentials" if auth_registry.auth == "basic" else "refused a token"
        with pytest.raises(RegistryAuthError, match=expected):
            anonymous.resolve(ref)


def test_wrong_password_is_refused(auth_registry: LocalRegistry) -> None:
    bad = DockerConfig.from_dockerconfigjson(
        b'{"auths": {"%s": {"username": "sampler", "password": "wrong"}}}'
        % auth_registry.host.encode()
    )
    with RegistryClient(credentials=bad, plain_http=[auth_registry.host]) as client:
        with pytest.raises(RegistryAuthError) as err:
            client.resolve(f"{auth_registry.host}/acme/locked:v1")
        assert "wrong" not in str(err.value)  # never echo the secret


def test_with_credentials_shares_the_pool(auth_registry: LocalRegistry) -> None:
    with auth_registry.client(authenticated=False) as base:
        scoped = base.with_credentials(auth_registry.docker_config())
        ref = f"{auth_registry.host}/acme/shared:v1"
        digest = push_image(scoped, ref)
        assert scoped.resolve(ref) == digest
        with pytest.raises(RegistryAuthError):
            base.resolve(ref)


def test_unreachable_registry_is_temporary() -> None:
    with RegistryClient(plain_http=["127.0.0.1:9"], timeout=0.3, retries=2, backoff=0.01) as c:
        with pytest.raises(RegistryUnavailableError, match="unreachable") as err:
            c.resolve("127.0.0.1:9/acme/x:1")
        assert isinstance(err.value, TemporaryError)
