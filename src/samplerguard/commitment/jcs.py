"""RFC 8785 (JCS) canonical JSON, fast for the documents samplerguard commits.

The ``rfc8785`` package is a faithful pure-Python encoder and the reference here, but at tens of
microseconds per small object it dominated the per-step cost of the hook's worker and of the
sidecar's ingestion. Our leaves hold ASCII keys, strings, integers, booleans, nulls, lists and
objects, and occasionally a float (a fractional timestep, a guidance scale). For those,
``json.dumps`` with sorted keys and no whitespace produces exactly the JCS bytes: ES6 and Python
escape strings the same way once ``ensure_ascii`` is off, and integers print the same. Floats
print the same when they are not integral and at least 1e-4 in magnitude (Python's ``repr``
and ES6 both give the shortest round-tripping digits, in fixed notation there). ES6 prints
``999`` for 999.0: integral floats below 2**53 are encoded as the integers they equal. Other
floats (``1e-7``, which ES6 prints as ``1e-7`` and Python as ``1e-07``), any non-ASCII key (JCS
sorts by UTF-16 code units) and any out-of-range integer send the whole document to the
reference encoder. Property tests check the two agree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

import rfc8785

__all__ = ["dumps", "json_string", "number"]

_MAX_SAFE = 2**53 - 1
_encode: Callable[[Any], str] = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode


def _unsupported(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


if c_make_encoder is not None:
    # The same C encoder JSONEncoder.encode builds on every call, built once: a leaf or a
    # sampler state took 2.8 us to encode, 1.3 us of which was building it. No circular-reference
    # markers: every document here is parsed JSON or built by samplerguard (a cycle would end in
    # RecursionError instead of ValueError).
    _c_encode = c_make_encoder(
        None, _unsupported, encode_basestring, None, ":", ",", True, False, False
    )

    def _encode(value: Any) -> str:
        return "".join(_c_encode(value, 0))


#: the RFC 8785 text of one string (quoted; ES6 and Python's JSON escape strings alike once
#: ``ensure_ascii`` is off)
json_string: Callable[[str], str] = encode_basestring


_LEAF_TYPES = (str, bool, type(None))


def _simple(value: Any, depth: int = 0) -> bool:
    # Exact type checks first (the hot path: leaves and sampler states); subclasses of the JSON
    # types take the isinstance route below.
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is dict:
        if depth > 32:
            return False
        for k, v in value.items():
            if type(k) is not str or not k.isascii():
                return False
            if type(v) not in _LEAF_TYPES and not _simple(v, depth + 1):
                return False
        return True
    if t is int:
        return bool(-_MAX_SAFE <= value <= _MAX_SAFE)
    if t is list or t is tuple:
        if depth > 32:
            return False
        return all(type(v) in _LEAF_TYPES or _simple(v, depth + 1) for v in value)
    if t is float:
        return _plain_float(value)
    if isinstance(value, str | bool):
        return True
    if isinstance(value, int):
        return -_MAX_SAFE <= value <= _MAX_SAFE
    if isinstance(value, float):
        return _plain_float(value)
    if isinstance(value, list | tuple | dict):
        return depth <= 32 and _simple(
            dict(value) if isinstance(value, dict) else list(value), depth
        )
    return False  # anything else: the reference encoder decides


def _plain_float(value: float) -> bool:
    """True when ``repr`` prints ``value`` exactly as ES6's Number::toString does."""
    return math.isfinite(value) and not value.is_integer() and abs(value) >= 1e-4


def number(value: int | float) -> str:
    """The RFC 8785 text of one number (integral floats print as integers, as in ES6)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a number: {value!r}")
    if isinstance(value, int) and -_MAX_SAFE <= value <= _MAX_SAFE:
        return str(value)
    if isinstance(value, float) and _plain_float(value):
        return repr(value)
    return bytes(rfc8785.dumps(value)).decode("ascii")


def _integral_floats_as_ints(value: Any, depth: int = 0) -> Any:
    """A copy with every integral float below 2**53 as an int: ES6 prints those as integers,
    and below 2**53 the int's digits are exactly ES6's (recipes carry many, ``1.0`` and
    ``1000.0`` in scheduler configs)."""
    if depth > 32:
        return value
    t = type(value)
    if t is float and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if t is dict:
        return {k: _integral_floats_as_ints(v, depth + 1) for k, v in value.items()}
    if t is list or t is tuple:
        return [_integral_floats_as_ints(v, depth + 1) for v in value]
    return value


def dumps(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value``."""
    if _simple(value):
        return _encode(value).encode("utf-8")
    plain = _integral_floats_as_ints(value)
    if _simple(plain):
        return _encode(plain).encode("utf-8")
    return bytes(rfc8785.dumps(value))
