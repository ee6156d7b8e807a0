"""Runtime integrity: golden digests of the weights on disk, declared model, solver code."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from samplerguard.commitment.digest import module_digest
from samplerguard.errors import MalformedInputError
from samplerguard.hook.solver import solver_code_digest
from samplerguard.policy.spec import GoldenDigests
from samplerguard.sidecar.integrity import (
    IntegrityMonitor,
    measure_solver,
    scheduler_config_digest,
    weights_file_digest,
)


@pytest.fixture
def weights(tmp_path: Path) -> tuple[Path, str]:
    module = torch.nn.Linear(3, 2)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path, module_digest(module)


def test_file_digest_equals_the_module_digest(weights: tuple[Path, str]) -> None:
    path, digest = weights
    assert weights_file_digest(path) == digest


def test_golden_weights_pass_and_produce_a_beacon(weights: tuple[Path, str]) -> None:
    path, digest = weights
    mon = IntegrityMonitor(GoldenDigests(model_weights=[digest]), model_files=(path,))
    assert mon.measure().ok
    beacon, facts, problems = mon.check_request({"model": {"digest": digest}}, "sha256:" + "a" * 64)
    assert problems == [] and beacon.startswith("sha256:") and facts["modelWeights"] == [digest]
    other, _, _ = mon.check_request({"model": {"digest": digest}}, "sha256:" + "b" * 64)
    assert other != beacon  # the beacon covers the solver code too


def test_tampered_weights_raise_an_alert_and_refuse(weights: tuple[Path, str]) -> None:
    path, digest = weights
    alerts: list[str] = []
    mon = IntegrityMonitor(
        GoldenDigests(model_weights=[digest]), model_files=(path,), on_alert=alerts.append
    )
    save_file({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, str(path))
    m = mon.measure()
    assert not m.ok
    assert "model weights w.safetensors: digest mismatch" in m.problems[0]
    assert alerts and "runtime integrity mismatch" in alerts[0]


def test_request_checks(weights: tuple[Path, str], tmp_path: Path) -> None:
    path, digest = weights
    solver = solver_code_digest("EulerDiscreteScheduler")
    mon = IntegrityMonitor(
        GoldenDigests(model_weights=[digest], solver_code=[solver]), model_files=(path,)
    )
    mon.measure()
    _, _, ok = mon.check_request({"model": {"digest": digest}}, solver)
    assert ok == []
    _, _, bad = mon.check_request({"model": {"digest": "sha256:" + "0" * 64}}, "sha256:" + "1" * 64)
    assert any("solver code: digest mismatch" in p for p in bad)
    assert any("not among the policy's goldenDigests" in p for p in bad)
    assert any("not the digest of the weights on disk" in p for p in bad)
    cfg = tmp_path / "scheduler_config.json"
    cfg.write_text(json.dumps({"b": 1, "a": 2}))
    same = tmp_path / "same.json"
    same.write_text('{"a":2,"b":1}')
    assert scheduler_config_digest(cfg) == scheduler_config_digest(same)


def _fake_root(tmp_path: Path, pid: int, files: dict[str, str]) -> Path:
    """A /proc look-alike: <proc>/<pid>/root/<path> holds the app's files."""
    proc = tmp_path / "proc"
    for path in files.values():
        target = proc / str(pid) / "root" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
    return proc


def test_the_sidecar_hashes_the_solver_files_of_the_peer_itself(tmp_path: Path) -> None:
    import os

    from samplerguard.hook.solver import solver_files

    files = solver_files("EulerDiscreteScheduler")
    assert files and all(p.endswith(".py") for p in files.values())
    # through the real /proc of this very process: the same digest the hook computes
    digest, why = measure_solver(os.getpid(), files)
    assert why == "" and digest == solver_code_digest("EulerDiscreteScheduler")
    # a patched file in the app's filesystem is seen, whatever the hook reports
    fake = {"diffusers.schedulers.scheduling_x": "/site/diffusers/schedulers/scheduling_x.py"}
    proc = _fake_root(tmp_path, 4242, fake)
    app_file = proc / "4242" / "root" / "site/diffusers/schedulers/scheduling_x.py"
    app_file.write_text("def step(): return 1\n")
    first, _ = measure_solver(4242, fake, proc=proc)
    app_file.write_text("def step(): return 2  # patched\n")
    second, _ = measure_solver(4242, fake, proc=proc)
    assert first and second and first != second
    # patched in place at the same size with its mtime set back: the change time still moves
    before = app_file.stat()
    time.sleep(0.01)
    app_file.write_text("def step(): return 3  # patched\n")
    os.utime(app_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert app_file.stat().st_mtime_ns == before.st_mtime_ns
    assert app_file.stat().st_size == before.st_size
    third, _ = measure_solver(4242, fake, proc=proc)
    assert third and third != second


@pytest.mark.parametrize(
    ("pid", "files", "result"),
    [
        (0, {"diffusers.a": "/x/a.py"}, "process namespace not shared"),
        (None, {"diffusers.a": "/x/a.py"}, "process namespace not shared"),
        (1 << 22, {"diffusers.a": "/nowhere/a.py"}, "cannot read the app's /nowhere/a.py"),
        (1, None, "named no solver files"),
    ],
)
def test_unreadable_solver_files_fall_back_to_the_report(
    pid: int | None, files: dict[str, str] | None, result: str
) -> None:
    digest, why = measure_solver(pid, files)
    assert digest is None and result in why


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"os.path": "/usr/lib/python3/os.py"},
        {"diffusers.a": "relative/a.py"},
        {"diffusers.a": "/x/../etc/passwd.py"},
        {"diffusers.a": "/x/a.so"},
        {"diffusers.a": 3},
        {f"diffusers.m{i}": f"/x/m{i}.py" for i in range(65)},
        ["diffusers.a"],
    ],
)
def test_malformed_solver_file_lists_are_refused(files: object) -> None:
    with pytest.raises(MalformedInputError):
        measure_solver(1, files)  # type: ignore[arg-type]


def test_a_hook_that_misreports_its_solver_code_is_caught(
    weights: tuple[Path, str], tmp_path: Path
) -> None:
    import os

    from samplerguard.hook.solver import solver_files

    path, digest = weights
    solver = solver_code_digest("EulerDiscreteScheduler")
    mon = IntegrityMonitor(
        GoldenDigests(model_weights=[digest], solver_code=[solver]), model_files=(path,)
    )
    mon.measure()
    files = solver_files("EulerDiscreteScheduler")
    _, facts, ok = mon.check_request(
        {"model": {"digest": digest}}, solver, peer_pid=os.getpid(), solver_files=files
    )
    assert ok == [] and facts["solverCodeSource"] == "measured"
    # the hook claims the golden digest, but the files it runs are others
    other = solver_files("DDIMScheduler")
    _, facts, bad = mon.check_request(
        {"model": {"digest": digest}}, solver, peer_pid=os.getpid(), solver_files=other
    )
    assert any("but the app's files hash to" in p for p in bad)
    assert any("solver code: digest mismatch" in p for p in bad)
    assert facts["solverCode"] != solver
