"""Report building: aggregation, bounds and the exact wgpolicyk8s.io/v1alpha2 wire format."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from samplerguard.operator import reports
from samplerguard.operator.reports import cluster_report, fold, namespace_report
from samplerguard.policy.report import ReportResult

Validate = Callable[[dict[str, Any]], list[str]]
POD = {"apiVersion": "v1", "kind": "Pod", "namespace": "ml", "name": "sd-0", "uid": "u"}


def _recheck(
    rel: float, result: str = "pass", t: float = 1_795_000_000.0, pod: str = "sd-0"
) -> ReportResult:
    return ReportResult.build(
        policy="demo-tiny",
        rule="trajectory-recheck",
        result=result,  # type: ignore[arg-type]
        message=f"relL2 {rel}",
        resource={**POD, "name": pod},
        timestamp=t,
        rel_l2=rel,
        tau=1e-4,
        step=3,
        guidance=4.0,
        steps=20,
    )


def test_same_workload_and_rule_fold_into_one_entry_with_samples() -> None:
    folded = fold([], [_recheck(1e-6, t=1.0), _recheck(3e-6, t=2.0), _recheck(2e-6, t=3.0)])
    assert len(folded) == 1
    entry = folded[0]
    assert entry.properties["count"] == "3"
    assert entry.properties["relL2Samples"] == "1e-06,3e-06,2e-06"
    assert entry.metric("relL2Max") == 3e-6
    assert entry.metric("relL2") == 2e-6  # the latest
    # Folding again into the stored form keeps counting.
    again = fold(folded, [_recheck(5e-6, t=4.0)])
    assert again[0].properties["count"] == "4" and again[0].metric("relL2Max") == 5e-6


def test_pass_and_fail_stay_separate_entries() -> None:
    folded = fold([], [_recheck(1e-6), _recheck(0.3, "fail")])
    assert sorted(r.result for r in folded) == ["fail", "pass"]


def test_samples_are_bounded() -> None:
    folded = fold([], [_recheck(float(i), t=float(i)) for i in range(100)])
    samples = folded[0].properties["relL2Samples"].split(",")
    assert len(samples) == reports.MAX_SAMPLES and samples[-1] == "99.0"
    assert folded[0].properties["count"] == "100"


def test_namespace_report_matches_the_crd_and_counts(crd_validate: Validate) -> None:
    body = namespace_report("ml", None, [_recheck(1e-6), _recheck(0.4, "fail"), _recheck(2e-6)])
    assert crd_validate(body) == []
    assert body["apiVersion"] == "wgpolicyk8s.io/v1alpha2" and body["kind"] == "PolicyReport"
    assert body["metadata"] == {
        "name": "samplerguard",
        "namespace": "ml",
        "labels": {
            "app.kubernetes.io/managed-by": "samplerguard",
            "app.kubernetes.io/part-of": "samplerguard",
        },
        "annotations": {"samplerguard.dev/dropped-results": "0"},
    }
    assert body["summary"] == {"pass": 2, "fail": 1, "warn": 0, "error": 0, "skip": 0}
    assert body["scope"] == {"apiVersion": "v1", "kind": "Namespace", "name": "ml"}
    fail = next(r for r in body["results"] if r["result"] == "fail")
    assert fail["severity"] == "high" and fail["source"] == "samplerguard"
    assert fail["resources"] == [POD]
    assert set(fail["timestamp"]) == {"seconds", "nanos"}


def test_report_stays_within_limits_dropping_old_passes_first(
    monkeypatch: Any, crd_validate: Validate
) -> None:
    monkeypatch.setattr(reports, "MAX_RESULTS", 10)
    results = [_recheck(1e-6, t=float(i), pod=f"p{i}") for i in range(30)]
    results.append(_recheck(0.5, "fail", t=0.0, pod="bad"))
    body = namespace_report("ml", None, results)
    assert len(body["results"]) == 10
    assert any(r["result"] == "fail" for r in body["results"])  # the old fail survives
    assert body["metadata"]["annotations"]["samplerguard.dev/dropped-results"] == "21"
    assert body["summary"]["pass"] == 30 and body["summary"]["fail"] == 1
    assert crd_validate(body) == []
    # The next write remembers what was dropped.
    nxt = namespace_report("ml", body, [_recheck(1e-6, t=99.0, pod="new")])
    assert nxt["summary"]["pass"] + nxt["summary"]["fail"] >= 31


def test_byte_limit(monkeypatch: Any) -> None:
    monkeypatch.setattr(reports, "MAX_REPORT_BYTES", 5000)
    body = namespace_report(
        "ml", None, [_recheck(1e-6, t=float(i), pod=f"p{i}") for i in range(40)]
    )
    assert sum(len(str(r)) for r in body["results"]) < 8000
    assert int(body["metadata"]["annotations"]["samplerguard.dev/dropped-results"]) > 0


def test_foreign_entries_in_our_report_are_not_kept() -> None:
    existing = namespace_report("ml", None, [_recheck(1e-6)])
    existing["results"].append(
        {"policy": "kyverno-thing", "rule": "x", "result": "fail", "source": "kyverno"}
    )
    existing["results"].append({"garbage": True})
    nxt = namespace_report("ml", existing, [])
    assert [r["policy"] for r in nxt["results"]] == ["demo-tiny"]


def test_cluster_report_rolls_namespaces_up(crd_validate: Validate) -> None:
    ml = namespace_report(
        "ml", None, [_recheck(1e-6, pod="a"), _recheck(2e-6, pod="b"), _recheck(0.3, "fail")]
    )
    art = namespace_report("art", None, [_recheck(1e-6)])
    invalid = ReportResult.build(
        policy="broken",
        rule="policy",
        result="fail",
        message="bad",
        resource={
            "apiVersion": "samplerguard.dev/v1alpha1",
            "kind": "ClusterSamplerPolicy",
            "name": "broken",
        },
    )
    body = cluster_report([ml, art], [invalid])
    assert crd_validate(body) == []
    assert body["kind"] == "ClusterPolicyReport" and "namespace" not in body["metadata"]
    assert body["summary"] == {"pass": 3, "fail": 2, "warn": 0, "error": 0, "skip": 0}
    ml_pass = next(
        r
        for r in body["results"]
        if r["resources"][0].get("name") == "ml" and r["result"] == "pass"
    )
    assert ml_pass["properties"]["count"] == "2" and ml_pass["properties"]["workloads"] == "2"
    assert ml_pass["resources"] == [{"apiVersion": "v1", "kind": "Namespace", "name": "ml"}]
