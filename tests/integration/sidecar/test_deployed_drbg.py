"""DRBG noise as the chart deploys it, without a cluster: the operator's Secrets, laid out as
their volumes are; a real sidecar process started with exactly the environment the webhook
injects; an unmodified app script under the injected bootstrap and app environment; the real
verifier with the chart's ``--escrow-key``. The app's noise comes from the sidecar's seeds,
the commitment records the DRBG mode and the escrow, and the verifier regenerates the noise
and accepts."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from samplerguard.demo.services import make_token, run_round, start_sidecar, start_verifier
from samplerguard.operator.certs import CertState
from samplerguard.operator.drbg import DrbgSecrets, reconcile_drbg
from samplerguard.policy.report import read_audit_log
from samplerguard.webhook import InjectionConfig
from tests.support.dataplane import make_model, write_policy
from tests.support.secret_volume import SecretVolume
from tests.support.webhook import inject, workload

pytestmark = pytest.mark.slow

BOOTSTRAP = Path(__file__).resolve().parents[3] / "src" / "samplerguard" / "hook" / "bootstrap"
APP = textwrap.dedent(
    """
    import torch
    from samplerguard.demo.providers import make_scheduler
    from samplerguard.models.digits import DigitsPipeline, build_unet

    pipe = DigitsPipeline(build_unet(seed=0).eval(), make_scheduler("euler"))
    for n in range(2):
        out = pipe([3, 5], num_inference_steps=4, generator=torch.Generator().manual_seed(n))
        print("committed", out.samplerguard_commitment is not None)
    """
)


class _Secrets:
    """The Secrets as the API server keeps them, for the operator's reconciler."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, bytes]] = {}

    def get_secret(self, namespace: str, name: str) -> tuple[CertState, str | None]:
        found = self.data.get((namespace, name))
        return CertState(dict(found or {})), None if found is None else "1"

    def put_secret(self, namespace: str, name: str, state: CertState, rv: Any, **_: Any) -> None:
        self.data[(namespace, name)] = dict(state.data)


DRBG = DrbgSecrets("samplerguard", "sg-escrow", "sg-drbg", ("ml",))


def _mount(directory: Path, data: dict[str, bytes]) -> None:
    directory.mkdir(parents=True)
    for key, value in data.items():
        (directory / key).write_bytes(value)


def _run_app(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The unmodified app in a fresh interpreter, the injected bootstrap first on its path."""
    path = f"{BOOTSTRAP}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, "-c", APP],
        env={**os.environ, "PYTHONPATH": path, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


@dataclass
class _Deployed:
    """The operator's Secrets, the injected environments, and a policy requiring escrows."""

    secrets: _Secrets
    volume: SecretVolume
    escrow_key: Path
    sidecar_env: dict[str, str]
    app_env: dict[str, str]
    model: Any
    policy: Path
    token: Path


def _deploy(tmp_path: Path) -> _Deployed:
    # (1) the operator's Secrets, mounted where the injected pod and the verifier see them (the
    # DRBG Secret as the kubelet lays out a Secret volume)
    secrets = _Secrets()
    reconcile_drbg(secrets, DRBG)  # type: ignore[arg-type]
    volume = SecretVolume(tmp_path / "drbg", secrets.data[("ml", "sg-drbg")])
    escrow = secrets.data[("samplerguard", "sg-escrow")]
    _mount(tmp_path / "escrow", {"escrow-private.pem": escrow["escrow-private.pem"]})

    # (2) the webhook's injection for a pod under a ctr-drbg policy
    cfg = InjectionConfig(sidecar_image="s", drbg_secret="sg-drbg", drbg_dir=str(tmp_path / "drbg"))
    pod, _ = inject(workload("Pod", "app"), cfg, "ctr-drbg")
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "samplerguard-sidecar")
    sidecar_env = _plain_env(sidecar)
    app_env = _plain_env(pod["spec"]["containers"][0])
    assert app_env["SAMPLERGUARD_RNG_MODE"] == "ctr-drbg"
    assert not any(k.startswith("SAMPLERGUARD_MASTER") for k in app_env)
    # the pod's hook mount and socket path are the bootstrap directory and the socket here
    assert app_env.pop("PYTHONPATH") == cfg.hook_mount

    model = make_model(tmp_path, seed=0)
    policy = write_policy(tmp_path / "policy.yaml", model.digest, rng="ctr-drbg")
    body = yaml.safe_load(policy.read_text())
    body["spec"]["rng"]["escrow"] = True  # every request must carry the sidecar's escrow
    policy.write_text(yaml.safe_dump(body))
    return _Deployed(
        secrets,
        volume,
        tmp_path / "escrow" / "escrow-private.pem",
        sidecar_env,
        app_env,
        model,
        policy,
        make_token(tmp_path / "token"),
    )


