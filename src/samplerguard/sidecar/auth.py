"""Who may read commitments and openings over TCP: only the authenticated verifier.

* Local mode, :class:`TokenFileAuth`: a bearer token shared through a file (the sidecar and the
  verifier are given the same file). Compared in constant time.
* Cluster, :class:`TokenReviewAuth`: the verifier presents its projected ServiceAccount token;
  the sidecar asks the API server (``TokenReview``, with the expected audience) and accepts
  only the configured ServiceAccount usernames. Answers are cached briefly by token digest.

Failures never echo the token, and the API server being unreachable is a 503, not a pass.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from samplerguard.errors import SamplerGuardError, TemporaryError
from samplerguard.kubeapi import call

__all__ = ["Authenticator", "TokenFileAuth", "TokenReviewAuth", "UnauthorizedError"]

log = logging.getLogger(__name__)
MAX_TOKEN_BYTES = 16 << 10


class UnauthorizedError(SamplerGuardError):
    """No credentials, or credentials that do not identify the verifier (HTTP 401)."""


class Authenticator(Protocol):
    def authenticate(self, token: str | None) -> str:
        """The caller's identity, or raise :class:`UnauthorizedError`, :class:`TemporaryError`
        or (TokenReview not allowed) :class:`~samplerguard.kubeapi.Forbidden`."""


def _check_shape(token: str | None) -> str:
    if not token:
        raise UnauthorizedError("no bearer token")
    if len(token) > MAX_TOKEN_BYTES:
        raise UnauthorizedError("bearer token is oversized")
    return token


class TokenFileAuth:
    """The expected token is the file's content (whitespace stripped); re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime = -1.0
        self._token = b""
        self._load()

    def _load(self) -> bytes:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
                token = self.path.read_bytes().strip() if mtime != self._mtime else self._token
            except OSError as exc:
                # a token file gone or unreadable: every request is refused (503), none crashes
                raise TemporaryError(
                    f"token file {self.path} is unreadable ({exc.strerror or type(exc).__name__})"
                ) from None
            if mtime != self._mtime:
                if len(token) < 16:
                    raise TemporaryError(f"token file {self.path} holds fewer than 16 bytes")
                self._token, self._mtime = token, mtime
            return self._token

    def authenticate(self, token: str | None) -> str:
        given = _check_shape(token).encode()
        if not hmac.compare_digest(given, self._load()):
            raise UnauthorizedError("bearer token does not match")
        return "verifier (token file)"


class TokenReviewAuth:
    """Checks tokens with the API server's TokenReview. ``api`` is a kubernetes
    ``AuthenticationV1Api`` (built from in-cluster config when omitted)."""

    def __init__(
        self,
        allowed_subjects: tuple[str, ...],
        *,
        audience: str | None,
        api: Any = None,
        cache_seconds: float = 60.0,
    ) -> None:
        if not allowed_subjects:
            raise ValueError("TokenReview auth needs at least one allowed subject")
        self.allowed = frozenset(allowed_subjects)
        self.audience = audience
        self.cache_seconds = cache_seconds
        self._api = api
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            config.load_incluster_config()  # type: ignore[no-untyped-call]
            self._api = client.AuthenticationV1Api()
        return self._api

    def authenticate(self, token: str | None) -> str:
        token = _check_shape(token)
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            if hit[1] is None:
                raise UnauthorizedError("token was refused")
            return hit[1]
        subject = self._review(token)
        with self._lock:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = (now + self.cache_seconds, subject)
        if subject is None:
            raise UnauthorizedError("token was refused")
        return subject

    def _review(self, token: str) -> str | None:
        """The reviewed username, or None. Raises :class:`~samplerguard.kubeapi.Unavailable`
        (a :class:`TemporaryError`) when the API server does not answer, and
        :class:`~samplerguard.kubeapi.Forbidden` when this sidecar may not create
        TokenReviews (its namespace is not one of the chart's ``sidecar.namespaces``)."""
        from kubernetes import client

        spec = client.V1TokenReviewSpec(
            token=token, audiences=[self.audience] if self.audience else None
        )
        review = call(
            "TokenReview",
            lambda: self._client().create_token_review(client.V1TokenReview(spec=spec)),
        )
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            log.info("TokenReview: token not authenticated")
            return None
        username = str(status.user.username)
        if username not in self.allowed:
            log.warning("TokenReview: %s is not an allowed verifier identity", username)
            return None
        if self.audience and status.audiences and self.audience not in status.audiences:
            log.warning("TokenReview: token audiences lack %s", self.audience)
            return None
        return username
