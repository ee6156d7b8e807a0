"""`samplerguard report` from a local audit log and from PolicyReport bodies: the page's numbers
are the input's (requests counted once, every failure listed, the time range), and the page is
one file."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from samplerguard.cli import main
from samplerguard.operator.reportpage import page, results_from_reports
from samplerguard.operator.reportplots import score_bins
from samplerguard.operator.reports import namespace_report
from samplerguard.policy.report import ReportResult, append_audit_log
from samplerguard.policy.report_view import build_view

T0 = 1_795_000_000
N_REQUESTS = 13
#: request index -> (step, relL2) of a re-check that exceeded tau, or None for a binding failure
FAILING: dict[int, tuple[int, float] | None] = {2: (7, 0.31), 8: (15, 0.044), 11: None}
TAU = 1e-4


def _pod(i: int) -> dict[str, str]:
    return {"apiVersion": "v1", "kind": "Pod", "namespace": "ml", "name": f"sd-{i % 2}"}


def _results() -> list[ReportResult]:
    """What the verifier writes per request: recipe, seed-health and the re-check, one request
    every 20 minutes over four hours."""
    out = []
    for i in range(N_REQUESTS):
        rid, root = f"req-{i}", f"{i:02x}" * 32
        when = T0 + 1200 * i
        ids: dict[str, Any] = {"requestId": rid, "trajectoryId": rid, "trajectoryRoot": root}
        common: dict[str, Any] = dict(
            policy="sd-prod", resource=_pod(i), guidance=4.0 + i % 3, steps=20
        )
        out.append(
            ReportResult.build(
                rule="recipe", result="pass", timestamp=when, message="ok", **common, **ids
            )
        )
        out.append(
            ReportResult.build(
                policy="sd-prod", rule="seed-health", result="pass", resource=_pod(i),
                timestamp=when + 1, **ids,
            )
        )  # fmt: skip
        fail = FAILING.get(i, ())
        if fail is None:
            check = ReportResult.build(
                rule="trajectory-recheck", result="fail", timestamp=when + 2, tau=TAU,
                message="request: noise binding: z_N is not the first draw", **common, **ids,
            )  # fmt: skip
        elif fail:
            step, score = fail
            check = ReportResult.build(
                rule="trajectory-recheck", result="fail", timestamp=when + 2, tau=TAU,
                step=step, rel_l2=score, message=f"step {step}: relL2 {score} > tau",
                **common, **ids,
            )  # fmt: skip
        else:
            check = ReportResult.build(
                rule="trajectory-recheck", result="pass", timestamp=when + 2, tau=TAU, step=3,
                rel_l2=0.0 if i % 3 else 2e-7, message="within tau", **common, **ids,
            )  # fmt: skip
        out.append(check)
    return out


def test_requests_are_counted_once_and_every_failure_is_listed() -> None:
    view = build_view(_results())
    assert view.request_total == N_REQUESTS  # not 26 or 39: one request, three results
    assert view.requests == {"pass": N_REQUESTS - len(FAILING), "fail": len(FAILING)}
    assert len(view.guidance) == N_REQUESTS and len(view.steps) == N_REQUESTS
    assert sorted(view.guidance) == sorted(4.0 + i % 3 for i in range(N_REQUESTS))
    assert (view.first, view.last) == (T0, T0 + 1200 * (N_REQUESTS - 1) + 2)
    assert len(view.trend) > 1 and sum(sum(b.requests.values()) for b in view.trend) == 13
    failed = {f.request_id: f for f in view.failures}
    assert set(failed) == {f"req-{i}" for i in FAILING}
    assert failed["req-2"].step == 7 and failed["req-2"].score == 0.31
    assert failed["req-2"].tau == TAU and failed["req-2"].root == "02" * 32
    assert failed["req-11"].step is None
    assert {w.name: w.failed_requests for w in view.workloads} == {
        "Pod ml/sd-0": 2,
        "Pod ml/sd-1": 1,
    }
    # exact zeros are their own bar; the positive scores keep their own values
    zeros = sum(1 for i in range(N_REQUESTS) if i not in FAILING and i % 3)
    assert view.exact_zero == zeros
    assert sorted(view.scores) == sorted([2e-7] * (10 - zeros) + [0.31, 0.044])
    bars, cut = score_bins(view.scores, view.exact_zero, view.tau)
    assert bars[0].label == "0 (exact)" and bars[0].count == zeros
    assert sum(b.count for b in bars[cut:]) == 2  # the two scores above tau


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_page_shows_the_inputs_numbers(fmt: str) -> None:
    text = page(_results(), fmt=fmt, source="audit.jsonl")
    assert "13 requests checked: 10 passed, 3 failed" in text
    span = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(T0))
    assert f"{span}Z to " in text and "(4.0 h)" in text
    for i in FAILING:
        assert f"req-{i}" in text
    root = "02" * 32
    assert root in text  # full root (Markdown) or in the title of the short one (HTML)
    assert "Pod ml/sd-0" in text and "Pod local/vm" not in text
    assert "noise binding" in text and "0.31" in text
    if fmt == "html":
        assert text.count("<svg") == 4 and "<img" not in text and "src=" not in text
    else:
        rows = re.findall(r"^\| (\d+(?:\.\d+)?) \| (\d+) \|$", text.split("## Guidance")[1], re.M)
        assert sum(int(n) for _, n in rows[:3]) == N_REQUESTS


def test_md_and_html_runs_write_one_file_each(tmp_path: Path) -> None:
    log = tmp_path / "in" / "audit.jsonl"
    log.parent.mkdir()
    append_audit_log(log, _results())
    with log.open("a") as fh:
        fh.write('{"truncated": ')  # a crash mid-write: skipped, not fatal
    out = tmp_path / "out"
    for suffix in ("md", "html"):
        assert main(["report", "--audit-log", str(log), "--out", str(out / f"r.{suffix}")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["r.html", "r.md"]
    assert "## Failures (3)" in (out / "r.md").read_text()
    assert "<h2>Failures (3)</h2>" in (out / "r.html").read_text()


def test_unreadable_log_is_unusable_input(tmp_path: Path) -> None:
    assert main(["report", "--audit-log", str(tmp_path / "missing.jsonl")]) == 2


def test_counts_survive_aggregation_in_policy_reports() -> None:
    body = namespace_report("ml", None, _results())
    results = results_from_reports([body])
    assert len(results) < 3 * N_REQUESTS  # folded
    view = build_view(results)
    assert view.request_total == N_REQUESTS
    assert view.requests["fail"] == len(FAILING)
    assert len(view.guidance) == N_REQUESTS  # recipe samples only, not recipe + re-check
    assert sum(f.count for f in view.failures) == len(FAILING)
    # the trend counts each folded request by its verdict (its re-check), not its recipe
    assert sum(b.requests["fail"] for b in view.trend) == len(FAILING)
    assert sum(sum(b.requests.values()) for b in view.trend) == N_REQUESTS
