"""The report's charts: bins computed once, drawn as inline SVG or listed as a table.

Inline SVG keeps the HTML page one self-contained file (no image files beside it, nothing
fetched) and needs no plotting library. Every bar carries a ``<title>`` with its exact count,
which a browser shows on hover.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from html import escape

from samplerguard.policy.report_view import TrendBucket

__all__ = [
    "COLORS",
    "Bar",
    "bar_chart",
    "score_bins",
    "stacked_chart",
    "trend_label",
    "value_bins",
]

COLORS = {
    "pass": "#3a923a",
    "fail": "#c03d3e",
    "error": "#8c61a8",
    "warn": "#e1812c",
    "skip": "#9a9a9a",
    "exact": "#2d6fb5",
    "bar": "#4878d0",
}

_W, _H = 620, 250
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 14, 52


@dataclass(frozen=True)
class Bar:
    label: str
    count: int
    color: str = COLORS["bar"]


def value_bins(values: list[float], *, max_bins: int = 20) -> list[Bar]:
    """One bar per distinct value when there are few, else equal-width bins."""
    if not values:
        return []
    distinct = sorted(set(values))
    if len(distinct) <= max_bins:
        counts = Counter(values)
        return [Bar(f"{v:g}", counts[v]) for v in distinct]
    lo, hi = distinct[0], distinct[-1]
    width = (hi - lo) / max_bins
    counts = Counter(min(int((v - lo) / width), max_bins - 1) for v in values)
    return [Bar(f"{lo + i * width:.3g}", counts.get(i, 0)) for i in range(max_bins)]


def score_bins(scores: list[float], exact_zero: int, tau: float | None) -> tuple[list[Bar], int]:
    """rel-L2 scores: a bar for exact zeros, then half-decade bins of log10(score).

    Returns the bars and the index of the first bin above τ (-1 when τ is not positive), so
    the chart can mark the threshold between two bars.
    """
    bars: list[Bar] = []
    if exact_zero:
        bars.append(Bar("0 (exact)", exact_zero, COLORS["exact"]))
    if not scores:
        return bars, -1
    logs = [math.log10(s) for s in scores]
    lo = math.floor(min(logs) * 2) / 2
    hi = math.floor(max(logs) * 2) / 2
    edges = [lo + i / 2 for i in range(round((hi - lo) * 2) + 1)]
    counts = Counter(min(int((v - lo) * 2), len(edges) - 1) for v in logs)
    tau_log = math.log10(tau) if tau and tau > 0 else None
    cut = -1
    for i, edge in enumerate(edges):
        above = tau_log is not None and edge >= tau_log
        if above and cut < 0:
            cut = len(bars)
        bars.append(Bar(f"{10**edge:.1g}", counts.get(i, 0), COLORS["fail" if above else "bar"]))
    return bars, cut


def trend_label(start: float, width: int) -> str:
    fmt = "%H:%M:%S" if width < 60 else "%m-%d %H:%M" if width < 86400 else "%Y-%m-%d"
    return time.strftime(fmt, time.gmtime(start))


def _frame(
    body: list[str], title: str, xlabel: str, ylabel: str, ymax: int, *, left: bool = False
) -> str:
    """Axes, y ticks and labels around ``body``; ``left`` puts the x label at the left (a
    legend takes the right)."""
    plot_h = _H - _TOP - _BOTTOM
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {_W} {_H}' width='{_W}' "
        f"height='{_H}' role='img' aria-label='{escape(title)}' "
        "style='font-family:sans-serif;font-size:11px'>",
        f"<title>{escape(title)}</title>",
        f"<line x1='{_LEFT}' y1='{_TOP}' x2='{_LEFT}' y2='{_TOP + plot_h}' stroke='#555'/>",
        f"<line x1='{_LEFT}' y1='{_TOP + plot_h}' x2='{_W - _RIGHT}' y2='{_TOP + plot_h}' "
        "stroke='#555'/>",
    ]
    for frac in (0.0, 0.5, 1.0):
        value = ymax * frac
        if frac == 0.5 and ymax < 2:
            continue
        y = _TOP + plot_h - plot_h * frac
        label = f"{value:.0f}" if frac != 0.5 else f"{value:g}"
        out.append(
            f"<text x='{_LEFT - 6}' y='{y + 4:.1f}' text-anchor='end' fill='#333'>{label}</text>"
        )
        if frac:
            out.append(
                f"<line x1='{_LEFT}' y1='{y:.1f}' x2='{_W - _RIGHT}' y2='{y:.1f}' stroke='#ddd'/>"
            )
    out += body
    x, anchor = (_LEFT, "start") if left else ((_LEFT + _W - _RIGHT) / 2, "middle")
    out.append(
        f"<text x='{x}' y='{_H - 6}' text-anchor='{anchor}' fill='#333'>{escape(xlabel)}</text>"
    )
    out.append(
        f"<text x='12' y='{_TOP + plot_h / 2}' text-anchor='middle' fill='#333' "
        f"transform='rotate(-90 12 {_TOP + plot_h / 2})'>{escape(ylabel)}</text>"
    )
    out.append("</svg>")
    return "".join(out)


def _x_labels(labels: list[str], slot: float) -> list[str]:
    plot_bottom = _H - _BOTTOM
    every = max(1, math.ceil(len(labels) * 70 / (_W - _LEFT - _RIGHT)))
    out = []
    for i, label in enumerate(labels):
        if i % every:
            continue
        x = _LEFT + slot * (i + 0.5)
        out.append(
            f"<text x='{x:.1f}' y='{plot_bottom + 15}' text-anchor='middle' fill='#333'>"
            f"{escape(label)}</text>"
        )
    return out


def bar_chart(
    bars: list[Bar], *, title: str, xlabel: str, ylabel: str, marker: tuple[int, str] | None = None
) -> str:
    """Bars with their labels; ``marker`` = (bar index, text) draws a dashed line before that
    bar (τ on the score histogram)."""
    ymax = max([b.count for b in bars] + [1])
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    slot = plot_w / max(len(bars), 1)
    body = []
    for i, b in enumerate(bars):
        h = plot_h * b.count / ymax
        x = _LEFT + slot * i + slot * 0.1
        body.append(
            f"<rect x='{x:.1f}' y='{_TOP + plot_h - h:.1f}' width='{slot * 0.8:.1f}' "
            f"height='{h:.1f}' fill='{b.color}'><title>{escape(b.label)}: {b.count}</title></rect>"
        )
        if b.count:
            body.append(
                f"<text x='{x + slot * 0.4:.1f}' y='{_TOP + plot_h - h - 3:.1f}' "
                f"text-anchor='middle' fill='#222'>{b.count}</text>"
            )
    if marker is not None and 0 <= marker[0] <= len(bars):
        x = _LEFT + slot * marker[0]
        body.append(
            f"<line x1='{x:.1f}' y1='{_TOP}' x2='{x:.1f}' y2='{_TOP + plot_h}' stroke='#000' "
            "stroke-dasharray='5,4'/>"
            f"<text x='{x + 4:.1f}' y='{_TOP + 10}' fill='#000'>{escape(marker[1])}</text>"
        )
    body += _x_labels([b.label for b in bars], slot)
    return _frame(body, title, xlabel, ylabel, ymax)


def stacked_chart(buckets: list[TrendBucket], width: int, *, title: str) -> str:
    """Requests per time bucket, stacked by outcome, with a legend."""
    order = ("pass", "warn", "error", "fail")
    ymax = max([sum(b.requests.values()) for b in buckets] + [1])
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    slot = plot_w / max(len(buckets), 1)
    body = []
    for i, b in enumerate(buckets):
        base = 0
        x = _LEFT + slot * i + slot * 0.1
        for status in order:
            n = b.requests.get(status, 0)
            if not n:
                continue
            h = plot_h * n / ymax
            y = _TOP + plot_h - plot_h * base / ymax - h
            body.append(
                f"<rect x='{x:.1f}' y='{y:.1f}' width='{slot * 0.8:.1f}' height='{h:.1f}' "
                f"fill='{COLORS[status]}'><title>{trend_label(b.start, width)}: {n} {status}"
                "</title></rect>"
            )
            base += n
    body += _x_labels([trend_label(b.start, width) for b in buckets], slot)
    for j, status in enumerate(order):
        x = _W - _RIGHT - 60 * (len(order) - j)
        body.append(
            f"<rect x='{x}' y='{_H - 20}' width='10' height='10' fill='{COLORS[status]}'/>"
            f"<text x='{x + 14}' y='{_H - 11}' fill='#333'>{status}</text>"
        )
    return _frame(body, title, f"UTC, {width} s per bar", "requests", ymax, left=True)
