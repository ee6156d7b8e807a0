"""The metric instruments and their typed recording methods.

:class:`SamplerTelemetry` owns every instrument samplerguard exports. Callers (the sidecar, the
verifier, the hook) never touch OpenTelemetry directly: they call ``record_*`` with typed
arguments, and this module turns them into bounded attributes (see :mod:`.attributes`). The
metric names, units and bucket boundaries below are part of the public contract: dashboards and
alert rules depend on them, and ``docs/telemetry.md`` lists them.

The methods never raise on odd *values* (a NaN guidance scale, an unknown schedule): telemetry
observes, it does not judge. Odd values land in ``"invalid"``/``"other"`` attributes or, for
non-finite or negative numbers, in a dedicated ``samplerguard.telemetry.dropped`` counter.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

from opentelemetry import metrics

from samplerguard.telemetry.attributes import (
    ARTIFACTS,
    DRIFT_FEATURES,
    POLICY_ACTIONS,
    POLICY_CHECKS,
    RNG_MODES,
    SAMPLERS,
    SCHEDULES,
    SEED_HEALTH_CHECKS,
    VERIFICATION_OUTCOMES,
    VERIFICATION_REASONS,
    BoundedLabels,
    beacon_prefix,
    normalise,
)
from samplerguard.telemetry.buckets import GUIDANCE_BUCKETS, STEPS_BUCKETS

if TYPE_CHECKING:
    from samplerguard.telemetry.drift import DriftAlert, DriftDetector

__all__ = [
    "METER_NAME",
    "REL_L2_BUCKETS",
    "MetricName",
    "RequestObservation",
    "SamplerTelemetry",
    "SeedHealthReport",
]

METER_NAME: Final = "samplerguard"

#: Verifier rel-L2: half-decade steps from 1e-9 to 1 (19 boundaries). Same-build honest
#: re-checks give 0 (first bucket); cross-backend honest drift sits around 1e-6…1e-3; cheating
#: lands near 1e-1…1.
REL_L2_BUCKETS: Final[tuple[float, ...]] = tuple(10.0 ** (k / 2.0) for k in range(-18, 1))


class MetricName:
    """Every exported metric name, in one place."""

    GUIDANCE_SCALE: Final = "samplerguard.guidance.scale"
    GUIDANCE_CLIPPED: Final = "samplerguard.guidance.clipped"
    STEPS: Final = "samplerguard.sampler.steps"
    REQUESTS: Final = "samplerguard.sampler.requests"
    RNG_REQUESTS: Final = "samplerguard.rng.requests"
    SEED_HEALTH_CHECKS: Final = "samplerguard.rng.seed_health.checks"
    SEED_HEALTH_ALARMS: Final = "samplerguard.rng.seed_health.alarms"
    BEACONS: Final = "samplerguard.integrity.beacons"
    INTEGRITY_CHECKS: Final = "samplerguard.integrity.checks"
    INTEGRITY_MISMATCHES: Final = "samplerguard.integrity.mismatches"
    POLICY_VIOLATIONS: Final = "samplerguard.policy.violations"
    VERIFICATIONS: Final = "samplerguard.verification.outcomes"
    REL_L2: Final = "samplerguard.verification.rel_l2"
    DRIFT_ALERTS: Final = "samplerguard.drift.alerts"
    DROPPED: Final = "samplerguard.telemetry.dropped"


class _HealthTest(Protocol):
    @property
    def name(self) -> str: ...


class SeedHealthReport(Protocol):
    """What :meth:`SamplerTelemetry.record_seed_health` reads: ``rng.health.HealthReport`` fits."""

    @property
    def ok(self) -> bool: ...

    @property
    def failures(self) -> Sequence[_HealthTest]: ...


@dataclass(frozen=True)
class RequestObservation:
    """The public recipe of one generation request, as the sidecar saw it.

    No seed, tenant or request id: nothing here may identify a person or a draw.
    """

    sampler: str
    schedule: str
    steps: int
    guidance_scale: float
    rng_mode: str
    #: Per-tenant/per-request DRBG derivation was used (no shared generator).
    rng_isolated: bool = True
    #: The request seed was escrowed to the verifier.
    rng_escrowed: bool = False


Outcome = Literal["pass", "fail", "error"]


class SamplerTelemetry:
    """All of samplerguard's instruments, behind typed ``record_*`` methods.

    Build it from a MeterProvider (``setup_metrics`` does this for you) or leave ``provider``
    out to use the global one. Thread-safe: OTel instruments are, and the only local state is
    the bounded beacon label set.

    ``drift``: an optional :class:`~samplerguard.telemetry.drift.DriftDetector`.
    :meth:`record_request` feeds it, and its alerts are counted in
    ``samplerguard.drift.alerts`` (the detector calls :meth:`record_drift_alert`).
    """

    def __init__(
        self,
        provider: metrics.MeterProvider | None = None,
        *,
        schedules: Iterable[str] = SCHEDULES,
        samplers: Iterable[str] = SAMPLERS,
        beacon_limit: int = 32,
        drift: DriftDetector | None = None,
    ) -> None:
        meter = (provider or metrics.get_meter_provider()).get_meter(METER_NAME)
        self._schedules = frozenset(schedules)
        self._samplers = frozenset(samplers)
        self._beacons = BoundedLabels(beacon_limit)
        self._drift: DriftDetector | None = None

        self._guidance = meter.create_histogram(
            MetricName.GUIDANCE_SCALE,
            unit="1",
            description="Classifier-free guidance scale the sampler ran with",
            explicit_bucket_boundaries_advisory=GUIDANCE_BUCKETS,
        )
        self._clipped = meter.create_counter(
            MetricName.GUIDANCE_CLIPPED,
            unit="{event}",
            description="Requests whose guidance scale was clipped to the policy's CFG range",
        )
        self._steps = meter.create_histogram(
            MetricName.STEPS,
            unit="{step}",
            description="Denoising steps per request",
            explicit_bucket_boundaries_advisory=STEPS_BUCKETS,
        )
        self._requests = meter.create_counter(
            MetricName.REQUESTS,
            unit="{request}",
            description="Requests by sampler and schedule id",
        )
        self._rng = meter.create_counter(
            MetricName.RNG_REQUESTS,
            unit="{request}",
            description="Requests by RNG mode and isolation flags",
        )
        self._seed_checks = meter.create_counter(
            MetricName.SEED_HEALTH_CHECKS,
            unit="{check}",
            description="Seed-vector health batteries run, by result",
        )
        self._seed_alarms = meter.create_counter(
            MetricName.SEED_HEALTH_ALARMS,
            unit="{alarm}",
            description="Seed-vector health alarms, by failing check",
        )
        self._beacon_counter = meter.create_counter(
            MetricName.BEACONS,
            unit="{request}",
            description="Requests by hash beacon (first 12 hex digits)",
        )
        self._integrity_checks = meter.create_counter(
            MetricName.INTEGRITY_CHECKS,
            unit="{check}",
            description="Runtime integrity checks against golden digests, by artifact and result",
        )
        self._integrity_mismatches = meter.create_counter(
            MetricName.INTEGRITY_MISMATCHES,
            unit="{event}",
            description="Golden-digest or beacon mismatches, by artifact",
        )
        self._violations = meter.create_counter(
            MetricName.POLICY_VIOLATIONS,
            unit="{request}",
            description="Out-of-policy requests, by check and action taken",
        )
        self._verifications = meter.create_counter(
            MetricName.VERIFICATIONS,
            unit="{verification}",
            description="Verifier outcomes (pass/fail/error) by reason",
        )
        self._rel_l2 = meter.create_histogram(
            MetricName.REL_L2,
            unit="1",
            description="Relative L2 error of the verifier's one-step re-check",
            explicit_bucket_boundaries_advisory=REL_L2_BUCKETS,
        )
        self._drift_alerts = meter.create_counter(
            MetricName.DRIFT_ALERTS,
            unit="{alert}",
            description="Drift alerts against the golden baseline, by feature and kind",
        )
        self._dropped = meter.create_counter(
            MetricName.DROPPED,
            unit="{value}",
            description="Values not recorded because they were not finite, non-negative numbers",
        )
        if drift is not None:
            self.attach_drift(drift)

    # --- wiring ---------------------------------------------------------------------------

    def attach_drift(self, detector: DriftDetector) -> None:
        """Feed ``detector`` from :meth:`record_request` and count its alerts here."""
        self._drift = detector
        detector.add_listener(self.record_drift_alert)

    def sampler_label(self, sampler: object) -> str:
        return normalise(sampler, self._samplers)

    def schedule_label(self, schedule: object) -> str:
        return normalise(schedule, self._schedules)

    # --- per request ----------------------------------------------------------------------

    def record_request(self, obs: RequestObservation) -> list[DriftAlert]:
        """Record one request's recipe: guidance, steps, sampler/schedule, RNG flags.

        Returns the drift alerts this request raised (empty without a detector). The drift
        detector sees the *raw* schedule id, so an unknown one alerts even though the metric
        attribute says ``"other"``.
        """
        sampler = self.sampler_label(obs.sampler)
        schedule = self.schedule_label(obs.schedule)
        self.record_guidance(obs.guidance_scale, sampler=obs.sampler)
        self.record_steps(obs.steps, sampler=obs.sampler, schedule=obs.schedule)
        self._requests.add(1, {"sampler": sampler, "schedule": schedule})
        self.record_rng(obs.rng_mode, isolated=obs.rng_isolated, escrowed=obs.rng_escrowed)
        if self._drift is None:
            return []
        return self._drift.observe(
            {
                "guidance_scale": obs.guidance_scale,
                "steps": obs.steps,
                "schedule": obs.schedule,
                "sampler": obs.sampler,
            }
        )

    def record_guidance(self, scale: float, *, sampler: str) -> None:
        """One guidance scale into ``samplerguard.guidance.scale`` {sampler}."""
        if self._finite(scale, MetricName.GUIDANCE_SCALE):
            self._guidance.record(float(scale), {"sampler": self.sampler_label(sampler)})

    def record_guidance_clip(
        self, *, requested: float, limit: float, sampler: str = "other"
    ) -> None:
        """A guidance scale clipped to the policy's CFG range: ``samplerguard.guidance.clipped``
        {sampler, direction="above"|"below"}. ``requested == limit`` is not a clip."""
        values: tuple[object, ...] = (requested, limit)  # callers pass whatever they hold
        if not all(isinstance(v, numbers.Real) and math.isfinite(float(v)) for v in values):
            self._dropped.add(1, {"metric": MetricName.GUIDANCE_CLIPPED})
            return
        if requested == limit:
            return
        direction = "above" if requested > limit else "below"
        self._clipped.add(1, {"sampler": self.sampler_label(sampler), "direction": direction})

    def record_steps(self, steps: int, *, sampler: str, schedule: str) -> None:
        """One step count into ``samplerguard.sampler.steps`` {sampler, schedule}."""
        if self._finite(steps, MetricName.STEPS):
            self._steps.record(
                float(steps),
                {"sampler": self.sampler_label(sampler), "schedule": self.schedule_label(schedule)},
            )

    def record_rng(self, mode: str, *, isolated: bool, escrowed: bool = False) -> None:
        """``samplerguard.rng.requests`` {rng.mode, rng.isolated, rng.escrowed}."""
        self._rng.add(
            1,
            {
                "rng.mode": normalise(mode, RNG_MODES),
                "rng.isolated": bool(isolated),
                "rng.escrowed": bool(escrowed),
            },
        )

    # --- seeds and integrity --------------------------------------------------------------

    def record_seed_health(self, report: SeedHealthReport) -> None:
        """A seed-vector health battery's result (``rng.health.HealthReport``).

        Counts one ``samplerguard.rng.seed_health.checks`` {result} and one
        ``samplerguard.rng.seed_health.alarms`` {check} per *distinct* failing check name.
        Scores and the seed vector itself are never exported.
        """
        self._seed_checks.add(1, {"result": "pass" if report.ok else "fail"})
        for check in sorted({t.name for t in report.failures}):
            self.record_seed_alarm(check)

    def record_seed_alarm(self, check: str) -> None:
        """One alarm in ``samplerguard.rng.seed_health.alarms`` {check}.

        ``check`` is a battery name (``mean``, ``ks``, … or ``noise-reuse``).
        """
        self._seed_alarms.add(1, {"check": normalise(check, SEED_HEALTH_CHECKS)})

    def record_beacon(self, beacon: str) -> None:
        """A request's hash beacon: ``samplerguard.integrity.beacons`` {beacon=<12 hex>}.

        At most ``beacon_limit`` distinct prefixes are exported; later ones are ``"other"``.
        """
        self._beacon_counter.add(1, {"beacon": self._beacons.admit(beacon_prefix(beacon))})

    def record_integrity_check(self, artifact: str, *, ok: bool) -> None:
        """A periodic golden-digest check: ``samplerguard.integrity.checks`` {artifact, result};
        a failure also counts ``samplerguard.integrity.mismatches`` {artifact}."""
        label = normalise(artifact, ARTIFACTS)
        self._integrity_checks.add(1, {"artifact": label, "result": "pass" if ok else "fail"})
        if not ok:
            self._integrity_mismatches.add(1, {"artifact": label})

    def record_beacon_mismatch(self, *, expected: str, got: str) -> None:
        """A request's beacon differs from the expected one:
        ``samplerguard.integrity.mismatches`` {artifact="beacon", beacon=<got's prefix>}."""
        del expected  # kept for call-site clarity; the attribute is the observed build only
        self._integrity_mismatches.add(
            1, {"artifact": "beacon", "beacon": self._beacons.admit(beacon_prefix(got))}
        )

    # --- policy and verification ----------------------------------------------------------

    def record_policy_violation(self, check: str, *, action: str) -> None:
        """An out-of-policy request: ``samplerguard.policy.violations`` {check, action}."""
        self._violations.add(
            1,
            {"check": normalise(check, POLICY_CHECKS), "action": normalise(action, POLICY_ACTIONS)},
        )

    def record_verification(
        self,
        outcome: Outcome,
        *,
        rel_l2: float | None = None,
        reason: str | None = None,
        sampler: str = "other",
    ) -> None:
        """A verifier verdict: ``samplerguard.verification.outcomes`` {outcome, reason} and,
        when a re-check ran, ``samplerguard.verification.rel_l2`` {outcome, sampler}.

        ``reason`` defaults to ``"ok"`` for a pass and ``"other"`` otherwise.
        """
        label = normalise(outcome, VERIFICATION_OUTCOMES)
        why = normalise(reason, VERIFICATION_REASONS) if reason is not None else None
        if why is None:
            why = "ok" if label == "pass" else "other"
        self._verifications.add(1, {"outcome": label, "reason": why})
        if rel_l2 is not None and self._finite(rel_l2, MetricName.REL_L2):
            self._rel_l2.record(
                float(rel_l2), {"outcome": label, "sampler": self.sampler_label(sampler)}
            )

    def record_drift_alert(self, alert: DriftAlert) -> None:
        """``samplerguard.drift.alerts`` {feature, kind, statistic}."""
        self._drift_alerts.add(
            1,
            {
                "feature": normalise(alert.feature, DRIFT_FEATURES),
                "kind": alert.kind,
                "statistic": alert.statistic,
            },
        )

    # --- helpers --------------------------------------------------------------------------

    def _finite(self, value: object, metric: str) -> bool:
        """True for a finite, non-negative number (OTel histograms refuse negatives); anything
        else is counted in ``samplerguard.telemetry.dropped`` {metric}."""
        # numbers.Real: numpy scalars count too (np.int64 is not an int subclass)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        ok = ok and math.isfinite(float(value)) and float(value) >= 0.0  # type: ignore[arg-type]
        if not ok:
            self._dropped.add(1, {"metric": metric})
        return ok
