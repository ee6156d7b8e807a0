"""Every request id this sidecar ever committed, kept across evictions and restarts.

The store forgets a trajectory when it expires or is evicted; without a ledger a provider could
then commit another trajectory under the same request id (a replay the verifier would skip as
already judged). The ledger keeps a 128-bit SHA-256 prefix of each id in an append-only file
beside the store, loads it at start, and refuses an id it has seen. An id is claimed when its
trajectory is committed, so a refused or interrupted stream can be retried under its id; at
start the ledger also takes in every trajectory the store holds. It is bounded: past
``max_ids`` it refuses every new request (fail closed) until the operator rotates the sidecar's
key and store, and says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

from samplerguard.errors import MalformedInputError

__all__ = ["LEDGER_NAME", "RequestIdLedger"]

LEDGER_NAME = "request-ids.log"
_ENTRY = 33  # 32 hex characters and a newline

log = logging.getLogger(__name__)


class RequestIdLedger:
    def __init__(self, path: Path, *, max_ids: int = 4_000_000) -> None:
        self.path = path
        self.max_ids = max_ids
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        if path.exists():
            data = path.read_bytes()
            usable = len(data) - len(data) % _ENTRY  # a torn last line from a crash is dropped
            for i in range(0, usable, _ENTRY):
                self._seen.add(data[i : i + 32].decode("ascii", "replace"))
            if usable != len(data):
                log.warning("request-id ledger: dropping a torn last entry")
                with path.open("r+b") as fh:
                    fh.truncate(usable)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @staticmethod
    def _key(request_id: str) -> str:
        return hashlib.sha256(request_id.encode()).hexdigest()[:32]

    def check(self, request_id: str) -> None:
        """:class:`MalformedInputError` if ``request_id`` was ever committed here, or if the
        ledger is full (fail closed)."""
        key = self._key(request_id)
        with self._lock:
            if key in self._seen:
                raise MalformedInputError(
                    f"request id {request_id[:64]!r} was already committed by this sidecar "
                    "(a request id is committed once, ever: a replay is refused)"
                )
            if len(self._seen) >= self.max_ids:
                raise MalformedInputError(
                    f"the request-id ledger holds {self.max_ids} ids, its cap: rotate the "
                    "sidecar's key and store to accept new requests"
                )

    def remember(self, request_id: str) -> None:
        """Record ``request_id`` if it is not recorded yet (idempotent)."""
        key = self._key(request_id)
        with self._lock:
            if key in self._seen:
                return
            os.write(self._fd, (key + "\n").encode("ascii"))
            self._seen.add(key)

    def __contains__(self, request_id: str) -> bool:
        with self._lock:
            return self._key(request_id) in self._seen

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def close(self) -> None:
        os.close(self._fd)
