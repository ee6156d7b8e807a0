"""A real TCP server on loopback that answers every request one byte at a time: each read a
client makes is quick, the whole answer is not. For testing total call deadlines."""

from __future__ import annotations

import socket
import threading
import time


class Trickler:
    """``with Trickler(answer, every=0.3) as t: ... t.port``: each connection gets ``answer``
    a byte every ``every`` seconds, after reading its request."""

    def __init__(self, answer: bytes, every: float) -> None:
        self.answer, self.every = answer, every
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                for byte in self.answer:
                    if self._stop.is_set():
                        return
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:  # the client cut it
                        break
                    time.sleep(self.every)

    def __enter__(self) -> Trickler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(5)
