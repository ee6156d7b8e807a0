"""A hook keeps its connection for the next trajectory: the sidecar serves exchange after
exchange on a connection that proved itself (a committed trajectory, an issued seed), closes one
left idle past its keep-alive, and closes a probe's or a refused exchange's connection after the
answer. The sink notices a connection the sidecar closed and starts over on a fresh one."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from samplerguard.commitment.state import SamplerState
from samplerguard.hook import sidecar_sink
from samplerguard.hook.recorder import Begin, StepRecord, TrajectoryRequest
from samplerguard.hook.sidecar_sink import SidecarSink
from samplerguard.hook.wire import (
    FRAME_HELLO,
    FRAME_START,
    encode_frame,
    read_frame,
    send_frame,
)
from samplerguard.sidecar.enforce import Admission
from samplerguard.sidecar.ingest import Decision, Gate, IngestServer
from samplerguard.sidecar.store import OpeningStore
from tests.unit.sidecar.test_ingest_stream import _trajectory

ZERO = "sha256:" + "0" * 64
OUT = "sha256:" + "1" * 64


def _server(tmp_path: Path, keepalive: float = 30.0) -> IngestServer:
    store = OpeningStore(tmp_path / "store", retention=3600, max_bytes=1 << 26, min_free_bytes=0)
    gate = Gate(
        key=Ed25519PrivateKey.generate(),
        public_pem=_pem(),
        admit=lambda s: Decision(Admission("accept", ())),
    )
    srv = IngestServer(
        tmp_path / "s.sock", store, gate, max_trajectory_bytes=1 << 20, keepalive_timeout=keepalive
    )
    srv.start()
    return srv


_KEY = Ed25519PrivateKey.generate()


def _pem() -> str:
    from cryptography.hazmat.primitives import serialization

    return (
        _KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[IngestServer]:
    srv = _server(tmp_path)
    srv.gate.key = _KEY
    yield srv
    srv.close()


def _generate(sink: SidecarSink, request_id: str, steps: int = 3) -> None:
    """One trajectory through the sink, as the recorder's worker drives it."""
    recipe = {"pipeline": "t", "steps": steps, "scheduler_class": "EulerDiscreteScheduler"}
    req = TrajectoryRequest(request_id, "t", "t", "m", ZERO, "euler", 1.0, steps)
    state = SamplerState(values={"_step_index": 0})
    z = torch.randn(1, 2, 4, 4)
    sess = sink.start(req, Begin(recipe, z, state, ZERO, {"labels": torch.tensor([3])}))
    for i in range(steps):
        z = torch.randn(1, 2, 4, 4)
        sink.step(sess, StepRecord(i, 999 - i, z, SamplerState(values={"_step_index": i}), []))
    commitment, _ = sink.finish(sess, z, OUT)
    assert commitment.request_id == request_id


def _connections(srv: IngestServer) -> list[int]:
    """Count the connections the server accepts from now on."""
    accepted: list[int] = []
    inner = srv._server.process_request

    def counting(request: object, address: object) -> None:
        accepted.append(1)
        inner(request, address)

    srv._server.process_request = counting  # type: ignore[method-assign,assignment]
    return accepted


def test_trajectories_share_one_connection(server: IngestServer) -> None:
    accepted = _connections(server)
    sink = SidecarSink(server.path)
    for i in range(3):
        _generate(sink, f"keep-{i}")
    assert len(accepted) == 1
    assert [e.id for e in server.store.committed()] == ["keep-0", "keep-1", "keep-2"]
    sink.close()
    assert sink._idle == []


def test_without_idle_connections_each_trajectory_connects_anew(server: IngestServer) -> None:
    accepted = _connections(server)
    sink = SidecarSink(server.path, idle_connections=0)
    for i in range(3):
        _generate(sink, f"fresh-{i}")
    assert len(accepted) == 3
    assert sink._idle == []


def test_a_connection_left_idle_past_the_keepalive_is_closed_and_replaced(
    tmp_path: Path,
) -> None:
    srv = _server(tmp_path, keepalive=0.2)
    srv.gate.key = _KEY
    try:
        accepted = _connections(srv)
        sink = SidecarSink(srv.path)
        _generate(sink, "idle-0")
        kept = sink._idle[0]
        deadline = time.monotonic() + 5
        while sidecar_sink._open_and_quiet(kept) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sidecar_sink._open_and_quiet(kept)  # the sidecar closed its end
        assert srv._active == 0
        _generate(sink, "idle-1")
        assert len(accepted) == 2
        assert kept.fileno() == -1  # the closed one was noticed and dropped
        assert [e.id for e in srv.store.committed()] == ["idle-0", "idle-1"]
    finally:
        srv.close()


