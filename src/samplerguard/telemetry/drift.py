"""Drift detection: live request histograms against a golden baseline.

A provider that quietly raises the guidance scale, trims steps or swaps the schedule changes the
*distribution* of public recipe values long before any single request looks wrong. The
:class:`DriftDetector` keeps a sliding window of the last ``window`` requests per feature and
compares it, after every request, with a :class:`DriftBaseline` recorded from an honest run.

Method (pure numpy, no scipy):

* Numeric features (``guidance_scale``, ``steps``) are bucketed with the baseline's edges, which
  are the OTel histogram boundaries, upper-inclusive. Two statistics, either trips the alarm:

  - **KS** on the binned CDFs, D = max |F_live − F_base| at the bucket edges, with the effective
    size n·N/(n+N) and the asymptotic Kolmogorov tail with Stephens' correction. Binning can only
    lower D, so the test stays conservative. Alarm when p < ``alpha``.
  - **PSI** = Σ (p−q)·ln(p/q) over buckets where either side has mass (pseudo-count ½). Alarm
    when PSI ≥ max(``psi_threshold``, χ²₍B−1₎(1−α)·(1/n + 1/N)): the conventional "significant
    shift" level, but never below the PSI an honest window of n could show by chance (PSI ≈
    χ²·(1/n+1/N) under the null; Wilson–Hilferty quantile).

* Categorical features (``schedule``, ``sampler``): a value the baseline never saw raises an
  ``unknown-category`` alert **on its first request** (once per distinct value, remembered in a
  bounded LRU). Shifts among known values use the same PSI rule.

Bounds (docs/telemetry.md derives them; tests/unit/telemetry/test_drift.py checks them):

* A shift whose true KS distance is D alarms once the window holds m shifted requests with
  m ≥ (K_α / D)·√W, K_α = √(ln(2/α)/2) (≈ 2.69 for the default α = 1e-6), since the live
  CDF then differs by (m/W)·D and n_eff ≈ W. For CFG N(7,1) → N(9,1), D ≈ 0.68 and with
  W = 200, m ≈ 56 (at most ``window`` in any case, since after W shifted requests the window is
  all shifted and D√W ≈ 9.6 ≫ K_α). On a fresh detector the first check at ``min_samples``
  requests already alarms.
* False alarms: each check is at level α per statistic (KS and PSI per numeric feature, PSI per
  categorical one), so a stream of L honest requests has a family-wise false-alarm probability
  ≤ 6·α·L with the four default features (Bonferroni; 0.6 % for 1,000 requests). Overlapping
  windows make the real rate far lower: benchmarks/bench_telemetry.py sees none in 40,000.

After a shift alarm a feature is quiet for ``window`` requests, so one drift raises one alert
per window rather than one per request.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import math
import numbers
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Final, Literal

import numpy as np

from samplerguard.errors import MalformedInputError
from samplerguard.telemetry.attributes import DRIFT_FEATURES, INVALID
from samplerguard.telemetry.buckets import GUIDANCE_BUCKETS, STEPS_BUCKETS

__all__ = [
    "BASELINE_KIND",
    "DEFAULT_EDGES",
    "FEATURES",
    "BaselineError",
    "CategoricalBaseline",
    "DriftAlert",
    "DriftBaseline",
    "DriftDetector",
    "DriftScore",
    "HistogramBaseline",
    "category_label",
    "compare_categorical",
    "compare_histogram",
    "kolmogorov_sf",
    "ks_binned",
    "psi",
]

log = logging.getLogger(__name__)

BASELINE_KIND: Final = "samplerguard.dev/drift-baseline/v1"
#: Buckets for the numeric features, the same as the exported histograms'.
DEFAULT_EDGES: Final[Mapping[str, tuple[float, ...]]] = {
    "guidance_scale": GUIDANCE_BUCKETS,
    "steps": STEPS_BUCKETS,
}
DEFAULT_CATEGORICAL: Final[tuple[str, ...]] = ("schedule", "sampler")
#: The features a baseline may hold (also the bounded ``feature`` attribute of the alert metric).
FEATURES: Final[frozenset[str]] = DRIFT_FEATURES

_MAX_BASELINE_BYTES = 1 << 20
_MAX_EDGES = 256
_MAX_CATEGORIES = 256
_MAX_COUNT = 1 << 53
_UNKNOWN_MEMORY = 1024
_SMOOTHING = 0.5


class BaselineError(MalformedInputError):
    """A drift baseline is malformed: wrong kind, bad edges or counts, unknown feature, too big."""


# --- statistics -------------------------------------------------------------------------------


def kolmogorov_sf(lam: float) -> float:
    """P(K > λ) for the Kolmogorov distribution: 2 Σ (−1)^(k−1) exp(−2k²λ²)."""
    if lam <= 0.0:
        return 1.0
    if lam < 0.2:  # the series converges slowly here and the answer is 1 to 1e-16
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * lam * lam)
        total += term if k % 2 else -term
        if term < 1e-18:
            break
    return min(1.0, max(0.0, 2.0 * total))


def _as_counts(values: Sequence[float] | np.ndarray[Any, Any], name: str) -> np.ndarray[Any, Any]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of counts")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must hold finite, non-negative counts")
    return arr


def ks_binned(
    expected: Sequence[float] | np.ndarray[Any, Any], actual: Sequence[float] | np.ndarray[Any, Any]
) -> tuple[float, float]:
    """Two-sample KS on bucket counts over the same edges: ``(D, p)``.

    D is the largest CDF gap at the bucket edges; p uses n_eff = n·N/(n+N) and Stephens'
    small-sample correction. With an empty side, ``(0.0, 1.0)``.
    """
    q, p = _pair(expected, actual)
    return _ks(q, p)


def _pair(
    expected: Sequence[float] | np.ndarray[Any, Any], actual: Sequence[float] | np.ndarray[Any, Any]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    q = _as_counts(expected, "expected")
    p = _as_counts(actual, "actual")
    if q.shape != p.shape:
        raise ValueError(f"bucket count mismatch: expected has {q.size}, actual has {p.size}")
    return q, p


def _ks(q: np.ndarray[Any, Any], p: np.ndarray[Any, Any]) -> tuple[float, float]:
    big_n, n = float(q.sum()), float(p.sum())
    if big_n <= 0 or n <= 0:
        return 0.0, 1.0
    d = float(np.abs(np.cumsum(p) / n - np.cumsum(q) / big_n).max())
    n_eff = n * big_n / (n + big_n)
    root = math.sqrt(n_eff)
    return d, kolmogorov_sf((root + 0.12 + 0.11 / root) * d)


def psi(
    expected: Sequence[float] | np.ndarray[Any, Any], actual: Sequence[float] | np.ndarray[Any, Any]
) -> tuple[float, int]:
    """Population stability index over buckets where either side has mass: ``(PSI, buckets)``.

    Each used bucket gets a pseudo-count of ½ on both sides, so an empty bucket on one side
    gives a large but finite term.
    """
    q, p = _pair(expected, actual)
    return _psi(q, p)


def _psi(q: np.ndarray[Any, Any], p: np.ndarray[Any, Any]) -> tuple[float, int]:
    used = (q > 0) | (p > 0)
    k = int(np.count_nonzero(used))
    if k < 2 or q.sum() <= 0 or p.sum() <= 0:
        return 0.0, k
    qs = q[used] + _SMOOTHING
    ps = p[used] + _SMOOTHING
    qs /= qs.sum()
    ps /= ps.sum()
    return float(((ps - qs) * np.log(ps / qs)).sum()), k


@functools.lru_cache(maxsize=1024)
def _chi2_quantile(df: int, alpha: float) -> float:
    """Upper-α quantile of χ²_df by Wilson–Hilferty (accurate to a few % for df ≥ 1)."""
    z = NormalDist().inv_cdf(1.0 - alpha)
    c = 2.0 / (9.0 * df)
    return df * max(0.0, 1.0 - c + z * math.sqrt(c)) ** 3


def _psi_limit(buckets: int, n: float, big_n: float, alpha: float, floor: float) -> float:
    if buckets < 2:
        return math.inf
    return max(floor, _chi2_quantile(buckets - 1, alpha) * (1.0 / n + 1.0 / big_n))


def _fused(
    base: list[float], live: list[float], base_cdf: list[float]
) -> tuple[float, float, int, float]:
    """The detector's hot path, in plain Python (≈2× faster than numpy on ~20 buckets):
    ``(KS D, PSI, used buckets, n)`` in two passes. Same values as :func:`ks_binned` and
    :func:`psi`."""
    n = sq = sp = 0.0
    for a, b in zip(base, live, strict=True):
        n += b
        if a > 0 or b > 0:
            sq += a + _SMOOTHING
            sp += b + _SMOOTHING
    if n <= 0:
        return 0.0, 0.0, 0, 0.0
    cum = d = total = 0.0
    used = 0
    log = math.log
    for a, b, fq in zip(base, live, base_cdf, strict=True):
        cum += b
        gap = abs(cum / n - fq)
        if gap > d:
            d = gap
        if a > 0 or b > 0:
            used += 1
            x = (b + _SMOOTHING) / sp
            y = (a + _SMOOTHING) / sq
            total += (x - y) * log(x / y)
    return d, (total if used >= 2 else 0.0), used, n


def _ks_p(d: float, n: float, big_n: float) -> float:
    if d <= 0.0 or n <= 0 or big_n <= 0:
        return 1.0
    root = math.sqrt(n * big_n / (n + big_n))
    return kolmogorov_sf((root + 0.12 + 0.11 / root) * d)


def _cdf(counts: list[float]) -> list[float]:
    total = sum(counts)
    out, cum = [], 0.0
    for c in counts:
        cum += c
        out.append(cum / total if total > 0 else 0.0)
    return out


@dataclass(frozen=True)
class DriftScore:
    """Both statistics for one comparison, and whether either crossed its limit."""

    n: int
    ks: float
    p_value: float
    psi: float
    psi_limit: float
    alpha: float

    @property
    def ks_alarm(self) -> bool:
        return self.p_value < self.alpha

    @property
    def psi_alarm(self) -> bool:
        return self.psi >= self.psi_limit

    @property
    def alarm(self) -> bool:
        return self.ks_alarm or self.psi_alarm


def compare_histogram(
    baseline: HistogramBaseline,
    counts: Sequence[float] | np.ndarray[Any, Any],
    *,
    alpha: float = 1e-6,
    psi_threshold: float = 0.25,
) -> DriftScore:
    """Compare live bucket counts (same edges, e.g. an OTel histogram point's
    ``bucket_counts``) with the baseline."""
    live = _as_counts(counts, "counts")
    if live.size != len(baseline.counts):
        raise ValueError(
            f"live histogram has {live.size} buckets, the baseline has {len(baseline.counts)}"
        )
    base = np.asarray(baseline.counts, dtype=np.float64)
    d, p = _ks(base, live)
    value, used = _psi(base, live)
    n = float(live.sum())
    limit = _psi_limit(used, n, float(base.sum()), alpha, psi_threshold) if n > 0 else math.inf
    return DriftScore(int(n), d, p, value, limit, alpha)


def compare_categorical(
    baseline: CategoricalBaseline,
    counts: Mapping[str, float],
    *,
    alpha: float = 1e-6,
    psi_threshold: float = 0.25,
) -> DriftScore:
    """PSI of live category counts against the baseline (no KS: categories have no order).
    Categories the baseline lacks are pooled into one extra bucket."""
    names = sorted(baseline.counts)
    base = [float(baseline.counts[c]) for c in names] + [0.0]
    live = [float(counts.get(c, 0.0)) for c in names]
    live.append(float(sum(v for c, v in counts.items() if c not in baseline.counts)))
    value, used = _psi(np.asarray(base), np.asarray(live))
    n = sum(live)
    limit = _psi_limit(used, n, sum(base), alpha, psi_threshold) if n > 0 else math.inf
    return DriftScore(int(n), 0.0, 1.0, value, limit, alpha)


# --- baselines --------------------------------------------------------------------------------


def _check_count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_COUNT:
        raise BaselineError(f"{where}: counts must be integers in 0..2^53, got {value!r:.40}")
    return value


@dataclass(frozen=True)
class HistogramBaseline:
    """Bucket counts over explicit edges. Bucket i holds (edges[i−1], edges[i]]; the first is
    (−∞, edges[0]] and the last (edges[−1], +∞), exactly as an OTel explicit-bucket histogram."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.edges) <= _MAX_EDGES:
            raise BaselineError(f"a histogram needs 1..{_MAX_EDGES} edges, got {len(self.edges)}")
        if not all(isinstance(e, (int, float)) and math.isfinite(e) for e in self.edges):
            raise BaselineError("histogram edges must be finite numbers")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise BaselineError("histogram edges must be strictly increasing")
        if len(self.counts) != len(self.edges) + 1:
            raise BaselineError(
                f"a histogram with {len(self.edges)} edges needs {len(self.edges) + 1} counts, "
                f"got {len(self.counts)}"
            )
        for c in self.counts:
            _check_count(c, "histogram")
        if sum(self.counts) == 0:
            raise BaselineError("a histogram baseline must hold at least one observation")

    @property
    def total(self) -> int:
        return sum(self.counts)

    def bucket(self, value: float) -> int:
        """The bucket index of ``value`` (upper-inclusive, as OTel)."""
        return bisect.bisect_left(self.edges, value)


