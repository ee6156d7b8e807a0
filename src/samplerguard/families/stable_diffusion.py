"""UNet ε/v pipelines with classifier-free guidance batched as [uncond, cond]: Stable
Diffusion 1.x/2.x (text-to-image and image-to-image) and Stable Diffusion XL."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from samplerguard.families._base import Family, FamilyProgram, register

__all__ = [
    "StableDiffusionFamily",
    "StableDiffusionImg2ImgFamily",
    "StableDiffusionImg2ImgProgram",
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


class StableDiffusionXLProgram(StableDiffusionProgram):
    pass


StableDiffusionProgram.family = register(StableDiffusionFamily())
StableDiffusionImg2ImgProgram.family = register(StableDiffusionImg2ImgFamily())
StableDiffusionXLProgram.family = register(StableDiffusionXLFamily())
_PROGRAMS: dict[str, type[StableDiffusionProgram]] = {
    p.family.name: p
    for p in (StableDiffusionProgram, StableDiffusionImg2ImgProgram, StableDiffusionXLProgram)
}
