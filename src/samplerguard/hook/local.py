"""A sink that commits in-process: signs with a local Ed25519 key and keeps records to open.

Used by tests, benchmarks and offline tools. In a pod the hook streams to the sidecar instead.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from samplerguard.commitment.opening import Opening, open_step
from samplerguard.commitment.statement import Commitment, commit
from samplerguard.commitment.trajectory import TrajectoryBuilder, TrajectoryRecord
from samplerguard.errors import MalformedInputError

__all__ = ["LocalSink"]


class LocalSink:
    """Signs commitments with ``key`` and keeps the last ``keep`` records in memory."""

    def __init__(self, key: Ed25519PrivateKey | None = None, *, keep: int = 64) -> None:
        self.key = key or Ed25519PrivateKey.generate()
        self.keep = keep
        self._records: OrderedDict[str, TrajectoryRecord] = OrderedDict()
        self._lock = threading.Lock()
        self.aborted: dict[str, str] = {}

    def start(self, request: Any) -> Any:
        return request

    def leaf(self, handle: Any, builder: TrajectoryBuilder) -> None:
        return None

    def finish(self, handle: Any, record: TrajectoryRecord) -> Commitment:
        commitment = commit(record, self.key, request_id=handle.request_id, tenant=handle.tenant)
        with self._lock:
            self._records[handle.request_id] = record
            while len(self._records) > self.keep:
                self._records.popitem(last=False)
        return commitment

    def abort(self, handle: Any, reason: str) -> None:
        if handle is not None:
            self.aborted[handle.request_id] = reason

    def record(self, request_id: str) -> TrajectoryRecord:
        with self._lock:
            try:
                return self._records[request_id]
            except KeyError:
                raise MalformedInputError(f"no trajectory {request_id!r} is kept") from None

    def opening(self, request_id: str, step: int) -> Opening:
        return open_step(self.record(request_id), request_id, step)
