"""Admission throughput and latency of the webhook, over real HTTPS on loopback.

    python benchmarks/bench_admission.py [--seconds 8] [--connections 16]

The webhook runs as its own process (one uvicorn worker, uvloop + httptools, the real
certificate reloader, body limit and deadline), with its verdict cache warmed by one real
verification. The load generator is a second process: keep-alive HTTP/1.1 over TLS, N
connections, pre-encoded AdmissionReview v1 bodies the size the API server sends (a Pod with
managedFields). It measures, side by side in one run:

* /validate, cached verdicts, at 1 connection (latency) and at N connections (throughput);
* /mutate, cached verdicts (adds the tag→digest pin and the sidecar injection patch), N conns;
* /validate with the verdict cache off (fresh TTL 0: every request asks the verifier), N conns.

Goals from issue 4: ≥ 1000 admissions/s on 2 cores and p99 ≤ 10 ms for cached verdicts.
The verifier is the real :class:`samplerguard.supplychain.ImageVerifier` against Debian's
docker-registry on loopback when ``tests.support.supplychain`` can start one; otherwise
a stand-in verifier is used and the run says so (cached figures do not touch the verifier).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support


# --- request bodies ---------------------------------------------------------------------------


def pod(image: str, name: str) -> dict[str, Any]:
    """A Pod as the API server hands it to admission: defaults, managedFields and all."""
    container = {
        "name": "sampler",
        "image": image,
        "args": ["--model", "/models/tiny", "--steps", "30", "--cfg", "7.5"],
        "env": [{"name": f"VAR_{i}", "value": "x" * 24} for i in range(8)],
        "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
        "resources": {
            "limits": {"cpu": "2", "memory": "8Gi"},
            "requests": {"cpu": "1", "memory": "4Gi"},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "volumeMounts": [
            {"name": "models", "mountPath": "/models", "readOnly": True},
            {
                "name": "kube-api-access-x2b9k",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly": True,
            },
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "labels": {"app": "sampler", "pod-template-hash": "7d9f8c6b5"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-23T20:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "sampler-7d9f8c6b5",
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-11-23T20:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                        "f:spec": {
                            "f:containers": {
                                'k:{"name":"sampler"}': {".": {}, "f:image": {}, "f:env": {}}
                            }
                        },
                    },
                }
            ],
        },
        "spec": {
            "containers": [container],
            "volumes": [
                {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
                {
                    "name": "kube-api-access-x2b9k",
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                        ],
                    },
                },
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    }


def review_bytes(image: str, n: int) -> list[bytes]:
    from tests.support.webhook import review

    return [
        json.dumps(review(pod(image, f"sampler-{i}"), namespace="ml")).encode() for i in range(n)
    ]


# --- the server process -----------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """Runs in the server subprocess: reads its setup from argv, serves until killed."""
    from samplerguard.policy import parse_policy
    from samplerguard.webhook import (
        Admission,
        InjectionConfig,
        StaticNamespaceLabels,
        StaticPolicySource,
        WebhookConfig,
    )
    from samplerguard.webhook.server import serve as serve_webhook

    setup = json.loads(Path(args.serve).read_text())
    config = WebhookConfig(
        host="127.0.0.1",
        port=setup["port"],
        certfile=setup["cert"],
        keyfile=setup["key"],
        fresh_ttl=setup["fresh_ttl"],
        failure_ttl=0 if setup["fresh_ttl"] == 0 else 10,
        injection=InjectionConfig(
            sidecar_image=setup["sidecar"],
            hook_image=setup["sidecar"],
            # the benchmark's policy asks for DRBG noise: the operator's Secret is mounted
            drbg_secret="samplerguard-drbg",
        ),
    )

    def build() -> Admission:  # in each worker, as `samplerguard webhook --workers N` does
        verifier, resolver = _verifier(setup)
        return Admission(
            config,
            StaticPolicySource([parse_policy(p) for p in setup["policies"]]),
            verifier,
            resolver,
            namespaces=StaticNamespaceLabels({"ml": {"samplerguard.dev/enforce": "true"}}),
        )

    serve_webhook(config, build, workers=setup.get("workers", 1))


def _verifier(setup: dict[str, Any]) -> tuple[Any, Any]:
    if setup["registry"] == "real":
        from samplerguard.supplychain import ImageVerifier, RegistryClient

        client = RegistryClient(plain_http=[setup["registry_host"]])
        return ImageVerifier(client), client
    from tests.support.webhook import RegistryDouble

    double = RegistryDouble()
    for ref in setup["signed"]:
        double.push(ref)
    return double, double


# --- the load generator -----------------------------------------------------------------------


async def _connection(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    path: str,
    bodies: list[bytes],
    stop_at: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost")
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in bodies
    ]
    i = 0
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200") or b'"allowed":true' not in body:
                errors.append(head.split(b"\r\n", 1)[0].decode() + " " + body[:200].decode())
            i += 1
    finally:
        writer.close()


async def _load(
    port: int, cert: str, path: str, bodies: list[bytes], seconds: float, conns: int
) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=cert)
    latencies: list[float] = []
    errors: list[str] = []
    # Warm-up: connections, TLS sessions, caches.
    warm: list[float] = []
    await asyncio.gather(
        *(
            _connection(
                "127.0.0.1", port, ctx, path, bodies, time.perf_counter() + 1.0, warm, errors
            )
            for _ in range(conns)
        )
    )
    t0 = time.perf_counter()
    await asyncio.gather(
        *(
            _connection("127.0.0.1", port, ctx, path, bodies, t0 + seconds, latencies, errors)
            for _ in range(conns)
        )
    )
    elapsed = time.perf_counter() - t0
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "rps": len(latencies) / elapsed,
        "p50": q[49] * 1e3,
        "p99": q[98] * 1e3,
        "n": len(latencies),
        "total": len(latencies) + len(warm),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def load(args: argparse.Namespace) -> None:
    """Runs in the load-generator subprocess; prints one JSON line."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    bodies = [Path(p).read_bytes() for p in sorted(Path(args.bodies).iterdir())]
    result = asyncio.run(
        _load(args.port, args.cert, args.path, bodies, args.seconds, args.connections)
    )
    print(json.dumps(result), flush=True)


