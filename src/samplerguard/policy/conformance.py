"""Does a declared recipe conform to a policy? One function, used by every component.

The sidecar runs it when a request starts (refuse or quarantine), the verifier runs it again on
the *committed* recipe before any re-check (a provider controls the app and its sidecar's
inputs, so the verifier never relies on the sidecar having checked), and both read the schedule
id and the scheduler-config digest from :mod:`samplerguard.policy.schedule`.

The recipe comes from the provider: every field may have any JSON type. Nothing here raises on
a hostile recipe; a field of the wrong type is a violation that names the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from samplerguard.errors import MalformedInputError
from samplerguard.policy.schedule import schedule_id, scheduler_config_digest
from samplerguard.policy.spec import KNOWN_SAMPLERS, REFUSED_SCHEDULERS, SamplerPolicySpec

__all__ = ["recipe_violations"]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def recipe_violations(
    spec: SamplerPolicySpec, recipe: Mapping[str, Any], rng_mode: str
) -> list[tuple[str, str]]:
    """Every way the recipe leaves the policy: ``(check, "what was found, what was expected")``
    with ``check`` one of sampler, schedule, scheduler_config, steps, guidance, prediction_type,
    rng."""
    out: list[tuple[str, str]] = []
    sampler = recipe.get("sampler")
    cls = recipe.get("scheduler_class")
    config = recipe.get("scheduler_config")
    if not isinstance(config, Mapping):
        out.append(("scheduler_config", "the recipe carries no scheduler_config object"))
        config = {}
    if not isinstance(sampler, str) or not isinstance(cls, str):
        out.append(("sampler", f"sampler {sampler!r} / scheduler class {cls!r} are not names"))
    elif cls in REFUSED_SCHEDULERS or sampler in REFUSED_SCHEDULERS:
        name = cls if cls in REFUSED_SCHEDULERS else sampler
        out.append(("sampler", f"{name} is not verifiable: {REFUSED_SCHEDULERS[name]}"))
    elif sampler in KNOWN_SAMPLERS and KNOWN_SAMPLERS[sampler] != cls:
        out.append(
            (
                "sampler",
                f"sampler {sampler!r} runs {KNOWN_SAMPLERS[sampler]}, but the recipe declares "
                f"scheduler class {cls!r}",
            )
        )
    rule = spec.recipe
    if rule is not None:
        if sampler not in rule.samplers:
            out.append(
                ("sampler", f"sampler {sampler!r} is not allowed (allowed: {rule.samplers})")
            )
        steps = recipe.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps not in rule.steps:
            out.append(("steps", f"steps {steps!r} outside [{rule.steps.min}, {rule.steps.max}]"))
        cfg = _number(recipe.get("guidance_scale"))
        if cfg is None or cfg not in rule.cfg:
            out.append(
                (
                    "guidance",
                    f"guidance scale {recipe.get('guidance_scale')!r} outside the CFG range "
                    f"[{rule.cfg.min}, {rule.cfg.max}]",
                )
            )
        if rule.schedules:
            sid = schedule_id(cls if isinstance(cls, str) else None, config)
            if sid not in rule.schedules:
                out.append(
                    ("schedule", f"schedule {sid!r} is not allowed (allowed: {rule.schedules})")
                )
        # flow-matching schedulers have no prediction_type: they predict the flow
        default = "flow_prediction" if str(cls).startswith("FlowMatch") else "epsilon"
        prediction = config.get("prediction_type", default)
        if rule.prediction_types and prediction not in rule.prediction_types:
            out.append(
                (
                    "prediction_type",
                    f"prediction type {prediction!r} is not allowed "
                    f"(allowed: {rule.prediction_types})",
                )
            )
    pinned = spec.golden_digests.scheduler_config
    if pinned:
        try:
            got = scheduler_config_digest(str(cls), config)
        except MalformedInputError as exc:
            got = f"(none: {exc})"
        if got not in pinned:
            out.append(
                (
                    "scheduler_config",
                    f"scheduler config digest {got} is not pinned by the policy "
                    f"(expected one of {pinned})",
                )
            )
    if rng_mode != spec.rng.mode:
        out.append(("rng", f"RNG mode {rng_mode!r}, the policy requires {spec.rng.mode!r}"))
    return out
