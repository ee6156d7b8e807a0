"""Backpressure never reaches the denoising loop: a sink that stops taking data makes the
request unverified (fail closed), while the loop runs on without blocking or copying."""

from __future__ import annotations

import threading
import time
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


def _against_stuck_sink(recorder: Recorder, sink: StuckSink, steps: int) -> BaseException | None:
    """Record ``steps`` steps while ``sink`` is stuck; release it once the loop has run
    through (it must never block on the sink). What the generation raised, if anything."""
    outcome: dict[str, BaseException | None] = {}
    looped = threading.Event()

    def at(i: int) -> None:
        if i == steps - 1:
            looped.set()  # the whole loop ran while the sink was stuck

    def generate() -> None:
        try:
            _record(recorder, steps, torch.randn(1, 1, 8, 8), at)
            outcome["error"] = None
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=generate)
    thread.start()
    assert looped.wait(20), "the denoising loop blocked on a stuck sink"
    sink.release.set()
    thread.join(30)
    recorder.close()
    return outcome["error"]


def test_a_stuck_sink_fails_the_request_and_never_blocks_the_loop() -> None:
    sink = StuckSink()
    error = _against_stuck_sink(Recorder(sink, max_pending=16, batch=4), sink, 200)
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


class WatchedSink(LocalSink):
    """A LocalSink that notes the steps it got, when the first one came, and its starts."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[int] = []
        self.first = threading.Event()
        self.started = threading.Event()

    def start(self, request: TrajectoryRequest, begin: Any) -> Any:
        self.started.set()
        return super().start(request, begin)

    def step(self, handle: Any, step: StepRecord) -> None:
        self.got.append(step.index)
        self.first.set()
        super().step(handle, step)


def _record(recorder: Recorder, steps: int, latents: torch.Tensor, during: Any = None) -> Any:
    sched = make_scheduler("euler")
    sched.set_timesteps(steps)
    with recorder.trajectory(_request(steps)) as tr:
        tr.begin(sched, latents, conditioning={})
        for i, t in enumerate(sched.timesteps):
            latents = latents * 0.9
            tr.step(i, t, latents, sched)
            if during is not None:
                during(i)
        tr.end(latents, b"out")
    return tr


def test_small_steps_go_to_the_worker_in_one_hand_off_at_the_end() -> None:
    # 10 steps of a 256-byte latent stay below both the batch and the bytes: the worker is
    # woken once for them, with the end
    sink = WatchedSink()
    recorder = Recorder(sink)
    seen_during: list[int] = []
    tr = _record(recorder, 10, torch.randn(1, 1, 8, 8), lambda i: seen_during.append(len(sink.got)))
    recorder.close()
    assert seen_during == [0] * 10
    assert sink.got == list(range(10))
    assert tr.commitment is not None and tr.commitment.tree_size == 14


def test_large_steps_go_to_the_worker_while_the_loop_runs() -> None:
    # a step holding more than handoff_bytes goes at once: the worker starts on it while the
    # loop is still running, and memory holds no backlog of large steps
    sink = WatchedSink()
    recorder = Recorder(sink, handoff_bytes=1024)
    waited: list[bool] = []
    tr = _record(
        recorder, 6, torch.randn(1, 4, 16, 16), lambda i: waited.append(sink.first.wait(10))
    )
    recorder.close()
    assert waited[0], "the first large step did not reach the worker during the loop"
    assert sink.got == list(range(6))
    assert tr.commitment is not None and tr.commitment.tree_size == 10


def test_the_pending_bound_counts_steps_whatever_the_hand_off_size() -> None:
    # hand-offs of one step each (large steps): the worker may still fall 16 steps behind, not
    # 16 hand-offs or 16 // batch
    sink = StuckSink()
    error = _against_stuck_sink(Recorder(sink, max_pending=16, handoff_bytes=1), sink, 40)
    assert isinstance(error, RecordingError) and "fell 16 steps behind" in str(error)
    # at most the stuck first step and the 16 queued behind it; the rest was dropped
    assert sink.steps <= 17


def test_a_slow_loop_hands_off_what_waited_too_long() -> None:
    # small steps that each take a while (a big model with small latents): the start and the
    # steps go once the oldest waited handoff_seconds, not at the end
    sink = WatchedSink()
    recorder = Recorder(sink, handoff_seconds=0.05)
    seen: list[bool] = []

    def slow(i: int) -> None:
        time.sleep(0.03)
        seen.append(sink.first.is_set())

    tr = _record(recorder, 12, torch.randn(1, 1, 8, 8), slow)
    recorder.close()
    assert sink.started.is_set() and any(seen), "nothing reached the worker during the loop"
    assert sink.got == list(range(12))
    assert tr.commitment is not None and tr.commitment.tree_size == 16


def test_hand_off_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        Recorder(LocalSink(), handoff_seconds=0)
    with pytest.raises(ValueError, match="at least 1"):
        Recorder(LocalSink(), handoff_bytes=0)
    with pytest.raises(ValueError, match="at least 1"):
        Recorder(LocalSink(), max_pending=0)


def test_the_start_goes_with_the_first_hand_off_unless_asked_for_at_once() -> None:
    # deferred (the default): the worker is woken once for a small trajectory, start included
    sink = WatchedSink()
    recorder = Recorder(sink)
    started_during: list[bool] = []
    tr = _record(
        recorder,
        10,
        torch.randn(1, 1, 8, 8),
        lambda i: started_during.append(sink.started.is_set()),
    )
    recorder.close()
    assert started_during == [False] * 10
    assert tr.commitment is not None and tr.commitment.tree_size == 14
    # early_start: START goes as the first step is recorded, so admission runs beside the loop
    sink = WatchedSink()
    recorder = Recorder(sink, early_start=True)
    waited: list[bool] = []
    tr = _record(
        recorder, 4, torch.randn(1, 1, 8, 8), lambda i: waited.append(sink.started.wait(10))
    )
    recorder.close()
    assert waited == [True] * 4
    assert tr.commitment is not None and tr.commitment.tree_size == 8


def test_a_generation_that_fails_before_its_first_hand_off_starts_nothing() -> None:
    sink = WatchedSink()
    recorder = Recorder(sink)
    sched = make_scheduler("euler")
    sched.set_timesteps(10)
    latents = torch.randn(1, 1, 8, 8)
    with (
        pytest.raises(RuntimeError, match="out of memory"),
        recorder.trajectory(_request(10)) as tr,
    ):
        tr.begin(sched, latents, conditioning={})
        tr.step(0, sched.timesteps[0], latents * 0.9, sched)
        raise RuntimeError("out of memory")
    recorder.close()
    assert not sink.started.is_set() and sink.got == []
