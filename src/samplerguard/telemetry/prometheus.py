"""The Prometheus text exposition (version 0.0.4) of what a pull reader collected.

The components keep an SDK pull reader beside the OTLP exporter (see
:func:`~samplerguard.telemetry.provider.setup_metrics`, ``prometheus=True``) and serve
:func:`render` on ``GET /metrics``. Names follow the OpenTelemetry-to-Prometheus rules: dots
become underscores, counters get ``_total``, histograms ``_bucket``/``_sum``/``_count`` with
cumulative ``le`` buckets, and the unit ``s`` a ``_seconds`` suffix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricsData

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def _name(name: str, unit: str | None) -> str:
    out = _INVALID.sub("_", name)
    if unit == "s" and not out.endswith("_seconds"):
        out = out.removesuffix("_duration") + "_duration_seconds"
    return out


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(attributes: Mapping[str, Any] | None, extra: Iterable[tuple[str, str]] = ()) -> str:
    items = [(_INVALID.sub("_", k), _escape(v)) for k, v in (attributes or {}).items()]
    items += list(extra)
    return "{" + ",".join(f'{k}="{v}"' for k, v in items) + "}" if items else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(data: MetricsData | None) -> str:
    """The exposition of every metric in ``data`` (empty for ``None``)."""
    from opentelemetry.sdk.metrics.export import Gauge, Histogram, HistogramDataPoint, Sum

    lines: list[str] = []
    seen: set[str] = set()
    for resource_metrics in data.resource_metrics if data is not None else []:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                name = _name(metric.name, metric.unit)
                points = metric.data
                if isinstance(points, Sum):
                    kind = "counter" if points.is_monotonic else "gauge"
                    series = f"{name}_total" if points.is_monotonic else name
                elif isinstance(points, Gauge):
                    kind, series = "gauge", name
                elif isinstance(points, Histogram):
                    kind, series = "histogram", name
                else:  # exponential histograms are not configured by this package
                    continue
                if name not in seen:
                    seen.add(name)
                    lines.append(f"# HELP {name} {_escape(metric.description or metric.name)}")
                    lines.append(f"# TYPE {name} {kind}")
                for point in points.data_points:
                    if isinstance(point, HistogramDataPoint):
                        running = 0
                        bounds = [*point.explicit_bounds, math.inf]
                        for bound, count in zip(bounds, point.bucket_counts, strict=True):
                            running += count
                            le = _labels(point.attributes, [("le", _number(float(bound)))])
                            lines.append(f"{name}_bucket{le} {running}")
                        labels = _labels(point.attributes)
                        lines.append(f"{name}_sum{labels} {_number(point.sum)}")
                        lines.append(f"{name}_count{labels} {point.count}")
                    else:
                        lines.append(f"{series}{_labels(point.attributes)} {_number(point.value)}")
    return "\n".join(lines) + "\n" if lines else ""
