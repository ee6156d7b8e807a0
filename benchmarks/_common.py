"""Shared helpers for the benchmark scripts (timing, tables). Not a test module."""

from __future__ import annotations

import atexit
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def scratch_dir(prefix: str) -> Path:
    """A temporary directory removed when the benchmark exits: a sidecar's openings store
    holds gigabytes after an ingestion run, and must not outlive it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def interleaved(
    a: Callable[[], object], b: Callable[[], object], repeat: int
) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately, so drift in machine load hits both equally."""
    ta, tb = [], []
    for _ in range(repeat):
        ta += timed(a, 1)
        tb += timed(b, 1)
    return ta, tb


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
