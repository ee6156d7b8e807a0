"""UNet ε/v pipelines with classifier-free guidance batched as [uncond, cond]: Stable
Diffusion 1.x/2.x (text-to-image and image-to-image) and Stable Diffusion XL."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from samplerguard.families._base import Family, FamilyProgram, UnsupportedPipeline, register

__all__ = [
    "AnimateDiffFamily",
    "AnimateDiffProgram",
    "StableDiffusionFamily",
    "StableDiffusionImg2ImgFamily",
    "StableDiffusionImg2ImgProgram",
    "StableDiffusionInpaintFamily",
    "StableDiffusionInpaintProgram",
    "StableDiffusionProgram",
    "StableDiffusionXLFamily",
    "StableDiffusionXLProgram",
]


class StableDiffusionProgram(FamilyProgram):
    """The loop body of diffusers' ``StableDiffusionPipeline`` (and its img2img and XL
    variants): CFG batching, ``scale_model_input``, the UNet, the guided ε, the update. No
    guidance rescale, no IP adapter, no ControlNet residuals (the hook refuses those)."""

    family: ClassVar[Family]  # set below, once the family is registered

    @property
    def unet(self) -> torch.nn.Module:
        return self.denoiser

    def model_input(
        self, latent_model_input: torch.Tensor, conditioning: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """What the UNet's sample is made of besides the (batched, scaled) latent."""
        return latent_model_input

    def step(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        guidance_scale: float,
    ) -> torch.Tensor:
        (prompt_embeds,) = self.need(conditioning, "prompt_embeds")
        added = None
        if "add_text_embeds" in conditioning or "add_time_ids" in conditioning:
            text, time_ids = self.need(conditioning, "add_text_embeds", "add_time_ids")
            added = {"text_embeds": text, "time_ids": time_ids}
        do_cfg = guidance_scale > 1.0
        latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        latent_model_input = self.model_input(latent_model_input, conditioning)
        noise_pred = self.denoiser(
            latent_model_input,
            t,
            encoder_hidden_states=prompt_embeds,
            timestep_cond=None,
            cross_attention_kwargs=None,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]
        if do_cfg:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        out: torch.Tensor = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        return out


class StableDiffusionFamily(Family):
    name = "stable-diffusion"
    pipelines = ("StableDiffusionPipeline",)
    request_inputs: ClassVar[tuple[tuple[str, str], ...]] = (
        ("prompt", "prompt"),
        ("height", "height"),
        ("width", "width"),
        ("negative_prompt", "negativePrompt"),
    )
    conditioning = MappingProxyType({"encoder_hidden_states": "prompt_embeds"})
    neutral_options = MappingProxyType(
        {
            "guidance_rescale": 0.0,
            "cross_attention_kwargs": None,
            "ip_adapter_image": None,
            "ip_adapter_image_embeds": None,
            "timesteps": None,
            "sigmas": None,
        }
    )

    def program(self, denoiser: torch.nn.Module, model_digest: str | None = None) -> Any:
        return _PROGRAMS[self.name](denoiser, model_digest)


class StableDiffusionImg2ImgFamily(StableDiffusionFamily):
    """img2img starts the schedule at ``(1 - strength)·N``: the initial latent is the noised
    image latent, and the loop runs the rest of the schedule."""

    name = "stable-diffusion-img2img"
    pipelines = ("StableDiffusionImg2ImgPipeline",)
    request_inputs = (("prompt", "prompt"), ("image", ""), ("strength", "strength"))
    partial_schedule = True
    default_strength = 0.8


class StableDiffusionXLFamily(StableDiffusionFamily):
    name = "stable-diffusion-xl"
    pipelines = ("StableDiffusionXLPipeline",)
    request_inputs = (
        ("prompt", "prompt"),
        ("prompt_2", "prompt2"),
        ("height", "height"),
        ("width", "width"),
    )
    conditioning = MappingProxyType(
        {
            "encoder_hidden_states": "prompt_embeds",
            "added_cond_kwargs.text_embeds": "add_text_embeds",
            "added_cond_kwargs.time_ids": "add_time_ids",
        }
    )


