"""The drift detector: a sliding window per feature, compared after every request.

See :mod:`samplerguard.telemetry.drift` for the method and its bounds.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from samplerguard.telemetry.drift.baseline import (
    CategoricalBaseline,
    DriftBaseline,
    HistogramBaseline,
    _number,
    category_label,
)
from samplerguard.telemetry.drift.statistics import _cdf, _fused, _ks_p, _psi_limit

__all__ = ["AlertKind", "AlertListener", "DriftAlert", "DriftDetector", "Statistic"]

log = logging.getLogger(__name__)

#: Distinct unknown categories remembered per feature (each alerts once while remembered).
_UNKNOWN_MEMORY = 1024

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


class _Window:
    """The last ``window`` observations of a feature as bucket indices, the bucket counts they
    make, and the baseline's counts to compare them with."""

    def __init__(self, base: list[float], window: int) -> None:
        self.base = base
        self.base_cdf = _cdf(base)
        self.base_total = sum(base)
        self.counts = [0.0] * len(base)
        self.recent: deque[int] = deque(maxlen=window)
        self.seen = 0
        self.quiet_until = 0

    def _add(self, index: int) -> None:
        if len(self.recent) == self.recent.maxlen:
            self.counts[self.recent[0]] -= 1
        self.recent.append(index)
        self.counts[index] += 1
        self.seen += 1


class _NumericWindow(_Window):
    def __init__(self, baseline: HistogramBaseline, window: int) -> None:
        super().__init__([float(c) for c in baseline.counts], window)
        self.baseline = baseline

    def add(self, value: float) -> None:
        self._add(self.baseline.bucket(value))


class _CategoricalWindow(_Window):
    """Counts per baseline category, plus one pooled bucket for values the baseline lacks."""

    def __init__(self, baseline: CategoricalBaseline, window: int) -> None:
        names = sorted(baseline.counts)
        super().__init__([float(baseline.counts[c]) for c in names] + [0.0], window)
        self.baseline = baseline
        self.index = {name: i for i, name in enumerate(names)}
        self.alerted: OrderedDict[str, None] = OrderedDict()

    def add(self, label: str) -> None:
        self._add(self.index.get(label, len(self.index)))

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
