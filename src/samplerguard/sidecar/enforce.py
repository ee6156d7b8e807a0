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
from samplerguard.policy.spec import SamplerPolicySpec

__all__ = ["Admission", "RequestRefusedError", "admit", "recipe_violations", "schedule_id"]


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


def schedule_id(config: Mapping[str, Any]) -> str:
    """The schedule id (``KNOWN_SCHEDULES``) a diffusers scheduler config selects."""
    if config.get("use_karras_sigmas"):
        return "karras"
    if config.get("use_exponential_sigmas"):
        return "exponential"
    if config.get("use_beta_sigmas"):
        return "beta"
    if config.get("use_flow_sigmas") or config.get("shift") not in (None, 1.0):
        return "flow-shift"
    spacing = config.get("timestep_spacing")
    if isinstance(spacing, str):
        return spacing
    if "sigma_data" in config:  # EDM schedulers carry no spacing
        return "edm"
    return "leading"  # diffusers' default spacing


def recipe_violations(
    spec: SamplerPolicySpec, recipe: Mapping[str, Any], rng_mode: str
) -> list[tuple[str, str]]:
    """Every way the recipe leaves the policy: ``(check, "what was found, what was expected")``
    with ``check`` one of guidance, steps, schedule, sampler, rng, prediction_type."""
    out: list[tuple[str, str]] = []
    rule = spec.recipe
    if rule is not None:
        sampler = recipe.get("sampler")
        if sampler not in rule.samplers:
            out.append(
                ("sampler", f"sampler {sampler!r} is not allowed (allowed: {rule.samplers})")
            )
        steps = recipe.get("steps")
        if steps not in rule.steps:
            out.append(("steps", f"steps {steps!r} outside [{rule.steps.min}, {rule.steps.max}]"))
        cfg = recipe.get("guidance_scale")
        if cfg not in rule.cfg:
            out.append(
                (
                    "guidance",
                    f"guidance scale {cfg!r} outside the CFG range "
                    f"[{rule.cfg.min}, {rule.cfg.max}]",
                )
            )
        config = recipe.get("scheduler_config")
        config = config if isinstance(config, Mapping) else {}
        if rule.schedules:
            sid = schedule_id(config)
            if sid not in rule.schedules:
                out.append(
                    ("schedule", f"schedule {sid!r} is not allowed (allowed: {rule.schedules})")
                )
        prediction = config.get("prediction_type", "epsilon")
        if rule.prediction_types and prediction not in rule.prediction_types:
            out.append(
                (
                    "prediction_type",
                    f"prediction type {prediction!r} is not allowed "
                    f"(allowed: {rule.prediction_types})",
                )
            )
    if rng_mode != spec.rng.mode:
        out.append(("rng", f"RNG mode {rng_mode!r}, the policy requires {spec.rng.mode!r}"))
    return out


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
