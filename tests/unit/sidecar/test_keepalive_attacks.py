"""Kept connections under an app that speaks the wire protocol itself: a connection waiting
for a slot gets the one a kept connection frees by going idle, at once (not after the
keep-alive, and not never while the kept one keeps being reused); a kept connection's next first
frame cannot be trickled past its keep-alive and the start deadline; and a kept connection
reclaimed for a new one never acts on a first frame it had already read (a DRBG START would
take the request's seed, lose the answer, and the sink's retry would be refused, the seed
recorded as abandoned: false evidence of seed shopping against an honest app).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from samplerguard.commitment.state import SamplerState
from samplerguard.commitment.trajectory import TrajectoryBuilder
from samplerguard.hook import wire
from samplerguard.hook.recorder import Begin, StepRecord, TrajectoryRequest
from samplerguard.hook.sidecar_sink import SidecarSink
from samplerguard.hook.wire import (
    FRAME_FINAL,
    FRAME_FINISH,
    FRAME_HELLO,
    FRAME_SEED,
    FRAME_START,
    FRAME_STEP,
    encode_frame,
    read_frame,
    send_frame,
)
from samplerguard.rng import NoiseAuthority
from samplerguard.sidecar.abandoned import SeedLedger
from samplerguard.sidecar.enforce import Admission
from samplerguard.sidecar.ingest import Decision, Gate, IngestServer
from samplerguard.sidecar.seeds import SeedIssuer
from samplerguard.sidecar.store import OpeningStore

ZERO = "sha256:" + "0" * 64
OUT = "sha256:" + "1" * 64
KEY = Ed25519PrivateKey.generate()
PEM = (
    KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def _server(tmp_path: Path, seeds: SeedIssuer | None = None, **kw: Any) -> IngestServer:
    store = OpeningStore(tmp_path / "store", retention=3600, max_bytes=1 << 26, min_free_bytes=0)
    gate = Gate(
        key=KEY, public_pem=PEM, admit=lambda s: Decision(Admission("accept", ())), seeds=seeds
    )
    srv = IngestServer(tmp_path / "s.sock", store, gate, max_trajectory_bytes=1 << 20, **kw)
    srv.start()
    return srv


def _frames(request_id: str, steps: int = 3) -> list[bytes]:
    """One trajectory's frames, encoded (START, STEP…, FINAL, FINISH)."""
    gen = torch.Generator().manual_seed(1)
    b = TrajectoryBuilder(recipe={"pipeline": "t", "steps": steps})
    cond = {"labels": torch.tensor([3, 4])}
    b.set_conditioning(cond)
    z = torch.randn(1, 2, 4, 4, generator=gen)
    state0 = SamplerState(values={"_step_index": 0})
    b.initial(z, state0, ZERO)
    out = [
        (
            FRAME_START,
            {
                "request": {"requestId": request_id, "tenant": "t", "rngMode": "framework"},
                "recipe": {"pipeline": "t", "steps": steps},
                "schedule": ZERO,
                "state": state0.skeleton(),
            },
            [("latent", z), ("cond/labels", cond["labels"])],
        )
    ]
    for i in range(steps):
        z = torch.randn(1, 2, 4, 4, generator=gen)
        st = SamplerState(values={"_step_index": i + 1})
        out.append(
            (
                FRAME_STEP,
                {"index": i, "timestep": 999.5 - i, "state": st.skeleton()},
                [("latent", z)],
            )
        )
    out.append((FRAME_FINAL, {}, [("latent", z)]))
    out.append((FRAME_FINISH, {"output": OUT}, []))
    return [b"".join(bytes(p) for p in encode_frame(k, h, t)) for k, h, t in out]


