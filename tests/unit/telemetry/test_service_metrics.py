"""The deployables' latency histograms and their Prometheus exposition."""

from __future__ import annotations

from typing import Any

import pytest

from samplerguard.telemetry import provider
from samplerguard.telemetry.prometheus import render
from samplerguard.telemetry.provider import setup_metrics
from samplerguard.telemetry.service import LATENCY_BUCKETS, ServiceMetrics


def test_latencies_and_outcomes_are_exposed_for_prometheus() -> None:
    metrics = setup_metrics(env={"OTEL_METRICS_EXPORTER": "none"}, prometheus=True)
    instruments = ServiceMetrics(metrics.provider)
    with instruments.timed(instruments.admission, operation="validate") as attributes:
        attributes["outcome"] = "denied"
    with pytest.raises(RuntimeError), instruments.timed(instruments.recheck):
        raise RuntimeError("the reference model is missing")
    instruments.ingest.record(0.004, {"outcome": "committed"})
    instruments.openings.record(0.002, {"outcome": "served"})
    instruments.results.add(3, {"result": "pass"})
    instruments.sidecar_errors.add(1)
    text = metrics.prometheus_text()
    name = "samplerguard_admission_duration_seconds"
    assert f"# TYPE {name} histogram" in text
    assert f'{name}_bucket{{operation="validate",outcome="denied",le="+Inf"}} 1' in text
    assert f'{name}_count{{operation="validate",outcome="denied"}} 1' in text
    buckets = [line for line in text.splitlines() if line.startswith(f"{name}_bucket")]
    assert len(buckets) == len(LATENCY_BUCKETS) + 1  # the View's boundaries, then +Inf
    assert 'samplerguard_recheck_duration_seconds_count{outcome="error"} 1' in text
    assert 'samplerguard_ingest_duration_seconds_count{outcome="committed"} 1' in text
    assert 'samplerguard_openings_duration_seconds_count{outcome="served"} 1' in text
    assert 'samplerguard_operator_results_total{result="pass"} 3' in text
    assert "samplerguard_verifier_sidecar_errors_total 1" in text
    metrics.shutdown()


def test_nothing_collected_renders_empty() -> None:
    assert render(None) == ""
    assert setup_metrics(env={"OTEL_METRICS_EXPORTER": "none"}).prometheus_text() == ""


@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({}, "none"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_METRICS_EXPORTER": "console"}, "console"),
    ],
)
def test_a_service_exports_otlp_only_to_a_configured_endpoint(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], exporter: str
) -> None:
    seen: dict[str, Any] = {}
    built = object()  # what the stand-in setup_metrics returns

    def fake(**kwargs: Any) -> Any:
        seen.update(kwargs)
        return built

    monkeypatch.setattr(provider, "setup_metrics", fake)
    monkeypatch.setattr(provider, "_SERVICE_METRICS", None)  # restored afterwards
    assert provider.setup_service_metrics("samplerguard-webhook", env=env) is built
    assert provider.current_service_metrics() is built
    assert seen["prometheus"] is True and seen["set_global"] is True
    assert seen["env"].get("OTEL_METRICS_EXPORTER", "otlp") == exporter
