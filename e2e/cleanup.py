"""What an e2e module leaves in the cluster's shared objects, taken out again.

Namespaces, webhook configurations and policies are deleted by each module's fixture. The
``ClusterPolicyReport`` ``samplerguard-cluster`` is shared with any installation on the same
cluster, and no operator rebuilds it once the module's own operator has stopped; its entries
about the module's policies and namespaces are removed here.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from typing import Any

__all__ = ["drop_cluster_report_entries"]

CLUSTER_REPORT = "samplerguard-cluster"


def _ours(result: dict[str, Any], policies: set[str], namespaces: set[str]) -> bool:
    if result.get("policy") in policies:
        return True
    return any(
        r.get("namespace") in namespaces
        or (r.get("kind") == "Namespace" and r.get("name") in namespaces)
        for r in result.get("resources") or []
    )


def drop_cluster_report_entries(
    kubectl: str, *, policies: Iterable[str], namespaces: Iterable[str]
) -> int:
    """Remove the entries about ``policies`` or ``namespaces``; delete the report when nothing
    else is (or was) in it. Returns how many entries were removed."""
    got = subprocess.run(
        [kubectl, "get", "clusterpolicyreport", CLUSTER_REPORT, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if got.returncode != 0:
        return 0  # no report: nothing to clean
    report = json.loads(got.stdout)
    pols, nss = set(policies), set(namespaces)
    results = report.get("results") or []
    kept = [r for r in results if not _ours(r, pols, nss)]
    removed = len(results) - len(kept)
    if not kept:  # only ours, or an empty one a module's operator wrote after its namespaces went
        subprocess.run(
            [kubectl, "delete", "clusterpolicyreport", CLUSTER_REPORT, "--ignore-not-found"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        return removed
    if not removed:
        return 0
    summary = dict.fromkeys(("pass", "fail", "warn", "error", "skip"), 0)
    for r in kept:
        count = (r.get("properties") or {}).get("count")
        summary[r.get("result", "error")] += int(count) if count and int(count) >= 1 else 1
    report["results"], report["summary"] = kept, summary
    subprocess.run(
        [kubectl, "replace", "-f", "-"],
        input=json.dumps(report),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return removed
