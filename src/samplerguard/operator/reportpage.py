"""``samplerguard report``: an audit page from PolicyReports or a local JSON-lines audit log.

Lives in the operator package because it reads the operator's reports (and the cluster); the
numbers come from :mod:`samplerguard.policy.report_view`, the charts from
:mod:`.reportplots`. The page opens with what a security team acts on: the time range, a
verdict per policy and per workload, the workloads failing and why, then every failure with its
request id, trajectory root, step, score against τ and time. Trends and distributions follow.

HTML is one self-contained file (charts are inline SVG); Markdown carries the same numbers as
tables. Nothing is written beside the output.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from samplerguard.operator.reportplots import (
    COLORS,
    Bar,
    bar_chart,
    score_bins,
    stacked_chart,
    trend_label,
    value_bins,
)
from samplerguard.policy.report import ReportResult
from samplerguard.policy.report_view import STATUSES, Failure, Group, ReportView, build_view

__all__ = ["MAX_FAILURE_ROWS", "page", "render", "results_from_reports"]

#: Failures listed one per row; beyond this the page says how many more there are.
MAX_FAILURE_ROWS = 2000


def results_from_reports(bodies: Iterable[dict[str, Any]]) -> list[ReportResult]:
    out = []
    for body in bodies:
        for raw in body.get("results") or []:
            try:
                out.append(ReportResult.model_validate(raw))
            except ValueError:
                continue
    return out


def _utc(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def _span(view: ReportView) -> str:
    if view.first is None or view.last is None:
        return "no timestamps"
    seconds = view.last - view.first
    if seconds < 120:
        length = f"{seconds:.0f} s"
    elif seconds < 7200:
        length = f"{seconds / 60:.0f} min"
    elif seconds < 172800:
        length = f"{seconds / 3600:.1f} h"
    else:
        length = f"{seconds / 86400:.1f} days"
    return f"{_utc(view.first)} to {_utc(view.last)} ({length})"


def _num(v: float | None) -> str:
    return "-" if v is None else "0" if v == 0 else f"{v:.3g}"


def _requests_line(view: ReportView) -> str:
    r = view.requests
    parts = [f"{r.get(s, 0)} {w}" for s, w in (("pass", "passed"), ("fail", "failed"))]
    parts += [f"{r[s]} {s}" for s in ("warn", "error") if r.get(s)]
    return f"{view.request_total} requests checked: " + ", ".join(parts)


def _group_rows(groups: list[Group], with_reasons: bool) -> list[list[str]]:
    rows = []
    for g in groups:
        row = [
            g.name,
            g.verdict.upper(),
            str(sum(g.requests.values())),
            str(g.requests.get("pass", 0)),
            str(g.failed_requests),
            str(g.requests.get("error", 0) + g.results.get("error", 0)),
            str(sum(g.results.values())),
        ]
        if with_reasons:
            row.append("; ".join(f"{r} ({n})" for r, n in g.reasons.most_common(3)) or "-")
        rows.append(row)
    return rows


_GROUP_HEAD = ["", "verdict", "requests", "passed", "failed", "errors", "other checks"]
_FAIL_HEAD = ["time (UTC)", "workload", "policy", "check", "request id", "trajectory root"]
_FAIL_HEAD += ["step", "score (rel-L2)", "τ", "what was found"]


def _failure_row(f: Failure, *, short_root: bool) -> list[str]:
    root = f.root[:16] + "…" if short_root and len(f.root) > 16 else f.root
    result = "" if f.result == "fail" else f"[{f.result}] "
    folded = f" (×{f.count}, latest shown)" if f.count > 1 else ""
    return [
        _utc(f.when),
        f.workload,
        f.policy,
        f.rule,
        f.request_id,
        root,
        "-" if f.step is None else str(f.step),
        _num(f.score),
        _num(f.tau),
        result + f.message + folded,
    ]


def _charts(view: ReportView) -> list[tuple[str, list[Bar], tuple[int, str] | None, str, str]]:
    """(title, bars, marker, x label, y label) of each distribution."""
    out: list[tuple[str, list[Bar], tuple[int, str] | None, str, str]] = []
    bars, cut = score_bins(view.scores, view.exact_zero, view.tau)
    if bars:
        marker = (cut, f"τ = {view.tau:g}") if cut >= 0 and view.tau else None
        out.append(("Re-check scores", bars, marker, "rel-L2 (log10 bins; 0 = exact)", "checks"))
    if view.guidance:
        bars = value_bins(view.guidance)
        out.append(("Guidance scale per request", bars, None, "guidance (CFG)", "requests"))
    if view.steps:
        bars = value_bins(view.steps)
        out.append(("Sampling steps per request", bars, None, "steps", "requests"))
    return out


def page(results: list[ReportResult], *, fmt: str, source: str) -> str:
    """The whole page as text (``md`` or ``html``)."""
    view = build_view(results)
    return _markdown(view, source) if fmt == "md" else _html(view, source)


def render(results: list[ReportResult], out: Path, *, fmt: str, source: str) -> list[Path]:
    """Write the page to ``out`` (one file). Returns the files written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(results, fmt=fmt, source=source), encoding="utf-8")
    return [out]


