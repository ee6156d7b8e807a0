"""Seed-vector health checks and the noise-reuse detector."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from samplerguard.errors import MalformedInputError
from samplerguard.rng import (
    NoiseAuthority,
    NoiseReuseDetector,
    NoiseReuseError,
    SeedShiftError,
    check_seed_vector,
    tensor_digest,
)

SHAPES = [(1, 1, 8, 8), (8, 1, 8, 8), (1, 4, 32, 32), (2, 4, 2, 16, 16)]


def honest(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES)
def test_honest_noise_passes(shape: tuple[int, ...]) -> None:
    report = check_seed_vector(honest(shape))
    assert report.ok, report.reason
    assert report.reason == "seed vector looks like N(0, I)"
    report.raise_for_failure()


def test_drbg_noise_passes() -> None:
    n = NoiseAuthority(bytes(32), deterministic=True).request("t", "r")
    assert check_seed_vector(n.randn((4, 4, 32, 32))).ok


def _tile(z: torch.Tensor) -> torch.Tensor:
    out = z.clone()
    out[..., 8:16, 8:16] = z[..., 0:8, 0:8]
    return out


def _sort_block(z: torch.Tensor) -> torch.Tensor:
    out = z.clone()
    block = out[..., 0:16, 0:16]
    out[..., 0:16, 0:16] = block.reshape(*block.shape[:-2], -1).sort(-1).values.reshape(block.shape)
    return out


U = honest((1, 4, 32, 32), seed=99)
SHIFTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": lambda z: z + 0.3,
    "std": lambda z: z * 1.2,
    "random": lambda z: z + 0.6 * U,
    "mixed": lambda z: (z + 0.15) * 1.1,
    "tiled block": _tile,
    "sorted block": _sort_block,
    "channel": lambda z: z + torch.tensor([0.3, 0, 0, 0]).view(1, 4, 1, 1),
}


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_shifts_are_flagged(name: str) -> None:
    report = check_seed_vector(SHIFTS[name](honest((1, 4, 32, 32), seed=1)))
    assert not report.ok, name
    with pytest.raises(SeedShiftError, match="seed vector is not N"):
        report.raise_for_failure()


def test_reason_names_the_failing_test() -> None:
    report = check_seed_vector(honest((1, 4, 32, 32)) + 0.5)
    assert "mean[sample]" in report.reason
    assert report.to_dict()["ok"] is False
    tiled = check_seed_vector(_tile(honest((1, 4, 32, 32))))
    assert "repeats[pooled]" in tiled.reason


def test_a_batch_shift_shared_by_all_samples_is_seen_by_the_pooled_tests() -> None:
    z = honest((16, 1, 8, 8)) + 0.2  # invisible per sample (|z| ≈ 1.6), plain pooled (≈ 6.4)
    report = check_seed_vector(z)
    assert not report.ok
    assert {t.sample for t in report.failures} == {"pooled"}


def test_repeated_sample_in_a_batch() -> None:
    z = honest((4, 1, 8, 8))
    z[3] = z[0]
    assert "repeats" in check_seed_vector(z).reason


def test_non_finite_and_bad_input() -> None:
    z = honest((1, 1, 8, 8))
    z[0, 0, 0, 0] = float("nan")
    assert not check_seed_vector(z).ok
    with pytest.raises(MalformedInputError, match="floating point"):
        check_seed_vector(torch.zeros(64, dtype=torch.int32))
    with pytest.raises(MalformedInputError, match=r"16\.\."):
        check_seed_vector(torch.zeros(4))
    with pytest.raises(MalformedInputError, match="alpha"):
        check_seed_vector(honest((64,)), alpha=0.0)
    with pytest.raises(MalformedInputError, match="must be a tensor"):
        check_seed_vector([0.0] * 64)  # type: ignore[arg-type]


def test_false_alarm_rate_small_shape() -> None:
    # 2000 honest 1×8×8 vectors at α = 1e-2: expect ≈ 20 alarms, Bonferroni keeps it at or below.
    g = torch.Generator().manual_seed(7)
    alarms = sum(
        not check_seed_vector(torch.randn(1, 8, 8, generator=g), alpha=1e-2).ok for _ in range(2000)
    )
    assert alarms <= 35


def test_tensor_digest_is_the_design_contract() -> None:
    import hashlib

    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    want = hashlib.sha256(b"sg-tensor-v1|float32|2x3|" + t.numpy().tobytes()).hexdigest()
    assert tensor_digest(t) == "sha256:" + want
    assert tensor_digest(t.t().contiguous()) != tensor_digest(t)


def test_reuse_detector() -> None:
    d = NoiseReuseDetector(capacity=3)
    a, b = honest((2, 1, 8, 8), 1), honest((2, 1, 8, 8), 2)
    d.observe(a, "req-a")
    with pytest.raises(NoiseReuseError, match="already used by req-a"):
        d.observe(a.clone(), "req-b")
    with pytest.raises(NoiseReuseError, match="already used"):
        d.observe(a[1:2].clone(), "req-c")  # one sample of an earlier batch
    d.observe(b, "req-d")
    assert len(d) == 3  # bounded: 3 digests of b (2 samples + batch) pushed out a
    with pytest.raises(NoiseReuseError, match="repeats a sample within its batch"):
        d.observe(torch.stack([b[0], b[0]]).clone(), "req-e")
    with pytest.raises(MalformedInputError):
        NoiseReuseDetector(capacity=0)
