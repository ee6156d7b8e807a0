"""The compiled batch hasher (samplerguard._digest) against hashlib, and its bad input."""

from __future__ import annotations

import hashlib
import importlib
import shutil
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from samplerguard.commitment import digest
from samplerguard.commitment.digest import raw_digest, raw_digests


def test_the_extension_is_built_where_a_compiler_is() -> None:
    """Not skipped with the tests below: a build that failed where it could succeed fails here."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: the optional extension is not built here")
    assert digest.NATIVE


native: Any
try:
    native = importlib.import_module("samplerguard._digest")
except ImportError:
    native = None
needs_native = pytest.mark.skipif(native is None, reason="samplerguard._digest is not built here")


@needs_native
@given(st.lists(st.tuples(st.binary(max_size=64), st.binary(max_size=5000)), max_size=20))
def test_sha256_many_is_hashlib(pairs: list[tuple[bytes, bytes]]) -> None:
    got = native.sha256_many(pairs)
    assert got == [hashlib.sha256(p + d).digest() for p, d in pairs]


@needs_native
def test_buffers_of_every_kind_are_hashed_and_released() -> None:
    body = bytearray(range(256)) * 300
    view = memoryview(body)
    pairs = [(b"h|", view[10:70_000]), (bytearray(b"x"), body), (memoryview(b""), b"")]
    got = native.sha256_many(pairs)
    assert got[0] == hashlib.sha256(b"h|" + body[10:70_000]).digest()
    assert got[1] == hashlib.sha256(b"x" + body).digest()
    assert got[2] == hashlib.sha256(b"").digest()
    del pairs, view
    body.append(1)  # every buffer was released: the bytearray can be resized again


@needs_native
@pytest.mark.parametrize(
    ("items", "error", "match"),
    [
        ("not a list", TypeError, "tuples"),
        (42, TypeError, "list or tuple"),
        ([[b"a", b"b"]], TypeError, "tuples"),
        ([(b"a",)], TypeError, "tuples"),
        ([(b"a", b"b", b"c")], TypeError, "tuples"),
        ([(b"a", "text")], TypeError, "bytes-like"),
        ([(None, b"x")], TypeError, "bytes-like"),
        ([(b"", memoryview(b"abcdef")[::2])], (BufferError, ValueError), "contiguous"),
        ([(b"", b"")] * 4097, ValueError, "at most 4096"),
    ],
    ids=["str", "int", "list-pair", "short", "long", "str-data", "none", "strided", "too-many"],
)
def test_bad_input_is_refused(items: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        native.sha256_many(items)


@needs_native
def test_a_bad_item_after_good_ones_releases_the_good_ones() -> None:
    held = bytearray(b"abc")
    with pytest.raises(TypeError):
        native.sha256_many([(b"", held), (b"", "not a buffer")])
    held.append(1)  # released on the error path too


@pytest.mark.parametrize("compiled", [True, False], ids=["native", "hashlib"])
def test_raw_digests_match_raw_digest(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if compiled and native is None:
        pytest.skip("samplerguard._digest is not built here")
    if not compiled:
        monkeypatch.setattr(digest, "_sha256_many", None)
    data = bytes(range(256)) * 64
    tensors: list[tuple[str, tuple[int, ...] | list[int], bytes | memoryview]] = [
        ("float32", (1, 4, 8, 16), memoryview(data)[:2048]),
        ("float16", [4, 2], memoryview(data)[100:116]),
        ("int64", (), memoryview(data)[:8]),
        ("uint8", (0,), b""),
    ]
    assert raw_digests(tensors) == [raw_digest(*t) for t in tensors]
    many = [("uint8", (1,), bytes([i % 256])) for i in range(4100)]  # past one batch's cap
    assert raw_digests(many) == [raw_digest(*t) for t in many]


@pytest.mark.parametrize("compiled", [True, False], ids=["native", "hashlib"])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 300),
            st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 200), st.integers(0, 300))),
        ),
        max_size=6,
    )
)
def test_record_digests_are_the_raw_digests_of_each_range(
    compiled: bool, records: list[tuple[int, list[tuple[bytes, int, int]]]]
) -> None:
    """Every range inside the body hashes as raw_digest would; any range outside it is
    refused, never read (the compiled loop and the hashlib fallback alike)."""
    if compiled and native is None:
        pytest.skip("samplerguard._digest is not built here")
    body = bytes(range(256)) * 2  # 512 bytes
    plan = [(base, tuple(items)) for base, items in records]
    inside = all(base + off + n <= len(body) for base, items in plan for _, off, n in items)
    call = native.digest_records if compiled else _hashlib_record_digests
    if not inside:
        with pytest.raises(ValueError, match="outside"):
            call(body, plan)
        return
    want = [
        "sha256:" + hashlib.sha256(prefix + body[base + off : base + off + n]).hexdigest()
        for base, items in plan
        for prefix, off, n in items
    ]
    assert call(body, plan) == want


def _hashlib_record_digests(body: bytes, plan: list[Any]) -> list[str]:
    saved, digest._digest_records = digest._digest_records, None
    try:
        return digest.record_digests(body, plan)
    finally:
        digest._digest_records = saved


@needs_native
@pytest.mark.parametrize(
    ("records", "error", "match"),
    [
        ("nope", TypeError, "list of records|records are"),
        ([(0, [(b"", 0, 1)])], TypeError, "records are"),
        ([(0, ((b"", 0),))], TypeError, "items are"),
        ([(0, (("str", 0, 1),))], TypeError, "items are"),
        ([(-1, ((b"", 0, 1),))], ValueError, "outside"),
        ([(0, ((b"", 0, -1),))], ValueError, "outside"),
        ([(0, ((b"", 2**62, 1),))], ValueError, "outside"),
        ([(0, tuple((b"", 0, 0) for _ in range(4097)))], ValueError, "at most 4096"),
    ],
)
def test_record_digests_refuses_malformed_plans(records: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        native.digest_records(b"abcd", records)
