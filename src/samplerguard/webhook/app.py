"""The HTTP surface: ``/validate``, ``/mutate``, ``/healthz``, ``/readyz`` and ``/metrics``.

Status codes say whose fault a failure is. A body that is not an AdmissionReview v1 gets a
4xx (400 unparsable, 413 too large, 415 not JSON, 408 too slow to arrive): the API server
then applies the webhook's ``failurePolicy: Fail``, i.e. denies. A well-formed review always
gets 200 with an answer inside, and an object that cannot be checked is a clean denial. No
path answers 500.

The served stack is :func:`webhook_asgi`: the body limit, then ``POST /validate`` and
``POST /mutate`` answered directly from the buffered body (the hot path: this skips
Starlette's request/response objects, a third of the per-request CPU), then the FastAPI app
for everything else. The FastAPI app serves the same two endpoints through the same
:func:`handle_review`, so either path gives byte-identical answers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from samplerguard.telemetry.prometheus import CONTENT_TYPE
from samplerguard.telemetry.provider import current_service_metrics
from samplerguard.telemetry.service import ServiceMetrics, log_denial
from samplerguard.webhook.admission import Admission
from samplerguard.webhook.policy_review import review_policy
from samplerguard.webhook.review import AdmissionReview

__all__ = ["BodyLimit", "create_app", "handle_review", "webhook_asgi"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _plain(send: Send, status: int, text: str) -> None:
    body = json.dumps({"error": text}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: read the whole request body, at most ``max_bytes`` within ``timeout``
    seconds, before the application sees it; 413 and 408 otherwise. With ``admission``,
    ``POST /validate`` and ``POST /mutate`` are answered here from the buffered body."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        timeout: float,
        admission: Admission | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _plain(send, 400, "Content-Length is not a number")
                    return
                if declared > self.max_bytes:
                    await _plain(send, 413, f"body larger than {self.max_bytes} bytes")
                    return
        chunks: list[bytes] = []
        size = 0
        # One budget for the whole request: reading the body spends it too.
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # disconnected
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await _plain(send, 413, f"body larger than {self.max_bytes} bytes")
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await _plain(send, 408, f"body did not arrive within {self.timeout:g}s")
            return
        body = b"".join(chunks)
        path = scope.get("path")
        if self.admission is not None and scope["method"] == "POST" and path in _HOT:
            ctype = next((v for k, v in scope.get("headers", ()) if k == b"content-type"), b"")
            status, payload = await handle_review(
                self.admission,
                body,
                ctype.decode("latin-1"),
                mutate=path == "/mutate",
                deadline=deadline,
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


_HOT = frozenset({"/validate", "/mutate"})


def _error(text: str) -> bytes:
    return json.dumps({"error": text[:2048]}).encode()


async def handle_review(
    admission: Admission,
    body: bytes,
    content_type: str,
    *,
    mutate: bool,
    deadline: float | None = None,
) -> tuple[int, bytes]:
    """One AdmissionReview request body → (HTTP status, response body); ``deadline`` is the
    event-loop time the answer is due (see :meth:`Admission.review`)."""
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        return 415, _error(f"expected application/json, got {content_type[:64]!r}")
    try:
        review = AdmissionReview.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[:3]
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in first
        )
        return 400, _error(f"not an AdmissionReview admission.k8s.io/v1: {where}")
    request = review.request
    if request is None:
        return 400, _error("the AdmissionReview carries no request")
    instruments = _service_metrics()
    operation = "mutate" if mutate else "validate"
    with instruments.timed(instruments.admission, operation=operation) as attributes:
        answer = await admission.review(request, mutate=mutate, deadline=deadline)
        response = answer.response
        denied = response is not None and not response.allowed
        attributes["outcome"] = "denied" if denied else "allowed"
    if denied and response is not None and response.status is not None:
        log_denial(
            "webhook",
            f"{request.kind.kind} {request.namespace or ''}/{request.name or '(generated name)'}",
            response.status.reason or "Forbidden",
            response.status.message,
            operation=operation,
            uid=request.uid,
            user=request.user_info.username,
        )
    return 200, answer.to_json()


@functools.cache
def _service_metrics() -> ServiceMetrics:
    """On the global MeterProvider, which the CLI sets up in each worker (a proxy until then)."""
    return ServiceMetrics()


def webhook_asgi(admission: Admission, *, max_bytes: int, timeout: float) -> ASGIApp:
    """What uvicorn serves: the body limit and the hot path in front of :func:`create_app`."""
    return BodyLimit(
        create_app(admission), max_bytes=max_bytes, timeout=timeout, admission=admission
    )


def create_app(admission: Admission) -> FastAPI:
    """The webhook's FastAPI application (serve it through :func:`webhook_asgi`)."""
    app = FastAPI(
        title="samplerguard admission webhook",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    async def answer(request: Request, *, mutate: bool) -> Response:
        status, payload = await handle_review(
            admission,
            await request.body(),
            request.headers.get("content-type", ""),
            mutate=mutate,
        )
        return Response(payload, status_code=status, media_type="application/json")

    async def validate(request: Request) -> Response:
        return await answer(request, mutate=False)

    async def mutate(request: Request) -> Response:
        return await answer(request, mutate=True)

    async def validate_policy(request: Request) -> Response:
        status, answer_or_reason = review_policy(await request.body())
        if isinstance(answer_or_reason, str):
            return Response(
                _error(answer_or_reason), status_code=status, media_type="application/json"
            )
        return Response(
            answer_or_reason.to_json(), status_code=status, media_type="application/json"
        )

    # Plain routes: no dependency solving; the handlers parse with pydantic themselves.
    app.add_route("/validate", validate, methods=["POST"])
    app.add_route("/mutate", mutate, methods=["POST"])
    app.add_route("/validate-policy", validate_policy, methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok", media_type="text/plain")

    @app.get("/metrics")
    async def prometheus() -> Response:
        current = current_service_metrics()
        text = current.prometheus_text() if current is not None else ""
        return Response(text, media_type=CONTENT_TYPE)

    @app.get("/readyz")
    async def readyz() -> Response:
        if not admission.policies.ready:
            return Response("policies not loaded", status_code=503, media_type="text/plain")
        return Response("ok", media_type="text/plain")

    return app
