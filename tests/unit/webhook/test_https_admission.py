"""The webhook over real HTTPS: AdmissionReview v1 bodies in, decisions and patches out."""

from __future__ import annotations

import copy
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from samplerguard.policy import parse_policy
from samplerguard.webhook import (
    Admission,
    InjectionConfig,
    ReloadingCertificate,
    StaticNamespaceLabels,
    StaticPolicySource,
    WebhookConfig,
    WebhookServer,
)
from tests.support.webhook import (
    REGISTRY,
    RegistryDouble,
    encode,
    patched,
    policy,
    post,
    review,
    workload,
    write_self_signed,
)

# One server for the whole module (each test sends its own requests; cache state carries
# over, which the caching test accounts for by counting calls before and after).


@pytest.fixture(scope="module")
def _world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[httpx.Client, RegistryDouble, WebhookServer, Admission]]:
    tmp = tmp_path_factory.mktemp("https")
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    write_self_signed(cert, key)
    registry = RegistryDouble()
    for ref in ("acme/sampler:1.0", "samplerguard/sidecar:0.1", "samplerguard/hook:0.1"):
        registry.push(f"{REGISTRY}/{ref}")
    registry.push(f"{REGISTRY}/acme/unsigned:1.0", signed=False)
    config = WebhookConfig(
        port=0,
        certfile=str(cert),
        keyfile=str(key),
        injection=InjectionConfig(
            sidecar_image=f"{REGISTRY}/samplerguard/sidecar:0.1",
            hook_image=f"{REGISTRY}/samplerguard/hook:0.1",
            drbg_secret="samplerguard-drbg",
        ),
    )
    admission = Admission(
        config,
        StaticPolicySource(
            [
                parse_policy(policy("acme", f"{REGISTRY}/acme/**")),
                parse_policy(policy("injected", f"{REGISTRY}/samplerguard/**")),
            ]
        ),
        registry,
        registry,
        namespaces=StaticNamespaceLabels(
            {
                "ml": {"samplerguard.dev/enforce": "true"},
                "dev": {"team": "dev"},
                "kube-system": {"samplerguard.dev/enforce": "true"},
            }
        ),
    )
    ctx = ssl.create_default_context(cafile=str(cert))
    with (
        WebhookServer(config, admission, ReloadingCertificate(cert, key)) as srv,
        httpx.Client(base_url=srv.url, verify=ctx, timeout=10) as client,
    ):
        yield client, registry, srv, admission


@pytest.fixture
def client(_world: tuple[httpx.Client, RegistryDouble, WebhookServer, Admission]) -> httpx.Client:
    return _world[0]


@pytest.fixture
def registry(
    _world: tuple[httpx.Client, RegistryDouble, WebhookServer, Admission],
) -> RegistryDouble:
    return _world[1]


@pytest.fixture
def server(_world: tuple[httpx.Client, RegistryDouble, WebhookServer, Admission]) -> WebhookServer:
    return _world[2]


@pytest.fixture
def admission(_world: tuple[httpx.Client, RegistryDouble, WebhookServer, Admission]) -> Admission:
    return _world[3]


SIGNED = f"{REGISTRY}/acme/sampler:1.0"
UNSIGNED = f"{REGISTRY}/acme/unsigned:1.0"
KINDS = ["Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"]


