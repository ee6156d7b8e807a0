"""Hook overhead and verification cost per pipeline family, side by side in one run.

Each family's tiny pipeline (random components, the builders of ``tests/support/families.py``)
runs plainly and recorded through the hook (in-process sink) in alternating rounds; printed
per family: the median paired wall-clock ratio with its interquartile range, the extra
process CPU per generation as a fraction of the plain generation's CPU, and the verification
cost ratio rho·N (one re-checked step over one generation, times the steps; goal <= 1.5).

Tiny components make the model's share of a step small, so these ratios are upper bounds of
what a real model sees (there the denoiser dominates every step); the rows show that no family
adds cost out of line with the others.

    python benchmarks/bench_families.py [--rounds 7] [--only flux,wan]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

import torch


def _iqr(xs: list[float]) -> str:
    if len(xs) < 4:
        return f"{min(xs):.3f}-{max(xs):.3f}"
    q = statistics.quantiles(xs, n=4)
    return f"{q[0]:.3f}-{q[2]:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from samplerguard.commitment.digest import module_digest
    from samplerguard.commitment.opening import Opening
    from samplerguard.commitment.recheck import recheck_step
    from samplerguard.commitment.statement import Commitment
    from samplerguard.families import family_for_pipeline
    from samplerguard.hook import LocalSink, Recorder, TrajectoryRequest, instrument
    from tests.support.families import BUILDERS

    wanted = [w for w in args.only.split(",") if w]
    print(f"{args.rounds} paired rounds per family, 1 torch thread, tiny random components")
    print(
        f"{'family':26} {'steps':>5} {'wall ratio':>10} {'IQR':>13} {'extra CPU':>9} "
        f"{'IQR':>13} {'rho*N':>6}"
    )
    for name, build in BUILDERS.items():
        if wanted and name not in wanted:
            continue
        case = build()
        family = family_for_pipeline(type(case.pipe).__name__)
        denoiser = getattr(case.pipe, family.denoiser)
        digest = module_digest(denoiser)
        sink = LocalSink()
        recorder = Recorder(sink)
        runner = instrument(case.pipe, recorder)
        ratios, cpus, plain_times = [], [], []
        last = None
        case.call(case.pipe)  # warm-up
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            wall, cpu = {}, {}
            for recorded in order:
                c0, t0 = time.process_time(), time.perf_counter()
                if recorded:
                    request = TrajectoryRequest(
                        request_id=f"{name}-{r}",
                        tenant="bench",
                        pipeline=family.name,
                        model_name=name,
                        model_digest=digest,
                        sampler=case.sampler,
                        guidance_scale=case.guidance,
                        steps=case.steps,
                        output_type="np",
                    )
                    last = case.call(runner, trajectory_request=request)
                else:
                    case.call(case.pipe)
                wall[recorded] = time.perf_counter() - t0
                cpu[recorded] = time.process_time() - c0
            ratios.append(wall[True] / wall[False])
            cpus.append((cpu[True] - cpu[False]) / cpu[False])
            plain_times.append(wall[False])
        recorder.close()
        assert last is not None
        commitment = Commitment.verify(last.commitment.to_json(), sink.key.public_key())
        program = family.program(denoiser, digest)
        opening = Opening.from_bytes(sink.opening(commitment.request_id, 1).to_bytes())
        checks = []
        for _ in range(3):
            t0 = time.perf_counter()
            recheck_step(commitment, opening, program, tau=0.0)
            checks.append(time.perf_counter() - t0)
        rho_n = min(checks) / statistics.median(plain_times) * commitment.n_steps
        print(
            f"{name:26} {commitment.n_steps:>5} {statistics.median(ratios):>10.3f} "
            f"{_iqr(ratios):>13} {statistics.median(cpus):>9.3f} {_iqr(cpus):>13} {rho_n:>6.2f}"
        )


if __name__ == "__main__":
    main()
