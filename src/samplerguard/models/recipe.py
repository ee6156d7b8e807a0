"""The sampling recipe of the bundled digits model: the contract its checkpoint carries.

``python -m samplerguard.models.train`` writes it into the weights' safetensors metadata with
pinned hashes (:func:`samplerguard.recipe.write_recipe`); an
:class:`~samplerguard.recipe.InferenceGuard` loads it from there with
``InferenceGuard.from_checkpoint(MODEL_FILE)``. A test keeps the file and this code equal.
"""

from __future__ import annotations

from samplerguard.models.digits import IMAGE_SHAPE, SCHEDULER_CONFIG, make_scheduler
from samplerguard.recipe import Recipe

__all__ = ["BUNDLED_STEPS", "bundled_recipe"]

#: The step count the checkpoint's recipe is written for (its canonical grid).
BUNDLED_STEPS = 20


def bundled_recipe(steps: int = BUNDLED_STEPS) -> Recipe:
    """The sampling contract of the bundled model: DPM++ 2M on the training schedule, 10–50
    steps, CFG 1–5, Euler ancestral and DDPM forbidden (their step noise is not needed for this
    model and they make the output distribution broader)."""
    sched = make_scheduler("dpmpp_2m")
    sched.set_timesteps(steps)
    config = {
        k: v
        for k, v in dict(sched.config).items()
        if not k.startswith("_")
        and isinstance(v, bool | int | float | str)
        and v == v
        and v not in (float("inf"), float("-inf"))
    }
    return Recipe.model_validate(
        {
            "modelId": "samplerguard/digits",
            "sampler": "dpmpp_2m",
            "schedule": "leading",
            "grid": {
                "className": type(sched).__name__,
                "config": config,
                "numTrainTimesteps": SCHEDULER_CONFIG["num_train_timesteps"],
                "canonicalSteps": steps,
                "timesteps": [float(t) for t in sched.timesteps],
                "subsampling": "any",
            },
            "predictionType": "epsilon",
            "steps": {"min": 10, "max": 50},
            "cfg": {"min": 1.0, "max": 5.0},
            "defaultSteps": steps,
            "defaultCfg": 3.0,
            "resolutions": [{"width": IMAGE_SHAPE[2], "height": IMAGE_SHAPE[1]}],
            "latentShape": list(IMAGE_SHAPE),
            "forbiddenSamplers": ["euler_ancestral", "ddpm"],
        }
    )
