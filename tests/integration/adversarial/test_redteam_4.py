"""Red-team attacks of an adaptive provider, fourth pass: "a pod never brings its own sidecar" and
"seed shopping is visible". The provider writes its own pod specs (it creates its pods, updates
them, adds ephemeral containers) and speaks the hook ↔ sidecar protocol itself; it does not
control the webhook, the verifier or the genuine sidecar. Each test asserts the attack is
refused by the real HTTPS webhook, the verifier's discovery, a real sidecar process or the real
verifier process; a confirmed bypass is ``xfail(strict=True)`` naming what it demonstrates,
with the assertion the defence should satisfy.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s

from samplerguard.demo.services import (
    ServiceProcess,
    make_token,
    run_round,
    start_sidecar,
    start_verifier,
)
from samplerguard.errors import SamplerGuardError
from samplerguard.hook.sidecar_sink import SidecarSink
from samplerguard.policy.report import read_audit_log
from samplerguard.verifier.discovery import KubernetesDiscovery
from tests.integration.adversarial import test_redteam_3 as redteam3
from tests.integration.adversarial.test_redteam_3 import (
    STEPS,
    TENANT,
    Deployed,
    Proxy,
    Rewrite,
    _drop_last,
    _generate,
    _Pods,
)
from tests.support.dataplane import make_model, write_policy
from tests.support.webhook import REGISTRY, RegistryDouble, patched, post, review, workload
from tests.unit.webhook import test_https_admission as https
from tests.unit.webhook.test_https_admission import SIGNED, _sidecar_of

#: the real HTTPS webhook of tests/unit/webhook/test_https_admission.py, one per module
_world = https._world
#: a real sidecar process in ctr-drbg mode, seeds lapsing after SEED_TTL seconds
drbg_sidecar = redteam3.drbg_sidecar


@pytest.fixture
def webhook(_world: tuple[httpx.Client, RegistryDouble, Any, Any]) -> httpx.Client:
    return _world[0]


@pytest.fixture
def registry(_world: tuple[httpx.Client, RegistryDouble, Any, Any]) -> RegistryDouble:
    return _world[1]


pytestmark = pytest.mark.slow

SIDECAR_IMAGE = f"{REGISTRY}/samplerguard/sidecar:0.1"


def _honest(webhook: httpx.Client, **labels: str) -> dict[str, Any]:
    """The provider's pod exactly as the webhook injects it (the starting point of a forgery)."""
    pod = workload("Pod", SIGNED, labels=labels or None)
    return patched(pod, post(webhook, "/mutate", review(pod)))


# -- 1. a carried sidecar with the identity fields intact, but code run inside it ----------------


def _exec_probe(pod: dict[str, Any]) -> None:
    # runs in the genuine sidecar's container, with its state and DRBG volumes, every 5 s:
    # the signing key and the master secret copied to the socket volume the app mounts
    _sidecar_of(pod)["readinessProbe"] = {
        "exec": {
            "command": [
                "sh",
                "-c",
                "cp /var/lib/samplerguard/* /var/run/samplerguard-drbg/* /var/run/samplerguard/",
            ]
        },
        "periodSeconds": 5,
    }


def _post_start(pod: dict[str, Any]) -> None:
    _sidecar_of(pod)["lifecycle"] = {
        "postStart": {"exec": {"command": ["sh", "-c", "cp -r /var/lib/samplerguard /tmp/x"]}}
    }


def _root_sidecar(pod: dict[str, Any]) -> None:
    # the sidecar as root, its files then readable by a root app through the shared PID
    # namespace's /proc/<pid>/root once the sidecar is not the only owner of its uid
    _sidecar_of(pod)["securityContext"] = {"runAsUser": 0, "privileged": True}


@pytest.mark.parametrize("tamper", [_exec_probe, _post_start, _root_sidecar])
def test_a_carried_sidecar_running_the_providers_commands_is_denied(
    webhook: httpx.Client, tamper: Any
) -> None:
    forged = copy.deepcopy(_honest(webhook))
    tamper(forged)
    for path in ("/mutate", "/validate"):
        response = post(webhook, path, review(forged))
        assert response["allowed"] is False, (path, tamper.__name__)


# -- 2. the same forged sidecar, with the pod opting out of injection ------------------------


