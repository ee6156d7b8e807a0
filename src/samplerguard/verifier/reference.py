"""Reference models: loaded from the declared checkpoint only after its golden digest matches.

The verifier re-runs steps with *its own* copy of the model. A reference checkpoint is, per
pipeline family (:mod:`samplerguard.families`):

* for the bundled digits model, its single-file ``.safetensors``;
* for every diffusers family, a diffusers model folder (``unet/`` or ``transformer/``: a
  ``config.json`` and one ``diffusion_pytorch_model.safetensors``) or a whole pipeline folder
  (``model_index.json`` beside those subfolders; the family's denoiser is taken).

The weights file is hashed (:func:`~samplerguard.commitment.digest.safetensors_digest`) before
anything is deserialised into a module; it must be in the policy's ``goldenDigests.modelWeights``
(when that list is set) and equal the digest the commitment's recipe declares. Otherwise nothing
is loaded and the trajectory fails with the two digests in the message. After loading, the
module's own digest is compared again (the file cannot change between the two). Loaded
references are kept in a bounded LRU cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from samplerguard.commitment.digest import safetensors_digest
from samplerguard.commitment.recheck import StepProgram
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.families._base import aligned, read_config
from samplerguard.families.pipeline_codec import PIPELINE_CODEC_FAMILIES, load_pipeline_codec
from samplerguard.families.stable_diffusion import SD_CODEC_FAMILIES, load_codec
from samplerguard.policy.spec import GoldenDigests

__all__ = ["ReferenceModels", "load_reference", "weights_file"]

#: the denoiser classes a reference folder may name (no arbitrary class is instantiated)
_MODEL_CLASSES = frozenset(
    {
        "UNet2DConditionModel",
        "UNet2DModel",
        "UNetMotionModel",
        "SD3Transformer2DModel",
        "FluxTransformer2DModel",
        "PixArtTransformer2DModel",
        "WanTransformer3DModel",
        "StableAudioDiTModel",
    }
)


def weights_file(pipeline: str, path: Path) -> Path:
    """The weights file of a reference checkpoint for ``pipeline`` (see the module doc)."""
    if pipeline == "digits" or path.is_file():
        return path
    from samplerguard.families import family_named

    folder = path
    if (path / "model_index.json").is_file():
        folder = path / family_named(pipeline).denoiser
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        shards = sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))
        detail = " (sharded checkpoints are not supported)" if shards else ""
        raise MalformedInputError(
            f"reference {path}: no {folder.name}/diffusion_pytorch_model.safetensors{detail}"
        )
    return weights


def load_reference(
    pipeline: str,
    path: Path,
    digest: str,
    device: torch.device | str = "cpu",
    text_encoders: Sequence[str] = (),
) -> StepProgram:
    """The step program of ``pipeline`` over the reference model at ``path``, whose weights
    file has been checked to have ``digest``. A Stable Diffusion pipeline folder with its VAE,
    text encoder and tokenizer also gets the reference codec, so the output and the prompt's
    conditioning are re-derived (``text_encoders``: the policy's pins). Raises
    :class:`VerificationError` when the loaded module's digest differs,
    :class:`MalformedInputError` for an unusable checkpoint."""
    from samplerguard.commitment.digest import module_digest
    from samplerguard.families import family_named

    family = family_named(pipeline)
    if pipeline == "digits":
        from samplerguard.models.digits import load_unet

        try:
            model: torch.nn.Module = load_unet(path, device=device)
        except Exception as exc:  # safetensors/torch raise many types for a bad checkpoint
            raise MalformedInputError(
                f"reference {path.name} is not the bundled digits architecture: "
                f"{type(exc).__name__}"
            ) from None
    else:
        folder = weights_file(pipeline, path).parent
        config_file = folder / "config.json"
        cls_name = read_config(config_file).get("_class_name")
        if cls_name not in _MODEL_CLASSES:
            raise MalformedInputError(
                f"reference {config_file} names model class {str(cls_name)[:60]!r}; "
                f"a reference is one of {sorted(_MODEL_CLASSES)}"
            )
        import diffusers

        cls = getattr(diffusers, cls_name)
        try:
            if getattr(cls, "_keep_in_fp32_modules", None):
                # diffusers loads such a class only through accelerate's low-memory path,
                # which the verifier does not depend on: build it and load the weights
                from safetensors.torch import load_file

                model = cls.from_config(cls.load_config(folder, local_files_only=True))
                model.load_state_dict(load_file(weights_file(pipeline, path)))
            else:
                model = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        except Exception as exc:  # diffusers raises many types for a bad folder
            raise MalformedInputError(
                f"reference {folder} cannot be loaded as {cls_name}: {type(exc).__name__}: "
                f"{str(exc)[:200]}"
            ) from None
        model = aligned(model.to(device).eval())
    loaded = module_digest(model)
    if loaded != digest:
        raise VerificationError(
            f"reference {path.name}: the loaded model is {loaded}, its weights file {digest}",
            check="model",
            found=loaded,
            expected=digest,
        )
    program: StepProgram = family.program(model, digest)
    if pipeline != "digits":
        program.scheduler_reference = _scheduler_config(path)  # type: ignore[attr-defined]
    if (path / "model_index.json").is_file():
        if pipeline in SD_CODEC_FAMILIES:
            program.codec = load_codec(  # type: ignore[attr-defined]
                path, model, device, text_encoders, pipeline
            )
        elif pipeline in PIPELINE_CODEC_FAMILIES:
            program.codec = load_pipeline_codec(  # type: ignore[attr-defined]
                path, family, model, device, text_encoders
            )
    return program


def _scheduler_config(path: Path) -> dict[str, Any] | None:
    """The scheduler config of a diffusers pipeline folder (the noise process its model was
    trained on), or None for a model folder, which carries none."""
    config = path / "scheduler" / "scheduler_config.json"
    if not (path / "model_index.json").is_file() or not config.is_file():
        return None
    return read_config(config)


class ReferenceModels:
    def __init__(
        self,
        checkpoints: dict[str, Path],
        golden: GoldenDigests,
        *,
        device: str | torch.device = "cpu",
        max_loaded: int = 4,
    ) -> None:
        self.checkpoints = checkpoints
        self.golden = golden
        self.device = torch.device(device)
        self._digests: dict[Path, tuple[float, str]] = {}
        self._programs: OrderedDict[tuple[str, str], StepProgram] = OrderedDict()
        self.max_loaded = max(1, max_loaded)
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
                f"goldenDigests.modelWeights {self.golden.model_weights}",
                check="model",
                found=declared,
            )
        with self._lock:
            cached = self._programs.get((pipeline, declared))
            if cached is not None:
                self._programs.move_to_end((pipeline, declared))
                return cached
            path = self.checkpoints.get(pipeline)
            if path is None:
                raise MalformedInputError(f"no reference checkpoint for pipeline {pipeline!r}")
            # (1): hash the checkpoint before deserialising anything from it
            digest = self._file_digest(weights_file(pipeline, path))
            if self.golden.model_weights and digest not in self.golden.model_weights:
                raise VerificationError(
                    f"reference checkpoint {path.name}: digest mismatch (got {digest}, expected "
                    f"one of {self.golden.model_weights}); refusing to load it",
                    check="model",
                    found=digest,
                )
            if digest != declared:
                raise VerificationError(
                    f"recipe declares model {declared}, the reference checkpoint is {digest}",
                    check="model",
                    found=declared,
                    expected=digest,
                )
            program = load_reference(pipeline, path, digest, self.device, self.golden.text_encoder)
            self._programs[(pipeline, declared)] = program
            while len(self._programs) > self.max_loaded:
                self._programs.popitem(last=False)  # bounded: the least recently used goes
            return program
