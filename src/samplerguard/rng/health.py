"""Seed-vector health: is this initial noise what an honest N(0, I) draw looks like?

A provider can bias generation without touching the model by shifting the seed vector z_N: a
random shift z + η·u, a mean shift, a standard-deviation shift, a mix of them, or an arrangement
shift (a tiled block, a sorted block). :func:`check_seed_vector` runs a fixed battery of tests on
z_N before generation; :class:`NoiseReuseDetector` catches the same noise served twice.

The battery, per sample (the leading dimension of a 4-D or 5-D tensor is the batch) and, for a
batch, pooled over all samples:

=====================  ==========================================================  ===========
test                   statistic, and its null distribution                        catches
=====================  ==========================================================  ===========
``mean``               Σx/√n ~ N(0,1) exactly                                       mean shift
``channel-mean``       the same per channel, the largest |value|                   channel shift
``variance``           Σx² ~ χ²_n, Wilson–Hilferty cube-root transform ≈ N(0,1)     std, random
``skewness``           D'Agostino (1970) transform ≈ N(0,1), n ≥ 8                  mixed, shape
``kurtosis``           Anscombe–Glynn (1983) transform ≈ N(0,1), n ≥ 4096           shape
``ks``                 Kolmogorov–Smirnov vs N(0,1), Stephens' √n correction        any marginal
``autocorr-w/-h/-c``   lag-1 products along width, height, channels, self-          sorted or
                       normalised Σp/√Σp² ≈ N(0,1)                                 smooth blocks
``batch-coherence``    ‖Σ_b x_b‖²/B ~ χ²_n (only B ≥ 2)                            shared u
``repeats``            any repeated 2×2 patch of values (exact floats)              tiled blocks
=====================  ==========================================================  ===========

Calibration. Every test but ``repeats`` is two-sided at level α/K, where K counts all tests run
on the request (Bonferroni), so the request's false-alarm rate is at most α (default 1e-3) up to
the accuracy of the normal approximations. ``repeats`` fires by chance only if four neighbouring
continuous values repeat exactly, which has probability far below 1e-12 for any tensor size
here (the 2×2 patches are hashed to 64 bits; see ``_repeated_windows``).
``benchmarks/bench_seed_health.py`` checks the calibration by simulation.

What it cannot see: a uniformly random permutation of i.i.d. noise is itself i.i.d. noise, and
any z_N drawn honestly from a *different* seed is a valid seed. Those are the commitment's job
(z_N is a committed leaf; with seed escrow the verifier regenerates it).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from scipy.special import ndtr

from samplerguard.commitment.digest import tensor_digest  # the design's canonical digest
from samplerguard.errors import MalformedInputError, VerificationError

__all__ = [
    "HealthReport",
    "HealthTest",
    "NoiseReuseDetector",
    "NoiseReuseError",
    "SeedShiftError",
    "check_seed_vector",
    "tensor_digest",
]

_MAX_ELEMENTS = 1 << 28
_WINDOW = 4


class SeedShiftError(VerificationError):
    """The seed vector failed the health checks."""


class NoiseReuseError(VerificationError):
    """The same initial noise was seen twice."""


@dataclass(frozen=True)
class HealthTest:
    """One test's outcome. ``score`` and ``threshold`` are on the same scale (|z| for the
    normal-approximated tests); the test fails when ``score > threshold``."""

    name: str
    sample: str  # "pooled" or "sample 3"
    score: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.score <= self.threshold

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        return f"{self.name}[{self.sample}] {self.score:.2f} (limit {self.threshold:.2f}) {verdict}"


@dataclass(frozen=True)
class HealthReport:
    """The battery's result for one seed vector."""

    ok: bool
    tests: tuple[HealthTest, ...]
    numel: int
    alpha: float

    @property
    def failures(self) -> list[HealthTest]:
        return [t for t in self.tests if not t.passed]

    @property
    def reason(self) -> str:
        """One line for a denial or a demo: which tests failed, by how much."""
        if self.ok:
            return "seed vector looks like N(0, I)"
        worst = sorted(self.failures, key=lambda t: t.score / max(t.threshold, 1e-12))[::-1]
        parts = [f"{t.name}[{t.sample}] = {t.score:.2f} > {t.threshold:.2f}" for t in worst[:4]]
        more = f" (+{len(worst) - 4} more)" if len(worst) > 4 else ""
        return "seed vector is not N(0, I): " + "; ".join(parts) + more

    def raise_for_failure(self) -> None:
        if not self.ok:
            raise SeedShiftError(self.reason + f" (false-alarm level {self.alpha:g})")

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "alpha": self.alpha,
            "numel": self.numel,
            "failures": [
                {"test": t.name, "sample": t.sample, "score": t.score, "threshold": t.threshold}
                for t in self.failures
            ],
            "tests": len(self.tests),
        }


