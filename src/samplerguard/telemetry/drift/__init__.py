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

Bounds (docs/telemetry.md derives them; tests/unit/telemetry/test_telemetry_drift.py checks
them):

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

The modules follow the seams: :mod:`.statistics` (KS and PSI on bucket counts), :mod:`.baseline`
(the golden baseline and its JSON) and :mod:`.detector` (the sliding windows and the alerts);
callers import from this facade.
"""

from samplerguard.telemetry.drift.baseline import (
    BASELINE_KIND,
    DEFAULT_EDGES,
    FEATURES,
    BaselineError,
    CategoricalBaseline,
    DriftBaseline,
    HistogramBaseline,
    category_label,
)
from samplerguard.telemetry.drift.detector import DriftAlert, DriftDetector
from samplerguard.telemetry.drift.statistics import (
    DriftScore,
    compare_categorical,
    compare_histogram,
    kolmogorov_sf,
    ks_binned,
    psi,
)

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
