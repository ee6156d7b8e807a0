"""A total deadline for one outbound HTTP call made with httpx.

httpx's timeouts bound each connect, read and write, not the call: a server trickling a byte
every second keeps a call with a 2 s timeout alive for as long as it likes. A
:class:`CallDeadline` cuts the call's own connection when its time is up (``shutdown`` wakes a
blocked read at once). It learns the connection through httpcore's ``trace`` extension, so
the client must open a connection per call (``httpx.Limits(max_keepalive_connections=0)``):
a pooled connection would be opened, and traced, by an earlier call.

    deadline = CallDeadline(seconds)
    try:
        client.get(url, extensions={"trace": deadline.trace})
    except httpx.TransportError:
        if deadline.expired.is_set(): ...  # the deadline cut it
    finally:
        deadline.cancel()
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

__all__ = ["CallDeadline"]


class CallDeadline:
    """Cuts one call's connection when its total time is up."""

    def __init__(self, seconds: float) -> None:
        self.expired = threading.Event()
        self._lock = threading.Lock()
        self._streams: list[Any] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: remember the connection the call opened."""
        if event == "connection.connect_tcp.complete":
            with self._lock:
                self._streams.append(info.get("return_value"))
                late = self.expired.is_set()
            if late:
                self._expire()

    def _expire(self) -> None:
        self.expired.set()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):  # wakes the blocked read at once
                    sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()
