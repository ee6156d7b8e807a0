"""Latent consistency, video (Wan) and audio (Stable Audio) pipelines."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from samplerguard.families._base import Family, UnsupportedPipeline, register
from samplerguard.families.pipeline_codec import cleaning_differs
from samplerguard.families.stable_diffusion import CodecProgram

__all__ = [
    "LatentConsistencyFamily",
    "LatentConsistencyProgram",
    "StableAudioFamily",
    "StableAudioProgram",
    "WanFamily",
    "WanProgram",
]


# --- Latent Consistency Models ----------------------------------------------------------------


class LatentConsistencyFamily(Family):
    """LCM: no CFG batch; the guidance scale enters as the UNet's ``timestep_cond`` (a
    sinusoidal embedding of ``w = guidance - 1``), which the step program computes itself."""

    name = "latent-consistency"
    pipelines = ("LatentConsistencyModelPipeline",)
    request_inputs = (
        ("prompt", "prompt"),
        ("height", "height"),
        ("width", "width"),
        ("num_images_per_prompt", "imagesPerPrompt"),
        ("clip_skip", "clipSkip"),
        ("prompt_embeds", "promptEmbeds"),
    )
    conditioning = MappingProxyType({"encoder_hidden_states": "prompt_embeds"})
    derived = frozenset({"timestep", "timestep_cond"})
    neutral_options = MappingProxyType(
        {
            "cross_attention_kwargs": None,
            "ip_adapter_image": None,
            "ip_adapter_image_embeds": None,
            "timesteps": None,
        }
    )

    def program(self, denoiser: torch.nn.Module, model_digest: str | None = None) -> Any:
        return LatentConsistencyProgram(denoiser, model_digest)


class LatentConsistencyProgram(CodecProgram):
    """The loop body of ``LatentConsistencyModelPipeline``; its reference codec is Stable
    Diffusion's without the unconditional half (the last step's latent is the denoised one the
    pipeline decodes)."""

    def step(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        guidance_scale: float,
    ) -> torch.Tensor:
        from diffusers import LatentConsistencyModelPipeline

        (prompt_embeds,) = self.need(conditioning, "prompt_embeds")
        config: Any = getattr(self.denoiser, "config", None)
        w = torch.tensor(guidance_scale - 1).repeat(latents.shape[0])
        w_embedding = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
            None, w, embedding_dim=int(config.time_cond_proj_dim)
        ).to(device=latents.device, dtype=latents.dtype)
        latents = latents.to(prompt_embeds.dtype)
        model_pred = self.denoiser(
            latents,
            t,
            timestep_cond=w_embedding,
            encoder_hidden_states=prompt_embeds,
            cross_attention_kwargs=None,
            added_cond_kwargs=None,
            return_dict=False,
        )[0]
        out: torch.Tensor = scheduler.step(model_pred, t, latents, return_dict=False)[0]
        return out


LatentConsistencyProgram.family = register(LatentConsistencyFamily())


#: printable ASCII, which prompt cleaning with ftfy leaves as it is
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


# --- Wan (video) ------------------------------------------------------------------------------


class WanFamily(Family):
    """Wan 2.1 text-to-video: the unconditional pass is a second transformer call per step.
    Wan 2.2's two-expert mode (``transformer_2``) and expanded timesteps are refused."""

    name = "wan"
    pipelines = ("WanPipeline",)
    denoiser = "transformer"
    request_inputs = (
        ("prompt", "prompt"),
        ("negative_prompt", "negativePrompt"),
        ("height", "height"),
        ("width", "width"),
        ("num_frames", "numFrames"),
        ("num_videos_per_prompt", "videosPerPrompt"),
        ("max_sequence_length", "maxSequenceLength"),
        ("prompt_embeds", "promptEmbeds"),
        ("negative_prompt_embeds", "negativePromptEmbeds"),
    )
    conditioning = MappingProxyType({"encoder_hidden_states": "prompt_embeds"})
    derived = frozenset({"timestep", "hidden_states"})
    output = "frames"
    neutral_options = MappingProxyType({"attention_kwargs": None})

    def calls_per_step(self, guidance_scale: float) -> int:
        return 2 if guidance_scale > 1.0 else 1

    def underivable(self, request: Mapping[str, Any], recipe: Mapping[str, Any]) -> str | None:
        """Wan cleans prompts with ``ftfy`` where it is installed. Printable ASCII prompts are
        the same either way (ftfy repairs encodings, quotes and control characters, none of
        which they hold); others are derived where the provider recorded the same packages."""
        prompts = [request.get("prompt"), request.get("negativePrompt")]
        texts = [t for p in prompts for t in (p if isinstance(p, list) else [p]) if t]
        if all(isinstance(t, str) and _PRINTABLE.fullmatch(t) for t in texts):
            return None
        return cleaning_differs(recipe, "Wan cleans prompts that are not printable ASCII", None)

    def check_pipe(self, pipe: Any) -> None:
        if getattr(pipe, "transformer_2", None) is not None or pipe.config.get(
            "expand_timesteps", False
        ):
            raise UnsupportedPipeline(f"{self.name}: Wan 2.2's two-expert mode is not verified")

    def capture_call(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], guidance_scale: float, call: int
    ) -> dict[str, torch.Tensor]:
        seen = self.capture(args, kwargs, guidance_scale)
        if call == 0:
            return seen
        return {"negative_prompt_embeds": seen["prompt_embeds"]}

    def program(self, denoiser: torch.nn.Module, model_digest: str | None = None) -> Any:
        return WanProgram(denoiser, model_digest)


