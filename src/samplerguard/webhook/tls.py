"""The serving certificate, read from files and reloaded when they rotate.

cert-manager, the operator and Kubernetes Secret volumes all rotate certificates by replacing
files (a Secret volume swaps a symlink). The server keeps one listening :class:`ssl.SSLContext`
whose SNI callback hands each new handshake the context built from the newest files, so
rotation needs no restart and established connections are untouched. The callback runs for
every ClientHello, with or without a server name. A half-written pair (new cert, old key)
fails to load; the previous pair stays in service and loading is retried on the next check.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from pathlib import Path

from samplerguard.errors import MalformedInputError

__all__ = ["ReloadingCertificate"]

log = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int], tuple[int, int, int]]


def _stamp_of(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)  # follows the symlinks a Secret volume swaps
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ReloadingCertificate:
    """A server TLS context for ``certfile``/``keyfile`` that follows their rotation.

    ``check_interval`` bounds how often the files are stat'ed (at most once per interval, on a
    handshake); ``0`` checks on every handshake.
    """

    def __init__(
        self,
        certfile: str | os.PathLike[str],
        keyfile: str | os.PathLike[str],
        *,
        check_interval: float = 1.0,
    ) -> None:
        self._cert = Path(certfile)
        self._key = Path(keyfile)
        self._interval = check_interval
        self._lock = threading.Lock()
        try:
            self._stamp = self._stamps()
            self._current = self._build()
        except (OSError, ssl.SSLError) as exc:
            raise MalformedInputError(
                f"cannot load the serving certificate {self._cert} with key {self._key}: {exc}"
            ) from exc
        self._next_check = time.monotonic() + check_interval
        self._failed_stamp: _Stamp | None = None
        # The listening context: holds the first pair so a handshake never meets no
        # certificate, and switches each connection to the newest context in the callback.
        self.context = self._build()
        self.context.sni_callback = self._on_hello
        self.reloads = 0

    def _stamps(self) -> _Stamp:
        return (_stamp_of(self._cert), _stamp_of(self._key))

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.load_cert_chain(str(self._cert), str(self._key))
        return ctx

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since the last load. True if reloaded."""
        with self._lock:
            try:
                stamp = self._stamps()
            except OSError as exc:
                log.warning(
                    "serving certificate files unreadable, keeping the loaded pair: %s", exc
                )
                return False
            if stamp == self._stamp or stamp == self._failed_stamp:
                return False
            try:
                fresh = self._build()
            except (OSError, ssl.SSLError) as exc:
                # Typically a rotation caught half-way; the next change retries.
                self._failed_stamp = stamp
                log.warning("new serving certificate does not load, keeping the old one: %s", exc)
                return False
            self._current, self._stamp, self._failed_stamp = fresh, stamp, None
            self.reloads += 1
            log.info("serving certificate reloaded from %s", self._cert)
            return True

    def _on_hello(
        self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._interval
            self.reload_if_changed()
        sslobj.context = self._current
