"""Every example policy for a pipeline family admits the recipe the hook records for that
family's reference scheduler configuration (real scheduler names, real schedule ids)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import pytest
import yaml

from samplerguard.families import family_named
from samplerguard.hook.recorder import TrajectoryRequest
from samplerguard.policy import parse_policy
from samplerguard.policy.conformance import recipe_violations

POLICIES = Path(__file__).resolve().parents[3] / "policies"

_SD_BETAS: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}

#: family -> (policy file, sampler id, scheduler as the model's scheduler_config.json has it,
#: steps, guidance, latent shape)
CASES: dict[str, tuple[str, str, Any, int, float, tuple[int, ...]]] = {
    "stable-diffusion": (
        "sd15-euler-dpmpp2m.yaml",
        "euler",
        diffusers.EulerDiscreteScheduler(**_SD_BETAS, timestep_spacing="leading"),
        30,
        7.5,
        (1, 4, 64, 64),
    ),
    "stable-diffusion-img2img": (
        "sd15-euler-dpmpp2m.yaml",
        "dpmpp_2m",
        diffusers.DPMSolverMultistepScheduler(**_SD_BETAS, use_karras_sigmas=True),
        30,
        7.5,
        (1, 4, 64, 64),
    ),
    "stable-diffusion-inpaint": (
        "sd15-euler-dpmpp2m.yaml",
        "euler",
        diffusers.EulerDiscreteScheduler(**_SD_BETAS, timestep_spacing="leading"),
        30,
        7.5,
        (1, 4, 64, 64),
    ),
    "stable-diffusion-xl": (
        "sdxl.yaml",
        "euler",
        diffusers.EulerDiscreteScheduler(**_SD_BETAS, timestep_spacing="leading"),
        30,
        5.0,
        (1, 4, 128, 128),
    ),
    "stable-diffusion-3": (
        "flow-matching-euler.yaml",
        "flow_euler",
        diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        28,
        7.0,
        (1, 16, 128, 128),
    ),
    "flux": (
        "flux.yaml",
        "flow_euler",
        diffusers.FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        28,
        3.5,
        (1, 4096, 64),
    ),
    "pixart-sigma": (
        "pixart-sigma.yaml",
        "dpmpp_2m",
        diffusers.DPMSolverMultistepScheduler(
            beta_schedule="linear", beta_start=0.0001, beta_end=0.02, timestep_spacing="linspace"
        ),
        20,
        4.5,
        (1, 4, 128, 128),
    ),
    "latent-consistency": (
        "lcm-few-step.yaml",
        "lcm",
        diffusers.LCMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
            original_inference_steps=50,
        ),
        4,
        1.5,
        (1, 4, 64, 64),
    ),
    "animatediff": (
        "animatediff.yaml",
        "ddim",
        diffusers.DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="linear",
            steps_offset=1,
            clip_sample=False,
            timestep_spacing="linspace",
        ),
        25,
        7.5,
        (1, 4, 16, 64, 64),
    ),
    "wan": (
        "wan.yaml",
        "unipc",
        diffusers.UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
        30,
        5.0,
        (1, 16, 21, 60, 104),
    ),
    "stable-audio": (
        "stable-audio.yaml",
        "edm_dpmpp_2m",
        diffusers.EDMDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500, sigma_data=1.0),
        100,
        7.0,
        (1, 64, 1024),
    ),
}


def test_every_family_has_an_example_policy() -> None:
    from samplerguard.families import all_families

    assert {f.name for f in all_families()} - {"digits"} == set(CASES)


@pytest.mark.parametrize("family", sorted(CASES))
def test_the_family_policy_admits_its_recipe(family: str) -> None:
    file, sampler, scheduler, steps, cfg, shape = CASES[family]
    policy = parse_policy(yaml.safe_load((POLICIES / file).read_text()))
    scheduler.set_timesteps(steps) if "use_dynamic_shifting" not in scheduler.config or not (
        scheduler.config.use_dynamic_shifting
    ) else scheduler.set_timesteps(steps, mu=1.0)
    request = TrajectoryRequest(
        request_id="r",
        tenant="t",
        pipeline=family_named(family).name,
        model_name=family,
        model_digest="sha256:" + "0" * 64,
        sampler=sampler,
        guidance_scale=cfg,
        steps=steps,
        rng_mode=policy.spec.rng.mode,
    )
    recipe = request.recipe(scheduler, shape)
    assert recipe_violations(policy.spec, recipe, policy.spec.rng.mode) == []
