"""The recipe model: validation and canonical JSON."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from samplerguard.errors import MalformedInputError
from samplerguard.recipe import Recipe


def test_json_round_trip_is_canonical(recipe: Recipe) -> None:
    text = recipe.to_json()
    assert Recipe.from_json(text) == recipe
    assert Recipe.from_json(text).to_json() == text
    assert '"modelId":"sg-test"' in text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sampler": "warp"}, "unknown sampler 'warp'"),
        ({"schedule": "cosine-ish"}, "unknown schedule"),
        ({"predictionType": "noise"}, "unknown prediction type"),
        ({"sampler": "euler_ancestral"}, "own sampler 'euler_ancestral' is forbidden"),
        ({"schedule": "karras"}, "own schedule 'karras' is forbidden"),
        ({"defaultSteps": 70}, "defaultSteps 70 is outside"),
        ({"defaultCfg": 9.0}, "defaultCfg 9.0 is outside"),
        ({"presets": {"x": {"sampler": "dpmpp_2m_sde"}}}, "preset 'x' uses forbidden sampler"),
        ({"steps": {"min": 30, "max": 10}}, "greater than max"),
        ({"resolutions": []}, "resolutions"),
        ({"surprise": 1}, "surprise"),
        ({"modelId": "bad id with spaces"}, "modelId"),
    ],
)
def test_invalid_recipes(
    recipe_body: Callable[..., dict[str, Any]], changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(MalformedInputError, match=message):
        Recipe.from_dict(recipe_body(**changes))


def test_grid_must_match_canonical_steps(recipe_body: Callable[..., dict[str, Any]]) -> None:
    body = recipe_body()
    body["grid"] = {**body["grid"], "canonicalSteps": 49}
    with pytest.raises(MalformedInputError, match="grid has 50 timesteps but canonicalSteps is 49"):
        Recipe.from_dict(body)
    body["grid"] = {**body["grid"], "canonicalSteps": 1, "timesteps": [1000.0]}
    with pytest.raises(MalformedInputError, match=r"timesteps must lie in 0\.\.999"):
        Recipe.from_dict(body)