def _start_sidecar(tmp_path: Path, d: _Deployed, **extra_env: str) -> Any:
    """A real sidecar with the injected environment (the pod's paths and the cluster's
    TokenReview replaced by flags for loopback)."""
    keep = ("SAMPLERGUARD_MASTER_SECRET_FILE", "SAMPLERGUARD_ESCROW_PUBLIC_KEY")
    env = {k: v for k, v in d.sidecar_env.items() if k in keep or k == "SAMPLERGUARD_RNG_MODE"}
    assert set(env) == {*keep, "SAMPLERGUARD_RNG_MODE"}
    return start_sidecar(
        tmp_path / "run",
        token_file=d.token,
        policy=d.policy,
        model_files=[d.model.path],
        env={
            **os.environ,
            **env,
            "SAMPLERGUARD_TENANT": d.sidecar_env["SAMPLERGUARD_TENANT"],
            **extra_env,
        },
    )


def _judge(tmp_path: Path, d: _Deployed, sidecar_url: str) -> dict[str, list[str]]:
    """One round of the real verifier with the chart's ``--escrow-key``: results by rule."""
    audit = tmp_path / "audit.jsonl"
    verifier = start_verifier(
        tmp_path / "state",
        sidecars=[sidecar_url],
        token_file=d.token,
        policy=d.policy,
        audit_log=audit,
        reference_models={"digits": d.model.path},
        extra_args=["--escrow-key", str(d.escrow_key)],
    )
    try:
        run_round(verifier)
    finally:
        verifier.stop()
    by_rule: dict[str, list[str]] = {}
    for r in read_audit_log(audit, strict=True):
        by_rule.setdefault(r.rule, []).append(r.result)
    return by_rule


def test_the_deployed_wiring_gives_the_app_drbg_noise_the_verifier_accepts(
    tmp_path: Path,
) -> None:
    d = _deploy(tmp_path)
    svc = _start_sidecar(tmp_path, d)
    try:
        # the unmodified app under the injected bootstrap and environment
        app = _run_app({**d.app_env, "SAMPLERGUARD_SOCKET": svc.ready["socket"]})
        assert app.returncode == 0, app.stderr
        assert app.stdout.count("committed True") == 2, app.stdout

        by_rule = _judge(tmp_path, d, svc.url)
        assert by_rule["trajectory-recheck"] == ["pass", "pass"], by_rule
        assert by_rule["seed-health"] == ["pass", "pass"]  # noise regenerated from the escrow
        assert "fail" not in {x for v in by_rule.values() for x in v}

        # the commitments record the DRBG mode and bind the escrow
        headers = {"Authorization": f"Bearer {d.token.read_text().strip()}"}
        import httpx

        listing = httpx.get(svc.url + "/v1/trajectories", headers=headers, timeout=10).json()
        for entry in listing["trajectories"]:
            doc = httpx.get(
                svc.url + f"/v1/trajectories/{entry['id']}", headers=headers, timeout=10
            ).json()
            predicate = json.loads(base64.b64decode(doc["commitment"]["payload"]))["predicate"]
            assert predicate["recipe"]["rng"] == "ctr-drbg"
            assert "seedEscrowDigest" in predicate
        # no seed and no master secret in either log
        master = (tmp_path / "drbg" / "master-secret").read_text()
        for text in (svc.log_path.read_text(), app.stdout + app.stderr):
            assert master not in text
    finally:
        svc.stop()


