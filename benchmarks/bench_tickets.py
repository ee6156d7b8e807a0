"""What a request ticket costs: DRBG seed requests to a real sidecar that requires gateway
tickets, side by side with one whose policy requires none.

Two ``samplerguard sidecar`` processes with the same DRBG policy, one with ``rng.tickets``
naming a gateway key. Every round sends ``--seeds`` ``SEED`` frames to each (over one kept
connection, as the hook does), the order alternating round by round; the ticketed one carries a
fresh gateway ticket per request (signed before the timed part, as a gateway does before the
request reaches the provider). Printed: per round, the sidecar's CPU per seed (its process
clock) and the hook's wall time per seed, for both, and the paired ratios ticketed / plain,
each as median (IQR). The ticket's own cost is one Ed25519 verification, one JSON parse and one
JCS digest.

    python benchmarks/bench_tickets.py [--rounds 9] [--seeds 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

import yaml
from _common import scratch_dir
from _cpu import process_cpu, spread
from _dataplane import sidecar
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from samplerguard.commitment.ticket import issue_ticket
from samplerguard.hook.sidecar_sink import SidecarSink

TENANT = "bench"


def _policy(path: Path, gateway: Ed25519PrivateKey | None) -> Path:
    rng: dict[str, object] = {"mode": "ctr-drbg"}
    if gateway is not None:
        pem = gateway.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        rng["tickets"] = {"signers": [{"name": "gateway", "publicKey": pem.decode()}]}
    body = {
        "apiVersion": "samplerguard.dev/v1alpha1",
        "kind": "ClusterSamplerPolicy",
        "metadata": {"name": "bench-tickets"},
        "spec": {"mode": "enforce", "rng": rng},
    }
    path.write_text(yaml.safe_dump(body))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seeds", type=int, default=300)
    args = ap.parse_args()
    root = scratch_dir("sg-bench-tickets-")
    (root / "master").write_text(os.urandom(32).hex())
    env = {
        **os.environ,
        "SAMPLERGUARD_MASTER_SECRET_FILE": str(root / "master"),
        "SAMPLERGUARD_RNG_MODE": "ctr-drbg",
        "SAMPLERGUARD_TENANT": TENANT,
    }
    gateway = Ed25519PrivateKey.generate()
    services = {
        "plain": sidecar(root / "plain", policy=_policy(root / "plain.yaml", None), env=env)[0],
        "ticketed": sidecar(
            root / "ticketed", policy=_policy(root / "ticketed.yaml", gateway), env=env
        )[0],
    }
    sinks = {name: SidecarSink(svc.ready["socket"]) for name, svc in services.items()}
    cpu: dict[str, list[float]] = {name: [] for name in services}
    wall: dict[str, list[float]] = {name: [] for name in services}
    try:
        for r in range(args.rounds + 1):
            order = list(services) if r % 2 == 0 else list(reversed(services))
            for name in order:
                ids = [f"r{r}-{i}" for i in range(args.seeds)]
                tickets = [
                    issue_ticket(gateway, request_id=rid, tenant=TENANT)
                    if name == "ticketed"
                    else None
                    for rid in ids
                ]
                sink, pid = sinks[name], services[name].pid
                before_cpu, before = process_cpu(pid), time.perf_counter()
                for rid, ticket in zip(ids, tickets, strict=True):
                    sink.request_noise(TENANT, rid, ticket=ticket).close()
                elapsed = time.perf_counter() - before
                used = process_cpu(pid) - before_cpu
                if r:  # the first round warms both up
                    cpu[name].append(used / args.seeds)
                    wall[name].append(elapsed / args.seeds)
    finally:
        for sink in sinks.values():
            sink.close()
        for svc in services.values():
            svc.stop()
    print(f"DRBG seed requests, {args.seeds} per sidecar per round, {args.rounds} rounds")
    for name in services:
        print(
            f"  {name:9s} sidecar CPU/seed {spread([c * 1e6 for c in cpu[name]], '{:.0f}')} µs"
            f"   hook wall/seed {spread([w * 1e6 for w in wall[name]], '{:.0f}')} µs"
        )
    cpu_ratio = [t / p for t, p in zip(cpu["ticketed"], cpu["plain"], strict=True)]
    wall_ratio = [t / p for t, p in zip(wall["ticketed"], wall["plain"], strict=True)]
    extra = [(t - p) * 1e6 for t, p in zip(cpu["ticketed"], cpu["plain"], strict=True)]
    print(f"  ticketed / plain: sidecar CPU {spread(cpu_ratio, '{:.2f}')}")
    print(f"                    hook wall   {spread(wall_ratio, '{:.2f}')}")
    print(f"  the ticket's sidecar CPU per seed: {spread(extra, '{:.0f}')} µs")


if __name__ == "__main__":
    main()
