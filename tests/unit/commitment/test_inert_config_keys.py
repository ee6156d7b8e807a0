"""Keys a scheduler class does not take: diffusers keeps them in ``from_config`` for compatible
classes, so an honest config carries them; they are refused only where they would change the
schedule id the policy judges."""

from __future__ import annotations

from typing import Any

import diffusers
import pytest

from samplerguard.commitment.plan import build_scheduler
from samplerguard.errors import VerificationError

SD_LIKE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "leading",
}


def _public(config: Any) -> dict[str, Any]:
    """The config as the hook records it (diffusers' private keys left out)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _recipe(cls_name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "sampler": cls_name,
        "scheduler_class": cls_name,
        "scheduler_config": config,
        "steps": 5,
    }


def test_the_keys_from_config_keeps_for_compatible_classes_are_accepted() -> None:
    honest = _public(diffusers.IPNDMScheduler.from_config(SD_LIKE).config)
    assert "beta_schedule" in honest  # diffusers kept it, though IPNDM takes no betas
    scheduler = build_scheduler(_recipe("IPNDMScheduler", honest))
    assert len(scheduler.timesteps) == 5


def test_an_inert_key_that_would_relabel_the_schedule_is_refused() -> None:
    # IPNDM ignores use_karras_sigmas: the policy would judge "karras" while linear runs
    labelled = {
        **_public(diffusers.IPNDMScheduler.from_config(SD_LIKE).config),
        "use_karras_sigmas": True,
    }
    with pytest.raises(VerificationError, match="change the schedule id") as err:
        build_scheduler(_recipe("IPNDMScheduler", labelled))
    assert err.value.check == "sampler"


def test_private_keys_are_refused() -> None:
    config = {**SD_LIKE, "_use_default_values": ["timestep_spacing"]}
    with pytest.raises(VerificationError, match="private keys"):
        build_scheduler(_recipe("EulerDiscreteScheduler", config))
