"""Pipeline families: what it takes to record and re-check one kind of diffusers pipeline.

A family is one small unit (see ``docs/families.md``): the pipeline classes it covers, where
their denoiser lives (``unet`` or ``transformer``), which of the denoiser's keyword arguments
are the conditioning the commitment binds, the request inputs read from the call, and the
*step program*: the loop body of the pipeline (classifier-free guidance batching, timestep
scaling, the scheduler's update) as the verifier re-runs it from an opened latent. The hook and
the verifier both look families up here, by pipeline class or by the recipe's ``pipeline``.
"""

from __future__ import annotations

from samplerguard.families import digits as _digits  # noqa: F401  (registers)
from samplerguard.families import media as _media  # noqa: F401
from samplerguard.families import stable_diffusion as _sd  # noqa: F401
from samplerguard.families import transformers as _tr  # noqa: F401
from samplerguard.families._base import (
    Family,
    FamilyProgram,
    UnsupportedPipeline,
    all_families,
    describe_argument,
    family_for_pipeline,
    family_named,
    register,
)

__all__ = [
    "Family",
    "FamilyProgram",
    "UnsupportedPipeline",
    "all_families",
    "describe_argument",
    "family_for_pipeline",
    "family_named",
    "register",
]