def _forged_key_file(pod: dict[str, Any]) -> None:
    env = _sidecar_of(pod)["env"]
    key = next(e for e in env if e["name"] == "SAMPLERGUARD_KEY_FILE")
    key["value"] = "/etc/provider/key.pem"  # a signing key the provider knows
    # the genuine image running the provider's code: whatever answers on the sidecar's port
    _sidecar_of(pod)["command"] = ["python", "-c", "print('an impostor on the sidecar port')"]


def test_a_forged_sidecar_in_a_pod_that_opts_out_of_injection_is_denied(
    webhook: httpx.Client,
) -> None:
    forged = copy.deepcopy(_honest(webhook))
    _forged_key_file(forged)
    # the forgery alone is denied …
    assert post(webhook, "/validate", review(forged))["allowed"] is False
    # … and with the opt-out label
    forged["metadata"].setdefault("labels", {})["samplerguard.dev/inject"] = "false"
    verdicts = {p: post(webhook, p, review(forged))["allowed"] for p in ("/mutate", "/validate")}
    # behind the webhook, the verifier would audit the pod (annotation + image match)
    api_pod = _api_pod(forged)
    (target,) = KubernetesDiscovery(api=_Pods([api_pod]), sidecar_image=SIDECAR_IMAGE).targets()
    assert verdicts == {"/mutate": False, "/validate": False} or target.refusal, (
        verdicts,
        target,
    )


def _api_pod(pod: dict[str, Any]) -> k8s.V1Pod:
    """``pod`` as the verifier's list call returns it once running."""
    spec = pod["spec"]
    init = [
        k8s.V1Container(name=c["name"], image=c["image"], command=c.get("command"))
        for c in spec.get("initContainers") or []
    ]
    containers = [k8s.V1Container(name=c["name"], image=c["image"]) for c in spec["containers"]]
    status = k8s.V1ContainerStatus(
        name="samplerguard-sidecar", ready=True, image="", image_id="", restart_count=0
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=pod["metadata"]["name"],
            namespace="ml",
            uid="uid-forged",
            annotations=pod["metadata"]["annotations"],
            labels=pod["metadata"].get("labels"),
        ),
        spec=k8s.V1PodSpec(init_containers=init, containers=containers),
        status=k8s.V1PodStatus(
            phase="Running", pod_ip="10.0.0.7", init_container_statuses=[status]
        ),
    )


# -- 3. after admission: ephemeral containers and image updates -----------------------------------


def _running(webhook: httpx.Client) -> dict[str, Any]:
    pod = _honest(webhook)
    pod["metadata"]["uid"] = "uid-running"
    return pod


def test_an_ephemeral_container_mounting_the_sidecars_state_is_denied(
    webhook: httpx.Client,
) -> None:
    old = _running(webhook)
    new = copy.deepcopy(old)
    new["spec"]["ephemeralContainers"] = [
        {
            "name": "debugger",
            "image": SIGNED,
            "targetContainerName": "samplerguard-sidecar",
            "volumeMounts": [{"name": "samplerguard-state", "mountPath": "/peek"}],
        }
    ]
    body = review(new, operation="UPDATE", sub_resource="ephemeralcontainers", old=old)
    response = post(webhook, "/validate", body)
    assert response["allowed"] is False, response


def test_a_privileged_debug_container_is_denied(webhook: httpx.Client) -> None:
    """``kubectl debug --profile=sysadmin`` on the running pod: no volume of the sidecar's, but
    privileged (or with SYS_PTRACE) in the shared process namespace it reads
    /proc/<sidecar>/root, the signing key and the master secret with it."""
    old = _running(webhook)
    for context in ({"privileged": True}, {"capabilities": {"add": ["SYS_PTRACE"]}}):
        new = copy.deepcopy(old)
        new["spec"]["ephemeralContainers"] = [
            {
                "name": "debugger",
                "image": SIGNED,
                "targetContainerName": "samplerguard-sidecar",
                "securityContext": context,
            }
        ]
        body = review(new, operation="UPDATE", sub_resource="ephemeralcontainers", old=old)
        response = post(webhook, "/validate", body)
        assert response["allowed"] is False, context
        assert "container 'debugger'" in response["status"]["message"]


def test_an_ephemeral_container_mounting_the_drbg_secret_is_denied(webhook: httpx.Client) -> None:
    """The DRBG volume is held to the sidecar on every operation (secret_references)."""
    old = _running(webhook)
    new = copy.deepcopy(old)
    new["spec"]["ephemeralContainers"] = [
        {
            "name": "debugger",
            "image": SIGNED,
            "volumeMounts": [{"name": "samplerguard-drbg", "mountPath": "/peek"}],
        }
    ]
    body = review(new, operation="UPDATE", sub_resource="ephemeralcontainers", old=old)
    response = post(webhook, "/validate", body)
    assert response["allowed"] is False
    assert "mounts samplerguard-drbg" in response["status"]["message"]


