"""The facades users program against: exactly these names, each resolving to its owner, and
misuse of the hook failing at the call that misuses it."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import samplerguard.hook as hook

HOOK_API = [
    "InstrumentedPipeline",
    "LocalSink",
    "RecordedOutput",
    "Recorder",
    "RecordingError",
    "SidecarSink",
    "Trajectory",
    "TrajectoryRequest",
    "UnsupportedPipeline",
    "install",
    "install_from_env",
    "instrument",
    "ticketed",
]


def test_the_hook_exports_exactly_its_public_api() -> None:
    assert hook.__all__ == HOOK_API
    for name in HOOK_API:
        obj = getattr(hook, name)
        assert getattr(obj, "__module__", "").startswith("samplerguard."), name
    with pytest.raises(AttributeError):
        _ = hook.Nonexistent


def test_the_wire_format_does_not_import_diffusers() -> None:
    code = "import sys, samplerguard.hook.wire; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _request(**kw: object) -> hook.TrajectoryRequest:
    fields: dict[str, object] = {
        "request_id": "r",
        "tenant": "t",
        "pipeline": "digits",
        "model_name": "m",
        "model_digest": "sha256:" + "0" * 64,
        "sampler": "euler",
        "guidance_scale": 3.0,
        "steps": 4,
    }
    fields.update(kw)
    return hook.TrajectoryRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sampler", "eulr", r"unknown sampler 'eulr' \(did you mean euler"),
        ("sampler", "DPMSolverSDEScheduler", "Brownian"),
        ("steps", 0, "steps must be 1..1000"),
        ("guidance_scale", math.nan, "guidance_scale must be a number"),
        ("rng_mode", "torch", "rng_mode must be one of"),
        ("tenant", "", "tenant must be a non-empty string"),
    ],
)
def test_a_bad_request_fails_at_construction(field: str, value: object, message: str) -> None:
    with pytest.raises(Exception, match=message):
        _request(**{field: value})


def test_misuse_of_a_trajectory_fails_at_the_call() -> None:
    from diffusers import EulerDiscreteScheduler

    recorder = hook.Recorder(hook.LocalSink())
    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(8)
    with (
        pytest.raises(Exception, match="declares 4 steps, the scheduler is set for 8"),
        recorder.trajectory(_request()) as tr,
    ):
        tr.begin(scheduler, torch.zeros(1, 4, 8, 8))
    scheduler.set_timesteps(4)
    with (
        pytest.raises(Exception, match=r"torch\.from_numpy"),
        recorder.trajectory(_request(request_id="r2")) as tr,
    ):
        tr.begin(scheduler, np.zeros((1, 4, 8, 8), dtype=np.float32))  # type: ignore[arg-type]
    with (
        pytest.raises(Exception, match="ready when the `with"),
        recorder.trajectory(_request(request_id="r3")) as tr,
    ):
        tr.begin(scheduler, torch.zeros(1, 4, 8, 8), conditioning={})
        _ = tr.commitment
    recorder.close()
    with pytest.raises(hook.RecordingError, match="closed"), recorder.trajectory(_request()):
        pass
