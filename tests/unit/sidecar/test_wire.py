"""The hook ↔ sidecar frame format: round trips, and every malformed frame refused by type."""

from __future__ import annotations

import json
import math
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest
import torch

from samplerguard.errors import MalformedInputError
from samplerguard.hook.wire import (
    FRAME_STEP,
    PREFIX,
    Frame,
    FrameReader,
    ReceiveBuffers,
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
    pair: tuple[socket.socket, socket.socket], read: Callable[[socket.socket], Frame]
) -> None:
    a, b = pair
    a.close()
    with pytest.raises(WireClosedError, match="closed the connection"):
        read(b)


@pytest.fixture(params=["read_frame", "buffered", "tiny-buffer"])
def read(request: pytest.FixtureRequest) -> Callable[[socket.socket], Frame]:
    """Both readers refuse the same frames with the same errors."""
    if request.param == "read_frame":
        return read_frame
    size = 1 << 20 if request.param == "buffered" else 17
    return lambda sock: FrameReader(sock, buffer_size=size).read()


def test_buffered_reader_splits_a_pipelined_stream_exactly(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Frames of many sizes, sent back to back, read through buffers smaller and larger than
    the frames: every header and body comes out as sent."""
    a, b = pair
    gen = torch.Generator().manual_seed(0)
    sizes = [0, 1, 3, 100, 5000, 70000, 2, 300000, 17, 65536]
    sent = [torch.randn(n, generator=gen) for n in sizes]

    def writer() -> None:
        for i, t in enumerate(sent):
            send_frame(a, FRAME_STEP, {"index": i, "pad": "x" * (i * 37)}, [("latent", t)])

    for size in (16, 17, 1000, 65536, 1 << 20):
        thread = threading.Thread(target=writer)
        thread.start()
        reader = FrameReader(b, buffer_size=size)
        for i, t in enumerate(sent):
            frame = reader.read()
            assert frame.header["index"] == i and len(frame.header["pad"]) == i * 37
            assert torch.equal(decode_tensors(frame)["latent"], t)
        thread.join()
    with pytest.raises(ValueError, match="at least a frame prefix"):
        FrameReader(b, buffer_size=8)


def test_pooled_buffers_are_reused_only_once_no_body_refers_to_them(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Bodies kept past the reader's move to a fresh buffer keep their bytes (their buffer is
    not reused while they live); dropped ones give their buffer back, and a reused buffer
    hands out only bytes received into it."""
    a, b = pair
    size = 4096
    pool = ReceiveBuffers(size, keep=2)
    kept: list[tuple[int, Frame]] = []

    def writer() -> None:
        for i in range(40):
            send_frame(a, FRAME_STEP, {"index": i}, [("latent", torch.full((300,), float(i)))])

    thread = threading.Thread(target=writer)
    thread.start()
    reader = FrameReader(b, buffer_size=size, buffers=pool)
    for i in range(40):
        frame = reader.read()
        assert torch.equal(decode_tensors(frame)["latent"], torch.full((300,), float(i)))
        if i % 10 == 0:
            kept.append((i, frame))  # held across several buffers' reuse
    thread.join()
    # 40 frames of 1.3 KB fill a dozen 4 KiB buffers; the four kept frames pin theirs
    assert 4 < pool.made <= 8
    for i, frame in kept:
        assert torch.equal(decode_tensors(frame)["latent"], torch.full((300,), float(i)))
    del kept, frame, reader
    assert pool.idle == 2  # every buffer came back; at most `keep` of them wait
    with pytest.raises(ValueError, match="not 1000"):
        FrameReader(b, buffer_size=1000, buffers=pool)
    with pytest.raises(ValueError, match="idle buffers"):
        ReceiveBuffers(size, keep=-1)


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
    pair: tuple[socket.socket, socket.socket],
    prefix: bytes,
    match: str,
    read: Callable[[socket.socket], Frame],
) -> None:
    a, b = pair
    _raw(a, prefix, b"{}")
    with pytest.raises(MalformedInputError, match=match):
        read(b)


@pytest.mark.parametrize("cut", [5, 16, 20, 40])
def test_truncated_frame_is_refused(
    pair: tuple[socket.socket, socket.socket], read: Callable[[socket.socket], Frame], cut: int
) -> None:
    a, b = pair
    head = b'{"tensors":[]}'
    whole = PREFIX.pack(b"SG", 1, FRAME_STEP, len(head), 100) + head + b"x" * 100
    a.sendall(whole[:cut])
    a.close()
    with pytest.raises(WireClosedError, match="mid-frame"):
        read(b)


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


def test_header_must_be_a_json_object(
    pair: tuple[socket.socket, socket.socket], read: Callable[[socket.socket], Frame]
) -> None:
    a, b = pair
    _raw(a, PREFIX.pack(b"SG", 1, FRAME_STEP, 3, 0), b"[1]")
    with pytest.raises(MalformedInputError, match="not a JSON object"):
        read(b)
    _raw(a, PREFIX.pack(b"SG", 1, FRAME_STEP, 3, 0), b"{x:")
    with pytest.raises(MalformedInputError, match="not JSON"):
        read(b)
    assert struct.calcsize("!2sBBIQ") == PREFIX.size == 16


@pytest.fixture(params=["orjson", "json"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Frame headers as the sidecar parses them (orjson) and as the hook's pure-Python copy in
    an app container does (json)."""
    from samplerguard.hook import wire

    if request.param == "json":
        monkeypatch.setattr(wire, "_fast_loads", None)
    return str(request.param)


@pytest.mark.parametrize(
    ("head", "match"),
    [
        (b"[1]", "not a JSON object"),
        (b"{x:", "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b"[" * 5000 + b"]" * 5000, "nests too deeply"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nests too deeply"),
    ],
)
def test_both_parsers_refuse_the_same_malformed_headers(
    parser: str, head: bytes, match: str
) -> None:
    from samplerguard.hook.wire import _parse_header

    with pytest.raises(MalformedInputError, match=match):
        _parse_header(head)


def test_both_parsers_read_a_hooks_header_alike(parser: str) -> None:
    from samplerguard.hook.wire import _parse_header

    doc = {
        "index": 3,
        "timestep": 999.5,
        "state": {"s": {"float": (0.1).hex()}, "k": [1, None, True, "é"]},
        "big": 2**63 - 1,
        "small": 1e-7,
    }
    assert _parse_header(json.dumps(doc).encode()) == doc


def test_orjson_refuses_what_json_would_let_through(parser: str) -> None:
    """Non-standard literals: the sidecar (orjson) refuses them; json takes NaN."""
    from samplerguard.hook.wire import _parse_header

    if parser == "orjson":
        with pytest.raises(MalformedInputError, match="not JSON"):
            _parse_header(b'{"timestep": NaN}')
    else:
        assert math.isnan(_parse_header(b'{"timestep": NaN}')["timestep"])
