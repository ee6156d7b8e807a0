"""Tiny pipelines of every supported family, built from randomly initialised components in the
style of diffusers' own pipeline tests (nothing is downloaded: there are no tokenizers or text
encoders, so the calls pass prompt embeddings).

Each builder returns a :class:`Case`: the pipeline and the keyword arguments of one call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "BUILDERS",
    "PROMPTED",
    "Case",
    "latent_consistency_prompted",
    "request_for",
    "stable_diffusion_prompted",
    "stable_diffusion_xl_prompted",
    "tiny_clip_tokenizer",
]


@dataclass
class Case:
    pipe: Any
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: the sampler id of the scheduler the pipe carries
    sampler: str = "euler"
    steps: int = 4
    guidance: float = 3.0

    def call(self, runner: Any, **extra: Any) -> Any:
        gen = torch.Generator().manual_seed(7)
        return runner(
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            generator=gen,
            **self.kwargs,
            **extra,
        )


def request_for(case: Case, request_id: str = "req-1") -> Any:
    """The hook's request for one generation of ``case``, declaring what it runs."""
    from samplerguard.commitment.digest import module_digest
    from samplerguard.families import family_for_pipeline
    from samplerguard.hook.recorder import TrajectoryRequest

    family = family_for_pipeline(type(case.pipe).__name__)
    return TrajectoryRequest(
        request_id=request_id,
        tenant="t",
        pipeline=family.name,
        model_name="tiny",
        model_digest=module_digest(getattr(case.pipe, family.denoiser)),
        sampler=case.sampler,
        guidance_scale=case.guidance,
        steps=case.steps,
        output_type="np",
    )