def test_signed_pod_is_pinned_and_injected(client: httpx.Client, registry: RegistryDouble) -> None:
    pod = workload("Pod", SIGNED)
    response = post(client, "/mutate", review(pod))
    assert response["allowed"] is True
    out = patched(pod, response)
    spec = out["spec"]
    assert spec["containers"][0]["image"] == f"{REGISTRY}/acme/sampler@{registry.tags[SIGNED]}"
    init = spec["initContainers"]
    assert [c["name"] for c in init] == ["samplerguard-hook-init", "samplerguard-sidecar"]
    assert init[1]["restartPolicy"] == "Always"
    # The injected images were verified and pinned in the same pass.
    assert init[0]["image"].endswith(registry.tags[f"{REGISTRY}/samplerguard/hook:0.1"])
    assert init[1]["image"].endswith(registry.tags[f"{REGISTRY}/samplerguard/sidecar:0.1"])
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["PYTHONPATH"] == "/samplerguard/python"
    assert env["SAMPLERGUARD_SOCKET"] == "/var/run/samplerguard/sidecar.sock"
    assert env["SAMPLERGUARD_TENANT"] == "ml"
    assert env["SAMPLERGUARD_POLICY"] == "ClusterSamplerPolicy/acme"
    assert env["A"] == "1"
    # the policy's rng.mode is ctr-drbg (the default): the app draws the sidecar's seeds
    assert env["SAMPLERGUARD_RNG_MODE"] == "ctr-drbg"
    assert {v["name"] for v in spec["volumes"]} == {
        "samplerguard-python",
        "samplerguard-run",
        "samplerguard-state",
        "samplerguard-drbg",
    }
    assert out["metadata"]["annotations"]["samplerguard.dev/injected"] == "true"


def test_reinvocation_changes_nothing(client: httpx.Client) -> None:
    pod = workload("Pod", SIGNED)
    once = patched(pod, post(client, "/mutate", review(pod)))
    again = post(client, "/mutate", review(once))
    assert again["allowed"] is True
    assert "patch" not in again
    assert post(client, "/validate", review(once))["allowed"] is True


def _sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(
        c for c in pod["spec"]["initContainers"] if c["name"] == "samplerguard-sidecar"
    )
    return found


def _tamper_image(pod: dict[str, Any]) -> None:
    sidecar = _sidecar_of(pod)
    sidecar["image"] = SIGNED  # a signed image of the provider's, named as the sidecar
    sidecar["volumeMounts"] = [
        m for m in sidecar["volumeMounts"] if m["name"] != "samplerguard-drbg"
    ]


def _tamper_env(pod: dict[str, Any]) -> None:
    env = _sidecar_of(pod)["env"]
    key = next(e for e in env if e["name"] == "SAMPLERGUARD_KEY_FILE")
    key["value"] = "/var/lib/samplerguard/openings/provider-key.pem"


def _tamper_policy(pod: dict[str, Any]) -> None:
    # the app's sidecar enforcing a policy other than the one the pod is governed by
    pod["metadata"]["annotations"]["samplerguard.dev/policy"] = "ClusterSamplerPolicy/injected"


def _tamper_state_volume(pod: dict[str, Any]) -> None:
    state = next(v for v in pod["spec"]["volumes"] if v["name"] == "samplerguard-state")
    state.pop("emptyDir")
    # a volume the provider pre-filled with a signing key it knows
    state["persistentVolumeClaim"] = {"claimName": "provider-keys"}


def _tamper_drbg_volume(pod: dict[str, Any]) -> None:
    drbg = next(v for v in pod["spec"]["volumes"] if v["name"] == "samplerguard-drbg")
    drbg["secret"]["secretName"] = "provider-drbg"  # a master secret the provider knows


def _tamper_app_mount(pod: dict[str, Any]) -> None:
    pod["spec"]["containers"][0].setdefault("volumeMounts", []).append(
        {"name": "samplerguard-state", "mountPath": "/peek"}
    )


def _tamper_no_sidecar(pod: dict[str, Any]) -> None:
    pod["spec"]["initContainers"] = [
        c for c in pod["spec"]["initContainers"] if c["name"] != "samplerguard-sidecar"
    ]


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_tamper_image, "not the sidecar image samplerguard injects"),
        (_tamper_env, "container's env is not the one samplerguard injects"),
        (_tamper_policy, "container's env is not the one samplerguard injects"),
        (_tamper_state_volume, "volume 'samplerguard-state' is not the one"),
        (_tamper_drbg_volume, "volume 'samplerguard-drbg' is not the one"),
        (_tamper_app_mount, "container 'c0' mounts the sidecar's samplerguard-state"),
        (_tamper_no_sidecar, "annotation but no samplerguard-sidecar container"),
    ],
)
def test_a_pod_bringing_its_own_sidecar_is_denied(
    client: httpx.Client, tamper: Callable[[dict[str, Any]], None], expected: str
) -> None:
    """An adaptive provider creates its pod with the injection already in place, changed
    where it would let it sign, seed or report for itself. The webhook injects nothing into a
    pod that carries the sidecar, so it must hold what the pod carries to be its own injection,
    at the mutating pass and again at the validating one."""
    pod = workload("Pod", SIGNED)
    honest = patched(pod, post(client, "/mutate", review(pod)))
    forged = copy.deepcopy(honest)
    tamper(forged)
    for path in ("/mutate", "/validate"):
        response = post(client, path, review(forged))
        assert response["allowed"] is False, (path, response)
        message = response["status"]["message"]
        assert expected in message, message
        assert "never brings its own" in message


