"""DRBG noise in injected pods: the policy's ``rng.mode`` decides the wiring, the namespace's
DRBG Secret reaches the sidecar alone, and a DRBG policy without the Secret never falls back to
framework noise silently."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from samplerguard.errors import MalformedInputError
from samplerguard.policy import parse_policy
from samplerguard.webhook import (
    Admission,
    AdmissionRequest,
    InjectionConfig,
    StaticNamespaceLabels,
    StaticPolicySource,
    WebhookConfig,
)
from tests.support.webhook import (
    REGISTRY,
    RegistryDouble,
    inject,
    patched_ops,
    policy,
    review,
    workload,
)

SIGNED = f"{REGISTRY}/acme/sampler:1.0"
SECRET = "sg-drbg"
CFG = InjectionConfig(
    sidecar_image=f"{REGISTRY}/samplerguard/sidecar@sha256:" + "a" * 64,
    hook_image="h@sha256:" + "b" * 64,
    drbg_secret=SECRET,
)


def _inject(pod: dict[str, Any], rng_mode: str, cfg: InjectionConfig = CFG) -> dict[str, Any]:
    out: dict[str, Any] = inject(pod, cfg, rng_mode)[0]
    return out


def _sidecar(spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in spec["initContainers"] if c["name"] == "samplerguard-sidecar")


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.mark.parametrize("mode", ["ctr-drbg", "hmac-drbg"])
def test_a_drbg_policy_wires_the_secret_into_the_sidecar_and_the_mode_into_the_app(
    mode: str,
) -> None:
    out = _inject(workload("Pod", "app", "helper"), mode)
    spec = out["spec"]
    sidecar = _sidecar(spec)
    env = _env(sidecar)
    assert env["SAMPLERGUARD_RNG_MODE"] == mode
    assert env["SAMPLERGUARD_MASTER_SECRET_FILE"] == "/etc/samplerguard/drbg/master-secret"
    assert env["SAMPLERGUARD_ESCROW_PUBLIC_KEY"] == "/etc/samplerguard/drbg/escrow-public.pem"
    mount = next(m for m in sidecar["volumeMounts"] if m["name"] == "samplerguard-drbg")
    assert mount == {
        "name": "samplerguard-drbg",
        "mountPath": "/etc/samplerguard/drbg",
        "readOnly": True,
    }
    volume = next(v for v in spec["volumes"] if v["name"] == "samplerguard-drbg")
    assert volume["secret"]["secretName"] == SECRET
    assert volume["secret"]["optional"] is False  # no Secret, no pod: fail closed
    assert {i["key"] for i in volume["secret"]["items"]} == {"master-secret", "escrow-public.pem"}
    for app in spec["containers"]:
        # the hook draws from the sidecar's seeds, with no change in the app's code
        assert _env(app)["SAMPLERGUARD_RNG_MODE"] == mode
        assert "SAMPLERGUARD_MASTER_SECRET_FILE" not in _env(app)


def test_nothing_but_the_sidecar_mounts_the_master_secret() -> None:
    spec = _inject(workload("Pod", "app", "helper", init=("setup",)), "ctr-drbg")["spec"]
    others = [c for c in spec["containers"] + spec["initContainers"]]
    others = [c for c in others if c["name"] != "samplerguard-sidecar"]
    assert len(others) == 4  # two app containers, the app's init container, the hook's
    for container in others:
        names = {m["name"] for m in container.get("volumeMounts", [])}
        assert "samplerguard-drbg" not in names, container["name"]
        paths = [m["mountPath"] for m in container.get("volumeMounts", [])]
        assert not any("/etc/samplerguard/drbg".startswith(p.rstrip("/") + "/") for p in paths)
        assert not any(
            e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == SECRET
            for e in container.get("env", [])
        )


def test_a_framework_policy_gets_no_secret() -> None:
    spec = _inject(workload("Pod", "app"), "framework")["spec"]
    assert "samplerguard-drbg" not in {v["name"] for v in spec["volumes"]}
    env = _env(_sidecar(spec))
    assert "SAMPLERGUARD_MASTER_SECRET_FILE" not in env
    assert env["SAMPLERGUARD_RNG_MODE"] == "framework"
    assert _env(spec["containers"][0])["SAMPLERGUARD_RNG_MODE"] == "framework"


def test_the_app_cannot_override_the_mode_it_is_wired_for() -> None:
    pod = workload("Pod", "app")
    pod["spec"]["containers"][0]["env"].append(
        {"name": "SAMPLERGUARD_RNG_MODE", "value": "framework"}
    )
    spec = _inject(pod, "ctr-drbg")["spec"]
    modes = [e for e in spec["containers"][0]["env"] if e["name"] == "SAMPLERGUARD_RNG_MODE"]
    assert modes == [{"name": "SAMPLERGUARD_RNG_MODE", "value": "ctr-drbg"}]


def test_a_drbg_mode_without_a_secret_is_refused_by_the_injection() -> None:
    with pytest.raises(MalformedInputError, match="mounts no DRBG Secret"):
        _inject(workload("Pod", "app"), "ctr-drbg", replace(CFG, drbg_secret=None))


def test_a_pod_with_its_own_drbg_volume_name_or_mount_path_is_refused() -> None:
    pod = workload("Pod", "app")
    pod["spec"]["volumes"] = [{"name": "samplerguard-drbg", "emptyDir": {}}]
    with pytest.raises(MalformedInputError, match="'samplerguard-drbg'"):
        _inject(pod, "ctr-drbg")
    pod = workload("Pod", "app")
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "x", "mountPath": "/etc/samplerguard/drbg"}
    ]
    with pytest.raises(MalformedInputError, match="already mounts a volume at /etc/samplerguard"):
        _inject(pod, "ctr-drbg")


# --- through Admission ------------------------------------------------------------------------


def _spec_policy(name: str, glob: str, mode: str, rng: str) -> dict[str, Any]:
    body = policy(name, glob, mode)
    body["spec"]["rng"] = {"mode": rng}  # type: ignore[index]
    return body


def _admission(config: WebhookConfig, registry: RegistryDouble, mode: str, rng: str) -> Admission:
    return Admission(
        config,
        StaticPolicySource(
            [
                parse_policy(_spec_policy("acme", f"{REGISTRY}/acme/**", mode, rng)),
                parse_policy(policy("injected", f"{REGISTRY}/samplerguard/**")),
            ]
        ),
        registry,
        registry,
        namespaces=StaticNamespaceLabels({"ml": {"samplerguard.dev/enforce": "true"}}),
    )


def _run(adm: Admission, obj: dict[str, Any], *, mutate: bool = True, **kw: Any) -> Any:
    request = AdmissionRequest.model_validate(review(obj, **kw)["request"])
    answer = asyncio.run(adm.review(request, mutate=mutate))
    assert answer.response is not None
    return answer.response


def _no_drbg(config: WebhookConfig) -> WebhookConfig:
    return replace(config, injection=replace(config.injection, drbg_secret=None))


def test_an_enforced_drbg_policy_without_the_secret_is_denied(
    config: WebhookConfig, registry: RegistryDouble
) -> None:
    response = _run(
        _admission(_no_drbg(config), registry, "enforce", "ctr-drbg"), workload("Pod", SIGNED)
    )
    assert response.allowed is False
    message = response.status.message
    assert "policy ClusterSamplerPolicy/acme asks for ctr-drbg noise" in message
    assert "no DRBG Secret is configured" in message


def test_a_warn_drbg_policy_without_the_secret_runs_on_framework_noise_and_says_so(
    config: WebhookConfig, registry: RegistryDouble
) -> None:
    pod = workload("Pod", SIGNED)
    response = _run(_admission(_no_drbg(config), registry, "warn", "hmac-drbg"), pod)
    assert response.allowed is True
    assert any("every request is quarantined" in w for w in response.warnings)
    import base64
    import json

    ops = json.loads(base64.b64decode(response.patch))
    out = patched_ops(pod, ops)
    assert _env(out["spec"]["containers"][0])["SAMPLERGUARD_RNG_MODE"] == "framework"
    assert "samplerguard-drbg" not in {v["name"] for v in out["spec"]["volumes"]}


def test_a_framework_policy_needs_no_secret(
    config: WebhookConfig, registry: RegistryDouble
) -> None:
    response = _run(
        _admission(_no_drbg(config), registry, "enforce", "framework"), workload("Pod", SIGNED)
    )
    assert response.allowed is True and not response.warnings


@pytest.mark.parametrize(
    ("where", "edit"),
    [
        (
            "volume 'keys'",
            lambda spec: spec.setdefault("volumes", []).append(
                {"name": "keys", "secret": {"secretName": "samplerguard-drbg"}}
            ),
        ),
        (
            "volume 'mix'",
            lambda spec: spec.setdefault("volumes", []).append(
                {
                    "name": "mix",
                    "projected": {"sources": [{"secret": {"name": "samplerguard-drbg"}}]},
                }
            ),
        ),
        (
            "container 'c0'",
            lambda spec: spec["containers"][0]["env"].append(
                {
                    "name": "S",
                    "valueFrom": {
                        "secretKeyRef": {"name": "samplerguard-drbg", "key": "master-secret"}
                    },
                }
            ),
        ),
        (
            "container 'c0'",
            lambda spec: (
                spec["containers"][0]
                .setdefault("envFrom", [])
                .append({"secretRef": {"name": "samplerguard-drbg"}})
            ),
        ),
    ],
)
def test_a_pod_naming_the_drbg_secret_itself_is_denied(
    config: WebhookConfig, registry: RegistryDouble, where: str, edit: Any
) -> None:
    pod = workload("Pod", SIGNED)
    edit(pod["spec"])
    for mutate in (True, False):  # whichever webhook sees it first
        response = _run(_admission(config, registry, "enforce", "ctr-drbg"), pod, mutate=mutate)
        assert response.allowed is False
        assert (
            f"{where}: only the injected sidecar may read the Secret samplerguard-drbg"
            in response.status.message
        )


def test_an_injected_pod_passes_validation_and_a_debug_container_mounting_the_secret_does_not(
    config: WebhookConfig, registry: RegistryDouble
) -> None:
    import base64
    import json

    adm = _admission(config, registry, "enforce", "ctr-drbg")
    pod = workload("Pod", SIGNED)
    injected = patched_ops(pod, json.loads(base64.b64decode(_run(adm, pod).patch)))
    assert _run(adm, injected, mutate=False).allowed is True  # the sidecar's own mount is fine
    injected["spec"]["ephemeralContainers"] = [
        {
            "name": "debug",
            "image": SIGNED,
            "volumeMounts": [{"name": "samplerguard-drbg", "mountPath": "/peek"}],
        }
    ]
    response = _run(
        adm, injected, mutate=False, operation="UPDATE", sub_resource="ephemeralcontainers"
    )
    assert response.allowed is False
    assert "container 'debug' (mounts samplerguard-drbg)" in response.status.message
    # a look-alike "sidecar" running the app's image gets no access either
    lookalike = workload("Pod", SIGNED)
    lookalike["spec"]["containers"].append(
        {
            "name": "samplerguard-sidecar",
            "image": SIGNED,
            "volumeMounts": [{"name": "samplerguard-drbg", "mountPath": "/peek"}],
        }
    )
    lookalike["spec"]["volumes"] = [
        {"name": "samplerguard-drbg", "secret": {"secretName": "samplerguard-drbg"}}
    ]
    response = _run(adm, lookalike, mutate=False)
    assert response.allowed is False
    assert "container 'samplerguard-sidecar' (mounts samplerguard-drbg)" in response.status.message
