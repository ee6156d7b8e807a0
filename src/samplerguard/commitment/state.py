"""Sampler state: what a diffusers scheduler carries from one step into the next.

Multistep solvers keep a history of model outputs, Heun keeps its first-order derivative and
``dt``, every scheduler keeps a step counter. The commitment binds all of it, so the verifier can
restart the solver at *any* step, including inside a multistep window.

The split, made generically for every scheduler:

* the **schedule**: tensors that ``set_timesteps`` produced and ``step`` never replaces
  (``timesteps``, ``sigmas``, ``alphas_cumprod`` …). Its digest is committed once, in the
  initial leaf; the verifier rebuilds it from the declared config and compares.
* the **state**: every other attribute of a supported kind (tensors, lists/tuples of tensors and
  scalars, scalars, ``None``), captured after each step.

Capturing is generic; *trusting* a captured state is not. The verifier checks every opened
state against the dry run of the declared class (:mod:`samplerguard.commitment.plan`) and never
lets an opened state replace a schedule attribute.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from samplerguard.commitment import jcs
from samplerguard.commitment.digest import tensor_bytes, tensor_digest
from samplerguard.commitment.jcs import json_string as _json_string
from samplerguard.errors import MalformedInputError

__all__ = [
    "Borrowed",
    "CopyMemo",
    "SamplerState",
    "ScheduleDigests",
    "borrow_or_copy",
    "capture_schedule",
    "capture_state",
    "changed_since",
    "host_copy",
    "schedule_digest",
    "state_digest",
    "version_counter",
]

Scalar = bool | int | float | str | None
Value = torch.Tensor | Scalar | list["Value"]

_SKIP = frozenset({"_internal_dict", "config"})
_MAX_ITEMS = 256  # a scheduler with a longer list attribute is not one we can bind


@dataclass(frozen=True)
class SamplerState:
    """The captured dynamic state. ``values`` maps attribute name → value; tensors are host
    copies owned by the state."""

    values: Mapping[str, Value]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flattened ``{"attr": t, "attr.0": t, …}``: how the state travels in an opening."""
        out: dict[str, torch.Tensor] = {}
        for name, value in self.values.items():
            for path, t in _walk_tensors(name, value):
                out[path] = t
        return out

    def skeleton(self) -> dict[str, Any]:
        """JSON structure with tensors replaced by ``{"tensor": "<path>"}``."""
        return {name: _skeleton(name, v) for name, v in self.values.items()}

    def wire(self, prefix: str) -> tuple[dict[str, Any], list[tuple[str, torch.Tensor]]]:
        """:meth:`skeleton` and the ``(prefix + path, tensor)`` pairs of :meth:`tensors`,
        together (the hook sends both for every step)."""
        tensors: list[tuple[str, torch.Tensor]] = []
        for name, value in self.values.items():
            tensors += [(prefix + path, t) for path, t in _walk_tensors(name, value)]
        return self.skeleton(), tensors

    def digest(self) -> str:
        """``sha256:`` over the RFC 8785 JSON of the state with tensors as their digests."""
        return state_digest(
            self.skeleton(), {p: tensor_digest(t) for p, t in self.tensors().items()}
        )

    @classmethod
    def from_parts(
        cls, skeleton: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
    ) -> SamplerState:
        """Rebuild from :meth:`skeleton` and :meth:`tensors` (as parsed from an opening)."""
        if not isinstance(skeleton, Mapping):
            raise MalformedInputError("sampler state skeleton is not a JSON object")
        values = {str(k): _from_skeleton(v, tensors, depth=0) for k, v in skeleton.items()}
        return cls(values=values)


_JSON_SCALARS = frozenset({bool, int, str})


def state_digest(skeleton: Mapping[str, Any], digests: Mapping[str, str]) -> str:
    """The state digest from its :meth:`SamplerState.skeleton` and the digests of its tensors
    (by path), without the tensors: the sidecar computes the digests from the raw frame bytes.

    The digested document is the skeleton with each ``{"tensor": path}`` replaced by
    ``{"tensor": digest}``; floats stay ``{"float": hex}``. Every tensor must be named exactly
    once."""
    if not isinstance(skeleton, Mapping):
        raise MalformedInputError("sampler state skeleton is not a JSON object")
    used: set[str] = set()
    text = _canonical_state(skeleton, digests, used) if type(skeleton) is dict else None
    if text is not None and len(used) == len(digests) and text.isascii():
        return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()
    used.clear()  # anything unusual: the general path below decides, and names the problem
    doc = {str(k): _digest_node(v, digests, used, 0) for k, v in skeleton.items()}
    if len(used) != len(digests):
        extra = sorted(set(digests) - used)[:3]
        raise MalformedInputError(f"sampler state carries tensors it does not name: {extra}")
    return "sha256:" + hashlib.sha256(jcs.dumps(doc)).hexdigest()


