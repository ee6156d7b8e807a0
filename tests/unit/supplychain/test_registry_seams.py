"""Registry failure modes through httpx.MockTransport, and the referrers-API path."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.policy.spec import Authority, ImageRule, KeyAuthority, SamplerPolicySpec
from samplerguard.supplychain import (
    DockerConfig,
    ImageVerifier,
    RegistryAuthError,
    RegistryUnavailableError,
)
from samplerguard.supplychain.cosign import (
    COSIGN_SIG_ARTIFACT_TYPE,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    simple_signing_payload,
)
from tests.support.fakeregistry import HOST, OCI_MANIFEST, FakeRegistry, digest_of
from tests.support.publish import Signer

REF = f"{HOST}/acme/x:1.0"


def test_retries_then_succeeds() -> None:
    reg = FakeRegistry()
    digest = reg.image()
    failures = iter([503, 502])

    def flaky(request: httpx.Request) -> httpx.Response | None:
        code = next(failures, None)
        return httpx.Response(code) if code else None

    reg.hook = flaky
    with reg.client() as client:
        assert client.resolve(REF) == digest
    assert len(reg.calls) == 3


@pytest.mark.parametrize("status", [429, 500, 503])
def test_persistent_5xx_is_temporary(status: int) -> None:
    reg = FakeRegistry()
    reg.hook = lambda request: httpx.Response(status)
    with (
        reg.client() as client,
        pytest.raises(RegistryUnavailableError, match=f"answered {status}"),
    ):
        client.resolve(REF)
    assert len(reg.calls) == 3  # one try and two retries, then give up


def test_network_errors_are_temporary() -> None:
    reg = FakeRegistry()

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    reg.hook = boom
    with reg.client() as client, pytest.raises(RegistryUnavailableError, match="unreachable"):
        client.resolve(REF)


def test_oversized_bodies_are_refused() -> None:
    reg = FakeRegistry()
    reg.image()
    reg.hook = lambda request: (
        httpx.Response(200, content=b"{" * (5 << 20), headers={"Content-Type": OCI_MANIFEST})
        if request.method == "GET"
        else None
    )
    with reg.client() as client, pytest.raises(MalformedInputError, match=r"at most|exceeds"):
        client.get_manifest(REF)
    reg.hook = None
    big = reg.put_blob(b"x" * 2048)
    with reg.client(max_blob_bytes=1024) as client, pytest.raises(MalformedInputError):
        client.get_blob(REF, big["digest"])


def test_lying_registry_is_caught() -> None:
    reg = FakeRegistry()
    digest = reg.image()
    blob = reg.put_blob(b"honest")
    reg.blobs[blob["digest"]] = b"forged"
    reg.manifests[("acme/x", digest)] = (
        b'{"schemaVersion": 2, "layers": [], "config": '
        b'{"mediaType": "x", "digest": "' + digest.encode() + b'", "size": 1}}',
        OCI_MANIFEST,
    )
    with reg.client() as client:
        with pytest.raises(VerificationError, match="digest mismatch"):
            client.get_blob(REF, blob["digest"])
        with pytest.raises(VerificationError, match="digest mismatch"):
            client.get_manifest(f"{HOST}/acme/x@{digest}")


def test_bearer_challenge_flow_and_token_cache() -> None:
    reg = FakeRegistry()
    digest = reg.image()
    issued: list[str] = []

    def auth(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "auth.test":
            assert request.headers["Authorization"].startswith("Basic ")
            assert request.url.params["scope"] == "repository:acme/x:pull"
            assert request.url.params["service"] == "registry.test"
            issued.append("t")
            return httpx.Response(200, json={"token": f"tok{len(issued)}", "expires_in": 300})
        if request.headers.get("Authorization") != "Bearer tok1":
            return httpx.Response(
                401,
                headers={
                    "WWW-Authenticate": 'Bearer realm="https://auth.test/token",'
                    'service="registry.test",scope="repository:acme/x:pull"'
                },
            )
        return None

    reg.hook = auth
    creds = DockerConfig.from_dockerconfigjson(
        b'{"auths": {"registry.test": {"username": "u", "password": "p"}}}'
    )
    with reg.client(credentials=creds) as client:
        for _ in range(3):
            assert client.resolve(REF) == digest
    assert issued == ["t"]


def test_bad_realm_and_scheme_are_auth_errors() -> None:
    reg = FakeRegistry()
    reg.image()
    for header in ('Bearer realm="file:///etc/passwd"', "Negotiate x", ""):
        reg.hook = lambda request, h=header: httpx.Response(401, headers={"WWW-Authenticate": h})
        with reg.client() as client, pytest.raises(RegistryAuthError):
            client.resolve(REF)


def test_blob_redirect_drops_the_token() -> None:
    reg = FakeRegistry()
    reg.image()
    blob = reg.put_blob(b"payload")
    seen: dict[str, str | None] = {}

    def redirect(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "cdn.test":
            seen["auth"] = request.headers.get("Authorization")
            return httpx.Response(200, content=b"payload")
        if "/blobs/" in request.url.path:
            return httpx.Response(307, headers={"Location": "https://cdn.test/blob?sig=1"})
        return None

    reg.hook = redirect
    with reg.client() as client:
        assert client.get_blob(REF, blob["digest"]) == b"payload"
    assert seen == {"auth": None}


def _sig_manifest(
    reg: FakeRegistry, signer: Signer, digest: str, name: str = f"{HOST}/acme/x"
) -> tuple[bytes, dict[str, object]]:
    payload = simple_signing_payload(name, digest)
    layer = reg.put_blob(payload)
    layer["mediaType"] = SIMPLE_SIGNING_MEDIA_TYPE
    layer["annotations"] = {SIGNATURE_ANNOTATION: base64.b64encode(signer.sign(payload)).decode()}
    config = reg.put_blob(b"{}")
    config["mediaType"] = "application/vnd.oci.empty.v1+json"
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": COSIGN_SIG_ARTIFACT_TYPE,
            "config": config,
            "layers": [layer],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1},
        }
    ).encode()
    return raw, {
        "mediaType": OCI_MANIFEST,
        "digest": digest_of(raw),
        "size": len(raw),
        "artifactType": COSIGN_SIG_ARTIFACT_TYPE,
    }


def test_signature_found_through_the_referrers_api() -> None:
    reg = FakeRegistry()
    digest = reg.image()
    signer = Signer.generate()
    raw, desc = _sig_manifest(reg, signer, digest)
    reg.put_manifest("acme/x", raw)  # no .sig tag: only the referrers API lists it
    reg.referrers = {digest: [desc]}
    spec = SamplerPolicySpec(
        images=[
            ImageRule(
                glob=f"{HOST}/acme/*",
                authorities=[Authority(name="k", key=KeyAuthority(public_key=signer.public_pem))],
            )
        ]
    )
    with reg.client() as client:
        verdict = ImageVerifier(client).verify(REF, spec, policy_name="p")
    assert verdict.passed, verdict.summary()
    assert "referrer sha256:" in verdict.checks[-1].detail
    # cosign's payload is rebuilt from the name and digest: its blob is never fetched.
    assert not [c for c in reg.calls if "/blobs/" in c]
    # Without the referrers API, the same registry has nothing for this image.
    reg.referrers = None
    with reg.client() as client:
        verdict = ImageVerifier(client).verify(REF, spec, policy_name="p")
    assert not verdict.passed and "no signatures found" in verdict.reasons[0]


def test_verification_budget_bounds_a_silent_registry() -> None:
    """A registry that accepts connections and never answers: the verification gives up
    at its budget, not after timeout x retries x requests."""
    import socket
    import time

    from samplerguard.supplychain import RegistryClient

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        spec = SamplerPolicySpec(
            images=[
                ImageRule(
                    glob="127.0.0.1:*/acme/*",
                    authorities=[
                        Authority(
                            name="k", key=KeyAuthority(public_key=Signer.generate().public_pem)
                        )
                    ],
                )
            ]
        )
        with RegistryClient(plain_http=[host], timeout=5.0, retries=2) as client:
            verifier = ImageVerifier(client, budget=0.4)
            start = time.monotonic()
            with pytest.raises(RegistryUnavailableError, match="unreachable"):
                verifier.verify(f"{host}/acme/x:1", spec, policy_name="p")
            assert time.monotonic() - start < 2.0


def test_budget_covers_the_fetch_pool() -> None:
    import time

    reg = FakeRegistry()
    digest = reg.image()
    # A payload naming another repository cannot be rebuilt locally: its blob must be fetched.
    raw, _ = _sig_manifest(reg, Signer.generate(), digest, name="mirror.test/acme/x")
    reg.put_manifest("acme/x", raw, tag=f"sha256-{digest[7:]}.sig")
    slow_calls: list[str] = []

    def slow(request: httpx.Request) -> httpx.Response | None:
        slow_calls.append(request.url.path)
        time.sleep(0.15)
        return None

    reg.hook = slow
    spec = SamplerPolicySpec(
        images=[
            ImageRule(
                glob=f"{HOST}/acme/*",
                authorities=[
                    Authority(name="k", key=KeyAuthority(public_key=Signer.generate().public_pem))
                ],
            )
        ]
    )
    with reg.client() as client:
        start = time.monotonic()
        with pytest.raises(RegistryUnavailableError):
            ImageVerifier(client, budget=0.2).verify(REF, spec, policy_name="p")
        assert time.monotonic() - start < 1.5
    assert any("/blobs/" in c for c in slow_calls) is False  # the blob fetch never started


def test_resolve_falls_back_to_get_when_head_is_refused() -> None:
    reg = FakeRegistry()
    digest = reg.image()
    reg.hook = lambda request: httpx.Response(405) if request.method == "HEAD" else None
    with reg.client() as client:
        assert client.resolve(REF) == digest
    assert reg.calls[-1] == "GET /v2/acme/x/manifests/1.0"


@pytest.mark.parametrize("target", ["manifests/1.0", "referrers/", "sha256-", ".sig", ".att"])
def test_garbage_from_the_registry_is_a_failed_verdict(target: str) -> None:
    """Whatever the registry sends, the pod's reference was fine: a failed verdict, never
    MalformedInputError (which would blame the request)."""
    reg = FakeRegistry()
    reg.image()
    reg.referrers = {}

    def garbage(request: httpx.Request) -> httpx.Response | None:
        if target in request.url.path and request.method == "GET":
            return httpx.Response(
                200,
                content=b"\x00not json",
                headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
            )
        if target == "manifests/1.0" and request.method == "HEAD":
            return httpx.Response(405)
        return None

    reg.hook = garbage
    spec = SamplerPolicySpec(
        images=[
            ImageRule(
                glob=f"{HOST}/acme/*",
                authorities=[
                    Authority(name="k", key=KeyAuthority(public_key=Signer.generate().public_pem))
                ],
            )
        ]
    )
    with reg.client() as client:
        verdict = ImageVerifier(client).verify(REF, spec, policy_name="p")
    assert not verdict.passed
