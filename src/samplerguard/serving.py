"""Bounded HTTP listeners: what any client may hold of a service, before it authenticates.

Every service that listens on TCP (the webhook, the sidecar's API, the verifier's API, the
operator's results ingest) takes its connections through these bounds:

* **connections**: at most ``max_connections`` at once. A connection beyond that evicts the
  connection that has been waiting longest *without a request in the application* (idle, or
  still sending its request); one whose request is being handled is never evicted. Idle or
  slow clients, however many, cannot crowd out a client that sends its request at once: it
  is served, and the oldest idler makes room for it. When every connection has a request in
  the application, the newcomer is closed.
* **idle time**: a connection with no request in progress is closed after ``idle_timeout``
  seconds (from accept, and from the end of each response).
* **request time**: a request must arrive whole (headers and body) within
  ``request_timeout`` seconds of its first byte, whatever pace it trickles at.
* **header size**: at most ``max_header_bytes`` before the headers end (431, closed).
* **per-connection memory**: the parser buffers at most the header cap; uvicorn stops reading
  a body beyond 64 KiB until the application takes it, and each application bounds its body.

Bounds here are on what a connection can *hold*; what a request may *cost* (deadlines on
outbound calls, body caps) is the application's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Limits", "pick_eviction", "uvicorn_protocol", "uvicorn_settings"]


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

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_header_bytes < 1024:
            raise ValueError("a listener needs at least 1 connection and 1 KiB of headers")
        if self.idle_timeout <= 0 or self.request_timeout <= 0:
            raise ValueError("listener timeouts must be positive")


def pick_eviction(candidates: list[tuple[float, Any]]) -> Any | None:
    """The connection to close to make room: of ``(idle since, connection)`` pairs for the
    connections with no request in the application, the longest waiting."""
    if not candidates:
        return None
    return min(candidates, key=lambda pair: pair[0])[1]


def uvicorn_protocol(limits: Limits) -> type[asyncio.Protocol]:
    """A uvicorn HTTP/1.1 protocol class (httptools) that enforces ``limits``; pass it as
    ``uvicorn.Config(http=...)``."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
        bounds: ClassVar[Limits] = limits

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_bytes = 0
            self._in_headers = False  # between a request's first byte and its headers' end
            self._receiving = False  # between a request's first byte and its last
            self._in_app = False  # the application holds a request of this connection
            self._since = self.loop.time()
            self._timer: asyncio.TimerHandle | None = None
            self._arm(self.bounds.idle_timeout)
            if len(self.connections) > self.bounds.max_connections:
                self._make_room()

        def _make_room(self) -> None:
            victim = pick_eviction(
                [
                    (c._since, c)
                    for c in self.connections
                    if isinstance(c, BoundedHttpToolsProtocol) and not c._in_app and c is not self
                ]
            )
            (victim or self)._close()

        def _arm(self, seconds: float | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if seconds is None else self.loop.call_later(seconds, self._close)

        def _close(self) -> None:
            self._arm(None)
            self.connections.discard(self)  # no longer counted, though its close is pending
            if not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._arm(None)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._receiving:
                self._receiving = self._in_headers = True
                self._head_bytes = 0
                self._arm(self.bounds.request_timeout)
            if self._in_headers:
                self._head_bytes += len(data)
                if self._head_bytes > self.bounds.max_header_bytes:
                    self._arm(None)
                    self._in_headers = False
                    self.send_431_response()
                    return
            super().data_received(data)

        def send_431_response(self) -> None:
            msg = b"Request header fields too large"
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(msg), msg)
            )
            self.transport.close()

        def on_headers_complete(self) -> None:
            self._in_headers = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._receiving = False
            self._in_app = True
            self._arm(None)  # the application's own deadline holds from here
            super().on_message_complete()

        def on_response_complete(self) -> None:
            self._in_app = False
            self._since = self.loop.time()
            if not self._receiving:
                self._arm(self.bounds.idle_timeout)
            super().on_response_complete()

    return BoundedHttpToolsProtocol


def uvicorn_settings(limits: Limits) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments that apply ``limits``."""
    return {
        "http": uvicorn_protocol(limits),
        "timeout_keep_alive": limits.idle_timeout,
        # the protocol keeps the connection count at max_connections (one request in the
        # application per connection: uvicorn stops reading a pipelined one); uvicorn's own
        # check would answer 503 to a legitimate request instead of evicting an idler
        "limit_concurrency": None,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
    }
