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


def test_the_deployed_wiring_gives_the_app_drbg_noise_the_verifier_accepts(
    tmp_path: Path,
) -> None:
    # (1) the operator's Secrets, mounted where the injected pod and the verifier see them
    secrets = _Secrets()
    reconcile_drbg(
        secrets,  # type: ignore[arg-type]
        DrbgSecrets("samplerguard", "sg-escrow", "sg-drbg", ("ml",)),
    )
    _mount(tmp_path / "drbg", secrets.data[("ml", "sg-drbg")])
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

    # (3) a real sidecar with that environment (the pod's paths and the cluster's
    # TokenReview replaced by flags for loopback)
    model = make_model(tmp_path, seed=0)
    policy = write_policy(tmp_path / "policy.yaml", model.digest, rng="ctr-drbg")
    body = yaml.safe_load(policy.read_text())
    body["spec"]["rng"]["escrow"] = True  # every request must carry the sidecar's escrow
    policy.write_text(yaml.safe_dump(body))
    token = make_token(tmp_path / "token")
    keep = ("SAMPLERGUARD_MASTER_SECRET_FILE", "SAMPLERGUARD_ESCROW_PUBLIC_KEY")
    env = {k: v for k, v in sidecar_env.items() if k in keep or k == "SAMPLERGUARD_RNG_MODE"}
    assert set(env) == {*keep, "SAMPLERGUARD_RNG_MODE"}
    svc = start_sidecar(
        tmp_path / "run",
        token_file=token,
        policy=policy,
        model_files=[model.path],
        env={**os.environ, **env, "SAMPLERGUARD_TENANT": sidecar_env["SAMPLERGUARD_TENANT"]},
    )
    verifier = None
    try:
        # (4) the unmodified app under the injected bootstrap and environment
        # the pod's hook mount and socket path are the bootstrap directory and the socket here
        assert app_env.pop("PYTHONPATH") == cfg.hook_mount
        app = _run_app({**app_env, "SAMPLERGUARD_SOCKET": svc.ready["socket"]})
        assert app.returncode == 0, app.stderr
        assert app.stdout.count("committed True") == 2, app.stdout

        # (5) the real verifier with the chart's --escrow-key
        audit = tmp_path / "audit.jsonl"
        verifier = start_verifier(
            tmp_path / "state",
            sidecars=[svc.url],
            token_file=token,
            policy=policy,
            audit_log=audit,
            reference_models={"digits": model.path},
            extra_args=["--escrow-key", str(tmp_path / "escrow" / "escrow-private.pem")],
        )
        counts = run_round(verifier)
        results = read_audit_log(audit, strict=True)
        by_rule: dict[str, list[str]] = {}
        for r in results:
            by_rule.setdefault(r.rule, []).append(r.result)
        assert by_rule["trajectory-recheck"] == ["pass", "pass"], (counts, results)
        assert by_rule["seed-health"] == ["pass", "pass"]  # noise regenerated from the escrow
        assert "fail" not in {x for v in by_rule.values() for x in v}

        # the commitments record the DRBG mode and bind the escrow
        headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
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
        if verifier is not None:
            verifier.stop()
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
