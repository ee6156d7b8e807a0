"""``samplerguard calibrate``: measure the honest drift between backends and propose τ.

Generates honest trajectories on the bundled model on one backend configuration (the
*producer*), re-checks every step on each other configuration available here (the *verifier*:
other CPU thread counts, CUDA when present), and reports the tail of the honest scores. The
proposed τ is the worst honest score times a safety factor (default 10), floored at 1e-9. On the
same configuration the scores are exactly 0.

Exit codes: 0 proposed, 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure honest re-check drift across the backends here and propose tau",
        description=__doc__.splitlines()[2] if __doc__ else None,
    )
    p.add_argument("--steps", type=int, default=20, help="denoising steps N")
    p.add_argument("--requests", type=int, default=4, help="honest generations per backend")
    p.add_argument("--factor", type=float, default=10.0, help="safety factor over the worst score")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(_run=run)


def _backends() -> list[tuple[str, str, int]]:
    import os

    import torch

    cpus = os.cpu_count() or 1
    out = [("cpu-1t", "cpu", 1)]
    if cpus > 1:
        out.append((f"cpu-{cpus}t", "cpu", cpus))
    if torch.cuda.is_available():
        out.append(("cuda", "cuda", cpus))
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from samplerguard.commitment.opening import Opening
    from samplerguard.commitment.recheck import recheck_step
    from samplerguard.demo.providers import Declared, Provider
    from samplerguard.hook.local import LocalSink
    from samplerguard.hook.recorder import Recorder
    from samplerguard.models.digits import load_unet
    from samplerguard.models.programs import DigitsProgram

    if not 1 <= args.steps <= 200 or not 1 <= args.requests <= 100 or args.factor < 1:
        print("calibrate: steps 1..200, requests 1..100, factor >= 1")
        return 2
    torch.set_grad_enabled(False)
    backends = _backends()
    gen = torch.Generator().manual_seed(0)
    rows: list[dict[str, Any]] = []
    for p_name, p_dev, p_threads in backends:
        torch.set_num_threads(p_threads)
        unet = load_unet(device=p_dev)
        sink = LocalSink()
        recorder = Recorder(sink)
        provider = Provider("honest", unet, Declared(steps=args.steps), recorder)
        recorded = []
        for i in range(args.requests):
            labels = torch.randint(0, 10, (8,), generator=gen)
            latents = torch.randn((8, 1, 8, 8), generator=gen).to(p_dev)
            recorded.append(provider.generate(f"cal-{p_name}-{i}", labels.to(p_dev), latents))
        recorder.close()
        for v_name, v_dev, v_threads in backends:
            torch.set_num_threads(v_threads)
            program = DigitsProgram(load_unet(device=v_dev), provider.model_digest)
            scores = []
            for g in recorded:
                for s in range(g.commitment.n_steps):
                    opening = Opening.from_bytes(sink.opening(g.request_id, s).to_bytes())
                    scores.append(recheck_step(g.commitment, opening, program, tau=1.0).worst)
            scores.sort()
            rows.append(
                {
                    "producer": p_name,
                    "verifier": v_name,
                    "checks": len(scores),
                    "p50": scores[len(scores) // 2],
                    "p99": scores[min(len(scores) - 1, int(0.99 * len(scores)))],
                    "max": scores[-1],
                }
            )
    worst = max(r["max"] for r in rows)
    tau = max(worst * args.factor, 1e-9)
    if args.json:
        print(json.dumps({"pairs": rows, "proposed_tau": tau}, indent=2))
    else:
        print(
            f"{'producer':<10} {'verifier':<10} {'checks':>6} {'p50':>10} {'p99':>10} {'max':>10}"
        )
        for r in rows:
            print(
                f"{r['producer']:<10} {r['verifier']:<10} {r['checks']:>6} {r['p50']:>10.2e} "
                f"{r['p99']:>10.2e} {r['max']:>10.2e}"
            )
        print(
            f"proposed tau = {tau:.1e} (worst honest score {worst:.2e} × {args.factor:g}); "
            "put it in the policy's spec.verification.tau"
        )
    return 0
