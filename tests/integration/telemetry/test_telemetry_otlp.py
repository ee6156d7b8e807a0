"""setup_metrics against real OTLP receivers on loopback, over HTTP and over gRPC: the exported
protobuf carries the right metric names, units, bucket boundaries, counts and attributes."""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
import pytest

from samplerguard.telemetry import (
    GUIDANCE_BUCKETS,
    REL_L2_BUCKETS,
    STEPS_BUCKETS,
    DriftBaseline,
    DriftDetector,
    MetricName,
    Metrics,
    RequestObservation,
    setup_metrics,
)
from tests.support.otlp_receivers import GrpcReceiver, HttpReceiver, Received, point_attributes

BEACON = "sha256:" + "0123456789abcdef" * 4


def _workload(metrics: Metrics) -> None:
    """A fixed, small day in the life of a sidecar and a verifier."""
    tel = metrics.telemetry
    for cfg, schedule in ((7.0, "karras"), (7.5, "karras"), (12.0, "leading"), (5.0, "nope")):
        tel.record_request(
            RequestObservation(
                sampler="euler",
                schedule=schedule,
                steps=30,
                guidance_scale=cfg,
                rng_mode="ctr-drbg",
                rng_isolated=True,
            )
        )
    tel.record_guidance_clip(requested=20.0, limit=12.0, sampler="euler")
    tel.record_beacon(BEACON)
    tel.record_integrity_check("solver_code", ok=False)
    tel.record_seed_alarm("variance")
    tel.record_verification("pass", rel_l2=0.0, sampler="euler")
    tel.record_verification("fail", rel_l2=0.25, reason="rel_l2", sampler="euler")


def _assert_workload_arrived(received: Received, service_name: str) -> None:
    assert any(r.get("service.name") == service_name for r in received.resources())
    got = received.metrics()
    assert {
        MetricName.GUIDANCE_SCALE,
        MetricName.GUIDANCE_CLIPPED,
        MetricName.STEPS,
        MetricName.REQUESTS,
        MetricName.RNG_REQUESTS,
        MetricName.BEACONS,
        MetricName.INTEGRITY_CHECKS,
        MetricName.INTEGRITY_MISMATCHES,
        MetricName.SEED_HEALTH_ALARMS,
        MetricName.VERIFICATIONS,
        MetricName.REL_L2,
    } <= set(got)

    guidance = got[MetricName.GUIDANCE_SCALE]
    assert guidance.unit == "1"
    (point,) = guidance.histogram.data_points
    assert tuple(point.explicit_bounds) == GUIDANCE_BUCKETS
    counts = list(point.bucket_counts)
    assert counts[GUIDANCE_BUCKETS.index(7.0)] == 1  # (6.5, 7.0]
    assert counts[GUIDANCE_BUCKETS.index(7.5)] == 1  # (7.0, 7.5]
    assert counts[GUIDANCE_BUCKETS.index(12.0)] == 1  # (11, 12]
    assert counts[GUIDANCE_BUCKETS.index(5.0)] == 1  # (4, 5]
    assert sum(counts) == point.count == 4
    assert point.sum == pytest.approx(31.5)
    assert point_attributes(point) == {"sampler": "euler"}

    steps = got[MetricName.STEPS]
    assert steps.unit == "{step}"
    by_schedule = {point_attributes(p)["schedule"]: p for p in steps.histogram.data_points}
    assert set(by_schedule) == {"karras", "leading", "other"}
    assert tuple(by_schedule["karras"].explicit_bounds) == STEPS_BUCKETS
    assert by_schedule["karras"].bucket_counts[STEPS_BUCKETS.index(30.0)] == 2

    requests = got[MetricName.REQUESTS].sum
    assert requests.is_monotonic
    assert {point_attributes(p)["schedule"]: p.as_int for p in requests.data_points} == {
        "karras": 2,
        "leading": 1,
        "other": 1,
    }
    (rng,) = got[MetricName.RNG_REQUESTS].sum.data_points
    assert point_attributes(rng) == {
        "rng.mode": "ctr-drbg",
        "rng.isolated": True,
        "rng.escrowed": False,
    }
    assert rng.as_int == 4

    (clip,) = got[MetricName.GUIDANCE_CLIPPED].sum.data_points
    assert point_attributes(clip) == {"sampler": "euler", "direction": "above"}
    (beacon,) = got[MetricName.BEACONS].sum.data_points
    assert point_attributes(beacon) == {"beacon": "0123456789ab"}
    (mismatch,) = got[MetricName.INTEGRITY_MISMATCHES].sum.data_points
    assert point_attributes(mismatch) == {"artifact": "solver_code"}
    (alarm,) = got[MetricName.SEED_HEALTH_ALARMS].sum.data_points
    assert point_attributes(alarm) == {"check": "variance"}

    outcomes = {
        (point_attributes(p)["outcome"], point_attributes(p)["reason"]): p.as_int
        for p in got[MetricName.VERIFICATIONS].sum.data_points
    }
    assert outcomes == {("pass", "ok"): 1, ("fail", "rel_l2"): 1}
    rel = {point_attributes(p)["outcome"]: p for p in got[MetricName.REL_L2].histogram.data_points}
    assert tuple(rel["pass"].explicit_bounds) == pytest.approx(REL_L2_BUCKETS)
    assert rel["pass"].bucket_counts[0] == 1
    assert rel["fail"].bucket_counts[len(REL_L2_BUCKETS) - 2] == 1  # 0.25 in (0.1, 0.316]


