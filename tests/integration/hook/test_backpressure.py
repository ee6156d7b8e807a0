"""Backpressure never reaches the denoising loop: a sink that stops taking data makes the
request unverified (fail closed), while the loop runs on without blocking or copying."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from samplerguard.demo.providers import make_scheduler
from samplerguard.hook.local import LocalSink
from samplerguard.hook.recorder import Recorder, RecordingError, StepRecord, TrajectoryRequest


class StuckSink(LocalSink):
    """A LocalSink whose steps hang until released (a sidecar that stopped reading)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.steps = 0
        self.aborted_reasons: list[str] = []

    def step(self, handle: Any, step: StepRecord) -> None:
        self.release.wait(30)
        self.steps += 1
        super().step(handle, step)

    def abort(self, handle: Any, reason: str) -> None:
        self.aborted_reasons.append(reason)
        super().abort(handle, reason)


def _request(steps: int) -> TrajectoryRequest:
    return TrajectoryRequest("bp-1", "t", "digits", "m", "sha256:" + "0" * 64, "euler", 1.0, steps)


def test_a_stuck_sink_fails_the_request_and_never_blocks_the_loop() -> None:
    sink = StuckSink()
    recorder = Recorder(sink, max_pending=16, batch=4)
    sched = make_scheduler("euler")
    sched.set_timesteps(200)
    outcome: dict[str, BaseException | None] = {}
    looped = threading.Event()

    def generate() -> None:
        latents = torch.randn(1, 1, 8, 8)
        try:
            with recorder.trajectory(_request(200)) as tr:
                tr.begin(sched, latents, conditioning={})
                for i, t in enumerate(sched.timesteps):
                    tr.step(i, t, latents, sched)
                looped.set()  # the whole loop ran while the sink was stuck
                tr.end(latents, b"out")
            outcome["error"] = None
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=generate)
    thread.start()
    assert looped.wait(20), "the denoising loop blocked on a stuck sink"
    sink.release.set()
    thread.join(30)
    recorder.close()
    error = outcome["error"]
    assert isinstance(error, RecordingError)
    assert "fell 16 steps behind" in str(error) and "unverified" in str(error)
    assert sink.aborted_reasons and "fell 16 steps behind" in sink.aborted_reasons[0]
    assert sink.steps < 200  # the rest was dropped, not recorded late


def test_a_sink_that_keeps_up_is_unaffected_by_batching() -> None:
    sink = LocalSink()
    recorder = Recorder(sink, max_pending=64, batch=4)  # 50 steps can never overflow 64
    sched = make_scheduler("euler")
    sched.set_timesteps(50)
    latents = torch.randn(1, 1, 8, 8)
    with recorder.trajectory(_request(50)) as tr:
        tr.begin(sched, latents, conditioning={})
        for i, t in enumerate(sched.timesteps):
            latents = latents * 0.9
            tr.step(i, t, latents, sched)
        tr.end(latents, b"out")
    recorder.close()
    assert tr.commitment is not None and tr.commitment.tree_size == 54
    assert tr.record is not None and len(tr.record.steps) == 50


def test_a_batch_must_hold_at_least_one_step() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Recorder(LocalSink(), batch=0)