# --- the statistics, vectorised over groups (rows) ---------------------------------------------
#
# numpy, not torch: numpy never hands small arrays to other threads, so the check costs the same
# on a loaded node as on an idle one. Every function takes x of shape (G, C, L, W): G groups
# (samples, or the pooled batch), C channels, L rows (middle dimensions folded), W columns, and
# returns one value per group.

Array = np.ndarray[Any, np.dtype[np.float64]]


def _mean_z(flat: Array) -> Array:
    out: Array = flat.sum(1) / math.sqrt(flat.shape[1])
    return out


def _variance_z(sum_sq: Array, n: int) -> Array:
    # Wilson–Hilferty: (χ²_n / n)^(1/3) ≈ N(1 − 2/(9n), 2/(9n)).
    v = 2.0 / (9.0 * n)
    out: Array = (np.cbrt(sum_sq / n) - (1.0 - v)) / math.sqrt(v)
    return out


def _skew_z(flat: Array) -> Array:
    # D'Agostino's transform of the sample skewness (as scipy.stats.skewtest).
    n = flat.shape[1]
    d = flat - flat.mean(1, keepdims=True)
    d2 = d * d
    m2 = np.maximum(d2.mean(1), 1e-300)
    m3 = (d2 * d).mean(1)
    b2 = m3 / m2**1.5
    y = b2 * math.sqrt(((n + 1) * (n + 3)) / (6.0 * (n - 2)))
    beta2 = (
        3.0 * (n * n + 27 * n - 70) * (n + 1) * (n + 3) / ((n - 2.0) * (n + 5) * (n + 7) * (n + 9))
    )
    w2 = -1.0 + math.sqrt(2 * (beta2 - 1))
    delta = 1.0 / math.sqrt(0.5 * math.log(w2))
    alpha = math.sqrt(2.0 / (w2 - 1))
    out: Array = delta * np.arcsinh(y / alpha)
    return out


def _kurtosis_z(flat: Array) -> Array:
    # Anscombe–Glynn's transform of the sample kurtosis (as scipy.stats.kurtosistest).
    n = flat.shape[1]
    d = flat - flat.mean(1, keepdims=True)
    d2 = d * d
    m2 = np.maximum(d2.mean(1), 1e-300)
    b2 = (d2 * d2).mean(1) / (m2 * m2)
    e = 3.0 * (n - 1) / (n + 1)
    varb2 = 24.0 * n * (n - 2) * (n - 3) / ((n + 1) ** 2 * (n + 3) * (n + 5))
    xs = (b2 - e) / math.sqrt(varb2)
    sqrtbeta1 = (
        6.0
        * (n * n - 5 * n + 2)
        / ((n + 7) * (n + 9))
        * math.sqrt((6.0 * (n + 3) * (n + 5)) / (n * (n - 2) * (n - 3)))
    )
    a = 6.0 + 8.0 / sqrtbeta1 * (2.0 / sqrtbeta1 + math.sqrt(1 + 4.0 / sqrtbeta1**2))
    denom = 1 + xs * math.sqrt(2 / (a - 4.0))
    term2 = np.sign(denom) * np.cbrt((1 - 2.0 / a) / np.maximum(np.abs(denom), 1e-300))
    out: Array = ((1 - 2 / (9.0 * a)) - term2) / math.sqrt(2 / (9.0 * a))
    return out


def _ks_scaled(flat: Array) -> Array:
    n = flat.shape[1]
    cdf = ndtr(np.sort(flat, axis=1))
    i = np.arange(1, n + 1, dtype=np.float64)
    d = np.maximum((i / n - cdf).max(1), (cdf - (i - 1) / n).max(1))
    out: Array = d * (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n))
    return out


