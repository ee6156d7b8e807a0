"""rel-L2 for honest runs (must be exactly 0) and for each cheat, over every step.

    python benchmarks/bench_rel_l2_table.py [--steps 20]

Columns: the DESIGN.md rel-L2 of the latent, and the score compared with τ (worst of latent,
sampler state and update-relative error); min/median/max over all steps, plus how many steps
exceed τ = 1e-5 and the per-request catch probability with k = 3 challenged steps.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import table

from samplerguard.commitment.opening import Opening
from samplerguard.commitment.recheck import recheck_step
from samplerguard.commitment.statement import Commitment
from samplerguard.demo.providers import CHEATS, Declared, Provider
from samplerguard.errors import VerificationError
from samplerguard.hook.local import LocalSink
from samplerguard.hook.recorder import Recorder
from samplerguard.models.digits import load_unet
from samplerguard.models.programs import DigitsProgram

TAU = 1e-5
K = 3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    unet = load_unet()
    program = DigitsProgram(unet)
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(8)
    latents = torch.randn((8, 1, 8, 8), generator=gen)
    rows = []
    for name in ("honest", *CHEATS):
        sink = LocalSink()
        recorder = Recorder(sink)
        g = Provider(name, unet, Declared(steps=args.steps), recorder).generate(
            "r", labels, latents
        )
        c = Commitment.verify(g.commitment.to_json(), sink.key.public_key())
        rel, worst, refused = [], [], 0
        for s in range(c.n_steps):
            try:
                r = recheck_step(
                    c, Opening.from_bytes(sink.opening("r", s).to_bytes()), program, tau=TAU
                )
                rel.append(r.rel_l2)
                worst.append(r.worst)
            except VerificationError:
                refused += 1
                worst.append(math.inf)
        bad = sum(w > TAU for w in worst)
        n = c.n_steps
        p_catch = 1 - math.comb(n - bad, K) / math.comb(n, K)

        def fmt(xs: list[float]) -> str:
            return (
                f"{min(xs):.1e} / {sorted(xs)[len(xs) // 2]:.1e} / {max(xs):.1e}"
                if xs
                else "— (refused)"
            )

        rows.append(
            [
                name,
                fmt(rel),
                fmt([w for w in worst if math.isfinite(w)]),
                f"{bad}/{n}" + (f" ({refused} refused)" if refused else ""),
                f"{p_catch:.2f}",
            ]
        )
        recorder.close()
    print(
        f"rel-L2 per step on the bundled model, declared DPM++ 2M × {args.steps}, CFG 3, "
        f"τ = {TAU:.0e}"
    )
    print(
        table(
            rows,
            [
                "provider",
                "rel-L2 min/median/max",
                "score min/median/max",
                "steps > τ",
                f"P(catch), k={K}",
            ],
        )
    )


if __name__ == "__main__":
    main()
