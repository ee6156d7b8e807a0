"""The canonical tensor digest: the same bytes on CPU and GPU.

    sha256( b"sg-tensor-v1|<dtype>|<d0>x<d1>x…|" ‖ contiguous little-endian bytes )

``<dtype>`` is torch's name without the ``torch.`` prefix (``float32``, ``bfloat16``, ``int64``);
a 0-d tensor has an empty shape field. Digests are written ``sha256:<hex>``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from samplerguard.errors import MalformedInputError

__all__ = [
    "DIGEST_RE",
    "NATIVE",
    "bytes_digest",
    "module_digest",
    "output_bytes",
    "raw_digest",
    "raw_digests",
    "record_digests",
    "safetensors_digest",
    "tensor_bytes",
    "tensor_digest",
    "tensor_digests",
    "tensor_header",
]

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("samplerguard's tensor digest assumes a little-endian host")


@functools.lru_cache(maxsize=4096)
def tensor_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    return f"sg-tensor-v1|{dtype}|{'x'.join(str(d) for d in shape)}|".encode("ascii")


def raw_digest(dtype: str, shape: tuple[int, ...] | list[int], data: bytes | memoryview) -> str:
    """The tensor digest from a tensor's raw little-endian bytes, without building a tensor:
    what the sidecar computes over the bytes a frame carried. The caller vouches that ``data``
    holds exactly ``prod(shape)`` elements of ``dtype``."""
    h = hashlib.sha256(tensor_header(dtype, tuple(shape)))
    h.update(data)
    return "sha256:" + h.hexdigest()


_sha256_many: Callable[[list[tuple[bytes, memoryview]]], list[bytes]] | None
try:
    from samplerguard._digest import sha256_many as _sha256_many
except ImportError:  # built without a C compiler or OpenSSL headers: hashlib, one at a time
    _sha256_many = None

#: whether :func:`raw_digests` hashes through the compiled batch (``samplerguard._digest``)
NATIVE = _sha256_many is not None


def raw_digests(
    tensors: Sequence[tuple[str, tuple[int, ...] | list[int], bytes | memoryview]],
) -> list[str]:
    """:func:`raw_digest` of many ``(dtype, shape, data)`` at once. With the compiled module the
    GIL is released once for all of them instead of once per tensor: the sidecar hashes a
    whole ``STEPS`` frame per call, and on a small node every reacquisition of the GIL waited
    for the connection thread (8.3k step records/s with hashlib, 9.1k-9.4k with the batch, on
    the project's 2-core VM). Same digests either way."""
    if _sha256_many is None or len(tensors) > 4096:
        return [raw_digest(dtype, shape, data) for dtype, shape, data in tensors]
    digests = _sha256_many(
        [(tensor_header(dtype, tuple(shape)), memoryview(data)) for dtype, shape, data in tensors]
    )
    return ["sha256:" + d.hex() for d in digests]


_digest_records: (
    Callable[[Any, Sequence[tuple[int, tuple[tuple[bytes, int, int], ...]]]], list[str]] | None
)
try:
    from samplerguard._digest import digest_records as _digest_records
except ImportError:  # see _sha256_many
    _digest_records = None

#: one tensor of a frame body for :func:`record_digests`: its :func:`tensor_header`, and where
#: its bytes lie relative to the record's first byte
HashItem = tuple[bytes, int, int]


def record_digests(
    body: bytes | bytearray | memoryview, records: Sequence[tuple[int, tuple[HashItem, ...]]]
) -> list[str]:
    """The digests of the tensors of several records laid out in one frame body, in order: a
    record is ``(base, items)``, its tensors at ``base + offset``. One compiled call for all of
    them (the GIL released once, no Python work per tensor); the same digests as
    :func:`raw_digest` of each."""
    if _digest_records is not None and sum(len(items) for _, items in records) <= 4096:
        return _digest_records(body, records)
    view = memoryview(body).cast("B")
    out = []
    for base, items in records:
        for prefix, offset, nbytes in items:
            start = base + offset
            if base < 0 or offset < 0 or nbytes < 0 or start + nbytes > len(view):
                raise ValueError(f"{nbytes} bytes at {base} + {offset} lie outside the body")
            h = hashlib.sha256(prefix)
            h.update(view[start : start + nbytes])
            out.append("sha256:" + h.hexdigest())
    return out


def tensor_digests(tensors: Sequence[torch.Tensor]) -> list[str]:
    """:func:`tensor_digest` of several tensors, hashed in one call (see :func:`raw_digests`)."""
    return raw_digests([(_dtype_name(t), tuple(t.shape), tensor_bytes(t)) for t in tensors])


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The contiguous little-endian bytes of a tensor on any device, as one flat byte view (no
    copy when the tensor is already a contiguous host tensor). A CUDA tensor is copied to the
    host first; callers on the hot path pass host copies made with ``non_blocking=True``."""
    if not t.numel():
        return memoryview(b"")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    if t.dim() and t.dtype in _NUMPY_DTYPES and t.is_contiguous():
        return t.numpy().data.cast("B")  # the hot path: one torch call, no copy
    # A uint8 view gives the raw little-endian bytes of any dtype, bfloat16 included.
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().data


def tensor_digest(t: torch.Tensor) -> str:
    """``sha256:<hex>`` of a tensor on any device (see :func:`tensor_bytes`)."""
    return raw_digest(_dtype_name(t), tuple(t.shape), tensor_bytes(t))


_NUMPY_DTYPES = frozenset(
    {
        torch.float64,
        torch.float32,
        torch.float16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    }
)


def output_bytes(output: Any) -> bytes:
    """Canonical bytes of a pipeline output: tensors and arrays as header ‖ raw bytes (the bytes
    a trajectory's output leaf and its commitment's subject digest). Images (PIL) and lists of
    them are stacked as uint8 arrays first; an output with ``.images`` is taken by its images."""
    import numpy as np

    if hasattr(output, "images"):
        output = output.images
    if isinstance(output, list) and output and hasattr(output[0], "tobytes"):
        output = np.stack([np.asarray(im) for im in output])
    if isinstance(output, np.ndarray):
        output = torch.from_numpy(np.ascontiguousarray(output))
    if isinstance(output, torch.Tensor):
        t = output.detach().cpu().contiguous()
        head = tensor_header(str(t.dtype).removeprefix("torch."), tuple(t.shape))
        return head + t.reshape(-1).view(torch.uint8).numpy().tobytes()
    raise MalformedInputError(f"cannot take the bytes of a {type(output).__name__} output")


def bytes_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """Digest of a model's weights: SHA-256 over the RFC 8785 JSON of
    ``{parameter/buffer name: tensor digest}``. Independent of file format and device."""
    from samplerguard.commitment import jcs

    doc = {k: tensor_digest(v) for k, v in sorted(module.state_dict().items())}
    return "sha256:" + hashlib.sha256(jcs.dumps(doc)).hexdigest()


def safetensors_digest(path: str | os.PathLike[str]) -> str:
    """The weights digest of a safetensors checkpoint, computed from the file without building
    the model: equal to :func:`module_digest` of the module it loads into with
    ``strict=True`` (same names, same tensors). The sidecar's runtime-integrity check and the
    verifier's reference-model gate both use it."""
    from safetensors import SafetensorError, safe_open

    from samplerguard.commitment import jcs

    doc: dict[str, str] = {}
    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            for name in sorted(fh.keys()):
                doc[name] = tensor_digest(fh.get_tensor(name))
    except (SafetensorError, OSError) as exc:
        raise MalformedInputError(f"cannot read weights {os.fspath(path)}: {exc}") from None
    return "sha256:" + hashlib.sha256(jcs.dumps(doc)).hexdigest()
