"""Kubernetes API failures as our own errors, translated once where a call enters the client.

Every component that calls the API server (operator, webhook, sidecar TokenReview, verifier
discovery, policy references) wraps the call in :func:`kube_call` or :func:`call` and branches
on these types, never on a status number:

* :class:`NotFound` (404): the object is absent.
* :class:`Gone` (410): a watch's resourceVersion expired; list again.
* :class:`Conflict` (409): a write lost a race; re-read and retry.
* :class:`Forbidden` (401, 403): permanent. Our credentials or RBAC do not allow the call, and
  retrying will not change that.
* :class:`Unavailable` (429, 5xx, or no answer at all: status 0): a :class:`TemporaryError`,
  retried after ``delay``.
* :class:`KubeApiError` itself (any other status: 400, 422, ...): permanent, the request is
  wrong.

Each carries ``what`` (the call), ``status``, ``reason`` (the API ``Status`` reason, such as
``Forbidden`` or ``AlreadyExists``) and ``message`` (the API server's explanation, cut to 300
characters; it names objects and users, never tokens or Secret data).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import TypeVar

from samplerguard.errors import SamplerGuardError, TemporaryError

__all__ = [
    "Conflict",
    "Forbidden",
    "Gone",
    "KubeApiError",
    "NotFound",
    "Unavailable",
    "call",
    "kube_call",
    "translate",
]

T = TypeVar("T")
_MAX_MESSAGE = 300
_RETRYABLE = frozenset({0, 429, 500, 502, 503, 504})


class KubeApiError(SamplerGuardError):
    """A Kubernetes API call failed. This class itself is a permanent refusal (a malformed or
    invalid request); the subclasses say more."""

    def __init__(self, what: str, *, status: int, reason: str = "", message: str = "") -> None:
        self.what = what
        self.status = status
        self.reason = reason
        self.message = message[:_MAX_MESSAGE]
        answered = f"API server answered {status}" if status else "API server unreachable"
        detail = ": ".join(p for p in (reason, self.message) if p)
        super().__init__(f"{what}: {answered}" + (f" ({detail})" if detail else ""))


class NotFound(KubeApiError):
    """404: the object does not exist."""


class Gone(KubeApiError):
    """410: the resourceVersion a watch started from has expired; list again."""


class Conflict(KubeApiError):
    """409: a write lost a race (or the object already exists); re-read and retry."""


class Forbidden(KubeApiError):
    """401 or 403: our credentials or RBAC do not allow the call. Permanent: only a change
    to the installation (a Role, a RoleBinding, a token) fixes it."""


class Unavailable(KubeApiError, TemporaryError):
    """The API server did not answer (status 0), or answered 429 or 5xx: retry after
    ``delay`` seconds."""

    def __init__(
        self, what: str, *, status: int, reason: str = "", message: str = "", delay: float = 1.0
    ) -> None:
        super().__init__(what, status=status, reason=reason, message=message)
        self.delay = delay


_BY_STATUS: dict[int, type[KubeApiError]] = {
    401: Forbidden,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
}


def _status_body(body: object) -> tuple[str, str]:
    """(reason, message) of a ``Status`` body, or empty strings."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or len(body) > 64 << 10:
        return "", ""
    try:
        doc = json.loads(body)
    except ValueError:
        return "", ""
    if not isinstance(doc, dict):
        return "", ""
    reason, message = doc.get("reason"), doc.get("message")
    return (
        reason if isinstance(reason, str) else "",
        message if isinstance(message, str) else "",
    )


def _retry_after(headers: object) -> float:
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return min(max(float(value), 1.0), 60.0)
    return 1.0


def translate(what: str, exc: BaseException) -> KubeApiError | None:
    """Our error for a failure of the Kubernetes client, or None when ``exc`` is not one
    (it then propagates unchanged)."""
    if isinstance(exc, SamplerGuardError):
        return None
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        reason, message = _status_body(exc.body)
        reason = reason or str(exc.reason or "")
        if status in _RETRYABLE:
            return Unavailable(
                what,
                status=status,
                reason=reason,
                message=message,
                delay=_retry_after(exc.headers),
            )
        return _BY_STATUS.get(status, KubeApiError)(
            what, status=status, reason=reason, message=message
        )
    if isinstance(exc, HTTPError | OSError):  # no answer: refused, reset, timed out, DNS
        return Unavailable(what, status=0, reason=type(exc).__name__)
    return None


@contextlib.contextmanager
def kube_call(what: str) -> Iterator[None]:
    """Translate the Kubernetes client's failures inside the block (see :func:`translate`)."""
    try:
        yield
    except Exception as exc:
        ours = translate(what, exc)
        if ours is None:
            raise
        raise ours from exc


def call(what: str, fn: Callable[[], T]) -> T:
    """``fn()``, with the Kubernetes client's failures translated."""
    with kube_call(what):
        return fn()
