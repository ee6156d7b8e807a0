"""Fault and abuse runner: the attacks of the hardening list against the real processes.

    python benchmarks/bench_abuse.py [--seconds 20] [--attackers 3000] [--kills 8]
                                     [--only webhook,fuzz,sidecar,store,operator,verifier]

Everything runs on loopback, every phase is bounded in time and stops by itself, and pass/fail
never depends on a timing: the run prints figures and exits non-zero only for a false admit,
a 5xx, committed data lost or half-written data served.

* **webhook**: the webhook process (one worker, the stand-in verifier of the admission
  benchmark) under ``--attackers`` raw TCP connections that never start TLS, a third as many
  TLS connections that never send a request, slowloris header trickles and 50 MiB unfinished
  headers, all re-opened as fast as the server closes them; a legitimate client posts signed
  Pods on fresh TLS connections throughout. Figures: attack connections held at the end,
  the webhook's memory peak against its 512 MiB limit, the legitimate p50/p99/max against the
  10 s webhook timeout, non-200 answers.
* **fuzz**: mutated AdmissionReviews (unsigned images, wrong types, deep nesting, Unicode
  digits, no containers): cases run, 5xx, false admits.
* **sidecar**: START frames claiming 60 MiB and 256 MiB bodies that never arrive, and idle
  connections beyond the 64 slots, while trajectories are streamed: the sidecar's memory peak
  against its 1 GiB limit, trajectories committed or failed, their p99.
* **store**: ``--kills`` rounds of ``kill -9`` of a sidecar mid-ingestion; after each restart
  every acknowledged trajectory must be served and its openings must verify against the
  committed root; then tiny trajectories against an 8 MiB cap: disk used by the store.
  Figures: acknowledged, lost, half-written served, time to recover, disk against the cap.
* **operator**: the results ingest (TLS) under idle and half-sent connections: memory peak
  against its 256 MiB limit, the legitimate poster's p99.
* **verifier**: a sidecar trickling a byte every 0.3 s against a 2 s deadline: the time the
  call took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import selectors
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support
sys.path.insert(0, str(REPO / "benchmarks"))

MIB = 1 << 20
WEBHOOK_TIMEOUT = 10.0  # the Kubernetes default timeoutSeconds
#: attackers connect from another loopback address than the legitimate clients (127.0.0.1),
#: as a flood from other pods would: the guards evict from the peer holding the most
ATTACKER = ("127.0.0.2", 0)
#: every process a phase starts: killed when the run ends, however it ends
CHILDREN: list[subprocess.Popen[bytes]] = []


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRss:
    """Samples a process's resident memory (VmRSS) every 50 ms: its peak over the phase."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def quantiles(xs: list[float]) -> dict[str, float]:
    if len(xs) < 2:
        return {"n": len(xs), "p50": xs[0] if xs else 0.0, "p99": xs[0] if xs else 0.0}
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return {"n": len(xs), "p50": q[49], "p99": q[98], "max": max(xs)}


# --- attackers --------------------------------------------------------------------------------


class Flood:
    """Holds up to ``n`` connections made by ``opener`` and re-opens each as soon as the server
    closes it, until stopped. ``feed(sock)`` runs on every live connection every second
    (slowloris trickles)."""

    def __init__(
        self,
        n: int,
        opener: Callable[[], socket.socket | ssl.SSLSocket | None],
        feed: Callable[[socket.socket], object] | None = None,
    ) -> None:
        self.n, self.opener, self.feed = n, opener, feed
        self.opened = self.closed_by_server = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> None:
        try:
            sock = self.opener()
        except OSError:
            time.sleep(0.01)
            return
        if sock is None:
            return
        sock.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ, sock)  # data: the socket, as a socket
        self.opened += 1

    def _run(self) -> None:
        last_feed = time.monotonic()
        while not self._stop.is_set():
            while len(self._sel.get_map()) < self.n and not self._stop.is_set():
                self._open()
                if self.opened % 64 == 0:
                    break  # look at closes between bursts
            for key, _ in self._sel.select(timeout=0.05):
                sock: socket.socket = key.data
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._sel.unregister(sock)
                    sock.close()
                    self.closed_by_server += 1
            if self.feed is not None and time.monotonic() - last_feed > 1.0:
                last_feed = time.monotonic()
                for key in list(self._sel.get_map().values()):
                    with contextlib.suppress(OSError, ssl.SSLWantWriteError):
                        self.feed(key.data)

    @property
    def held(self) -> int:
        return len(self._sel.get_map())

    def start(self) -> Flood:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._sel.get_map().values()):
            key.data.close()
        self._sel.close()


