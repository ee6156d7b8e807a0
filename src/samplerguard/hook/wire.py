"""The hook ↔ sidecar wire format: length-prefixed binary frames over a Unix stream socket.

One frame::

    b"SG" | version u8 | kind u8 | header length u32 | body length u64      (16 bytes, big-endian)
    header: UTF-8 JSON object, at most MAX_HEADER_BYTES
    body:   the raw little-endian bytes of the tensors the header lists, back to back

The header's ``tensors`` entry lists ``[name, dtype, shape, nbytes]`` in body order, so the
receiver maps each tensor onto the body without copying (:func:`torch.frombuffer`). Tensor
bytes are never base64-encoded or pickled; a 64 KB latent costs one ``sendmsg`` and one
``recv_into``.

One trajectory is one connection: ``START`` (answered, so the hook learns at once whether the
sidecar accepts the request) → ``STEP``… → ``FINAL`` → ``FINISH`` (answered with the signed
commitment), or ``ABORT``. Steps are not answered: the stream is pipelined, and when the
sidecar falls behind, the kernel's socket buffer fills and ``sendall`` blocks the hook's
*worker* thread, never the denoising loop.

Both ends live here, so the format has one definition. The module imports only the standard
library and torch; the sidecar imports it from the hook (the lower layer).
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from samplerguard.errors import MalformedInputError

__all__ = [
    "DTYPES",
    "FRAME_ABORT",
    "FRAME_FINAL",
    "FRAME_FINISH",
    "FRAME_HELLO",
    "FRAME_REPLY",
    "FRAME_START",
    "FRAME_STEP",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "PREFIX",
    "WIRE_VERSION",
    "Frame",
    "WireClosedError",
    "decode_tensors",
    "encode_frame",
    "read_frame",
    "send_frame",
    "tune_socket",
]

WIRE_VERSION = 1
PREFIX = struct.Struct("!2sBBIQ")
MAGIC = b"SG"
MAX_HEADER_BYTES = 1 << 20
#: Per-frame body cap. A step frame carries one latent, the sampler state and the step noise;
#: 256 MiB holds an SDXL-sized batch with room to spare.
MAX_BODY_BYTES = 256 << 20
MAX_TENSORS = 1024

FRAME_HELLO = 1
FRAME_START = 2
FRAME_STEP = 3
FRAME_FINAL = 4
FRAME_FINISH = 5
FRAME_ABORT = 6
FRAME_REPLY = 7
_KINDS = {FRAME_HELLO, FRAME_START, FRAME_STEP, FRAME_FINAL, FRAME_FINISH, FRAME_ABORT, FRAME_REPLY}

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


_ITEMSIZE = {name: torch.empty((), dtype=dt).element_size() for name, dt in DTYPES.items()}
#: Socket buffers large enough for a few 64 KB step records: fewer wake-ups on both sides.
SOCKET_BUFFER = 4 << 20


def tune_socket(sock: socket.socket) -> None:
    """Enlarge the kernel buffers (best effort; the kernel may cap them)."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        # a kernel that refuses keeps its default
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)


class WireClosedError(MalformedInputError):
    """The peer closed the connection (cleanly between frames, or mid-frame)."""


@dataclass(frozen=True)
class Frame:
    kind: int
    header: dict[str, Any]
    body: bytearray


def _raw(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy().data).cast("B")


def encode_frame(
    kind: int,
    header: Mapping[str, Any],
    tensors: Sequence[tuple[str, torch.Tensor]] = (),
) -> list[bytes | memoryview]:
    """The frame as a list of buffers for ``socket.sendmsg`` (tensor bytes are not copied)."""
    if len(tensors) > MAX_TENSORS:
        raise MalformedInputError(f"a frame carries at most {MAX_TENSORS} tensors")
    specs = []
    buffers: list[bytes | memoryview] = []
    size = 0
    for name, t in tensors:
        buf = _raw(t)
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise MalformedInputError(f"tensor {name!r} has unsupported dtype {dtype}")
        specs.append([name, dtype, list(t.shape), buf.nbytes])
        buffers.append(buf)
        size += buf.nbytes
    doc = dict(header)
    doc["tensors"] = specs
    head = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if len(head) > MAX_HEADER_BYTES:
        raise MalformedInputError(f"frame header is {len(head)} bytes, over {MAX_HEADER_BYTES}")
    if size > MAX_BODY_BYTES:
        raise MalformedInputError(f"frame body is {size} bytes, over {MAX_BODY_BYTES}")
    return [PREFIX.pack(MAGIC, WIRE_VERSION, kind, len(head), size), head, *buffers]


