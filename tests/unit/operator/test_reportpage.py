"""`samplerguard report` from a local audit log and from PolicyReport bodies."""

from __future__ import annotations

from pathlib import Path

import pytest

from samplerguard.cli import main
from samplerguard.operator.reportpage import collect, results_from_reports
from samplerguard.operator.reports import namespace_report
from samplerguard.policy.report import ReportResult, append_audit_log


def _results() -> list[ReportResult]:
    out = []
    for i in range(40):
        cheat = i % 8 == 0
        out.append(
            ReportResult.build(
                policy="demo-tiny",
                rule="trajectory-recheck",
                result="fail" if cheat else "pass",
                message=f"step 2 relL2 {'0.3' if cheat else '1e-7'}",
                resource={"kind": "Pod", "namespace": "ml", "name": f"provider-{i % 2}"},
                timestamp=1_795_000_000 + 600 * i,
                rel_l2=0.3 if cheat else 1e-7,
                tau=1e-4,
                step=2,
                guidance=4.0 + (i % 3),
                steps=20 + (i % 2) * 10,
            )
        )
    return out


@pytest.mark.parametrize("suffix", ["md", "html"])
def test_local_audit_log_report(tmp_path: Path, suffix: str) -> None:
    log = tmp_path / "audit.jsonl"
    append_audit_log(log, _results())
    with log.open("a") as fh:
        fh.write('{"truncated": ')  # a crash mid-write: skipped, not fatal
    out = tmp_path / "out" / f"report.{suffix}"
    assert main(["report", "--audit-log", str(log), "--out", str(out)]) == 0
    text = out.read_text()
    assert "trajectory-recheck" in text and "35" in text and "5" in text
    assert "provider-0" in text  # the failing workload is listed
    for png in ("guidance.png", "steps.png", "rel_l2.png", "trend.png"):
        assert (out.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png in text


def test_unreadable_log_is_unusable_input(tmp_path: Path) -> None:
    assert main(["report", "--audit-log", str(tmp_path / "missing.jsonl")]) == 2


def test_samples_survive_aggregation_in_policy_reports() -> None:
    body = namespace_report("ml", None, _results())
    results = results_from_reports([body])
    assert len(results) < 40  # aggregated
    samples = collect(results)
    assert sorted(set(samples.rel_l2)) == [1e-7, 0.3]
    assert len(samples.guidance) == 40 and samples.tau == 1e-4
