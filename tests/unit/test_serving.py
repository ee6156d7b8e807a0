"""Bounded listeners against a real uvicorn server on loopback: idle and slow connections far
beyond the cap cannot keep a client that sends its request at once from being served, headers
are capped, and a trickled request is cut at its deadline."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from samplerguard.serving import ConnectionGuard, Limits, pick_eviction, uvicorn_settings
from tests.support.webhook import write_self_signed

LIMITS = Limits(max_connections=16, idle_timeout=2.0, request_timeout=1.0, max_header_bytes=4096)
#: the flooding peer: another loopback address than the legitimate client's 127.0.0.1
FLOOD = ("127.0.0.2", 0)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _serve(loop_factory: Any, tls: Any = None) -> Iterator[tuple[int, ConnectionGuard]]:
    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
    settings, guard = uvicorn_settings(LIMITS, tls=tls)
    config = uvicorn.Config(_app, lifespan="off", log_config=None, **settings)
    server = uvicorn.Server(config)

    def run() -> None:
        # the webhook serves on uvloop where it is installed; asyncio otherwise
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield sock.getsockname()[1], guard
    server.should_exit = True
    thread.join(10)
    sock.close()


def _uvloop() -> Any:
    import uvloop

    return uvloop.new_event_loop()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> Any:
    return asyncio.new_event_loop if request.param == "asyncio" else _uvloop


@pytest.fixture
def served(loop_factory: Any) -> Iterator[tuple[int, ConnectionGuard]]:
    yield from _serve(loop_factory)


@pytest.fixture
def port(served: tuple[int, ConnectionGuard]) -> int:
    return served[0]


@pytest.fixture
def tls_served(tmp_path: Path, loop_factory: Any) -> Iterator[tuple[int, ConnectionGuard, str]]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_self_signed(cert, key, "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    for port, guard in _serve(loop_factory, lambda: ctx):
        yield port, guard, str(cert)


def _get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def test_idle_and_half_sent_connections_beyond_the_cap_make_room(
    served: tuple[int, ConnectionGuard],
) -> None:
    port, guard = served
    held = []
    for i in range(4 * LIMITS.max_connections):
        s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=FLOOD)
        if i % 2:
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")  # headers never finished
        held.append(s)
    try:
        for _ in range(5):
            assert _get(port).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)
        for s in held:
            s.settimeout(0.05)
        open_now = sum(not _closed(s) for s in held)
        assert open_now <= LIMITS.per_peer  # the flooding peer keeps its share, no more
        assert len(guard.connections) <= LIMITS.max_connections
        assert guard.refused + guard.evicted >= 4 * LIMITS.max_connections - LIMITS.per_peer
    finally:
        for s in held:
            s.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=LIMITS.idle_timeout + 3) as s:
        started = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - started < LIMITS.idle_timeout + 2


def test_a_trickled_request_is_cut_at_its_deadline(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        started = time.monotonic()
        with pytest.raises(OSError):
            for byte in b"GET / HTTP/1.1\r\nhost: x\r\n" + b"x-pad: y\r\n" * 100:
                s.sendall(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - started > 4:
                    break
        assert time.monotonic() - started < LIMITS.request_timeout + 2


def test_oversized_headers_are_refused_with_431(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 8192 + b"\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 431")


def test_one_peer_holds_at_most_its_share_and_others_are_still_admitted(
    served: tuple[int, ConnectionGuard],
) -> None:
    """Even from one address, connections beyond its share are refused before any work, and
    a second address still gets in with the cap not reached."""
    port, guard = served
    held = [
        socket.create_connection(("127.0.0.1", port), timeout=5, source_address=FLOOD)
        for _ in range(3 * LIMITS.per_peer)
    ]
    try:
        time.sleep(0.3)
        assert guard.refused >= 2 * LIMITS.per_peer
        assert guard.evicted == 0  # refused, not evicted: the cap was never reached
        assert _get(port).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()


def test_limits_are_checked_and_eviction_takes_the_longest_idle() -> None:
    assert Limits(max_connections=10).per_peer == 5
    assert Limits(max_connections=10, max_per_peer=9).per_peer == 9
    with pytest.raises(ValueError, match="at least 1 connection"):
        Limits(max_connections=0)
    with pytest.raises(ValueError, match="timeouts must be positive"):
        Limits(idle_timeout=0)
    assert pick_eviction([]) is None
    assert pick_eviction([("h", 3.0, "c"), ("h", 1.0, "a"), ("h", 2.0, "b")]) == "a"
    # the flooding peer loses its own oldest, not the other peer's older connection
    flood = [("10.0.0.9", 5.0 + i, f"f{i}") for i in range(3)]
    assert pick_eviction([("10.0.0.1", 1.0, "legit"), *flood]) == "f0"


def test_stalled_tls_handshakes_are_counted_and_make_room(
    tls_served: tuple[int, ConnectionGuard, str],
) -> None:
    """Connections that never send a ClientHello hold a slot, not the listener: a TLS client
    is still served, and the stalled ones are evicted or cut at the handshake deadline."""
    port, guard, cafile = tls_served
    client_ctx = ssl.create_default_context(cafile=cafile)
    held = [
        socket.create_connection(("127.0.0.1", port), timeout=5, source_address=FLOOD)
        for _ in range(64)
    ]
    try:
        for _ in range(3):
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                assert tls.recv(4096).startswith(b"HTTP/1.1 200")
        assert len(guard.connections) <= LIMITS.max_connections
        assert guard.refused + guard.evicted >= 64 - LIMITS.per_peer
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + LIMITS.handshake_timeout + 3
    while guard.connections and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not guard.connections  # every closed connection left the count


def test_the_quiet_server_ticks_once_a_second_and_stops_at_once() -> None:
    """The sidecar's uvicorn server: one housekeeping wake-up a second (uvicorn's own wakes
    ten times), the date header still fresh, and a shutdown request seen at once."""
    import signal

    import httpx
    import uvicorn

    from samplerguard.serving import QuietServer

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = QuietServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
    ticks: list[int] = []
    on_tick = server.on_tick

    async def counting(counter: int) -> bool:
        ticks.append(counter)
        return bool(await on_tick(counter))

    server.on_tick = counting
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert response.text == "ok" and "date" in response.headers
    time.sleep(2.2)
    # about one tick a second, each one a date refresh (a multiple of ten)
    assert 2 <= len(ticks) <= 4, ticks
    assert all(t % 10 == 0 for t in ticks)
    started = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 0.8  # not left for the next tick
    sock.close()