def test_kept_connections_give_their_slots_up_to_new_ones(tmp_path: Path) -> None:
    """With every slot held by a kept idle connection, a new hook is served at once (not after
    the keep-alive), and the hook whose connection was taken reconnects for its next one."""
    store = OpeningStore(tmp_path / "store", retention=3600, max_bytes=1 << 26, min_free_bytes=0)
    gate = Gate(key=_KEY, public_pem=_pem(), admit=lambda s: Decision(Admission("accept", ())))
    srv = IngestServer(tmp_path / "s.sock", store, gate, max_connections=2, keepalive_timeout=60.0)
    srv.start()
    try:
        sinks = [SidecarSink(srv.path) for _ in range(3)]
        _generate(sinks[0], "slot-0")
        _generate(sinks[1], "slot-1")  # both slots now held by idle kept connections
        start = time.monotonic()
        _generate(sinks[2], "slot-2")
        assert time.monotonic() - start < 10  # not the 60 s keep-alive
        _generate(sinks[0], "slot-3")
        _generate(sinks[1], "slot-4")
        assert sorted(e.id for e in srv.store.committed()) == [f"slot-{i}" for i in range(5)]
    finally:
        srv.close()


def test_a_start_racing_the_keepalive_close_goes_out_again_on_a_fresh_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidecar may close an idle connection just as START goes out on it: the sink sees
    the connection lost before any answer, and sends START once more on a new one."""
    srv = _server(tmp_path, keepalive=0.1)
    srv.gate.key = _KEY
    try:
        sink = SidecarSink(srv.path)
        _generate(sink, "race-0")
        time.sleep(0.5)  # the sidecar has closed it by now
        monkeypatch.setattr(sidecar_sink, "_open_and_quiet", lambda sock: True)
        _generate(sink, "race-1")
        assert [e.id for e in srv.store.committed()] == ["race-0", "race-1"]
    finally:
        srv.close()


def _raw_trajectory(sock: socket.socket, request_id: str) -> dict[str, object]:
    frames, _ = _trajectory(request_id)
    answer: dict[str, object] = {}
    for kind, header, tensors in frames:
        sock.sendall(b"".join(bytes(p) for p in encode_frame(kind, header, tensors)))
        if kind == FRAME_START:
            answer = read_frame(sock, max_body=0).header
            assert answer.get("ok"), answer
    return read_frame(sock, max_body=0).header


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def test_a_probe_connection_is_closed_after_its_answer(server: IngestServer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(server.path))
        send_frame(s, FRAME_HELLO, {})
        assert read_frame(s, max_body=0).header["ok"]
        assert _closed_by_peer(s)


def test_a_refused_exchange_on_a_kept_connection_is_answered_then_closed(
    server: IngestServer,
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(server.path))
        assert _raw_trajectory(s, "kept-0")["ok"]
        assert _raw_trajectory(s, "kept-1")["ok"]  # the same connection carries the next
        send_frame(s, FRAME_START, {"request": "not an object"})
        answer = read_frame(s, max_body=0).header
        assert not answer["ok"] and "START lacks" in str(answer["error"])
        assert _closed_by_peer(s)
    assert [e.id for e in server.store.committed()] == ["kept-0", "kept-1"]


def test_a_committed_id_on_a_kept_connection_is_refused(server: IngestServer) -> None:
    """A kept connection is no way around the request-id ledger."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(server.path))
        assert _raw_trajectory(s, "once")["ok"]
        frames, _ = _trajectory("once")
        kind, header, tensors = frames[0]
        s.sendall(b"".join(bytes(p) for p in encode_frame(kind, header, tensors)))
        answer = read_frame(s, max_body=0).header
        assert not answer["ok"]
        assert _closed_by_peer(s)
    assert [e.id for e in server.store.committed()] == ["once"]


def test_a_forked_child_never_uses_its_parents_kept_connection(server: IngestServer) -> None:
    """A server's worker processes fork after the sink kept a connection: the child opens its
    own, and the parent's stream stays the parent's."""
    import os

    sink = SidecarSink(server.path)
    _generate(sink, "fork-parent-0")
    kept = sink._idle[0]
    pid = os.fork()
    if pid == 0:  # the child: one trajectory on its own connection, then out
        code = 1
        try:
            _generate(sink, "fork-child")
            code = 0 if sink._idle and sink._idle[0] is not kept else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    _generate(sink, "fork-parent-1")
    assert sink._idle == [kept]  # the parent went on with its own connection
    assert sorted(e.id for e in server.store.committed()) == [
        "fork-child",
        "fork-parent-0",
        "fork-parent-1",
    ]
