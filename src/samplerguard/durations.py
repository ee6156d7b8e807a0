"""Durations: one format in policies, flags, environment variables and the chart.

Go's (``"30s"``, ``"10m"``, ``"72h"``, ``"1h30m"``, ``"500ms"``), plus ``"d"`` for days.
:func:`parse_duration` reads one, :func:`format_duration` writes one. Standard library only,
so the command line can use it without loading the policy models.
"""

from __future__ import annotations

import math
import re

__all__ = ["DURATION_PATTERN", "format_duration", "parse_duration"]

#: A Go-style duration ("72h", "1h30m", "500ms", "1.5s"; "d" for days): the one format of
#: durations in policies, flags, environment variables and the chart's values.
DURATION_PATTERN = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h|d))+)$"

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def parse_duration(text: str) -> float:
    """``"1h30m"`` → 5400.0: seconds in a Go-style duration. Anything else (a bare number, an
    unknown unit) raises ``ValueError`` saying what is expected."""
    if len(text) > 32 or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(
            f"{text[:40]!r} is not a duration; write it as Go does, e.g. 30s, 10m, 72h or 1h30m"
        )
    return float(
        sum(
            float(n) * _DURATION_UNITS[u]
            for n, u in re.findall(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h|d)", text)
        )
    )


def format_duration(seconds: float) -> str:
    """``5400.0`` → ``"1h30m"``: the shortest duration :func:`parse_duration` reads back as
    ``seconds`` to the millisecond (``"90d"``, ``"5m"``, ``"1.5s"`` is ``"1s500ms"``)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{seconds!r} is not a duration in seconds")
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