# -- Markdown ---------------------------------------------------------------------------------


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    def cell(c: str) -> str:
        return c.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _markdown(view: ReportView, source: str) -> str:
    lines = [
        "# samplerguard audit report",
        "",
        f"- Source: {source}",
        f"- Time range: {_span(view)}",
        f"- {_requests_line(view)}; {view.entries} result entries",
        "",
        "## Verdict per policy",
        "",
    ]
    lines += _md_table(["policy", *_GROUP_HEAD[1:]], _group_rows(view.policies, False))
    lines += ["## Verdict per workload", ""]
    lines += _md_table(["workload", *_GROUP_HEAD[1:], "why"], _group_rows(view.workloads, True))
    lines += ["## Workloads failing and why", ""]
    if not view.failing_workloads:
        lines += ["None.", ""]
    for g in view.failing_workloads:
        lines.append(f"- **{g.name}**: {g.failed_requests} failed request(s)")
        lines += [f"  - {reason}: {n}" for reason, n in g.reasons.most_common()]
    lines.append("")
    shown = view.failures[:MAX_FAILURE_ROWS]
    lines += [f"## Failures ({sum(f.count for f in view.failures)})", ""]
    if shown:
        lines += _md_table(_FAIL_HEAD, [_failure_row(f, short_root=False) for f in shown])
    else:
        lines += ["None.", ""]
    if len(view.failures) > len(shown):
        lines += [f"{len(view.failures) - len(shown)} older failures not listed.", ""]
    lines += ["## Checks by rule", ""]
    lines += _md_table(
        ["check", *STATUSES],
        [[rule, *[str(c.get(s, 0)) for s in STATUSES]] for rule, c in view.by_rule.items()],
    )
    lines += [f"## Requests over time ({view.bucket_s} s per row)", ""]
    lines += _md_table(
        ["from (UTC)", "passed", "failed", "warn", "error"],
        [
            [
                _utc(b.start),
                *[str(b.requests.get(s, 0)) for s in ("pass", "fail", "warn", "error")],
            ]
            for b in view.trend
        ],
    )
    for title, bars, marker, xlabel, ylabel in _charts(view):
        lines += [f"## {title}", ""]
        if marker is not None:
            lines += [f"Bins from `{bars[marker[0]].label}` up are above {marker[1]}.", ""]
        lines += _md_table([xlabel, ylabel], [[b.label, str(b.count)] for b in bars])
    return "\n".join(lines)


# -- HTML -------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.k{white-space:nowrap}
code{font-size:12px}.v{font-weight:bold;padding:1px 6px;border-radius:3px;color:#fff}
.facts td:first-child{font-weight:bold;background:#fafafa}
.charts{display:flex;flex-wrap:wrap;gap:1em}.charts figure{margin:0}
figcaption{font-weight:bold;margin:.3em 0}
"""

_VERDICT_COLOR = {"fail": COLORS["fail"], "error": COLORS["error"], "warn": COLORS["warn"]}
_VERDICT_COLOR |= {"pass": COLORS["pass"], "none": COLORS["skip"]}


def _badge(verdict: str) -> str:
    color = _VERDICT_COLOR.get(verdict.lower(), COLORS["skip"])
    return f"<span class='v' style='background:{color}'>{html.escape(verdict.upper())}</span>"


def _table(
    head: list[str],
    rows: list[list[str]],
    *,
    raw_cols: tuple[int, ...] = (),
    nowrap: tuple[int, ...] = (),
) -> str:
    th = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            text = c if i in raw_cols else html.escape(c)
            numeric = c.replace(".", "").replace("e-", "").isdigit()
            cls = " class='n'" if numeric else " class='k'" if i in nowrap else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def _html(view: ReportView, source: str) -> str:
    esc = html.escape
    overall = "fail" if view.requests.get("fail") or view.results.get("fail") else None
    overall = overall or ("error" if view.results.get("error") else "pass")
    facts = [
        ["Overall", _badge(overall)],
        ["Time range", esc(_span(view))],
        ["Requests", esc(_requests_line(view))],
        ["Result entries", str(view.entries)],
        ["Source", esc(source)],
    ]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>samplerguard audit report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>samplerguard audit report</h1>",
        "<table class='facts'>"
        + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in facts)
        + "</table>",
    ]

    def groups(title: str, what: str, gs: list[Group], reasons: bool) -> None:
        rows = _group_rows(gs, reasons)
        for row in rows:
            row[0], row[1] = esc(row[0]), _badge(row[1])
            if reasons:
                row[-1] = esc(row[-1])
        head = [what, *_GROUP_HEAD[1:], *(["why"] if reasons else [])]
        parts.append(f"<h2>{title}</h2>" + _table(head, rows, raw_cols=tuple(range(len(head)))))

    groups("Verdict per policy", "policy", view.policies, False)
    groups("Verdict per workload", "workload", view.workloads, True)
    parts.append("<h2>Workloads failing and why</h2>")
    if not view.failing_workloads:
        parts.append("<p>None.</p>")
    for g in view.failing_workloads:
        items = "".join(
            f"<li>{esc(reason)}: <b>{n}</b></li>" for reason, n in g.reasons.most_common()
        )
        parts.append(
            f"<p><b>{esc(g.name)}</b>: {g.failed_requests} failed request(s)</p><ul>{items}</ul>"
        )
    shown = view.failures[:MAX_FAILURE_ROWS]
    parts.append(f"<h2>Failures ({sum(f.count for f in view.failures)})</h2>")
    if shown:
        rows = []
        for f in shown:
            row = [esc(c) for c in _failure_row(f, short_root=True)]
            row[5] = f"<code title='{esc(f.root)}'>{row[5]}</code>"
            row[4] = f"<code>{row[4]}</code>"
            rows.append(row)
        cols = tuple(range(len(_FAIL_HEAD)))
        parts.append(_table(_FAIL_HEAD, rows, raw_cols=cols, nowrap=(0, 3, 4, 5, 8)))
    else:
        parts.append("<p>None.</p>")
    if len(view.failures) > len(shown):
        parts.append(f"<p>{len(view.failures) - len(shown)} older failures not listed.</p>")
    parts.append("<h2>Checks by rule</h2>")
    parts.append(
        _table(
            ["check", *STATUSES],
            [[rule, *[str(c.get(s, 0)) for s in STATUSES]] for rule, c in view.by_rule.items()],
        )
    )
    parts.append("<h2>Trends and distributions</h2><div class='charts'>")
    if view.trend:
        title = "Requests over time"
        chart = stacked_chart(view.trend, view.bucket_s, title=title)
        parts.append(f"<figure><figcaption>{title}</figcaption>{chart}</figure>")
    for title, bars, marker, xlabel, ylabel in _charts(view):
        chart = bar_chart(bars, title=title, xlabel=xlabel, ylabel=ylabel, marker=marker)
        parts.append(f"<figure><figcaption>{esc(title)}</figcaption>{chart}</figure>")
    parts.append("</div>")
    if view.trend:
        first = trend_label(view.trend[0].start, view.bucket_s)
        parts.append(f"<p>Bars start at {esc(first)} UTC, {view.bucket_s} s each.</p>")
    parts.append("</body></html>\n")
    return "".join(parts)