def test_a_pod_carrying_the_injection_outside_the_opted_in_scopes_is_denied(
    client: httpx.Client,
) -> None:
    """The webhook injects only where pods opted in (namespace or pod label); a pod anywhere
    else carrying the injection brought its own, and the verifier would audit it."""
    pod = workload("Pod", SIGNED)
    honest = patched(pod, post(client, "/mutate", review(pod)))
    for path in ("/mutate", "/validate"):
        response = post(client, path, review(honest, namespace="dev"))
        assert response["allowed"] is False, path
        assert "is not opted in" in response["status"]["message"]
    # a plain pod there is none of samplerguard's business
    assert post(client, "/validate", review(pod, namespace="dev"))["allowed"] is True


def test_the_injection_as_made_passes_validation_and_reinvocation(client: httpx.Client) -> None:
    pod = workload("Pod", SIGNED)
    honest = patched(pod, post(client, "/mutate", review(pod)))
    for path in ("/mutate", "/validate"):
        assert post(client, path, review(honest))["allowed"] is True
    # another webhook may add to the parts that do not decide what the sidecar is
    more = copy.deepcopy(honest)
    _sidecar_of(more)["resources"]["limits"]["cpu"] = "1"
    assert post(client, "/validate", review(more))["allowed"] is True
    # the API server writes quantities back in canonical form
    state = next(v for v in more["spec"]["volumes"] if v["name"] == "samplerguard-state")
    assert state["emptyDir"]["sizeLimit"] == "2048Mi"
    state["emptyDir"]["sizeLimit"] = "2Gi"
    assert post(client, "/validate", review(more))["allowed"] is True
    state["emptyDir"]["sizeLimit"] = "3Gi"
    assert post(client, "/validate", review(more))["allowed"] is False
    state["emptyDir"]["sizeLimit"] = "2Gi"
    # and the API server's ServiceAccount admission, run again after the webhooks, mounts the
    # pod's token into every container, the sidecar included
    token = {
        "name": "kube-api-access-x1",
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
        "readOnly": True,
    }
    _sidecar_of(more)["volumeMounts"].append(token)
    assert post(client, "/validate", review(more))["allowed"] is True
    # but nothing else, nor the token path writable or elsewhere
    for mount in (
        {**token, "readOnly": False},
        {**token, "mountPath": "/var/lib/samplerguard"},
        {**token, "subPath": "token"},
    ):
        odd = copy.deepcopy(honest)
        _sidecar_of(odd)["volumeMounts"].append(mount)
        response = post(client, "/validate", review(odd))
        assert response["allowed"] is False, mount
        assert "volumeMounts is not the one samplerguard injects" in response["status"]["message"]


def test_denial_names_image_policy_and_reason(client: httpx.Client) -> None:
    response = post(client, "/validate", review(workload("Pod", SIGNED, UNSIGNED)))
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    message = response["status"]["message"]
    assert f"image {UNSIGNED}" in message
    assert "policy ClusterSamplerPolicy/acme" in message
    assert "no signature verifies" in message
    assert SIGNED not in message


def test_mutate_denies_before_injecting(client: httpx.Client) -> None:
    response = post(client, "/mutate", review(workload("Pod", UNSIGNED)))
    assert response["allowed"] is False
    assert "patch" not in response


