"""CPU clocks for the overhead benchmarks: what the hook and the sidecar cost, as CPU time.

On a shared 2-core VM the wall-clock ratio of two noisy generations cannot resolve a 2 % effect;
the CPU time the hook's code, the recorder's worker thread and the sidecar process spend is
measured directly instead, each on its own clock, and set against the CPU time of the plain
generation in the same round:

* the hook on the denoising thread: ``time.thread_time`` around every call into a
  :class:`~samplerguard.hook.recorder.Trajectory` (outermost calls only);
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
    """CPU seconds the denoising thread spends inside the hook's Trajectory calls."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - start
                self._depth -= 1

        return timed

    @contextmanager
    def installed(self) -> Iterator[LoopMeter]:
        saved = {name: getattr(Trajectory, name) for name in _LOOP_METHODS}
        try:
            for name, fn in saved.items():
                setattr(Trajectory, name, self._wrap(fn))
            yield self
        finally:
            for name, fn in saved.items():
                setattr(Trajectory, name, fn)

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def spread(values: Sequence[float], fmt: str = "{:.4f}") -> str:
    """``median (IQR low to high)`` of per-round values."""
    if len(values) < 2:
        return fmt.format(values[0]) if values else "-"
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return f"{fmt.format(q2)} (IQR {fmt.format(q1)} to {fmt.format(q3)})"
