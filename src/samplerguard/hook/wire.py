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
sidecar accepts the request) → ``STEP``/``STEPS``… → ``FINAL`` → ``FINISH`` (answered with the
signed commitment), or ``ABORT``. A ``STEPS`` frame carries up to ``MAX_STEPS_PER_FRAME`` step
records: its header's ``steps`` lists each record (``index``, ``timestep``, ``state`` and its
own ``tensors``) and the body holds the records' tensors back to back, so one header, one system
call and one hand-off serve a batch of steps. Steps are not answered: the stream is pipelined,
and when the sidecar falls behind, the kernel's socket buffer fills and ``sendall`` blocks the
hook's *worker* thread, never the denoising loop.

Both ends live here, so the format has one definition. The module imports only the standard
library, torch and :func:`~samplerguard.commitment.digest.tensor_bytes`; the sidecar imports it
from the hook (the lower layer).
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import struct
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy
import torch

from samplerguard.commitment.digest import tensor_bytes
from samplerguard.errors import MalformedInputError

# The sidecar parses every frame header with orjson (a dependency of the package: 11 us against
# json's 26 us for the 3 KiB header of 8 DPM++ 2M step records, and strict JSON: no NaN or
# Infinity literals, no lone surrogates).
# The hook's copy in an app container carries no compiled modules and reads its replies with
# json; both give the same document for any header a hook sends.
# The hook writes the per-step (STEPS) headers with orjson where it has it: 4 us against json's
# 37 us for 8 DPM++ 2M step records. Their only floats are timesteps, which the sink checks are
# finite first (orjson would write NaN as null); other frames, once per trajectory, keep json
# and its refusal of NaN.
_fast_loads: Callable[[bytes | bytearray], Any] | None
_fast_dumps: Callable[[Any], bytes] | None
try:
    from orjson import JSONDecodeError as _FastDecodeError
    from orjson import dumps as _fast_dumps
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - the hook's pure-Python tree
    _fast_loads = _fast_dumps = None

