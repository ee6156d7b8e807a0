"""Recorded request streams: where drift baselines come from and what ``drift check`` replays.

Two JSON-lines shapes are read, line by line:

* the audit log (``policy.report.ReportResult``, one per line): the request's public recipe is
  in ``properties`` (``guidance``, ``steps``, ``sampler``, ``schedule``). A request usually has
  several results (one per rule); each ``requestId`` counts once.
* plain records: ``{"guidance_scale": 7.5, "steps": 30, "schedule": "karras",
  "sampler": "euler"}``, e.g. exported from a serving log.

A line that is neither, too long, or not JSON raises :class:`MalformedInputError` naming the
file and line: a baseline built from a corrupted file must fail loudly, not quietly skew.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from samplerguard.errors import MalformedInputError
from samplerguard.telemetry.attributes import DRIFT_FEATURES

__all__ = ["MAX_LINE_BYTES", "read_request_records"]

MAX_LINE_BYTES = 64 * 1024
_SEEN_REQUESTS = 1 << 20
_AUDIT_KEYS = frozenset({"policy", "result"})


def _from_properties(props: dict[str, object]) -> dict[str, object]:
    record: dict[str, object] = {}
    for key, feature, kind in (
        ("guidance", "guidance_scale", float),
        ("steps", "steps", int),
        ("sampler", "sampler", str),
        ("schedule", "schedule", str),
    ):
        raw = props.get(key)
        if not isinstance(raw, str):
            continue
        if kind is str:
            record[feature] = raw
            continue
        try:
            record[feature] = kind(raw)
        except ValueError:
            continue
    return record


def read_request_records(
    path: str | os.PathLike[str], *, max_lines: int = 10_000_000
) -> Iterator[dict[str, object]]:
    """Yield one ``{feature: value}`` record per request from a JSON-lines file."""
    p = Path(path)
    seen: OrderedDict[str, None] = OrderedDict()
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise MalformedInputError(f"cannot read {p}: {exc.strerror}") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno > max_lines:
                raise MalformedInputError(f"{p}: more than {max_lines} lines")
            if not raw.strip():
                continue
            if len(raw) > MAX_LINE_BYTES:
                raise MalformedInputError(f"{p}:{lineno}: line longer than {MAX_LINE_BYTES} bytes")
            try:
                doc = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise MalformedInputError(f"{p}:{lineno}: not JSON ({exc})") from None
            if not isinstance(doc, dict):
                raise MalformedInputError(f"{p}:{lineno}: expected a JSON object")
            if doc.keys() >= _AUDIT_KEYS:
                props = doc.get("properties", {})
                if not isinstance(props, dict):
                    raise MalformedInputError(f"{p}:{lineno}: 'properties' must be an object")
                record = _from_properties(props)
                if not record:
                    continue  # a result about an image or a policy, not a request
                request_id = props.get("requestId")
                if isinstance(request_id, str):
                    if request_id in seen:
                        continue
                    seen[request_id] = None
                    if len(seen) > _SEEN_REQUESTS:
                        seen.popitem(last=False)
                yield record
            elif DRIFT_FEATURES & doc.keys():
                yield {k: doc[k] for k in DRIFT_FEATURES if k in doc}
            else:
                raise MalformedInputError(
                    f"{p}:{lineno}: neither an audit-log result nor a request record "
                    f"(expected one of {sorted(DRIFT_FEATURES)})"
                )