def _connect(path: Path, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    import logging

    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def test_a_waiting_hook_gets_the_slot_of_a_connection_that_went_idle(
    tmp_path: Path, quiet_logs: None
) -> None:
    """max_connections=1: hook A is mid-trajectory when hook B connects (B waits in the backlog,
    nothing is idle yet). A commits and its connection is kept idle: B must be served at once,
    not after A's keep-alive (60 s here), and not starved while A keeps reusing it."""
    issuer = SeedIssuer(NoiseAuthority(b"m" * 32, "ctr-drbg"), None)
    srv = _server(tmp_path, issuer, max_connections=1, keepalive_timeout=60.0)
    a = b = None
    try:
        a = _connect(srv.path)
        frames = _frames("a-0")
        a.sendall(frames[0])
        assert read_frame(a, max_body=0).header["ok"]
        for f in frames[1:-1]:
            a.sendall(f)
        b = _connect(srv.path, timeout=8.0)  # accepted by the kernel, waits for a slot
        send_frame(b, FRAME_HELLO, {})
        time.sleep(0.5)
        a.sendall(frames[-1])
        assert read_frame(a, max_body=0).header["ok"]  # committed; A's connection now idle
        stop = threading.Event()

        def keep_using() -> None:  # A's hook keeps using its kept connection (seeds)
            n = 0
            while not stop.wait(1.0):
                try:
                    send_frame(
                        a,
                        FRAME_SEED,
                        {"requestId": f"a-s{n}", "tenant": "t", "rngMode": "ctr-drbg"},
                    )
                    if not read_frame(a, max_body=0).header.get("ok"):
                        return
                except (OSError, wire.WireClosedError):
                    return
                n += 1

        user = threading.Thread(target=keep_using, daemon=True)
        user.start()
        start = time.monotonic()
        try:
            answer = read_frame(b, max_body=0).header
        except TimeoutError:
            answer = {"ok": False, "error": "timeout"}
        stop.set()
        waited = time.monotonic() - start
        assert answer.get("ok") and waited < 5, (
            f"the waiting hook was not served ({answer}) after {waited:.1f}s although the only "
            "slot was held by an idle kept connection"
        )
    finally:
        for s in (a, b):
            if s is not None:
                s.close()
        srv.close()


def test_a_kept_connection_cannot_trickle_its_next_first_frame_forever(
    tmp_path: Path, quiet_logs: None
) -> None:
    """keepalive_timeout=0.5 s, start_timeout=1 s: after a committed trajectory, the next START
    is sent a byte every 0.25 s. The wait and the frame together are bounded by the two (1.5 s):
    the connection is closed long before the 5 s of trickle end."""
    srv = _server(tmp_path, keepalive_timeout=0.5, start_timeout=1.0)
    try:
        with _connect(srv.path) as s:
            for f in _frames("t-0"):
                s.sendall(f)
            assert read_frame(s, max_body=0).header["ok"]
            assert read_frame(s, max_body=0).header["ok"]
            start = _frames("t-1")[0]
            began = time.monotonic()
            closed = False
            try:
                for i in range(20):  # 5 s of trickle
                    s.sendall(start[i : i + 1])
                    time.sleep(0.25)
                s.sendall(start[20:])
                answer = read_frame(s, max_body=0).header
                closed = not answer.get("ok")
            except (OSError, wire.WireClosedError):
                closed = True
            assert closed, (
                f"a kept connection trickled its next START for {time.monotonic() - began:.1f}s "
                "(keep-alive 0.5 s) and it was accepted"
            )
    finally:
        srv.close()


def test_a_reclaimed_kept_connection_never_acts_on_a_first_frame_already_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet_logs: None
) -> None:
    """DRBG, max_connections=1. The honest sink took its seed on a connection it keeps, then
    sends START on it; the handler has read START but not yet left the idle set when another
    hook connects and the kept connection is reclaimed. The honest trajectory must still be
    committed (the sink resends START on a fresh connection, as the docs say nothing was
    started), and its seed must not be recorded as abandoned."""
    ledger = SeedLedger(tmp_path / "seeds.jsonl")
    issuer = SeedIssuer(NoiseAuthority(b"m" * 32, "ctr-drbg"), None, ledger=ledger)
    srv = _server(tmp_path, issuer, max_connections=1, keepalive_timeout=60.0)

    orig = wire.FrameReader.read
    armed, holding = threading.Event(), threading.Event()

    def descheduled_after_read(self: wire.FrameReader, **kw: Any) -> wire.Frame:
        frame = orig(self, **kw)
        if frame.kind == FRAME_START and armed.is_set():
            armed.clear()
            holding.set()
            time.sleep(1.0)  # the handler thread loses the CPU right after its last recv
        return frame

    monkeypatch.setattr(wire.FrameReader, "read", descheduled_after_read)
    sink = SidecarSink(srv.path, io_timeout=10)
    rid = "honest-1"
    result: dict[str, str] = {}
    try:
        noise = sink.request_noise("t", rid)  # SEED: the connection is kept
        z = noise.randn((1, 2, 4, 4))
        noise.close()

        def honest() -> None:
            try:
                steps = 3
                recipe = {
                    "pipeline": "t",
                    "steps": steps,
                    "rng": "ctr-drbg",
                    "scheduler_class": "EulerDiscreteScheduler",
                }
                req = TrajectoryRequest(
                    rid, "t", "t", "m", ZERO, "euler", 1.0, steps, rng_mode="ctr-drbg"
                )
                sess = sink.start(
                    req,
                    Begin(
                        recipe,
                        z,
                        SamplerState(values={"_step_index": 0}),
                        ZERO,
                        {"labels": torch.tensor([3])},
                    ),
                )
                zz = z
                for i in range(steps):
                    zz = torch.randn(1, 2, 4, 4)
                    sink.step(
                        sess,
                        StepRecord(i, 999 - i, zz, SamplerState(values={"_step_index": i}), []),
                    )
                commitment, _ = sink.finish(sess, zz, OUT)
                result["ok"] = commitment.request_id
            except Exception as exc:
                result["err"] = repr(exc)

        armed.set()
        worker = threading.Thread(target=honest, daemon=True)
        worker.start()
        assert holding.wait(10)

        def other_hook() -> None:  # any other connection while every slot is taken
            try:
                with _connect(srv.path, timeout=15) as o:
                    send_frame(o, FRAME_HELLO, {})
                    read_frame(o, max_body=0)
            except OSError:
                pass

        threading.Thread(target=other_hook, daemon=True).start()
        worker.join(30)
        abandoned = [e["id"] for e in ledger.listing()]
        assert result.get("ok") == rid, f"honest DRBG trajectory failed: {result.get('err')}"
        assert rid not in abandoned
    finally:
        sink.close()
        srv.close()


