"""Hand results to the operator: ``POST /v1/results`` (JSON lines), as the verifier and the
webhook do in a cluster.

The operator answers 200 once the results are in their PolicyReports, 401 for a bad token,
400 for a malformed batch (nothing recorded) and 503 when the API server did not take them.
:meth:`ResultsClient.post` retries 503s and network errors with backoff within a bounded
total time, then raises :class:`~samplerguard.errors.TemporaryError` so that the caller keeps
the batch (the verifier's journal) and tries again later; a 4xx raises
:class:`~samplerguard.errors.MalformedInputError` (retrying cannot help).

The token is re-read from its file on every call: projected ServiceAccount tokens rotate. So is
the CA: the operator rotates its CA and serving certificate (a new TLS Secret, which the kubelet
writes into the mounted volume), and a client that kept the CA it started with could never
deliver again. Before each attempt the CA file's identity (device, inode, size, mtime) is
compared with the one the client trusts; when it changed, the file is loaded again and new
connections verify against it. A CA file that cannot be loaded keeps the current trust (and is
logged): nothing is trusted that was not before.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from samplerguard.deadline import CallDeadline
from samplerguard.errors import MalformedInputError, TemporaryError
from samplerguard.policy.report import ReportResult

__all__ = ["ResultsClient"]

_MAX_BATCH = 5000  # the operator's MAX_RESULTS_PER_POST

log = logging.getLogger(__name__)


def _recorded(resp: httpx.Response) -> int:
    try:
        doc = resp.json()
        return int(doc["recorded"])
    except (ValueError, TypeError, KeyError, RecursionError):
        raise MalformedInputError(
            f"the operator's answer is not {{'recorded': n}}: {resp.text[:120]!r}"
        ) from None


class ResultsClient:
    """Args:
    url: e.g. ``https://samplerguard-operator.samplerguard.svc/v1/results``.
    token_file: bearer token (projected ServiceAccount token, or the local token file).
    ca_file: CA that issued the operator's certificate (``ca.crt`` of the TLS Secret), followed
    when it changes.
    timeout: seconds per request, a total deadline (connect, TLS, body and answer together: an
    operator that trickles its answer is cut); deadline: seconds for all attempts of one post.
    """

    def __init__(
        self,
        url: str,
        *,
        token_file: str | Path,
        ca_file: str | Path | None = None,
        timeout: float = 10.0,
        deadline: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._url = url
        self._token_file = Path(token_file)
        self._ca_file = Path(ca_file) if ca_file else None
        self._transport = transport
        self._timeout = timeout
        self._deadline = deadline
        self._lock = threading.Lock()
        self._ca_identity = _identity(self._ca_file) if self._ca_file is not None else None
        # a CA file that cannot be loaded at start is an error (ssl raises)
        self._client = self._new_client(
            ssl.create_default_context(cafile=str(self._ca_file)) if self._ca_file else True
        )

    def _new_client(self, verify: ssl.SSLContext | bool) -> httpx.Client:
        # a connection per request, so that the request's deadline can cut it (CallDeadline)
        return httpx.Client(
            timeout=self._timeout,
            verify=verify,
            transport=self._transport,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def _current(self) -> httpx.Client:
        """The client to post with, rebuilt on a CA file that changed (see the module)."""
        with self._lock:
            if self._ca_file is None:
                return self._client
            identity = _identity(self._ca_file)  # before reading: a swap shows up next time
            if identity is None or identity == self._ca_identity:
                return self._client
            try:
                context = ssl.create_default_context(cafile=str(self._ca_file))
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.warning(
                    "CA file %s changed but cannot be loaded (the current CA stays trusted): %s",
                    self._ca_file,
                    exc,
                )
                self._ca_identity = identity
                return self._client
            old, self._client = self._client, self._new_client(context)
            self._ca_identity = identity
            old.close()
            log.info("CA file %s changed: the operator is verified against it now", self._ca_file)
            return self._client

    def close(self) -> None:
        with self._lock:
            self._client.close()

    def __enter__(self) -> ResultsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post(self, results: Sequence[ReportResult]) -> int:
        """Send ``results`` (in batches); returns how many the operator recorded."""
        recorded = 0
        for start in range(0, len(results), _MAX_BATCH):
            batch = results[start : start + _MAX_BATCH]
            body = "".join(json.dumps(r.to_wire(), separators=(",", ":")) + "\n" for r in batch)
            recorded += self._post_once(body.encode())
        return recorded

    def _post_once(self, body: bytes) -> int:
        end = time.monotonic() + self._deadline
        delay = 0.2
        last = ""
        while True:
            try:
                token = self._token_file.read_text().strip()
            except OSError as exc:
                raise MalformedInputError(f"cannot read token {self._token_file}: {exc}") from exc
            call = CallDeadline(self._timeout)
            try:
                resp = self._current().post(
                    self._url,
                    content=body,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/x-ndjson",
                    },
                    extensions={"trace": call.trace},
                )
            except httpx.HTTPError as exc:
                cut = call.expired.is_set()
                last = (
                    f"timed out after {self._timeout:.1f}s"
                    if cut
                    else f"{type(exc).__name__}: {exc}"
                )
            else:
                if resp.status_code == 200:
                    return _recorded(resp)
                text = resp.text[:300]
                if resp.status_code in (429, 502, 503, 504):
                    last = f"HTTP {resp.status_code}: {text}"
                    retry_after = resp.headers.get("Retry-After", "")
                    if retry_after.isascii() and retry_after.isdigit():
                        delay = max(delay, float(retry_after))
                else:
                    raise MalformedInputError(
                        f"operator refused the results ({resp.status_code}): {text}"
                    )
            finally:
                call.cancel()
            if time.monotonic() + delay > end:
                raise TemporaryError(f"results not recorded by {self._url}: {last}", delay=delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime) of ``path`` through its links; None when it is absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
