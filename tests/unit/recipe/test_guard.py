"""The inference guard: defaults, hard failures, soft warnings, strict mode, the audit log,
and real diffusers schedulers at run time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from samplerguard.errors import VerificationError
from samplerguard.recipe import (
    InferenceGuard,
    Override,
    Recipe,
    RecipeViolation,
    RunRequest,
    describe_scheduler,
    write_recipe,
)


def test_defaults_are_applied(recipe: Recipe) -> None:
    d = InferenceGuard(recipe).check()
    e = d.effective
    assert (e.sampler, e.schedule, e.steps, e.cfg, e.width, e.height) == (
        "ddim", "leading", 25, 3.0, 8, 8,
    )  # fmt: skip
    assert d.clean and d.overrides == ()
    fast = InferenceGuard(recipe).check(RunRequest(preset="fast")).effective
    assert (fast.steps, fast.cfg) == (10, 2.0)


def test_override_is_recorded(recipe: Recipe, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    d = InferenceGuard(recipe, audit_log=log, actor="alice").check(
        RunRequest(steps=50, cfg=5.0), reason="quality run"
    )
    assert set(d.overrides) == {Override("steps", 25, 50), Override("cfg", 3.0, 5.0)}
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["actor"] == "alice" and record["reason"] == "quality run"
    assert record["outcome"] == "allowed" and len(record["overrides"]) == 2


@pytest.mark.parametrize(
    ("run", "check", "message"),
    [
        (RunRequest(sampler="euler_ancestral"), "sampler", "forbidden sampler"),
        (RunRequest(sampler="dpm_fast"), "sampler", "unknown sampler"),
        (RunRequest(schedule="karras"), "schedule", "forbidden schedule"),
        (RunRequest(prediction_type="v_prediction"), "prediction_type", "wrong prediction type"),
        (RunRequest(steps=30), "steps", r"step count off the allowed set \(got 30"),
    ],
)
def test_hard_failures(
    recipe: Recipe, tmp_path: Path, run: RunRequest, check: str, message: str
) -> None:
    log = tmp_path / "audit.jsonl"
    with pytest.raises(RecipeViolation, match=message) as info:
        InferenceGuard(recipe, audit_log=log).check(run, reason="please")
    assert info.value.check == check
    assert isinstance(info.value, VerificationError)
    record = json.loads(log.read_text())
    assert record["outcome"] == "denied" and record["violation"]["check"] == check


@pytest.mark.parametrize(
    ("run", "check"),
    [
        (RunRequest(cfg=12.0), "cfg"),
        (RunRequest(cfg=0.5), "cfg"),
        (RunRequest(width=64, height=48), "resolution"),
        (RunRequest(sampler="ddpm"), "sampler"),
        (RunRequest(schedule="trailing"), "schedule"),
    ],
)
def test_soft_warnings(recipe: Recipe, run: RunRequest, check: str) -> None:
    d = InferenceGuard(recipe).check(run)
    assert [w.check for w in d.warnings] == [check]
    with pytest.raises(RecipeViolation, match=r"strict mode.*needs a reason"):
        InferenceGuard(recipe, strict=True).check(run)
    assert InferenceGuard(recipe, strict=True).check(run, reason="approved by ops").warnings


def test_steps_out_of_range_is_soft_when_the_grid_allows_it(recipe: Recipe) -> None:
    body = recipe.model_dump(by_alias=True)
    body["grid"]["allowedSteps"] = []
    r = Recipe.from_dict(body)
    assert [w.check for w in InferenceGuard(r).check(RunRequest(steps=5)).warnings] == ["steps"]


def _ddim(steps: int, spacing: str = "leading") -> DDIMScheduler:
    s = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=1)
    s.set_timesteps(steps)
    return s


def test_real_scheduler_on_the_grid(recipe: Recipe) -> None:
    g = InferenceGuard(recipe)
    for steps in (10, 25, 50):
        d = g.check_scheduler(_ddim(steps), cfg=3.0)
        assert d.clean and d.effective.steps == steps


def test_real_scheduler_off_the_grid(recipe: Recipe) -> None:
    body = recipe.model_dump(by_alias=True)
    body["grid"]["allowedSteps"] = []
    g = InferenceGuard(Recipe.from_dict(body))
    # 30 leading steps visit timesteps (stride 33) that the 50-step grid (stride 20) lacks.
    with pytest.raises(RecipeViolation, match="timesteps off the allowed grid") as info:
        g.check_scheduler(_ddim(30))
    assert info.value.check == "grid"


def test_exact_grid(recipe: Recipe) -> None:
    body = recipe.model_dump(by_alias=True)
    body["grid"] |= {"subsampling": "exact", "allowedSteps": []}
    g = InferenceGuard(Recipe.from_dict(body))
    g.check_scheduler(_ddim(50))
    with pytest.raises(RecipeViolation, match="off the canonical grid"):
        g.check_scheduler(_ddim(25))


def test_real_forbidden_schedulers(recipe: Recipe) -> None:
    g = InferenceGuard(recipe)
    karras = EulerDiscreteScheduler(num_train_timesteps=1000, use_karras_sigmas=True)
    karras.set_timesteps(25)
    with pytest.raises(RecipeViolation, match="forbidden schedule"):
        g.check_scheduler(karras)
    anc = EulerAncestralDiscreteScheduler(num_train_timesteps=1000)
    anc.set_timesteps(25)
    with pytest.raises(RecipeViolation, match="forbidden sampler"):
        g.check_scheduler(anc)
    sde = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="sde-dpmsolver++")
    assert describe_scheduler(sde)["sampler"] == "dpmpp_2m_sde"
    v = DDIMScheduler(prediction_type="v_prediction")
    assert describe_scheduler(v)["prediction_type"] == "v_prediction"


def test_from_checkpoint_verifies_hashes(checkpoint: Path, recipe: Recipe) -> None:
    write_recipe(checkpoint, recipe, checkpoint)
    assert InferenceGuard.from_checkpoint(checkpoint).recipe.model_id == "sg-test"
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 1
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(RecipeViolation, match="weights hash mismatch") as info:
        InferenceGuard.from_checkpoint(checkpoint)
    assert info.value.check == "hashes"


def test_unknown_preset(recipe: Recipe) -> None:
    from samplerguard.errors import MalformedInputError

    with pytest.raises(MalformedInputError, match="preset 'turbo' is not in recipe"):
        InferenceGuard(recipe).check(RunRequest(preset="turbo"))


def test_unwritable_audit_log_fails_closed(recipe: Recipe, tmp_path: Path) -> None:
    from samplerguard.errors import MalformedInputError

    g = InferenceGuard(recipe, audit_log=tmp_path / "missing-dir" / "audit.jsonl")
    with pytest.raises(MalformedInputError, match="cannot write the audit log"):
        g.check(RunRequest(cfg=5.0))


def test_build_recipe_from_a_real_scheduler() -> None:
    from samplerguard.recipe import build_recipe

    sched = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    r = build_recipe(
        "sg-digits",
        sched,
        canonical_steps=20,
        steps=(10, 50),
        cfg=(1.0, 5.0),
        default_steps=20,
        default_cfg=3.0,
        resolutions=[(8, 8)],
        forbidden_samplers=["euler_ancestral"],
        latent_shape=[1, 8, 8],
    )
    assert (r.sampler, r.schedule, r.grid.canonical_steps) == ("ddim", "trailing", 20)
    assert r.grid.timesteps[0] == 999.0
    assert InferenceGuard(r).check_scheduler(sched, cfg=3.0).clean
    assert Recipe.from_json(r.to_json()) == r
