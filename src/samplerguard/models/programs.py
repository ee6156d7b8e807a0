"""Reference step programs: one denoising step per pipeline family, for the re-check.

Each program runs exactly the operations its pipeline's loop body runs, in the same order and
batch layout, so an honest opening re-checks to rel-L2 = 0 on the same build.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from samplerguard.commitment.digest import module_digest, output_bytes
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.models.digits import (
    NUM_CLASSES,
    SCHEDULER_CONFIG,
    StepInputs,
    denoise_step,
    to_pixels,
)

__all__ = ["DigitsProgram"]


class _Program:
    """A reference model and its digest (computed from the weights unless the caller pins it)."""

    pipeline: str

    def __init__(self, unet: Any, model_digest: str | None = None) -> None:
        self.unet = unet.eval()
        self.device = unet.device
        self.model_digest = model_digest or module_digest(unet)


class DigitsProgram(_Program):
    """The bundled digits pipeline's step (:func:`samplerguard.models.digits.denoise_step`)."""

    pipeline = "digits"
    #: the decode is elementwise and the conditioning integers: bit-exact on every build, so a
    #: difference is a swap wherever the verifier runs
    exact_everywhere = True
    #: the request parameters the pipeline reads besides the common ones
    request_keys = frozenset({"classLabels"})
    #: the noise process the bundled model was trained on
    scheduler_reference = MappingProxyType(SCHEDULER_CONFIG)

    def step(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        guidance_scale: float,
    ) -> torch.Tensor:
        labels = conditioning.get("class_labels")
        if labels is None or labels.dtype != torch.int64 or labels.shape != latents.shape[:1]:
            raise MalformedInputError(
                "digits conditioning needs int64 class_labels, one per sample"
            )
        return denoise_step(self.unet, scheduler, latents, t, StepInputs(labels, guidance_scale))

    def output(
        self,
        final_latent: torch.Tensor,
        recipe: Mapping[str, Any],
        request: Mapping[str, Any] | None = None,
    ) -> bytes:
        """The pipeline's output from its final latent: the latent itself (``pt``) or its
        uint8 pixels (``np``), as canonical bytes."""
        kind = recipe.get("output_type", "pt")
        if kind == "pt":
            return output_bytes(final_latent)
        if kind == "np":
            return output_bytes(to_pixels(final_latent))
        raise VerificationError(
            f"output binding: the digits pipeline has no output type {str(kind)[:20]!r}",
            check="output-binding",
            found=str(kind),
        )

    def conditioning(
        self, request: Mapping[str, Any], recipe: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """``class_labels`` from the request's ``classLabels``, as the pipeline builds it."""
        labels = request.get("classLabels")
        if (
            not isinstance(labels, list)
            or not 1 <= len(labels) <= 4096
            or not all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x < NUM_CLASSES
                for x in labels
            )
        ):
            raise MalformedInputError(
                f"digits requests carry classLabels, a list of 1..4096 integers in "
                f"[0, {NUM_CLASSES})"
            )
        return {"class_labels": torch.tensor(labels, dtype=torch.int64)}