@dataclass(frozen=True)
class CategoricalBaseline:
    """Counts per category value (e.g. schedule id)."""

    counts: Mapping[str, int]

    def __post_init__(self) -> None:
        if not 1 <= len(self.counts) <= _MAX_CATEGORIES:
            raise BaselineError(
                f"a categorical baseline needs 1..{_MAX_CATEGORIES} categories, "
                f"got {len(self.counts)}"
            )
        for key, c in self.counts.items():
            if not isinstance(key, str) or not 1 <= len(key) <= 64:
                raise BaselineError("category names must be strings of 1..64 characters")
            _check_count(c, f"category {key!r}")
        if sum(self.counts.values()) == 0:
            raise BaselineError("a categorical baseline must hold at least one observation")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def known(self, value: str) -> bool:
        return self.counts.get(value, 0) > 0


def category_label(value: object) -> str:
    """How a categorical value is compared: stripped, lower-case, at most 64 characters, and
    ``"invalid"`` when it is not a string."""
    if not isinstance(value, str):
        return INVALID
    text = value.strip().lower()
    return text[:64] if text else INVALID


@dataclass(frozen=True)
class DriftBaseline:
    """The golden baseline: per-feature histograms and category counts.

    Stored as JSON (:meth:`to_json`/:meth:`from_json`); build one from a recorded honest
    stream with :meth:`fit`.
    """

    numeric: Mapping[str, HistogramBaseline] = field(default_factory=dict)
    categorical: Mapping[str, CategoricalBaseline] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [*self.numeric, *self.categorical]
        if not names:
            raise BaselineError("a drift baseline needs at least one feature")
        unknown = sorted(set(names) - FEATURES)
        if unknown:
            raise BaselineError(f"unknown feature(s) {unknown}; known: {sorted(FEATURES)}")
        if len(set(names)) != len(names):
            raise BaselineError("a feature cannot be both numeric and categorical")

    @classmethod
    def fit(
        cls,
        records: Iterable[Mapping[str, object]],
        *,
        edges: Mapping[str, Sequence[float]] | None = None,
        categorical: Sequence[str] = DEFAULT_CATEGORICAL,
    ) -> DriftBaseline:
        """Count a recorded honest stream into a baseline.

        ``records``: mappings such as ``{"guidance_scale": 7.5, "steps": 30, "schedule":
        "karras", "sampler": "euler"}``. ``edges`` per numeric feature (default
        :data:`DEFAULT_EDGES`). Missing features and non-finite numbers are skipped; a feature
        with no observation at all is left out of the baseline.
        """
        bucket_edges = {k: tuple(float(e) for e in v) for k, v in (edges or DEFAULT_EDGES).items()}
        numeric_counts = {k: [0] * (len(v) + 1) for k, v in bucket_edges.items()}
        cat_counts: dict[str, dict[str, int]] = {k: {} for k in categorical}
        for record in records:
            for name, feature_edges in bucket_edges.items():
                value = _number(record.get(name))
                if value is not None:
                    numeric_counts[name][bisect.bisect_left(feature_edges, value)] += 1
            for name in categorical:
                raw = record.get(name)
                if raw is None:
                    continue
                label = category_label(raw)
                if label == INVALID:
                    continue
                cat_counts[name][label] = cat_counts[name].get(label, 0) + 1
                if len(cat_counts[name]) > _MAX_CATEGORIES:
                    raise BaselineError(
                        f"feature {name!r} has more than {_MAX_CATEGORIES} distinct values"
                    )
        return cls(
            numeric={
                k: HistogramBaseline(bucket_edges[k], tuple(c))
                for k, c in numeric_counts.items()
                if sum(c) > 0
            },
            categorical={k: CategoricalBaseline(dict(c)) for k, c in cat_counts.items() if c},
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": BASELINE_KIND,
            "numeric": {
                k: {"edges": list(h.edges), "counts": list(h.counts)}
                for k, h in sorted(self.numeric.items())
            },
            "categorical": {
                k: dict(sorted(c.counts.items())) for k, c in sorted(self.categorical.items())
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> DriftBaseline:
        """Parse and validate a stored baseline. Raises :class:`BaselineError`."""
        if len(text) > _MAX_BASELINE_BYTES:
            raise BaselineError(
                f"drift baseline is {len(text)} bytes, more than the {_MAX_BASELINE_BYTES} allowed"
            )
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BaselineError(f"drift baseline is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise BaselineError("drift baseline must be a JSON object")
        if doc.get("kind") != BASELINE_KIND:
            raise BaselineError(
                f"drift baseline kind is {str(doc.get('kind'))[:80]!r}, expected {BASELINE_KIND!r}"
            )
        extra = sorted(set(doc) - {"kind", "numeric", "categorical"})
        if extra:
            raise BaselineError(f"drift baseline has unexpected field(s) {extra[:8]}")
        numeric_doc = doc.get("numeric", {})
        categorical_doc = doc.get("categorical", {})
        if not isinstance(numeric_doc, dict) or not isinstance(categorical_doc, dict):
            raise BaselineError("'numeric' and 'categorical' must be JSON objects")
        numeric: dict[str, HistogramBaseline] = {}
        for name, hist in numeric_doc.items():
            if not isinstance(hist, dict) or set(hist) != {"edges", "counts"}:
                raise BaselineError(f"numeric feature {name!r} must hold exactly edges and counts")
            edges, counts = hist["edges"], hist["counts"]
            if not isinstance(edges, list) or not isinstance(counts, list):
                raise BaselineError(f"numeric feature {name!r}: edges and counts must be lists")
            if any(isinstance(e, bool) or not isinstance(e, (int, float)) for e in edges):
                raise BaselineError(f"numeric feature {name!r}: edges must be numbers")
            try:
                floats = tuple(float(e) for e in edges)
            except OverflowError:
                raise BaselineError(
                    f"numeric feature {name!r}: edges must be finite numbers"
                ) from None
            numeric[name] = HistogramBaseline(
                floats,
                tuple(_check_count(c, f"numeric feature {name!r}") for c in counts),
            )
        categorical: dict[str, CategoricalBaseline] = {}
        for name, cats in categorical_doc.items():
            if not isinstance(cats, dict):
                raise BaselineError(f"categorical feature {name!r} must be an object of counts")
            categorical[name] = CategoricalBaseline(dict(cats))
        return cls(numeric=numeric, categorical=categorical)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DriftBaseline:
        p = Path(path)
        try:
            size = p.stat().st_size
            if size > _MAX_BASELINE_BYTES:
                raise BaselineError(
                    f"drift baseline {p} is {size} bytes, more than {_MAX_BASELINE_BYTES}"
                )
            data = p.read_bytes()
        except OSError as exc:
            raise BaselineError(f"cannot read drift baseline {p}: {exc.strerror}") from None
        return cls.from_json(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")


def _number(value: object) -> float | None:
    # numbers.Real: numpy scalars count too (np.int64 is not an int subclass)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


# --- the detector -----------------------------------------------------------------------------

AlertKind = Literal["distribution-shift", "unknown-category"]
Statistic = Literal["ks", "psi", "unknown"]


@dataclass(frozen=True)
class DriftAlert:
    """One drift alarm, delivered to the detector's listeners."""

    feature: str
    kind: AlertKind
    #: Which test tripped: ``ks``, ``psi``, or ``unknown`` for a never-seen category.
    statistic: Statistic
    #: Live observations in the window when it fired.
    samples: int
    #: Observations of this feature since the detector started (1-based index of the request).
    observed: int
    ks: float = 0.0
    p_value: float = 1.0
    psi: float = 0.0
    psi_limit: float = math.inf
    #: The unknown value (normalised, ≤ 64 characters) for ``unknown-category``; not exported
    #: as a metric attribute.
    category: str | None = None

    @property
    def message(self) -> str:
        if self.kind == "unknown-category":
            return (
                f"{self.feature} {self.category!r} is not in the golden baseline "
                f"(request {self.observed})"
            )
        return (
            f"{self.feature} distribution drifted from the golden baseline over the last "
            f"{self.samples} requests: KS D={self.ks:.3f} (p={self.p_value:.2e}), "
            f"PSI={self.psi:.3f} (limit {self.psi_limit:.3f})"
        )


AlertListener = Callable[[DriftAlert], None]


class _NumericWindow:
    def __init__(self, baseline: HistogramBaseline, window: int) -> None:
        self.baseline = baseline
        self.base = [float(c) for c in baseline.counts]
        self.base_cdf = _cdf(self.base)
        self.base_total = sum(self.base)
        self.counts = [0.0] * len(self.base)
        self.recent: deque[int] = deque(maxlen=window)
        self.seen = 0
        self.quiet_until = 0

    def add(self, value: float) -> None:
        if len(self.recent) == self.recent.maxlen:
            self.counts[self.recent[0]] -= 1
        index = self.baseline.bucket(value)
        self.recent.append(index)
        self.counts[index] += 1
        self.seen += 1


class _CategoricalWindow:
    """Counts per baseline category, plus one pooled bucket for values the baseline lacks."""

    def __init__(self, baseline: CategoricalBaseline, window: int) -> None:
        self.baseline = baseline
        names = sorted(baseline.counts)
        self.index = {name: i for i, name in enumerate(names)}
        self.base = [float(baseline.counts[c]) for c in names] + [0.0]
        self.base_cdf = _cdf(self.base)
        self.base_total = sum(self.base)
        self.counts = [0.0] * len(self.base)
        self.recent: deque[int] = deque(maxlen=window)
        self.seen = 0
        self.quiet_until = 0
        self.alerted: OrderedDict[str, None] = OrderedDict()

    def add(self, label: str) -> None:
        if len(self.recent) == self.recent.maxlen:
            self.counts[self.recent[0]] -= 1
        index = self.index.get(label, len(self.index))
        self.recent.append(index)
        self.counts[index] += 1
        self.seen += 1

    def first_unknown(self, label: str) -> bool:
        """True the first time an unknown ``label`` is seen (bounded LRU memory)."""
        if label in self.alerted:
            self.alerted.move_to_end(label)
            return False
        self.alerted[label] = None
        if len(self.alerted) > _UNKNOWN_MEMORY:
            self.alerted.popitem(last=False)
        return True


class DriftDetector:
    """Sliding-window drift detection against a :class:`DriftBaseline`.

    * ``window``: live requests compared per feature (W).
    * ``min_samples``: no distribution test before this many requests (unknown categories
      alert from the first).
    * ``alpha``: per-check false-alarm level of KS and of the PSI null floor.
    * ``psi_threshold``: the PSI floor (0.25 is the usual "significant shift").
    * ``on_alert``: a listener; more with :meth:`add_listener`. A listener that raises is
      logged and skipped, never propagated into the request path.

    Thread-safe; :meth:`observe` costs O(buckets) per numeric feature.
    """

    def __init__(
        self,
        baseline: DriftBaseline,
        *,
        window: int = 200,
        min_samples: int = 30,
        alpha: float = 1e-6,
        psi_threshold: float = 0.25,
        on_alert: AlertListener | None = None,
    ) -> None:
        if not 2 <= window <= 1_000_000:
            raise ValueError(f"window must be 2..1e6, got {window}")
        if not 2 <= min_samples <= window:
            raise ValueError(f"min_samples must be 2..window ({window}), got {min_samples}")
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
        if not psi_threshold > 0.0:
            raise ValueError(f"psi_threshold must be positive, got {psi_threshold}")
        self.baseline = baseline
        self.window = window
        self.min_samples = min_samples
        self.alpha = alpha
        self.psi_threshold = psi_threshold
        self._numeric = {k: _NumericWindow(h, window) for k, h in baseline.numeric.items()}
        self._categorical = {
            k: _CategoricalWindow(c, window) for k, c in baseline.categorical.items()
        }
        self._listeners: list[AlertListener] = [on_alert] if on_alert is not None else []
        self._lock = threading.Lock()

    def add_listener(self, listener: AlertListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def observe(self, record: Mapping[str, object]) -> list[DriftAlert]:
        """Add one request's features and return (and deliver) the alerts it raised.

        Features the baseline lacks are ignored; a missing or non-numeric value for a numeric
        feature is skipped.
        """
        alerts: list[DriftAlert] = []
        with self._lock:
            for name, win in self._numeric.items():
                value = _number(record.get(name))
                if value is None:
                    continue
                win.add(value)
                alert = self._check_numeric(name, win)
                if alert is not None:
                    alerts.append(alert)
            for name, cwin in self._categorical.items():
                if name not in record:
                    continue
                label = category_label(record[name])
                cwin.add(label)
                if not cwin.baseline.known(label):
                    if cwin.first_unknown(label):
                        alerts.append(
                            DriftAlert(
                                feature=name,
                                kind="unknown-category",
                                statistic="unknown",
                                samples=len(cwin.recent),
                                observed=cwin.seen,
                                category=label,
                            )
                        )
                    continue  # a never-seen value is its own alert, not also a shift
                alert = self._check_categorical(name, cwin)
                if alert is not None:
                    alerts.append(alert)
            listeners = list(self._listeners)
        for alert in alerts:
            for listener in listeners:
                try:
                    listener(alert)
                except Exception as exc:  # a broken listener must not break the request path
                    log.warning("drift alert listener failed: %s", type(exc).__name__)
        return alerts

    def _check_numeric(self, name: str, win: _NumericWindow) -> DriftAlert | None:
        n = len(win.recent)
        if n < self.min_samples or win.seen < win.quiet_until:
            return None
        d, value, used, _ = _fused(win.base, win.counts, win.base_cdf)
        p = _ks_p(d, n, win.base_total)
        limit = _psi_limit(used, n, win.base_total, self.alpha, self.psi_threshold)
        ks_alarm, psi_alarm = p < self.alpha, value >= limit
        if not (ks_alarm or psi_alarm):
            return None
        win.quiet_until = win.seen + self.window
        return DriftAlert(
            feature=name,
            kind="distribution-shift",
            statistic="ks" if ks_alarm else "psi",
            samples=n,
            observed=win.seen,
            ks=d,
            p_value=p,
            psi=value,
            psi_limit=limit,
        )

    def _check_categorical(self, name: str, win: _CategoricalWindow) -> DriftAlert | None:
        n = len(win.recent)
        if n < self.min_samples or win.seen < win.quiet_until:
            return None
        _, value, used, _ = _fused(win.base, win.counts, win.base_cdf)
        limit = _psi_limit(used, n, win.base_total, self.alpha, self.psi_threshold)
        if value < limit:
            return None
        win.quiet_until = win.seen + self.window
        return DriftAlert(
            feature=name,
            kind="distribution-shift",
            statistic="psi",
            samples=n,
            observed=win.seen,
            psi=value,
            psi_limit=limit,
        )
