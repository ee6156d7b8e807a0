"""A tiny Stable Diffusion pipeline from randomly initialised components.

Nothing can be downloaded here, so the tests and benchmarks assemble diffusers'
``StableDiffusionPipeline`` from real component classes (``UNet2DConditionModel``,
``AutoencoderKL``, a tiny ``CLIPTextModel``) at toy sizes, in the style of diffusers' own
pipeline tests. There is no tokenizer: callers pass prompt embeddings.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["build_sd15_scale", "build_tiny_sd", "prompt_embeddings", "tiny_clip_config"]


def build_tiny_sd(scheduler: Any, *, seed: int = 0, sample_size: int = 16) -> Any:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(16, 32),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(tiny_clip_config())
    return _assemble(unet, vae, text_encoder, scheduler)


def tiny_clip_config(**overrides: Any) -> Any:
    """The configuration of a tiny CLIP text encoder (32 wide, 2 layers)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **{
            "bos_token_id": 0,
            "eos_token_id": 2,
            "hidden_size": 32,
            "intermediate_size": 37,
            "layer_norm_eps": 1e-05,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "pad_token_id": 1,
            "vocab_size": 1000,
            **overrides,
        }
    )


def _assemble(unet: Any, vae: Any, text_encoder: Any, scheduler: Any) -> Any:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval() if text_encoder is not None else None,
        tokenizer=None,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sd15_scale(
    scheduler: Any, *, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> Any:
    """A ``StableDiffusionPipeline`` with Stable Diffusion 1.5's UNet and VAE architectures
    (860 M + 84 M parameters, 512x512 images from 64x64 latents), randomly initialised: the
    compute of a real SD-1.5 generation, for the GPU overhead benchmarks. No text encoder:
    callers pass 77x768 prompt embeddings (:func:`prompt_embeddings` with ``tokens=77,
    width=768``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=(
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ),
            up_block_types=(
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ),
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
    return _assemble(unet, vae, None, scheduler).to(device=device, dtype=dtype)


def prompt_embeddings(batch: int, *, seed: int, tokens: int = 8, width: int = 32) -> torch.Tensor:
    """Deterministic stand-in prompt embeddings (the tiny text encoder's width by default)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, tokens, width), generator=gen)
