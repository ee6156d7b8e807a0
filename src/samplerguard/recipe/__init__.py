"""samplerguard.recipe: the checkpoint recipe (safetensors ``__metadata__``), the inference
guard, and provenance in output PNGs. No torch import anywhere in this package."""

from samplerguard.recipe.checkpoint import (
    Checkpoint,
    TensorInfo,
    metadata_digest,
    read_checkpoint,
    read_recipe,
    verify_hashes,
    weights_digest,
    write_recipe,
)
from samplerguard.recipe.guard import (
    EffectiveRun,
    GuardDecision,
    InferenceGuard,
    Override,
    RecipeViolation,
    RecipeWarning,
    RunRequest,
    build_recipe,
    describe_scheduler,
)
from samplerguard.recipe.model import (
    RECIPE_KEY,
    Preset,
    Recipe,
    RecipeHashes,
    Resolution,
    SchedulerGrid,
)
from samplerguard.recipe.provenance import (
    PNG_KEY,
    Provenance,
    embed_provenance,
    provenance_filename,
    read_provenance,
    save_png,
)

__all__ = [
    "PNG_KEY",
    "RECIPE_KEY",
    "Checkpoint",
    "EffectiveRun",
    "GuardDecision",
    "InferenceGuard",
    "Override",
    "Preset",
    "Provenance",
    "Recipe",
    "RecipeHashes",
    "RecipeViolation",
    "RecipeWarning",
    "Resolution",
    "RunRequest",
    "SchedulerGrid",
    "TensorInfo",
    "build_recipe",
    "describe_scheduler",
    "embed_provenance",
    "metadata_digest",
    "provenance_filename",
    "read_checkpoint",
    "read_provenance",
    "read_recipe",
    "save_png",
    "verify_hashes",
    "weights_digest",
    "write_recipe",
]
