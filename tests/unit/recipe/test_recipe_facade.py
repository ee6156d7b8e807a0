"""The recipe façade is a promise; the package must stay free of torch."""

from __future__ import annotations

import subprocess
import sys

import samplerguard.recipe as recipe


def test_facade() -> None:
    assert set(recipe.__all__) == {
        "PNG_KEY", "RECIPE_KEY", "Checkpoint", "EffectiveRun", "GuardDecision", "InferenceGuard",
        "Override", "Preset", "Provenance", "Recipe", "RecipeHashes", "RecipeViolation",
        "RecipeWarning", "Resolution", "RunRequest", "SchedulerGrid", "TensorInfo",
        "build_recipe", "describe_scheduler", "embed_provenance", "metadata_digest",
        "provenance_filename", "read_checkpoint", "read_provenance", "read_recipe", "save_png",
        "verify_hashes", "weights_digest", "write_recipe",
    }  # fmt: skip
    assert all(hasattr(recipe, name) for name in recipe.__all__)


def test_no_torch_import() -> None:
    code = (
        "import sys, samplerguard.recipe; "
        "sys.exit('torch' in sys.modules or 'safetensors' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120, check=False).returncode == 0
