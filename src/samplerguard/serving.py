"""Bounded listeners: what any client may hold of a service before it authenticates.

Every service that listens on TCP (the webhook, the sidecar's API, the verifier's API, the
operator's results ingest) takes its connections through a :class:`ConnectionGuard`:

* **connections**: at most ``max_connections`` TCP connections at once, counted from accept,
  TLS handshakes included, and at most ``max_per_peer`` (half, by default) from one peer
  address: beyond that a peer's new connection is closed before any TLS work. A connection
  beyond the total evicts the one that has waited longest *without a request in the
  application* (idle, handshaking, or still sending its request);
  one whose request is being handled is never evicted. Idle or slow clients, however many,
  cannot crowd out a client that sends its request at once: it is served, and the oldest
  idler makes room for it, taken from the peer address that holds the most connections.
  When every connection has a request in the application, the newcomer is closed.
* **TLS handshake**: done by the guard itself (``start_tls``, asyncio or uvloop) after the
  connection is counted, within ``handshake_timeout`` seconds. A loop's own TLS would hold
  every pending handshake, uncounted, for its 60 s default.
* **idle time**: a connection with no request in progress is closed after ``idle_timeout``
  seconds (from accept, and from the end of each response).
* **request time**: a request must arrive whole (headers and body) within
  ``request_timeout`` seconds of its first byte, whatever pace it trickles at.
* **header size**: at most ``max_header_bytes`` before the headers end (431, closed).
* **per-connection memory**: the parser holds at most the header cap; uvicorn stops reading a
  body beyond 64 KiB until the application takes it, and each application caps its body.

These bound what a connection can *hold*; what a request may *cost* (deadlines on outbound
calls, body caps) is the application's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

__all__ = ["ConnectionGuard", "Limits", "QuietServer", "pick_eviction", "uvicorn_settings"]


@dataclass(frozen=True)
class Limits:
    """What one listener lets its clients hold."""

    max_connections: int = 1024
    #: seconds without a request in progress before a connection is closed
    idle_timeout: float = 15.0
    #: seconds from a request's first byte to its last
    request_timeout: float = 10.0
    #: bytes of request line and headers
    max_header_bytes: int = 32 << 10
    #: seconds a TLS handshake may take
    handshake_timeout: float = 5.0
    #: connections one peer address may hold; 0: half of ``max_connections``
    max_per_peer: int = 0

    @property
    def per_peer(self) -> int:
        return self.max_per_peer or max(1, self.max_connections // 2)

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_header_bytes < 1024:
            raise ValueError("a listener needs at least 1 connection and 1 KiB of headers")
        if min(self.idle_timeout, self.request_timeout, self.handshake_timeout) <= 0:
            raise ValueError("listener timeouts must be positive")


def pick_eviction(candidates: list[tuple[str, float, Any]]) -> Any | None:
    """The connection to close to make room, of ``(peer, waiting since, connection)`` for the
    connections with no request in the application: the longest waiting of the peer that
    holds the most of them. A flood from one address evicts its own connections first, not
    the few a legitimate client (the API server, a verifier) holds."""
    if not candidates:
        return None
    held: dict[str, int] = {}
    for peer, _, _ in candidates:
        held[peer] = held.get(peer, 0) + 1
    top = max(held.values())
    return min((c for c in candidates if held[c[0]] == top), key=lambda c: c[1])[2]


#: bytes one read takes from a connection
_READ_SIZE = 64 << 10
#: failed handshakes between two full garbage collections (see _failed_handshake): 32 MiB of
#: asyncio's TLS read buffers at most
_COLLECT_EVERY = 128


class ConnectionGuard:
    """Counts one listener's connections from accept, does their TLS handshake, and makes
    room by evicting the longest waiting idle connection (see the module docstring).

    ``busy(protocol)`` says whether the application holds a request of that connection;
    ``tls`` returns the server's current context (it may rotate), or is None for plain TCP."""

    def __init__(
        self,
        limits: Limits,
        busy: Callable[[Any], bool],
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self.limits = limits
        self.busy = busy
        self.tls = tls
        self.connections: set[_Guarded] = set()
        #: one read buffer for all connections: each read is copied out before the next (one
        #: event loop), so an idle connection holds none
        self.buffer = memoryview(bytearray(_READ_SIZE))
        #: connections closed to make room, and newcomers refused with every slot busy
        self.evicted = 0
        self.refused = 0
        self._failed = 0
        self._per_peer: dict[str, int] = {}

    def _release(self, conn: _Guarded) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            left = self._per_peer.get(conn.peer, 1) - 1
            if left > 0:
                self._per_peer[conn.peer] = left
            else:
                self._per_peer.pop(conn.peer, None)

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.BaseProtocol]:
        """A protocol factory for ``loop.create_server`` (without ``ssl``: the guard does it)."""
        return lambda: _Guarded(self, inner())

    def wrap(self, protocol: asyncio.Protocol) -> asyncio.BaseProtocol:
        return _Guarded(self, protocol)

    def _failed_handshake(self) -> None:
        """A failed start_tls leaves its TLS layer (asyncio's holds a 256 KiB read buffer) in a
        reference cycle through the exception's traceback, freed only by a full collection:
        under a flood of aborted handshakes, collect every ``_COLLECT_EVERY`` of them."""
        self._failed += 1
        if self._failed >= _COLLECT_EVERY:
            self._failed = 0
            gc.collect()

    def _admit(self, conn: _Guarded) -> None:
        self.connections.add(conn)
        held = self._per_peer.get(conn.peer, 0) + 1
        self._per_peer[conn.peer] = held
        if held > self.limits.per_peer:
            # refused before any TLS work: a peer over its share pays an accept and a close
            self.refused += 1
            conn.drop()
            return
        if len(self.connections) <= self.limits.max_connections:
            return
        victim = pick_eviction(
            [(c.peer, c.since, c) for c in self.connections if c is not conn and not c.busy()]
        )
        if victim is None:
            self.refused += 1
            conn.drop()
        else:
            self.evicted += 1
            victim.drop()


