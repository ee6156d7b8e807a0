"""setup_metrics / MetricsConfig: the OTEL_* variables, their precedence and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader

from samplerguard.errors import MalformedInputError
from samplerguard.telemetry import (
    BaselineError,
    DriftAlert,
    DriftBaseline,
    MetricName,
    MetricsConfig,
    RequestObservation,
    TelemetryConfigError,
    setup_metrics,
)


def test_defaults_follow_the_specification() -> None:
    cfg = MetricsConfig.from_env({})
    assert cfg.disabled is False
    assert cfg.exporter == "otlp"
    assert cfg.protocol == "http/protobuf"
    assert cfg.endpoint == "http://localhost:4318/v1/metrics"
    assert cfg.export_interval_ms == 60_000
    assert cfg.export_timeout_ms == 30_000
    assert cfg.service_name == "samplerguard"
    assert cfg.resource_attributes == {"service.name": "samplerguard"}


def test_grpc_protocol_and_default_endpoint() -> None:
    cfg = MetricsConfig.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert cfg.protocol == "grpc"
    assert cfg.endpoint == "http://localhost:4317"


def test_metrics_specific_variables_win() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://metrics.example:9000/custom/path",
    }
    cfg = MetricsConfig.from_env(env)
    assert cfg.protocol == "http/protobuf"
    # A signal-specific endpoint is used as is.
    assert cfg.endpoint == "https://metrics.example:9000/custom/path"


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://collector:4318", "http://collector:4318/v1/metrics"),
        ("http://collector:4318/", "http://collector:4318/v1/metrics"),
        ("https://gw.example/otlp", "https://gw.example/otlp/v1/metrics"),
        ("collector:4318", "http://collector:4318/v1/metrics"),
        ("http://[::1]:4318", "http://[::1]:4318/v1/metrics"),
    ],
)
def test_base_endpoint_gets_the_signal_path(base: str, expected: str) -> None:
    assert MetricsConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": base}).endpoint == expected


def test_grpc_endpoint_keeps_scheme_host_port() -> None:
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317/"}
    assert MetricsConfig.from_env(env).endpoint == "https://c:4317"


def test_arguments_override_the_environment() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://from-env:4318",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
    }
    cfg = MetricsConfig.from_env(
        env, protocol="grpc", endpoint="http://127.0.0.1:1234", export_interval_ms=250
    )
    assert (cfg.protocol, cfg.endpoint, cfg.export_interval_ms) == (
        "grpc",
        "http://127.0.0.1:1234",
        250,
    )


def test_service_name_and_resource_attributes() -> None:
    env = {
        "OTEL_SERVICE_NAME": "sidecar-7",
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=gen-0, deployment.environment=prod%2Ceu",
    }
    cfg = MetricsConfig.from_env(env, service_name="samplerguard-sidecar")
    assert cfg.service_name == "sidecar-7"
    assert cfg.resource_attributes == {
        "k8s.pod.name": "gen-0",
        "deployment.environment": "prod,eu",
        "service.name": "sidecar-7",
    }
    assert MetricsConfig.from_env({}, service_name="samplerguard-sidecar").service_name == (
        "samplerguard-sidecar"
    )


def test_interval_and_timeout() -> None:
    env = {"OTEL_METRIC_EXPORT_INTERVAL": "1500", "OTEL_METRIC_EXPORT_TIMEOUT": "700"}
    cfg = MetricsConfig.from_env(env)
    assert (cfg.export_interval_ms, cfg.export_timeout_ms) == (1500, 700)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/json has no Python exporter"),
        ({"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "udp"}, "'udp' is not supported"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, "integer number of milliseconds"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "0"}, "must be 1..86400000 ms, got 0"),
        ({"OTEL_METRIC_EXPORT_TIMEOUT": "-5"}, "OTEL_METRIC_EXPORT_TIMEOUT must be 1.."),
        ({"OTEL_SDK_DISABLED": "yes"}, "OTEL_SDK_DISABLED must be 'true' or 'false'"),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, "expected one of otlp, console, none"),
        ({"OTEL_METRICS_EXPORTER": "otlp,console"}, "is not supported"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://c:21"}, "must be an http:// or https:// URL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:notaport"}, "is not a valid URL"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "must be key=value"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], match: str) -> None:
    with pytest.raises(TelemetryConfigError, match=match):
        MetricsConfig.from_env(env)


def test_credentials_in_the_endpoint_are_refused_without_echoing_them() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:hunter2@collector:4318"}
    with pytest.raises(TelemetryConfigError, match="must not carry credentials") as info:
        MetricsConfig.from_env(env)
    assert "hunter2" not in str(info.value)
    assert isinstance(info.value, MalformedInputError)


def test_disabled_sdk_gives_a_no_op_provider() -> None:
    m = setup_metrics(env={"OTEL_SDK_DISABLED": "TRUE"}, in_memory=True)
    assert m.config.disabled
    assert isinstance(m.provider, otel_metrics.NoOpMeterProvider)
    assert m.reader is None and m.collect() is None
    m.telemetry.record_request(
        RequestObservation("euler", "karras", 30, 7.5, "ctr-drbg")
    )  # recorded nowhere, raises nothing
    assert m.force_flush() is True
    m.shutdown()


def test_in_memory_provider_carries_resource_and_views() -> None:
    with setup_metrics(
        in_memory=True, env={"OTEL_SERVICE_NAME": "svc-x"}, service_name="ignored"
    ) as m:
        assert isinstance(m.provider, MeterProvider)
        assert isinstance(m.reader, InMemoryMetricReader)
        m.telemetry.record_guidance(7.5, sampler="euler")
        data = m.collect()
        assert data is not None
        (rm,) = data.resource_metrics
        assert rm.resource.attributes["service.name"] == "svc-x"
        (sm,) = rm.scope_metrics
        assert sm.scope.name == "samplerguard"
        assert [metric.name for metric in sm.metrics] == [MetricName.GUIDANCE_SCALE]


def test_exporting_reader_for_each_protocol() -> None:
    for protocol in ("grpc", "http/protobuf"):
        m = setup_metrics(
            env={"OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_METRIC_EXPORT_INTERVAL": "600000"}
        )
        assert isinstance(m.reader, PeriodicExportingMetricReader)
        m.shutdown(timeout_ms=1000)


def test_exporter_none_has_no_reader() -> None:
    m = setup_metrics(env={"OTEL_METRICS_EXPORTER": "none"})
    assert m.reader is None
    m.telemetry.record_guidance(7.0, sampler="euler")
    m.shutdown()


def test_drift_baseline_from_the_environment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "baseline.json"
    DriftBaseline.fit([{"guidance_scale": 7.0, "schedule": "karras"}] * 50).save(path)
    with setup_metrics(in_memory=True, env={"SAMPLERGUARD_DRIFT_BASELINE": str(path)}) as m:
        assert m.drift is not None
        seen: list[DriftAlert] = []
        m.drift.add_listener(seen.append)
        alerts = m.telemetry.record_request(
            RequestObservation("euler", "trailing", 30, 7.0, "ctr-drbg")
        )
        assert [a.category for a in alerts] == ["trailing"] and seen == alerts
    assert "drift alert: schedule 'trailing' is not in the golden baseline" in caplog.text


def test_unusable_drift_baseline_fails_at_start(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    path.write_text('{"kind": "samplerguard.dev/drift-baseline/v1"')
    with pytest.raises(BaselineError, match="not valid JSON"):
        setup_metrics(in_memory=True, env={}, drift_baseline=path)


def test_no_baseline_no_detector() -> None:
    with setup_metrics(in_memory=True, env={}) as m:
        assert m.drift is None
        assert (
            m.telemetry.record_request(RequestObservation("euler", "anything", 30, 7.0, "ctr-drbg"))
            == []
        )
