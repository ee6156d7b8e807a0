"""Runtime integrity: golden digests of the weights on disk, declared model, solver code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from samplerguard.commitment.digest import module_digest
from samplerguard.hook.solver import solver_code_digest
from samplerguard.policy.spec import GoldenDigests
from samplerguard.sidecar.integrity import (
    IntegrityMonitor,
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