# --- orchestration ----------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(tmp: Path, setup: dict[str, Any], name: str) -> subprocess.Popen[bytes]:
    setup = dict(setup, port=_free_port())
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(setup))
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", setup["port"]), timeout=0.2).close()
            proc.port = setup["port"]  # type: ignore[attr-defined]
            return proc
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else "server died"
                raise RuntimeError(err) from None
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (Linux /proc): the
    pre-forked workers of ``--workers N`` included."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


#: "python" (the asyncio generator above) or "wrk" (Debian's wrk, lighter on the shared CPUs).
LOAD_TOOL = "python"

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("SG_BODY"), "rb"); wrk.body = f:read("*a"); f:close()
local threads = {}
function setup(thread) table.insert(threads, thread) end
bad = 0
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"allowed":true', 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total_bad = 0
  for _, t in ipairs(threads) do total_bad = total_bad + t:get("bad") end
  io.write(string.format("SG %d %d %.3f %.3f %.3f\\n", summary.requests, total_bad,
    summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
"""


def _run_wrk(port: int, path: str, bodies: Path, seconds: float, conns: int) -> dict[str, Any]:
    script = bodies.parent / "load.lua"
    script.write_text(_WRK_SCRIPT)
    body = sorted(bodies.iterdir())[0]
    cmd = ["wrk", "-t1", f"-c{conns}", "-s", str(script), f"https://127.0.0.1:{port}{path}"]
    env = {**os.environ, "SG_BODY": str(body)}
    subprocess.run([*cmd[:3], "-d1s", *cmd[3:]], check=True, capture_output=True, env=env)
    out = subprocess.run(
        [*cmd[:3], f"-d{int(seconds)}s", *cmd[3:]],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("SG ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    n, bad, duration, p50, p99 = line.split()[1:]
    return {
        "rps": int(n) / float(duration),
        "p50": float(p50),
        "p99": float(p99),
        "n": int(n),
        "total": int(n),
        "errors": int(bad),
        "first_error": "" if bad == "0" else "see wrk",
    }


def _measured(
    proc: Any, path: str, cert: str, bodies: Path, seconds: float, conns: int
) -> dict[str, Any]:
    """One load run, plus the server's CPU time per admission (contention-independent)."""
    if LOAD_TOOL == "wrk":
        _run_wrk(proc.port, path, bodies, 1, conns)  # warm-up, not measured
        before = _cpu_seconds(proc.pid)
        result = _run_wrk(proc.port, path, bodies, seconds, conns)
        result["cpu_us"] = (_cpu_seconds(proc.pid) - before) / result["total"] * 1e6
        return result
    before = _cpu_seconds(proc.pid)
    result = _run_load(proc.port, cert, path, bodies, seconds, conns)
    spent = _cpu_seconds(proc.pid) - before
    result["cpu_us"] = spent / result["total"] * 1e6  # warm-up requests included
    return result


def _run_load(
    port: int, cert: str, path: str, bodies: Path, seconds: float, conns: int
) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--load",
            "--port",
            str(port),
            "--cert",
            cert,
            "--path",
            path,
            "--bodies",
            str(bodies),
            "--seconds",
            str(seconds),
            "--connections",
            str(conns),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--load-tool",
        choices=["python", "wrk"],
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator (default: wrk when installed, apt-get install wrk)",
    )
    parser.add_argument("--serve")
    parser.add_argument("--load", action="store_true")
    parser.add_argument("--port", type=int)
    parser.add_argument("--cert")
    parser.add_argument("--path")
    parser.add_argument("--bodies")
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return 0
    if args.load:
        load(args)
        return 0
    global LOAD_TOOL
    LOAD_TOOL = args.load_tool

    from tests.support.webhook import write_self_signed

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cert, key = tmp / "tls.crt", tmp / "tls.key"
        write_self_signed(cert, key)
        setup, registry_proc, note = _registry_setup(tmp)
        setup.update(cert=str(cert), key=str(key))
        image = setup["image"]
        bodies = tmp / "bodies"
        bodies.mkdir()
        for i, body in enumerate(review_bytes(image, 64)):
            (bodies / f"{i:03d}.json").write_bytes(body)
        size = (bodies / "000.json").stat().st_size
        rows: list[tuple[str, dict[str, Any]]] = []
        procs = []
        try:
            cached = _start_server(tmp, dict(setup, fresh_ttl=300.0), "cached")
            procs.append(cached)
            n = args.connections
            rows.append(
                (
                    "validate, cached, 1 conn",
                    _measured(cached, "/validate", str(cert), bodies, args.seconds, 1),
                )
            )
            rows.append(
                (
                    "validate, cached, 4 conns",
                    _measured(cached, "/validate", str(cert), bodies, args.seconds, 4),
                )
            )
            rows.append(
                (
                    f"validate, cached, {n} conns",
                    _measured(cached, "/validate", str(cert), bodies, args.seconds, n),
                )
            )
            rows.append(
                (
                    f"mutate (pin + inject), cached, {n} conns",
                    _measured(cached, "/mutate", str(cert), bodies, args.seconds, n),
                )
            )
            two = _start_server(tmp, dict(setup, fresh_ttl=300.0, workers=2), "two")
            procs.append(two)
            rows.append(
                (
                    "validate, cached, 4 conns, 2 workers",
                    _measured(two, "/validate", str(cert), bodies, args.seconds, 4),
                )
            )
            rows.append(
                (
                    f"validate, cached, {n} conns, 2 workers",
                    _measured(two, "/validate", str(cert), bodies, args.seconds, n),
                )
            )
            cold = _start_server(tmp, dict(setup, fresh_ttl=0.0), "uncached")
            procs.append(cold)
            rows.append(
                (
                    f"validate, cache off, {n} conns",
                    _measured(cold, "/validate", str(cert), bodies, args.seconds, n),
                )
            )
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=10)
            if registry_proc is not None:
                registry_proc.close()

    print(
        f"samplerguard webhook admission benchmark ({os.cpu_count()} CPUs; "
        "server: 1 uvicorn process unless noted; "
        f"load: {LOAD_TOOL}, 1 process, HTTP/1.1 keep-alive over TLS; "
        f"body {size} bytes; {note})"
    )
    load1, load5, _ = os.getloadavg()
    print(f"machine load average during the run: {load1:.1f} (1 min), {load5:.1f} (5 min)")
    head = ("scenario", "adm/s", "p50 ms", "p99 ms", "requests", "errors", "srv CPU µs")
    print(f"{head[0]:44s} " + " ".join(f"{h:>9s}" for h in head[1:]))
    for name, r in rows:
        cells = (
            f"{r['rps']:.0f}",
            f"{r['p50']:.2f}",
            f"{r['p99']:.2f}",
            r["n"],
            r["errors"],
            f"{r['cpu_us']:.0f}",
        )
        print(f"{name:44s} " + " ".join(f"{c:>9}" for c in cells))
        if r["errors"]:
            print(f"    first error: {r['first_error']}")
    by = dict(rows)
    best = max((r for k, r in rows if k.startswith("validate, cached")), key=lambda r: r["rps"])
    print()
    print(
        f"goal ≥ 1000 adm/s (cached): {best['rps']:.0f} adm/s = {best['rps'] / 1000:.2f}× the goal"
    )
    for label in (
        "validate, cached, 1 conn",
        "validate, cached, 4 conns",
        f"validate, cached, {args.connections} conns",
        "validate, cached, 4 conns, 2 workers",
        f"validate, cached, {args.connections} conns, 2 workers",
    ):
        r = by[label]
        print(
            f"goal p99 ≤ 10 ms ({label}): p99 {r['p99']:.2f} ms = "
            f"{r['p99'] / 10:.2f}× the budget at {r['rps']:.0f} adm/s"
        )
    cpu = by[f"validate, cached, {args.connections} conns"]["cpu_us"]
    print(
        f"server CPU per cached admission: {cpu:.0f} µs → {1e6 / cpu:.0f} adm/s per fully "
        f"available core = {1e6 / cpu / 1000:.2f}× the goal"
    )
    mut = by[f"mutate (pin + inject), cached, {args.connections} conns"]
    print(
        f"mutate / validate throughput at {args.connections} conns: "
        f"{mut['rps'] / by[f'validate, cached, {args.connections} conns']['rps']:.2f}"
    )
    off = by[f"validate, cache off, {args.connections} conns"]
    same = by[f"validate, cached, {args.connections} conns"]
    print(
        f"cached / cache-off throughput at {args.connections} conns: "
        f"{same['rps'] / off['rps']:.1f}×  "
        f"(p50 {same['p50']:.2f} ms vs {off['p50']:.2f} ms)"
    )
    return 0