def _embeds(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _vae(latent_channels: int, blocks: tuple[int, ...], **kw: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=blocks,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        latent_channels=latent_channels,
        norm_num_groups=min(8, blocks[0]),
        layers_per_block=1,
        **kw,
    ).eval()


def stable_diffusion() -> Case:
    from diffusers import EulerDiscreteScheduler

    from tests.support.tiny_sd import build_tiny_sd

    pipe = build_tiny_sd(EulerDiscreteScheduler(), sample_size=8)
    return Case(
        pipe,
        {
            "prompt_embeds": _embeds(1, 8, 32, seed=1),
            "negative_prompt_embeds": _embeds(1, 8, 32, seed=2),
            "output_type": "np",
            "height": 16,
            "width": 16,
        },
    )


def tiny_clip_tokenizer() -> Any:
    """A CLIP tokenizer over the 512 byte-level symbols and no merges (each word is spelled
    out): the real tokenizer class and algorithm with a vocabulary written here."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    symbols = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(symbols)}, merges=[], model_max_length=16
    )


def stable_diffusion_prompted() -> Case:
    """Stable Diffusion with its tokenizer and text encoder: the request is a prompt, so the
    verifier can re-derive the conditioning from it."""
    from diffusers import EulerDiscreteScheduler

    from tests.support.tiny_sd import build_tiny_sd

    pipe = build_tiny_sd(EulerDiscreteScheduler(), sample_size=8)
    pipe.tokenizer = tiny_clip_tokenizer()
    pipe.register_to_config(tokenizer=("transformers", "CLIPTokenizer"))
    return Case(
        pipe,
        {"prompt": "a red cat", "negative_prompt": "blurry", "output_type": "np"},
    )


def stable_diffusion_img2img() -> Case:
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    base = stable_diffusion().pipe
    pipe = StableDiffusionImg2ImgPipeline(**base.components, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler()
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand((1, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    return Case(
        pipe,
        {
            "image": image,
            "strength": 0.6,
            "prompt_embeds": _embeds(1, 8, 32, seed=1),
            "negative_prompt_embeds": _embeds(1, 8, 32, seed=2),
            "output_type": "np",
            "eta": 0.5,
        },
        sampler="ddim",
        steps=5,
    )


def stable_diffusion_xl() -> Case:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,  # 6 * 8 + the 32-wide pooled embedding
            cross_attention_dim=64,
            norm_num_groups=8,
        ).eval()
        vae = _vae(4, (16, 32))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        unet=unet,
        scheduler=EulerDiscreteScheduler(timestep_spacing="trailing"),
    )
    pipe.set_progress_bar_config(disable=True)
    return Case(
        pipe,
        {
            "prompt_embeds": _embeds(1, 8, 64, seed=1),
            "pooled_prompt_embeds": _embeds(1, 32, seed=2),
            "negative_prompt_embeds": _embeds(1, 8, 64, seed=3),
            "negative_pooled_prompt_embeds": _embeds(1, 32, seed=4),
            "output_type": "np",
            "height": 16,
            "width": 16,
        },
    )


def stable_diffusion_xl_prompted() -> Case:
    """Stable Diffusion XL with both tokenizers and text encoders (the second one projects
    its pooled embedding): the request is a prompt, so the verifier can re-derive all three
    conditioning tensors from it."""
    case = _prompted(
        stable_diffusion_xl(),
        text_encoder=_clip_encoder(1),
        text_encoder_2=_clip_encoder(2, projection=True),
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(),
    )
    case.kwargs["negative_prompt"] = "blurry"
    return case


def stable_diffusion_3() -> Case:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = SD3Transformer2DModel(
            sample_size=8,
            patch_size=1,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=32,
            pooled_projection_dim=64,
            out_channels=4,
        ).eval()
        vae = _vae(4, (4,), shift_factor=0.0609, scaling_factor=1.5035)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return Case(
        pipe,
        {
            "prompt_embeds": _embeds(1, 8, 32, seed=1),
            "pooled_prompt_embeds": _embeds(1, 64, seed=2),
            "negative_prompt_embeds": _embeds(1, 8, 32, seed=3),
            "negative_pooled_prompt_embeds": _embeds(1, 64, seed=4),
            "output_type": "np",
            "height": 8,
            "width": 8,
        },
        sampler="flow_euler",
    )


def flux() -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=(4, 4, 8),
            guidance_embeds=True,
        ).eval()
        vae = _vae(1, (4,), shift_factor=0.0609, scaling_factor=1.5035)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return Case(
        pipe,
        {
            "prompt_embeds": _embeds(1, 8, 32, seed=1),
            "pooled_prompt_embeds": _embeds(1, 32, seed=2),
            "output_type": "np",
            "height": 16,
            "width": 16,
        },
        sampler="flow_euler",
        guidance=3.5,
    )


def pixart_sigma() -> Case:
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = PixArtTransformer2DModel(
            sample_size=8,
            num_layers=2,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=3,
            caption_channels=32,
            in_channels=4,
            cross_attention_dim=24,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        ).eval()
        vae = _vae(4, (16,))
    pipe = PixArtSigmaPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    mask = torch.ones((1, 8), dtype=torch.long)
    return Case(
        pipe,
        {
            "prompt_embeds": _embeds(1, 8, 32, seed=1),
            "prompt_attention_mask": mask,
            "negative_prompt_embeds": _embeds(1, 8, 32, seed=2),
            "negative_prompt_attention_mask": mask,
            "negative_prompt": None,
            "output_type": "np",
            "height": 8,
            "width": 8,
            "use_resolution_binning": False,
        },
        sampler="dpmpp_2m",
    )


def _tiny_unet(**kw: Any) -> Any:
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        args: dict[str, Any] = {
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 32,
            "norm_num_groups": 8,
        }
        args.update(kw)
        return UNet2DConditionModel(**args).eval()


def stable_diffusion_inpaint() -> Case:
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    base = stable_diffusion().pipe
    components = {**base.components, "unet": _tiny_unet(in_channels=9)}
    pipe = StableDiffusionInpaintPipeline(**components, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler()
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(3)
    image = torch.rand((1, 3, 16, 16), generator=gen)
    mask = (torch.rand((1, 1, 16, 16), generator=gen) > 0.5).float()
    return Case(
        pipe,
        {
            "image": image,
            "mask_image": mask,
            "strength": 0.75,
            "height": 16,
            "width": 16,
            "prompt_embeds": _embeds(1, 8, 32, seed=1),
            "negative_prompt_embeds": _embeds(1, 8, 32, seed=2),
            "output_type": "np",
        },
        sampler="ddim",
    )


def latent_consistency() -> Case:
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    base = stable_diffusion().pipe
    pipe = LatentConsistencyModelPipeline(
        vae=base.vae,
        text_encoder=None,
        tokenizer=None,
        unet=_tiny_unet(time_cond_proj_dim=32),
        scheduler=LCMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return Case(
        pipe,
        {
            "prompt_embeds": _embeds(1, 8, 32, seed=1),
            "output_type": "np",
            "height": 16,
            "width": 16,
        },
        sampler="lcm",
        guidance=8.5,
    )


def latent_consistency_prompted() -> Case:
    """A latent consistency model with Stable Diffusion's tokenizer and text encoder: the
    request is a prompt (there is no negative prompt: the guidance scale is an embedding)."""
    case = latent_consistency()
    prompted = stable_diffusion_prompted().pipe
    case.pipe.register_modules(text_encoder=prompted.text_encoder, tokenizer=prompted.tokenizer)
    case.kwargs = {"prompt": "a red cat", "output_type": "np", "height": 16, "width": 16}
    return case


def animatediff() -> Case:
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    unet = _tiny_unet(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapter = MotionAdapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=1,
            motion_norm_num_groups=8,
            motion_num_attention_heads=2,
        )
    base = stable_diffusion().pipe
    pipe = AnimateDiffPipeline(
        vae=base.vae,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        motion_adapter=adapter,
        scheduler=DDIMScheduler(beta_schedule="linear", steps_offset=1, clip_sample=False),
        feature_extractor=None,
        image_encoder=None,
    )
    pipe.unet.eval()
    pipe.set_progress_bar_config(disable=True)
    return Case(
        pipe,
        {
            "prompt_embeds": _embeds(1, 8, 32, seed=1),
            "negative_prompt_embeds": _embeds(1, 8, 32, seed=2),
            "num_frames": 4,
            "height": 16,
            "width": 16,
            "output_type": "np",
        },
        sampler="ddim",
    )


def wan() -> Case:
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ).eval()
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ).eval()
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return Case(
        pipe,
        {
            "prompt_embeds": _embeds(1, 8, 32, seed=1),
            "negative_prompt_embeds": _embeds(1, 8, 32, seed=2),
            "num_frames": 5,
            "height": 16,
            "width": 16,
            "output_type": "np",
        },
        sampler="flow_euler",
    )


def stable_audio() -> Case:
    import warnings

    from diffusers import (
        AutoencoderOobleck,
        EDMDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
    )
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # Oobleck builds on torch's deprecated weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        torch.manual_seed(0)
        transformer = StableAudioDiTModel(
            sample_size=4,
            in_channels=3,
            num_layers=2,
            attention_head_dim=4,
            num_key_value_attention_heads=2,
            out_channels=3,
            cross_attention_dim=4,
            time_proj_dim=8,
            global_states_input_dim=8,
            cross_attention_input_dim=4,
        ).eval()
        vae = AutoencoderOobleck(
            encoder_hidden_size=6,
            downsampling_ratios=[1, 2],
            decoder_channels=3,
            decoder_input_channels=3,
            audio_channels=2,
            channel_multiples=[2, 4],
            sampling_rate=4,
        ).eval()
        t5 = T5EncoderModel(
            T5Config(d_model=4, d_ff=8, num_layers=1, num_heads=2, d_kv=2, vocab_size=100)
        ).eval()
        projection = StableAudioProjectionModel(
            text_encoder_dim=4, conditioning_dim=4, min_value=0, max_value=32
        ).eval()
    pipe = StableAudioPipeline(
        vae=vae,
        text_encoder=t5,
        projection_model=projection,
        tokenizer=None,
        transformer=transformer,
        scheduler=EDMDPMSolverMultistepScheduler(solver_order=2),
    )
    pipe.set_progress_bar_config(disable=True)
    return Case(
        pipe,
        {
            "prompt_embeds": _embeds(1, 8, 4, seed=1),
            "negative_prompt_embeds": _embeds(1, 8, 4, seed=2),
            "audio_end_in_s": 1.5,
            "output_type": "np",
        },
        sampler="edm_dpmpp_2m",
    )


BUILDERS: dict[str, Callable[[], Case]] = {
    "stable-diffusion": stable_diffusion,
    "stable-diffusion-img2img": stable_diffusion_img2img,
    "stable-diffusion-xl": stable_diffusion_xl,
    "stable-diffusion-3": stable_diffusion_3,
    "flux": flux,
    "pixart-sigma": pixart_sigma,
    "stable-diffusion-inpaint": stable_diffusion_inpaint,
    "latent-consistency": latent_consistency,
    "animatediff": animatediff,
    "wan": wan,
    "stable-audio": stable_audio,
}


def _clip_encoder(seed: int, projection: bool = False) -> Any:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from tests.support.tiny_sd import tiny_clip_config

    config = tiny_clip_config(hidden_act="gelu", projection_dim=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        return cls(config).eval()


def tiny_t5_tokenizer() -> Any:
    """A T5 tokenizer (the real class and Unigram algorithm) over printable ASCII, each
    character a token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(chr(c), -3.0) for c in range(33, 127)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return T5TokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=16,
    )


