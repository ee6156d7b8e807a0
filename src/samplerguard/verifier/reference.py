"""Reference models: loaded from the declared checkpoint only after its golden digest matches.

The verifier re-runs steps with *its own* copy of the model. The checkpoint file is hashed
(:func:`~samplerguard.commitment.digest.safetensors_digest`) before anything is deserialised
into a module; it must be in the policy's ``goldenDigests.modelWeights`` (when that list is
set) and equal the digest the commitment's recipe declares. Otherwise nothing is loaded and
the trajectory fails with the two digests in the message.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from samplerguard.commitment.digest import safetensors_digest
from samplerguard.commitment.recheck import StepProgram
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.policy.spec import GoldenDigests

__all__ = ["ReferenceModels"]


class ReferenceModels:
    def __init__(
        self,
        checkpoints: dict[str, Path],
        golden: GoldenDigests,
        *,
        device: str | torch.device = "cpu",
    ) -> None:
        self.checkpoints = checkpoints
        self.golden = golden
        self.device = torch.device(device)
        self._digests: dict[Path, tuple[float, str]] = {}
        self._programs: dict[tuple[str, str], StepProgram] = {}
        self._lock = threading.Lock()

    def _file_digest(self, path: Path) -> str:
        mtime = path.stat().st_mtime
        hit = self._digests.get(path)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        digest = safetensors_digest(path)
        self._digests[path] = (mtime, digest)
        return digest

    def program(self, recipe: dict[str, Any]) -> StepProgram:
        pipeline = str(recipe.get("pipeline"))
        model = recipe.get("model")
        declared = model.get("digest") if isinstance(model, dict) else None
        if not isinstance(declared, str):
            raise MalformedInputError("the committed recipe declares no model digest")
        if self.golden.model_weights and declared not in self.golden.model_weights:
            raise VerificationError(
                f"recipe declares model {declared}, which is not among the policy's "
                f"goldenDigests.modelWeights {self.golden.model_weights}"
            )
        with self._lock:
            cached = self._programs.get((pipeline, declared))
            if cached is not None:
                return cached
            path = self.checkpoints.get(pipeline)
            if path is None:
                raise MalformedInputError(f"no reference checkpoint for pipeline {pipeline!r}")
            # (1): hash the checkpoint before deserialising anything from it
            digest = self._file_digest(path)
            if self.golden.model_weights and digest not in self.golden.model_weights:
                raise VerificationError(
                    f"reference checkpoint {path.name}: digest mismatch (got {digest}, expected "
                    f"one of {self.golden.model_weights}); refusing to load it"
                )
            if digest != declared:
                raise VerificationError(
                    f"recipe declares model {declared}, the reference checkpoint is {digest}"
                )
            program = self._load(pipeline, path, digest)
            self._programs[(pipeline, declared)] = program
            return program

    def _load(self, pipeline: str, path: Path, digest: str) -> StepProgram:
        if pipeline == "digits":
            from samplerguard.models.digits import load_unet
            from samplerguard.models.programs import DigitsProgram

            return DigitsProgram(load_unet(path, device=self.device), model_digest=digest)
        raise MalformedInputError(
            f"pipeline {pipeline!r} has no reference loader in this verifier build"
        )
