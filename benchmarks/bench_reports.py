"""What aggregation buys, and how fast results reach a PolicyReport.

    python benchmarks/bench_reports.py [--results 20000] [--workloads 50]

Side by side in one run:

* size: N verifier results (one per challenged request, 5 % failing) as raw JSON lines vs the
  PolicyReport body the operator writes for them (etcd refuses objects over ~1.5 MiB);
* fold: results folded per second into an existing report (``operator.reports.namespace_report``);
* ingest: results per second through the real ``POST /v1/results`` endpoint over TLS on
  loopback (aiohttp, the operator's certificate), recorded by the real ``Controller`` into an
  in-memory API server that enforces resourceVersion — i.e. everything but the network hop to
  the API server — in batches of 500, the verifier's default.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import scratch_dir

from samplerguard.operator.certs import CertPolicy, CertState, plan
from samplerguard.operator.controller import Controller, OperatorConfig
from samplerguard.operator.ingest import Authenticator, build_app, serve, tls_context
from samplerguard.operator.reports import namespace_report
from samplerguard.policy.report import ReportResult
from samplerguard.policy.report_client import ResultsClient
from tests.unit.operator.conftest import MemoryKube  # the tests' in-memory API server seam


def results(n: int, workloads: int, seed: int = 0) -> list[ReportResult]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        bad = rng.random() < 0.05
        rel = rng.uniform(0.05, 0.5) if bad else 10 ** rng.uniform(-8, -6)
        out.append(
            ReportResult.build(
                policy="demo-tiny",
                rule="trajectory-recheck",
                result="fail" if bad else "pass",
                message=f"step {i % 20}: relL2 {rel:.3g} vs tau 1e-4",
                resource={
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "namespace": "ml",
                    "name": f"sampler-{i % workloads}",
                    "uid": f"uid-{i % workloads}",
                },
                timestamp=1_795_000_000 + i,
                rel_l2=rel,
                tau=1e-4,
                step=i % 20,
                guidance=rng.choice([3.0, 5.0, 7.5]),
                steps=rng.choice([20, 30, 50]),
                trajectoryRoot=f"{rng.getrandbits(256):064x}",
                requestId=f"req-{i}",
            )
        )
    return out


def ingest_rate(batch: list[ReportResult], per_post: int) -> float:
    tmp = scratch_dir("sg-bench-reports-")
    state = plan(
        CertState(),
        CertPolicy(dns_names=("localhost",), ip_addresses=("127.0.0.1",)),
        dt.datetime.now(dt.UTC),
    ).state
    for k in ("tls.crt", "tls.key", "ca.crt"):
        (tmp / k).write_bytes(state.data[k])
    (tmp / "token").write_text("bench")
    controller = Controller(OperatorConfig(events=False), MemoryKube())  # type: ignore[arg-type]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        ctx = tls_context(str(tmp / "tls.crt"), str(tmp / "tls.key"))
        app = build_app(controller.record, Authenticator(local_token="bench"))
        holder["runner"] = loop.run_until_complete(serve(app, "127.0.0.1", port, ctx))
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(10)
    with ResultsClient(
        f"https://127.0.0.1:{port}/v1/results", token_file=tmp / "token", ca_file=tmp / "ca.crt"
    ) as client:
        client.post(batch[:per_post])  # warm up TLS and the report
        start = time.perf_counter()
        sent = 0
        for i in range(per_post, len(batch), per_post):
            sent += client.post(batch[i : i + per_post])
        elapsed = time.perf_counter() - start
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)
    return sent / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=int, default=20000)
    ap.add_argument("--workloads", type=int, default=50)
    args = ap.parse_args()
    rs = results(args.results, args.workloads)
    raw = sum(len(json.dumps(r.to_wire())) + 1 for r in rs)

    start = time.perf_counter()
    body: dict[str, Any] | None = None
    for i in range(0, len(rs), 500):
        body = namespace_report("ml", body, rs[i : i + 500])
    fold_s = time.perf_counter() - start
    assert body is not None
    size = len(json.dumps(body))
    print(f"{args.results} results over {args.workloads} workloads")
    print(f"  raw JSON lines          {raw / 1e6:8.2f} MB")
    print(
        f"  PolicyReport body       {size / 1e6:8.3f} MB  ({len(body['results'])} entries, "
        f"summary {body['summary']})"
    )
    print(f"  size ratio raw/report   {raw / size:8.1f} x")
    print(f"  fold                    {args.results / fold_s:8.0f} results/s (batches of 500)")
    rate = ingest_rate(rs, 500)
    print(f"  ingest over TLS         {rate:8.0f} results/s (POST /v1/results, batches of 500)")
    print(f"  ingest / fold           {rate / (args.results / fold_s):8.2f}")


if __name__ == "__main__":
    main()
