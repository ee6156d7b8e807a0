"""``samplerguard demo``: the whole lane on loopback with the bundled tiny model."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run honest and cheating providers on the bundled model and verify them",
        description="Generates digits with one honest and ten cheating providers, commits "
        "every trajectory, challenges random steps and re-runs them. Writes images and a "
        "JSON + Markdown summary.",
    )
    p.add_argument("--out", type=Path, default=Path("samplerguard-demo"), help="output folder")
    p.add_argument("--steps", type=int, default=20, help="declared denoising steps N")
    p.add_argument("-k", type=int, default=3, help="steps challenged per request")
    p.add_argument("--tau", type=float, default=1e-5, help="honest tolerance on rel-L2")
    p.add_argument(
        "--max-requests",
        type=int,
        default=12,
        help="requests a cheater may serve before it is reported as not caught",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="verify in this process (no sidecar/verifier services; the PR-2 demo)",
    )
    p.add_argument(
        "--export",
        type=Path,
        help="write an audit bundle of each provider's last request (commitment, sidecar key, "
        "transcript, openings) and the reference checkpoint here, for verify-trajectory "
        "--bundle after the demo has exited",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the sidecar and verifier running afterwards, for exploration",
    )
    p.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    from samplerguard.demo.run import DemoConfig, print_table, run_demo
    from samplerguard.errors import SamplerGuardError

    start = time.monotonic()
    cfg = DemoConfig(
        out=args.out,
        steps=args.steps,
        k=args.k,
        tau=args.tau,
        max_requests=args.max_requests,
        threads=args.threads,
        export=args.export,
    )
    if args.export is not None and args.in_process:
        print("--export needs the live demo (a sidecar to export from)", file=sys.stderr)
        return 2
    try:
        if args.in_process:
            summary = run_demo(cfg)
        else:
            from samplerguard.demo.live import run_live_demo

            summary = run_live_demo(cfg, keep=args.keep)
    except SamplerGuardError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 2
    print_table(summary)
    _controls(args.out, summary, cfg)
    print(
        f"wrote {args.out}/summary.md, summary.json and one PNG per provider "
        f"in {time.monotonic() - start:.1f}s"
    )
    if args.export is not None:
        print(
            f"audit bundles in {args.export}/<provider>; check one offline with\n"
            f"  samplerguard verify-trajectory --bundle {args.export}/honest "
            f"--model {args.export}/reference-model.safetensors"
        )
    services = summary.get("services")
    if services and services.get("kept"):
        sc, vf = services["sidecar"], services["verifier"]
        print(
            f"services left running (--keep):\n"
            f"  sidecar  pid {sc['pid']}  {sc['url']}  socket {sc['socket']}\n"
            f"  verifier pid {vf['pid']}  {vf['url']}  (POST /v1/rounds, GET /v1/status)\n"
            f"  token    {services['token_file']}  audit log {services['audit_log']}\n"
            f'  e.g. curl -H "Authorization: Bearer $(cat {services["token_file"]})" '
            f"{sc['url']}/v1/trajectories\n"
            f"  stop them with: kill {sc['pid']} {vf['pid']}"
        )
    ok = (
        summary["honest_accepted"]
        and summary["all_cheaters_caught"]
        and summary.get("all_controls_refused", False)
    )
    return 0 if ok else 1


def _controls(out: Path, summary: dict[str, Any], cfg: Any) -> None:
    """The three requests stopped before any trajectory exists (seed health, CFG cap,
    forbidden scheduler), appended to the summary files and the table."""
    import json

    from samplerguard.demo.controls import run_controls
    from samplerguard.demo.live import write_demo_policy
    from samplerguard.models.digits import CLASSIFIER_FILE, load_classifier, load_unet
    from samplerguard.policy.load import load_policy

    # the CFG cap is the demo policy's (the live demo wrote it; in process it is written now)
    policy_file = out / "policy.yaml"
    if not policy_file.exists():
        write_demo_policy(policy_file, cfg, summary["model_digest"])
    rule = load_policy(str(policy_file)).spec.recipe
    cap = rule.cfg.max if rule is not None else float("inf")
    classifier = load_classifier() if CLASSIFIER_FILE.exists() else None
    controls = run_controls(
        load_unet(), classifier, steps=summary["declared"]["steps"], policy_cfg_max=cap
    )
    summary["controls"] = controls
    summary["all_controls_refused"] = all(c["verdict"] == "refused" for c in controls)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    lines = [
        "",
        "## Controls before generation",
        "",
        "| case | control | verdict | reason | accuracy if it had run |",
        "|---|---|---|---|---|",
    ]
    for c in controls:
        acc = "—" if c["accuracy_if_run"] is None else f"{c['accuracy_if_run']:.0%}"
        lines.append(
            f"| {c['case']} | {c['control']} | **{c['verdict']}** | {c['reason']} | {acc} |"
        )
        print(f"{c['case']:<20} {c['verdict']:<8} by {c['control']}\n{'':<20} {c['reason']}")
    with (out / "summary.md").open("a") as fh:
        fh.write("\n".join(lines) + "\n")
