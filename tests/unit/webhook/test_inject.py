"""Injection details: PYTHONPATH prepending, plain sidecars, conflicts, idempotence."""

from __future__ import annotations

from typing import Any

import pytest

from samplerguard.errors import MalformedInputError
from samplerguard.webhook import InjectionConfig
from samplerguard.webhook.inject import injection_patch
from samplerguard.webhook.workloads import find_pod_template
from tests.support.webhook import inject, workload

CFG = InjectionConfig(sidecar_image="s@sha256:" + "a" * 64, hook_image="h@sha256:" + "b" * 64)


def _inject(pod: dict[str, Any], cfg: InjectionConfig = CFG) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any]
    out, warnings = inject(pod, cfg)
    return out, warnings


def test_pythonpath_is_prepended() -> None:
    pod = workload("Pod", "app")
    pod["spec"]["containers"][0]["env"].append({"name": "PYTHONPATH", "value": "/app/lib"})
    out, _ = _inject(pod)
    env = {e["name"]: e.get("value") for e in out["spec"]["containers"][0]["env"]}
    assert env["PYTHONPATH"] == "/samplerguard/python:/app/lib"
    assert env["A"] == "1"


def test_pythonpath_from_value_from_is_warned_about() -> None:
    pod = workload("Pod", "app")
    pod["spec"]["containers"][0]["env"].append(
        {"name": "PYTHONPATH", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}
    )
    _, warnings = _inject(pod)
    assert "valueFrom" in warnings[0]


def test_plain_sidecar_and_container_selection() -> None:
    from dataclasses import replace

    pod = workload("Pod", "app", "helper", annotations={"samplerguard.dev/container-names": "c1"})
    out, _ = _inject(pod, replace(CFG, native_sidecar=False))
    containers = out["spec"]["containers"]
    assert [c["name"] for c in containers] == ["c0", "c1", "samplerguard-sidecar"]
    assert "restartPolicy" not in containers[2]
    assert not any(e["name"] == "PYTHONPATH" for e in containers[0]["env"])
    assert any(e["name"] == "PYTHONPATH" for e in containers[1]["env"])
    assert out["metadata"]["annotations"]["samplerguard.dev/container-names"] == "c1"
    # Injected again: nothing to do.
    tpl = find_pod_template("", "Pod", out)
    assert injection_patch(tpl, CFG, sidecar_image="s", hook_image="h", tenant="t", policy="p") == (
        [],
        [],
    )


def test_conflicting_volume_is_refused() -> None:
    pod = workload("Pod", "app")
    pod["spec"]["volumes"] = [{"name": "samplerguard-run", "emptyDir": {}}]
    with pytest.raises(MalformedInputError, match="already has a volume named 'samplerguard-run'"):
        _inject(pod)
    pod = workload("Pod", "app")
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "x", "mountPath": "/var/run/samplerguard"}
    ]
    with pytest.raises(
        MalformedInputError, match="already mounts a volume at /var/run/samplerguard"
    ):
        _inject(pod)


def test_process_namespace_is_shared_so_the_sidecar_can_hash_the_solver_code() -> None:
    out, warnings = _inject(workload("Pod", "app"))
    assert out["spec"]["shareProcessNamespace"] is True and warnings == []
    pod = workload("Pod", "app")
    pod["spec"]["shareProcessNamespace"] = False  # the owner's choice is kept, and flagged
    out, warnings = _inject(pod)
    assert out["spec"]["shareProcessNamespace"] is False
    assert any("takes the hook's report" in w for w in warnings)


def test_the_app_cannot_reach_the_signing_key_or_the_openings() -> None:
    """A process with the app's view of the pod (any instrumented container, whatever its
    uid) sees the socket read-only and nothing of the sidecar's state: it cannot read the key
    to forge a commitment, plant a key for the next sidecar start, or delete an opening."""
    out, _ = _inject(workload("Pod", "app", "helper"))
    spec = out["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "samplerguard-sidecar")
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    state = next(m for m in sidecar["volumeMounts"] if m["name"] == "samplerguard-state")
    for path in (env["SAMPLERGUARD_KEY_FILE"], env["SAMPLERGUARD_OPENINGS_DIR"]):
        assert path.startswith(state["mountPath"] + "/")
    assert not env["SAMPLERGUARD_SOCKET"].startswith(state["mountPath"] + "/")
    for container in spec["containers"] + [
        c for c in spec["initContainers"] if c["name"] != "samplerguard-sidecar"
    ]:
        mounts = container.get("volumeMounts", [])
        assert all(m["name"] != "samplerguard-state" for m in mounts), container["name"]
        for m in mounts:
            if m["name"] == "samplerguard-run":
                assert m["readOnly"] is True
            assert not state["mountPath"].startswith(m["mountPath"].rstrip("/") + "/")
    volumes = {v["name"]: v for v in spec["volumes"]}
    # the store cap stays well below the state volume's limit (a full volume evicts the pod)
    limit_mib = int(volumes["samplerguard-state"]["emptyDir"]["sizeLimit"].removesuffix("Mi"))
    assert int(env["SAMPLERGUARD_MAX_STORE_BYTES"]) <= (limit_mib << 20) // 2


def test_a_pod_that_already_has_the_state_volume_is_refused() -> None:
    pod = workload("Pod", "app")
    pod["spec"]["volumes"] = [{"name": "samplerguard-state", "emptyDir": {}}]
    with pytest.raises(MalformedInputError, match="'samplerguard-state'"):
        _inject(pod)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("existing_init", [False, True])
def test_patch_text_is_exactly_the_plain_encoding(native: bool, existing_init: bool) -> None:
    # The injected containers carry their memoised JSON text; the patch spliced from it must
    # be byte for byte the plain encoding of the operations, whichever way they are added.
    import json
    from dataclasses import replace

    from samplerguard.webhook.patch import JsonFragment, patch_json

    pod = workload("Pod", "app", annotations={"note": 'ünïcode \u2028 "quoted"'})
    if existing_init:
        pod["spec"]["initContainers"] = [{"name": "setup", "image": "busybox"}]
    cfg = replace(CFG, native_sidecar=native)
    tpl = find_pod_template("", "Pod", pod)
    ops, _ = injection_patch(
        tpl, cfg, sidecar_image="s:1", hook_image="h:1", tenant="t", policy="P/ü"
    )
    assert any(isinstance(op["value"], JsonFragment | list) for op in ops)
    plain = json.dumps(ops, separators=(",", ":"))
    assert patch_json(ops) == plain
    assert json.loads(plain) == json.loads(json.dumps(json.loads(plain)))
    # a fragment first, last, alone, inside a list with plain items, and in an op whose value
    # is not its last member
    frag = JsonFragment({"a": [1, "é"], "b": None})
    mixed: list[dict[str, Any]] = [
        {"op": "add", "path": "/x", "value": frag},
        {"op": "add", "path": "/y", "value": [frag, {"plain": True}]},
        {"value": frag, "op": "add", "path": "/z"},
        {"op": "test", "path": "/w", "value": [frag, frag]},
    ]
    assert patch_json(mixed) == json.dumps(mixed, separators=(",", ":"))
    assert patch_json(mixed[:1]) == json.dumps(mixed[:1], separators=(",", ":"))
    assert patch_json([]) == "[]"
