"""UNet ε/v pipelines with classifier-free guidance batched as [uncond, cond]: Stable
Diffusion 1.x/2.x (text-to-image and image-to-image) and Stable Diffusion XL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from samplerguard.commitment.transcript import FromOpenedConditioning, UncheckedBinding
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.families._base import (
    Family,
    FamilyProgram,
    UnsupportedPipeline,
    aligned,
    check_encoder_pin,
    read_config,
    register,
)
from samplerguard.families._embeds import (
    MAX_PROMPT_CHARS,
    MAX_PROMPTS,
    OUTPUT_TYPES,
    check_images,
    embeds_spec,
    repeated_exactly,
    sent_embeds,
)
from samplerguard.families.pipeline_codec import PipelineCodec

__all__ = [
    "SD_CODEC_FAMILIES",
    "AnimateDiffFamily",
    "AnimateDiffProgram",
    "CodecProgram",
    "StableDiffusionCodec",
    "StableDiffusionFamily",
    "StableDiffusionImg2ImgFamily",
    "StableDiffusionImg2ImgProgram",
    "StableDiffusionInpaintFamily",
    "StableDiffusionInpaintProgram",
    "StableDiffusionProgram",
    "StableDiffusionXLCodec",
    "StableDiffusionXLFamily",
    "StableDiffusionXLProgram",
    "load_codec",
]

#: the families whose reference codec :func:`load_codec` builds (AnimateDiff's output is
#: frames, decoded by another pipeline's code)
SD_CODEC_FAMILIES = frozenset(
    {
        "stable-diffusion",
        "stable-diffusion-img2img",
        "stable-diffusion-inpaint",
        "stable-diffusion-xl",
        "latent-consistency",
    }
)
#: the text-to-image families: the request sets the image size
_SIZED = frozenset({"stable-diffusion", "stable-diffusion-xl", "latent-consistency"})


class CodecProgram(FamilyProgram):
    """A step program whose request encoder and decode are a reference codec (the CLIP text
    encoders and VAE of the Stable Diffusion line), when the verifier has one."""

    #: the reference text encoders and VAE, when the verifier has them (:func:`load_codec`,
    #: or :func:`samplerguard.families.pipeline_codec.load_pipeline_codec` for the families
    #: without a hand-written codec)
    codec: StableDiffusionCodec | PipelineCodec | None = None

    def output(
        self,
        final_latent: torch.Tensor,
        recipe: Mapping[str, Any],
        request: Mapping[str, Any] | None = None,
    ) -> bytes:
        """The pipeline's output from its final latent (the reference VAE decode)."""
        if self.codec is None:
            raise UncheckedBinding(f"the {self.pipeline} reference has no VAE")
        return self.codec.output(final_latent, recipe, request)

    def conditioning(
        self, request: Mapping[str, Any], recipe: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The UNet's conditioning from the consumer's request (the reference text encoder)."""
        if self.codec is None:
            raise UncheckedBinding(f"the {self.pipeline} reference has no text encoder")
        return self.codec.conditioning(request, recipe)

    def conditioning_from_opened(
        self,
        request: Mapping[str, Any],
        recipe: Mapping[str, Any],
        opened: Mapping[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The UNet's conditioning for a request that sent prompt embeddings, from the opened
        conditioning that must hold them (see :class:`StableDiffusionCodec`)."""
        if self.codec is None:
            raise UncheckedBinding(f"the {self.pipeline} reference has no text encoder")
        return self.codec.conditioning_from_opened(request, recipe, opened)


class StableDiffusionProgram(CodecProgram):
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
    step_inputs = MappingProxyType({"eta": ("eta", 0.0)})
    request_inputs: ClassVar[tuple[tuple[str, str], ...]] = (
        ("prompt", "prompt"),
        ("height", "height"),
        ("width", "width"),
        ("negative_prompt", "negativePrompt"),
        ("num_images_per_prompt", "imagesPerPrompt"),
        ("clip_skip", "clipSkip"),
        ("prompt_embeds", "promptEmbeds"),
        ("negative_prompt_embeds", "negativePromptEmbeds"),
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
    request_inputs = (
        ("prompt", "prompt"),
        ("image", "imageDigest"),
        ("strength", "strength"),
        ("negative_prompt", "negativePrompt"),
        ("num_images_per_prompt", "imagesPerPrompt"),
        ("clip_skip", "clipSkip"),
        ("prompt_embeds", "promptEmbeds"),
        ("negative_prompt_embeds", "negativePromptEmbeds"),
    )
    partial_schedule = True
    default_strength = 0.8


class StableDiffusionXLFamily(StableDiffusionFamily):
    """Stable Diffusion XL: two text encoders, whose pooled embedding and the micro-conditioning
    sizes (``add_time_ids``) condition the UNet besides the prompt embeddings."""

    name = "stable-diffusion-xl"
    pipelines = ("StableDiffusionXLPipeline",)
    request_inputs = (
        ("prompt", "prompt"),
        ("prompt_2", "prompt2"),
        ("height", "height"),
        ("width", "width"),
        ("negative_prompt", "negativePrompt"),
        ("negative_prompt_2", "negativePrompt2"),
        ("num_images_per_prompt", "imagesPerPrompt"),
        ("clip_skip", "clipSkip"),
        ("original_size", "originalSize"),
        ("crops_coords_top_left", "cropsCoordsTopLeft"),
        ("target_size", "targetSize"),
        ("negative_original_size", "negativeOriginalSize"),
        ("negative_crops_coords_top_left", "negativeCropsCoordsTopLeft"),
        ("negative_target_size", "negativeTargetSize"),
        ("prompt_embeds", "promptEmbeds"),
        ("negative_prompt_embeds", "negativePromptEmbeds"),
        ("pooled_prompt_embeds", "pooledPromptEmbeds"),
        ("negative_pooled_prompt_embeds", "negativePooledPromptEmbeds"),
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
        ("image", "imageDigest"),
        ("mask_image", "maskDigest"),
        ("masked_image_latents", ""),
        ("height", "height"),
        ("width", "width"),
        ("padding_mask_crop", "paddingMaskCrop"),
        ("strength", "strength"),
        ("negative_prompt", "negativePrompt"),
        ("num_images_per_prompt", "imagesPerPrompt"),
        ("clip_skip", "clipSkip"),
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
    def output(
        self,
        final_latent: torch.Tensor,
        recipe: Mapping[str, Any],
        request: Mapping[str, Any] | None = None,
    ) -> bytes:
        if request is None or request.get("paddingMaskCrop") is not None:
            raise UncheckedBinding("the inpainting crop's overlay onto the image is not re-run")
        return super().output(final_latent, recipe, request)

    def conditioning(
        self, request: Mapping[str, Any], recipe: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        raise UncheckedBinding(
            "the mask and masked-image latents are derived from the consumer's images with the "
            "VAE's sampled posterior, which this verifier does not re-derive"
        )

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
        ("negative_prompt", "negativePrompt"),
        ("num_videos_per_prompt", "videosPerPrompt"),
        ("clip_skip", "clipSkip"),
        ("prompt_embeds", "promptEmbeds"),
        ("negative_prompt_embeds", "negativePromptEmbeds"),
    )
    output = "frames"
    #: the reference decode runs the VAE over 16 frames at a time, as the pipeline does by
    #: default; another chunk size batches the decode differently
    neutral_options = MappingProxyType(
        {**StableDiffusionFamily.neutral_options, "decode_chunk_size": 16}
    )

    def check_pipe(self, pipe: Any) -> None:
        if getattr(pipe, "free_init_enabled", False):
            raise UnsupportedPipeline(f"{self.name}: FreeInit runs the schedule several times")


class AnimateDiffProgram(StableDiffusionProgram):
    pass


#: bounds on the request inputs the reference encoder reads
_MAX_SIDE = 16384


def _prompts(request: Mapping[str, Any], key: str) -> str | list[str] | None:
    value = request.get(key)
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if not (
        1 <= len(items) <= MAX_PROMPTS
        and all(isinstance(p, str) and len(p) <= MAX_PROMPT_CHARS for p in items)
    ):
        raise MalformedInputError(
            f"the request's {key} is not a string or a list of 1..{MAX_PROMPTS} strings of at "
            f"most {MAX_PROMPT_CHARS} characters"
        )
    return value if isinstance(value, str) else list(items)


def _prompt(request: Mapping[str, Any]) -> str | list[str]:
    """The request's prompt; a request that sent embeddings instead is derived from the
    opened conditioning (:class:`FromOpenedConditioning`)."""
    prompt = _prompts(request, "prompt")
    if prompt is not None:
        return prompt
    if "promptEmbeds" in request:
        raise FromOpenedConditioning("the request binds its prompt embeddings by digest")
    raise UncheckedBinding(
        "the request carries neither a prompt nor a digest of its prompt embeddings"
    )


def _paired(prompt: str | list[str], other: str | list[str] | None, key: str) -> None:
    if other is not None and (
        type(other) is not type(prompt)
        or (isinstance(prompt, list) and isinstance(other, list) and len(other) != len(prompt))
    ):
        raise MalformedInputError(
            f"the request's {key} does not match its prompt (one per prompt, both strings or "
            "both lists)"
        )


def _small_int(request: Mapping[str, Any], key: str, default: int | None, top: int) -> int | None:
    value = request.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise MalformedInputError(f"the request's {key} is not an integer 0..{top}")
    return value


class StableDiffusionCodec:
    """The reference text encoder and VAE of a Stable Diffusion 1.x/2.x checkpoint. It runs the
    pipeline's own code on the verifier's components: ``encode_prompt`` for the conditioning
    (the negative and positive prompt embeddings, batched as the UNet receives them) and the
    VAE decode with the image processor's post-processing for the output. No safety checker
    runs: a pipeline whose safety checker blanks an image serves an output that is not the
    decode, and fails the output binding."""

    def __init__(self, pipe: Any, *, cfg: bool = True) -> None:
        self.pipe = pipe
        #: whether the pipeline batches an unconditional half (a latent consistency model
        #: takes the guidance scale as an embedding instead)
        self.cfg = cfg

    def conditioning(
        self, request: Mapping[str, Any], recipe: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        prompt = _prompt(request)
        negative = _prompts(request, "negativePrompt")
        do_cfg = self.cfg and float(request["guidanceScale"]) > 1.0
        if do_cfg:
            _paired(prompt, negative, "negativePrompt")
        per_prompt = _small_int(request, "imagesPerPrompt", 1, MAX_PROMPTS)
        check_images(len(prompt) if isinstance(prompt, list) else 1, per_prompt or 1)
        layers = int(self.pipe.text_encoder.config.num_hidden_layers)
        clip_skip = _small_int(request, "clipSkip", None, layers - 1)
        positive, negative_embeds = self._encode(
            prompt, per_prompt, do_cfg, negative_prompt=negative, clip_skip=clip_skip
        )
        self._check_latents(request, recipe, int(positive.shape[0]))
        embeds = torch.cat([negative_embeds, positive]) if do_cfg else positive
        return {"prompt_embeds": embeds}

    def conditioning_from_opened(
        self,
        request: Mapping[str, Any],
        recipe: Mapping[str, Any],
        opened: Mapping[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The conditioning of a request that sent prompt embeddings, derived as the pipeline
        derives it: the committed (opened) conditioning must hold the embeddings the request
        binds (``promptEmbeds``, and ``negativePromptEmbeds`` when sent), and the pipeline's
        own ``encode_prompt`` then derives the whole conditioning from them (their repeats per
        image; the negative half from ``negativePrompt`` or the empty prompt, through the
        reference text encoder, when no negative embeddings were sent), which the caller
        compares with the committed one."""
        committed = opened.get("prompt_embeds")
        if committed is None or committed.dim() != 3:
            raise MalformedInputError("the committed conditioning holds no 3-D prompt embeddings")
        if _prompts(request, "prompt") is not None:
            raise MalformedInputError("the request carries both a prompt and prompt embeddings")
        do_cfg = self.cfg and float(request["guidanceScale"]) > 1.0
        per_prompt = _small_int(request, "imagesPerPrompt", 1, MAX_PROMPTS) or 1
        positive = embeds_spec(request, "promptEmbeds")
        negative = (
            embeds_spec(request, "negativePromptEmbeds")
            if do_cfg and "negativePromptEmbeds" in request
            else None
        )
        negative_prompt = _prompts(request, "negativePrompt")
        if negative is not None and negative_prompt is not None:
            raise MalformedInputError(
                "the request carries both a negative prompt and negative prompt embeddings"
            )
        check_images(positive["shape"][0], per_prompt)
        rows = positive["shape"][0] * per_prompt
        if committed.shape[0] != rows * (2 if do_cfg else 1):
            raise VerificationError(
                f"request binding: the request's embeddings make {rows} images"
                f"{' and as many negative rows' if do_cfg else ''}, the committed conditioning "
                f"holds {committed.shape[0]} rows",
                check="request-binding",
            )
        sent = sent_embeds(committed[-rows:][::per_prompt], positive, "prompt embeddings")
        sent_negative = (
            None
            if negative is None
            else sent_embeds(committed[:rows][::per_prompt], negative, "negative prompt embeddings")
        )
        # rows made of sent embeddings are copies of them, exactly, on any build (only a
        # negative half the text encoder derives may differ in its last bits there): a false
        # build claim must not buy room to nudge one image's rows
        repeated_exactly(committed[-rows:], sent, per_prompt, "prompt embeddings")
        if sent_negative is not None:
            repeated_exactly(committed[:rows], sent_negative, per_prompt, "negative embeddings")
        self._check_latents(request, recipe, rows)
        device = self.pipe.text_encoder.device
        embeds, negative_embeds = self._encode(
            None,
            per_prompt,
            do_cfg,
            negative_prompt=negative_prompt,
            prompt_embeds=sent.to(device),
            negative_prompt_embeds=None if sent_negative is None else sent_negative.to(device),
        )
        return {"prompt_embeds": torch.cat([negative_embeds, embeds]) if do_cfg else embeds}

    def _encode(
        self, prompt: str | list[str] | None, per_prompt: int | None, do_cfg: bool, **kw: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's own ``encode_prompt`` on the reference text encoder."""
        try:
            with torch.no_grad():
                out: tuple[torch.Tensor, torch.Tensor] = self.pipe.encode_prompt(
                    prompt, self.pipe.text_encoder.device, per_prompt, do_cfg, **kw
                )
        except Exception as exc:  # the pipeline's own code raises anything for odd inputs
            raise MalformedInputError(
                f"the reference text encoder cannot encode the request: "
                f"{type(exc).__name__}: {str(exc)[:120]}"
            ) from None
        return out

    def _check_latents(self, request: Mapping[str, Any], recipe: Mapping[str, Any], n: int) -> None:
        """The committed latents are the request's: one per prompt and image, and for
        text-to-image of the requested size (a provider that generates smaller images than
        asked, or fewer, runs less than it was paid for). img2img takes its size from the
        consumer's image, which is not re-derived here."""
        shape = recipe.get("latent_shape")
        if not isinstance(shape, list) or len(shape) != 4:
            raise VerificationError(
                "request binding: the recipe's latent shape is not 4-D", check="request-binding"
            )
        if shape[0] != n:
            raise VerificationError(
                f"request binding: the request derives {n} images, the committed latents "
                f"hold {shape[0]}",
                check="request-binding",
                found=str(shape[0]),
                expected=str(n),
            )
        if recipe.get("pipeline") not in _SIZED:
            return
        factor = int(self.pipe.vae_scale_factor)
        height, width = self._size(request)
        want = [height // factor, width // factor]
        if shape[2:] != want:
            raise VerificationError(
                f"request binding: the request asks for {height}x{width} images, the "
                f"committed latents are {shape[2] * factor}x{shape[3] * factor}",
                check="request-binding",
            )

    def _size(self, request: Mapping[str, Any]) -> tuple[int, int]:
        """The requested image size, or the pipeline's default (the UNet's sample size)."""
        factor = int(self.pipe.vae_scale_factor)
        default = self.pipe.unet.config.sample_size
        default = default * factor if isinstance(default, int) else None
        height = _small_int(request, "height", default, _MAX_SIDE)
        width = _small_int(request, "width", default, _MAX_SIDE)
        if height is None or width is None:
            raise UncheckedBinding("the UNet's default image size is not a single number")
        return height, width

    def _unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """The final latent as the VAE decodes it."""
        return latents / float(self.pipe.vae.config.scaling_factor)

    def output(
        self,
        final_latent: torch.Tensor,
        recipe: Mapping[str, Any],
        request: Mapping[str, Any] | None = None,
    ) -> bytes:
        """The served output: the reference decode and post-processing of ``final_latent``."""
        from samplerguard.commitment.digest import output_bytes

        kind = recipe.get("output_type")
        if kind not in OUTPUT_TYPES:
            raise UncheckedBinding(f"no reference post-processing for output type {kind!r}")
        if kind == "latent":
            return output_bytes(final_latent)
        vae = self.pipe.vae
        latents = final_latent.to(device=vae.device, dtype=vae.dtype)
        with torch.no_grad():
            image = vae.decode(self._unscale(latents), return_dict=False)[0]
        image = self.pipe.image_processor.postprocess(
            image, output_type=kind, do_denormalize=[True] * image.shape[0]
        )
        return output_bytes(image)


def _pair(request: Mapping[str, Any], key: str, default: tuple[int, int] | None) -> Any:
    """A ``[height, width]`` (or ``[top, left]``) request input: two integers 0.._MAX_SIDE."""
    value = request.get(key)
    if value is None:
        return default
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(type(v) is int and 0 <= v <= _MAX_SIDE for v in value)
    ):
        raise MalformedInputError(f"the request's {key} is not two integers 0..{_MAX_SIDE}")
    return tuple(value)


def _with_pooled(
    request: Mapping[str, Any], key: str, pooled_key: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A request's prompt embeddings and the pooled ones the pipeline needs with them."""
    spec = embeds_spec(request, key)
    if pooled_key not in request:
        raise MalformedInputError(
            f"the request sends {key} without {pooled_key} (the pipeline needs both)"
        )
    return spec, embeds_spec(request, pooled_key, rank=2)


class StableDiffusionXLCodec(StableDiffusionCodec):
    """The reference text encoders and VAE of a Stable Diffusion XL checkpoint. The
    conditioning is what ``StableDiffusionXLPipeline`` derives from the request: both text
    encoders' prompt embeddings (``encode_prompt``), the second encoder's pooled embedding,
    and the micro-conditioning sizes (``_get_add_time_ids``: original size, crop corner and
    target size, the negative ones when the request sets them), batched as the UNet receives
    them; a request that sent embeddings has them found in the committed conditioning first
    (:meth:`conditioning_from_opened`). The output is the VAE decode (with the VAE's latent
    mean and spread when its config has them) and the image processor's post-processing. No
    invisible watermark is applied: a pipeline that watermarks serves an output that is not the
    decode, and fails the output binding (construct it with ``add_watermarker=False``)."""

    def conditioning(
        self, request: Mapping[str, Any], recipe: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        prompt = _prompt(request)
        do_cfg = float(request["guidanceScale"]) > 1.0
        prompt_2 = _prompts(request, "prompt2")
        negative = _prompts(request, "negativePrompt") if do_cfg else None
        negative_2 = _prompts(request, "negativePrompt2") if do_cfg else None
        _paired(prompt, prompt_2, "prompt2")
        _paired(prompt, negative, "negativePrompt")
        _paired(prompt, negative_2, "negativePrompt2")
        per_prompt = _small_int(request, "imagesPerPrompt", 1, MAX_PROMPTS) or 1
        check_images(len(prompt) if isinstance(prompt, list) else 1, per_prompt)
        layers = min(
            int(self.pipe.text_encoder.config.num_hidden_layers),
            int(self.pipe.text_encoder_2.config.num_hidden_layers),
        )
        clip_skip = _small_int(request, "clipSkip", None, layers - 1)
        encoded = self._encode_xl(
            prompt,
            per_prompt,
            do_cfg,
            prompt_2=prompt_2,
            negative_prompt=negative,
            negative_prompt_2=negative_2,
            clip_skip=clip_skip,
        )
        return self._batched(request, recipe, do_cfg, *encoded)

    def conditioning_from_opened(
        self,
        request: Mapping[str, Any],
        recipe: Mapping[str, Any],
        opened: Mapping[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The conditioning of a request that sent prompt embeddings and pooled embeddings
        (``promptEmbeds`` and ``pooledPromptEmbeds``; with guidance, optionally their negative
        counterparts). The committed prompt embeddings and pooled embedding must hold them, each
        prompt's first image's rows in the positive half, and the pipeline's own
        ``encode_prompt`` derives the rest: the repeats per image, and the negative half from the
        negative embeddings, the negative prompts, or zeros (``force_zeros_for_empty_prompt``).
        The micro-conditioning comes from the request as for a prompt."""
        committed = opened.get("prompt_embeds")
        committed_pooled = opened.get("add_text_embeds")
        if committed is None or committed.dim() != 3:
            raise MalformedInputError("the committed conditioning holds no 3-D prompt embeddings")
        if committed_pooled is None or committed_pooled.dim() != 2:
            raise MalformedInputError("the committed conditioning holds no 2-D pooled embeddings")
        for key in ("prompt", "prompt2"):
            if _prompts(request, key) is not None:
                raise MalformedInputError(f"the request carries both a {key} and prompt embeddings")
        do_cfg = float(request["guidanceScale"]) > 1.0
        per_prompt = _small_int(request, "imagesPerPrompt", 1, MAX_PROMPTS) or 1
        positive, pooled = _with_pooled(request, "promptEmbeds", "pooledPromptEmbeds")
        negative = negative_pooled = None
        if do_cfg and "negativePromptEmbeds" in request:
            negative, negative_pooled = _with_pooled(
                request, "negativePromptEmbeds", "negativePooledPromptEmbeds"
            )
        negative_prompt = _prompts(request, "negativePrompt") if do_cfg else None
        negative_prompt_2 = _prompts(request, "negativePrompt2") if do_cfg else None
        if negative is not None and (negative_prompt is not None or negative_prompt_2 is not None):
            raise MalformedInputError(
                "the request carries both a negative prompt and negative prompt embeddings"
            )
        check_images(positive["shape"][0], per_prompt)
        rows = positive["shape"][0] * per_prompt
        halves = 2 if do_cfg else 1
        if committed.shape[0] != rows * halves or committed_pooled.shape[0] != rows * halves:
            raise VerificationError(
                f"request binding: the request's embeddings make {rows} images"
                f"{' and as many negative rows' if do_cfg else ''}, the committed conditioning "
                f"holds {committed.shape[0]} and {committed_pooled.shape[0]} rows",
                check="request-binding",
            )
        sent = {
            "prompt_embeds": sent_embeds(
                committed[-rows:][::per_prompt], positive, "prompt embeddings"
            ),
            "pooled_prompt_embeds": sent_embeds(
                committed_pooled[-rows:][::per_prompt], pooled, "pooled prompt embeddings"
            ),
        }
        if negative is not None and negative_pooled is not None:
            sent["negative_prompt_embeds"] = sent_embeds(
                committed[:rows][::per_prompt], negative, "negative prompt embeddings"
            )
            sent["negative_pooled_prompt_embeds"] = sent_embeds(
                committed_pooled[:rows][::per_prompt], negative_pooled, "negative pooled embeddings"
            )
        # rows made of sent embeddings are copies of them, exactly, on any build
        for name, tensor in sent.items():
            half = committed_pooled if "pooled" in name else committed
            found = half[:rows] if name.startswith("negative") else half[-rows:]
            repeated_exactly(found, tensor, per_prompt, name.replace("_", " "))
        device = self.pipe.text_encoder_2.device
        encoded = self._encode_xl(
            None,
            per_prompt,
            do_cfg,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            **{name: tensor.to(device) for name, tensor in sent.items()},
        )
        return self._batched(request, recipe, do_cfg, *encoded)

    def _encode_xl(
        self, prompt: str | list[str] | None, per_prompt: int, do_cfg: bool, **kw: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pipeline's own ``encode_prompt`` on the reference text encoders: the prompt
        embeddings, the negative ones, the pooled embedding and the negative pooled one."""
        try:
            with torch.no_grad():
                out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
                out = self.pipe.encode_prompt(
                    prompt,
                    device=self.pipe.text_encoder_2.device,
                    num_images_per_prompt=per_prompt,
                    do_classifier_free_guidance=do_cfg,
                    **kw,
                )
        except Exception as exc:  # the pipeline's own code raises anything for odd inputs
            raise MalformedInputError(
                f"the reference text encoders cannot encode the request: "
                f"{type(exc).__name__}: {str(exc)[:120]}"
            ) from None
        return out

    def _batched(
        self,
        request: Mapping[str, Any],
        recipe: Mapping[str, Any],
        do_cfg: bool,
        embeds: torch.Tensor,
        negative_embeds: torch.Tensor,
        pooled: torch.Tensor,
        negative_pooled: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The UNet's conditioning as the pipeline batches it, with the micro-conditioning
        sizes from the request."""
        rows = int(embeds.shape[0])
        self._check_latents(request, recipe, rows)
        height, width = self._size(request)
        time_ids = self._time_ids(request, "", (height, width), embeds.dtype)
        if _pair(request, "negativeOriginalSize", None) is not None and (
            _pair(request, "negativeTargetSize", None) is not None
        ):
            negative_time_ids = self._time_ids(request, "negative", None, embeds.dtype)
        else:
            negative_time_ids = time_ids
        if do_cfg:
            embeds = torch.cat([negative_embeds, embeds])
            pooled = torch.cat([negative_pooled, pooled])
            time_ids = torch.cat([negative_time_ids, time_ids])
        return {
            "prompt_embeds": embeds,
            "add_text_embeds": pooled,
            "add_time_ids": time_ids.to(embeds.device).repeat(rows, 1),
        }

    def _time_ids(
        self,
        request: Mapping[str, Any],
        prefix: str,
        size: tuple[int, int] | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        def key(name: str) -> str:
            return f"{prefix}{name[0].upper()}{name[1:]}" if prefix else name

        original = _pair(request, key("originalSize"), size)
        crop = _pair(request, key("cropsCoordsTopLeft"), (0, 0))
        target = _pair(request, key("targetSize"), size)
        try:
            ids: torch.Tensor = self.pipe._get_add_time_ids(
                original,
                crop,
                target,
                dtype=dtype,
                text_encoder_projection_dim=int(self.pipe.text_encoder_2.config.projection_dim),
            )
        except ValueError as exc:  # the UNet's added embedding does not take these
            raise MalformedInputError(f"the reference UNet: {str(exc)[:160]}") from None
        return ids

    def _unscale(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.pipe.vae.config
        mean = getattr(config, "latents_mean", None)
        std = getattr(config, "latents_std", None)
        scale = float(config.scaling_factor)
        if mean is None or std is None:
            return latents / scale
        channels = latents.shape[1]
        mean_t = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, latents.dtype)
        return latents * std_t / scale + mean_t


#: the component classes a reference folder's VAE, text encoders and tokenizers may name
_COMPONENTS = {
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
}
_XL_COMPONENTS = {
    **_COMPONENTS,
    "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
    "tokenizer_2": ("transformers", "CLIPTokenizer"),
}


def load_codec(
    folder: Path,
    unet: torch.nn.Module,
    device: torch.device | str = "cpu",
    text_encoders: Sequence[str] = (),
    pipeline: str = "stable-diffusion",
) -> StableDiffusionCodec | None:
    """The reference codec of a diffusers Stable Diffusion folder (``vae/``, ``text_encoder/``
    and ``tokenizer/`` beside the UNet, and ``text_encoder_2/`` and ``tokenizer_2/`` for
    Stable Diffusion XL), or None when the folder lacks them. Only the classes above are
    instantiated, from safetensors, with nothing fetched. ``text_encoders``: the digests the
    policy pins the text encoders to (empty: unpinned; each of XL's two must be pinned). Raises
    :class:`MalformedInputError` for an unusable folder, :class:`VerificationError` for a text
    encoder the policy does not pin."""
    import importlib

    xl = pipeline == "stable-diffusion-xl"
    components = _XL_COMPONENTS if xl else _COMPONENTS
    if not all((folder / name).is_dir() for name in components):
        return None
    parts: dict[str, Any] = {}
    for name, (module, cls_name) in components.items():
        sub = folder / name
        if name.startswith("text_encoder"):
            check_encoder_pin(sub, name, text_encoders)
        tokenizer = name.startswith("tokenizer")
        doc = read_config(sub / ("tokenizer_config.json" if tokenizer else "config.json"))
        named = (
            doc.get("tokenizer_class")
            or doc.get("_class_name")
            or (doc.get("architectures") or [None])[0]
        )
        if named not in (cls_name, f"{cls_name}Fast"):
            raise MalformedInputError(
                f"reference {sub} names {str(named)[:60]!r}; the {name} is a {cls_name}"
            )
        cls = getattr(importlib.import_module(module), cls_name)
        try:
            if tokenizer:
                parts[name] = cls.from_pretrained(sub, local_files_only=True)
            else:
                model = cls.from_pretrained(sub, local_files_only=True, use_safetensors=True)
                parts[name] = aligned(model.to(device).eval())
        except Exception as exc:  # diffusers/transformers raise many types for a bad folder
            raise MalformedInputError(
                f"reference {sub} cannot be loaded as {cls_name}: {type(exc).__name__}: "
                f"{str(exc)[:200]}"
            ) from None
    if xl:
        from diffusers import StableDiffusionXLPipeline

        index = read_config(folder / "model_index.json")
        zeros = index.get("force_zeros_for_empty_prompt", True)
        if not isinstance(zeros, bool):
            raise MalformedInputError(
                f"reference {folder}/model_index.json: force_zeros_for_empty_prompt is not a "
                "boolean"
            )
        return StableDiffusionXLCodec(
            StableDiffusionXLPipeline(
                **parts,
                unet=unet,
                scheduler=None,
                force_zeros_for_empty_prompt=zeros,
                add_watermarker=False,
            )
        )
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **parts,
        unet=unet,
        scheduler=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # a latent consistency model's pipeline encodes and decodes with Stable Diffusion's code,
    # without the unconditional half
    return StableDiffusionCodec(pipe, cfg=pipeline != "latent-consistency")


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
