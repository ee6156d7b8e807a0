"""JSON log lines: one object per record, for log pipelines that index fields.

``samplerguard --log-format json`` (or ``SAMPLERGUARD_LOG_FORMAT=json``; the chart sets it)
formats every record as ``{"time", "level", "logger", "message", ...}`` plus the attributes the
caller passed with ``extra=`` (a denial's ``component``, ``subject``, ``check``, ``reason``, see
:func:`~samplerguard.telemetry.service.log_denial`) and the exception text, if any.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["JsonFormatter"]

#: Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in doc:
                doc[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)