def test_an_update_swapping_the_sidecars_image_is_denied(
    webhook: httpx.Client, registry: RegistryDouble
) -> None:
    older = f"{REGISTRY}/samplerguard/sidecar:0.0.1"  # an older signed release
    registry.push(older)
    old = _running(webhook)
    for image in (older, SIGNED):
        new = copy.deepcopy(old)
        _sidecar_of(new)["image"] = image
        body = review(new, operation="UPDATE", old=old)
        response = post(webhook, "/validate", body)
        assert response["allowed"] is False, (image, response)


# -- 4. refused: the provider's own containers around an honest injection ------------------------


def test_a_provider_init_container_mounting_the_state_volume_is_denied(
    webhook: httpx.Client,
) -> None:
    """An init container of the provider's, listed before the injected ones, names the state
    volume the injection is about to add (emptyDir: shared by name): the mutating pass injects,
    the validating pass sees the final pod and denies it."""
    pod = workload("Pod", SIGNED, init=(SIGNED,))
    pod["spec"]["initContainers"][0]["volumeMounts"] = [
        {"name": "samplerguard-state", "mountPath": "/var/lib/samplerguard"}
    ]
    injected = patched(pod, post(webhook, "/mutate", review(pod)))
    response = post(webhook, "/validate", review(injected))
    assert response["allowed"] is False
    assert "container 'i0' mounts the sidecar's samplerguard-state" in response["status"]["message"]


def test_a_second_container_of_the_sidecars_image_mounting_its_state_is_denied(
    webhook: httpx.Client,
) -> None:
    forged = copy.deepcopy(_honest(webhook))
    twin = copy.deepcopy(_sidecar_of(forged))
    twin["name"] = "samplerguard-sidecar-2"
    twin.pop("restartPolicy", None)
    twin["volumeMounts"] = [m for m in twin["volumeMounts"] if m["name"] != "samplerguard-drbg"]
    forged["spec"]["containers"].append(twin)
    response = post(webhook, "/validate", review(forged))
    assert response["allowed"] is False
    assert (
        "container 'samplerguard-sidecar-2' mounts the sidecar's samplerguard-state"
        in response["status"]["message"]
    )


def test_a_deployment_carrying_a_forged_sidecar_is_stopped_at_its_pods(
    webhook: httpx.Client,
) -> None:
    """A Deployment's template is not checked for a carried sidecar (the webhook injects pods
    only), but each pod the ReplicaSet creates from it is a CREATE the validation sees."""
    forged = copy.deepcopy(_honest(webhook))
    _forged_key_file(forged)
    deployment = workload("Deployment", SIGNED)
    deployment["spec"]["template"] = {"metadata": forged["metadata"], "spec": forged["spec"]}
    assert post(webhook, "/validate", review(deployment, kind="Deployment"))["allowed"] is True
    response = post(webhook, "/validate", review(forged))
    assert response["allowed"] is False
    assert "never brings its own" in response["status"]["message"]


@pytest.mark.parametrize("escalation", ["ptrace", "privileged", "hostPID", "hostPath"])
def test_an_app_container_that_can_reach_the_sidecars_files_is_denied(
    webhook: httpx.Client, escalation: str
) -> None:
    pod = workload("Pod", SIGNED)
    app = pod["spec"]["containers"][0]
    if escalation == "ptrace":
        app["securityContext"] = {"capabilities": {"add": ["SYS_PTRACE"]}}
    elif escalation == "privileged":
        app["securityContext"] = {"privileged": True}
    elif escalation == "hostPID":
        pod["spec"]["hostPID"] = True
    else:
        pod["spec"]["volumes"] = [{"name": "kubelet", "hostPath": {"path": "/var/lib/kubelet"}}]
        app["volumeMounts"] = [{"name": "kubelet", "mountPath": "/kubelet", "readOnly": True}]
    mutated = post(webhook, "/mutate", review(pod))
    allowed = (
        mutated["allowed"] and post(webhook, "/validate", review(patched(pod, mutated)))["allowed"]
    )
    assert allowed is False


