"""RFC 8785 (JCS) canonical JSON, fast for the documents samplerguard commits.

The ``rfc8785`` package is a faithful pure-Python encoder and the reference here, but at tens of
microseconds per small object it dominated the per-step cost of the hook's worker and of the
sidecar's ingestion. Our leaves hold ASCII keys, strings, integers, booleans, nulls, lists and
objects, and occasionally a float (a fractional timestep, a guidance scale). For those,
``json.dumps`` with sorted keys and no whitespace produces exactly the JCS bytes: ES6 and Python
escape strings the same way once ``ensure_ascii`` is off, and integers print the same. Floats
are the exception (ES6 prints ``999`` for 999.0 and ``1e-7`` for 1e-07), so any float, any
non-ASCII key (JCS sorts by UTF-16 code units) and any out-of-range integer sends the whole
document to the reference encoder. A property test checks the two agree.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

__all__ = ["dumps"]

_MAX_SAFE = 2**53 - 1
_encode = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode


def _simple(value: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, int):
        return -_MAX_SAFE <= value <= _MAX_SAFE
    if isinstance(value, list | tuple):
        return all(_simple(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(
            isinstance(k, str) and k.isascii() and _simple(v, depth + 1) for k, v in value.items()
        )
    return False  # floats and anything else: the reference encoder decides


def dumps(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value``."""
    if _simple(value):
        return _encode(value).encode("utf-8")
    return bytes(rfc8785.dumps(value))