def send_frame(
    sock: socket.socket,
    kind: int,
    header: Mapping[str, Any],
    tensors: Sequence[tuple[str, torch.Tensor]] = (),
) -> None:
    """Send one frame; blocks while the peer's receive buffer is full (the backpressure)."""
    parts = [memoryview(p).cast("B") for p in encode_frame(kind, header, tensors) if len(p)]
    while parts:
        # sendmsg takes at most IOV_MAX buffers and may send only part of them
        sent = sock.sendmsg(parts[:512])
        while sent and parts:
            if sent >= parts[0].nbytes:
                sent -= parts[0].nbytes
                parts.pop(0)
            else:
                parts[0] = parts[0][sent:]
                sent = 0


def _recv_exact(sock: socket.socket, buf: memoryview, *, first: bool) -> None:
    got = 0
    while got < len(buf):
        n = sock.recv_into(buf[got:])
        if n == 0:
            if first and got == 0:
                raise WireClosedError("the peer closed the connection")
            raise WireClosedError(f"the peer closed the connection mid-frame ({got} bytes read)")
        got += n


def read_frame(sock: socket.socket, *, max_body: int = MAX_BODY_BYTES) -> Frame:
    """Read one frame. Raises :class:`WireClosedError` at end of stream and
    :class:`MalformedInputError` for anything that is not a well-formed frame within bounds."""
    prefix = bytearray(PREFIX.size)
    _recv_exact(sock, memoryview(prefix), first=True)
    magic, version, kind, head_len, body_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise MalformedInputError(f"not a samplerguard frame (magic {bytes(magic)!r})")
    if version != WIRE_VERSION:
        raise MalformedInputError(f"wire version {version} is not supported ({WIRE_VERSION} is)")
    if kind not in _KINDS:
        raise MalformedInputError(f"unknown frame kind {kind}")
    if head_len > MAX_HEADER_BYTES:
        raise MalformedInputError(f"frame header of {head_len} bytes exceeds {MAX_HEADER_BYTES}")
    if body_len > max_body:
        raise MalformedInputError(f"frame body of {body_len} bytes exceeds the {max_body} cap")
    head = bytearray(head_len)
    _recv_exact(sock, memoryview(head), first=False)
    body = bytearray(body_len)
    _recv_exact(sock, memoryview(body), first=False)
    try:
        header = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        raise MalformedInputError("frame header is not JSON") from None
    if not isinstance(header, dict):
        raise MalformedInputError("frame header is not a JSON object")
    return Frame(kind=kind, header=header, body=body)


def decode_tensors(frame: Frame) -> dict[str, torch.Tensor]:
    """Map the frame's body onto tensors (views of the body, no copy), checking that the listed
    sizes add up exactly to the body."""
    specs = frame.header.get("tensors", [])
    if not isinstance(specs, list) or len(specs) > MAX_TENSORS:
        raise MalformedInputError("frame header 'tensors' is not a list within bounds")
    out: dict[str, torch.Tensor] = {}
    offset = 0
    view = memoryview(frame.body)
    for spec in specs:
        if not (isinstance(spec, list) and len(spec) == 4):
            raise MalformedInputError("frame tensor entry is not [name, dtype, shape, nbytes]")
        name, dtype_name, shape, nbytes = spec
        if not isinstance(name, str) or not 0 < len(name) <= 256 or name in out:
            raise MalformedInputError(f"frame tensor name {str(name)[:40]!r} is bad or repeated")
        dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise MalformedInputError(f"tensor {name!r} has unsupported dtype {dtype_name!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise MalformedInputError(f"tensor {name!r} has a malformed shape")
        itemsize = _ITEMSIZE[dtype_name]
        if not isinstance(nbytes, int) or nbytes != math.prod(shape) * itemsize:
            raise MalformedInputError(f"tensor {name!r}: {nbytes!r} bytes do not fit its shape")
        if offset + nbytes > len(view):
            raise MalformedInputError(f"frame body is truncated at tensor {name!r}")
        if nbytes == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(view[offset : offset + nbytes], dtype=dtype).reshape(shape)
        offset += nbytes
    if offset != len(view):
        raise MalformedInputError(
            f"frame body carries {len(view) - offset} bytes beyond the listed tensors"
        )
    return out