class StableDiffusionImg2ImgProgram(StableDiffusionProgram):
    pass


class StableDiffusionInpaintFamily(StableDiffusionFamily):
    """Inpainting with an inpainting checkpoint (a 9-channel UNet: latent, mask and masked
    image latents concatenated). A 4-channel UNet inpaints by blending the known region into
    the latents after every step, outside the step: that chain cannot be re-checked, so the
    hook refuses it when the call starts."""

    name = "stable-diffusion-inpaint"
    pipelines = ("StableDiffusionInpaintPipeline",)
    request_inputs = (
        ("prompt", "prompt"),
        ("image", ""),
        ("mask_image", ""),
        ("masked_image_latents", ""),
        ("height", "height"),
        ("width", "width"),
        ("padding_mask_crop", "paddingMaskCrop"),
        ("strength", "strength"),
    )
    partial_schedule = True

    def check_pipe(self, pipe: Any) -> None:
        channels = int(pipe.unet.config.in_channels)
        if channels != 9:
            raise UnsupportedPipeline(
                f"{self.name}: a {channels}-channel UNet inpaints by blending the image into "
                "the latents between steps, which cannot be re-checked; use an inpainting "
                "checkpoint (9-channel UNet)"
            )

    def capture(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], guidance_scale: float
    ) -> dict[str, torch.Tensor]:
        sample = args[0] if args else kwargs.get("sample")
        if not isinstance(sample, torch.Tensor) or sample.dim() != 4 or sample.shape[1] != 9:
            raise UnsupportedPipeline(f"{self.name}: the UNet's sample is not 9 channels")
        out = super().capture(args, kwargs, guidance_scale)
        out["mask"] = sample[:, 4:5]
        out["masked_image_latents"] = sample[:, 5:]
        return out


class StableDiffusionInpaintProgram(StableDiffusionProgram):
    def model_input(
        self, latent_model_input: torch.Tensor, conditioning: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        mask, masked = self.need(conditioning, "mask", "masked_image_latents")
        return torch.cat([latent_model_input, mask, masked], dim=1)


class StableDiffusionXLProgram(StableDiffusionProgram):
    pass


class AnimateDiffFamily(StableDiffusionFamily):
    """AnimateDiff: Stable Diffusion's loop over 5-D video latents (batch, channels, frames,
    height, width) with a motion UNet; the consumer receives ``.frames``. FreeInit (several
    passes over the schedule) is refused."""

    name = "animatediff"
    pipelines = ("AnimateDiffPipeline",)
    request_inputs = (
        ("prompt", "prompt"),
        ("num_frames", "numFrames"),
        ("height", "height"),
        ("width", "width"),
    )
    output = "frames"

    def check_pipe(self, pipe: Any) -> None:
        if getattr(pipe, "free_init_enabled", False):
            raise UnsupportedPipeline(f"{self.name}: FreeInit runs the schedule several times")


class AnimateDiffProgram(StableDiffusionProgram):
    pass


StableDiffusionProgram.family = register(StableDiffusionFamily())
StableDiffusionImg2ImgProgram.family = register(StableDiffusionImg2ImgFamily())
StableDiffusionXLProgram.family = register(StableDiffusionXLFamily())
StableDiffusionInpaintProgram.family = register(StableDiffusionInpaintFamily())
AnimateDiffProgram.family = register(AnimateDiffFamily())
_PROGRAMS: dict[str, type[StableDiffusionProgram]] = {
    p.family.name: p
    for p in (
        StableDiffusionProgram,
        StableDiffusionImg2ImgProgram,
        StableDiffusionXLProgram,
        StableDiffusionInpaintProgram,
        AnimateDiffProgram,
    )
}
