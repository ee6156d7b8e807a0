"""Fold results into PolicyReports and a ClusterPolicyReport that stay within object limits.

Pure functions over :class:`~samplerguard.policy.report.ReportResult`; the API calls live in
:mod:`samplerguard.operator.kube`.

*Aggregation.* Verifier results arrive per request; a busy namespace would exceed etcd's 1.5 MiB
object limit within hours. One report entry is kept per (policy, rule, workload, result): a
new result with the same key replaces the message and timestamp, increments ``count`` and
appends its numbers to bounded sample lists (``relL2Samples``, ``guidanceSamples``,
``stepsSamples``: the most recent :data:`MAX_SAMPLES`) so that ``samplerguard report`` can still
draw distributions from the cluster. ``relL2Max`` keeps the worst. When a report still holds
more than :data:`MAX_RESULTS` entries or :data:`MAX_REPORT_BYTES`, the oldest ``pass`` entries go
first, then the oldest of the rest; the dropped counts are kept in an annotation and in the
summary, which always counts every result ever folded in.

*The cluster report* rolls the namespaced ones up: one entry per (policy, rule, namespace,
result) whose resource is the Namespace, with the summed counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from samplerguard.policy.report import (
    REPORT_API_VERSION,
    ObjectReference,
    ReportResult,
    summarize,
)

__all__ = [
    "CLUSTER_REPORT_NAME",
    "DROPPED_ANNOTATION",
    "MAX_REPORT_BYTES",
    "MAX_RESULTS",
    "MAX_SAMPLES",
    "REPORT_NAME",
    "cluster_report",
    "fold",
    "namespace_report",
]

REPORT_NAME = "samplerguard"
CLUSTER_REPORT_NAME = "samplerguard-cluster"
DROPPED_ANNOTATION = "samplerguard.dev/dropped-results"
MAX_RESULTS = 1000
MAX_REPORT_BYTES = 1_000_000
MAX_SAMPLES = 32
_SAMPLED = ("relL2", "guidance", "steps")


def _key(r: ReportResult) -> tuple[str, str, str, str]:
    return (r.policy, r.rule, r.workload, r.result)


def _count(r: ReportResult) -> int:
    n = r.metric("count")
    return int(n) if n is not None and n >= 1 else 1


def _samples(r: ReportResult, name: str) -> list[str]:
    joined = r.properties.get(f"{name}Samples")
    if joined:
        return [s for s in joined.split(",") if s][-MAX_SAMPLES:]
    single = r.properties.get(name)
    return [single] if single is not None else []


def _merge(old: ReportResult, new: ReportResult) -> ReportResult:
    props = dict(old.properties)
    props.update(new.properties)
    props["count"] = str(_count(old) + _count(new))
    for name in _SAMPLED:
        merged = (_samples(old, name) + _samples(new, name))[-MAX_SAMPLES:]
        if merged:
            props[f"{name}Samples"] = ",".join(merged)[-1000:].lstrip(",")
    worst = [v for v in (old.metric("relL2Max"), old.metric("relL2"), new.metric("relL2")) if v]
    if worst:
        props["relL2Max"] = repr(max(worst))
    latest = new if new.when >= old.when else old
    return latest.model_copy(update={"properties": props})


def _first(r: ReportResult) -> ReportResult:
    """A result entering the report: it starts its own sample lists."""
    props = dict(r.properties)
    for name in _SAMPLED:
        if name in props and f"{name}Samples" not in props:
            props[f"{name}Samples"] = props[name]
    if "relL2" in props and "relL2Max" not in props:
        props["relL2Max"] = props["relL2"]
    props.setdefault("count", "1")
    return r.model_copy(update={"properties": props})


def fold(existing: Iterable[ReportResult], new: Iterable[ReportResult]) -> list[ReportResult]:
    """Merge ``new`` into ``existing``: one entry per (policy, rule, workload, result)."""
    entries: dict[tuple[str, str, str, str], ReportResult] = {}
    for r in existing:
        k = _key(r)
        entries[k] = _merge(entries[k], r) if k in entries else r
    for r in new:
        k = _key(r)
        entries[k] = _merge(entries[k], r) if k in entries else _first(r)
    return sorted(entries.values(), key=lambda r: (r.policy, r.rule, r.workload, r.result))


def _size(results: list[ReportResult]) -> int:
    return sum(len(json.dumps(r.to_wire())) + 1 for r in results)


def _bound(results: list[ReportResult]) -> tuple[list[ReportResult], int]:
    """Drop oldest passes, then oldest others, until within count and byte limits."""
    if len(results) <= MAX_RESULTS and _size(results) <= MAX_REPORT_BYTES:
        return results, 0
    order = sorted(results, key=lambda r: (r.result != "pass", r.when))
    keep = list(results)
    dropped = 0
    size = _size(keep)
    for victim in order:
        if len(keep) <= MAX_RESULTS and size <= MAX_REPORT_BYTES:
            break
        keep.remove(victim)
        size -= len(json.dumps(victim.to_wire())) + 1
        dropped += _count(victim)
    return keep, dropped


def _report_body(
    kind: str,
    name: str,
    namespace: str | None,
    results: list[ReportResult],
    previously_dropped: int,
    resource_version: str | None,
) -> dict[str, Any]:
    kept, dropped = _bound(results)
    total_dropped = previously_dropped + dropped
    summary = summarize(results).to_wire()
    if previously_dropped:
        # what was dropped earlier still counts; attribute it to "pass"-first like _bound does
        summary["pass"] = summary.get("pass", 0) + previously_dropped
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {
            "app.kubernetes.io/managed-by": "samplerguard",
            "app.kubernetes.io/part-of": "samplerguard",
        },
        "annotations": {DROPPED_ANNOTATION: str(total_dropped)},
    }
    if namespace is not None:
        metadata["namespace"] = namespace
    if resource_version:
        metadata["resourceVersion"] = resource_version
    body: dict[str, Any] = {
        "apiVersion": REPORT_API_VERSION,
        "kind": kind,
        "metadata": metadata,
        "summary": summary,
        "results": [r.to_wire() for r in kept],
    }
    if namespace is not None:
        body["scope"] = {"apiVersion": "v1", "kind": "Namespace", "name": namespace}
    return body


def _parse_existing(body: dict[str, Any] | None) -> tuple[list[ReportResult], int, str | None]:
    if not body:
        return [], 0, None
    results = []
    for raw in body.get("results") or []:
        try:
            r = ReportResult.model_validate(raw)
        except ValueError:
            continue  # another engine's entry in our report name: not ours to keep
        if r.source == "samplerguard":
            results.append(r)
    meta = body.get("metadata") or {}
    try:
        dropped = int((meta.get("annotations") or {}).get(DROPPED_ANNOTATION, "0"))
    except ValueError:
        dropped = 0
    return results, max(0, dropped), meta.get("resourceVersion")


def namespace_report(
    namespace: str, existing: dict[str, Any] | None, new: Iterable[ReportResult]
) -> dict[str, Any]:
    """The next body of ``PolicyReport/<namespace>/samplerguard``."""
    old, dropped, rv = _parse_existing(existing)
    return _report_body("PolicyReport", REPORT_NAME, namespace, fold(old, new), dropped, rv)


def cluster_report(
    namespace_reports: Iterable[dict[str, Any]],
    cluster_results: Iterable[ReportResult] = (),
    existing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The next ``ClusterPolicyReport/samplerguard-cluster``: per-namespace roll-ups of every
    namespaced report plus cluster-scoped results (e.g. invalid ClusterSamplerPolicies)."""
    rolled: list[ReportResult] = []
    for body in namespace_reports:
        results, _, _ = _parse_existing(body)
        ns = (body.get("metadata") or {}).get("namespace", "")
        ref = ObjectReference.model_validate({"apiVersion": "v1", "kind": "Namespace", "name": ns})
        groups: dict[tuple[str, str, str], list[ReportResult]] = {}
        for r in results:
            groups.setdefault((r.policy, r.rule, r.result), []).append(r)
        for members in groups.values():
            latest = max(members, key=lambda r: r.when)
            total = sum(_count(m) for m in members)
            props = {"count": str(total), "workloads": str(len(members))}
            worst = [m.metric("relL2Max") or m.metric("relL2") for m in members]
            if any(w is not None for w in worst):
                props["relL2Max"] = repr(max(w for w in worst if w is not None))
            rolled.append(
                latest.model_copy(
                    update={
                        "resources": [ref],
                        "properties": props,
                        "message": f"{total} result(s) over {len(members)} workload(s) in "
                        f"{ns}; latest: {latest.message}"[:1024],
                    }
                )
            )
    # Rebuilt whole each time: the roll-ups from the namespaced reports, and the current
    # cluster-scoped results (the caller passes all of them, e.g. every policy's validity).
    _, dropped, rv = _parse_existing(existing)
    results = sorted(
        [*rolled, *cluster_results], key=lambda r: (r.policy, r.rule, r.workload, r.result)
    )
    return _report_body("ClusterPolicyReport", CLUSTER_REPORT_NAME, None, results, dropped, rv)
