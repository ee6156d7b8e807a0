"""Telemetry fixtures: a MeterProvider on the SDK's InMemoryMetricReader, and point lookups."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from samplerguard.telemetry import Metrics, setup_metrics


class Collected:
    """One collection of the in-memory reader, indexed by metric name."""

    def __init__(self, metrics: Metrics) -> None:
        data = metrics.collect()
        assert data is not None
        self.resource = data.resource_metrics[0].resource if data.resource_metrics else None
        self.by_name: dict[str, Any] = {}
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    self.by_name[metric.name] = metric

    def metric(self, name: str) -> Any:
        assert name in self.by_name, f"{name} not exported; have {sorted(self.by_name)}"
        return self.by_name[name]

    def points(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """attribute set -> data point."""
        return {
            frozenset(dict(p.attributes).items()): p for p in self.metric(name).data.data_points
        }

    def value(self, name: str, **attributes: Any) -> Any:
        """A counter's value for exactly these attributes (0 when absent)."""
        if name not in self.by_name:
            return 0
        point = self.points(name).get(frozenset(attributes.items()))
        return 0 if point is None else point.value

    def attribute_values(self, name: str, key: str) -> set[Any]:
        return {dict(p.attributes).get(key) for p in self.metric(name).data.data_points}


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = setup_metrics(in_memory=True, env={}, service_name="samplerguard-test")
    yield m
    m.shutdown()


@pytest.fixture
def collect(metrics: Metrics) -> Any:
    return lambda: Collected(metrics)