__all__ = [
    "DTYPES",
    "FRAME_ABORT",
    "FRAME_FINAL",
    "FRAME_FINISH",
    "FRAME_HELLO",
    "FRAME_REPLY",
    "FRAME_SEED",
    "FRAME_START",
    "FRAME_STEP",
    "FRAME_STEPS",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_STEPS_PER_FRAME",
    "PREFIX",
    "WIRE_VERSION",
    "Frame",
    "FrameReader",
    "ReceiveBuffers",
    "TensorSpec",
    "WireClosedError",
    "decode_tensors",
    "encode_frame",
    "encode_steps",
    "listing_specs",
    "read_frame",
    "send_frame",
    "send_parts",
    "tensor_specs",
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
FRAME_STEPS = 8
#: the hook asks for its request's seed before generating (DRBG modes, sidecar-held secret)
FRAME_SEED = 9
_KINDS = {
    FRAME_HELLO,
    FRAME_START,
    FRAME_STEP,
    FRAME_FINAL,
    FRAME_FINISH,
    FRAME_ABORT,
    FRAME_REPLY,
    FRAME_STEPS,
    FRAME_SEED,
}
#: Step records in one ``STEPS`` frame.
MAX_STEPS_PER_FRAME = 64

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
_DTYPE_NAMES = {dt: name for name, dt in DTYPES.items()}
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
    #: the tensor bytes; from :class:`FrameReader`, a read-only-by-contract view into its
    #: receive buffer (never overwritten while referenced)
    body: bytearray | memoryview


def _tensor_buffers(
    tensors: Sequence[tuple[str, torch.Tensor]],
) -> tuple[list[list[Any]], list[memoryview], int]:
    if len(tensors) > MAX_TENSORS:
        raise MalformedInputError(f"a frame carries at most {MAX_TENSORS} tensors")
    specs = []
    buffers: list[memoryview] = []
    size = 0
    for name, t in tensors:
        dtype = _DTYPE_NAMES.get(t.dtype)
        if dtype is None:
            shown = str(t.dtype).removeprefix("torch.")
            raise MalformedInputError(f"tensor {name!r} has unsupported dtype {shown}")
        buf = tensor_bytes(t)
        specs.append([name, dtype, list(t.shape), buf.nbytes])
        buffers.append(buf)
        size += buf.nbytes
    return specs, buffers, size


def _frame(
    kind: int,
    doc: Mapping[str, Any],
    buffers: Sequence[bytes | memoryview],
    size: int,
    *,
    finite: bool = False,
) -> list[bytes | memoryview]:
    """``finite``: the caller vouches that ``doc`` holds no NaN or infinity (orjson may write
    it)."""
    head = _dumps(doc, finite)
    if len(head) > MAX_HEADER_BYTES:
        raise MalformedInputError(f"frame header is {len(head)} bytes, over {MAX_HEADER_BYTES}")
    if size > MAX_BODY_BYTES:
        raise MalformedInputError(f"frame body is {size} bytes, over {MAX_BODY_BYTES}")
    return [PREFIX.pack(MAGIC, WIRE_VERSION, kind, len(head), size), head, *buffers]


def _dumps(doc: Mapping[str, Any], finite: bool) -> bytes:
    if finite and _fast_dumps is not None:
        try:
            return _fast_dumps(doc)
        except TypeError:  # what orjson does not take (an integer beyond 64 bits): json decides
            pass
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def encode_frame(
    kind: int,
    header: Mapping[str, Any],
    tensors: Sequence[tuple[str, torch.Tensor]] = (),
) -> list[bytes | memoryview]:
    """The frame as a list of buffers for ``socket.sendmsg`` (tensor bytes are not copied)."""
    specs, buffers, size = _tensor_buffers(tensors)
    doc = dict(header)
    doc["tensors"] = specs
    return _frame(kind, doc, buffers, size)


def encode_steps(
    records: Sequence[tuple[Mapping[str, Any], Sequence[tuple[str, torch.Tensor]]]],
    *,
    skeletons: bool = False,
) -> list[bytes | memoryview]:
    """One ``STEPS`` frame from step records, each ``(header, tensors)`` as for a ``STEP``.

    ``skeletons``: the caller vouches that every header is ``index``, a timestep and a ``state``
    made by ``SamplerState.skeleton`` (which writes floats as hex strings), so the header's only
    floats are the timesteps, checked finite here; it is then written with orjson."""
    if not 0 < len(records) <= MAX_STEPS_PER_FRAME:
        raise MalformedInputError(f"a STEPS frame carries 1 to {MAX_STEPS_PER_FRAME} records")
    docs = []
    buffers: list[bytes | memoryview] = []
    size = 0
    for header, tensors in records:
        timestep = header.get("timestep")
        if type(timestep) is float and not math.isfinite(timestep):
            raise MalformedInputError(f"step {header.get('index')} has a non-finite timestep")
        specs, bufs, n = _tensor_buffers(tensors)
        doc = dict(header)
        doc["tensors"] = specs
        docs.append(doc)
        buffers += bufs
        size += n
    return _frame(FRAME_STEPS, {"steps": docs}, buffers, size, finite=skeletons)


def send_frame(
    sock: socket.socket,
    kind: int,
    header: Mapping[str, Any],
    tensors: Sequence[tuple[str, torch.Tensor]] = (),
) -> None:
    """Send one frame; blocks while the peer's receive buffer is full (the backpressure)."""
    send_parts(sock, encode_frame(kind, header, tensors))


def send_parts(sock: socket.socket, frame: Sequence[bytes | memoryview]) -> None:
    """Send an encoded frame (:func:`encode_frame`, :func:`encode_steps`) with ``sendmsg``."""
    parts = [memoryview(p).cast("B") for p in frame if len(p)]
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


def _check_prefix(prefix: bytes | bytearray | memoryview, max_body: int) -> tuple[int, int, int]:
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
    return kind, head_len, body_len


def _parse_header(head: bytes | bytearray) -> dict[str, Any]:
    if _fast_loads is not None:
        try:
            header = _fast_loads(head)
        except _FastDecodeError as exc:
            if "depth limit" in str(exc):
                raise MalformedInputError("frame header nests too deeply") from None
            raise MalformedInputError("frame header is not JSON") from None
    else:
        try:
            header = json.loads(head)
        except (ValueError, UnicodeDecodeError):
            raise MalformedInputError("frame header is not JSON") from None
        except RecursionError:
            raise MalformedInputError("frame header nests too deeply") from None
    if not isinstance(header, dict):
        raise MalformedInputError("frame header is not a JSON object")
    return header


def read_frame(sock: socket.socket, *, max_body: int = MAX_BODY_BYTES) -> Frame:
    """Read one frame. Raises :class:`WireClosedError` at end of stream and
    :class:`MalformedInputError` for anything that is not a well-formed frame within bounds.
    For a stream of many frames, :class:`FrameReader` needs far fewer system calls."""
    prefix = bytearray(PREFIX.size)
    _recv_exact(sock, memoryview(prefix), first=True)
    kind, head_len, body_len = _check_prefix(prefix, max_body)
    head = bytearray(head_len)
    _recv_exact(sock, memoryview(head), first=False)
    body = bytearray(body_len)
    _recv_exact(sock, memoryview(body), first=False)
    return Frame(kind=kind, header=_parse_header(head), body=body)


#: the first receive buffer of a :class:`FrameReader`
_FIRST_BUFFER = 128 << 10
#: the first step by which a body larger than the receive buffer grows
_GROW_FROM = 64 << 10


def _uninitialised(size: int) -> memoryview:
    """A writable receive buffer whose bytes are not cleared first: ``bytearray(n)`` zero-fills,
    which cost the sidecar's connection thread 9 % of its CPU at 64 KiB step records. Only bytes
    received into it are ever handed out."""
    return numpy.empty(size, dtype=numpy.uint8).data.cast("B")


class ReceiveBuffers:
    """Receive buffers of one size for :class:`FrameReader`, reused once nothing refers to them.

    A reader hands out frame bodies as views into its buffer, and they live on (queued for
    hashing) after the reader has moved on to a fresh buffer. A freshly allocated buffer's pages
    are faulted in and zeroed by the kernel as the first ``recv`` touches them, which cost the
    sidecar's connection thread about a fifth of its CPU at 64 KiB step records. A buffer from
    here returns to the pool when the last view into it is gone (every view hangs on one array,
    whose finalizer gives the memory back), so its pages stay resident. At most ``keep`` idle
    buffers are kept; more are made on demand and freed as usual. Old bytes in a reused buffer
    are never handed out: a reader only hands out bytes it received."""

    def __init__(self, size: int, keep: int) -> None:
        if size < PREFIX.size:
            raise ValueError("a receive buffer must hold at least a frame prefix")
        if keep < 0:
            raise ValueError(f"cannot keep {keep} idle buffers")
        self.size = size
        self.keep = keep
        self._idle: list[numpy.ndarray[Any, Any]] = []
        self._lock = threading.Lock()
        #: buffers allocated so far (the rest of the takes were reuses)
        self.made = 0

    def take(self) -> memoryview:
        with self._lock:
            slab = self._idle.pop() if self._idle else None
        if slab is None:
            slab = numpy.empty(self.size, dtype=numpy.uint8)  # not cleared, see _uninitialised
            with self._lock:
                self.made += 1
        owner = slab.view()  # what every view of this lease refers to
        weakref.finalize(owner, self._give, slab).atexit = False
        return owner.data.cast("B")

    def _give(self, slab: numpy.ndarray[Any, Any]) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(slab)

    @property
    def idle(self) -> int:
        """How many buffers wait for reuse."""
        with self._lock:
            return len(self._idle)


class FrameReader:
    """Reads a stream of frames through one receive buffer.

    One ``recv`` fills the buffer with as many frames as the peer has sent, so a pipelined
    stream of step records costs a fraction of a system call per frame instead of three, and a
    frame's body is a view into the buffer: no copy, no allocation. Bytes once received are
    never overwritten: when the buffer runs out, a fresh one takes over (the old one lives on
    while views into it do; with ``buffers`` it is then reused). Bodies larger than the buffer
    are received straight into their own ``bytearray``. Same errors as :func:`read_frame`.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        buffer_size: int = 1 << 20,
        buffers: ReceiveBuffers | None = None,
    ) -> None:
        if buffer_size < PREFIX.size:
            raise ValueError("the receive buffer must hold at least a frame prefix")
        if buffers is not None and buffers.size != buffer_size:
            raise ValueError(f"the pool's buffers hold {buffers.size} bytes, not {buffer_size}")
        self._sock = sock
        self._size = buffer_size
        self._buffers = buffers
        # a short stream (a small model's trajectory, a HELLO) never needs the full buffer:
        # start small, and take full-size buffers once the first one runs out
        self._view = memoryview(bytearray(min(buffer_size, _FIRST_BUFFER)))
        self._start = 0
        self._end = 0

    def _fill(self, n: int, *, first: bool = False) -> None:
        """Buffer at least ``n`` bytes (``n`` <= the buffer size)."""
        if self._end - self._start >= n:
            return
        if self._start + n > len(self._view):
            held = self._end - self._start
            fresh = _uninitialised(self._size) if self._buffers is None else self._buffers.take()
            fresh[:held] = self._view[self._start : self._end]
            self._view, self._start, self._end = fresh, 0, held
        while self._end - self._start < n:
            got = self._sock.recv_into(self._view[self._end :])
            if got == 0:
                held = self._end - self._start
                if first and held == 0:
                    raise WireClosedError("the peer closed the connection")
                raise WireClosedError(
                    f"the peer closed the connection mid-frame ({held} bytes read)"
                )
            self._end += got

    def _take(self, n: int) -> bytearray | memoryview:
        if n <= self._size:
            self._fill(n)
            out = self._view[self._start : self._start + n]
            self._start += n
            return out
        # Grown only as bytes arrive (doubling, from 64 KiB): memory follows the bytes the
        # peer sent, never the length it claimed, so a short frame that claims hundreds of MiB
        # and stalls holds 64 KiB.
        big = bytearray(self._view[self._start : self._end])
        self._start = self._end
        while len(big) < n:
            got = len(big)
            big += bytes(min(n - got, max(got, _GROW_FROM)))
            with memoryview(big) as view:
                _recv_exact(self._sock, view[got:], first=False)
        return big

    def read(self, *, max_body: int = MAX_BODY_BYTES) -> Frame:
        self._fill(PREFIX.size, first=True)
        kind, head_len, body_len = _check_prefix(
            self._view[self._start : self._start + PREFIX.size], max_body
        )
        self._start += PREFIX.size
        head = bytes(self._take(head_len))
        return Frame(kind=kind, header=_parse_header(head), body=self._take(body_len))


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor of a frame body: where its raw bytes lie."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def tensor_specs(frame: Frame) -> list[TensorSpec]:
    """The frame's tensor list, checked: names unique and bounded, known dtypes, sizes that
    fit their shapes and add up exactly to the body."""
    specs, size = listing_specs(frame.header.get("tensors", []), len(frame.body))
    if size != len(frame.body):
        raise MalformedInputError(
            f"frame body carries {len(frame.body) - size} bytes beyond the listed tensors"
        )
    return specs


def listing_specs(listing: Any, available: int) -> tuple[list[TensorSpec], int]:
    """One tensor listing (``[[name, dtype, shape, nbytes], ...]``) checked against the
    ``available`` body bytes: names unique and bounded, known dtypes, sizes that fit their
    shapes. Offsets are relative to the listing's first byte; returns the specs and the bytes
    they take."""
    if not isinstance(listing, list) or len(listing) > MAX_TENSORS:
        raise MalformedInputError("frame header 'tensors' is not a list within bounds")
    out: list[TensorSpec] = []
    seen: set[str] = set()
    offset = 0
    for spec in listing:
        if not (isinstance(spec, list) and len(spec) == 4):
            raise MalformedInputError("frame tensor entry is not [name, dtype, shape, nbytes]")
        name, dtype_name, shape, nbytes = spec
        if not isinstance(name, str) or not 0 < len(name) <= 256 or name in seen:
            raise MalformedInputError(f"frame tensor name {str(name)[:40]!r} is bad or repeated")
        if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
            raise MalformedInputError(f"tensor {name!r} has unsupported dtype {dtype_name!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(type(d) is int and d >= 0 for d in shape)
        ):
            raise MalformedInputError(f"tensor {name!r} has a malformed shape")
        if type(nbytes) is not int or nbytes != math.prod(shape) * _ITEMSIZE[dtype_name]:
            raise MalformedInputError(f"tensor {name!r}: {nbytes!r} bytes do not fit its shape")
        if offset + nbytes > available:
            raise MalformedInputError(f"frame body is truncated at tensor {name!r}")
        seen.add(name)
        out.append(TensorSpec(name, dtype_name, tuple(shape), offset, nbytes))
        offset += nbytes
    return out, offset


def decode_tensors(frame: Frame) -> dict[str, torch.Tensor]:
    """Map the frame's body onto tensors (views of the body, no copy), after
    :func:`tensor_specs` checked the layout."""
    view = memoryview(frame.body)
    out: dict[str, torch.Tensor] = {}
    for spec in tensor_specs(frame):
        dtype = DTYPES[spec.dtype]
        if spec.nbytes == 0:
            out[spec.name] = torch.empty(spec.shape, dtype=dtype)
        else:
            chunk = view[spec.offset : spec.offset + spec.nbytes]
            out[spec.name] = torch.frombuffer(chunk, dtype=dtype).reshape(spec.shape)
    return out