def test_a_start_whose_answer_is_late_is_not_sent_again(tmp_path: Path, quiet_logs: None) -> None:
    """On a kept connection only a closed or reset connection means the sidecar never acted
    on the START; a late answer does not. The sink reports the timeout and never sends the
    START a second time (which the sidecar, already working on it, would refuse, or worse)."""
    starts: list[str] = []

    def slow_admit(start: Any) -> Decision:
        starts.append(start.request_id)
        if start.request_id == "slow":
            time.sleep(2.0)
        return Decision(Admission("accept", ()))

    store = OpeningStore(tmp_path / "store", retention=3600, max_bytes=1 << 26, min_free_bytes=0)
    srv = IngestServer(
        tmp_path / "s.sock",
        store,
        Gate(key=KEY, public_pem=PEM, admit=slow_admit),
        max_trajectory_bytes=1 << 20,
    )
    srv.start()
    sink = SidecarSink(srv.path, io_timeout=0.5)
    recipe = {"pipeline": "t", "steps": 1, "scheduler_class": "EulerDiscreteScheduler"}
    z = torch.zeros(1, 2, 4, 4)

    def begin() -> Begin:
        return Begin(recipe, z, SamplerState(values={}), ZERO, {})

    try:
        first = TrajectoryRequest("fast", "t", "t", "m", ZERO, "euler", 1.0, 1)
        sess = sink.start(first, begin())
        sink.step(sess, StepRecord(0, 999, z, SamplerState(values={}), []))
        sink.finish(sess, z, OUT)  # the connection is kept
        with pytest.raises(Exception, match="did not answer"):
            sink.start(TrajectoryRequest("slow", "t", "t", "m", ZERO, "euler", 1.0, 1), begin())
        time.sleep(2.5)
        assert starts == ["fast", "slow"]
    finally:
        sink.close()
        srv.close()