# -- 5. the verifier's cursors follow a URL, not a pod ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sidecar_at(
    run: Path, port: int, uid: str, token: Path, policy: Path, model: Path
) -> ServiceProcess:
    env = {**os.environ, "SAMPLERGUARD_TENANT": TENANT, "SAMPLERGUARD_POD_UID": uid}
    return start_sidecar(
        run,
        token_file=token,
        policy=policy,
        model_files=[model],
        env=env,
        extra_args=["--listen-tcp", f"127.0.0.1:{port}"],
    )


def test_a_new_pod_at_an_old_pods_address_has_every_trajectory_judged(tmp_path: Path) -> None:
    model = make_model(tmp_path, seed=0)
    policy = write_policy(
        tmp_path / "policy.yaml", model.digest, rng="framework", fraction=1.0, k=STEPS
    )
    token = make_token(tmp_path / "token")
    port = _free_port()
    audit = tmp_path / "audit.jsonl"
    verifier = start_verifier(
        tmp_path / "state",
        sidecars=[f"http://127.0.0.1:{port}"],
        token_file=token,
        policy=policy,
        audit_log=audit,
        reference_models={"digits": model.path},
    )
    try:
        # the provider's first pod serves three honest requests, and is audited
        first = _sidecar_at(tmp_path / "a", port, "uid-a", token, policy, model.path)
        try:
            sock = str(first.ready["socket"])
            for i in range(3):
                assert _generate(model.unet, model.digest, sock, f"a-{i}")
        finally:
            run_round(verifier)
            first.stop()
        # its next pod, at the same address, commits a trajectory that ran one step less
        second = _sidecar_at(tmp_path / "b", port, "uid-b", token, policy, model.path)
        try:
            sock = str(second.ready["socket"])
            proxy = Proxy(tmp_path / "p.sock", sock, Rewrite(tail=_drop_last, drop_root=True))
            try:
                _generate(model.unet, model.digest, str(proxy.path), "b-short")
            finally:
                proxy.close()
            # committed (seq 1 of the new pod's store) and listed to the verifier
            listed = Deployed(model, second, token, policy, None).listed()
            assert listed == ["b-short"]
            run_round(verifier)
        finally:
            second.stop()
    finally:
        verifier.stop()
    verdicts: dict[str, set[tuple[str, str]]] = {}
    for r in read_audit_log(audit, strict=True):
        verdicts.setdefault(r.properties.get("requestId", ""), set()).add((r.rule, r.result))
    assert all(("trajectory-recheck", "pass") in verdicts[f"a-{i}"] for i in range(3))
    assert ("trajectory-recheck", "fail") in verdicts.get("b-short", set()), verdicts


# -- 6. seed shopping under ids the verifier's journal would merge -------------------------------


def test_ids_the_verifier_would_truncate_or_split_get_no_seed(
    drbg_sidecar: Deployed,
) -> None:
    """The verifier keys an abandoned seed by ``<pod uid>/abandoned-seed/<id[:128]>``: ids that
    share 128 characters, or that carry a ``/``, would merge there. The sidecar hands out no
    noise for them: a SEED takes 1-128 characters of ``[A-Za-z0-9._:-]``."""
    sink = SidecarSink(drbg_sidecar.socket, io_timeout=30.0)
    for rid in ("a" * 128 + "1", "abandoned-seed/x", "x y", "é"):
        with pytest.raises(SamplerGuardError):
            sink.request_noise(TENANT, rid)
    assert drbg_sidecar.listed() == []


def test_a_request_id_shopped_under_other_tenants_gets_no_draw(drbg_sidecar: Deployed) -> None:
    """The SEED frame names its tenant, and each (tenant, id) pair is a different draw: a
    provider could draw one request id under foreign tenants, then commit it under its own. A
    sidecar bound to its pod's tenant issues seeds for that tenant alone, so there is no
    foreign draw to discard (and the verifier counts abandoned seeds per tenant and id)."""
    dep = drbg_sidecar
    sink = SidecarSink(dep.socket, io_timeout=30.0)
    for tenant in ("tenant-b", "tenant-c"):
        with pytest.raises(SamplerGuardError, match="not this pod's tenant"):
            sink.request_noise(tenant, "same")
    committed = _generate(
        dep.model.unet, dep.model.digest, dep.socket, "same", seed_from_sidecar=True, tenant=TENANT
    )
    assert committed
    (ledger,) = Path(dep.sidecar.log_path).parent.parent.rglob("seed-ledger.jsonl")
    assert "tenant-b" not in ledger.read_text() and "tenant-c" not in ledger.read_text()
