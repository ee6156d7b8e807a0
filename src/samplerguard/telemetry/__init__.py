"""samplerguard.telemetry: OpenTelemetry metrics and drift detection against golden baselines.

Typical use in a service::

    from samplerguard.telemetry import (
        DriftBaseline, DriftDetector, RequestObservation, setup_metrics,
    )

    detector = DriftDetector(DriftBaseline.load("baseline.json"), on_alert=print)
    metrics = setup_metrics(service_name="samplerguard-sidecar", drift=detector, set_global=True)
    tel = metrics.telemetry
    tel.record_request(RequestObservation(sampler="euler", schedule="karras", steps=30,
                                          guidance_scale=7.5, rng_mode="ctr-drbg"))
    ...
    metrics.shutdown()

Exporters are configured by the standard OTEL_* variables (see :mod:`.provider`); metric names,
units and buckets are in :mod:`.instruments` and docs/telemetry.md.
"""

from samplerguard.telemetry.buckets import GUIDANCE_BUCKETS, STEPS_BUCKETS
from samplerguard.telemetry.drift import (
    BaselineError,
    CategoricalBaseline,
    DriftAlert,
    DriftBaseline,
    DriftDetector,
    DriftScore,
    HistogramBaseline,
    compare_categorical,
    compare_histogram,
)
from samplerguard.telemetry.instruments import (
    REL_L2_BUCKETS,
    MetricName,
    RequestObservation,
    SamplerTelemetry,
)
from samplerguard.telemetry.provider import (
    Metrics,
    MetricsConfig,
    TelemetryConfigError,
    histogram_views,
    setup_metrics,
)

__all__ = [
    "GUIDANCE_BUCKETS",
    "REL_L2_BUCKETS",
    "STEPS_BUCKETS",
    "BaselineError",
    "CategoricalBaseline",
    "DriftAlert",
    "DriftBaseline",
    "DriftDetector",
    "DriftScore",
    "HistogramBaseline",
    "MetricName",
    "Metrics",
    "MetricsConfig",
    "RequestObservation",
    "SamplerTelemetry",
    "TelemetryConfigError",
    "compare_categorical",
    "compare_histogram",
    "histogram_views",
    "setup_metrics",
]
