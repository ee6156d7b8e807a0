"""Seeds issued that never became a committed trajectory, kept where the verifier sees them.

In the DRBG modes the app cannot choose its noise, but it can ask for seeds under request ids it
names and keep only the draw it likes ("seed shopping"): ask for four, generate with the one
whose noise suits it, and let the other three lapse. Each lapsed seed is evidence, so none
disappears silently. The ledger is an append-only JSON-lines file in the sidecar's state volume:

* ``issued`` when a seed is handed out, ``taken`` when its request's START binds it;
* ``abandoned`` when a seed lapses unbound: its time to live ran out, the pending set was full,
  or the sidecar restarted before its START (an ``issued`` without a ``taken`` when the file is
  read at start).

The verifier reads the abandoned seeds (``GET /v1/seeds/abandoned``) and records each as a
``seed-health`` warning of the pod, so an auditor sees the ratio of lapsed seeds to served
requests. No seed, and nothing derived from one, is written: request id, tenant and times only.

The file is bounded: it is compacted (the open seeds and the latest abandoned ones kept) when it
passes ``max_lines``, and at most ``max_abandoned`` abandoned seeds are kept for the verifier.
A line that does not parse (a torn write at a crash) is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

__all__ = ["AbandonedSeed", "SeedLedger"]

log = logging.getLogger(__name__)

#: why a seed lapsed
EXPIRED, EVICTED, RESTARTED = "expired", "evicted", "restarted"
_MAX_LINE = 4096


class AbandonedSeed(dict[str, Any]):
    """``{"seq", "id", "tenant", "issuedAt", "abandonedAt", "reason"}`` as listed."""


class SeedLedger:
    def __init__(
        self, path: Path, *, max_abandoned: int = 10_000, max_lines: int = 200_000
    ) -> None:
        self.path = path
        self.max_abandoned = max_abandoned
        self.max_lines = max_lines
        self._lock = threading.Lock()
        #: request id -> (tenant, issued at) for seeds handed out and not yet bound
        self._open: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._abandoned: deque[AbandonedSeed] = deque(maxlen=max_abandoned)
        self._seq = 0
        self._lines = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._replay()
        now = time.time()
        for rid, (tenant, at) in list(self._open.items()):
            self._abandon_locked(rid, tenant, at, RESTARTED, now)
        self._open.clear()
        self._compact_locked()

    # -- the file ------------------------------------------------------------------------------

    def _replay(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                for n, raw in enumerate(fh, 1):
                    self._replay_line(raw, n)
        except FileNotFoundError:
            return

    def _replay_line(self, raw: bytes, n: int) -> None:
        try:
            if len(raw) > _MAX_LINE:
                raise ValueError("line too long")
            doc = json.loads(raw)
            op, rid = doc["op"], str(doc["id"])
            if op == "issued":
                self._open[rid] = (str(doc["tenant"]), float(doc["at"]))
            elif op == "taken":
                self._open.pop(rid, None)
            elif op == "abandoned":
                self._open.pop(rid, None)
                entry = AbandonedSeed(
                    seq=int(doc["seq"]),
                    id=rid,
                    tenant=str(doc["tenant"]),
                    issuedAt=float(doc["issuedAt"]),
                    abandonedAt=float(doc["abandonedAt"]),
                    reason=str(doc["reason"]),
                )
                self._abandoned.append(entry)
                self._seq = max(self._seq, entry["seq"])
            else:
                raise ValueError(f"unknown op {str(op)[:20]!r}")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            log.warning("seed ledger %s line %d skipped: %s", self.path, n, exc)

    def _append_locked(self, doc: dict[str, Any]) -> None:
        with open(self.path, "ab") as fh:
            fh.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
        self._lines += 1
        if self._lines > self.max_lines:
            self._compact_locked()

    def _compact_locked(self) -> None:
        """Rewrite the file with the open seeds and the kept abandoned ones."""
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            for entry in self._abandoned:
                fh.write(json.dumps({"op": "abandoned", **entry}).encode() + b"\n")
            for rid, (tenant, at) in self._open.items():
                fh.write(
                    json.dumps({"op": "issued", "id": rid, "tenant": tenant, "at": at}).encode()
                    + b"\n"
                )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._lines = len(self._abandoned) + len(self._open)

    # -- events --------------------------------------------------------------------------------

    def issued(self, request_id: str, tenant: str, at: float | None = None) -> None:
        at = time.time() if at is None else at
        with self._lock:
            if request_id in self._open:
                return  # the same seed handed out again before its START
            self._open[request_id] = (tenant, at)
            self._append_locked({"op": "issued", "id": request_id, "tenant": tenant, "at": at})

    def taken(self, request_id: str) -> None:
        with self._lock:
            if self._open.pop(request_id, None) is not None:
                self._append_locked({"op": "taken", "id": request_id})

    def abandoned(self, request_id: str, reason: str) -> None:
        """The seed of ``request_id`` lapsed without a START (``reason``: expired, evicted)."""
        with self._lock:
            found = self._open.pop(request_id, None)
            if found is not None:
                self._abandon_locked(request_id, found[0], found[1], reason, time.time())

    def _abandon_locked(
        self, request_id: str, tenant: str, issued_at: float, reason: str, now: float
    ) -> None:
        self._seq += 1
        entry = AbandonedSeed(
            seq=self._seq,
            id=request_id,
            tenant=tenant,
            issuedAt=issued_at,
            abandonedAt=now,
            reason=reason,
        )
        self._abandoned.append(entry)
        log.warning(
            "seed of request %s (tenant %s) abandoned: %s, never bound to a START",
            request_id,
            tenant,
            reason,
        )
        self._append_locked({"op": "abandoned", **entry})

    # -- reading -------------------------------------------------------------------------------

    def listing(self, *, after: int = 0, limit: int = 1000) -> list[AbandonedSeed]:
        with self._lock:
            return [e for e in self._abandoned if e["seq"] > after][:limit]

    @property
    def open_count(self) -> int:
        with self._lock:
            return len(self._open)