_MAX_SAFE_INT = 2**53 - 1


def _canonical_state(
    node: dict[str, Any], digests: Mapping[str, str], used: set[str], depth: int = 0
) -> str | None:
    """The RFC 8785 text of the digested state document, written in one pass (the sidecar
    digests a state per step record): the same bytes as ``jcs.dumps`` of what
    :func:`_digest_node` builds. None for anything off the common shapes (a non-ASCII key, a
    float outside ``{"float": hex}``, an unknown or repeated tensor, deep nesting), which the
    general path then encodes or refuses with its reason."""
    parts = []
    for key in sorted(node):
        if type(key) is not str or not key.isascii():
            return None  # JCS orders other keys by UTF-16 code units: the general path
        value = _canonical_value(node[key], digests, used, depth)
        if value is None:
            return None
        parts.append(f"{_json_string(key)}:{value}")
    return "{" + ",".join(parts) + "}"


def _canonical_value(
    value: Any, digests: Mapping[str, str], used: set[str], depth: int
) -> str | None:
    t = type(value)
    if t is int:
        return str(value) if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT else None
    if t is str:
        return _json_string(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is not dict or len(value) != 1 or depth >= 4:
        return None
    if "tensor" in value:
        path = value["tensor"]
        if type(path) is not str or path in used or path not in digests:
            return None
        used.add(path)
        digest = digests[path]
        return f'{{"tensor":{_json_string(digest)}}}' if type(digest) is str else None
    if "float" in value:
        hexed = value["float"]
        if type(hexed) is not str:
            return None
        try:
            float.fromhex(hexed)
        except ValueError:
            return None
        return f'{{"float":{_json_string(hexed)}}}'
    items = value.get("list")
    if type(items) is not list or len(items) > _MAX_ITEMS:
        return None
    out = []
    for item in items:
        text = _canonical_value(item, digests, used, depth + 1)
        if text is None:
            return None
        out.append(text)
    return '{"list":[' + ",".join(out) + "]}"


def _digest_node(node: Any, digests: Mapping[str, str], used: set[str], depth: int) -> Any:
    if node is None or type(node) in _JSON_SCALARS:
        return node
    if depth > 4:
        raise MalformedInputError("sampler state nests too deeply")
    if isinstance(node, bool | int | str):
        return node
    if isinstance(node, dict) and len(node) == 1:
        if "tensor" in node:
            path = node["tensor"]
            if not isinstance(path, str) or path not in digests or path in used:
                raise MalformedInputError(
                    f"sampler state names tensor {str(path)[:60]!r}, which is missing or repeated"
                )
            used.add(path)
            return {"tensor": digests[path]}
        if "float" in node and isinstance(node["float"], str):
            try:
                float.fromhex(node["float"])
            except ValueError:
                raise MalformedInputError(
                    f"sampler state float {node['float'][:40]!r} is bad"
                ) from None
            return node
        if "list" in node and isinstance(node["list"], list):
            if len(node["list"]) > _MAX_ITEMS:
                raise MalformedInputError("sampler state list is too long")
            return {"list": [_digest_node(v, digests, used, depth + 1) for v in node["list"]]}
    raise MalformedInputError(f"sampler state holds an unsupported value {str(node)[:60]!r}")


def _walk_tensors(path: str, value: Value) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk_tensors(f"{path}.{i}", item)


def _skeleton(path: str, value: Value) -> Any:
    if isinstance(value, torch.Tensor):
        return {"tensor": path}
    if isinstance(value, list):
        return {"list": [_skeleton(f"{path}.{i}", v) for i, v in enumerate(value)]}
    if isinstance(value, float):
        return {"float": value.hex()}  # exact, and JSON has no NaN/inf
    return value


def _from_skeleton(node: Any, tensors: Mapping[str, torch.Tensor], depth: int) -> Value:
    if depth > 4:
        raise MalformedInputError("sampler state nests too deeply")
    if node is None or isinstance(node, bool | int | str):
        return node
    if isinstance(node, dict) and set(node) == {"tensor"}:
        path = node["tensor"]
        if not isinstance(path, str) or path not in tensors:
            raise MalformedInputError(f"sampler state names tensor {path!r}, which is missing")
        return tensors[path]
    if isinstance(node, dict) and set(node) == {"float"}:
        try:
            return float.fromhex(str(node["float"]))
        except ValueError:
            raise MalformedInputError(f"sampler state float {node['float']!r} is bad") from None
    if isinstance(node, dict) and set(node) == {"list"} and isinstance(node["list"], list):
        if len(node["list"]) > _MAX_ITEMS:
            raise MalformedInputError("sampler state list is too long")
        return [_from_skeleton(v, tensors, depth + 1) for v in node["list"]]
    raise MalformedInputError(f"sampler state holds an unsupported value {str(node)[:60]!r}")


def host_copy(t: torch.Tensor) -> torch.Tensor:
    """A host copy the caller owns. From CUDA it goes into pinned memory with
    ``non_blocking=True``, so the denoising loop does not wait for it; whoever reads the copy
    must first synchronise on an event recorded after it (the hook's worker does)."""
    if t.device.type == "cpu":
        return t.detach().clone()
    buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
    buf.copy_(t.detach(), non_blocking=True)
    return buf


#: host copies of the tensors a scheduler carried at the previous capture, by ``id()``: the
#: tensor itself (holding it keeps its ``id`` from being reused), its version counter then, and
#: the copy. See :func:`capture_state`.
CopyMemo = dict[int, tuple[torch.Tensor, int, torch.Tensor]]
#: smaller tensors are copied every time: below this, a copy costs less than the bookkeeping
#: (a DPM++ 2M state capture on the CPU, memoised against copied: 2 KiB tensors 15 us against
#: 12 us; 256 KiB 25 us against 28 us; 1 MiB 64 us against 90 us)
MEMO_MIN_BYTES = 64 << 10


def version_counter(t: torch.Tensor) -> int | None:
    """The tensor's version counter (bumped by every in-place change); None for an inference
    tensor, which keeps none."""
    try:
        return int(t._version)
    except RuntimeError:
        return None


#: tensors a capture kept instead of copying, with their version counters then (see
#: :func:`capture_state`'s ``borrow``)
Borrowed = list[tuple[torch.Tensor, int]]


def _borrowed(t: torch.Tensor, borrowed: Borrowed) -> bool:
    """Note ``t`` in ``borrowed`` with its version counter when it is a host tensor that keeps
    one (True); a device or inference tensor is left to be copied (False)."""
    if not t.is_cpu:
        return False
    try:
        version = t._version
    except RuntimeError:  # an inference tensor keeps no version counter
        return False
    borrowed.append((t, version))
    return True


def borrow_or_copy(t: torch.Tensor, borrowed: Borrowed) -> torch.Tensor:
    """``t`` itself, noted in ``borrowed`` with its version counter, when ``t`` is a host tensor
    that keeps one; else a :func:`host_copy`."""
    return t if _borrowed(t, borrowed) else host_copy(t)


def changed_since(borrowed: Borrowed) -> int:
    """How many borrowed tensors were changed in place since they were borrowed."""
    return sum(1 for t, version in borrowed if version_counter(t) != version)


def _capture_value(
    value: Any,
    depth: int = 0,
    memo: CopyMemo | None = None,
    seen: CopyMemo | None = None,
    borrowed: Borrowed | None = None,
) -> tuple[bool, Value]:
    if value is None or isinstance(value, bool | int | float | str):
        return True, value
    if isinstance(value, torch.Tensor):
        if borrowed is not None and _borrowed(value, borrowed):
            return True, value
        if seen is None or value.numel() * value.element_size() < MEMO_MIN_BYTES:
            return True, host_copy(value)
        version = version_counter(value)
        # this capture's own copy first (a tensor the state names twice), then the last one's
        earlier = seen.get(id(value))
        if earlier is None and memo is not None:
            earlier = memo.get(id(value))
        if (
            earlier is not None
            and earlier[0] is value
            and version is not None
            and earlier[1] == version
        ):
            copy = earlier[2]  # the same tensor, unchanged since the last capture
        else:
            copy = host_copy(value)
        if version is not None:
            seen[id(value)] = (value, version, copy)
        return True, copy
    if isinstance(value, list | tuple) and depth < 3 and len(value) <= _MAX_ITEMS:
        items = []
        for item in value:
            ok, v = _capture_value(item, depth + 1, memo, seen, borrowed)
            if not ok:
                return False, None
            items.append(v)
        return True, items
    return False, None


def capture_schedule(
    scheduler: Any, call: Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """The schedule tensors right after ``set_timesteps``, by identity (no copies).

    Which attributes form the schedule is learnt from a *fresh* scheduler of the same class and
    config (cached): a reused scheduler may still hold tensors from its previous run, and those
    are state, not schedule. ``call`` is what the pipeline passed to ``set_timesteps`` (the
    step count alone when omitted).
    """
    if call is None:
        call = {"num_inference_steps": getattr(scheduler, "num_inference_steps", None)}
    names = _schedule_names(
        type(scheduler).__qualname__,
        type(scheduler),
        json.dumps(
            {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")},
            sort_keys=True,
            default=str,
        ),
        json.dumps(dict(call), sort_keys=True, default=str),
    )
    out = {}
    for k in names:
        v = getattr(scheduler, k, None)
        if isinstance(v, torch.Tensor):
            out[k] = v
    return out


_SCHEDULE_NAMES: dict[tuple[str, str, str], frozenset[str]] = {}


def _schedule_names(name: str, cls: Any, config_json: str, call_json: str) -> frozenset[str]:
    key = (name, config_json, call_json)
    cached = _SCHEDULE_NAMES.get(key)
    if cached is not None:
        return cached
    fresh = cls.from_config(json.loads(config_json, parse_constant=float))
    call = {k: v for k, v in json.loads(call_json).items() if v is not None}
    if call:
        fresh.set_timesteps(**call)
    names = frozenset(k for k, v in vars(fresh).items() if isinstance(v, torch.Tensor))
    if len(_SCHEDULE_NAMES) > 256:
        _SCHEDULE_NAMES.clear()
    _SCHEDULE_NAMES[key] = names
    return names


def schedule_digest(schedule: Mapping[str, torch.Tensor]) -> str:
    doc = {k: tensor_digest(v) for k, v in sorted(schedule.items())}
    return "sha256:" + hashlib.sha256(jcs.dumps(doc)).hexdigest()


class ScheduleDigests:
    """:func:`schedule_digest` that remembers the last host schedule's bytes: a server runs the
    same schedule request after request, and comparing its few KiB costs a tenth of hashing
    them and canonicalising the digests. The bytes are compared exactly (``-0.0`` is not
    ``0.0``), so the digest is always that of the tensors given. One thread at a time."""

    def __init__(self) -> None:
        self._last: tuple[dict[str, tuple[str, tuple[int, ...], bytes]], str] | None = None

    def __call__(self, schedule: Mapping[str, torch.Tensor]) -> str:
        last = self._last
        if (
            last is not None
            and last[0].keys() == schedule.keys()
            and all(_held(t, last[0][k]) for k, t in schedule.items())
        ):
            return last[1]
        digest = schedule_digest(schedule)
        if all(t.is_cpu for t in schedule.values()):
            held = {
                k: (str(t.dtype), tuple(t.shape), bytes(tensor_bytes(t)))
                for k, t in schedule.items()
            }
            self._last = (held, digest)
        return digest


def _held(t: torch.Tensor, held: tuple[str, tuple[int, ...], bytes]) -> bool:
    dtype, shape, data = held
    return (
        t.is_cpu
        and str(t.dtype) == dtype
        and tuple(t.shape) == shape
        and bytes(tensor_bytes(t)) == data
    )


#: the exact types a capture keeps as they are, without a call (a capture runs on the
#: denoising thread every step)
_PLAIN = frozenset({int, float, str, bool})


def capture_state(
    scheduler: Any,
    schedule: Mapping[str, torch.Tensor],
    memo: CopyMemo | None = None,
    *,
    borrow: Borrowed | None = None,
) -> SamplerState:
    """Everything the scheduler carries into its next step, as host copies.

    With ``memo`` (the recorder passes one per trajectory, empty at first), a tensor of at least
    ``MEMO_MIN_BYTES`` the scheduler still carries unchanged since the previous capture (the
    same object, its version counter not moved by any in-place change) reuses that capture's
    copy instead of being copied again: a multistep solver shifts its history list by one each
    step, so all but one of its model outputs were copied a step earlier (for a GPU model, a
    device-to-host copy into newly pinned memory each). ``memo`` is updated to this capture's
    tensors. Copies are never written to, so sharing one between two states is safe.

    With ``borrow``, host tensors that keep a version counter are not copied at all: the state
    holds the scheduler's tensors themselves, each noted in ``borrow`` with its version, and
    whoever reads them later must check with :func:`changed_since` that nothing changed them
    in place meanwhile (a diffusers scheduler replaces its tensors, it does not write into
    them). Device tensors, and inference tensors, which keep no version, are copied."""
    seen: CopyMemo | None = None if memo is None else {}
    values: dict[str, Value] = {}
    for name, value in vars(scheduler).items():
        if type(value) in _PLAIN or value is None:  # the common case, without a call
            values[name] = value
            continue
        if name in _SKIP or (name in schedule and value is schedule[name]):
            continue
        ok, captured = _capture_value(value, 0, memo, seen, borrow)
        if ok:
            values[name] = captured
    if memo is not None and seen is not None:
        memo.clear()
        memo.update(seen)
    return SamplerState(values=values)
