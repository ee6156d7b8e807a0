"""Which τ a re-check is held to: exact on a reproduced build, else a calibrated pair, else the
policy's fallback (or a refusal under ``requireSameBuild``).

The build fingerprint in the recipe is the provider's claim. Declaring another build can only
move the provider to a τ this policy lists for *this verifier's* build: an entry applies only
when its verifier side matches the verifier's own fingerprint, which the provider does not
control, and when it names every field that differs. So the loosest τ any declaration reaches
is the loosest calibrated entry for this verifier, or the fallback, and the policy refuses a
fallback looser than any calibrated entry (:class:`~samplerguard.policy.spec.VerificationRule`).
Each calibrated τ was measured to stay below the score of 1e-4 relative weight noise for its
pair (``samplerguard calibrate``), so no declaration lets that provider pass. Among the entries
that match, the tightest applies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from samplerguard.policy.spec import (
    _UNCOMPARED_FIELDS,
    CalibrationEntry,
    VerificationRule,
)

__all__ = ["Tolerance", "differing_fields", "fingerprint_text", "select_tolerance"]


@dataclass(frozen=True)
class Tolerance:
    #: the τ the re-check scores are held to; ``None`` when the policy refuses the build
    tau: float | None
    #: which τ applies and why, for the judgement message
    why: str
    #: the index of the calibration entry that applies, if one does
    entry: int | None = None

    @property
    def exact(self) -> bool:
        return self.tau == 0.0 and self.entry is None


def fingerprint_text(value: object) -> str | None:
    """A fingerprint value as a calibration entry writes it: strings as they are, ``null``,
    ``true``/``false`` and integers as JSON writes them; ``None`` for anything else (which no
    entry matches)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int):
        return json.dumps(value)
    return None


def differing_fields(declared: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """The compared fingerprint fields whose values differ (settable and informative fields
    are not compared: the verifier sets the former to the declared values)."""
    return sorted(
        key
        for key in set(mine) | set(declared)
        if key not in _UNCOMPARED_FIELDS and declared.get(key) != mine.get(key)
    )


def _covers(
    entry: CalibrationEntry, declared: Mapping[str, Any], mine: Mapping[str, Any], fields: list[str]
) -> bool:
    if not set(fields) <= set(entry.producer):
        return False
    return all(
        fingerprint_text(declared.get(k)) == entry.producer[k]
        and fingerprint_text(mine.get(k)) == entry.verifier[k]
        for k in entry.producer
    )


def _pairs(fields: list[str], declared: Mapping[str, Any], mine: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k} {str(declared.get(k))[:40]!r} -> {str(mine.get(k))[:40]!r}" for k in fields[:4]
    )


def select_tolerance(
    rule: VerificationRule, declared: object, mine: Mapping[str, Any]
) -> Tolerance:
    """The τ for a trajectory whose recipe declares the build ``declared`` (its ``runtime``),
    re-checked by a verifier whose fingerprint is ``mine``."""
    if not isinstance(declared, Mapping):
        fields = ["(no build fingerprint declared)"]
        declared = {}
    else:
        fields = differing_fields(declared, mine)
        if not fields:
            return Tolerance(0.0, "exact (same build)")
    matches = [
        (e.tau, i, e) for i, e in enumerate(rule.calibration) if _covers(e, declared, mine, fields)
    ]
    if matches:
        tau, index, entry = min(matches, key=lambda m: (m[0], m[1]))
        return Tolerance(
            tau,
            f"tau {tau:g} calibrated for {_pairs(fields, declared, mine)} (calibration entry "
            f"{index}: {entry.honest_samples} honest steps, false rejection <= "
            f"{entry.false_rejection:.2g} per request)",
            index,
        )
    what = _pairs(fields, declared, mine) if declared else fields[0]
    if rule.require_same_build:
        return Tolerance(
            None,
            f"build: this verifier cannot reproduce the declared build ({what}), no calibration "
            "entry covers the pair, and the policy demands the same build (requireSameBuild)",
        )
    tau = rule.fallback_tau
    source = (
        "policy tau"
        if rule.tau is not None
        else "the tightest calibrated tau"
        if rule.calibration
        else "default tau"
    )
    return Tolerance(tau, f"tau {tau:g} ({source}: no calibration entry covers {what})")
