"""Hook overhead: generation time with recording / without, side by side in one run.

    python benchmarks/bench_hook_overhead.py [--repeat 15]

Goal: ≤ 1.02 on the bundled model and on the tiny Stable Diffusion pipeline. Recording includes
the worker thread's hashing, Merkle tree and signing (LocalSink), i.e. everything but the
sidecar transport.

Beside the wall-clock ratio (which a shared 2-core VM cannot resolve to 2 %), every round
measures the CPU time the hook costs: its calls on the denoising thread and the recorder's
worker thread, each on its own CPU clock (see ``_cpu.py``), as a fraction of the CPU time of
the same round's plain generation. That fraction is the goal's measure on CPU machines:
≤ 0.02. Printed as the median over rounds with its interquartile range.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support
import time

from _common import median, table, timed
from _cpu import LoopMeter, spread, worker_cpu

from samplerguard.commitment.digest import module_digest
from samplerguard.demo.providers import make_scheduler
from samplerguard.hook.local import LocalSink
from samplerguard.hook.pipelines import instrument
from samplerguard.hook.recorder import Recorder, TrajectoryRequest


def request(i: int, digest: str, pipeline: str, steps: int) -> TrajectoryRequest:
    return TrajectoryRequest(
        request_id=f"bench-{i}",
        tenant="bench",
        pipeline=pipeline,
        model_name="m",
        model_digest=digest,
        sampler="dpmpp_2m",
        guidance_scale=3.0,
        steps=steps,
    )


def _row(
    name: str,
    plain: Callable[[], object],
    control: Callable[[], object],
    rec: Callable[[], object],
    repeat: int,
    recorder: Recorder,
    meter: LoopMeter,
) -> tuple[list[str], list[float]]:
    """Plain, a no-op callback (the measurement's noise floor) and recorded, interleaved; the
    row and the per-round fractions of extra CPU."""
    tp, tc, tr = [], [], []
    fractions: list[float] = []
    for _ in range(repeat):
        cpu = time.process_time()
        tp += timed(plain, 1)
        generation = time.process_time() - cpu
        tc += timed(control, 1)
        meter.take()
        worker = worker_cpu(recorder)
        tr += timed(rec, 1)
        extra = meter.take() + worker_cpu(recorder) - worker
        fractions.append(extra / generation)
    ratios = [r / p for r, p in zip(tr, tp, strict=True)]
    return [
        name,
        f"{median(tp) * 1e3:.1f}",
        f"{median(tr) * 1e3:.1f}",
        f"{median(tr) / median(tp):.3f}",
        spread(ratios, "{:.3f}"),
        f"{median(tc) / median(tp):.3f}",
        spread(fractions),
    ], fractions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=25)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    rows = []

    from samplerguard.models.digits import DigitsPipeline, load_unet

    unet = load_unet()
    pipe = DigitsPipeline(unet, make_scheduler("dpmpp_2m"))
    recorder = Recorder(LocalSink(keep=4))
    inst = instrument(pipe, recorder)
    digest = module_digest(unet)
    labels = list(range(10)) * 2
    counter = iter(range(10**9))

    def plain() -> object:
        return pipe(labels, num_inference_steps=args.steps, guidance_scale=3.0)

    def rec() -> object:
        return inst(
            labels,
            num_inference_steps=args.steps,
            guidance_scale=3.0,
            trajectory_request=request(next(counter), digest, "digits", args.steps),
        )

    def noop(p: object, i: int, t: object, kw: dict[str, object]) -> dict[str, object]:
        return kw

    def control() -> object:
        return pipe(
            labels, num_inference_steps=args.steps, guidance_scale=3.0, callback_on_step_end=noop
        )

    plain(), rec(), control()  # warm up
    meter = LoopMeter()
    with meter.installed(type(pipe)):
        rows.append(
            _row("bundled digits (batch 20)", plain, control, rec, args.repeat, recorder, meter)[0]
        )

    from tests.support.tiny_sd import build_tiny_sd, prompt_embeddings

    sd = build_tiny_sd(make_scheduler("dpmpp_2m"), sample_size=32)
    sd_inst = instrument(sd, recorder)
    sd_digest = module_digest(sd.unet)
    pe, ne = prompt_embeddings(2, seed=1), prompt_embeddings(2, seed=2)
    kw = dict(
        prompt_embeds=pe,
        negative_prompt_embeds=ne,
        num_inference_steps=args.steps,
        guidance_scale=3.0,
        height=64,
        width=64,
        output_type="latent",
    )

    def sd_plain() -> object:
        return sd(**kw)

    def sd_rec() -> object:
        return sd_inst(
            **kw,
            trajectory_request=request(next(counter), sd_digest, "stable-diffusion", args.steps),
        )

    def sd_control() -> object:
        return sd(**kw, callback_on_step_end=noop)

    sd_plain(), sd_rec(), sd_control()
    with meter.installed(type(sd)):
        rows.append(
            _row(
                "tiny SD 64x64 (batch 2)",
                sd_plain,
                sd_control,
                sd_rec,
                args.repeat,
                recorder,
                meter,
            )[0]
        )
    recorder.close()
    print(
        f"hook overhead, {args.steps} steps DPM++ 2M, CFG 3, median of {args.repeat} "
        f"interleaved runs, torch threads={torch.get_num_threads()}, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        table(
            rows,
            [
                "pipeline",
                "plain ms",
                "recorded ms",
                "ratio of medians (goal ≤ 1.02)",
                "paired ratio, median (IQR)",
                "noise floor: no-op callback / plain",
                "hook CPU / generation CPU (goal ≤ 0.02)",
            ],
        )
    )


if __name__ == "__main__":
    main()
