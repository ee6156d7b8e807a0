"""Recording failed checks: the ``audit`` mode's "admit and record", and a trail for the rest.

Records are :class:`samplerguard.policy.report.ReportResult` entries (the PolicyReport result
format the operator aggregates), appended as JSON lines when an audit log is configured, and
always kept in a bounded in-memory ring for inspection.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

from samplerguard.policy.report import ReportResult, append_audit_log

__all__ = ["AuditTrail"]

log = logging.getLogger("samplerguard.webhook.audit")


class AuditTrail:
    def __init__(self, path: str | Path | None = None, *, keep: int = 1000) -> None:
        self._path = Path(path) if path else None
        self.recent: collections.deque[ReportResult] = collections.deque(maxlen=keep)

    def record(self, results: list[ReportResult]) -> None:
        if not results:
            return
        self.recent.extend(results)
        for r in results:
            log.info("%s %s %s: %s", r.result, r.policy, r.rule, r.message)
        if self._path is not None:
            try:
                append_audit_log(self._path, results)
            except OSError as exc:  # recording must not turn into a denial or a crash
                log.error("cannot append to audit log %s: %s", self._path, exc)
