"""The bundled digits checkpoint carries its sampling recipe, with pinned hashes, and the file
and the code that builds the recipe agree."""

from __future__ import annotations

from pathlib import Path

import yaml

from samplerguard.commitment.digest import safetensors_digest
from samplerguard.models.digits import MODEL_FILE
from samplerguard.models.recipe import BUNDLED_STEPS, bundled_recipe
from samplerguard.recipe import InferenceGuard, read_recipe, verify_hashes

REPO = Path(__file__).resolve().parents[3]


def test_the_checkpoint_carries_the_bundled_recipe_with_pinned_hashes() -> None:
    recipe = verify_hashes(MODEL_FILE)  # weights and metadata match the pinned hashes
    assert recipe.hashes is not None
    built = bundled_recipe()
    assert recipe.model_copy(update={"hashes": None}) == built.model_copy(update={"hashes": None})
    assert recipe.default_steps == BUNDLED_STEPS
    assert read_recipe(MODEL_FILE).sampler == "dpmpp_2m"


def test_the_guard_loads_from_the_checkpoint() -> None:
    guard = InferenceGuard.from_checkpoint(MODEL_FILE, actor="test")
    assert guard.recipe.model_id == "samplerguard/digits"
    # the recipe changed the file's metadata, never the weights digest the demo policy pins
    policy = yaml.safe_load((REPO / "policies" / "demo-tiny.yaml").read_text())
    assert safetensors_digest(MODEL_FILE) in policy["spec"]["goldenDigests"]["modelWeights"]
