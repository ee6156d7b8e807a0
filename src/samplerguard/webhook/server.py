"""Serving: uvicorn over HTTPS with the rotating certificate, in the foreground or a thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from samplerguard.serving import Limits, uvicorn_settings
from samplerguard.webhook.admission import Admission
from samplerguard.webhook.app import webhook_asgi
from samplerguard.webhook.config import WebhookConfig
from samplerguard.webhook.tls import ReloadingCertificate

__all__ = ["LIMITS", "WebhookServer", "serve", "uvicorn_config"]

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


#: What the webhook's clients may hold: the API server keeps its connections open between
#: reviews (idle time outlives its reuse), and idle or slow connections beyond the cap make room
#: for new ones instead of turning admissions into 503s.
LIMITS = Limits(max_connections=1024, idle_timeout=60.0, request_timeout=10.0)


def uvicorn_config(config: WebhookConfig, admission: Admission, tls: ReloadingCertificate) -> Any:
    """A ``uvicorn.Config`` serving the webhook with ``tls`` (whose context follows rotation)."""
    import uvicorn

    app = webhook_asgi(admission, max_bytes=config.max_body_bytes, timeout=config.deadline)

    # TLS is done by the connection guard (after the connection is counted, within its
    # handshake deadline), with the context that follows rotation
    settings, _ = uvicorn_settings(LIMITS, tls=lambda: tls.context)
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop=_loop(),
        lifespan="off",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,
        server_header=False,
        **settings,
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
        self._sock = _bind(config.host, config.port)
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


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _run_worker(config: WebhookConfig, build: Callable[[], Admission], sock: socket.socket) -> None:
    import uvicorn

    admission = build()
    tls = ReloadingCertificate(config.certfile, config.keyfile)
    admission.policies.start()
    try:
        uvicorn.Server(uvicorn_config(config, admission, tls)).run(sockets=[sock])
    finally:
        admission.policies.stop()


def serve(config: WebhookConfig, build: Callable[[], Admission], *, workers: int = 1) -> int:
    """Serve in the foreground until SIGTERM or SIGINT; returns the exit code.

    ``build`` makes the :class:`Admission` (and through it the policy source, verifier and
    caches). With ``workers > 1`` the listening socket is bound once and the process forks:
    each worker calls ``build`` itself, so caches, threads and watches are per process (no
    state crosses a fork), and the kernel spreads connections over the workers' accept calls.
    Signals are forwarded to the workers, which shut down gracefully.
    """
    sock = _bind(config.host, config.port)
    if workers <= 1:
        _run_worker(config, build, sock)
        return 0
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child; tested through the CLI
            code = 0
            try:
                _run_worker(config, build, sock)
            except BaseException:
                log.exception("webhook worker failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    forwarded: set[int] = set()

    def forward(signum: int, _frame: object) -> None:
        forwarded.add(signum)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = False
    for pid in children:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        # uvicorn re-raises the signal it shut down on: that is a clean stop.
        failed |= code != 0 and -code not in forwarded
    sock.close()
    return 1 if failed else 0
