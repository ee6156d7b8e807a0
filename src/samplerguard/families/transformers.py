"""Transformer (DiT / MMDiT) pipelines: Stable Diffusion 3, Flux and PixArt-Σ."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from samplerguard.families._base import Family, register
from samplerguard.families.pipeline_codec import cleaning_differs
from samplerguard.families.stable_diffusion import CodecProgram

__all__ = [
    "FluxFamily",
    "FluxProgram",
    "PixArtSigmaFamily",
    "PixArtSigmaProgram",
    "SD3Family",
    "SD3Program",
]


def _calculate_shift(seq_len: int, config: Mapping[str, Any], max_shift: float) -> float:
    """diffusers' ``calculate_shift`` with the pipeline's defaults, from the scheduler config."""
    base_seq = config.get("base_image_seq_len", 256)
    max_seq = config.get("max_image_seq_len", 4096)
    base_shift = config.get("base_shift", 0.5)
    top = config.get("max_shift", max_shift)
    m = (top - base_shift) / (max_seq - base_seq)
    b = base_shift - m * base_seq
    return float(seq_len * m + b)


def _config(recipe: Mapping[str, Any]) -> Mapping[str, Any]:
    config = recipe.get("scheduler_config")
    return config if isinstance(config, Mapping) else {}


def _cfg(noise_pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    uncond, text = noise_pred.chunk(2)
    return uncond + guidance_scale * (text - uncond)


# --- Stable Diffusion 3 -----------------------------------------------------------------------


class SD3Family(Family):
    name = "stable-diffusion-3"
    pipelines = ("StableDiffusion3Pipeline",)
    denoiser = "transformer"
    request_inputs = (
        ("prompt", "prompt"),
        ("prompt_2", "prompt2"),
        ("prompt_3", "prompt3"),
        ("height", "height"),
        ("width", "width"),
        ("negative_prompt", "negativePrompt"),
        ("negative_prompt_2", "negativePrompt2"),
        ("negative_prompt_3", "negativePrompt3"),
        ("num_images_per_prompt", "imagesPerPrompt"),
        ("clip_skip", "clipSkip"),
        ("max_sequence_length", "maxSequenceLength"),
        ("prompt_embeds", "promptEmbeds"),
        ("negative_prompt_embeds", "negativePromptEmbeds"),
        ("pooled_prompt_embeds", "pooledPromptEmbeds"),
        ("negative_pooled_prompt_embeds", "negativePooledPromptEmbeds"),
    )
    conditioning = MappingProxyType(
        {
            "encoder_hidden_states": "prompt_embeds",
            "pooled_projections": "pooled_prompt_embeds",
        }
    )
    derived = frozenset({"timestep", "hidden_states"})
    neutral_options = MappingProxyType(
        {
            "skip_guidance_layers": None,
            "joint_attention_kwargs": None,
            "ip_adapter_image": None,
            "ip_adapter_image_embeds": None,
            "sigmas": None,
            "mu": None,
        }
    )

    def program(self, denoiser: torch.nn.Module, model_digest: str | None = None) -> Any:
        return SD3Program(denoiser, model_digest)


class SD3Program(CodecProgram):
    """The loop body of ``StableDiffusion3Pipeline`` without skip-layer guidance (a second
    transformer call per step, which the hook refuses)."""

    def expected_timesteps(
        self, recipe: Mapping[str, Any], latent_shape: tuple[int, ...]
    ) -> dict[str, Any]:
        call: dict[str, Any] = {"num_inference_steps": recipe.get("steps")}
        config = _config(recipe)
        if config.get("use_dynamic_shifting"):
            patch = int(getattr(self.denoiser.config, "patch_size", 2))
            seq = (latent_shape[-2] // patch) * (latent_shape[-1] // patch)
            call["mu"] = _calculate_shift(seq, config, 1.16)
        return call

    def step(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        guidance_scale: float,
    ) -> torch.Tensor:
        prompt_embeds, pooled = self.need(conditioning, "prompt_embeds", "pooled_prompt_embeds")
        do_cfg = guidance_scale > 1.0
        latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
        timestep = t.expand(latent_model_input.shape[0])
        noise_pred = self.denoiser(
            hidden_states=latent_model_input,
            timestep=timestep,
            encoder_hidden_states=prompt_embeds,
            pooled_projections=pooled,
            joint_attention_kwargs=None,
            return_dict=False,
        )[0]
        if do_cfg:
            noise_pred = _cfg(noise_pred, guidance_scale)
        out: torch.Tensor = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        return out


SD3Program.family = register(SD3Family())


# --- Flux -------------------------------------------------------------------------------------


class FluxFamily(Family):
    name = "flux"
    pipelines = ("FluxPipeline",)
    denoiser = "transformer"
    request_inputs = (
        ("prompt", "prompt"),
        ("prompt_2", "prompt2"),
        ("height", "height"),
        ("width", "width"),
        ("num_images_per_prompt", "imagesPerPrompt"),
        ("max_sequence_length", "maxSequenceLength"),
        ("prompt_embeds", "promptEmbeds"),
        ("pooled_prompt_embeds", "pooledPromptEmbeds"),
    )
    conditioning = MappingProxyType(
        {
            "encoder_hidden_states": "prompt_embeds",
            "pooled_projections": "pooled_prompt_embeds",
            "txt_ids": "text_ids",
            "img_ids": "latent_image_ids",
        }
    )
    plain_initial_noise = False
    # the guidance embedding is the declared guidance scale: the program builds it itself
    derived = frozenset({"timestep", "hidden_states", "guidance"})
    neutral_options = MappingProxyType(
        {
            "true_cfg_scale": 1.0,
            "joint_attention_kwargs": None,
            "ip_adapter_image": None,
            "ip_adapter_image_embeds": None,
            "negative_ip_adapter_image": None,
            "negative_ip_adapter_image_embeds": None,
            "sigmas": None,
        }
    )

    def program(self, denoiser: torch.nn.Module, model_digest: str | None = None) -> Any:
        return FluxProgram(denoiser, model_digest)


class FluxProgram(CodecProgram):
    """The loop body of ``FluxPipeline`` (packed latents, the guidance embedding, no true
    CFG: a second transformer call per step, which the hook refuses)."""

    def expected_timesteps(
        self, recipe: Mapping[str, Any], latent_shape: tuple[int, ...]
    ) -> dict[str, Any]:
        import numpy as np

        steps = recipe.get("steps")
        config = _config(recipe)
        mu = _calculate_shift(latent_shape[1], config, 1.15)
        if config.get("use_flow_sigmas") or not isinstance(steps, int):
            return {"num_inference_steps": steps, "mu": mu}
        sigmas = np.linspace(1.0, 1 / steps, steps)
        return {"sigmas": [float(s) for s in sigmas], "mu": mu}

    def step(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        guidance_scale: float,
    ) -> torch.Tensor:
        prompt_embeds, pooled, text_ids, image_ids = self.need(
            conditioning, "prompt_embeds", "pooled_prompt_embeds", "text_ids", "latent_image_ids"
        )
        guidance = None
        if getattr(self.denoiser.config, "guidance_embeds", False):
            guidance = torch.full([1], guidance_scale, device=latents.device, dtype=torch.float32)
            guidance = guidance.expand(latents.shape[0])
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        noise_pred = self.denoiser(
            hidden_states=latents,
            timestep=timestep / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            joint_attention_kwargs={},
            return_dict=False,
        )[0]
        out: torch.Tensor = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        return out


FluxProgram.family = register(FluxFamily())


# --- PixArt-Σ ---------------------------------------------------------------------------------


class PixArtSigmaFamily(Family):
    name = "pixart-sigma"
    step_inputs = MappingProxyType({"eta": ("eta", 0.0)})
    pipelines = ("PixArtSigmaPipeline",)
    denoiser = "transformer"
    request_inputs = (
        ("prompt", "prompt"),
        ("negative_prompt", "negativePrompt"),
        ("height", "height"),
        ("width", "width"),
        ("num_images_per_prompt", "imagesPerPrompt"),
        ("max_sequence_length", "maxSequenceLength"),
        ("clean_caption", "cleanCaption"),
        ("use_resolution_binning", "useResolutionBinning"),
        ("prompt_embeds", "promptEmbeds"),
        ("negative_prompt_embeds", "negativePromptEmbeds"),
    )
    conditioning = MappingProxyType(
        {
            "encoder_hidden_states": "prompt_embeds",
            "encoder_attention_mask": "prompt_attention_mask",
        }
    )
    derived = frozenset({"timestep"})
    neutral_options = MappingProxyType({"timesteps": None, "sigmas": None})

    def underivable(self, request: Mapping[str, Any], recipe: Mapping[str, Any]) -> str | None:
        """Why the prompt's conditioning cannot be derived at the verifier, if it cannot: the
        pipeline cleans captions (its default) only where ``bs4`` and ``ftfy`` are installed,
        so unless the provider recorded the same packages as this verifier has, its cleaning
        may differ."""
        if request.get("cleanCaption") is False:
            return None
        return cleaning_differs(recipe, "PixArt-Σ cleans captions", "clean_caption=False")

    def capture(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], guidance_scale: float
    ) -> dict[str, torch.Tensor]:
        added = kwargs.get("added_cond_kwargs")
        if added is not None and (
            not isinstance(added, Mapping) or any(v is not None for v in added.values())
        ):
            from samplerguard.families._base import UnsupportedPipeline

            raise UnsupportedPipeline("pixart-sigma: resolution conditioning is not verified")
        return super().capture(
            args, {k: v for k, v in kwargs.items() if k != "added_cond_kwargs"}, guidance_scale
        )

    def program(self, denoiser: torch.nn.Module, model_digest: str | None = None) -> Any:
        return PixArtSigmaProgram(denoiser, model_digest)


class PixArtSigmaProgram(CodecProgram):
    """The loop body of ``PixArtSigmaPipeline``: CFG batching, the attention mask, and the
    learned-σ half of the output dropped."""

    def step(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        guidance_scale: float,
    ) -> torch.Tensor:
        prompt_embeds, mask = self.need(conditioning, "prompt_embeds", "prompt_attention_mask")
        do_cfg = guidance_scale > 1.0
        latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        current = t
        if current.dim() == 0:
            current = current[None].to(latent_model_input.device)
        current = current.expand(latent_model_input.shape[0])
        noise_pred = self.denoiser(
            latent_model_input,
            encoder_hidden_states=prompt_embeds,
            encoder_attention_mask=mask,
            timestep=current,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]
        if do_cfg:
            noise_pred = _cfg(noise_pred, guidance_scale)
        config: Any = getattr(self.denoiser, "config", None)
        if int(config.out_channels) // 2 == latents.shape[1]:
            noise_pred = noise_pred.chunk(2, dim=1)[0]
        out: torch.Tensor = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        return out


PixArtSigmaProgram.family = register(PixArtSigmaFamily())