class _Guarded(asyncio.BufferedProtocol):
    """One connection as the guard sees it: forwards everything to the application's
    protocol once the (optional) TLS handshake is done."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.since = 0.0
        self.peer = ""
        self._raw: asyncio.Transport | None = None
        self._attached = False
        self._early: list[bytes] = []
        self._handshaking: asyncio.Task[None] | None = None

    def busy(self) -> bool:
        return self._attached and self.guard.busy(self.inner)

    def drop(self) -> None:
        self.guard._release(self)
        if self._raw is not None:
            self._raw.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        loop = asyncio.get_running_loop()
        self._raw = cast(asyncio.Transport, transport)
        self.since = loop.time()
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.guard._admit(self)
        if self not in self.guard.connections:
            return
        if self.guard.tls is None:
            self._attach(transport)
            return
        self._raw.pause_reading()  # nothing reaches us before the TLS layer takes over
        self._handshaking = loop.create_task(self._handshake(loop, self._raw, self.guard.tls()))

    async def _handshake(
        self, loop: asyncio.AbstractEventLoop, raw: asyncio.Transport, ctx: ssl.SSLContext
    ) -> None:
        handshake = asyncio.ensure_future(
            loop.start_tls(
                raw,
                self,
                ctx,
                server_side=True,
                ssl_handshake_timeout=self.guard.limits.handshake_timeout,
            )
        )
        try:
            # start_tls swaps the transport's protocol for its TLS layer and schedules that
            # layer's connection_made and resume_reading; one turn of the loop after the swap
            # they have run, and no read has happened in between
            while raw.get_protocol() is self and not handshake.done():
                await asyncio.sleep(0)
            await asyncio.sleep(0)
            self._feed_tls(raw.get_protocol())
            tls = await handshake
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError, RuntimeError):
            handshake.cancel()
            self.drop()
            # asyncio leaves the TLS layer's transport of a failed start_tls open (and warns
            # when it is collected): close it too
            layer = raw.get_protocol()
            app = getattr(layer, "_app_transport", None) if layer is not self else None
            if app is not None:
                with contextlib.suppress(Exception):
                    app.abort()
            self.guard._failed_handshake()
            return
        if tls is None or tls.is_closing():
            self.drop()
            return
        self._attach(tls)

    def _feed_tls(self, layer: Any) -> None:
        """Hand the TLS layer what the connection sent before it took over: uvloop starts
        reading right after ``connection_made``, whatever that asked, so the ClientHello may
        have reached this protocol first."""
        if layer is self or not self._early:
            return
        early, self._early = b"".join(self._early), []
        while early:
            buf = memoryview(layer.get_buffer(len(early)))
            n = min(len(buf), len(early))
            buf[:n] = early[:n]
            layer.buffer_updated(n)
            early = early[n:]

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self._attached = True
        self.inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self.inner.data_received(data)

    # A buffered protocol: uvloop's start_tls only progresses when the transport already
    # reads into buffers, as its TLS layer does
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.guard.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.guard.buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self._attached:
            self.inner.data_received(data)
            return
        # before the TLS layer took over: the ClientHello (fed to the layer); after: what
        # came with the end of the handshake before start_tls returned (fed to the
        # application). Either way at most a handshake's or a read's worth.
        held = sum(map(len, self._early))
        if held + len(data) > _READ_SIZE:
            self.drop()
            return
        self._early.append(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self._attached else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard._release(self)
        if self._attached:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _uvicorn_protocol(limits: Limits) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol (httptools) with the idle and request deadlines and the
    header cap; the guard around it does the counting."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        bounds: ClassVar[Limits] = limits

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_bytes = 0
            self._tail = b""
            self._in_headers = False  # between a request's first byte and its headers' end
            self._receiving = False  # between a request's first byte and its last
            self.in_app = False  # the application holds a request of this connection
            self._timer: asyncio.TimerHandle | None = None
            self._arm(self.bounds.idle_timeout)

        def _arm(self, seconds: float | None, expire: Callable[[], None] | None = None) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = (
                None if seconds is None else self.loop.call_later(seconds, expire or self._close)
            )

        def _close(self) -> None:
            """Idle: a graceful close."""
            self._arm(None)
            if not self.transport.is_closing():
                self.transport.close()

        def _cut(self) -> None:
            """A request past its deadline: aborted (a closing TLS transport would go on
            reading what the peer trickles)."""
            self._arm(None)
            self.transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            self._arm(None)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return  # refused or timed out: nothing more is parsed
            if not self._receiving:
                self._receiving = self._in_headers = True
                self._head_bytes = 0
                self._tail = b""
                self._arm(self.bounds.request_timeout, self._cut)
            if self._in_headers:
                # the header bytes of this chunk: up to the blank line that ends them
                seen = self._tail + data
                end = seen.find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else end + 4 - len(self._tail)
                self._tail = seen[-3:]
                if self._head_bytes > self.bounds.max_header_bytes:
                    self._arm(None)
                    self._in_headers = False
                    msg = b"Request header fields too large"
                    self.transport.write(
                        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                        b"content-type: text/plain; charset=utf-8\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(msg), msg)
                    )
                    # abort, not close: a closing TLS transport goes on reading what the
                    # peer sends into a buffer nothing drains
                    self.transport.abort()
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._in_headers = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._receiving = False
            self.in_app = True
            self._arm(None)  # the application's own deadline holds from here
            super().on_message_complete()

        def on_response_complete(self) -> None:
            self.in_app = False
            if not self._receiving:
                self._arm(self.bounds.idle_timeout)
            super().on_response_complete()

    return BoundedHttpToolsProtocol


def uvicorn_settings(
    limits: Limits, tls: Callable[[], ssl.SSLContext] | None = None
) -> tuple[dict[str, Any], ConnectionGuard]:
    """``uvicorn.Config`` keyword arguments that apply ``limits`` (with TLS from ``tls``: do
    not pass uvicorn an ``ssl`` setting as well), and the guard that counts the connections."""
    protocol = _uvicorn_protocol(limits)
    guard = ConnectionGuard(limits, busy=lambda p: bool(getattr(p, "in_app", True)), tls=tls)

    def http(**kwargs: Any) -> asyncio.BaseProtocol:
        return guard.wrap(protocol(**kwargs))

    settings = {
        "http": http,
        "timeout_keep_alive": limits.idle_timeout,
        # the guard keeps the connection count at max_connections (one request in the
        # application per connection: uvicorn stops reading a pipelined one); uvicorn's own
        # check would answer 503 to a legitimate request instead of evicting an idler
        "limit_concurrency": None,
    }
    return settings, guard


def _server_base() -> Any:
    import uvicorn

    return uvicorn.Server


class QuietServer(_server_base()):  # type: ignore[misc]
    """``uvicorn.Server`` whose housekeeping tick runs once a second instead of ten times.

    uvicorn wakes its loop every 0.1 s to refresh the ``date`` header (once a second) and to
    notice a shutdown request. On an idle sidecar that tick was 1.7 ms of CPU a second, beside
    every diffusion pod, all of it counted against the generations it serves (0.23 ms/s with
    this class). Each tick here refreshes the header (``on_tick`` with a multiple of ten); a
    shutdown request wakes the loop at once, so stopping is as quick as before."""

    tick_seconds: ClassVar[float] = 1.0

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._wake.set)

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_seconds)
            should_exit = await self.on_tick(counter)