def tcp_opener(port: int) -> Callable[[], socket.socket]:
    def open_() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=2, source_address=ATTACKER)

    return open_


def tls_opener(port: int, ctx: ssl.SSLContext, first: bytes = b"") -> Callable[[], ssl.SSLSocket]:
    def open_() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=ATTACKER)
        try:
            tls = ctx.wrap_socket(raw, server_hostname="localhost")
            if first:
                tls.sendall(first)
            return tls
        except OSError:
            raw.close()
            raise

    return open_


def big_header(port: int, ctx: ssl.SSLContext, total: int = 50 * MIB) -> int:
    """Send up to ``total`` bytes of one unfinished header; returns the bytes the server took
    before it closed the connection."""
    sent = 0
    try:
        with (
            socket.create_connection(
                ("127.0.0.1", port), timeout=5, source_address=ATTACKER
            ) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"POST /validate HTTP/1.1\r\nhost: x\r\nx-big: ")
            chunk = b"a" * (256 << 10)
            while sent < total:
                tls.sendall(chunk)
                sent += len(chunk)
    except OSError:
        pass
    return sent


# --- webhook ----------------------------------------------------------------------------------


def _webhook(tmp: Path) -> tuple[Any, dict[str, Any], str]:
    import bench_admission

    from tests.support.webhook import write_self_signed

    cert, key = tmp / "tls.crt", tmp / "tls.key"
    write_self_signed(cert, key)
    setup = dict(bench_admission.standin_setup(), cert=str(cert), key=str(key), fresh_ttl=300.0)
    setup["port"] = bench_admission._free_port()
    (tmp / "webhook.json").write_text(json.dumps(setup))
    with open(tmp / "webhook.log", "ab") as log:  # a pipe nobody reads would block its logging
        proc = subprocess.Popen(
            [sys.executable, bench_admission.__file__, "--serve", str(tmp / "webhook.json")],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    CHILDREN.append(proc)
    if _time_to(lambda: _accepts(setup["port"])) == float("inf"):
        proc.kill()
        raise RuntimeError("the webhook did not start")
    proc.port = setup["port"]  # type: ignore[attr-defined]
    return proc, setup, str(cert)


def _accepts(port: int) -> bool:
    """Whether something accepts a TCP connection on ``port`` (raises OSError when not)."""
    socket.create_connection(("127.0.0.1", port)).close()
    return True


def _post(
    port: int, ctx: ssl.SSLContext, path: str, body: bytes, headers: str = ""
) -> tuple[int, bytes]:
    """One request on a fresh TLS connection; (status, body)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=WEBHOOK_TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(
            f"POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
            f"{headers}content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        out = b""
        while chunk := tls.recv(65536):
            out += chunk
    head, _, rest = out.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise ConnectionError("the connection closed without an answer")
    return int(head.split(b" ", 2)[1]), rest


def _stop_and_join(stop: threading.Event, thread: threading.Thread) -> None:
    stop.set()
    thread.join(30)


def phase_webhook(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import bench_admission

    proc, setup, cert = _webhook(tmp)
    port = proc.port
    ctx = ssl.create_default_context(cafile=cert)
    bodies = bench_admission.review_bytes(setup["image"], 8)
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def legit() -> None:
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                code, body = _post(port, ctx, "/validate", bodies[i % len(bodies)])
                if code != 200 or b'"allowed":true' not in body:
                    failures.append(f"{code} {body[:120]!r}")
            except OSError as exc:
                failures.append(type(exc).__name__)
            latencies.append(time.perf_counter() - t0)
            i += 1
            time.sleep(0.05)

    n = args.attackers
    floods = [
        Flood(n, tcp_opener(port)),  # never starts TLS
        Flood(n // 3, tls_opener(port, ctx)),  # TLS done, never a request
        Flood(
            200,
            tls_opener(port, ctx, b"POST /validate HTTP/1.1\r\nhost: x\r\n"),
            feed=lambda s: s.send(b"x-a: b\r\n"),
        ),  # slowloris
    ]
    with PeakRss(proc.pid) as rss:
        base = status_kib(proc.pid, "VmRSS")
        for f in floods:
            f.start()
        with contextlib.ExitStack() as stack:
            big: list[int] = []
            threads = [
                threading.Thread(target=lambda: big.append(big_header(port, ctx)), daemon=True)
                for _ in range(9)
            ]
            for t in threads:
                t.start()
            client = threading.Thread(target=legit, daemon=True)
            time.sleep(1.0)  # the floods reach their size first
            client.start()
            stack.callback(_stop_and_join, stop, client)
            time.sleep(args.seconds)
            held = sum(f.held for f in floods)
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            for t in threads:
                t.join(30)
        for f in floods:
            f.stop()
    recovered = _time_to(lambda: _post(port, ctx, "/validate", bodies[0])[0] == 200)
    stop_process(proc)
    q = quantiles(latencies)
    return {
        "attack connections opened": sum(f.opened for f in floods),
        "attack connections closed by the server": sum(f.closed_by_server for f in floods),
        "attack connections still held at the end": held,
        "webhook fds at the end": fds,
        "50 MiB headers: bytes taken before the close (max)": max(big, default=0),
        "legit requests": q["n"],
        "legit p50 s": round(q["p50"], 3),
        "legit p99 s": round(q["p99"], 3),
        "legit max s": round(q.get("max", q["p99"]), 3),
        "legit non-200 or denied": len(failures),
        "first failure": failures[0] if failures else "",
        "memory before MiB": round(base / 1024, 1),
        "memory peak MiB (limit 512)": round(rss.peak / 1024, 1),
        "time to recover s": round(recovered, 3),
    }


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _time_to(ok: Callable[[], bool], limit: float = 30.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        with contextlib.suppress(OSError):
            if ok():
                return time.monotonic() - t0
        time.sleep(0.05)
    return float("inf")


# --- fuzz -------------------------------------------------------------------------------------


def _mutations(rng: random.Random, base: dict[str, Any]) -> bytes:
    import copy

    doc = copy.deepcopy(base)
    spec = doc["request"]["object"]["spec"]
    pick = rng.randrange(9)
    if pick == 0:
        spec["containers"] = []
    elif pick == 1:
        spec.pop("containers")
    elif pick == 2:
        spec["containers"][0]["image"] = rng.choice([1, None, [], {}, "", "x" * 5000])
    elif pick == 3:
        spec["containers"][0]["image"] = "registry.local:5000/acme/sampler:1.\u0661"
    elif pick == 4:
        return b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":' + (
            b"[" * 5000 + b"]" * 5000 + b"}"
        )
    elif pick == 5:
        spec["initContainers"] = [{"name": "i", "image": "evil.example/x:1"}]
    elif pick == 6:
        doc["request"]["object"]["metadata"] = rng.choice([None, [], "x", {"labels": [1]}])
    elif pick == 7:
        raw = json.dumps(doc).encode()
        cut = rng.randrange(len(raw))
        return raw[:cut]
    else:
        spec["containers"].append({"name": "c2", "image": f"evil.example/x{rng.random()}:1"})
    return json.dumps(doc).encode()


def phase_fuzz(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import bench_admission

    from tests.support.webhook import review

    proc, _, cert = _webhook(tmp)
    ctx = ssl.create_default_context(cafile=cert)
    unsigned = "registry.local:5000/acme/unsigned:1.0"
    base = review(bench_admission.pod(unsigned, "fuzzed"), namespace="ml")
    rng = random.Random(14)
    fives = admits = errors = 0
    cases = 0
    deadline = time.monotonic() + args.seconds
    while cases < args.fuzz_cases and time.monotonic() < deadline:
        body = _mutations(rng, base)
        cases += 1
        try:
            code, answer = _post(proc.port, ctx, rng.choice(["/validate", "/mutate"]), body)
        except OSError:
            errors += 1
            continue
        fives += code >= 500
        admits += b'"allowed":true' in answer
    stop_process(proc)
    return {
        "fuzz cases run": cases,
        "5xx": fives,
        "false admits (unsigned images allowed)": admits,
        "connection errors": errors,
    }


# --- sidecar ----------------------------------------------------------------------------------


def _prefix(body_len: int) -> bytes:
    from samplerguard.hook.wire import FRAME_START, MAGIC, PREFIX, WIRE_VERSION

    return PREFIX.pack(MAGIC, WIRE_VERSION, FRAME_START, 2, body_len) + b"{}"


def phase_sidecar(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from _dataplane import RawStream, sidecar

    svc, _ = sidecar(tmp / "sidecar")
    CHILDREN.append(svc.proc)
    path = str(tmp / "sidecar" / "run" / "sidecar.sock")
    stream = RawStream(steps=20, shape=(1, 4, 32, 32), batch=8)

    def unix_opener(claim: int) -> Callable[[], socket.socket]:
        def open_() -> socket.socket:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(path)
            if claim:
                s.sendall(_prefix(claim))
            return s

        return open_

    latencies: list[float] = []
    failed: list[str] = []
    stop = threading.Event()

    def legit() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                stream.send(path, f"legit-{uuid.uuid4().hex[:12]}")
            except (OSError, AssertionError) as exc:
                failed.append(str(exc)[:120])
            latencies.append(time.perf_counter() - t0)

    floods = [
        Flood(64, unix_opener(60 * MIB)),  # claims under the START cap, never sent
        Flood(64, unix_opener(256 * MIB)),  # claims over it: refused at once
        Flood(128, unix_opener(0)),  # idle: never a frame
    ]
    with PeakRss(svc.pid) as rss:
        base = status_kib(svc.pid, "VmRSS")
        for f in floods:
            f.start()
        clients = [threading.Thread(target=legit, daemon=True) for _ in range(2)]
        for c in clients:
            c.start()
        time.sleep(args.seconds)
        stop.set()
        for c in clients:
            c.join(60)
        for f in floods:
            f.stop()
    after = _time_to(lambda: bool(stream.send(path, f"after-{uuid.uuid4().hex[:8]}")))
    svc.stop()
    q = quantiles(latencies)
    return {
        "attack connections opened": sum(f.opened for f in floods),
        "closed by the sidecar": sum(f.closed_by_server for f in floods),
        "trajectories committed under attack": q["n"] - len(failed),
        "trajectories failed": len(failed),
        "first failure": failed[0] if failed else "",
        "trajectory p50 s": round(q["p50"], 3),
        "trajectory p99 s": round(q["p99"], 3),
        "memory before MiB": round(base / 1024, 1),
        "memory peak MiB (limit 1024)": round(rss.peak / 1024, 1),
        "time to recover s": round(after, 3),
    }


# --- store: kill -9 ---------------------------------------------------------------------------


def _check_store(openings: Path, acked: set[str]) -> tuple[int, int, int]:
    """(acknowledged but missing, served but unverifiable, served)."""
    import base64

    from samplerguard.commitment.merkle import verify_inclusion
    from samplerguard.commitment.opening import Opening
    from samplerguard.sidecar.store import OpeningStore

    store = OpeningStore(openings, retention=1e9, max_bytes=1 << 40, min_free_bytes=0)
    try:
        ids = {e.id for e in store.committed(limit=1_000_000)}
        bad = 0
        for tid in ids:
            try:
                doc = store.index(tid)
                for step in (0, len(doc["steps"]) - 1):
                    op = Opening.from_bytes(store.opening_bytes(tid, step))
                    root = bytes.fromhex(doc["root"])
                    for leaf in op.meta.leaves:
                        proof = [bytes.fromhex(p) for p in leaf.proof]
                        data = base64.b64decode(leaf.data)
                        if not verify_inclusion(data, leaf.index, op.meta.tree_size, proof, root):
                            raise ValueError("inclusion does not verify")
            except Exception:
                bad += 1
        return len(acked - ids), bad, len(ids)
    finally:
        store.close()


def phase_store(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from _dataplane import RawStream

    from samplerguard.demo.services import make_token, start_sidecar
    from samplerguard.errors import SamplerGuardError

    run = tmp / "store" / "run"
    token = make_token(tmp / "store" / "token")
    stream = RawStream(steps=30, shape=(1, 4, 16, 16), batch=8)
    acked: set[str] = set()
    recover: list[float] = []
    rng = random.Random(9)
    for _ in range(args.kills):
        t0 = time.monotonic()
        # a cap the run never reaches: an eviction is not a loss
        svc = start_sidecar(run, token_file=token, extra_args=["--max-store-bytes", str(1 << 40)])
        CHILDREN.append(svc.proc)
        recover.append(time.monotonic() - t0)
        stop = threading.Event()

        def client(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                tid = f"k-{uuid.uuid4().hex[:16]}"
                try:
                    stream.send(str(run / "sidecar.sock"), tid)
                except (OSError, AssertionError, SamplerGuardError):
                    return  # the kill: this one was never acknowledged
                acked.add(tid)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.5, 2.5))
        svc.kill()  # SIGKILL, mid-write
        stop.set()
        for t in threads:
            t.join(30)
    lost, unverifiable, served = _check_store(run / "openings", acked)

    # the cap counts everything written: tiny trajectories against an 8 MiB cap
    capped = tmp / "capped" / "run"
    svc = start_sidecar(
        capped,
        token_file=token,
        extra_args=["--max-store-bytes", str(8 * MIB), "--min-free-bytes", "0"],
    )
    CHILDREN.append(svc.proc)
    tiny = RawStream(steps=4, shape=(1, 1, 4, 4))
    sent = 0
    deadline = time.monotonic() + args.seconds
    while sent < 3000 and time.monotonic() < deadline:
        tiny.send(str(capped / "sidecar.sock"), f"t-{sent}")
        sent += 1
    svc.stop()
    used = sum(p.stat().st_blocks * 512 for p in (capped / "openings").iterdir() if p.is_file())
    return {
        "kill -9 rounds": args.kills,
        "trajectories acknowledged": len(acked),
        "acknowledged but lost": lost,
        "served but half-written or unverifiable": unverifiable,
        "served after the kills": served,
        "restart to ready s (max)": round(max(recover), 3),
        "tiny trajectories into an 8 MiB cap": sent,
        "store disk use MiB (cap 8)": round(used / MIB, 2),
    }


# --- operator ingest --------------------------------------------------------------------------


def serve_operator(setup_path: str) -> None:
    """Runs in the operator-ingest subprocess."""
    from samplerguard.operator.ingest import Authenticator, build_app, serve, tls_context

    setup = json.loads(Path(setup_path).read_text())

    async def main() -> None:
        auth = Authenticator(local_token=setup["token"])
        ctx = tls_context(setup["cert"], setup["key"])
        await serve(build_app(lambda batch: len(batch), auth), "127.0.0.1", setup["port"], ctx)
        await asyncio.Event().wait()

    asyncio.run(main())


def phase_operator(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import bench_admission

    from samplerguard.policy.report import ReportResult
    from tests.support.webhook import write_self_signed

    cert, key = tmp / "op.crt", tmp / "op.key"
    write_self_signed(cert, key)
    token = uuid.uuid4().hex
    port = bench_admission._free_port()
    setup = tmp / "operator.json"
    setup.write_text(json.dumps({"cert": str(cert), "key": str(key), "token": token, "port": port}))
    with open(tmp / "operator.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-operator", str(setup)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    CHILDREN.append(proc)
    ctx = ssl.create_default_context(cafile=str(cert))
    line = json.dumps(ReportResult.build(policy="p", rule="recipe", result="pass").to_wire())
    body = line.encode()

    def post() -> int:
        auth = f"authorization: Bearer {token}\r\n"
        return _post(port, ctx, "/v1/results", body, auth)[0]

    if _time_to(lambda: post() == 200) == float("inf"):
        proc.kill()
        raise RuntimeError("the operator ingest did not start")
    latencies: list[float] = []
    failures = 0
    n = args.attackers
    floods = [
        Flood(n, tcp_opener(port)),
        Flood(n // 3, tls_opener(port, ctx)),
        Flood(100, tls_opener(port, ctx, b"POST /v1/results HTTP/1.1\r\n")),
    ]
    with PeakRss(proc.pid) as rss:
        base = status_kib(proc.pid, "VmRSS")
        for f in floods:
            f.start()
        time.sleep(1.0)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                failures += post() != 200
            except OSError:
                failures += 1
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.1)
        held = sum(f.held for f in floods)
        for f in floods:
            f.stop()
    stop_process(proc)
    q = quantiles(latencies)
    return {
        "attack connections opened": sum(f.opened for f in floods),
        "attack connections still held at the end": held,
        "legit posts": q["n"],
        "legit failures": failures,
        "legit p99 s": round(q["p99"], 3),
        "memory before MiB": round(base / 1024, 1),
        "memory peak MiB (limit 256)": round(rss.peak / 1024, 1),
    }


# --- verifier ---------------------------------------------------------------------------------


def phase_verifier(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from samplerguard.errors import TemporaryError
    from samplerguard.verifier.client import SidecarClient
    from tests.support.trickle import Trickler

    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\n" + b" " * 64
    outcome = "answered"
    with Trickler(answer, every=0.3) as server:
        client = SidecarClient(f"http://127.0.0.1:{server.port}", lambda: "t", timeout=2.0)
        t0 = time.monotonic()
        try:
            client.trajectories()
        except TemporaryError as exc:
            outcome = str(exc)
        took = time.monotonic() - t0
        client.close()
    return {
        "deadline s": 2.0,
        "call took s": round(took, 2),
        "trickle would take s": round(0.3 * len(answer), 1),
        "outcome": outcome,
    }


PHASES: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "webhook": phase_webhook,
    "fuzz": phase_fuzz,
    "sidecar": phase_sidecar,
    "store": phase_store,
    "operator": phase_operator,
    "verifier": phase_verifier,
}


def _kill_children() -> None:
    for p in CHILDREN:
        if p.poll() is None:
            p.kill()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each attack")
    parser.add_argument("--attackers", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--fuzz-cases", type=int, default=2000)
    parser.add_argument("--only", default=",".join(PHASES))
    parser.add_argument("--serve-operator")
    args = parser.parse_args()
    if args.serve_operator:
        serve_operator(args.serve_operator)
        return 0
    bad = 0
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as cleanup:
        cleanup.callback(_kill_children)
        for name in args.only.split(","):
            tmp = Path(d) / name
            tmp.mkdir()
            t0 = time.monotonic()
            figures = PHASES[name](args, tmp)
            print(f"== {name} ({time.monotonic() - t0:.0f} s)")
            for k, v in figures.items():
                print(f"  {k}: {v}")
            sys.stdout.flush()
            bad += figures.get("5xx", 0) + figures.get("false admits (unsigned images allowed)", 0)
            bad += figures.get("acknowledged but lost", 0)
            bad += figures.get("served but half-written or unverifiable", 0)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
