"""RequestNoise: draws, the draw record, the shim, Gaussian quality, secrecy."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samplerguard.errors import MalformedInputError
from samplerguard.rng import DrbgError, NoiseAuthority, RequestNoise
from samplerguard.rng.gaussian import bytes_for, gaussian_from_bytes

MASTER = bytes(range(32))


def noise(mode: str = "ctr-drbg", rid: str = "r") -> RequestNoise:
    return NoiseAuthority(MASTER, mode, deterministic=True).request("acme", rid)


def _reference(buf: bytes, n: int) -> np.ndarray:
    """The module doc's transform, written out plainly in float64."""
    m = (n + 1) // 2
    w = np.frombuffer(buf, dtype="<u4", count=2 * m).astype(np.uint64)
    f = ((w >> 9) | 0x3F800000).astype(np.uint32).view(np.float32).astype(np.float64)
    u1, u2 = 2.0 - f[:m], f[m:] - 1.0
    r = np.sqrt(-2 * np.log(u1))
    theta = 2 * np.pi * (u2 - 0.5)  # = 2φ, the spec computes cos/sin via tan φ
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:n]


@settings(max_examples=30, deadline=None)
@given(data=st.data(), n=st.integers(1, 3000))
def test_transform_matches_its_specification(data: st.DataObject, n: int) -> None:
    buf = data.draw(st.binary(min_size=bytes_for(n), max_size=bytes_for(n)))
    got = gaussian_from_bytes(bytearray(buf), n).numpy()
    assert got.shape == (n,)
    np.testing.assert_allclose(got, _reference(buf, n), rtol=2e-5, atol=2e-5)


def _same_ops_unblocked(buf: bytes, n: int) -> np.ndarray:
    """The module doc's float32 steps, each one call over the whole array (numpy's arithmetic
    is IEEE per element; log and tan are torch's, whose whole-array calls may go threaded)."""
    m = (n + 1) // 2
    w = np.frombuffer(buf, dtype="<u4", count=2 * m)
    f = ((w >> 9) | np.uint32(0x3F800000)).view(np.float32)
    u1 = np.float32(2.0) - f[:m]
    phi = (f[m:] - np.float32(1.5)) * np.float32(math.pi)
    r = np.sqrt(torch.log(torch.from_numpy(u1)).numpy() * np.float32(-2.0))
    t = torch.tan(torch.from_numpy(phi)).numpy()
    d = np.float32(1.0) + t * t
    return np.concatenate([(np.float32(1.0) - t * t) / d * r, t / d * np.float32(2.0) * r])[:n]


@pytest.mark.parametrize("n", [1, 2, 4095, 4096, 4097, 4098, 2048 * 9 + 33, 65536, 300_001])
def test_blocked_transform_is_bit_identical_to_whole_array_ops(n: int) -> None:
    # The transform runs log and tan per block of 2048; every block, the short last one
    # included, must give the bits the whole-array ops give.
    buf = np.random.default_rng(n).bytes(bytes_for(n))
    got = gaussian_from_bytes(bytearray(buf), n)
    want = _same_ops_unblocked(buf, n)
    assert got.dtype == torch.float32 and want.dtype == np.float32
    assert np.array_equal(got.numpy(), want)


def test_extreme_words_stay_finite() -> None:
    for word in (b"\x00" * 4, b"\xff" * 4):
        z = gaussian_from_bytes(bytearray(word * 8), 8)
        assert torch.isfinite(z).all()
        assert float(z.abs().max()) <= math.sqrt(46 * math.log(2)) + 1e-4
    with pytest.raises(ValueError, match="need 8 bytes"):
        gaussian_from_bytes(bytearray(4), 2)


@pytest.mark.parametrize("mode", ["ctr-drbg", "hmac-drbg", "framework"])
def test_moments_of_a_large_draw(mode: str) -> None:
    z = noise(mode).randn((200_000,)).double()
    assert abs(float(z.mean())) < 0.015
    assert abs(float(z.var()) - 1) < 0.015
    assert abs(float(((z - z.mean()) ** 4).mean() / z.var() ** 2) - 3) < 0.1


def test_dtypes_shapes_and_record() -> None:
    n = noise()
    a = n.randn((2, 3), dtype=torch.float16)
    b = n.randn(torch.Size([4]))
    assert a.dtype == torch.float16 and a.shape == (2, 3) and b.shape == (4,)
    drawn = n.take_drawn()
    assert [t.shape for t in drawn] == [(2, 3), (4,)]
    assert torch.equal(drawn[1], b)
    b.add_(1)  # the record is a copy: a caller mutating its noise does not change it
    assert not torch.equal(drawn[1], b)
    assert n.take_drawn() == []
    assert n.draws == 2


def test_noise_fn_continues_the_stream() -> None:
    a, b = noise(rid="x"), NoiseAuthority(MASTER, deterministic=True).request("acme", "x")
    fn = a.noise_fn()
    first = fn((3, 3), torch.float32, torch.device("cpu"))
    assert torch.equal(first, b.randn((3, 3)))


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((-1, 2), torch.float32, "negative"),
        ((2,), torch.int64, "floating point"),
        ((1 << 16, 1 << 16), torch.float32, "exceeds"),
    ],
)
def test_bad_draws(shape: tuple[int, ...], dtype: torch.dtype, message: str) -> None:
    with pytest.raises(MalformedInputError, match=message):
        noise().randn(shape, dtype=dtype)


def test_closed_noise_and_secrecy() -> None:
    n = noise()
    seed = n._seed._unsafe_material()
    text = repr(n) + str(n) + repr(n._seed)
    assert seed.hex() not in text and seed[:32].hex() not in text
    assert n.seed_pseudonym.startswith("s-") and n.seed_pseudonym[2:] not in seed.hex()
    for obj in (n, n._seed):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(obj)
    n.close()
    with pytest.raises(DrbgError):
        n.randn((2,))


def test_global_generators_untouched_by_draws() -> None:
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state(legacy=False)
    for mode in ("ctr-drbg", "hmac-drbg", "framework"):
        noise(mode, rid="g").randn((4, 16, 16))
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state(legacy=False)
    assert np.array_equal(after["state"]["key"], np_state["state"]["key"])
    assert after["state"]["pos"] == np_state["state"]["pos"]
    assert (after["has_gauss"], after["gauss"]) == (np_state["has_gauss"], np_state["gauss"])
