"""Opening latency over the sidecar's authenticated TCP API: p50/p99 (goal p99 <= 20 ms).

A real sidecar process holds trajectories of 64 KiB latents committed through its socket; a
keep-alive client fetches random (trajectory, step) openings with the bearer token, as the
verifier does. Latency is wall time per GET, including assembling the safetensors opening
(two latents, sampler state, inclusion proofs) from the store.

    python benchmarks/bench_openings.py [--trajectories 10] [--steps 50] [--requests 400]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _dataplane import RawStream, sidecar


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trajectories", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--requests", type=int, default=400)
    args = ap.parse_args()
    svc, token = sidecar()
    try:
        stream = RawStream(args.steps)
        ids = [f"t{i}" for i in range(args.trajectories)]
        for tid in ids:
            stream.send(svc.ready["socket"], tid)
        headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
        rng = random.Random(0)
        with httpx.Client(base_url=svc.url, headers=headers, timeout=30) as client:
            for tid in ids[:3]:  # warm: first index read of a trajectory
                client.get(f"/v1/trajectories/{tid}/openings/0").raise_for_status()
            lat = []
            size = 0
            for _ in range(args.requests):
                tid, step = rng.choice(ids), rng.randrange(args.steps)
                t = time.perf_counter()
                resp = client.get(f"/v1/trajectories/{tid}/openings/{step}")
                lat.append((time.perf_counter() - t) * 1e3)
                resp.raise_for_status()
                size = len(resp.content)
        lat.sort()
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        print(
            f"opening latency, {args.requests} GETs over {args.trajectories} trajectories x "
            f"{args.steps} steps, {size / 1024:.0f} KiB per opening "
            f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
        print(
            f"  p50 {p50:.2f} ms   p90 {lat[int(0.9 * len(lat))]:.2f} ms   p99 {p99:.2f} ms   "
            f"max {lat[-1]:.2f} ms"
        )
        print(f"  goal p99 <= 20 ms: p99/goal = {p99 / 20:.2f}")
    finally:
        svc.stop()


if __name__ == "__main__":
    main()
