"""Building the MeterProvider: OTLP over HTTP or gRPC, configured by the standard OTEL_* variables.

:func:`setup_metrics` is the one entry point. It reads the environment the way the OpenTelemetry
specification says (``OTEL_SDK_DISABLED``, ``OTEL_METRICS_EXPORTER``,
``OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL``, ``OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT``,
``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_METRIC_EXPORT_TIMEOUT``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``), resolves it into a :class:`MetricsConfig`, and builds a
MeterProvider with the histogram Views of :func:`histogram_views`. Headers,
certificates, compression and temporality are read by the OTLP exporters themselves from the
process environment, so header values (which often hold API keys) never pass through here.

A misconfiguration raises :class:`TelemetryConfigError` at start-up rather than silently
exporting nowhere. ``in_memory=True`` swaps the exporter for the SDK's InMemoryMetricReader,
for tests and for ``samplerguard demo``.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from opentelemetry import metrics

from samplerguard.errors import MalformedInputError
from samplerguard.telemetry.buckets import GUIDANCE_BUCKETS, STEPS_BUCKETS
from samplerguard.telemetry.drift import DriftAlert, DriftBaseline, DriftDetector
from samplerguard.telemetry.instruments import REL_L2_BUCKETS, MetricName, SamplerTelemetry
from samplerguard.telemetry.service import LATENCY_BUCKETS, LATENCY_METRICS

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader, MetricsData
    from opentelemetry.sdk.metrics.view import View

__all__ = [
    "DRIFT_BASELINE_ENV",
    "Metrics",
    "MetricsConfig",
    "OtlpProtocol",
    "TelemetryConfigError",
    "current_service_metrics",
    "histogram_views",
    "setup_metrics",
    "setup_service_metrics",
]

OtlpProtocol = Literal["grpc", "http/protobuf"]
ExporterName = Literal["otlp", "console", "none"]

log = logging.getLogger(__name__)

#: Path of a drift baseline JSON; when set, setup_metrics attaches a DriftDetector.
DRIFT_BASELINE_ENV = "SAMPLERGUARD_DRIFT_BASELINE"

_DEFAULT_INTERVAL_MS = 60_000
_DEFAULT_TIMEOUT_MS = 30_000
_MAX_INTERVAL_MS = 24 * 3600 * 1000
_DEFAULT_HTTP = "http://localhost:4318"
_DEFAULT_GRPC = "http://localhost:4317"
_HTTP_PATH = "/v1/metrics"


def histogram_views() -> list[View]:
    """The SDK Views that pin each histogram's explicit bucket boundaries.

    :func:`~samplerguard.telemetry.setup_metrics` installs them. A MeterProvider built
    elsewhere should pass them too (the instruments also carry the boundaries as an advisory,
    which SDKs ≥ 1.23 honour, but a View is authoritative).
    """
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    latencies = [(name, LATENCY_BUCKETS) for name in LATENCY_METRICS]
    return [
        View(
            instrument_name=name,
            aggregation=ExplicitBucketHistogramAggregation(boundaries=buckets),
        )
        for name, buckets in (
            (MetricName.GUIDANCE_SCALE, GUIDANCE_BUCKETS),
            (MetricName.STEPS, STEPS_BUCKETS),
            (MetricName.REL_L2, REL_L2_BUCKETS),
            *latencies,
        )
    ]


class TelemetryConfigError(MalformedInputError):
    """An OTEL_* variable or a setup argument has a value the exporter cannot use."""


@dataclass(frozen=True)
class MetricsConfig:
    """The resolved metrics configuration. Build it with :meth:`from_env`."""

    #: ``OTEL_SDK_DISABLED=true``: a no-op provider, nothing recorded or exported.
    disabled: bool = False
    #: ``OTEL_METRICS_EXPORTER``: ``otlp`` (default), ``console`` or ``none``.
    exporter: ExporterName = "otlp"
    #: ``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``.
    protocol: OtlpProtocol = "http/protobuf"
    #: The exporter's target: the full ``…/v1/metrics`` URL for HTTP, ``scheme://host:port``
    #: for gRPC (``http://`` means plaintext).
    endpoint: str = _DEFAULT_HTTP + _HTTP_PATH
    #: ``OTEL_METRIC_EXPORT_INTERVAL`` in milliseconds.
    export_interval_ms: int = _DEFAULT_INTERVAL_MS
    #: ``OTEL_METRIC_EXPORT_TIMEOUT`` in milliseconds.
    export_timeout_ms: int = _DEFAULT_TIMEOUT_MS
    #: ``OTEL_SERVICE_NAME``, else the caller's default.
    service_name: str = "samplerguard"
    #: ``OTEL_RESOURCE_ATTRIBUTES`` plus ``service.name``.
    resource_attributes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        service_name: str = "samplerguard",
        protocol: OtlpProtocol | None = None,
        endpoint: str | None = None,
        export_interval_ms: int | None = None,
    ) -> MetricsConfig:
        """Resolve the configuration: explicit arguments, then ``env`` (default
        ``os.environ``), then the specification's defaults. ``service_name`` is the default
        that ``OTEL_SERVICE_NAME`` overrides."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        disabled = _parse_bool("OTEL_SDK_DISABLED", get("OTEL_SDK_DISABLED"))
        exporter = _parse_exporter(get("OTEL_METRICS_EXPORTER"))

        proto_text = (
            protocol
            or get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
            or get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        if proto_text not in ("grpc", "http/protobuf"):
            raise TelemetryConfigError(
                f"OTLP protocol {proto_text!r} is not supported "
                "(expected 'grpc' or 'http/protobuf'; http/json has no Python exporter)"
            )
        proto: OtlpProtocol = "grpc" if proto_text == "grpc" else "http/protobuf"

        if endpoint is not None:
            resolved = _endpoint(endpoint, proto, signal_specific=True, source="endpoint")
        elif (specific := get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")) is not None:
            resolved = _endpoint(
                specific, proto, signal_specific=True, source="OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
            )
        elif (base := get("OTEL_EXPORTER_OTLP_ENDPOINT")) is not None:
            resolved = _endpoint(
                base, proto, signal_specific=False, source="OTEL_EXPORTER_OTLP_ENDPOINT"
            )
        else:
            default = _DEFAULT_GRPC if proto == "grpc" else _DEFAULT_HTTP
            resolved = _endpoint(default, proto, signal_specific=False, source="default")

        interval = export_interval_ms
        if interval is None:
            interval = _parse_ms(
                "OTEL_METRIC_EXPORT_INTERVAL",
                get("OTEL_METRIC_EXPORT_INTERVAL"),
                _DEFAULT_INTERVAL_MS,
            )
        elif not 1 <= interval <= _MAX_INTERVAL_MS:
            raise TelemetryConfigError(
                f"export interval must be 1..{_MAX_INTERVAL_MS} ms, got {interval}"
            )
        timeout = _parse_ms(
            "OTEL_METRIC_EXPORT_TIMEOUT", get("OTEL_METRIC_EXPORT_TIMEOUT"), _DEFAULT_TIMEOUT_MS
        )

        attributes = _parse_resource_attributes(get("OTEL_RESOURCE_ATTRIBUTES"))
        name = get("OTEL_SERVICE_NAME") or service_name
        attributes["service.name"] = name
        return cls(
            disabled=disabled,
            exporter=exporter,
            protocol=proto,
            endpoint=resolved,
            export_interval_ms=interval,
            export_timeout_ms=timeout,
            service_name=name,
            resource_attributes=attributes,
        )


@dataclass
class Metrics:
    """What :func:`setup_metrics` returns: the provider, its reader and the instruments.

    Use it as a context manager, or call :meth:`shutdown` (flushes once more, then closes the
    exporter) when the service stops.
    """

    config: MetricsConfig
    provider: metrics.MeterProvider
    telemetry: SamplerTelemetry
    #: The SDK reader: an InMemoryMetricReader with ``in_memory=True``, a periodic exporting
    #: reader otherwise, ``None`` when disabled or ``OTEL_METRICS_EXPORTER=none``.
    reader: MetricReader | None = None
    #: The drift detector fed by ``telemetry.record_request`` (``None`` without a baseline).
    #: Add your own alert listeners with ``drift.add_listener``.
    drift: DriftDetector | None = None
    #: The pull reader behind ``GET /metrics`` (``prometheus=True``), beside any exporter.
    pull_reader: MetricReader | None = None

    def prometheus_text(self) -> str:
        """The Prometheus exposition of everything recorded so far (empty without a pull
        reader)."""
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from samplerguard.telemetry.prometheus import render

        if not isinstance(self.pull_reader, InMemoryMetricReader):
            return ""
        return render(self.pull_reader.get_metrics_data())

    def collect(self) -> MetricsData | None:
        """The in-memory reader's current data (``None`` for any other reader)."""
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        if isinstance(self.reader, InMemoryMetricReader):
            return self.reader.get_metrics_data()
        return None

    def force_flush(self, timeout_ms: int = 10_000) -> bool:
        """Export now. ``False`` if the exporter did not finish within ``timeout_ms``."""
        flush = getattr(self.provider, "force_flush", None)
        return bool(flush(timeout_millis=timeout_ms)) if flush is not None else True

    def shutdown(self, timeout_ms: int = 10_000) -> None:
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown(timeout_millis=timeout_ms)

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def setup_metrics(
    *,
    service_name: str = "samplerguard",
    in_memory: bool = False,
    protocol: OtlpProtocol | None = None,
    endpoint: str | None = None,
    export_interval_ms: int | None = None,
    env: Mapping[str, str] | None = None,
    drift: DriftDetector | None = None,
    drift_baseline: str | os.PathLike[str] | None = None,
    set_global: bool = False,
    prometheus: bool = False,
) -> Metrics:
    """Build a MeterProvider and the :class:`SamplerTelemetry` on it.

    * ``service_name``: the default ``service.name``; ``OTEL_SERVICE_NAME`` overrides it.
    * ``in_memory``: use an InMemoryMetricReader (tests, the demo) instead of an exporter.
    * ``protocol``/``endpoint``/``export_interval_ms``: override the OTEL_* variables. For
      HTTP, ``endpoint`` may be a base URL (``http://host:4318``; ``/v1/metrics`` is added) or
      the full signal URL.
    * ``env``: the variables to read (default ``os.environ``).
    * ``drift``: a detector fed by ``record_request`` whose alerts are counted.
    * ``drift_baseline``: or just a baseline JSON path (default: ``$SAMPLERGUARD_DRIFT_BASELINE``)
      for a detector with default settings whose alerts are also logged at WARNING.
    * ``set_global``: also install the provider as OpenTelemetry's global one (once per
      process; the service entry points do this, libraries and tests do not).
    * ``prometheus``: also keep a pull reader whose data :meth:`Metrics.prometheus_text`
      renders for ``GET /metrics``.

    Raises :class:`TelemetryConfigError` for unusable settings and
    :class:`~samplerguard.telemetry.drift.BaselineError` for an unusable baseline.
    """
    config = MetricsConfig.from_env(
        env,
        service_name=service_name,
        protocol=protocol,
        endpoint=endpoint,
        export_interval_ms=export_interval_ms,
    )
    if drift is None:
        source = drift_baseline or (os.environ if env is None else env).get(DRIFT_BASELINE_ENV)
        if source:
            drift = DriftDetector(DriftBaseline.load(source), on_alert=_log_alert)
    provider: metrics.MeterProvider
    reader: MetricReader | None = None
    pull_reader: MetricReader | None = None
    if config.disabled:
        provider = metrics.NoOpMeterProvider()
    else:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource

        if in_memory:
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader

            reader = InMemoryMetricReader()
        elif config.exporter != "none":
            reader = _exporting_reader(config)
        if prometheus:
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader

            pull_reader = InMemoryMetricReader()
        provider = MeterProvider(
            metric_readers=[r for r in (reader, pull_reader) if r is not None],
            resource=Resource.create(dict(config.resource_attributes)),
            views=histogram_views(),
            shutdown_on_exit=False,
        )
    if set_global:
        metrics.set_meter_provider(provider)
    return Metrics(
        config=config,
        provider=provider,
        telemetry=SamplerTelemetry(provider, drift=drift),
        reader=reader,
        drift=drift,
        pull_reader=pull_reader,
    )


#: Set one of these and a service exports OTLP; without them it only serves ``/metrics``.
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")


def setup_service_metrics(service_name: str, *, env: Mapping[str, str] | None = None) -> Metrics:
    """The metrics of one deployable: the global provider, a pull reader for ``GET /metrics``
    and, when an OTLP endpoint is configured, the OTLP exporter. Raises
    :class:`TelemetryConfigError` for unusable OTEL_* settings."""
    env = os.environ if env is None else env
    exporting = any((env.get(v) or "").strip() for v in OTLP_ENDPOINT_VARIABLES)
    if not exporting and not (env.get("OTEL_METRICS_EXPORTER") or "").strip():
        env = {**env, "OTEL_METRICS_EXPORTER": "none"}  # no collector to send to
    global _SERVICE_METRICS
    _SERVICE_METRICS = setup_metrics(
        service_name=service_name, env=env, set_global=True, prometheus=True
    )
    return _SERVICE_METRICS


_SERVICE_METRICS: Metrics | None = None


def current_service_metrics() -> Metrics | None:
    """What :func:`setup_service_metrics` set up in this process (``None`` before)."""
    return _SERVICE_METRICS


def _log_alert(alert: DriftAlert) -> None:
    log.warning("drift alert: %s", alert.message)


def _exporting_reader(config: MetricsConfig) -> MetricReader:
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricExporter,
        PeriodicExportingMetricReader,
    )

    exporter: MetricExporter
    timeout_s = config.export_timeout_ms / 1000.0
    if config.exporter == "console":
        exporter = ConsoleMetricExporter()
    elif config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcExporter,
        )

        exporter = GrpcExporter(endpoint=config.endpoint, timeout=timeout_s)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpExporter,
        )

        exporter = HttpExporter(endpoint=config.endpoint, timeout=timeout_s)
    return PeriodicExportingMetricReader(
        exporter,
        export_interval_millis=config.export_interval_ms,
        export_timeout_millis=config.export_timeout_ms,
    )


