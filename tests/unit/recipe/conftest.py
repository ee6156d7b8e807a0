"""Recipe test fixtures: a real safetensors checkpoint (written by the safetensors library) and
a recipe modelled on a DDIM 50-step 'leading' grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from samplerguard.recipe import Recipe


def ddim_grid(steps: int) -> list[float]:
    from diffusers import DDIMScheduler

    s = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading", steps_offset=1)
    s.set_timesteps(steps)
    return [float(t) for t in s.timesteps.tolist()]


def _recipe_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "modelId": "sg-test",
        "sampler": "ddim",
        "schedule": "leading",
        "grid": {
            "className": "DDIMScheduler",
            "config": {"num_train_timesteps": 1000, "timestep_spacing": "leading"},
            "numTrainTimesteps": 1000,
            "canonicalSteps": 50,
            "timesteps": ddim_grid(50),
            "subsampling": "subset",
            "allowedSteps": [10, 25, 50],
        },
        "predictionType": "epsilon",
        "steps": {"min": 10, "max": 50},
        "cfg": {"min": 1.0, "max": 7.5},
        "defaultSteps": 25,
        "defaultCfg": 3.0,
        "resolutions": [{"width": 8, "height": 8}],
        "latentShape": [1, 8, 8],
        "presets": {"fast": {"steps": 10, "cfg": 2.0}},
        "forbiddenSamplers": ["euler_ancestral", "dpmpp_2m_sde"],
        "forbiddenSchedules": ["karras"],
    }
    body.update(changes)
    return body


RecipeBody = Callable[..., dict[str, Any]]


@pytest.fixture
def recipe_body() -> RecipeBody:
    """``recipe_body(**camelCaseChanges)`` → a recipe dict."""
    return _recipe_body


@pytest.fixture
def recipe() -> Recipe:
    return Recipe.from_dict(_recipe_body())


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "conv.weight": torch.randn(4, 1, 3, 3, generator=g),
        "conv.bias": torch.zeros(4),
        "emb": torch.arange(10, dtype=torch.int64),
        "half": torch.ones(3, dtype=torch.float16),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "author": "tests"})
    return path
