"""Recording failed checks: the ``audit`` mode's "admit and record", and a trail for the rest.

Records are :class:`samplerguard.policy.report.ReportResult` entries (the PolicyReport result
format the operator aggregates), appended as JSON lines when an audit log is configured, and
always kept in a bounded in-memory ring for inspection.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from pathlib import Path
from typing import Protocol

from samplerguard.policy.report import ReportResult, append_audit_log

__all__ = ["AuditTrail", "ResultsForwarder"]

log = logging.getLogger("samplerguard.webhook.audit")


class _Poster(Protocol):
    def post(self, results: list[ReportResult]) -> int: ...


class ResultsForwarder:
    """Posts failed checks to the operator's ``/v1/results`` off the admission path.

    The operator folds them into the PolicyReports and raises a Warning Event per failure, so a
    denial shows up in ``kubectl get events`` and in the reports. One thread, a bounded queue:
    when the operator is slow or down the oldest unsent batches are dropped (and counted), never
    the admission itself delayed.
    """

    def __init__(self, client: _Poster, *, capacity: int = 256) -> None:
        self._client = client
        self._queue: queue.Queue[list[ReportResult] | None] = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="sg-results", daemon=True)
        self._thread.start()

    def submit(self, results: list[ReportResult]) -> None:
        while True:
            try:
                self._queue.put_nowait(list(results))
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:  # pragma: no cover - raced with the sender
                    pass

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            try:
                self.sent += self._client.post(batch)
            except Exception as exc:  # best effort: any failure here costs results, not admissions
                self.dropped += len(batch)
                log.warning("could not post %d result(s) to the operator: %s", len(batch), exc)

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
        close = getattr(self._client, "close", None)
        if close is not None:
            close()


class AuditTrail:
    def __init__(
        self,
        path: str | Path | None = None,
        *,
        keep: int = 1000,
        forward: ResultsForwarder | None = None,
    ) -> None:
        self._path = Path(path) if path else None
        self._forward = forward
        self.recent: collections.deque[ReportResult] = collections.deque(maxlen=keep)

    def record(self, results: list[ReportResult]) -> None:
        if not results:
            return
        self.recent.extend(results)
        for r in results:
            log.info("%s %s %s: %s", r.result, r.policy, r.rule, r.message)
        if self._forward is not None:
            self._forward.submit(results)
        if self._path is not None:
            try:
                append_audit_log(self._path, results)
            except OSError as exc:  # recording must not turn into a denial or a crash
                log.error("cannot append to audit log %s: %s", self._path, exc)
