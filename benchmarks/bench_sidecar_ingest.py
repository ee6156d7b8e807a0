"""Sidecar ingestion throughput: step records/s for 64 KiB latents (goal >= 10,000/s).

A real ``samplerguard sidecar`` process; clients stream whole trajectories (START, N STEPs,
FINAL, FINISH and the signed answer) over its Unix socket. Every step record is hashed, added
to the Merkle tree and written to the openings store by the sidecar; the commitment is signed.
Two client setups, measured side by side in one run:

* raw: pre-encoded frames from 1, 2 and 4 client threads (the sidecar's capacity), as
  ``STEPS`` frames of 8 records (what the hook sends) and, for comparison, one ``STEP`` frame
  per record from one client;
* hook: the real Recorder + SidecarSink path (the hook's worker thread encodes and sends).

    python benchmarks/bench_sidecar_ingest.py [--steps 200] [--trajectories 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _dataplane import LATENT_SHAPE, RawStream, sidecar


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw(socket_path: str, stream: RawStream, n: int, clients: int, tag: str) -> float:
    per = n // clients

    def work(c: int) -> None:
        for i in range(per):
            stream.send(socket_path, f"{tag}-{c}-{i}")

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return per * clients * stream.steps / elapsed


def hook(socket_path: str, steps: int, n: int) -> float:
    import diffusers

    from samplerguard.hook.recorder import Recorder, TrajectoryRequest
    from samplerguard.hook.sidecar_sink import SidecarSink

    # This loop does no denoising, so it outruns the sidecar by design; let the recorder hold a
    # whole trajectory (a real sampler is far slower than the sidecar, see bench_e2e_overhead).
    recorder = Recorder(SidecarSink(socket_path, io_timeout=60.0), max_pending=steps + 16)
    latents = [torch.randn(LATENT_SHAPE) for _ in range(4)]
    start = 0.0
    for r in range(-1, n):  # r = -1 warms up: diffusers imports schedulers lazily
        if r == 0:
            start = time.perf_counter()
        sched = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000)
        sched.set_timesteps(steps)
        req = TrajectoryRequest(
            request_id=f"hook-{r}",
            tenant="bench",
            pipeline="bench",
            model_name="bench",
            model_digest="sha256:" + "0" * 64,
            sampler="euler",
            guidance_scale=1.0,
            steps=steps,
        )
        with recorder.trajectory(req) as tr:
            tr.begin(sched, latents[0], conditioning={})
            for i, t in enumerate(sched.timesteps):
                tr.step(i, t, latents[i % 4], sched)
            tr.end(latents[1], b"out")
    elapsed = time.perf_counter() - start
    recorder.close()
    return n * steps / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--trajectories", type=int, default=20)
    ap.add_argument(
        "--clients",
        default="2,4",
        help="client counts to measure beside 1 (a serving pod with concurrent requests "
        "streams several trajectories at once)",
    )
    ap.add_argument(
        "--store-direct-io",
        choices=["auto", "on", "off"],
        default="auto",
        help="the sidecar's openings writes: O_DIRECT (on), page cache (off), or auto",
    )
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    torch.set_num_threads(1)
    svc, _ = sidecar(
        extra_args=[
            "--max-store-bytes",
            str(8 << 30),
            "--store-direct-io",
            args.store_direct_io,
        ]
    )
    try:
        sock = svc.ready["socket"]
        stream = RawStream(args.steps, batch=8)
        single = RawStream(args.steps, batch=1)
        stream.send(sock, "warmup")
        single.send(sock, "warmup-single")
        mb = LATENT_SHAPE[0] * LATENT_SHAPE[1] * LATENT_SHAPE[2] * LATENT_SHAPE[3] * 4 / 1024
        print(
            f"sidecar ingestion, {mb:.0f} KiB latents, {args.steps} steps x "
            f"{args.trajectories} trajectories per setup, store O_DIRECT {args.store_direct_io}"
        )
        cpu0 = cpu_seconds(svc.pid)
        t0 = time.perf_counter()
        r1 = raw(sock, stream, args.trajectories, 1, "raw1")
        cpu1, t1 = cpu_seconds(svc.pid), time.perf_counter()
        per_cpu = args.trajectories * args.steps / max(cpu1 - cpu0, 1e-9)
        share = (cpu1 - cpu0) / (t1 - t0)
        r1_single = raw(sock, single, args.trajectories, 1, "single")
        more = {c: raw(sock, stream, args.trajectories, c, f"raw{c}") for c in counts}
        h = hook(sock, args.steps, max(2, args.trajectories // 4))
        print(f"  raw frames, 1 client : {r1:10,.0f} step records/s  ({r1 * mb / 1024:.0f} MiB/s)")
        print(
            f"  one STEP frame per record, 1 client: {r1_single:10,.0f} step records/s "
            f"(STEPS x8 / STEP = {r1 / r1_single:.2f})"
        )
        for c, r in more.items():
            print(
                f"  raw frames, {c} clients: {r:10,.0f} step records/s  ({r * mb / 1024:.0f} MiB/s)"
            )
        print(f"  hook (Recorder+SidecarSink): {h:10,.0f} step records/s")
        print(
            f"  sidecar CPU: {per_cpu:10,.0f} step records per CPU-second "
            f"(it got {share:.0%} of a core; load average {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} cores)"
        )
        print(
            f"  goal 10,000/s: raw/goal = {max([r1, *more.values()]) / 10000:.2f}, "
            f"per-CPU-second/goal = {per_cpu / 10000:.2f}, hook/goal = {h / 10000:.2f}"
        )
    finally:
        svc.stop()


if __name__ == "__main__":
    main()
