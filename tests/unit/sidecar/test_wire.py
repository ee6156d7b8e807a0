"""The hook ↔ sidecar frame format: round trips, and every malformed frame refused by type."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator

import pytest
import torch

from samplerguard.errors import MalformedInputError
from samplerguard.hook.wire import (
    FRAME_STEP,
    PREFIX,
    WireClosedError,
    decode_tensors,
    read_frame,
    send_frame,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def test_round_trip_keeps_every_dtype_bit_for_bit(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    tensors = [
        ("latent", torch.randn(2, 4, 8, 8)),
        ("half", torch.randn(3).half()),
        ("bf16", torch.randn(5).to(torch.bfloat16)),
        ("labels", torch.tensor([1, 7])),
        ("flag", torch.tensor([True, False])),
        ("empty", torch.empty(0, 3)),
        ("scalar", torch.tensor(2.5, dtype=torch.float64)),
        ("strided", torch.arange(12.0).reshape(3, 4).t()),
    ]
    send_frame(a, FRAME_STEP, {"index": 3}, tensors)
    frame = read_frame(b)
    got = decode_tensors(frame)
    assert frame.kind == FRAME_STEP and frame.header["index"] == 3
    for name, t in tensors:
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name


def test_clean_close_between_frames_is_wire_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.close()
    with pytest.raises(WireClosedError, match="closed the connection"):
        read_frame(b)


def _raw(a: socket.socket, prefix: bytes, head: bytes = b"", body: bytes = b"") -> None:
    a.sendall(prefix + head + body)


@pytest.mark.parametrize(
    ("prefix", "match"),
    [
        (PREFIX.pack(b"XX", 1, FRAME_STEP, 2, 0), "not a samplerguard frame"),
        (PREFIX.pack(b"SG", 9, FRAME_STEP, 2, 0), "wire version 9"),
        (PREFIX.pack(b"SG", 1, 99, 2, 0), "unknown frame kind 99"),
        (PREFIX.pack(b"SG", 1, FRAME_STEP, 1 << 30, 0), "header of 1073741824 bytes exceeds"),
        (PREFIX.pack(b"SG", 1, FRAME_STEP, 2, 1 << 40), "body of 1099511627776 bytes exceeds"),
    ],
)
def test_bad_prefixes_are_refused_before_any_allocation(
    pair: tuple[socket.socket, socket.socket], prefix: bytes, match: str
) -> None:
    a, b = pair
    _raw(a, prefix, b"{}")
    with pytest.raises(MalformedInputError, match=match):
        read_frame(b)


def test_truncated_frame_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    head = b'{"tensors":[]}'
    _raw(a, PREFIX.pack(b"SG", 1, FRAME_STEP, len(head), 100), head, b"x" * 10)
    a.close()
    with pytest.raises(WireClosedError, match="mid-frame"):
        read_frame(b)


@pytest.mark.parametrize(
    ("specs", "body", "match"),
    [
        ([["x", "float32", [4], 12]], b"\0" * 12, "do not fit its shape"),
        ([["x", "float32", [4], 16]], b"\0" * 8, "truncated at tensor 'x'"),
        ([["x", "float32", [1], 4]], b"\0" * 8, "4 bytes beyond the listed tensors"),
        ([["x", "complex64", [1], 8]], b"\0" * 8, "unsupported dtype"),
        ([["x", "float32", [-1], 4]], b"\0" * 4, "malformed shape"),
        ([["x", "uint8", [1], 1], ["x", "uint8", [1], 1]], b"\0\0", "bad or repeated"),
        ([["x", "uint8"]], b"", r"not \[name, dtype, shape, nbytes\]"),
        ("nope", b"", "not a list"),
    ],
)
def test_inconsistent_tensor_tables_are_refused(
    pair: tuple[socket.socket, socket.socket], specs: object, body: bytes, match: str
) -> None:
    a, b = pair
    head = json.dumps({"tensors": specs}).encode()
    _raw(a, PREFIX.pack(b"SG", 1, FRAME_STEP, len(head), len(body)), head, body)
    frame = read_frame(b)
    with pytest.raises(MalformedInputError, match=match):
        decode_tensors(frame)


def test_header_must_be_a_json_object(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    _raw(a, PREFIX.pack(b"SG", 1, FRAME_STEP, 3, 0), b"[1]")
    with pytest.raises(MalformedInputError, match="not a JSON object"):
        read_frame(b)
    _raw(a, PREFIX.pack(b"SG", 1, FRAME_STEP, 3, 0), b"{x:")
    with pytest.raises(MalformedInputError, match="not JSON"):
        read_frame(b)
    assert struct.calcsize("!2sBBIQ") == PREFIX.size == 16
