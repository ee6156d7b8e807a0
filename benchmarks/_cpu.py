"""CPU clocks for the overhead benchmarks: what the hook and the sidecar cost, as CPU time.

On a shared 2-core VM the wall-clock ratio of two noisy generations cannot resolve a 2 % effect;
the CPU time the hook's code, the recorder's worker thread and the sidecar process spend is
measured directly instead, each on its own clock, and set against the CPU time of the plain
generation in the same round:

* the hook on the denoising thread: ``time.thread_time`` around the instrumented call, the
  scheduler and denoiser wrappers and every :class:`~samplerguard.hook.recorder.Trajectory`
  call, less the pipeline's and the scheduler's own work inside them (:class:`LoopMeter`);
* the recorder's worker thread: its own CPU clock (``pthread_getcpuclockid``);
* the sidecar: its process CPU clock (``clock_gettime`` on the process's CPU-time clock, with
  nanosecond resolution and the threads that already exited included), falling back to
  ``/proc/<pid>/stat`` (10 ms ticks) where that clock cannot be read.
"""

from __future__ import annotations

import functools
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from samplerguard.hook.pipelines import InstrumentedPipeline, _Call
from samplerguard.hook.recorder import Recorder, Trajectory

#: every method of Trajectory the pipeline integration calls on the denoising thread
_LOOP_METHODS = ("__init__", "_saw_noise", "begin", "set_conditioning", "step", "end", "_wait")


def thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds ``thread`` has used so far (Linux/POSIX per-thread clock)."""
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def worker_cpu(recorder: Recorder) -> float:
    """CPU seconds of the recorder's worker thread."""
    return thread_cpu(recorder._thread)  # the benchmark reads the private thread on purpose


def process_cpu(pid: int) -> float:
    """CPU seconds of process ``pid``, all of its threads, exited ones included."""
    try:
        # glibc's clock_getcpuclockid(pid): the process's CPUCLOCK_SCHED clock
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LoopMeter:
    """CPU seconds the denoising thread spends in the hook's code: the instrumented call's own
    work around the pipeline (binding the request, the output's bytes and digest, waiting for
    the commitment), the wrappers of the scheduler's ``set_timesteps`` and ``step`` and of the
    denoiser, and every :class:`Trajectory` call, less the pipeline's, the scheduler's and the
    denoiser's own work inside them. The pipeline classes to subtract are given to
    :meth:`installed`. One denoising thread at a time."""

    def __init__(self) -> None:
        self.seconds = 0.0
        #: per open section, whether its time counts (innermost last)
        self._stack: list[bool] = []
        self._since = 0.0

    def _enter(self, counted: bool) -> None:
        now = time.thread_time()
        if self._stack and self._stack[-1]:
            self.seconds += now - self._since
        self._stack.append(counted)
        self._since = now

    def _exit(self) -> None:
        now = time.thread_time()
        if self._stack.pop():
            self.seconds += now - self._since
        self._since = now

    def _section(self, fn: Callable[..., Any], counted: bool) -> Callable[..., Any]:
        # no functools.wraps: the scheduler's step is wrapped anew every call
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._enter(counted)
            try:
                return fn(*args, **kwargs)
            finally:
                self._exit()

        return timed

    def _call_step(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``_Call.step`` counts, the scheduler's own ``step`` it runs does not."""

        @functools.wraps(fn)
        def timed(call: Any, original: Any, *rest: Any) -> Any:
            self._enter(True)
            try:
                return fn(call, self._section(original, False), *rest)
            finally:
                self._exit()

        return timed

    @contextmanager
    def installed(self, *pipelines: type) -> Iterator[LoopMeter]:
        """Measure while installed; ``pipelines``: the classes whose ``__call__`` is the
        pipeline's own work (not counted)."""
        patches: list[tuple[Any, str, Any]] = [
            (Trajectory, name, self._section(getattr(Trajectory, name), True))
            for name in _LOOP_METHODS
        ]
        patches += [
            (_Call, name, self._section(getattr(_Call, name), True))
            for name in ("denoise", "set_timesteps", "set_begin_index")
        ]
        patches.append((_Call, "step", self._call_step(_Call.step)))
        patches.append(
            (
                InstrumentedPipeline,
                "__call__",
                self._section(InstrumentedPipeline.__call__, True),
            )
        )
        patches += [(cls, "__call__", self._section(cls.__call__, False)) for cls in pipelines]
        saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]
        try:
            for owner, name, fn in patches:
                setattr(owner, name, fn)
            yield self
        finally:
            for owner, name, fn in saved:
                if fn is None:
                    delattr(owner, name)  # it was inherited
                else:
                    setattr(owner, name, fn)

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def spread(values: Sequence[float], fmt: str = "{:.4f}") -> str:
    """``median (IQR low to high)`` of per-round values."""
    if len(values) < 2:
        return fmt.format(values[0]) if values else "-"
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return f"{fmt.format(q2)} (IQR {fmt.format(q1)} to {fmt.format(q3)})"
