"""DRBG behaviour beyond the CAVP vectors: limits, prediction resistance, bad input, secrecy."""

from __future__ import annotations

import os
import pickle

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from samplerguard.errors import MalformedInputError
from samplerguard.rng import CtrDrbg, DrbgError, HmacDrbg, ReseedRequiredError
from samplerguard.rng.drbg import MAX_BYTES_PER_REQUEST, _ctr_keystream

E32, N16 = bytes(range(32)), bytes(range(100, 116))


def make(kind: str, **kw: object) -> CtrDrbg | HmacDrbg:
    if kind == "ctr":
        return CtrDrbg(E32, N16, b"p", **kw)  # type: ignore[arg-type]
    return HmacDrbg(E32, N16, b"p", **kw)  # type: ignore[arg-type]


KINDS = ["ctr", "hmac"]


class Source:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        return os.urandom(n)


@pytest.mark.parametrize("kind", KINDS)
def test_reseed_counter_limit_without_source(kind: str) -> None:
    d = make(kind, reseed_interval=2)
    d.generate(16)
    d.generate(16)
    assert d.reseed_counter == 3
    with pytest.raises(ReseedRequiredError, match="needs a reseed"):
        d.generate(16)
    d.reseed(os.urandom(32))
    assert d.reseed_counter == 1
    d.generate(16)


@pytest.mark.parametrize("kind", KINDS)
def test_reseed_counter_limit_with_source_reseeds(kind: str) -> None:
    src = Source()
    d = make(kind, reseed_interval=1, entropy_source=src)
    d.generate(16)
    assert src.calls == []
    d.generate(16)
    assert src.calls == [32]


@pytest.mark.parametrize("kind", KINDS)
def test_prediction_resistance_reseeds_every_request(kind: str) -> None:
    src = Source()
    d = make(kind, entropy_source=src, prediction_resistance=True)
    plain = make(kind)
    a = d.generate(32, prediction_resistance=True)
    d.generate(32, b"extra", prediction_resistance=True)
    assert len(src.calls) == 2
    assert a != plain.generate(32)


@pytest.mark.parametrize("kind", KINDS)
def test_prediction_resistance_needs_support(kind: str) -> None:
    with pytest.raises(MalformedInputError, match="needs an entropy source"):
        make(kind, prediction_resistance=True)
    with pytest.raises(DrbgError, match="without prediction resistance"):
        make(kind).generate(16, prediction_resistance=True)


@pytest.mark.parametrize("kind", KINDS)
def test_additional_input_changes_the_stream(kind: str) -> None:
    assert make(kind).generate(64) != make(kind).generate(64, b"context")
    assert make(kind).generate(64, b"context") == make(kind).generate(64, b"context")


@pytest.mark.parametrize("kind", KINDS)
def test_request_size_limit(kind: str) -> None:
    d = make(kind)
    assert len(d.generate(MAX_BYTES_PER_REQUEST)) == MAX_BYTES_PER_REQUEST
    with pytest.raises(MalformedInputError, match="max_number_of_bits_per_request"):
        d.generate(MAX_BYTES_PER_REQUEST + 1)
    with pytest.raises(MalformedInputError):
        d.generate(-1)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CtrDrbg(bytes(31), N16), "entropy_input is 31 bytes; at least 32"),
        (lambda: CtrDrbg(E32, bytes(15)), "nonce is 15 bytes; at least 16"),
        (lambda: HmacDrbg(bytes(16), N16), "entropy_input is 16 bytes"),
        (lambda: HmacDrbg(E32, b""), "nonce is 0 bytes"),
        (lambda: CtrDrbg(E32, use_df=False), "entropy_input is 32 bytes; at least 48"),
        (lambda: CtrDrbg(bytes(49), use_df=False), "at most 48"),
        (lambda: CtrDrbg(bytes(48), b"", bytes(49), use_df=False), "personalization_string"),
        (lambda: CtrDrbg(E32, N16, reseed_interval=0), "reseed_interval"),
        (lambda: CtrDrbg(E32, N16, reseed_interval=(1 << 48) + 1), "reseed_interval"),
        (lambda: CtrDrbg("x" * 32, N16), "must be bytes"),  # type: ignore[arg-type]
    ],
)
def test_bad_sizes_are_refused(build: object, message: str) -> None:
    with pytest.raises(MalformedInputError, match=message):
        build()  # type: ignore[operator]