@pytest.mark.parametrize("kind", KINDS)
def test_pod_templates_of_every_kind(client: httpx.Client, kind: str) -> None:
    bad = post(client, "/validate", review(workload(kind, UNSIGNED), kind=kind))
    assert bad["allowed"] is False
    assert f"{kind} ml/sampler" in bad["status"]["message"]
    good = workload(kind, SIGNED, init=(SIGNED,))
    response = post(client, "/mutate", review(good, kind=kind))
    assert response["allowed"] is True
    out = patched(good, response)
    if kind != "Pod":  # templates get pinned, never injected
        text = str(out)
        assert "samplerguard-sidecar" not in text
        assert "acme/sampler@sha256:" in text
        assert SIGNED not in text


def test_unmatched_image_is_denied(client: httpx.Client) -> None:
    response = post(client, "/validate", review(workload("Pod", "busybox:1.36")))
    assert response["allowed"] is False
    assert (
        "image busybox:1.36: policy (no policy): no policy's image rules match"
        in (response["status"]["message"])
    )


def test_unknown_tag_is_denied(client: httpx.Client) -> None:
    response = post(client, "/validate", review(workload("Pod", f"{REGISTRY}/acme/sampler:9")))
    assert response["allowed"] is False
    assert "cannot resolve the tag" in response["status"]["message"]


def test_namespace_not_opted_in_is_left_alone(client: httpx.Client) -> None:
    response = post(client, "/mutate", review(workload("Pod", UNSIGNED), namespace="dev"))
    assert response == {"uid": response["uid"], "allowed": True}


def test_pod_label_opts_in(client: httpx.Client) -> None:
    pod = workload("Pod", UNSIGNED, labels={"samplerguard.dev/inject": "true"})
    response = post(client, "/validate", review(pod, namespace="dev"))
    assert response["allowed"] is False


@pytest.mark.parametrize("namespace", ["kube-system", "samplerguard"])
def test_exempt_namespaces_are_never_touched(client: httpx.Client, namespace: str) -> None:
    pod = workload("Pod", UNSIGNED, labels={"samplerguard.dev/inject": "true"})
    response = post(client, "/mutate", review(pod, namespace=namespace))
    assert response["allowed"] is True
    assert "patch" not in response


def test_ephemeral_containers_are_checked(client: httpx.Client) -> None:
    pod = workload("Pod", SIGNED)
    pod["spec"]["ephemeralContainers"] = [{"name": "debug", "image": UNSIGNED}]
    body = review(pod, operation="UPDATE", sub_resource="ephemeralcontainers")
    assert post(client, "/validate", body)["allowed"] is False


@pytest.mark.parametrize(
    ("operation", "sub_resource"), [("DELETE", None), ("UPDATE", "status"), ("UPDATE", "scale")]
)
def test_requests_without_new_pod_spec_pass(
    client: httpx.Client, operation: str, sub_resource: str | None
) -> None:
    body = review(workload("Pod", UNSIGNED), operation=operation, sub_resource=sub_resource)
    assert post(client, "/validate", body)["allowed"] is True


def test_dying_objects_pass(client: httpx.Client) -> None:
    pod = workload("Pod", UNSIGNED)
    pod["metadata"]["deletionTimestamp"] = "2026-11-23T20:00:00Z"
    assert post(client, "/validate", review(pod, operation="UPDATE"))["allowed"] is True


def test_malformed_object_is_a_clean_denial(client: httpx.Client) -> None:
    pod = workload("Pod", SIGNED)
    pod["spec"]["containers"] = {"name": "x"}
    response = post(client, "/validate", review(pod))
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "containers must be a list" in response["status"]["message"]


def test_wrong_kind_is_denied(client: httpx.Client) -> None:
    body = review({"metadata": {"name": "c"}, "data": {}}, kind="ConfigMap")
    response = post(client, "/validate", body)
    assert response["allowed"] is False
    assert "carries no pod spec" in response["status"]["message"]


def test_verdicts_are_cached(client: httpx.Client, registry: RegistryDouble) -> None:
    post(client, "/validate", review(workload("Pod", SIGNED, UNSIGNED)))
    calls = registry.verify_calls
    for _ in range(3):
        post(client, "/validate", review(workload("Pod", SIGNED, UNSIGNED)))
    # A pass (fresh TTL) and a rejection (failure TTL) were each verified once.
    assert registry.verify_calls == calls


