"""``samplerguard drift``: build a golden drift baseline from a recorded stream, or replay a
stream against one.

    samplerguard drift fit --from honest.jsonl --out baseline.json
    samplerguard drift check --baseline baseline.json --from audit.jsonl

Inputs are JSON-lines audit logs or plain request records (see
:mod:`samplerguard.telemetry.streams`). ``check`` exits 0 without alerts, 1 with alerts, 2 on
unusable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "drift",
        help="fit a golden drift baseline, or check a recorded stream against one",
        description="Drift detection against a golden baseline (PSI and binned KS; an unknown "
        "schedule or sampler id alerts on its first request). See docs/telemetry.md.",
    )
    actions = p.add_subparsers(dest="drift_action", required=True)

    fit = actions.add_parser("fit", help="count an honest recorded stream into a baseline")
    fit.add_argument("--from", dest="sources", type=Path, action="append", required=True)
    fit.add_argument("--out", type=Path, required=True, help="baseline JSON to write")

    check = actions.add_parser("check", help="replay a stream and report drift alerts")
    check.add_argument("--baseline", type=Path, required=True)
    check.add_argument("--from", dest="sources", type=Path, action="append", required=True)
    check.add_argument("--window", type=int, default=200, help="requests per window (W)")
    check.add_argument("--min-samples", type=int, default=30)
    check.add_argument("--alpha", type=float, default=1e-6, help="per-check false-alarm level")
    check.add_argument("--psi-threshold", type=float, default=0.25)
    check.add_argument("--json", action="store_true", help="one JSON object per alert")
    p.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    from samplerguard.errors import MalformedInputError
    from samplerguard.telemetry.drift import DriftBaseline, DriftDetector
    from samplerguard.telemetry.streams import read_request_records

    try:
        if args.drift_action == "fit":
            records = [r for src in args.sources for r in read_request_records(src)]
            baseline = DriftBaseline.fit(records)
            baseline.save(args.out)
            print(f"{args.out}: baseline of {len(records)} requests", file=sys.stderr)
            return 0
        baseline = DriftBaseline.load(args.baseline)
        try:
            detector = DriftDetector(
                baseline,
                window=args.window,
                min_samples=args.min_samples,
                alpha=args.alpha,
                psi_threshold=args.psi_threshold,
            )
        except ValueError as exc:
            print(f"bad detector setting: {exc}", file=sys.stderr)
            return 2
        count = 0
        alerts = 0
        for src in args.sources:
            for record in read_request_records(src):
                count += 1
                for alert in detector.observe(record):
                    alerts += 1
                    if args.json:
                        print(json.dumps({"request": count, **_alert_dict(alert)}))
                    else:
                        print(f"request {count}: {alert.message}")
    except (MalformedInputError, OSError) as exc:
        print(f"unusable input: {exc}", file=sys.stderr)
        return 2
    print(f"{count} requests, {alerts} drift alert(s)", file=sys.stderr)
    return 1 if alerts else 0


def _alert_dict(alert: Any) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(alert)
    out["message"] = alert.message
    if out["psi_limit"] == float("inf"):
        out["psi_limit"] = None
    return out