def standin_setup() -> dict[str, Any]:
    """The stand-in verifier's setup: a signed sampler image and sidecar, one policy."""
    from tests.support.webhook import policy

    registry = "registry.local:5000"
    image, sidecar = f"{registry}/acme/sampler:1.0", f"{registry}/samplerguard/sidecar:0.1"
    return {
        "registry": "double",
        "signed": [image, sidecar],
        "image": image,
        "sidecar": sidecar,
        "policies": [policy("acme", f"{registry}/**")],
    }


def _registry_setup(tmp: Path) -> tuple[dict[str, Any], Any, str]:
    """A real docker-registry with a cosign-signed, SLSA-attested sampler image and sidecar,
    and a policy requiring both; a stand-in only where docker-registry is not installed."""
    from tests.support.supplychain import LocalRegistry, registry_binary
    from tests.support.webhook import policy

    if registry_binary() is None:
        return standin_setup(), None, "STAND-IN verifier: docker-registry is not installed"

    from tests.support.publish import (
        Signer,
        attest_image,
        push_image,
        sign_image,
        slsa_v1_predicate,
    )

    builder = "https://github.com/acme/sampler/.github/workflows/release.yml@refs/heads/main"
    source = "git+https://github.com/acme/sampler"
    reg = LocalRegistry().start()
    signer = Signer.generate("ecdsa-p256")
    image, sidecar = f"{reg.host}/acme/sampler:1.0", f"{reg.host}/samplerguard/sidecar:0.1"
    with reg.client() as client:
        for ref in (image, sidecar):
            digest = push_image(client, ref, layers=[ref.encode()])
            sign_image(client, ref, digest, signer)
            attest_image(
                client,
                ref,
                digest,
                signer,
                "https://slsa.dev/provenance/v1",
                slsa_v1_predicate(builder_id=builder, repository=source, ref="refs/heads/main"),
            )
    body: dict[str, Any] = policy("acme", f"{reg.host}/**")  # a JSON document, edited below
    body["spec"]["images"][0]["authorities"] = [
        {"name": "release", "key": {"publicKey": signer.public_pem}}
    ]
    body["spec"]["attestations"] = [
        {
            "name": "slsa",
            "builderIds": [builder],
            "sourceUris": [source],
            "sourceRefs": ["refs/heads/main"],
        }
    ]
    setup = {
        "registry": "real",
        "registry_host": reg.host,
        "image": image,
        "sidecar": sidecar,
        "policies": [body],
    }

    class _Stop:
        def close(self) -> None:
            reg.stop()

    return (
        setup,
        _Stop(),
        (
            "real ImageVerifier against docker-registry on loopback: ECDSA "
            "cosign signature + SLSA v1 provenance"
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
