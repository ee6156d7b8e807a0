"""Policy enforcement at admission: is this request's recipe inside the policy?

Checked from the recipe the hook declares in ``START`` (the same recipe that is committed, so a
request cannot declare one thing here and commit another): the sampler, the schedule id, the
steps range, the CFG range (the CFG cap), the prediction type and the RNG mode. What happens to
an out-of-policy request follows the policy's mode: ``enforce`` refuses it before a step is
recorded; ``warn`` and ``audit`` commit it *quarantined*: the reasons go into the signed
predicate, and the verifier challenges every quarantined trajectory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from samplerguard.errors import VerificationError
from samplerguard.policy.conformance import recipe_violations
from samplerguard.policy.spec import SamplerPolicySpec

__all__ = ["Admission", "RequestRefusedError", "admit", "recipe_violations"]


class RequestRefusedError(VerificationError):
    """The sidecar refuses the request (out of policy in enforce mode, or integrity broken)."""

    def __init__(self, message: str, *, checks: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.checks = checks


@dataclass(frozen=True)
class Admission:
    verdict: Literal["accept", "quarantine"]
    reasons: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()


def admit(spec: SamplerPolicySpec | None, recipe: Mapping[str, Any], rng_mode: str) -> Admission:
    """Accept, quarantine, or raise :class:`RequestRefusedError` (enforce mode)."""
    if spec is None:
        return Admission("accept")
    problems = recipe_violations(spec, recipe, rng_mode)
    if not problems:
        return Admission("accept")
    text = tuple(msg for _, msg in problems)
    checks = tuple(check for check, _ in problems)
    if spec.mode == "enforce":
        raise RequestRefusedError("request is out of policy: " + "; ".join(text), checks=checks)
    return Admission("quarantine", text, checks)