def _t5_encoder(seed: int, d_model: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T5EncoderModel(
            T5Config(d_model=d_model, d_ff=16, num_layers=1, num_heads=2, d_kv=4, vocab_size=100)
        ).eval()


def _prompted(case: Case, **components: Any) -> Case:
    """``case`` with tokenizers and text encoders, its pipeline built anew (pipelines read
    their tokenizers' lengths when they are built), called with a prompt."""
    case.pipe = type(case.pipe)(**{**case.pipe.components, **components})
    case.pipe.set_progress_bar_config(disable=True)
    case.kwargs = {
        k: v for k, v in case.kwargs.items() if "embeds" not in k and "attention_mask" not in k
    }
    case.kwargs["prompt"] = "a red cat"
    return case


def animatediff_prompted() -> Case:
    return _prompted(animatediff(), text_encoder=_clip_encoder(1), tokenizer=tiny_clip_tokenizer())


def stable_diffusion_3_prompted() -> Case:
    """SD3 with both CLIP encoders and no T5 (the pipeline pads with zeros for it)."""
    return _prompted(
        stable_diffusion_3(),
        text_encoder=_clip_encoder(1, projection=True),
        text_encoder_2=_clip_encoder(2, projection=True),
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(),
    )


def flux_prompted() -> Case:
    return _prompted(
        flux(),
        text_encoder=_clip_encoder(1),
        tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=_t5_encoder(2, 32),
        tokenizer_2=tiny_t5_tokenizer(),
    )


def wan_prompted() -> Case:
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        encoder = UMT5EncoderModel(
            UMT5Config(d_model=32, d_ff=16, num_layers=1, num_heads=2, d_kv=4, vocab_size=100)
        ).eval()
    return _prompted(wan(), text_encoder=encoder, tokenizer=tiny_t5_tokenizer())


def stable_audio_prompted() -> Case:
    return _prompted(stable_audio(), tokenizer=tiny_t5_tokenizer())


def pixart_sigma_prompted() -> Case:
    """PixArt-Σ with its T5 encoder, called with caption cleaning off (see
    :meth:`PixArtSigmaFamily.underivable`)."""
    case = _prompted(pixart_sigma(), text_encoder=_t5_encoder(1, 32), tokenizer=tiny_t5_tokenizer())
    case.kwargs["clean_caption"] = False
    del case.kwargs["negative_prompt"]  # its default, the empty prompt
    return case


#: the builders of the families whose tiny pipelines have tokenizers and text encoders
PROMPTED: dict[str, Callable[[], Case]] = {
    "animatediff": animatediff_prompted,
    "stable-diffusion-3": stable_diffusion_3_prompted,
    "flux": flux_prompted,
    "pixart-sigma": pixart_sigma_prompted,
    "wan": wan_prompted,
    "stable-audio": stable_audio_prompted,
}
