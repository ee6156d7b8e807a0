"""Run the verifier: its FastAPI status API under uvicorn, and the auditing loop beside it.

``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus) and ``GET /v1/status``
(counts, per-sidecar state) are open: they expose no trajectory content. ``POST /v1/rounds``
runs one round now (the demo and the tests use it instead of waiting for the interval); it
answers with the round's count.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response

from samplerguard.telemetry.prometheus import CONTENT_TYPE
from samplerguard.telemetry.provider import current_service_metrics
from samplerguard.verifier.service import Verifier

__all__ = ["create_app", "serve"]

log = logging.getLogger(__name__)


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
    def run_round() -> dict[str, Any]:
        with round_lock:
            judged = verifier.run_round()
            verifier.redeliver()
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
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    )
    log.info("verifier API on http://%s:%d", host, port)
    server.run(sockets=[sock])
    return 0