def test_no_df_additional_input_limit() -> None:
    d = CtrDrbg(bytes(48), use_df=False)
    d.generate(16, bytes(48))
    with pytest.raises(MalformedInputError, match="at most 48"):
        d.generate(16, bytes(49))


def test_wrong_sized_entropy_source_is_refused() -> None:
    d = make("ctr", entropy_source=lambda n: b"short", prediction_resistance=True)
    with pytest.raises(DrbgError, match="wrong-sized"):
        d.generate(16, prediction_resistance=True)


@pytest.mark.parametrize("kind", KINDS)
def test_uninstantiate_and_secrecy(kind: str) -> None:
    d = make(kind)
    d.generate(16)
    state = [d._key, d._v]
    text = repr(d) + str(d)
    for secret in [*state, E32, N16]:
        assert secret.hex() not in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(d)
    d.uninstantiate()
    with pytest.raises(DrbgError, match="uninstantiated"):
        d.generate(1)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 3 * MAX_BYTES_PER_REQUEST + 5))
def test_random_bytes_is_a_series_of_standard_requests(n: int) -> None:
    a, b = make("ctr"), make("ctr")
    expected = b""
    left = n
    while left:
        take = min(left, MAX_BYTES_PER_REQUEST)
        expected += b.generate(take)
        left -= take
    assert bytes(a.random_bytes(n)) == expected
    assert a.reseed_counter == b.reseed_counter


def _naive_blocks(key: bytes, v: bytes, n: int) -> tuple[bytes, bytes]:
    """SP 800-90A's loop, one AES-ECB call per incremented V, as the standard writes it."""
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    out = b""
    vi = int.from_bytes(v, "big")
    while len(out) < n:
        vi = (vi + 1) % (1 << 128)
        out += enc.update(vi.to_bytes(16, "big"))
    return out[:n], vi.to_bytes(16, "big")


@settings(max_examples=60, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    v=st.one_of(
        st.binary(min_size=16, max_size=16),
        st.integers(0, 40).map(lambda k: ((1 << 128) - 1 - k).to_bytes(16, "big")),
    ),
    n=st.integers(0, 700),
)
def test_ctr_keystream_equals_the_standards_block_loop(key: bytes, v: bytes, n: int) -> None:
    # Including counters that wrap around 2^128 within the request.
    assert _ctr_keystream(key, v, n) == _naive_blocks(key, v, n)


def _naive_generate(key: bytes, v: bytes, n: int, additional: bytes) -> tuple[bytes, bytes, bytes]:
    """CTR_DRBG_Generate (§10.2.1.5.1, no df) step by step with the block loop above."""

    def update(key: bytes, v: bytes, provided: bytes) -> tuple[bytes, bytes]:
        temp, _ = _naive_blocks(key, v, 48)
        temp = bytes(x ^ y for x, y in zip(temp, provided, strict=True))
        return temp[:32], temp[32:]

    provided = additional.ljust(48, b"\x00")
    if additional:
        key, v = update(key, v, provided)
    out, v = _naive_blocks(key, v, n)
    key, v = update(key, v, provided)
    return out, key, v


@settings(max_examples=60, deadline=None)
@given(
    v=st.one_of(
        st.binary(min_size=16, max_size=16),
        st.integers(0, 8).map(lambda k: ((1 << 128) - 1 - k).to_bytes(16, "big")),
    ),
    n=st.one_of(st.integers(0, 200), st.integers(0, 64).map(lambda k: 16 * k)),
    additional=st.one_of(st.just(b""), st.binary(min_size=1, max_size=48)),
)
def test_ctr_generate_equals_the_standards_steps(v: bytes, n: int, additional: bytes) -> None:
    # Whole-block requests take the output and the final update from one keystream; partial
    # ones do not. Both must be the standard's steps, also when the counter wraps around.
    d = CtrDrbg(bytes(range(48)), use_df=False)
    d._v = v
    key = d._key
    out = d.generate(n, additional)
    assert (out, d._key, d._v) == _naive_generate(key, v, n, additional)