def test_a_lost_master_secret_made_again_is_taken_up_by_the_running_sidecar(
    tmp_path: Path,
) -> None:
    """The namespace's DRBG Secret is deleted and the operator makes a new one; the kubelet
    updates the running pod's volume. The same sidecar process issues the next requests' seeds
    from the new secret, every escrow (before and after) opens at the verifier and all pass;
    while the file is unusable the app's DRBG generations are refused, never served other
    noise."""
    d = _deploy(tmp_path)
    svc = _start_sidecar(tmp_path, d, SAMPLERGUARD_SECRET_REFRESH="0")
    env = {**d.app_env, "SAMPLERGUARD_SOCKET": svc.ready["socket"]}
    headers = {"Authorization": f"Bearer {d.token.read_text().strip()}"}
    import httpx

    try:
        before = _run_app(env)
        assert before.stdout.count("committed True") == 2, before.stderr
        old = d.secrets.data[("ml", "sg-drbg")]["master-secret"]

        # the Secret is lost; the operator makes it again; the kubelet updates the volume
        del d.secrets.data[("ml", "sg-drbg")]
        reconcile_drbg(d.secrets, DRBG)  # type: ignore[arg-type]
        new = d.secrets.data[("ml", "sg-drbg")]
        assert new["master-secret"] != old
        d.volume.update(new)

        after = _run_app(env)
        assert after.returncode == 0, after.stderr
        assert after.stdout.count("committed True") == 2, after.stdout
        integrity = httpx.get(svc.url + "/v1/integrity", headers=headers, timeout=10).json()
        drbg = integrity["drbg"]
        assert drbg["secretChanges"] == 1 and drbg["secretProblem"] is None, drbg
        assert drbg["events"][-1].endswith(" rotated")
        metrics = httpx.get(svc.url + "/metrics", timeout=10).text
        assert 'samplerguard_sidecar_drbg_secret_changes_total{change="rotated"} 1' in metrics

        # all four, two from each secret, open and pass at the verifier
        by_rule = _judge(tmp_path, d, svc.url)
        assert by_rule["trajectory-recheck"] == ["pass"] * 4, by_rule
        assert by_rule["seed-health"] == ["pass"] * 4, by_rule

        # an unusable file: the app's generation is refused (fail closed), nothing committed
        d.volume.update({**new, "master-secret": b"not a secret"})
        refused = _run_app(env)
        assert refused.returncode != 0
        assert "master secret is unusable" in refused.stderr
        assert "committed" not in refused.stdout
        integrity = httpx.get(svc.url + "/v1/integrity", headers=headers, timeout=10).json()
        assert "master secret" in integrity["drbg"]["secretProblem"]

        log = svc.log_path.read_text()
        assert "DRBG master secret changed" in log
        assert "DRBG master secret is unusable" in log
        for secret in (old, new["master-secret"]):
            assert secret.decode() not in log
    finally:
        svc.stop()


def test_a_drbg_app_against_a_sidecar_without_the_secret_fails_closed(tmp_path: Path) -> None:
    """The pod's Secret never reached the sidecar: the app's generation raises instead of
    drawing framework noise."""
    token = make_token(tmp_path / "token")
    svc = start_sidecar(tmp_path / "run", token_file=token)
    try:
        app = _run_app(
            {"SAMPLERGUARD_SOCKET": svc.ready["socket"], "SAMPLERGUARD_RNG_MODE": "ctr-drbg"}
        )
        assert app.returncode != 0
        assert "holds no master secret" in app.stderr
        assert "committed" not in app.stdout
    finally:
        svc.stop()
