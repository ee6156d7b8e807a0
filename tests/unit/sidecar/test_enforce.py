"""Policy enforcement at admission: each recipe check, and what each mode does."""

from __future__ import annotations

from typing import Any

import pytest

from samplerguard.policy.spec import SamplerPolicySpec
from samplerguard.sidecar.enforce import RequestRefusedError, admit


def _spec(mode: str = "enforce", **recipe: Any) -> SamplerPolicySpec:
    rule = {"samplers": ["euler"], "steps": {"min": 10, "max": 30}, "cfg": {"min": 1, "max": 8}}
    rule.update(recipe)
    return SamplerPolicySpec.model_validate(
        {"mode": mode, "recipe": rule, "rng": {"mode": "ctr-drbg"}}
    )


def _recipe(**kw: Any) -> dict[str, Any]:
    base = {
        "sampler": "euler",
        "scheduler_class": "EulerDiscreteScheduler",
        "steps": 20,
        "guidance_scale": 5.0,
        "scheduler_config": {"timestep_spacing": "trailing", "prediction_type": "epsilon"},
    }
    base.update(kw)
    return base


def test_in_policy_request_is_accepted() -> None:
    assert admit(_spec(), _recipe(), "ctr-drbg").verdict == "accept"


@pytest.mark.parametrize(
    ("recipe", "rng", "match"),
    [
        ({"guidance_scale": 9.5}, "ctr-drbg", r"guidance scale 9\.5 outside the CFG range"),
        ({"steps": 4}, "ctr-drbg", r"steps 4 outside \[10, 30\]"),
        ({"sampler": "ddim"}, "ctr-drbg", "sampler 'ddim' is not allowed"),
        ({}, "framework", "RNG mode 'framework', the policy requires 'ctr-drbg'"),
        (
            {"scheduler_config": {"prediction_type": "v_prediction"}},
            "ctr-drbg",
            "prediction type 'v_prediction' is not allowed",
        ),
    ],
)
def test_enforce_refuses_with_the_check_got_and_expected(
    recipe: dict[str, Any], rng: str, match: str
) -> None:
    with pytest.raises(RequestRefusedError, match=match):
        admit(_spec(), _recipe(**recipe), rng)


def test_schedule_ids_are_checked_when_the_policy_lists_them() -> None:
    spec = _spec(schedules=["karras"])
    with pytest.raises(RequestRefusedError, match="schedule 'trailing' is not allowed"):
        admit(spec, _recipe(), "ctr-drbg")
    ok = _recipe(scheduler_config={"use_karras_sigmas": True})
    assert admit(spec, ok, "ctr-drbg").verdict == "accept"


@pytest.mark.parametrize("mode", ["warn", "audit"])
def test_warn_and_audit_quarantine_instead(mode: str) -> None:
    a = admit(_spec(mode), _recipe(guidance_scale=20.0, steps=2), "ctr-drbg")
    assert a.verdict == "quarantine"
    assert a.checks == ("steps", "guidance")
    assert any("CFG range" in r for r in a.reasons)


def test_no_policy_accepts() -> None:
    assert admit(None, {}, "anything").verdict == "accept"


def test_a_sampler_declared_with_another_class_is_a_violation() -> None:
    with pytest.raises(RequestRefusedError, match="sampler 'euler' runs EulerDiscreteScheduler"):
        admit(_spec(), _recipe(scheduler_class="DDIMScheduler"), "ctr-drbg")


def test_hostile_field_types_are_violations_not_crashes() -> None:
    recipe = _recipe(steps="20", guidance_scale=[5], scheduler_config="x", sampler=None)
    with pytest.raises(RequestRefusedError) as info:
        admit(_spec(), recipe, "ctr-drbg")
    assert {"steps", "guidance", "sampler", "scheduler_config"} <= set(info.value.checks)


def test_a_pinned_scheduler_config_is_enforced() -> None:
    from samplerguard.policy.schedule import scheduler_config_digest

    recipe = _recipe()
    pinned = scheduler_config_digest("EulerDiscreteScheduler", recipe["scheduler_config"])
    spec = SamplerPolicySpec.model_validate(
        {**_spec().model_dump(by_alias=True), "goldenDigests": {"schedulerConfig": [pinned]}}
    )
    assert admit(spec, recipe, "ctr-drbg").verdict == "accept"
    other = _recipe(scheduler_config={"timestep_spacing": "trailing", "beta_schedule": "bogus"})
    with pytest.raises(RequestRefusedError, match=r"scheduler config digest .* is not pinned"):
        admit(spec, other, "ctr-drbg")
