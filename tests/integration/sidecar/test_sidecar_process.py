"""The real ``samplerguard sidecar`` process on loopback, fed by the real hook."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from samplerguard.commitment.dsse import load_public_key
from samplerguard.commitment.opening import Opening
from samplerguard.commitment.recheck import recheck_step
from samplerguard.commitment.statement import Commitment
from samplerguard.demo.services import ServiceProcess, make_token, start_sidecar
from samplerguard.hook.recorder import Recorder, RecordingError, TrajectoryRequest
from samplerguard.hook.sidecar_sink import SidecarSink
from samplerguard.models.programs import DigitsProgram
from tests.support.dataplane import Model, generate, make_model, write_policy

#: the running sidecar, its model, its bearer token file and the scratch directory
Lane = tuple[ServiceProcess, Model, Path, Path]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lane]:
    root = tmp_path_factory.mktemp("sidecar")
    model = make_model(root, seed=0)
    policy = write_policy(root / "policy.yaml", model.digest)
    token = make_token(root / "token")
    svc = start_sidecar(root / "run", token_file=token, policy=policy, model_files=[model.path])
    yield svc, model, token, root
    svc.stop()


def _auth(token: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.read_text().strip()}"}


def test_honest_trajectory_is_committed_signed_and_openable(lane: Lane) -> None:
    svc, model, token, _ = lane
    out = generate(Path(svc.ready["socket"]), model.unet, "honest-1", declared_digest=model.digest)
    key = load_public_key(httpx.get(svc.url + "/v1/public-key").json()["publicKey"].encode())
    doc = httpx.get(svc.url + "/v1/trajectories/honest-1", headers=_auth(token)).json()
    commitment = Commitment.verify(doc["commitment"], key)
    # the sidecar signed the root the hook computed itself
    assert commitment.root == out.commitment.root
    assert out.trajectory.record is None  # the sidecar hashed and built the tree, not the hook
    assert commitment.predicate["hashBeacon"].startswith("sha256:")
    assert commitment.predicate["policy"] == "dataplane-test"
    raw = httpx.get(svc.url + "/v1/trajectories/honest-1/openings/3", headers=_auth(token))
    assert raw.headers["content-type"] == "application/vnd.samplerguard.opening+safetensors"
    result = recheck_step(
        commitment, Opening.from_bytes(raw.content), DigitsProgram(model.unet), tau=1e-4
    )
    assert result.accepted and result.rel_l2 == 0.0


def test_unauthenticated_requests_get_401_and_learn_nothing(lane: Lane) -> None:
    svc, model, token, _ = lane
    generate(Path(svc.ready["socket"]), model.unet, "secret-1", declared_digest=model.digest)
    for path in (
        "/v1/trajectories",
        "/v1/trajectories/secret-1",
        "/v1/trajectories/does-not-exist",
        "/v1/trajectories/secret-1/openings/0",
        "/v1/trajectories/secret-1/openings/not-a-number",
        "/v1/integrity",
    ):
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-wrong-token"},
            {"Authorization": "Basic dXNlcjpwYXNz"},
        ):
            resp = httpx.get(svc.url + path, headers=headers)
            assert resp.status_code == 401, (path, headers)
            assert resp.json() == {"detail": "unauthorized"}
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert b"secret-1" not in resp.content
    assert httpx.get(svc.url + "/v1/trajectories", headers=_auth(token)).status_code == 200


def test_step_numbers_are_ascii_digits_only(lane: Lane) -> None:
    """Unicode digits used to alias real steps ("٣" is 3) or give a 500 ("²")."""
    svc, model, token, _ = lane
    generate(Path(svc.ready["socket"]), model.unet, "digits-1", declared_digest=model.digest)
    base = svc.url + "/v1/trajectories/digits-1/openings/"
    assert httpx.get(base + "3", headers=_auth(token)).status_code == 200
    for step in ("\u0663", "\u00b2", "\uff13", "3.0", "-1", "123456"):
        resp = httpx.get(base + step, headers=_auth(token))
        assert resp.status_code == 400, step
        assert resp.json() == {"detail": "step must be a non-negative integer"}


def test_out_of_policy_request_is_refused_in_enforce_mode(lane: Lane) -> None:
    svc, model, token, _ = lane
    with pytest.raises(RecordingError, match=r"out of policy: guidance scale 12\.0 outside"):
        generate(
            Path(svc.ready["socket"]),
            model.unet,
            "cfg-too-high",
            declared_digest=model.digest,
            cfg=12.0,
        )
    listed = httpx.get(svc.url + "/v1/trajectories", headers=_auth(token)).json()
    assert "cfg-too-high" not in {t["id"] for t in listed["trajectories"]}


def test_replayed_request_id_is_refused(lane: Lane) -> None:
    svc, model, _, _ = lane
    generate(Path(svc.ready["socket"]), model.unet, "once-only", declared_digest=model.digest)
    with pytest.raises(RecordingError, match="already committed by this sidecar"):
        generate(Path(svc.ready["socket"]), model.unet, "once-only", declared_digest=model.digest)


def test_undeclared_model_digest_is_refused(lane: Lane) -> None:
    svc, _, _, root = lane
    other = make_model(root, seed=5)
    with pytest.raises(RecordingError, match="not among the policy's goldenDigests"):
        generate(Path(svc.ready["socket"]), other.unet, "wrong-model", declared_digest=other.digest)


def _slow_trajectory(
    socket: Path, request_id: str, started: threading.Event
) -> BaseException | None:
    """A plain loop that streams two steps and then waits: the sidecar is killed meanwhile."""
    import diffusers

    from samplerguard.models.digits import SCHEDULER_CONFIG

    scheduler = diffusers.EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    scheduler.set_timesteps(8)
    # every step handed over and sent as it is recorded: the sidecar holds a partial trajectory
    recorder = Recorder(SidecarSink(socket, io_timeout=10.0, batch=1), batch=1)
    latents = torch.randn(1, 1, 8, 8) * scheduler.init_noise_sigma
    request = TrajectoryRequest(
        request_id=request_id,
        tenant="tenant-a",
        pipeline="digits",
        model_name="digits",
        model_digest="sha256:" + "0" * 64,
        sampler="euler",
        guidance_scale=1.0,
        steps=8,
    )
    try:
        with recorder.trajectory(request) as tr:
            tr.begin(scheduler, latents, conditioning={"class_labels": torch.tensor([3])})
            for i, t in enumerate(scheduler.timesteps):
                latents = scheduler.step(torch.zeros_like(latents), t, latents).prev_sample
                tr.step(i, t, latents, scheduler)
                if i == 1:
                    started.set()
                    time.sleep(4.0)
            tr.end(latents, b"output")
    except RecordingError as exc:
        return exc
    finally:
        recorder.close()
    return None


def test_killed_sidecar_fails_the_request_and_a_restart_keeps_the_committed(tmp_path: Path) -> None:
    model = make_model(tmp_path, seed=0)
    token = make_token(tmp_path / "token")
    run = tmp_path / "run"
    svc = start_sidecar(run, token_file=token)  # no policy: accept anything
    try:
        socket = Path(svc.ready["socket"])
        kept = generate(socket, model.unet, "kept-1", declared_digest=model.digest)
        keyid = svc.ready["keyid"]
        started = threading.Event()
        outcome: list[BaseException | None] = []
        worker = threading.Thread(
            target=lambda: outcome.append(_slow_trajectory(socket, "in-flight", started))
        )
        worker.start()
        assert started.wait(60)
        time.sleep(0.5)
        svc.kill()  # SIGKILL mid-trajectory: no cleanup runs
        worker.join(60)
        assert outcome and isinstance(outcome[0], RecordingError)
        assert "in-flight is unverified" in str(outcome[0])
        assert any(p.name.endswith(".partial") for p in (run / "openings").iterdir())

        svc = start_sidecar(run, token_file=token)
        assert svc.ready["keyid"] == keyid  # same key across the restart
        listed = httpx.get(svc.url + "/v1/trajectories", headers=_auth(token)).json()
        assert [t["id"] for t in listed["trajectories"]] == ["kept-1"]
        assert listed["trajectories"][0]["root"] == kept.commitment.root.hex()
        assert not any(p.name.endswith(".partial") for p in (run / "openings").iterdir())
        doc = httpx.get(svc.url + "/v1/trajectories/kept-1", headers=_auth(token)).json()
        assert json.dumps(doc["commitment"], sort_keys=True) == kept.commitment.to_json()
    finally:
        svc.stop()


def test_probe_reports_readiness(lane: Lane) -> None:
    import subprocess
    import sys

    svc, _, _, root = lane
    ok = subprocess.run(
        [sys.executable, "-m", "samplerguard", "sidecar", "--probe", svc.ready["socket"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "ready" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "samplerguard", "sidecar", "--probe", str(root / "nope.sock")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "cannot reach the sidecar" in bad.stdout


def test_the_injected_probes_answer_within_their_timeouts(lane: Lane) -> None:
    """The kubelet runs exactly these probes: HTTP GETs on the verifier port that must answer
    within ``timeoutSeconds`` (an exec probe that imports torch never did within 1 s)."""
    from samplerguard.webhook import InjectionConfig
    from samplerguard.webhook.inject import _sidecar

    svc, _, _, _ = lane
    container = _sidecar(
        InjectionConfig(sidecar_image="s"), "s", "t", "ClusterSamplerPolicy/p", "framework"
    )
    for kind in ("readinessProbe", "startupProbe"):
        probe = container[kind]
        assert "exec" not in probe
        started = time.monotonic()
        answer = httpx.get(svc.url + probe["httpGet"]["path"], timeout=probe["timeoutSeconds"])
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < probe["timeoutSeconds"] / 3


def test_an_exported_bundle_verifies_offline_with_one_command(
    lane: Lane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from samplerguard.cli import main

    svc, model, token, _ = lane
    generate(Path(svc.ready["socket"]), model.unet, "audit-1", declared_digest=model.digest)
    bundle = tmp_path / "bundle"
    export = ["export-trajectory", "--sidecar", svc.url, "--token-file", str(token)]
    assert main([*export, "--trajectory", "audit-1", "--out", str(bundle)]) == 0
    assert sorted(p.name for p in bundle.iterdir()) == [
        "openings",
        "public-key.pem",
        "trajectory.json",
        "transcript.safetensors",
    ]
    n = json.loads((bundle / "trajectory.json").read_text())["steps"]
    assert sorted(int(p.stem) for p in (bundle / "openings").iterdir()) == list(range(n))
    assert main([*export, "--trajectory", "nope", "--out", str(tmp_path / "x")]) == 2
    capsys.readouterr()

    def verify(*extra: str) -> tuple[int, dict[str, object]]:
        code = main(["verify-trajectory", "--json", "--bundle", str(bundle), *extra])
        return code, json.loads(capsys.readouterr().out)

    code, out = verify("--model", str(model.path), "--step", "1", "--step", "3")
    assert code == 0 and out["verdict"] == "accept" and out["steps"] == [1, 3]
    # the wrong kind of file is unusable input naming what was expected, not a rejection
    code, out = verify("--model", str(model.path), "--public-key", str(bundle / "trajectory.json"))
    assert code == 2 and "expected a PEM public key" in str(out["reasons"])
    code, out = verify("--model", str(model.path), "--opening", str(bundle / "trajectory.json"))
    assert code == 2 and "expected an opening (.safetensors" in str(out["reasons"])
    # another checkpoint: one line naming both digests, before anything is loaded from it
    other = make_model(tmp_path, seed=1)
    code, out = verify("--model", str(other.path), "--step", "2")
    reasons = out["reasons"]
    assert code == 1 and isinstance(reasons, list) and len(reasons) == 1
    assert reasons[0].startswith("digest mismatch") and len(reasons[0].splitlines()) == 1
    # an edited opening is a rejection
    opening = bundle / "openings" / "2.safetensors"
    edited = bytearray(opening.read_bytes())
    edited[-1] ^= 1
    opening.write_bytes(bytes(edited))
    code, out = verify("--model", str(model.path), "--step", "2")
    assert code == 1 and out["verdict"] == "reject"
