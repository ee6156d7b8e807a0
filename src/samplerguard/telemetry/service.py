"""Request latencies and outcomes of the deployables, and their structured denial logs.

Every component records on the same meter (``samplerguard``) through :class:`ServiceMetrics`:

============================================  =========  =====================================
metric                                        unit       attributes
============================================  =========  =====================================
``samplerguard.admission.duration``           s          ``operation`` (validate, mutate),
                                                         ``outcome`` (allowed, denied)
``samplerguard.ingest.duration``              s          ``outcome`` (committed, refused)
``samplerguard.openings.duration``            s          ``outcome`` (served, missing, denied)
``samplerguard.recheck.duration``             s          ``outcome`` (pass, fail, error)
``samplerguard.verifier.sidecar_errors``      {error}    none (sidecars that could not be read)
``samplerguard.operator.results``             {result}   ``result`` (pass, fail, warn, error,
                                                         skip)
``samplerguard.sidecar.drbg_secret_changes``  {change}   ``change`` (rotated, escrow-key,
                                                         unusable, restored)
============================================  =========  =====================================

A denial is also logged on the ``samplerguard.denials`` logger with its facts as record
attributes (``component``, ``subject``, ``check``, ``reason`` and what else the caller knows), so
the JSON log format (``samplerguard --log-format json``) prints one object per denial.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any, Final

from opentelemetry import metrics

from samplerguard.telemetry.instruments import METER_NAME

__all__ = ["LATENCY_BUCKETS", "LATENCY_METRICS", "ServiceMetrics", "log_denial"]

#: Seconds: sub-millisecond cached admissions up to multi-second re-checks.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
ADMISSION: Final = "samplerguard.admission.duration"
INGEST: Final = "samplerguard.ingest.duration"
OPENINGS: Final = "samplerguard.openings.duration"
RECHECK: Final = "samplerguard.recheck.duration"
#: The latency histograms (their Views pin LATENCY_BUCKETS).
LATENCY_METRICS: Final = (ADMISSION, INGEST, OPENINGS, RECHECK)

denials = logging.getLogger("samplerguard.denials")


class ServiceMetrics:
    """The deployables' instruments on ``provider`` (default: the global MeterProvider)."""

    def __init__(self, provider: metrics.MeterProvider | None = None) -> None:
        meter = (provider or metrics.get_meter_provider()).get_meter(METER_NAME)

        def latency(name: str, what: str) -> metrics.Histogram:
            return meter.create_histogram(
                name,
                unit="s",
                description=what,
                explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
            )

        self.admission = latency(ADMISSION, "Time to answer one AdmissionReview")
        self.ingest = latency(INGEST, "Time from a trajectory's START to its signed commitment")
        self.openings = latency(OPENINGS, "Time to serve one opening to the verifier")
        self.recheck = latency(RECHECK, "Time to judge one committed trajectory")
        self.sidecar_errors = meter.create_counter(
            "samplerguard.verifier.sidecar_errors",
            unit="{error}",
            description="Sidecars the verifier could not read in a round",
        )
        self.results = meter.create_counter(
            "samplerguard.operator.results",
            unit="{result}",
            description="Results recorded into PolicyReports, by result",
        )
        self.drbg_secret_changes = meter.create_counter(
            "samplerguard.sidecar.drbg_secret_changes",
            unit="{change}",
            description="Changes of the mounted DRBG master secret or escrow key the sidecar "
            "saw: taken up, unusable (seeds refused), usable again",
        )

    @contextlib.contextmanager
    def timed(self, histogram: metrics.Histogram, **attributes: str) -> Iterator[dict[str, str]]:
        """Record the block's duration; the caller may set attributes (the outcome) in the
        yielded dict before it ends. An exception records ``outcome=error``."""
        attrs = dict(attributes)
        started = time.perf_counter()
        try:
            yield attrs
        except BaseException:
            attrs["outcome"] = "error"
            raise
        finally:
            histogram.record(time.perf_counter() - started, attrs)


def log_denial(component: str, subject: str, check: str, reason: str, **facts: Any) -> None:
    """One structured record of a denial: what was denied (``subject``), by which check, why."""
    denials.warning(
        "%s denied %s (%s): %s",
        component,
        subject,
        check,
        reason,
        extra={
            "event": "denied",
            "component": component,
            "subject": subject,
            "check": check,
            "reason": reason,
            **facts,
        },
    )
