"""Drift baselines: the golden per-feature histograms and category counts, and their JSON.

See :mod:`samplerguard.telemetry.drift` for how the detector compares a live window with one.
"""

from __future__ import annotations

import bisect
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from samplerguard.errors import MalformedInputError
from samplerguard.telemetry.attributes import DRIFT_FEATURES, INVALID
from samplerguard.telemetry.buckets import GUIDANCE_BUCKETS, STEPS_BUCKETS

__all__ = [
    "BASELINE_KIND",
    "DEFAULT_CATEGORICAL",
    "DEFAULT_EDGES",
    "FEATURES",
    "BaselineError",
    "CategoricalBaseline",
    "DriftBaseline",
    "HistogramBaseline",
    "category_label",
]

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


class BaselineError(MalformedInputError):
    """A drift baseline is malformed: wrong kind, bad edges or counts, unknown feature, too big."""


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
