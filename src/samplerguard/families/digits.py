"""The bundled digits pipeline (:class:`samplerguard.models.digits.DigitsPipeline`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from samplerguard.families._base import Family, UnsupportedPipeline, register

__all__ = ["DigitsFamily"]


class DigitsFamily(Family):
    name = "digits"
    pipelines = ("DigitsPipeline",)
    request_inputs = (("class_labels", "classLabels"),)

    def capture(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], guidance_scale: float
    ) -> dict[str, torch.Tensor]:
        """The class labels; under guidance the UNet sees the null class first, which the
        step program adds itself."""
        labels = kwargs.get("class_labels")
        extra = set(kwargs) - {"class_labels"}
        if not isinstance(labels, torch.Tensor) or extra or len(args) > 2:
            raise UnsupportedPipeline("digits: the UNet takes (sample, t, class_labels=...) only")
        if guidance_scale > 1.0:
            labels = labels[labels.shape[0] // 2 :]
        return {"class_labels": labels}

    def program(self, denoiser: torch.nn.Module, model_digest: str | None = None) -> Any:
        from samplerguard.models.programs import DigitsProgram

        return DigitsProgram(denoiser, model_digest)


register(DigitsFamily())