def _ks_threshold(alpha: float) -> float:
    # Kolmogorov tail P(K > t) ≈ 2·exp(−2t²), the leading term (conservative for small α).
    return math.sqrt(-0.5 * math.log(alpha / 2.0))


def _lag_z(x: Array, axis: int) -> Array | None:
    """Self-normalised lag-1 product sum along ``axis``: Σp/√Σp², p = x_i·x_{i+1}."""
    size = x.shape[axis]
    if size < 2:
        return None
    a = np.take(x, np.arange(size - 1), axis=axis)
    b = np.take(x, np.arange(1, size), axis=axis)
    p = (a * b).reshape(x.shape[0], -1)
    out: Array = p.sum(1) / np.sqrt(np.maximum((p * p).sum(1), 1e-300))
    return out


def _repeated_windows(x: np.ndarray[Any, Any]) -> int:
    """How many 2×2 patches (1×4 windows for a single row) occur more than once."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    if bits.ndim >= 2 and bits.shape[-1] >= 2 and bits.shape[-2] >= 2:
        parts = [bits[..., :-1, :-1], bits[..., :-1, 1:], bits[..., 1:, :-1], bits[..., 1:, 1:]]
        w = np.stack([p.reshape(-1) for p in parts], axis=1)
    else:
        flat = bits.reshape(-1)
        if flat.size < _WINDOW:
            return 0
        w = np.lib.stride_tricks.sliding_window_view(flat, _WINDOW)
    # A 64-bit mix of the four 32-bit patterns (wrapping arithmetic): exact duplicates always
    # collide; distinct patches collide by chance with probability ~ m²/2^64.
    h = np.zeros(w.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k, mult in enumerate(_MIX):
            h = h * np.uint64(0x100000001B3) + (w[:, k] + np.uint64(0x632BE59BD9B4E019)) * mult
    s = np.sort(h)
    return int((s[1:] == s[:-1]).sum())


_MIX = tuple(
    np.uint64(m)
    for m in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5)
)

#: Below this many values per group the Anscombe–Glynn normal approximation of the kurtosis
#: test is too liberal in its tails (2-3× at n = 64..1024 by simulation); the KS test covers
#: the distribution's shape there.
KURTOSIS_MIN_N = 4096


# --- the battery --------------------------------------------------------------------------------


def _as_groups(z: Array) -> Array:
    """(B, C, L, W): batch first, channels second, middle dimensions folded."""
    if z.ndim >= 4:
        return z.reshape(z.shape[0], z.shape[1], -1, z.shape[-1])
    if z.ndim == 3:
        return z.reshape(1, z.shape[0], z.shape[1], z.shape[2])
    if z.ndim == 2:
        return z.reshape(1, 1, z.shape[0], z.shape[1])
    return z.reshape(1, 1, 1, -1)


def _battery(x: Array, labels: list[str], zcrit: float, kcrit: float) -> list[HealthTest]:
    g, c, _, _ = x.shape
    flat = x.reshape(g, -1)
    n = flat.shape[1]
    stats: list[tuple[str, Array, float]] = [
        ("mean", np.abs(_mean_z(flat)), zcrit),
        ("variance", np.abs(_variance_z((flat * flat).sum(1), n)), zcrit),
        ("skewness", np.abs(_skew_z(flat)), zcrit),
        ("ks", _ks_scaled(flat), kcrit),
    ]
    if n >= KURTOSIS_MIN_N:
        stats.append(("kurtosis", np.abs(_kurtosis_z(flat)), zcrit))
    if c > 1:
        per_channel = x.reshape(g, c, -1)
        cm = np.abs(per_channel.sum(2) / math.sqrt(per_channel.shape[2])).max(1)
        stats.append(("channel-mean", cm, zcrit))
    for name, axis in (("autocorr-w", 3), ("autocorr-h", 2), ("autocorr-c", 1)):
        lag = _lag_z(x, axis)
        if lag is not None:
            stats.append((name, np.abs(lag), zcrit))
    out = []
    for name, values, limit in stats:
        for label, v in zip(labels, values.tolist(), strict=True):
            out.append(HealthTest(name, label, float(v), limit))
    return out


def _tests_per_group(x: Array) -> int:
    _, c, rows, cols = x.shape
    n = c * rows * cols
    k = 4 + int(n >= KURTOSIS_MIN_N) + int(c > 1)
    return int(k + sum(1 for size in (cols, rows, c) if size >= 2))


def check_seed_vector(z: torch.Tensor, *, alpha: float = 1e-3) -> HealthReport:
    """Run the battery on ``z`` (CPU or GPU, any float dtype). ``alpha`` is the false-alarm
    level for the whole tensor."""
    if not isinstance(z, torch.Tensor):
        raise MalformedInputError(f"a seed vector must be a tensor, got {type(z).__name__}")
    if not z.dtype.is_floating_point:
        raise MalformedInputError(f"a seed vector must be floating point, got {z.dtype}")
    if not 0.0 < alpha < 0.5:
        raise MalformedInputError(f"alpha {alpha} is outside (0, 0.5)")
    n_all = z.numel()
    if n_all < 16 or n_all > _MAX_ELEMENTS:
        raise MalformedInputError(f"a seed vector needs 16..{_MAX_ELEMENTS} values, got {n_all}")
    raw = z.detach().to("cpu", torch.float32).numpy()
    if not bool(np.isfinite(raw).all()):
        inf = HealthTest("finite", "pooled", math.inf, 0.0)
        return HealthReport(False, (inf,), n_all, alpha)
    x = _as_groups(raw.astype(np.float64))
    batch, channels, rows, cols = x.shape
    # The pooled group stacks the batch along the rows: (1, C, B·L, W).
    pooled = x.transpose(1, 0, 2, 3).reshape(1, channels, batch * rows, cols) if batch > 1 else None

    # Bonferroni over every test this request runs (per-sample, pooled, coherence).
    k = _tests_per_group(x) * batch
    if pooled is not None:
        k += _tests_per_group(pooled) + 1
    a = alpha / k
    zcrit = NormalDist().inv_cdf(1 - a / 2)
    kcrit = _ks_threshold(a)

    tests: list[HealthTest] = []
    if pooled is not None:
        tests += _battery(pooled, ["pooled"], zcrit, kcrit)
        total = x.sum(axis=0).reshape(1, -1)
        coherence = _variance_z((total * total).sum(1) / batch, total.shape[1])
        tests.append(HealthTest("batch-coherence", "pooled", abs(float(coherence[0])), zcrit))
    labels = [f"sample {i}" for i in range(batch)] if batch > 1 else ["sample"]
    tests += _battery(x, labels, zcrit, kcrit)
    tests.append(HealthTest("repeats", "pooled", float(_repeated_windows(raw)), 0.0))
    return HealthReport(all(t.passed for t in tests), tuple(tests), n_all, alpha)


# --- reuse across requests ------------------------------------------------------------------------


class NoiseReuseDetector:
    """Remembers the digests of the last ``capacity`` seed vectors (and of each sample in a
    batch) and alarms when one comes back. Memory is bounded: about 150 bytes per digest."""

    def __init__(self, capacity: int = 100_000) -> None:
        if not 1 <= capacity <= 1 << 24:
            raise MalformedInputError(f"capacity {capacity} is outside 1..2^24")
        self._capacity = capacity
        self._seen: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, z: torch.Tensor, label: str = "") -> None:
        """Record ``z``; raise :class:`NoiseReuseError` if it (or one of its samples) was seen
        before, or a batch holds the same sample twice."""
        if z.ndim >= 4:
            parts = [tensor_digest(z[i]) for i in range(z.shape[0])]
            if z.shape[0] > 1:
                parts.append(tensor_digest(z))
        else:
            parts = [tensor_digest(z)]
        self.observe_digests(parts, label)

    def observe_digests(self, digests: list[str], label: str = "") -> None:
        with self._lock:
            if len(set(digests)) != len(digests):
                raise NoiseReuseError(
                    f"initial noise of {label or 'this request'} repeats a sample within its batch"
                )
            for d in digests:
                first = self._seen.get(d)
                if first is not None:
                    raise NoiseReuseError(
                        f"initial noise {d[:19]}… of {label or 'this request'} was already used "
                        f"by {first or 'an earlier request'}"
                    )
            for d in digests:
                self._seen[d] = label
                while len(self._seen) > self._capacity:
                    self._seen.popitem(last=False)