class WanProgram(CodecProgram):
    def step(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        guidance_scale: float,
    ) -> torch.Tensor:
        (prompt_embeds,) = self.need(conditioning, "prompt_embeds")
        dtype = next(self.denoiser.parameters()).dtype
        latent_model_input = latents.to(dtype)
        timestep = t.expand(latents.shape[0])
        noise_pred = self.denoiser(
            hidden_states=latent_model_input,
            timestep=timestep,
            encoder_hidden_states=prompt_embeds,
            attention_kwargs=None,
            return_dict=False,
        )[0]
        if guidance_scale > 1.0:
            (negative,) = self.need(conditioning, "negative_prompt_embeds")
            noise_uncond = self.denoiser(
                hidden_states=latent_model_input,
                timestep=timestep,
                encoder_hidden_states=negative,
                attention_kwargs=None,
                return_dict=False,
            )[0]
            noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
        out: torch.Tensor = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        return out


WanProgram.family = register(WanFamily())


# --- Stable Audio -----------------------------------------------------------------------------


class StableAudioFamily(Family):
    """Stable Audio Open: a DiT over audio latents, conditioned on text and duration. Its
    default sampler (CosineDPMSolverMultistep) draws Brownian-tree noise and is refused;
    Stable Audio verifies with any sampler whose noise is drawn step by step."""

    name = "stable-audio"
    step_inputs = MappingProxyType({"eta": ("eta", 0.0)})
    pipelines = ("StableAudioPipeline",)
    denoiser = "transformer"
    request_inputs = (
        ("prompt", "prompt"),
        ("audio_end_in_s", "audioEndInS"),
        ("audio_start_in_s", "audioStartInS"),
        ("negative_prompt", "negativePrompt"),
        ("num_waveforms_per_prompt", "waveformsPerPrompt"),
        ("prompt_embeds", "promptEmbeds"),
        ("negative_prompt_embeds", "negativePromptEmbeds"),
    )
    conditioning = MappingProxyType(
        {
            "encoder_hidden_states": "text_audio_duration_embeds",
            "global_hidden_states": "audio_duration_embeds",
            "rotary_embedding": "rotary_embedding",
        }
    )
    output = "audios"

    def program(self, denoiser: torch.nn.Module, model_digest: str | None = None) -> Any:
        return StableAudioProgram(denoiser, model_digest)


class StableAudioProgram(CodecProgram):
    def step(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        guidance_scale: float,
    ) -> torch.Tensor:
        text, duration, cos, sin = self.need(
            conditioning,
            "text_audio_duration_embeds",
            "audio_duration_embeds",
            "rotary_embedding.0",
            "rotary_embedding.1",
        )
        do_cfg = guidance_scale > 1.0
        latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        noise_pred = self.denoiser(
            latent_model_input,
            t.unsqueeze(0),
            encoder_hidden_states=text,
            global_hidden_states=duration,
            rotary_embedding=(cos, sin),
            return_dict=False,
        )[0]
        if do_cfg:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + guidance_scale * (cond - uncond)
        out: torch.Tensor = scheduler.step(noise_pred, t, latents).prev_sample
        return out


StableAudioProgram.family = register(StableAudioFamily())
