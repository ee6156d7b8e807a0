"""SamplerTelemetry against the SDK's InMemoryMetricReader: exact buckets, counts, attributes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from samplerguard.policy.spec import KNOWN_SAMPLERS, KNOWN_SCHEDULES
from samplerguard.telemetry import (
    GUIDANCE_BUCKETS,
    REL_L2_BUCKETS,
    STEPS_BUCKETS,
    DriftAlert,
    MetricName,
    Metrics,
    RequestObservation,
    SamplerTelemetry,
    histogram_views,
)
from samplerguard.telemetry.attributes import RNG_MODES, SEED_HEALTH_CHECKS

BEACON_A = "sha256:" + "ab" * 32
BEACON_B = "sha256:" + "cd" * 32


def _numbers(points: Iterable[object]) -> list[tuple[dict[str, Any], float]]:
    """(attributes, value) of counter/gauge points; a point of another kind fails the test."""
    out = []
    for p in points:
        assert isinstance(p, NumberDataPoint), p
        out.append((dict(p.attributes or {}), p.value))
    return out


def _obs(**kw: Any) -> RequestObservation:
    base: dict[str, Any] = dict(
        sampler="euler", schedule="karras", steps=30, guidance_scale=7.5, rng_mode="ctr-drbg"
    )
    base.update(kw)
    return RequestObservation(**base)


def test_histogram_boundaries_are_exported_as_declared(metrics: Metrics, collect: Any) -> None:
    tel = metrics.telemetry
    tel.record_guidance(7.5, sampler="euler")
    tel.record_steps(30, sampler="euler", schedule="karras")
    tel.record_verification("pass", rel_l2=0.0)
    got = collect()
    for name, buckets in (
        (MetricName.GUIDANCE_SCALE, GUIDANCE_BUCKETS),
        (MetricName.STEPS, STEPS_BUCKETS),
        (MetricName.REL_L2, REL_L2_BUCKETS),
    ):
        (point,) = got.metric(name).data.data_points
        assert tuple(point.explicit_bounds) == buckets
        assert len(point.bucket_counts) == len(buckets) + 1


def test_rel_l2_buckets_are_half_decades_from_1e_9_to_1() -> None:
    assert len(REL_L2_BUCKETS) == 19
    assert REL_L2_BUCKETS[0] == pytest.approx(1e-9)
    assert REL_L2_BUCKETS[-1] == 1.0
    ratios = [b / a for a, b in itertools.pairwise(REL_L2_BUCKETS)]
    assert all(r == pytest.approx(math.sqrt(10.0)) for r in ratios)


def test_guidance_buckets_are_upper_inclusive_and_exact(metrics: Metrics, collect: Any) -> None:
    tel = metrics.telemetry
    # 7.0 sits on a boundary: OTel puts it in (6.5, 7.0]; 7.01 goes to (7.0, 7.5].
    for value in (7.0, 7.0, 7.01, 7.5, -1.0, 0.0, 31.0, 100.0):
        tel.record_guidance(value, sampler="euler")
    got = collect()
    (point,) = got.metric(MetricName.GUIDANCE_SCALE).data.data_points
    counts = list(point.bucket_counts)
    i7 = GUIDANCE_BUCKETS.index(7.0)
    assert counts[0] == 1  # 0.0 in (-inf, 0]; -1.0 is not a guidance scale
    assert counts[i7] == 2  # 7.0, 7.0
    assert counts[i7 + 1] == 2  # 7.01, 7.5
    assert counts[-1] == 2  # 31, 100 above 30
    assert sum(counts) == 7
    assert point.count == 7
    assert point.sum == pytest.approx(7 + 7 + 7.01 + 7.5 + 0 + 31 + 100)
    assert point.min == 0.0 and point.max == 100.0
    assert dict(point.attributes) == {"sampler": "euler"}
    assert got.value(MetricName.DROPPED, metric=MetricName.GUIDANCE_SCALE) == 1


def test_record_request_fans_out_to_every_instrument(metrics: Metrics, collect: Any) -> None:
    tel = metrics.telemetry
    tel.record_request(_obs())
    tel.record_request(_obs(schedule="leading", steps=20, guidance_scale=5.0))
    tel.record_request(_obs(rng_mode="hmac-drbg", rng_isolated=False, rng_escrowed=True))
    got = collect()
    assert got.value(MetricName.REQUESTS, sampler="euler", schedule="karras") == 2
    assert got.value(MetricName.REQUESTS, sampler="euler", schedule="leading") == 1
    steps = got.points(MetricName.STEPS)
    karras = steps[frozenset({"sampler": "euler", "schedule": "karras"}.items())]
    assert karras.count == 2 and karras.sum == 60
    assert karras.bucket_counts[STEPS_BUCKETS.index(30.0)] == 2  # (25, 30]
    leading = steps[frozenset({"sampler": "euler", "schedule": "leading"}.items())]
    assert leading.bucket_counts[STEPS_BUCKETS.index(20.0)] == 1
    rng = got.points(MetricName.RNG_REQUESTS)
    assert {dict(k)["rng.mode"]: p.value for k, p in rng.items()} == {
        "ctr-drbg": 2,
        "hmac-drbg": 1,
    }
    assert (
        got.value(
            MetricName.RNG_REQUESTS,
            **{"rng.mode": "ctr-drbg", "rng.isolated": True, "rng.escrowed": False},
        )
        == 2
    )
    assert (
        got.value(
            MetricName.RNG_REQUESTS,
            **{"rng.mode": "hmac-drbg", "rng.isolated": False, "rng.escrowed": True},
        )
        == 1
    )
    (g,) = got.metric(MetricName.GUIDANCE_SCALE).data.data_points
    assert g.count == 3 and g.sum == pytest.approx(7.5 + 5.0 + 7.5)


def test_unknown_schedule_and_sampler_collapse_to_other(metrics: Metrics, collect: Any) -> None:
    tel = metrics.telemetry
    for i in range(100):
        tel.record_request(_obs(schedule=f"my-schedule-{i}", sampler=f"sampler{i}"))
    tel.record_request(_obs(schedule="Karras ", sampler="DPMPP-2M"))  # case and '-'/'_' folded
    tel.record_request(_obs(schedule="bad schedule id!", sampler=""))
    got = collect()
    assert got.attribute_values(MetricName.REQUESTS, "schedule") == {"other", "karras", "invalid"}
    assert got.value(MetricName.REQUESTS, sampler="other", schedule="other") == 100
    assert got.value(MetricName.REQUESTS, sampler="dpmpp_2m", schedule="karras") == 1
    assert got.value(MetricName.REQUESTS, sampler="invalid", schedule="invalid") == 1


def test_every_known_schedule_and_sampler_is_kept(metrics: Metrics, collect: Any) -> None:
    tel = metrics.telemetry
    for sampler in KNOWN_SAMPLERS:
        for schedule in KNOWN_SCHEDULES:
            tel.record_request(_obs(sampler=sampler, schedule=schedule))
    got = collect()
    assert got.attribute_values(MetricName.REQUESTS, "schedule") == set(KNOWN_SCHEDULES)
    assert got.attribute_values(MetricName.REQUESTS, "sampler") == set(KNOWN_SAMPLERS)


def test_restricted_schedule_vocabulary() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], views=histogram_views())
    tel = SamplerTelemetry(provider, schedules={"karras"})
    tel.record_request(_obs(schedule="leading"))
    tel.record_request(_obs(schedule="karras"))
    data = reader.get_metrics_data()
    assert data is not None
    (metric,) = [
        m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == MetricName.REQUESTS
    ]
    assert {a["schedule"]: v for a, v in _numbers(metric.data.data_points)} == {
        "other": 1,
        "karras": 1,
    }
    provider.shutdown()


def test_guidance_clipping_events(metrics: Metrics, collect: Any) -> None:
    tel = metrics.telemetry
    tel.record_guidance_clip(requested=25.0, limit=12.0, sampler="euler")
    tel.record_guidance_clip(requested=30.0, limit=12.0, sampler="euler")
    tel.record_guidance_clip(requested=0.5, limit=1.0, sampler="ddim")
    tel.record_guidance_clip(requested=12.0, limit=12.0, sampler="euler")  # not a clip
    got = collect()
    assert got.value(MetricName.GUIDANCE_CLIPPED, sampler="euler", direction="above") == 2
    assert got.value(MetricName.GUIDANCE_CLIPPED, sampler="ddim", direction="below") == 1
    assert len(got.points(MetricName.GUIDANCE_CLIPPED)) == 2


def test_non_finite_values_are_dropped_and_counted(metrics: Metrics, collect: Any) -> None:
    tel = metrics.telemetry
    tel.record_guidance(math.nan, sampler="euler")
    tel.record_guidance(math.inf, sampler="euler")
    tel.record_verification("fail", rel_l2=math.nan, reason="rel_l2")
    tel.record_steps(True, sampler="euler", schedule="karras")  # a bool is not a step count
    tel.record_guidance(7.0, sampler="euler")
    got = collect()
    (g,) = got.metric(MetricName.GUIDANCE_SCALE).data.data_points
    assert g.count == 1
    assert got.value(MetricName.DROPPED, metric=MetricName.GUIDANCE_SCALE) == 2
    assert got.value(MetricName.DROPPED, metric=MetricName.REL_L2) == 1
    assert got.value(MetricName.DROPPED, metric=MetricName.STEPS) == 1
    assert MetricName.REL_L2 not in got.by_name
    assert got.value(MetricName.VERIFICATIONS, outcome="fail", reason="rel_l2") == 1


def test_verification_outcomes_and_rel_l2_buckets(metrics: Metrics, collect: Any) -> None:
    tel = metrics.telemetry
    tel.record_verification("pass", rel_l2=0.0, sampler="euler")  # same build: exactly 0
    tel.record_verification("pass", rel_l2=2e-6, sampler="euler")
    tel.record_verification("pass", rel_l2=1e-6, sampler="euler")  # on a boundary
    tel.record_verification("fail", rel_l2=0.4, reason="rel_l2", sampler="euler")
    tel.record_verification("fail", reason="signature")
    tel.record_verification("error", reason="timeout")
    tel.record_verification("error", reason="the sidecar at 10.0.0.7 said no")  # free text
    got = collect()
    assert got.value(MetricName.VERIFICATIONS, outcome="pass", reason="ok") == 3
    assert got.value(MetricName.VERIFICATIONS, outcome="fail", reason="rel_l2") == 1
    assert got.value(MetricName.VERIFICATIONS, outcome="fail", reason="signature") == 1
    assert got.value(MetricName.VERIFICATIONS, outcome="error", reason="timeout") == 1
    assert got.value(MetricName.VERIFICATIONS, outcome="error", reason="invalid") == 1
    hist = got.points(MetricName.REL_L2)
    passed = hist[frozenset({"outcome": "pass", "sampler": "euler"}.items())]
    counts = list(passed.bucket_counts)
    assert counts[0] == 1  # 0.0 in (-inf, 1e-9]
    i_1e6 = min(range(len(REL_L2_BUCKETS)), key=lambda i: abs(REL_L2_BUCKETS[i] - 1e-6))
    assert counts[i_1e6] == 1  # 1e-6 in (3.16e-7, 1e-6]
    assert counts[i_1e6 + 1] == 1  # 2e-6 in (1e-6, 3.16e-6]
    assert sum(counts) == 3
    failed = hist[frozenset({"outcome": "fail", "sampler": "euler"}.items())]
    assert failed.bucket_counts[-2] == 1  # 0.4 in (0.316, 1]


@dataclass(frozen=True)
class _Test:
    name: str


@dataclass(frozen=True)
class _Report:
    ok: bool
    failures: tuple[_Test, ...]


def test_seed_health_reports_and_alarms(metrics: Metrics, collect: Any) -> None:
    tel = metrics.telemetry
    tel.record_seed_health(_Report(True, ()))
    tel.record_seed_health(_Report(True, ()))
    # the same check failing on two samples counts once per report
    tel.record_seed_health(_Report(False, (_Test("mean"), _Test("mean"), _Test("ks"))))
    tel.record_seed_alarm("noise-reuse")
    tel.record_seed_alarm("seed=123456")  # never a raw value
    got = collect()
    assert got.value(MetricName.SEED_HEALTH_CHECKS, result="pass") == 2
    assert got.value(MetricName.SEED_HEALTH_CHECKS, result="fail") == 1
    assert got.value(MetricName.SEED_HEALTH_ALARMS, check="mean") == 1
    assert got.value(MetricName.SEED_HEALTH_ALARMS, check="ks") == 1
    assert got.value(MetricName.SEED_HEALTH_ALARMS, check="noise-reuse") == 1
    assert got.attribute_values(MetricName.SEED_HEALTH_ALARMS, "check") == {
        "mean",
        "ks",
        "noise-reuse",
        "invalid",
    }


def test_seed_health_accepts_the_real_health_report(metrics: Metrics, collect: Any) -> None:
    torch = pytest.importorskip("torch")
    from samplerguard.rng.health import check_seed_vector

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 16, 16, generator=gen) + 0.5  # a mean-shifted seed vector
    report = check_seed_vector(z)
    assert not report.ok
    metrics.telemetry.record_seed_health(report)
    got = collect()
    assert got.value(MetricName.SEED_HEALTH_CHECKS, result="fail") == 1
    assert got.value(MetricName.SEED_HEALTH_ALARMS, check="mean") == 1


def test_beacons_are_prefixes_and_capped() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    tel = SamplerTelemetry(provider, beacon_limit=3)
    tel.record_beacon(BEACON_A)
    tel.record_beacon(BEACON_A.upper().replace("SHA256", "sha256"))
    tel.record_beacon("ab" * 32)  # bare hex: same build
    for i in range(10):
        tel.record_beacon("sha256:" + f"{i:02x}" * 32)
    tel.record_beacon("sha256:short")
    data = reader.get_metrics_data()
    assert data is not None
    (metric,) = [
        m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == MetricName.BEACONS
    ]
    got = {a["beacon"]: v for a, v in _numbers(metric.data.data_points)}
    assert got == {
        "abababababab": 3,
        "000000000000": 1,
        "010101010101": 1,
        "other": 8,
        "invalid": 1,
    }
    provider.shutdown()


def test_integrity_checks_and_beacon_mismatch(metrics: Metrics, collect: Any) -> None:
    tel = metrics.telemetry
    tel.record_integrity_check("model_weights", ok=True)
    tel.record_integrity_check("solver_code", ok=False)
    tel.record_integrity_check("/etc/passwd", ok=False)
    tel.record_beacon_mismatch(expected=BEACON_A, got=BEACON_B)
    got = collect()
    assert got.value(MetricName.INTEGRITY_CHECKS, artifact="model_weights", result="pass") == 1
    assert got.value(MetricName.INTEGRITY_CHECKS, artifact="solver_code", result="fail") == 1
    assert got.value(MetricName.INTEGRITY_MISMATCHES, artifact="solver_code") == 1
    assert got.value(MetricName.INTEGRITY_MISMATCHES, artifact="invalid") == 1
    assert got.value(MetricName.INTEGRITY_MISMATCHES, artifact="beacon", beacon="cdcdcdcdcdcd") == 1


def test_policy_violations(metrics: Metrics, collect: Any) -> None:
    tel = metrics.telemetry
    tel.record_policy_violation("guidance", action="rejected")
    tel.record_policy_violation("schedule", action="quarantined")
    tel.record_policy_violation("schedule", action="quarantined")
    got = collect()
    assert got.value(MetricName.POLICY_VIOLATIONS, check="guidance", action="rejected") == 1
    assert got.value(MetricName.POLICY_VIOLATIONS, check="schedule", action="quarantined") == 2


def test_drift_alerts_are_counted(metrics: Metrics, collect: Any) -> None:
    tel = metrics.telemetry
    tel.record_drift_alert(
        DriftAlert(
            feature="schedule",
            kind="unknown-category",
            statistic="unknown",
            samples=1,
            observed=1,
            category="x",
        )
    )
    tel.record_drift_alert(
        DriftAlert(
            feature="guidance_scale",
            kind="distribution-shift",
            statistic="ks",
            samples=40,
            observed=40,
        )
    )
    got = collect()
    assert (
        got.value(
            MetricName.DRIFT_ALERTS,
            feature="schedule",
            kind="unknown-category",
            statistic="unknown",
        )
        == 1
    )
    assert (
        got.value(
            MetricName.DRIFT_ALERTS,
            feature="guidance_scale",
            kind="distribution-shift",
            statistic="ks",
        )
        == 1
    )


def test_without_a_provider_the_global_no_op_is_used() -> None:
    tel = SamplerTelemetry()
    tel.record_request(_obs())  # no exporter configured: nothing happens, nothing raises
    tel.record_verification("pass", rel_l2=0.0)


_ALLOWED = (
    set(KNOWN_SAMPLERS)
    | set(KNOWN_SCHEDULES)
    | set(SEED_HEALTH_CHECKS)
    | set(RNG_MODES)
    | {"other", "invalid", "pass", "fail"}
)


@settings(max_examples=60, deadline=None)
@given(
    sampler=st.text(max_size=80),
    schedule=st.text(max_size=80),
    mode=st.text(max_size=40),
    check=st.text(max_size=40),
    beacon=st.text(max_size=80),
)
def test_client_strings_never_reach_attributes(
    sampler: str, schedule: str, mode: str, check: str, beacon: str
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    tel = SamplerTelemetry(provider)
    tel.record_request(_obs(sampler=sampler, schedule=schedule, rng_mode=mode))
    tel.record_seed_alarm(check)
    tel.record_beacon(beacon)
    data = reader.get_metrics_data()
    assert data is not None
    seen: set[str] = set()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    seen.update(v for v in dict(p.attributes or {}).values() if isinstance(v, str))
    extra = seen - _ALLOWED
    # The one open-ended value is a 12-hex-digit beacon prefix.
    assert all(len(v) == 12 and all(c in "0123456789abcdef" for c in v) for v in extra), extra
    provider.shutdown()


def test_numpy_scalars_are_numbers(metrics: Metrics, collect: Any) -> None:
    import numpy as np

    tel = metrics.telemetry
    tel.record_request(_obs(steps=np.int64(30), guidance_scale=np.float32(7.5)))
    tel.record_verification("pass", rel_l2=np.float64(1e-7))
    # numpy scalars are not floats to mypy; that they are accepted is what this test checks
    tel.record_guidance_clip(requested=np.float32(20.0), limit=np.int32(12))  # type: ignore[arg-type]
    got = collect()
    (steps,) = got.metric(MetricName.STEPS).data.data_points
    assert steps.count == 1 and steps.sum == 30
    (g,) = got.metric(MetricName.GUIDANCE_SCALE).data.data_points
    assert g.sum == pytest.approx(7.5)
    assert MetricName.DROPPED not in got.by_name
    assert got.value(MetricName.GUIDANCE_CLIPPED, sampler="other", direction="above") == 1


def test_series_count_is_bounded_under_hostile_input(metrics: Metrics, collect: Any) -> None:
    """Every vocabulary value plus a flood of junk: the number of time series per metric stays
    within the product of its vocabularies (+ "other"/"invalid"), 1,277 in all."""
    import random

    from samplerguard.telemetry.attributes import (
        ARTIFACTS,
        POLICY_ACTIONS,
        POLICY_CHECKS,
        VERIFICATION_OUTCOMES,
        VERIFICATION_REASONS,
    )

    rnd = random.Random(5)

    def pick(vocab: Iterable[str]) -> str:
        r = rnd.random()
        if r < 0.5:
            return rnd.choice(sorted(vocab))
        if r < 0.75:
            return f"junk-{rnd.randrange(10**9)}"
        return "".join(rnd.choice("aZ !/_-\x00é") for _ in range(rnd.randrange(0, 80)))

    tel = metrics.telemetry
    for _ in range(3000):
        tel.record_request(
            _obs(
                sampler=pick(KNOWN_SAMPLERS),
                schedule=pick(KNOWN_SCHEDULES),
                rng_mode=pick(RNG_MODES),
                rng_isolated=rnd.random() < 0.5,
                rng_escrowed=rnd.random() < 0.5,
                guidance_scale=rnd.uniform(-5, 40),
            )
        )
        tel.record_guidance_clip(
            requested=rnd.uniform(0, 40), limit=12.0, sampler=pick(KNOWN_SAMPLERS)
        )
        tel.record_seed_alarm(pick(SEED_HEALTH_CHECKS))
        tel.record_seed_health(_Report(rnd.random() < 0.5, ()))
        tel.record_beacon("sha256:" + f"{rnd.randrange(16**64):064x}")
        tel.record_beacon_mismatch(
            expected=BEACON_A, got="sha256:" + f"{rnd.randrange(16**64):064x}"
        )
        tel.record_integrity_check(pick(ARTIFACTS), ok=rnd.random() < 0.5)
        tel.record_policy_violation(pick(POLICY_CHECKS), action=pick(POLICY_ACTIONS))
        tel.record_verification(
            pick(VERIFICATION_OUTCOMES),  # type: ignore[arg-type]
            rel_l2=rnd.random(),
            reason=pick(VERIFICATION_REASONS),
            sampler=pick(KNOWN_SAMPLERS),
        )
    got = collect()
    series = {name: len(got.points(name)) for name in got.by_name}
    n_sampler, n_schedule = len(KNOWN_SAMPLERS) + 2, len(KNOWN_SCHEDULES) + 2
    limits = {
        MetricName.GUIDANCE_SCALE: n_sampler,
        MetricName.GUIDANCE_CLIPPED: n_sampler * 2,
        MetricName.STEPS: n_sampler * n_schedule,
        MetricName.REQUESTS: n_sampler * n_schedule,
        MetricName.RNG_REQUESTS: (len(RNG_MODES) + 2) * 4,
        MetricName.SEED_HEALTH_CHECKS: 2,
        MetricName.SEED_HEALTH_ALARMS: len(SEED_HEALTH_CHECKS) + 2,
        MetricName.BEACONS: 32 + 2,
        MetricName.INTEGRITY_CHECKS: (len(ARTIFACTS) + 2) * 2,
        MetricName.INTEGRITY_MISMATCHES: len(ARTIFACTS) + 2 + 34,
        MetricName.POLICY_VIOLATIONS: (len(POLICY_CHECKS) + 2) * (len(POLICY_ACTIONS) + 2),
        MetricName.VERIFICATIONS: (len(VERIFICATION_OUTCOMES) + 2)
        * (len(VERIFICATION_REASONS) + 2),
        MetricName.REL_L2: (len(VERIFICATION_OUTCOMES) + 2) * n_sampler,
        MetricName.DROPPED: 15,
    }
    for name, count in series.items():
        assert count <= limits[name], (name, count, limits[name])
    assert sum(limits.values()) + 36 == 1373  # + drift.alerts: 6 features × 2 kinds × 3 stats
    # The beacon cap (32 prefixes + "other") is shared by both beacon-carrying metrics.
    beacons = got.attribute_values(MetricName.BEACONS, "beacon") | got.attribute_values(
        MetricName.INTEGRITY_MISMATCHES, "beacon"
    )
    assert len(beacons - {None}) == 33 and "other" in beacons
