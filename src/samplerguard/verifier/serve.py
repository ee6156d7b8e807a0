"""Run the verifier: its FastAPI status API under uvicorn, and the auditing loop beside it.

``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus) and ``GET /v1/status``
(counts, per-sidecar state) are open: they expose no trajectory content. ``POST /v1/rounds``
runs one round now (the demo and the tests use it instead of waiting for the interval); it
answers with the round's count. A round costs work (every sidecar is read, and discovery may
list the cluster's pods), so the route takes only the verifier's own bearer token
(``--token-file``, compared in constant time: 401 otherwise, 503 when the file is unreadable),
and one round at a time: a call while a round runs gets 409 instead of queueing.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Response

from samplerguard.errors import TemporaryError
from samplerguard.serving import Limits, uvicorn_settings
from samplerguard.telemetry.prometheus import CONTENT_TYPE
from samplerguard.telemetry.provider import current_service_metrics
from samplerguard.verifier.service import Verifier

__all__ = ["LIMITS", "create_app", "serve"]

log = logging.getLogger(__name__)

#: What clients of the status API may hold
LIMITS = Limits(max_connections=256, idle_timeout=30.0, request_timeout=10.0)


def _authorised(verifier: Verifier, authorization: str | None) -> None:
    given = ""
    if authorization and authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    try:
        expected = verifier.token()
    except TemporaryError:
        raise HTTPException(status_code=503, detail="authentication unavailable") from None
    if not given or not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status_code=401,
            detail="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="samplerguard-verifier"'},
        )


def create_app(verifier: Verifier) -> FastAPI:
    app = FastAPI(title="samplerguard verifier", docs_url=None, redoc_url=None, openapi_url=None)
    round_lock = threading.Lock()

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/readyz")
    def readyz() -> dict[str, Any]:
        return {"ready": True}

    @app.get("/metrics")
    def prometheus() -> Response:
        current = current_service_metrics()
        text = current.prometheus_text() if current is not None else ""
        return Response(content=text, media_type=CONTENT_TYPE)

    @app.get("/v1/status")
    def status() -> dict[str, Any]:
        return asdict(verifier.stats)

    @app.post("/v1/rounds")
    def run_round(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        _authorised(verifier, authorization)
        if not round_lock.acquire(blocking=False):
            raise HTTPException(status_code=409, detail="a round is already running")
        try:
            judged = verifier.run_round()
            verifier.redeliver()
        finally:
            round_lock.release()
        return {"judged": judged, **asdict(verifier.stats)}

    return app


def serve(
    verifier: Verifier, listen: tuple[str, int], ready_file: Path | None, *, loop: bool = True
) -> int:
    import uvicorn

    family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(listen)
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    app = create_app(verifier)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        if loop:
            verifier.start()
        else:
            verifier.redeliver()
        if ready_file is not None:
            import json

            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps({"url": f"http://{host}:{port}", "pid": os.getpid()}))
            os.replace(tmp, ready_file)
        try:
            yield
        finally:
            verifier.stop()
            if ready_file is not None:
                ready_file.unlink(missing_ok=True)

    app.router.lifespan_context = lifespan
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
            **uvicorn_settings(LIMITS)[0],
        )
    )
    log.info("verifier API on http://%s:%d", host, port)
    server.run(sockets=[sock])
    return 0
