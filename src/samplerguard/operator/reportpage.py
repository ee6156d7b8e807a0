"""``samplerguard report``: an audit page from PolicyReports or a local JSON-lines audit log.

Lives in the operator package because it reads the operator's reports (and the cluster); the
core :mod:`samplerguard.policy.report` defines the records. Output is Markdown or HTML with
tables (summary by rule and result, failures per workload) and PNG plots: the guidance and
step-count histograms, the rel-L2 distribution against τ (log scale), and results per hour.
Plots need matplotlib (the ``report`` extra); without it the tables are still written.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samplerguard.policy.report import ReportResult

__all__ = ["Samples", "collect", "render", "results_from_reports"]


def results_from_reports(bodies: Iterable[dict[str, Any]]) -> list[ReportResult]:
    out = []
    for body in bodies:
        for raw in body.get("results") or []:
            try:
                out.append(ReportResult.model_validate(raw))
            except ValueError:
                continue
    return out


@dataclass
class Samples:
    guidance: list[float]
    steps: list[float]
    rel_l2: list[float]
    tau: float | None
    times: list[tuple[float, str]]


def _values(r: ReportResult, key: str) -> list[float]:
    joined = r.properties.get(f"{key}Samples")
    raw = joined.split(",") if joined else [r.properties[key]] if key in r.properties else []
    out = []
    for v in raw:
        try:
            f = float(v)
        except ValueError:
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def collect(results: list[ReportResult]) -> Samples:
    g: list[float] = []
    s: list[float] = []
    rel: list[float] = []
    taus = []
    for r in results:
        if r.rule in ("recipe", "trajectory-recheck"):
            g += _values(r, "guidance")
            s += _values(r, "steps")
        if r.rule == "trajectory-recheck":
            rel += _values(r, "relL2")
            t = r.metric("tau")
            if t is not None:
                taus.append(t)
    return Samples(g, s, rel, min(taus) if taus else None, [(r.when, r.result) for r in results])


def _plots(samples: Samples, out_dir: Path) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made: list[tuple[str, str]] = []

    def save(fig: Any, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        made.append((name, title))

    if samples.guidance:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist(samples.guidance, bins=20, color="#4878d0")
        ax.set_xlabel("guidance scale (CFG)")
        ax.set_ylabel("requests")
        save(fig, "guidance.png", "Guidance scale")
    if samples.steps:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist(samples.steps, bins=min(30, len(set(samples.steps)) or 1), color="#6acc64")
        ax.set_xlabel("sampling steps")
        ax.set_ylabel("requests")
        save(fig, "steps.png", "Step count")
    if samples.rel_l2:
        fig, ax = plt.subplots(figsize=(6, 3))
        logs = [math.log10(max(v, 1e-12)) for v in samples.rel_l2]
        ax.hist(logs, bins=30, color="#d65f5f")
        if samples.tau:
            ax.axvline(math.log10(samples.tau), color="k", linestyle="--", label="τ")
            ax.legend()
        ax.set_xlabel("log10 rel-L2 of re-checked steps")
        ax.set_ylabel("checks")
        save(fig, "rel_l2.png", "rel-L2 distribution")
    if samples.times:
        fig, ax = plt.subplots(figsize=(6, 3))
        start = min(t for t, _ in samples.times)
        hours = sorted({int((t - start) // 3600) for t, _ in samples.times})
        for status, color in (("pass", "#6acc64"), ("fail", "#d65f5f"), ("error", "#956cb4")):
            per = Counter(int((t - start) // 3600) for t, s in samples.times if s == status)
            ax.plot(hours, [per.get(h, 0) for h in hours], marker="o", label=status, color=color)
        ax.set_xlabel("hours since first result")
        ax.set_ylabel("results")
        ax.legend()
        save(fig, "trend.png", "Results over time")
    return made


def _tables(results: list[ReportResult]) -> tuple[list[list[str]], list[list[str]]]:
    counts: Counter[tuple[str, str]] = Counter()
    for r in results:
        n = r.metric("count")
        counts[(r.rule, r.result)] += int(n) if n and n >= 1 else 1
    rules = sorted({k[0] for k in counts})
    statuses = ["pass", "fail", "warn", "error", "skip"]
    summary = [[rule, *[str(counts.get((rule, s), 0)) for s in statuses]] for rule in rules]
    failures = [
        [r.workload, r.policy, r.rule, r.result, r.message[:200]]
        for r in sorted(results, key=lambda r: -r.when)
        if r.result in ("fail", "error")
    ][:200]
    return summary, failures


def render(results: list[ReportResult], out: Path, *, fmt: str, source: str) -> list[Path]:
    """Write the page (and its PNGs beside it). Returns the files written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    samples = collect(results)
    plots = _plots(samples, out.parent)
    summary, failures = _tables(results)
    head = ["rule", "pass", "fail", "warn", "error", "skip"]
    fhead = ["workload", "policy", "rule", "result", "message"]
    if fmt == "md":
        lines = [
            f"# samplerguard audit report\n\nSource: {source}. {len(results)} result entries.\n"
        ]
        lines += ["## Summary\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in summary]
        lines += ["\n## Failures\n", "| " + " | ".join(fhead) + " |", "|" + "---|" * len(fhead)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in failures]
        if not failures:
            lines.append("| - | - | - | - | none |")
        for name, title in plots:
            lines.append(f"\n## {title}\n\n![{title}]({name})")
        if not plots:
            lines.append("\n(no plots: nothing to plot, or matplotlib is not installed)")
        out.write_text("\n".join(lines) + "\n")
    else:

        def table(h: list[str], rows: list[list[str]]) -> str:
            th = "".join(f"<th>{html.escape(c)}</th>" for c in h)
            trs = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in rows
            )
            return f"<table><tr>{th}</tr>{trs}</table>"

        imgs = "".join(
            f"<h2>{html.escape(t)}</h2><img src='{html.escape(n)}' alt='{html.escape(t)}'>"
            for n, t in plots
        )
        out.write_text(
            "<!doctype html><html><head><meta charset='utf-8'><title>samplerguard report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
            f"<h1>samplerguard audit report</h1><p>Source: {html.escape(source)}. "
            f"{len(results)} result entries.</p><h2>Summary</h2>{table(head, summary)}"
            f"<h2>Failures</h2>{table(fhead, failures)}{imgs}</body></html>\n"
        )
    return [out, *[out.parent / n for n, _ in plots]]
