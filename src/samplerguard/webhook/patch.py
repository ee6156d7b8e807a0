"""RFC 6902 JSONPatch text for admission answers, with memoised parts serialised once.

A mutation patch carries the injected containers (the sidecar, the hook's init container): the
same few kilobytes of JSON in every answer, memoised per configuration and image. Encoding
them was the largest single cost of a cached mutation, so they are :class:`JsonFragment`
objects that carry their own text, and :func:`patch_json` splices that text in. The output is
byte for byte what ``json.dumps(ops, separators=(",", ":"))`` gives.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["JsonFragment", "patch_json"]

_COMPACT = (",", ":")


class JsonFragment(dict[str, Any]):
    """A JSON object serialised once, at creation. It is shared by many patches: never
    mutate one (its text would no longer match)."""

    __slots__ = ("text",)

    def __init__(self, value: Mapping[str, Any]) -> None:
        super().__init__(value)
        self.text = json.dumps(self, separators=_COMPACT)


def _fragment_text(value: Any) -> str | None:
    """The memoised text of a fragment or of a non-empty list of fragments, else None."""
    if isinstance(value, JsonFragment):
        return value.text
    if isinstance(value, list) and value and all(isinstance(v, JsonFragment) for v in value):
        return "[" + ",".join(v.text for v in value) + "]"
    return None


def patch_json(ops: Sequence[dict[str, Any]]) -> str:
    """The compact JSON text of a list of patch operations. Runs of plain operations are
    encoded in one call; an operation whose ``value`` (its last member) is a fragment gets the
    fragment's text."""
    parts: list[str] = []
    plain: list[dict[str, Any]] = []
    for op in ops:
        text = _fragment_text(op.get("value"))
        if text is None or len(op) < 2 or next(reversed(op)) != "value":
            plain.append(op)
            continue
        if plain:
            parts.append(json.dumps(plain, separators=_COMPACT)[1:-1])
            plain = []
        head = json.dumps({k: v for k, v in op.items() if k != "value"}, separators=_COMPACT)
        parts.append(f'{head[:-1]},"value":{text}}}')
    if plain:
        parts.append(json.dumps(plain, separators=_COMPACT)[1:-1])
    return "[" + ",".join(parts) + "]"
