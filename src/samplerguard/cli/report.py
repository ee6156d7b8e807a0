"""``samplerguard report``: an audit page from the cluster's PolicyReports or a local audit log."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "report",
        help="write an audit report (one Markdown or self-contained HTML file)",
        description="Read samplerguard's PolicyReports from the cluster (KUBECONFIG), or a local "
        "JSON-lines audit log (--audit-log), and write one page: the time range, a verdict per "
        "policy and per workload, the workloads failing and why, every failure (request id, "
        "trajectory root, step, score against tau, time), trends and distributions. HTML "
        "embeds its charts as inline SVG; nothing is written beside the output.",
    )
    p.add_argument("--audit-log", type=Path, action="append", help="local mode: JSON-lines file(s)")
    p.add_argument(
        "--out", type=Path, default=Path("samplerguard-report.md"), help="the file to write"
    )
    p.add_argument("--format", choices=["md", "html"], help="default: from --out's suffix")
    p.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    from samplerguard.errors import MalformedInputError
    from samplerguard.operator.reportpage import render, results_from_reports
    from samplerguard.policy.report import read_audit_log

    fmt = args.format or ("html" if args.out.suffix in (".html", ".htm") else "md")
    if args.audit_log:
        try:
            results = [r for path in args.audit_log for r in read_audit_log(path)]
        except (OSError, MalformedInputError) as exc:
            print(f"cannot read audit log: {exc}", file=sys.stderr)
            return 2
        source = ", ".join(str(p) for p in args.audit_log)
        print(f"read {len(results)} results from {source}", file=sys.stderr)
    else:
        from kubernetes import config as kconfig

        from samplerguard.operator.controller import MANAGED
        from samplerguard.operator.kube import Kube

        try:
            kconfig.load_kube_config()  # type: ignore[no-untyped-call]
        except Exception as exc:
            print(f"no cluster to read from ({exc}); use --audit-log FILE", file=sys.stderr)
            return 2
        kube = Kube()
        print("reading PolicyReports from the cluster…", file=sys.stderr)
        results = results_from_reports(kube.list_reports(MANAGED))
        source = "PolicyReports in the cluster"
    for path in render(results, args.out, fmt=fmt, source=source):
        print(path)
    return 0
