"""``POST /v1/results``: where the verifier (and anything else that judges) hands results over.

Body: JSON lines, one :class:`~samplerguard.policy.report.ReportResult` per line, at most
:data:`MAX_BODY` bytes and :data:`MAX_RESULTS_PER_POST` lines. All or nothing: one bad line and
nothing is recorded (400 names the line). 200 means the results are in their PolicyReports;
503 (with ``Retry-After``) means the API server did not take them and the client must retry.

Authentication: ``Authorization: Bearer <token>``. In a cluster the token is the verifier's
projected ServiceAccount token, checked with a TokenReview and accepted only for the
configured user names; in local mode a shared token file, compared in constant time.

The listener is bounded (:mod:`samplerguard.serving`, figures in :data:`LIMITS`): connections
are counted from accept, TLS handshakes included, and idle or slow ones make room for new
ones; aiohttp closes a connection with no request in progress after ``idle_timeout`` (an
unfinished request line or header counts as none), caps the request line and each header at
8 KiB and a request at 64 headers, and the handler reads the body within ``request_timeout``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from samplerguard.errors import SamplerGuardError, TemporaryError
from samplerguard.kubeapi import KubeApiError
from samplerguard.policy.report import ReportResult
from samplerguard.serving import ConnectionGuard, Limits
from samplerguard.telemetry.prometheus import CONTENT_TYPE
from samplerguard.telemetry.provider import current_service_metrics
from samplerguard.telemetry.service import ServiceMetrics

__all__ = ["LIMITS", "MAX_BODY", "MAX_RESULTS_PER_POST", "Authenticator", "build_app"]

log = logging.getLogger("samplerguard.operator.ingest")

MAX_BODY = 4 * 1024 * 1024
MAX_RESULTS_PER_POST = 5000
_AUTH_CACHE_SECONDS = 60.0
#: What the ingest's clients may hold: a few verifier replicas post here, rarely
LIMITS = Limits(max_connections=128, idle_timeout=15.0, request_timeout=10.0)


class Authenticator:
    """Bearer-token check: a local token, or TokenReview + an allow-list of user names."""

    def __init__(
        self,
        *,
        local_token: str | None = None,
        review: Callable[[str], str | None] | None = None,
        allowed_users: tuple[str, ...] = (),
    ) -> None:
        if local_token is None and review is None:
            raise ValueError("an authenticator needs a local token or a TokenReview function")
        if local_token is not None and not local_token:
            # an empty token file would otherwise fall through to the TokenReview path
            raise ValueError("the local token is empty")
        self._local = local_token.encode() if local_token else None
        self._review = review
        self._allowed = frozenset(allowed_users)
        self._cache: dict[bytes, tuple[float, str | None]] = {}

    async def user(self, header: str | None) -> str | None:
        if not header or not header.startswith("Bearer "):
            return None
        token = header[len("Bearer ") :].strip()
        if not token or len(token) > 16384:
            return None
        if self._local is not None:
            return "local" if hmac.compare_digest(token.encode(), self._local) else None
        assert self._review is not None
        key = hashlib.sha256(token.encode()).digest()  # never keep the token itself
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        user = await asyncio.to_thread(self._review, token)
        allowed = user if user in self._allowed else None
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + _AUTH_CACHE_SECONDS, allowed)
        return allowed


def parse_body(raw: bytes) -> list[ReportResult]:
    """All lines or a ValueError naming the first bad one."""
    results: list[ReportResult] = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        if len(results) >= MAX_RESULTS_PER_POST:
            raise ValueError(f"more than {MAX_RESULTS_PER_POST} results in one request")
        try:
            results.append(ReportResult.model_validate(json.loads(line)))
        except (ValueError, ValidationError) as exc:
            first = str(exc).splitlines()[0][:300]
            raise ValueError(f"line {lineno}: not a PolicyReport result: {first}") from None
        except RecursionError:
            raise ValueError(f"line {lineno}: JSON nested too deeply") from None
    return results


def _failed(exc: SamplerGuardError) -> web.Response:
    """The answer when the API server fails us: 503 with Retry-After when a retry may pass,
    500 when it cannot (a 403: the operator's RBAC must change first)."""
    if isinstance(exc, TemporaryError):
        return web.json_response(
            {"error": str(exc)}, status=503, headers={"Retry-After": str(max(1, int(exc.delay)))}
        )
    log.error("results not recorded: %s", exc)
    return web.json_response({"error": str(exc)}, status=500)


def build_app(record: Callable[[list[ReportResult]], int], auth: Authenticator) -> web.Application:
    async def results(request: web.Request) -> web.Response:
        try:
            user = await auth.user(request.headers.get("Authorization"))
        except (TemporaryError, KubeApiError) as exc:  # the TokenReview failed
            return _failed(exc)
        if user is None:
            return web.json_response({"error": "unauthenticated"}, status=401)
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.json_response({"error": f"body over {MAX_BODY} bytes"}, status=413)
        try:
            # aiohttp's own bounded read of the whole body: client_max_size (MAX_BODY + 1)
            # refuses more, whatever Content-Length claimed (a chunked body has none).
            raw = await asyncio.wait_for(request.read(), LIMITS.request_timeout)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": f"body over {MAX_BODY} bytes"}, status=413)
        except (TimeoutError, ConnectionError):
            return web.json_response({"error": "body not received"}, status=400)
        try:
            batch = parse_body(raw)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            n = await asyncio.to_thread(record, batch)
        except (TemporaryError, KubeApiError) as exc:
            return _failed(exc)
        log.info("recorded %d result(s) from %s", n, user)
        for r in batch:
            instruments.results.add(1, {"result": r.result})
        return web.json_response({"recorded": n})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def prometheus(_: web.Request) -> web.Response:
        current = current_service_metrics()
        text = current.prometheus_text() if current is not None else ""
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    instruments = ServiceMetrics()
    app = web.Application(client_max_size=MAX_BODY + 1)  # the module global, read per app
    app.router.add_post("/v1/results", results)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", prometheus)
    return app


async def serve(
    app: web.Application, host: str, port: int, tls: ssl.SSLContext | None
) -> web.AppRunner:
    runner = web.AppRunner(
        app,
        access_log=None,
        # aiohttp arms it at accept as well: an idle or half-sent request is closed
        keepalive_timeout=LIMITS.idle_timeout,
        max_line_size=8190,
        max_field_size=8190,
        max_headers=64,
    )
    await runner.setup()
    site = BoundedSite(runner, host, port, tls)
    await site.start()
    return runner


def _in_handler(protocol: Any) -> bool:
    """Whether aiohttp is handling a request of this connection (never evicted then)."""
    return bool(getattr(protocol, "_request_in_progress", True))


class BoundedSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`ConnectionGuard` (which also does
    the TLS handshake, so connections are counted from accept)."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(runner)
        self._host, self._port = host, port
        self.guard = ConnectionGuard(
            LIMITS, busy=_in_handler, tls=None if tls is None else (lambda: tls)
        )
        self._scheme = "http" if tls is None else "https"

    @property
    def name(self) -> str:
        return f"{self._scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.factory(server), self._host, self._port, backlog=self._backlog
        )


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx
