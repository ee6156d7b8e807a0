"""The hook waits for a busy sidecar (a full listen backlog) instead of failing at connect, and
fails at once when no sidecar is there."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from samplerguard.errors import TemporaryError
from samplerguard.hook.sidecar_sink import SidecarSink


def test_a_full_backlog_is_waited_out(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(0)
    queued = []
    for _ in range(8):  # fill the backlog: further connects get EAGAIN
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect(path)
        except BlockingIOError:
            c.close()
            break
        queued.append(c)

    def drain() -> None:
        time.sleep(0.3)
        for _ in range(len(queued) + 1):
            conn, _ = server.accept()
            conn.close()

    t = threading.Thread(target=drain)
    t.start()
    start = time.monotonic()
    sock = SidecarSink(path, connect_timeout=10.0)._connect()
    waited = time.monotonic() - start
    sock.close()
    t.join()
    for c in queued:
        c.close()
    server.close()
    assert waited >= 0.2


def test_no_sidecar_fails_at_once(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(TemporaryError, match="cannot reach the sidecar"):
        SidecarSink(str(tmp_path / "absent.sock"), connect_timeout=10.0)._connect()
    assert time.monotonic() - start < 2