def test_otlp_http_export(otlp_http: HttpReceiver) -> None:
    metrics = setup_metrics(
        env={},
        service_name="samplerguard-sidecar",
        protocol="http/protobuf",
        endpoint=otlp_http.base_url,  # a base URL: /v1/metrics is appended
        export_interval_ms=600_000,
    )
    try:
        _workload(metrics)
        assert metrics.force_flush(timeout_ms=10_000)
    finally:
        metrics.shutdown()
    otlp_http.received.wait()
    assert set(otlp_http.received.paths) == {"/v1/metrics"}
    _assert_workload_arrived(otlp_http.received, "samplerguard-sidecar")


def test_otlp_grpc_export_configured_by_environment(otlp_grpc: GrpcReceiver) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_grpc.endpoint,
        "OTEL_SERVICE_NAME": "verifier-from-env",
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=samplerguard",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
    }
    metrics = setup_metrics(env=env, service_name="samplerguard-verifier")
    assert metrics.config.protocol == "grpc"
    try:
        _workload(metrics)
        assert metrics.force_flush(timeout_ms=10_000)
    finally:
        metrics.shutdown()
    otlp_grpc.received.wait()
    _assert_workload_arrived(otlp_grpc.received, "verifier-from-env")
    assert any(
        r.get("k8s.namespace.name") == "samplerguard" for r in otlp_grpc.received.resources()
    )


def test_periodic_export_over_http_without_a_flush(otlp_http: HttpReceiver) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.base_url,
        "OTEL_METRIC_EXPORT_INTERVAL": "100",
    }
    metrics = setup_metrics(env=env)
    try:
        metrics.telemetry.record_verification("error", reason="unreachable")
        otlp_http.received.wait(timeout=10.0)
    finally:
        metrics.shutdown()
    (point,) = otlp_http.received.metrics()[MetricName.VERIFICATIONS].sum.data_points
    assert point_attributes(point) == {"outcome": "error", "reason": "unreachable"}


def test_drift_alerts_reach_the_receiver(otlp_grpc: GrpcReceiver) -> None:
    rng = np.random.default_rng(3)
    honest = [{"guidance_scale": float(x), "schedule": "karras"} for x in rng.normal(7, 1, 2000)]
    detector = DriftDetector(DriftBaseline.fit(honest))
    metrics = setup_metrics(env={}, protocol="grpc", endpoint=otlp_grpc.endpoint, drift=detector)
    try:
        for cfg in rng.normal(9, 1, 40):
            metrics.telemetry.record_request(
                RequestObservation("euler", "karras", 30, float(cfg), "ctr-drbg")
            )
        metrics.telemetry.record_request(RequestObservation("euler", "bogus", 30, 7.0, "ctr-drbg"))
        assert metrics.force_flush(timeout_ms=10_000)
    finally:
        metrics.shutdown()
    otlp_grpc.received.wait()
    alerts = {
        (point_attributes(p)["feature"], point_attributes(p)["kind"]): p.as_int
        for p in otlp_grpc.received.metrics()[MetricName.DRIFT_ALERTS].sum.data_points
    }
    assert alerts == {
        ("guidance_scale", "distribution-shift"): 1,
        ("schedule", "unknown-category"): 1,
    }


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_unreachable_collector_fails_soft(protocol: Any, caplog: pytest.LogCaptureFixture) -> None:
    """No collector: recording and flushing never raise, and the exporter says why it failed.
    (The SDK's reader reports a flush as done even when the export failed, so the log is the
    evidence.)"""
    env = {"OTEL_METRIC_EXPORT_TIMEOUT": "500", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "0.5"}
    metrics = setup_metrics(
        env=env,
        protocol=protocol,
        endpoint=f"http://127.0.0.1:{_closed_port()}",
        export_interval_ms=600_000,
    )
    try:
        metrics.telemetry.record_guidance(7.0, sampler="euler")
        metrics.force_flush(timeout_ms=1_500)
    finally:
        metrics.shutdown(timeout_ms=1_500)
    failures = [
        r
        for r in caplog.records
        if r.name.startswith("opentelemetry.exporter.otlp") and r.levelname == "ERROR"
    ]
    assert failures, "the failed export was not reported"
    assert any("export" in r.getMessage().lower() for r in failures)


def test_http_gzip_and_headers_come_from_the_process_environment(
    otlp_http: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compression and headers are the exporter's business: they reach the wire, but the
    header value (often an API key) never enters samplerguard's config."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cr3t-value")
    metrics = setup_metrics(
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.base_url},
        export_interval_ms=600_000,
    )
    assert "s3cr3t" not in repr(metrics.config)
    try:
        metrics.telemetry.record_seed_alarm("repeats")
        assert metrics.force_flush(timeout_ms=10_000)
    finally:
        metrics.shutdown()
    otlp_http.received.wait()
    headers = {k.lower(): v for k, v in otlp_http.received.headers[0].items()}
    assert headers["content-encoding"] == "gzip"
    assert headers["x-api-key"] == "s3cr3t-value"
    (alarm,) = otlp_http.received.metrics()[MetricName.SEED_HEALTH_ALARMS].sum.data_points
    assert point_attributes(alarm) == {"check": "repeats"}
