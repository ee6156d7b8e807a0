"""Drift detection: the statistics, baselines on disk, and the alert bounds docs/telemetry.md
promises (CFG N(7,1) → N(9,1) within 200 requests, an unknown schedule id on its first request,
no alarm on honest seeded streams)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics.export import HistogramDataPoint, NumberDataPoint

from samplerguard.errors import MalformedInputError
from samplerguard.telemetry import (
    GUIDANCE_BUCKETS,
    BaselineError,
    CategoricalBaseline,
    DriftAlert,
    DriftBaseline,
    DriftDetector,
    HistogramBaseline,
    MetricName,
    RequestObservation,
    compare_categorical,
    compare_histogram,
    setup_metrics,
)
from samplerguard.telemetry.drift import kolmogorov_sf, ks_binned, psi
from samplerguard.telemetry.drift.statistics import _chi2_quantile

BOUND = 200  # requests: the documented detection bound for the 2σ CFG shift


def _stream(rng: np.random.Generator, n: int, *, cfg_mean: float = 7.0) -> list[dict[str, Any]]:
    """Honest traffic: CFG ~ N(7, 1) clipped to [1, 15], steps and schedules from a fixed mix."""
    cfg = np.clip(rng.normal(cfg_mean, 1.0, n), 1.0, 15.0)
    steps = rng.choice([20, 25, 30, 50], n, p=[0.2, 0.3, 0.4, 0.1])
    schedules = rng.choice(["karras", "leading", "trailing"], n, p=[0.6, 0.3, 0.1])
    return [
        {"guidance_scale": float(c), "steps": int(s), "schedule": str(k), "sampler": "euler"}
        for c, s, k in zip(cfg, steps, schedules, strict=True)
    ]


@pytest.fixture(scope="module")
def baseline() -> DriftBaseline:
    return DriftBaseline.fit(_stream(np.random.default_rng(20260), 5000))


# --- the statistics ---------------------------------------------------------------------------


def test_kolmogorov_tail_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for lam in (0.0, 0.1, 0.3, 0.5, 0.8, 1.0, 1.36, 1.63, 2.0, 2.69, 3.5):
        assert kolmogorov_sf(lam) == pytest.approx(float(stats.kstwobign.sf(lam)), abs=1e-12)


def test_chi2_quantile_is_conservative_and_close_to_scipy() -> None:
    """Wilson–Hilferty overshoots the exact quantile slightly (fewer false alarms), most at
    df = 1 and α = 1e-6 (+15 %), under 1 % from df ≈ 22."""
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 10, 22, 40):
        for alpha in (1e-3, 1e-6):
            ratio = _chi2_quantile(df, alpha) / float(stats.chi2.isf(alpha, df))
            assert 1.0 <= ratio <= 1.15 if df == 1 else 1.0 <= ratio <= 1.10


def test_ks_binned_on_identical_and_disjoint_histograms() -> None:
    assert ks_binned([10, 20, 30], [1, 2, 3]) == (0.0, 1.0)
    d, p = ks_binned([100, 0, 0], [0, 0, 100])
    assert d == 1.0 and p < 1e-20
    assert ks_binned([1, 2], [0, 0]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="bucket count mismatch"):
        ks_binned([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        ks_binned([1, -2], [1, 2])


def test_psi_by_hand() -> None:
    # Two used buckets; pseudo-count ½ on each side.
    q = np.array([99.5, 1.5]) / 101.0
    p = np.array([50.5, 50.5]) / 101.0
    expected = float(np.sum((p - q) * np.log(p / q)))
    value, used = psi([99, 1, 0], [50, 50, 0])
    assert used == 2
    assert value == pytest.approx(expected)
    assert psi([5, 5], [5, 5]) == (0.0, 2)


# --- baselines --------------------------------------------------------------------------------


def test_fit_counts_upper_inclusive_buckets() -> None:
    b = DriftBaseline.fit(
        [
            {"guidance_scale": 7.0, "steps": 30, "schedule": "Karras"},
            {"guidance_scale": 7.2, "steps": 30, "schedule": "karras"},
            {"guidance_scale": math.nan, "steps": "thirty", "schedule": 5},
            {"sampler": "euler"},
        ]
    )
    g = b.numeric["guidance_scale"]
    assert g.edges == GUIDANCE_BUCKETS
    assert g.counts[GUIDANCE_BUCKETS.index(7.0)] == 1
    assert g.counts[GUIDANCE_BUCKETS.index(7.5)] == 1
    assert g.total == 2
    assert b.numeric["steps"].total == 2
    assert b.categorical["schedule"].counts == {"karras": 2}
    assert b.categorical["sampler"].counts == {"euler": 1}


def test_json_round_trip(tmp_path: Path, baseline: DriftBaseline) -> None:
    path = tmp_path / "baseline.json"
    baseline.save(path)
    loaded = DriftBaseline.load(path)
    assert loaded == baseline
    doc = json.loads(path.read_text())
    assert doc["kind"] == "samplerguard.dev/drift-baseline/v1"
    assert set(doc["numeric"]) == {"guidance_scale", "steps"}
    assert len(doc["numeric"]["guidance_scale"]["counts"]) == len(GUIDANCE_BUCKETS) + 1


def _doc(**override: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "samplerguard.dev/drift-baseline/v1",
        "numeric": {"guidance_scale": {"edges": [1.0, 2.0], "counts": [1, 2, 3]}},
        "categorical": {"schedule": {"karras": 4}},
    }
    doc.update(override)
    return doc


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{", "not valid JSON"),
        (json.dumps(_doc())[:-7], "not valid JSON"),  # truncated
        ("[]", "must be a JSON object"),
        (json.dumps(_doc(kind="other/v9")), "kind is 'other/v9'"),
        (json.dumps(_doc(extra=1)), "unexpected field"),
        (json.dumps(_doc(numeric={"guidance_scale": {"edges": [1.0, 2.0], "counts": [1, 2]}})),
         "needs 3 counts, got 2"),
        (json.dumps(_doc(numeric={"guidance_scale": {"edges": [2.0, 1.0], "counts": [1, 2, 3]}})),
         "strictly increasing"),
        ('{"kind": "samplerguard.dev/drift-baseline/v1", '
         '"numeric": {"steps": {"edges": [NaN, 1.0], "counts": [1, 2, 3]}}}', "finite numbers"),
        (json.dumps(_doc(numeric={"steps": {"edges": [10**400], "counts": [1, 2]}})),
         "edges must be finite numbers"),
        (json.dumps(_doc(numeric={"steps": {"edges": [1.0], "counts": [1, -2]}})),
         "counts must be integers"),
        (json.dumps(_doc(numeric={"steps": {"edges": [1.0], "counts": [1, True]}})),
         "counts must be integers"),
        (json.dumps(_doc(numeric={"steps": {"edges": [1.0], "counts": [1, 2.5]}})),
         "counts must be integers"),
        (json.dumps(_doc(numeric={"steps": {"edges": ["1"], "counts": [1, 2]}})),
         "edges must be numbers"),
        (json.dumps(_doc(numeric={"steps": {"edges": [1.0], "counts": [0, 0]}})),
         "at least one observation"),
        (json.dumps(_doc(numeric={"steps": {"edges": [1.0]}})), "exactly edges and counts"),
        (json.dumps(_doc(numeric={"tenant": {"edges": [1.0], "counts": [1, 1]}})),
         "unknown feature"),
        (json.dumps(_doc(numeric={}, categorical={})), "at least one feature"),
        (json.dumps(_doc(categorical={"schedule": {}})), "needs 1..256 categories"),
        (json.dumps(_doc(categorical={"schedule": {"x" * 65: 1}})), "1..64 characters"),
        (json.dumps(_doc(categorical={"schedule": ["karras"]})), "must be an object of counts"),
        (json.dumps(_doc(categorical={"guidance_scale": {"a": 1}})),
         "both numeric and categorical"),
        (json.dumps(_doc(numeric={"steps": {"edges": list(range(300)), "counts": [1] * 301}})),
         "1..256 edges"),
        ("x" * (1 << 20 + 1), "more than the 1048576 allowed"),
    ],
)  # fmt: skip
def test_malformed_baselines_are_refused(text: str, match: str) -> None:
    with pytest.raises(BaselineError, match=match):
        DriftBaseline.from_json(text)


def test_baseline_errors_are_malformed_input(tmp_path: Path) -> None:
    with pytest.raises(MalformedInputError, match="cannot read drift baseline"):
        DriftBaseline.load(tmp_path / "missing.json")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * ((1 << 20) + 1))
    with pytest.raises(BaselineError, match="bytes, more than"):
        DriftBaseline.load(big)


# --- the detector: bounds ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_cfg_shift_alerts_within_bound_on_a_fresh_detector(
    baseline: DriftBaseline, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    alerts: list[DriftAlert] = []
    detector = DriftDetector(baseline, on_alert=alerts.append)
    for i, record in enumerate(_stream(rng, BOUND, cfg_mean=9.0), start=1):  # noqa: B007
        if detector.observe(record):
            break
    else:
        pytest.fail(f"no alert within {BOUND} shifted requests")
    (alert,) = alerts
    assert alert.feature == "guidance_scale"
    assert alert.kind == "distribution-shift"
    # The first test runs at min_samples, and a 2σ shift is obvious by then.
    assert i == detector.min_samples == alert.observed
    assert "guidance_scale distribution drifted" in alert.message


@pytest.mark.parametrize("seed", range(8))
def test_cfg_shift_alerts_within_bound_after_honest_traffic(
    baseline: DriftBaseline, seed: int
) -> None:
    rng = np.random.default_rng(100 + seed)
    detector = DriftDetector(baseline)
    for record in _stream(rng, 1000):
        assert detector.observe(record) == []
    for i, record in enumerate(_stream(rng, BOUND, cfg_mean=9.0), start=1):  # noqa: B007
        alerts = detector.observe(record)
        if alerts:
            break
    else:
        pytest.fail(f"no alert within {BOUND} requests after the shift began")
    assert [a.feature for a in alerts] == ["guidance_scale"]
    assert alerts[0].samples == detector.window
    # Better than the documented KS bound (K_α/D)·√W ≈ 56 in practice; 200 is the promise.
    assert i <= BOUND


def test_unknown_schedule_alerts_on_its_first_request(baseline: DriftBaseline) -> None:
    rng = np.random.default_rng(7)
    alerts: list[DriftAlert] = []
    detector = DriftDetector(baseline, on_alert=alerts.append)
    for record in _stream(rng, 300):
        detector.observe(record)
    assert alerts == []
    record = _stream(rng, 1)[0] | {"schedule": "Sneaky-Schedule"}
    (alert,) = detector.observe(record)
    assert alerts == [alert]
    assert (alert.feature, alert.kind, alert.statistic) == (
        "schedule",
        "unknown-category",
        "unknown",
    )
    assert alert.category == "sneaky-schedule"
    assert alert.observed == 301
    assert alert.message == "schedule 'sneaky-schedule' is not in the golden baseline (request 301)"
    # The same unknown id again: already reported. A different one: reported.
    assert detector.observe(record) == []
    (again,) = detector.observe(record | {"schedule": "another"})
    assert again.category == "another"


def test_unknown_schedule_alerts_on_the_very_first_request(baseline: DriftBaseline) -> None:
    detector = DriftDetector(baseline)
    record = {"guidance_scale": 7.0, "steps": 30, "schedule": "exponential", "sampler": "euler"}
    (alert,) = detector.observe(record)
    assert alert.kind == "unknown-category" and alert.observed == 1
    odd = detector.observe(record | {"schedule": 42})
    assert [a.category for a in odd] == ["invalid"]


def test_unknown_sampler_alerts(baseline: DriftBaseline) -> None:
    detector = DriftDetector(baseline)
    (alert,) = detector.observe({"guidance_scale": 7.0, "sampler": "ddim"})
    assert (alert.feature, alert.category) == ("sampler", "ddim")


@pytest.mark.parametrize("seed", range(4))
def test_honest_streams_raise_no_alarm(baseline: DriftBaseline, seed: int) -> None:
    rng = np.random.default_rng(5000 + seed)
    alerts: list[DriftAlert] = []
    detector = DriftDetector(baseline, on_alert=alerts.append)
    for record in _stream(rng, 1500):
        detector.observe(record)
    assert alerts == []


def test_fewer_steps_alert(baseline: DriftBaseline) -> None:
    rng = np.random.default_rng(11)
    detector = DriftDetector(baseline)
    for record in _stream(rng, 500):
        detector.observe(record)
    for i, record in enumerate(_stream(rng, BOUND), start=1):  # noqa: B007
        alerts = detector.observe(record | {"steps": 10})  # 10 steps where 20–50 were declared
        if alerts:
            break
    else:
        pytest.fail("trimmed steps went unnoticed")
    assert alerts[0].feature == "steps"
    assert i <= 60


def test_shift_among_known_schedules_alerts(baseline: DriftBaseline) -> None:
    rng = np.random.default_rng(12)
    detector = DriftDetector(baseline)
    for record in _stream(rng, 500):
        detector.observe(record)
    for _i, record in enumerate(_stream(rng, BOUND), start=1):
        # "trailing" was 10 % of honest traffic; now it is all of it.
        alerts = detector.observe(record | {"schedule": "trailing"})
        if alerts:
            break
    else:
        pytest.fail("a schedule mix shift went unnoticed")
    (alert,) = alerts
    assert (alert.feature, alert.kind, alert.statistic) == ("schedule", "distribution-shift", "psi")
    assert alert.psi >= alert.psi_limit


def test_one_alert_per_window_under_sustained_drift(baseline: DriftBaseline) -> None:
    rng = np.random.default_rng(13)
    alerts: list[DriftAlert] = []
    detector = DriftDetector(baseline, on_alert=alerts.append)
    for record in _stream(rng, 1000, cfg_mean=9.0):
        detector.observe(record)
    assert all(a.feature == "guidance_scale" for a in alerts)
    assert 1 <= len(alerts) <= 1000 // detector.window + 1
    gaps = [b.observed - a.observed for a, b in itertools.pairwise(alerts)]
    assert all(g >= detector.window for g in gaps)


def test_a_failing_listener_does_not_break_observe(
    baseline: DriftBaseline, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[DriftAlert] = []

    def broken(alert: DriftAlert) -> None:
        raise RuntimeError("secret-token-123")

    detector = DriftDetector(baseline, on_alert=broken)
    detector.add_listener(seen.append)
    alerts = detector.observe({"schedule": "unheard-of"})
    assert len(alerts) == 1 and seen == alerts
    assert "drift alert listener failed: RuntimeError" in caplog.text
    assert "secret-token-123" not in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 1}, "window must be"),
        ({"min_samples": 1}, "min_samples must be"),
        ({"window": 50, "min_samples": 60}, "min_samples must be"),
        ({"alpha": 0.0}, "alpha must be"),
        ({"psi_threshold": 0.0}, "psi_threshold must be positive"),
    ],
)
def test_detector_arguments_are_checked(
    baseline: DriftBaseline, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        DriftDetector(baseline, **kwargs)


# --- with the telemetry -----------------------------------------------------------------------


def test_record_request_feeds_the_detector_and_counts_alerts(baseline: DriftBaseline) -> None:
    received: list[DriftAlert] = []
    detector = DriftDetector(baseline, on_alert=received.append)
    with setup_metrics(in_memory=True, env={}, drift=detector) as m:
        tel = m.telemetry
        rng = np.random.default_rng(21)
        for r in _stream(rng, 40, cfg_mean=9.0):
            tel.record_request(
                RequestObservation(
                    sampler=r["sampler"],
                    schedule=r["schedule"],
                    steps=r["steps"],
                    guidance_scale=r["guidance_scale"],
                    rng_mode="ctr-drbg",
                )
            )
        unknown = tel.record_request(
            RequestObservation("euler", "x-secret-schedule", 30, 7.0, "ctr-drbg")
        )
        assert [a.kind for a in unknown] == ["unknown-category"]
        data = m.collect()
        assert data is not None
        (metric,) = [
            x
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for x in sm.metrics
            if x.name == MetricName.DRIFT_ALERTS
        ]
        counted = {}
        for p in metric.data.data_points:
            assert isinstance(p, NumberDataPoint), p
            a = dict(p.attributes or {})
            counted[a["feature"], a["kind"], a["statistic"]] = p.value
    assert counted == {
        ("guidance_scale", "distribution-shift", "ks"): 1,
        ("schedule", "unknown-category", "unknown"): 1,
    }
    assert len(received) == 2
    # the raw schedule id is in the alert for the operator, never in a metric attribute
    assert received[1].category == "x-secret-schedule"


def test_compare_live_otel_histograms_with_the_baseline() -> None:
    """The baseline and the live side can both be OTel histogram points: same edges."""

    def collected_counts(mean: float, seed: int) -> tuple[list[float], list[int]]:
        with setup_metrics(in_memory=True, env={}) as m:
            for r in _stream(np.random.default_rng(seed), 400, cfg_mean=mean):
                m.telemetry.record_guidance(r["guidance_scale"], sampler="euler")
            data = m.collect()
            assert data is not None
            point = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0]
            assert isinstance(point, HistogramDataPoint), point
            return list(point.explicit_bounds), list(point.bucket_counts)

    edges, counts = collected_counts(7.0, 1)
    golden = HistogramBaseline(tuple(edges), tuple(counts))
    honest = compare_histogram(golden, collected_counts(7.0, 2)[1])
    shifted = compare_histogram(golden, collected_counts(9.0, 3)[1])
    assert not honest.alarm
    assert shifted.alarm and shifted.ks_alarm and shifted.psi_alarm
    assert shifted.ks > 0.5
    with pytest.raises(ValueError, match="buckets"):
        compare_histogram(golden, [1, 2, 3])


def test_compare_categorical() -> None:
    golden = CategoricalBaseline({"karras": 600, "leading": 300, "trailing": 100})
    assert not compare_categorical(golden, {"karras": 60, "leading": 30, "trailing": 10}).alarm
    assert compare_categorical(golden, {"trailing": 100}).alarm
    assert compare_categorical(golden, {"karras": 50, "made-up": 50}).alarm


def test_the_detector_hot_path_matches_the_reference_statistics() -> None:
    from samplerguard.telemetry.drift.statistics import _cdf, _fused, _ks_p

    rng = np.random.default_rng(99)
    for _ in range(200):
        size = int(rng.integers(2, 30))
        base = rng.integers(0, 50, size).astype(float) * (rng.random(size) < 0.7)
        live = rng.integers(0, 10, size).astype(float) * (rng.random(size) < 0.6)
        if base.sum() == 0:
            base[0] = 1.0
        d, value, used, n = _fused(list(base), list(live), _cdf(list(base)))
        ref_d, ref_p = ks_binned(base, live)
        ref_psi, ref_used = psi(base, live)
        assert n == live.sum()
        assert d == pytest.approx(ref_d, abs=1e-12)
        assert _ks_p(d, n, float(base.sum())) == pytest.approx(ref_p, abs=1e-12)
        assert value == pytest.approx(ref_psi, abs=1e-12)
        if n > 0:
            assert used == ref_used


def test_concurrent_observers_keep_the_windows_consistent(baseline: DriftBaseline) -> None:
    import threading

    detector = DriftDetector(baseline, window=100)
    streams = [_stream(np.random.default_rng(300 + i), 500) for i in range(4)]
    threads = [
        threading.Thread(target=lambda s=s: [detector.observe(r) for r in s]) for s in streams
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for win in detector._numeric.values():
        assert win.seen == 2000 and len(win.recent) == 100
        assert sum(win.counts) == 100
        assert all(c >= 0 for c in win.counts)
    for cwin in detector._categorical.values():
        assert cwin.seen == 2000 and sum(cwin.counts) == 100


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    numeric=st.dictionaries(
        st.sampled_from(["guidance_scale", "steps", "tenant"]),
        _json
        | st.fixed_dictionaries(
            {
                "edges": st.lists(st.floats() | st.integers(), max_size=5),
                "counts": st.lists(st.integers(min_value=-2) | st.floats(), max_size=6),
            }
        ),
        max_size=2,
    ),
    categorical=st.one_of(
        _json, st.dictionaries(st.sampled_from(["schedule", "sampler"]), _json, max_size=2)
    ),
)
def test_arbitrary_baseline_documents_never_crash(numeric: Any, categorical: Any) -> None:
    doc = {"kind": "samplerguard.dev/drift-baseline/v1", "numeric": numeric}
    doc["categorical"] = categorical
    try:
        text = json.dumps(doc)
    except ValueError:
        return
    try:
        loaded = DriftBaseline.from_json(text)
    except BaselineError:
        return
    # Whatever parsed is usable: a detector can be built and fed.
    DriftDetector(loaded).observe({"guidance_scale": 7.0, "steps": 30, "schedule": "karras"})


def test_numpy_scalars_feed_the_detector(baseline: DriftBaseline) -> None:
    detector = DriftDetector(baseline)
    detector.observe({"guidance_scale": np.float32(7.0), "steps": np.int64(30)})
    assert detector._numeric["steps"].seen == 1
    assert detector._numeric["guidance_scale"].seen == 1
