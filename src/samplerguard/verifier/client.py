"""The verifier's client for one sidecar's TCP API, with bounded timeouts and typed errors.

httpx's exceptions are translated here, once: a timeout or refused connection is a
:class:`~samplerguard.errors.TemporaryError` (reported, retried next round); a 401 means the
verifier's own credentials are wrong (:class:`VerifierAuthError`); a 404 for something the
sidecar listed is the sidecar's failure to produce it.

``timeout`` is a deadline for the whole call (connect, headers, body), not per read: a sidecar
that trickles a byte at a time cannot stall a round past it. Each call opens its own
connection (no keep-alive pool), so the deadline can cut exactly that connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from samplerguard.commitment.dsse import load_public_key
from samplerguard.deadline import CallDeadline
from samplerguard.errors import MalformedInputError, SamplerGuardError, TemporaryError

__all__ = ["MAX_OPENING_BYTES", "SidecarClient", "SidecarMissingError", "VerifierAuthError"]

MAX_OPENING_BYTES = 256 << 20
MAX_JSON_BYTES = 8 << 20


class VerifierAuthError(SamplerGuardError):
    """The sidecar refused the verifier's credentials (401/403)."""


class SidecarMissingError(MalformedInputError):
    """The sidecar does not have what it listed or committed (404)."""


class SidecarClient:
    def __init__(
        self,
        url: str,
        token: Callable[[], str],
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, *, auth: bool = True, limit: int = MAX_JSON_BYTES) -> bytes:
        headers = {"Authorization": f"Bearer {self._token()}"} if auth else {}
        deadline = CallDeadline(self.timeout)
        try:
            with self._http.stream(
                "GET", path, headers=headers, extensions={"trace": deadline.trace}
            ) as resp:
                if resp.status_code in (401, 403):
                    raise VerifierAuthError(
                        f"sidecar {self.url} refused the verifier's credentials "
                        f"(HTTP {resp.status_code})"
                    )
                if resp.status_code == 404:
                    raise SidecarMissingError(f"sidecar {self.url} has no {path}")
                if resp.status_code >= 500:
                    raise TemporaryError(
                        f"sidecar {self.url} answered {path} with HTTP {resp.status_code}"
                    )
                if resp.status_code != 200:
                    raise MalformedInputError(
                        f"sidecar {self.url} answered {path} with HTTP {resp.status_code}"
                    )
                chunks, size = [], 0
                for chunk in resp.iter_bytes():
                    if deadline.expired.is_set():
                        raise httpx.ReadTimeout("the call's deadline passed")
                    size += len(chunk)
                    if size > limit:
                        raise MalformedInputError(
                            f"sidecar {self.url} sent more than {limit} bytes for {path}"
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TimeoutException:
            raise TemporaryError(
                f"sidecar {self.url} timed out after {self.timeout:.1f}s on {path}"
            ) from None
        except httpx.TransportError as exc:
            if deadline.expired.is_set():
                raise TemporaryError(
                    f"sidecar {self.url} timed out after {self.timeout:.1f}s on {path}"
                ) from None
            raise TemporaryError(
                f"sidecar {self.url} is unreachable ({type(exc).__name__}) on {path}"
            ) from None
        finally:
            deadline.cancel()

    def _json(self, path: str, *, auth: bool = True) -> dict[str, Any]:
        import json

        try:
            doc = json.loads(self._get(path, auth=auth))
        except ValueError:
            raise MalformedInputError(f"sidecar {self.url} sent non-JSON for {path}") from None
        except RecursionError:
            raise MalformedInputError(
                f"sidecar {self.url} sent JSON nested too deeply for {path}"
            ) from None
        if not isinstance(doc, dict):
            raise MalformedInputError(f"sidecar {self.url} sent a non-object for {path}")
        return doc

    def public_key(self) -> tuple[Any, dict[str, Any]]:
        doc = self._json("/v1/public-key", auth=False)
        pem = doc.get("publicKey")
        if not isinstance(pem, str):
            raise MalformedInputError(f"sidecar {self.url} publishes no public key")
        return load_public_key(pem.encode()), doc

    def trajectories(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        doc = self._json(f"/v1/trajectories?after={after}&limit={limit}")
        items = doc.get("trajectories")
        if not isinstance(items, list):
            raise MalformedInputError(f"sidecar {self.url} sent no trajectory list")
        return [i for i in items if isinstance(i, dict)]

    def abandoned_seeds(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """DRBG seeds the sidecar issued that never became a committed trajectory."""
        doc = self._json(f"/v1/seeds/abandoned?after={after}&limit={limit}")
        items = doc.get("abandoned")
        if not isinstance(items, list):
            raise MalformedInputError(f"sidecar {self.url} sent no abandoned-seed list")
        return [i for i in items if isinstance(i, dict)]

    def trajectory(self, trajectory_id: str) -> dict[str, Any]:
        return self._json(f"/v1/trajectories/{trajectory_id}")

    def transcript(self, trajectory_id: str) -> bytes:
        return self._get(f"/v1/trajectories/{trajectory_id}/transcript", limit=MAX_OPENING_BYTES)

    def opening(self, trajectory_id: str, step: int) -> bytes:
        return self._get(
            f"/v1/trajectories/{trajectory_id}/openings/{step}", limit=MAX_OPENING_BYTES
        )