def test_http_errors_are_4xx(client: httpx.Client, server: WebhookServer) -> None:
    ok_body = review(workload("Pod", SIGNED))
    r = client.post("/validate", content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/validate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    wrong = dict(ok_body, apiVersion="admission.k8s.io/v1beta1")
    r = client.post("/validate", json=wrong)
    assert r.status_code == 400
    assert "apiVersion" in r.text
    r = client.post(
        "/validate", json={"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}
    )
    assert r.status_code == 400
    assert "no request" in r.text
    big = b"[" + b"0," * (server.config.max_body_bytes // 2) + b"0]"
    assert _status(client, big) == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        for _ in range(64):
            yield b" " * (server.config.max_body_bytes // 32)

    assert _status(client, chunks()) == 413
    assert client.get("/validate").status_code == 405


def _status(client: httpx.Client, content: bytes | Iterator[bytes]) -> int:
    """The status of an oversized POST. The server answers 413 without reading the rest and
    closes; a client still writing may see the close before the answer, which counts too."""
    try:
        r = client.post("/mutate", content=content, headers={"content-type": "application/json"})
    except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
        return 413
    return r.status_code


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").text == "ok"
    assert client.get("/readyz").status_code == 200


def test_fastapi_routes_answer_like_the_hot_path(
    client: httpx.Client, admission: Admission
) -> None:
    from fastapi.testclient import TestClient

    from samplerguard.webhook.app import create_app

    body = review(workload("Pod", UNSIGNED))
    hot = post(client, "/validate", body)
    with TestClient(create_app(admission)) as plain:
        r = plain.post(
            "/validate", content=encode(body), headers={"content-type": "application/json"}
        )
        assert r.status_code == 200
        assert r.json()["response"] == hot
        assert (
            plain.post("/mutate", content=b"{}", headers={"content-type": "text/plain"}).status_code
            == 415
        )


def test_a_stalled_body_gets_408_within_the_deadline(
    tmp_path_factory: pytest.TempPathFactory, registry: RegistryDouble
) -> None:
    import socket

    tmp = tmp_path_factory.mktemp("stall")
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    write_self_signed(cert, key)
    config = WebhookConfig(port=0, certfile=str(cert), keyfile=str(key), deadline=0.5)
    admission = Admission(config, StaticPolicySource([]), registry, registry)
    ctx = ssl.create_default_context(cafile=str(cert))
    with WebhookServer(config, admission, ReloadingCertificate(cert, key)) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"apiVersion":'
            )
            answer = tls.recv(4096)  # the server answers without the rest of the body
    assert answer.startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize("containers", [None, []])
def test_a_pod_with_no_containers_is_refused_not_admitted(
    client: httpx.Client, containers: list[object] | None
) -> None:
    pod = workload("Pod", SIGNED)
    pod["spec"].pop("containers")
    if containers is not None:
        pod["spec"]["containers"] = containers
    for path in ("/validate", "/mutate"):
        answer = post(client, path, review(pod))
        assert answer["allowed"] is False and answer["status"]["code"] == 400
        assert "spec.containers must list at least one container" in answer["status"]["message"]


def test_denials_are_logged_as_structured_records(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import logging

    from samplerguard.telemetry.logs import JsonFormatter

    with caplog.at_level(logging.WARNING, logger="samplerguard.denials"):
        post(client, "/validate", review(workload("Pod", UNSIGNED)))
    record = next(r for r in caplog.records if r.name == "samplerguard.denials")
    doc = json.loads(JsonFormatter().format(record))
    assert doc["event"] == "denied" and doc["component"] == "webhook"
    assert doc["subject"].startswith("Pod ") and doc["operation"] == "validate"
    assert doc["check"] == "Forbidden"
    assert f"image {UNSIGNED}" in doc["reason"] and "no signature verifies" in doc["reason"]
    assert doc["level"] == "WARNING" and doc["logger"] == "samplerguard.denials"


def test_metrics_endpoint_answers(client: httpx.Client) -> None:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
