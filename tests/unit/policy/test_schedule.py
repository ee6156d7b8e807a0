"""The schedule id and the scheduler-config digest have one owner; every component agrees."""

from __future__ import annotations

from typing import Any

import pytest

from samplerguard.errors import MalformedInputError
from samplerguard.policy.schedule import schedule_id, scheduler_config_digest


@pytest.mark.parametrize(
    ("cls", "config", "want"),
    [
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, "karras"),
        (
            "EulerDiscreteScheduler",
            {"use_exponential_sigmas": True, "timestep_spacing": "linspace"},
            "exponential",
        ),
        ("EulerDiscreteScheduler", {"use_beta_sigmas": True}, "beta"),
        ("DDIMScheduler", {"timestep_spacing": "linspace"}, "linspace"),
        ("DDIMScheduler", {"timestep_spacing": "trailing"}, "trailing"),
        ("EDMEulerScheduler", {"sigma_data": 0.5}, "edm"),
        ("EDMDPMSolverMultistepScheduler", {}, "edm"),
        # flow matching with shift 1.0 still runs the flow schedule
        ("FlowMatchEulerDiscreteScheduler", {"shift": 1.0}, "flow-shift"),
        (
            "FlowMatchEulerDiscreteScheduler",
            {"shift": 3.0, "use_dynamic_shifting": True},
            "flow-shift",
        ),
        ("DPMSolverMultistepScheduler", {"use_flow_sigmas": True}, "flow-shift"),
        ("DDPMScheduler", {}, "leading"),
        (None, {}, "leading"),
    ],
)
def test_schedule_id(cls: str | None, config: dict[str, Any], want: str) -> None:
    assert schedule_id(cls, config) == want


def test_schedule_id_agrees_across_sidecar_guard_and_verifier() -> None:
    """The recipe guard describes a live scheduler; the sidecar and the verifier see only the
    recipe the hook declares. For every scheduler config in this table the ids are equal."""
    import diffusers

    from samplerguard.hook.recorder import scheduler_config
    from samplerguard.policy.conformance import recipe_violations
    from samplerguard.policy.spec import SamplerPolicySpec
    from samplerguard.recipe import describe_scheduler

    cases: list[tuple[str, dict[str, Any]]] = [
        ("EulerDiscreteScheduler", {"use_exponential_sigmas": True}),
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
        ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}),
        ("DDIMScheduler", {"timestep_spacing": "linspace"}),
        ("FlowMatchEulerDiscreteScheduler", {"shift": 1.0}),
        ("EDMEulerScheduler", {}),
        ("DDPMScheduler", {}),
    ]
    for cls_name, extra in cases:
        sched = getattr(diffusers, cls_name).from_config(extra)
        sched.set_timesteps(10)
        config = scheduler_config(sched)
        guard_id = describe_scheduler(sched)["schedule"]
        assert schedule_id(cls_name, config) == guard_id, cls_name
        spec = SamplerPolicySpec.model_validate(
            {
                "recipe": {
                    "samplers": ["euler"],
                    "schedules": [guard_id],
                    "steps": {"min": 1, "max": 50},
                    "cfg": {"min": 0, "max": 20},
                    "predictionTypes": ["epsilon", "v_prediction", "flow_prediction", "sample"],
                },
                "rng": {"mode": "framework"},
            }
        )
        recipe = {
            "sampler": "euler",
            "scheduler_class": cls_name,
            "scheduler_config": config,
            "steps": 10,
            "guidance_scale": 1.0,
        }
        checks = {c for c, _ in recipe_violations(spec, recipe, "framework")}
        assert "schedule" not in checks, cls_name


def test_config_digest_ignores_private_keys_and_binds_the_class() -> None:
    a = scheduler_config_digest("DDIMScheduler", {"steps_offset": 1, "_class_name": "X"})
    b = scheduler_config_digest("DDIMScheduler", {"steps_offset": 1})
    c = scheduler_config_digest("DDPMScheduler", {"steps_offset": 1})
    d = scheduler_config_digest("DDIMScheduler", {"steps_offset": 0})
    assert a == b and len({b, c, d}) == 3
    assert a.startswith("sha256:") and len(a) == 71


def test_config_digest_refuses_non_json() -> None:
    with pytest.raises(MalformedInputError, match="canonical JSON"):
        scheduler_config_digest("DDIMScheduler", {"x": float("nan")})
