"""Verifier throughput on CPU: trajectories judged and steps re-checked per second.

Trajectories of the bundled model (DPM-Solver++ 2M, 20 steps, batch 8) are committed through
the real hook to a real sidecar; then a real ``samplerguard verifier`` process is asked for one
round (``POST /v1/rounds``): for each trajectory it fetches and verifies the signed commitment,
draws k steps, fetches the openings over authenticated TCP and re-runs each step with its own
reference model. Printed beside it: the bare one-step re-check in this process, and the
generation time of one request, so the cost of verifying is a ratio to the cost of serving.

    python benchmarks/bench_verifier.py [--trajectories 12] [-k 2]
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
import yaml
from _common import scratch_dir
from _dataplane import sidecar


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trajectories", type=int, default=12)
    ap.add_argument("-k", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from samplerguard.commitment.digest import safetensors_digest
    from samplerguard.commitment.opening import Opening
    from samplerguard.commitment.recheck import recheck_step
    from samplerguard.demo.providers import make_scheduler
    from samplerguard.demo.services import run_round, start_verifier
    from samplerguard.hook.local import LocalSink
    from samplerguard.hook.pipelines import instrument
    from samplerguard.hook.recorder import Recorder, TrajectoryRequest
    from samplerguard.hook.sidecar_sink import SidecarSink
    from samplerguard.models.digits import MODEL_FILE, DigitsPipeline, load_unet
    from samplerguard.models.programs import DigitsProgram

    root = scratch_dir("sg-bench-verifier-")
    digest = safetensors_digest(MODEL_FILE)
    policy = root / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "samplerguard.dev/v1alpha1",
                "kind": "ClusterSamplerPolicy",
                "metadata": {"name": "bench"},
                "spec": {
                    "goldenDigests": {"modelWeights": [digest]},
                    "rng": {"mode": "framework"},
                    "verification": {"fraction": 1.0, "stepsPerChallenge": args.k, "tau": 1e-5},
                },
            }
        )
    )
    svc, token = sidecar(root, policy=policy, model_files=[MODEL_FILE])
    unet = load_unet(MODEL_FILE)
    pipe = DigitsPipeline(unet, make_scheduler("dpmpp_2m"))
    gen = torch.Generator().manual_seed(0)
    gen_times = []
    local = LocalSink()
    verifier = None
    try:
        for sink, n in ((SidecarSink(svc.ready["socket"]), args.trajectories), (local, 3)):
            recorder = Recorder(sink)
            run = instrument(pipe, recorder)
            for i in range(n):
                req = TrajectoryRequest(
                    request_id=f"v{i}-{type(sink).__name__}",
                    tenant="b",
                    pipeline="digits",
                    model_name="digits",
                    model_digest=digest,
                    sampler="dpmpp_2m",
                    guidance_scale=3.0,
                    steps=args.steps,
                )
                t = time.perf_counter()
                run(
                    torch.randint(0, 10, (8,), generator=gen),
                    num_inference_steps=args.steps,
                    guidance_scale=3.0,
                    latents=torch.randn((8, 1, 8, 8), generator=gen),
                    trajectory_request=req,
                )
                gen_times.append(time.perf_counter() - t)
            recorder.close()
        verifier = start_verifier(
            root / "state",
            sidecars=[svc.url],
            token_file=token,
            policy=policy,
            audit_log=root / "audit.jsonl",
        )
        t = time.perf_counter()
        counts = run_round(verifier)
        elapsed = time.perf_counter() - t
        # the bare re-check, in this process
        program = DigitsProgram(unet)
        rechecks = []
        for i in range(3):
            rid = f"v{i}-LocalSink"
            record = local.record(rid)
            from samplerguard.commitment.statement import commit

            commitment = commit(record, local.key, request_id=rid, tenant="b")
            for step in range(0, args.steps, 5):
                op = Opening.from_bytes(local.opening(rid, step).to_bytes())
                t0 = time.perf_counter()
                recheck_step(commitment, op, program, tau=1e-5)
                rechecks.append(time.perf_counter() - t0)
    finally:
        if verifier is not None:
            verifier.stop()
        svc.stop()
    checks = counts["judged"] * args.k
    one = statistics.median(rechecks)
    g = statistics.median(gen_times)
    print(
        f"verifier on CPU, bundled model, dpmpp_2m x {args.steps} steps, batch 8, k={args.k} "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    print(
        f"  verifier process: {counts['judged']} trajectories ({counts['passed']} pass) in "
        f"{elapsed:.2f} s = {counts['judged'] / elapsed:.1f} trajectories/s, "
        f"{checks / elapsed:.1f} step re-checks/s (HTTP, signature, inclusion, re-run)"
    )
    print(f"  bare one-step re-check: median {one * 1e3:.1f} ms = {1 / one:.0f} checks/s")
    print(
        f"  one generation: median {g * 1e3:.1f} ms; re-check/generation ratio rho = "
        f"{one / g:.4f} (1/N = {1 / args.steps:.4f})"
    )


if __name__ == "__main__":
    main()
