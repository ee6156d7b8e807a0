"""Verification ratio ρ = one-step re-check / full generation, against N.

    python benchmarks/bench_verification_ratio.py

The re-check includes parsing the opening, signature, inclusion proofs, digests, rebuilding the
scheduler and one reference step; the reference model is already loaded (the verifier keeps it).
Goal: ρ ≤ 1.5/N.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import median, table, timed

from samplerguard.commitment.opening import Opening
from samplerguard.commitment.plan import sampler_plan
from samplerguard.commitment.recheck import recheck_step
from samplerguard.commitment.statement import Commitment
from samplerguard.commitment.transcript import Transcript, check_transcript
from samplerguard.demo.providers import Declared, Provider
from samplerguard.hook.local import LocalSink
from samplerguard.hook.recorder import Recorder
from samplerguard.models.digits import load_unet
from samplerguard.models.programs import DigitsProgram


def main() -> None:
    torch.set_grad_enabled(False)
    unet = load_unet()
    program = DigitsProgram(unet)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for n in (10, 20, 50):
        sink = LocalSink()
        recorder = Recorder(sink)
        provider = Provider("honest", unet, Declared(steps=n), recorder)
        labels = torch.arange(16) % 10
        latents = torch.randn((16, 1, 8, 8), generator=gen)
        counter = iter(range(10**6))
        g_times = timed(lambda: provider.generate(f"r{next(counter)}", labels, latents), 5)  # noqa: B023
        g = provider.generate("probe", labels, latents)
        c = Commitment.verify(g.commitment.to_json(), sink.key.public_key())
        blobs = [sink.opening("probe", s).to_bytes() for s in range(c.n_steps)]
        steps = iter(range(10**6))

        def check() -> None:
            s = next(steps) % c.n_steps  # noqa: B023
            r = recheck_step(c, Opening.from_bytes(blobs[s]), program, tau=0.0)  # noqa: B023
            assert r.accepted

        c_times = timed(check, 3 * n)
        rho = median(c_times) / median(g_times)
        transcript = sink.transcript("probe")
        plan_recipe = c.recipe
        sampler_plan(plan_recipe, tuple(transcript.initial.shape), transcript.initial.dtype)

        def tail(recipe: Any = plan_recipe, transcript: Any = transcript) -> None:
            plan = sampler_plan(recipe, tuple(transcript.initial.shape), transcript.initial.dtype)
            check_transcript(c, Transcript.from_bytes(transcript.to_bytes()), plan, program)  # noqa: B023

        t_times = timed(tail, 3 * n)
        rows.append(
            [
                str(n),
                f"{median(g_times) * 1e3:.1f}",
                f"{median(c_times) * 1e3:.2f}",
                f"{rho:.4f}",
                f"{rho * n:.2f}",
                f"{1.5 / n:.4f}",
                f"{median(t_times) * 1e3:.2f}",
                f"{median(t_times) / median(g_times):.4f}",
            ]
        )
        recorder.close()
    print(
        "verification ratio on the bundled model (batch 16, DPM++ 2M, CFG 3), "
        f"torch threads={torch.get_num_threads()}"
    )
    print(
        table(
            rows,
            [
                "N",
                "generation ms",
                "one-step re-check ms",
                "ρ",
                "ρ·N",
                "goal 1.5/N",
                "tail check ms",
                "tail / generation",
            ],
        )
    )
    print(
        "tail check: the transcript's leaves rebuilt into the root, schedule, timesteps, noise "
        "counts, final latent, output decode and request, once per challenged request"
    )


if __name__ == "__main__":
    main()
