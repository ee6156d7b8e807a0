"""End-to-end overhead: generation through the hook + sidecar against plain generation.

The bundled digits model through the real diffusers pipeline (DPM-Solver++ 2M, 20 steps, CFG 3,
batch 8), interleaved run by run, in an order that rotates every round, so machine load and
whatever one variant leaves running hit all variants alike:

* plain: ``DigitsPipeline(...)``;
* hook + null sink: the recorder with a sink that keeps nothing (copies and hand-offs only);
* hook + LocalSink: the recorder, signing in-process (no sidecar);
* hook + sidecar: the recorder streaming to a real ``samplerguard sidecar`` process, which
  rebuilds the tree, signs and stores the openings; the call returns once the signed
  commitment is back.

Printed: the ratio of medians, and the median of per-round paired ratios (variant / the same
round's plain run), which is robust to the drifts of a shared VM; goal <= 1.03 for hook +
sidecar.

    python benchmarks/bench_e2e_overhead.py [--runs 15] [--steps 20] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _dataplane import sidecar


class _NullSink:
    """Takes every step and keeps nothing; answers with one commitment made up front: what the
    recorder's copies and hand-offs cost."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from samplerguard.commitment.state import SamplerState
        from samplerguard.commitment.statement import commit
        from samplerguard.commitment.trajectory import TrajectoryBuilder

        b = TrajectoryBuilder(recipe={})
        b.initial(torch.zeros(1), SamplerState(values={}), "sha256:" + "0" * 64)
        b.step(0, 1, torch.zeros(1), SamplerState(values={}))
        b.final(torch.zeros(1))
        record = b.finish("sha256:" + "0" * 64)
        self.commitment = commit(
            record, Ed25519PrivateKey.generate(), request_id="null", tenant="bench"
        )

    def start(self, request: object, begin: object) -> None:
        return None

    def step(self, handle: object, step: object) -> None:
        return None

    def finish(self, handle: object, latent: object, output: str) -> tuple[object, None]:
        return self.commitment, None

    def abort(self, handle: object, reason: str) -> None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from samplerguard.demo.providers import make_scheduler
    from samplerguard.hook.local import LocalSink
    from samplerguard.hook.pipelines import instrument
    from samplerguard.hook.recorder import Recorder, TrajectoryRequest
    from samplerguard.hook.sidecar_sink import SidecarSink
    from samplerguard.models.digits import MODEL_FILE, DigitsPipeline, load_unet

    unet = load_unet(MODEL_FILE)
    from samplerguard.commitment.digest import module_digest

    digest = module_digest(unet)
    pipe = DigitsPipeline(unet, make_scheduler("dpmpp_2m"))
    svc, _ = sidecar()
    local = Recorder(LocalSink())
    remote = Recorder(SidecarSink(svc.ready["socket"]))
    null = Recorder(_NullSink())
    variants = {
        "plain": None,
        "hook + null sink": instrument(pipe, null),
        "hook + LocalSink": instrument(pipe, local),
        "hook + sidecar": instrument(pipe, remote),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    gen = torch.Generator().manual_seed(0)
    try:
        for r in range(args.runs + 2):
            labels = torch.randint(0, 10, (args.batch,), generator=gen)
            latents = torch.randn((args.batch, 1, 8, 8), generator=gen)
            names = list(variants)
            # rotate the order every round: whatever runs right after another variant (its
            # leftover work, a cold cache) hits every variant alike
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fn = variants[name]
                kw = {
                    "num_inference_steps": args.steps,
                    "guidance_scale": 3.0,
                    "latents": latents.clone(),
                }
                t = time.perf_counter()
                if fn is None:
                    pipe(labels, **kw)
                else:
                    req = TrajectoryRequest(
                        request_id=f"{name.split()[-1]}-{r}-{time.time_ns()}",
                        tenant="bench",
                        pipeline="digits",
                        model_name="digits",
                        model_digest=digest,
                        sampler="dpmpp_2m",
                        guidance_scale=3.0,
                        steps=args.steps,
                    )
                    fn(labels, trajectory_request=req, **kw)
                if r >= 2:  # two warm-up rounds
                    times[name].append(time.perf_counter() - t)
    finally:
        null.close()
        local.close()
        remote.close()
        svc.stop()
    base = statistics.median(times["plain"])
    print(
        f"end-to-end generation, bundled digits model, dpmpp_2m x {args.steps} steps, batch "
        f"{args.batch}, {args.runs} interleaved runs, {args.threads} torch thread(s) "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        # paired: each round's variant against the same round's plain run, which saw the same
        # machine state; the median of those ratios is robust to drifts between rounds
        paired = statistics.median(t / p for t, p in zip(ts, times["plain"], strict=True))
        print(
            f"  {name:<18} median {med * 1e3:8.1f} ms   ratio of medians {med / base:.3f}"
            f"   median paired ratio {paired:.3f}"
        )
    ratio = statistics.median(
        t / p for t, p in zip(times["hook + sidecar"], times["plain"], strict=True)
    )
    print(f"  goal <= 1.03: hook + sidecar median paired ratio = {ratio:.3f}")


if __name__ == "__main__":
    main()