# --- parsing ----------------------------------------------------------------------------------


def _parse_bool(name: str, value: str | None) -> bool:
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    # The specification: anything but "true" is false, but a typo should not pass silently.
    raise TelemetryConfigError(f"{name} must be 'true' or 'false', got {value!r}")


def _parse_exporter(value: str | None) -> ExporterName:
    if value is None:
        return "otlp"
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    if len(names) != 1 or names[0] not in ("otlp", "console", "none"):
        raise TelemetryConfigError(
            f"OTEL_METRICS_EXPORTER={value!r} is not supported "
            "(expected one of otlp, console, none)"
        )
    name = names[0]
    return "otlp" if name == "otlp" else "console" if name == "console" else "none"


def _parse_ms(name: str, value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        parsed = int(value)
    except ValueError:
        raise TelemetryConfigError(
            f"{name} must be an integer number of milliseconds, got {value!r}"
        ) from None
    if not 1 <= parsed <= _MAX_INTERVAL_MS:
        raise TelemetryConfigError(f"{name} must be 1..{_MAX_INTERVAL_MS} ms, got {parsed}")
    return parsed


def _endpoint(value: str, protocol: OtlpProtocol, *, signal_specific: bool, source: str) -> str:
    """Validate an endpoint. For HTTP a base endpoint gets ``/v1/metrics`` appended (the
    specification's rule for OTEL_EXPORTER_OTLP_ENDPOINT); a signal-specific one is used as is
    unless it has no path at all. gRPC endpoints keep only scheme://host:port."""
    url = value if "://" in value else ("http://" + value)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TelemetryConfigError(f"{source}: {value!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TelemetryConfigError(
            f"{source}: {value!r} must be an http:// or https:// URL with a host"
        )
    if parts.username or parts.password:
        # Credentials belong in OTEL_EXPORTER_OTLP_HEADERS, not in a URL that may get logged.
        raise TelemetryConfigError(f"{source}: the endpoint URL must not carry credentials")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    if protocol == "grpc":
        return f"{parts.scheme}://{netloc}"
    path = parts.path.rstrip("/")
    if not signal_specific or not path:
        path = path + _HTTP_PATH
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, parts.query, ""))


def _parse_resource_attributes(value: str | None) -> dict[str, str]:
    attributes: dict[str, str] = {}
    if value is None:
        return attributes
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TelemetryConfigError(
                f"OTEL_RESOURCE_ATTRIBUTES entries must be key=value, got {item.strip()[:64]!r}"
            )
        attributes[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(raw.strip())
    return attributes
