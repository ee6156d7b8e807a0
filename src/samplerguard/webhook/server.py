"""Serving: uvicorn over HTTPS with the rotating certificate, in the foreground or a thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from samplerguard.webhook.admission import Admission
from samplerguard.webhook.app import webhook_asgi
from samplerguard.webhook.config import WebhookConfig
from samplerguard.webhook.tls import ReloadingCertificate

__all__ = ["WebhookServer", "uvicorn_config"]

log = logging.getLogger(__name__)


def _loop() -> str:
    forced = os.environ.get("SAMPLERGUARD_WEBHOOK_LOOP")
    if forced in ("asyncio", "uvloop"):
        return forced
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return "asyncio"
    return "uvloop"


def _http() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover
        return "h11"
    return "httptools"


def uvicorn_config(config: WebhookConfig, admission: Admission, tls: ReloadingCertificate) -> Any:
    """A ``uvicorn.Config`` serving the webhook with ``tls`` (whose context follows rotation)."""
    import uvicorn

    app = webhook_asgi(admission, max_bytes=config.max_body_bytes, timeout=config.deadline)

    def tls_context(_cfg: Any, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return tls.context

    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        ssl_context_factory=tls_context,
        loop=_loop(),
        http=_http(),
        lifespan="off",
        access_log=False,
        log_config=None,
        # The API server keeps connections open; outlive its idle reuse.
        timeout_keep_alive=60,
        # Bounds the work queued at once; beyond it uvicorn answers 503 at once.
        limit_concurrency=2048,
        timeout_graceful_shutdown=5,
        server_header=False,
    )


class WebhookServer:
    """The webhook on a background thread (tests, benchmarks, ``samplerguard demo``).

    ``with WebhookServer(config, admission, tls) as srv: srv.url`` binds ``config.host`` on
    ``config.port`` (``0`` picks a free port) and stops the server on exit.
    """

    def __init__(
        self, config: WebhookConfig, admission: Admission, tls: ReloadingCertificate
    ) -> None:
        import uvicorn

        self.config = config
        self.admission = admission
        self.tls = tls
        self._server = uvicorn.Server(uvicorn_config(config, admission, tls))
        self._sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((config.host, config.port))
        self.port: int = self._sock.getsockname()[1]
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"https://{host}:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported by start()
            self._error = exc

    def start(self, timeout: float = 10.0) -> WebhookServer:
        self._thread = threading.Thread(target=self._run, name="samplerguard-webhook", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"webhook server did not start: {self._error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("webhook server did not start in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
