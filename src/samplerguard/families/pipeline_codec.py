"""The reference codec of a family without a hand-written one: the family's own diffusers
pipeline, assembled from the verifier's components, derives the conditioning from the
consumer's request and the output from the final latent.

* **Conditioning.** The pipeline runs on the request's arguments until its denoiser's first
  step. What the denoiser receives is captured as the hook captures it (:meth:`Family.capture_call`)
  and the run stops there: the text encoders, the negative prompt, the batching and the
  family's extra conditioning (pooled embeddings, position ids, duration embeddings) are all
  the pipeline's own code. The first call's sample also gives the latent shape the request
  makes, which the committed latents must have (fewer or smaller images are less work than
  was paid for).
* **Output.** The pipeline runs again from the committed final latent with the loop made the
  identity: a scheduler of the declared class whose step returns its sample (and whose initial
  noise scale is 1), and a denoiser that returns zeros. What it returns is the pipeline's own
  decode and post-processing of that latent.

Only the component classes in :data:`COMPONENT_CLASSES` are instantiated, from safetensors, with
nothing fetched; a component the pipeline can run without (safety checker, image encoder,
motion adapter beside a motion UNet) is left out."""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from samplerguard.commitment.transcript import FromOpenedConditioning, UncheckedBinding
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.families._base import Family, aligned, check_encoder_pin, read_config
from samplerguard.families._embeds import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_PROMPTS,
    OUTPUT_TYPES,
    embeds_spec,
    repeated_exactly,
    sent_embeds,
)

__all__ = [
    "COMPONENT_CLASSES",
    "PIPELINE_CODEC_FAMILIES",
    "PipelineCodec",
    "cleaning_differs",
    "load_pipeline_codec",
]

#: the families whose reference pipeline derives their conditioning and output here: every
#: call argument of theirs that changes the conditioning is a request input
PIPELINE_CODEC_FAMILIES = frozenset(
    {"animatediff", "stable-diffusion-3", "flux", "pixart-sigma", "wan", "stable-audio"}
)

#: what a reference folder's components may be: (library, class) by component kind
COMPONENT_CLASSES: Mapping[str, frozenset[tuple[str, str]]] = {
    "text_encoder": frozenset(
        {
            ("transformers", "CLIPTextModel"),
            ("transformers", "CLIPTextModelWithProjection"),
            ("transformers", "T5EncoderModel"),
            ("transformers", "UMT5EncoderModel"),
        }
    ),
    "tokenizer": frozenset(
        {
            ("transformers", "CLIPTokenizer"),
            ("transformers", "CLIPTokenizerFast"),
            ("transformers", "T5Tokenizer"),
            ("transformers", "T5TokenizerFast"),
        }
    ),
    "vae": frozenset(
        {
            ("diffusers", "AutoencoderKL"),
            ("diffusers", "AutoencoderKLWan"),
            ("diffusers", "AutoencoderOobleck"),
        }
    ),
    "projection_model": frozenset({("stable_audio", "StableAudioProjectionModel")}),
}
#: components a verified pipeline runs without
_LEFT_OUT = frozenset(
    {"safety_checker", "feature_extractor", "image_encoder", "motion_adapter", "transformer_2"}
)
#: components a family's pipeline runs without (SD3 pads the prompt embeddings with zeros
#: where the T5 encoder's would be)
_OPTIONAL = {"stable-diffusion-3": frozenset({"text_encoder_3", "tokenizer_3"})}
_LIBRARIES = {"stable_audio": "diffusers.pipelines.stable_audio"}
#: families whose sent embeddings come with attention masks the request does not bind
_MASKED = frozenset({"pixart-sigma", "stable-audio"})
#: the pipeline arguments that repeat each prompt's embeddings
_PER_PROMPT = ("num_images_per_prompt", "num_videos_per_prompt", "num_waveforms_per_prompt")
#: the most pixels (times frames, times images) a request may make the verifier derive: 81
#: frames of 720p video are 2^26.2, and the latents are 16 to 256 times smaller still
_MAX_REQUEST_ELEMENTS = 1 << 30
#: bounds on the integer request inputs that size what the pipeline allocates
_INT_BOUNDS = {
    "maxSequenceLength": 1024,
    "clipSkip": 64,
    "imagesPerPrompt": MAX_IMAGES,
    "videosPerPrompt": MAX_IMAGES,
    "waveformsPerPrompt": MAX_IMAGES,
}


class _Stop(Exception):
    """Raised by the capturing denoiser once the first step's calls were seen."""


class _Denoiser:
    """Stands in for the pipeline's denoiser: attributes are the real module's, a call is
    ``on_call``'s."""

    def __init__(self, module: torch.nn.Module, on_call: Any) -> None:
        self._module = module
        self._on_call = on_call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._on_call(args, kwargs)


def _sample(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> torch.Tensor:
    for value in (*args[:1], kwargs.get("sample"), kwargs.get("hidden_states")):
        if isinstance(value, torch.Tensor):
            return value
    raise MalformedInputError("the reference pipeline called its denoiser without a sample")


def _zeros(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """A denoiser output of zeros, indexable (``[0]``) and named (``.sample``) as pipelines
    read it."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=torch.zeros_like(_sample(args, kwargs)))


def _identity_scheduler(recipe: Mapping[str, Any]) -> Any:
    """A scheduler of the declared class and config whose step returns its sample unchanged
    (and whose model input and initial noise are not scaled)."""
    from diffusers.schedulers.scheduling_utils import SchedulerOutput

    from samplerguard.commitment.plan import build_scheduler

    real = build_scheduler(recipe)

    def step(self: Any, model_output: Any, timestep: Any, sample: Any, *a: Any, **k: Any) -> Any:
        if k.get("return_dict", True):
            return SchedulerOutput(prev_sample=sample)
        return (sample, sample)

    identity: Any = type(
        f"Identity{type(real).__name__}",
        (type(real),),
        {
            "step": step,
            "scale_model_input": lambda self, sample, *a, **k: sample,
            "init_noise_sigma": 1.0,
        },
    )
    return identity.from_config(real.config)


class PipelineCodec:
    """See the module docstring. ``pipe``: the family's pipeline over the verifier's components
    and reference denoiser; each derivation runs on a shallow copy of it with its own scheduler
    and denoiser stand-in, so concurrent challenges share nothing mutable."""

    def __init__(self, pipe: Any, family: Family) -> None:
        self.pipe = pipe
        self.family = family

    def _kwargs(self, request: Mapping[str, Any], mode: str = "prompt") -> dict[str, Any]:
        """The pipeline call's arguments from the consumer's request parameters, without the
        embeddings it binds by digest. ``mode``: ``"prompt"`` (a request that sends embeddings
        is derived from the opened conditioning instead), ``"embeds"`` (that derivation),
        ``"output"`` (the decode, where a request without a prompt gets empty ones)."""
        kwargs: dict[str, Any] = {}
        inputs = [
            *self.family.request_inputs,
            *((arg, key) for arg, (key, _) in self.family.step_inputs.items()),
        ]
        for arg, key in inputs:
            if not key or request.get(key) is None:
                continue
            value = request[key]
            if key.endswith("Digest"):
                raise UncheckedBinding(
                    f"the request binds its {arg} by digest, which the {self.family.name} "
                    "reference does not re-derive"
                )
            if not key.endswith("Embeds"):
                kwargs[arg] = _checked(key, value)
        sends = "promptEmbeds" in request
        if "prompt" in kwargs and sends:
            raise MalformedInputError(
                "the request carries both a prompt and prompt embeddings (the pipeline refuses "
                "that)"
            )
        if mode == "prompt" and sends:
            if self.family.name in _MASKED:
                raise UncheckedBinding(
                    f"prompt embeddings sent to {self.family.name} come with attention masks, "
                    "which the request does not bind"
                )
            raise FromOpenedConditioning("the request binds its prompt embeddings by digest")
        if "prompt" not in kwargs and mode != "embeds":
            if mode == "prompt":
                raise UncheckedBinding(
                    "the request carries neither a prompt nor a digest of its prompt embeddings"
                )
            rows = embeds_spec(request, "promptEmbeds")["shape"][0] if sends else 1
            kwargs["prompt"] = [""] * rows
        kwargs["num_inference_steps"] = int(request["steps"])
        kwargs["guidance_scale"] = float(request["guidanceScale"])
        return kwargs

    def _run(self, kwargs: dict[str, Any], scheduler: Any, on_call: Any) -> Any:
        run = copy.copy(self.pipe)
        object.__setattr__(run, "scheduler", scheduler)
        denoiser = getattr(self.pipe, self.family.denoiser)
        object.__setattr__(run, self.family.denoiser, _Denoiser(denoiser, on_call))
        try:
            with torch.no_grad():
                return run(**kwargs, generator=torch.Generator().manual_seed(0))
        except (_Stop, VerificationError, UncheckedBinding):
            raise
        except Exception as exc:  # the pipeline's own code raises anything for odd requests
            raise MalformedInputError(
                f"the reference {type(self.pipe).__name__} cannot run the request: "
                f"{type(exc).__name__}: {str(exc)[:160]}"
            ) from None

    def conditioning(
        self, request: Mapping[str, Any], recipe: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        kwargs = self._kwargs(request)
        underivable = getattr(self.family, "underivable", None)
        why = underivable(request, recipe) if underivable is not None else None
        if why is not None:
            raise UncheckedBinding(why)
        return self._capture(kwargs, request, recipe)

    def conditioning_from_opened(
        self,
        request: Mapping[str, Any],
        recipe: Mapping[str, Any],
        opened: Mapping[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The conditioning of a request that sent embeddings (each bound by digest): each is
        found in the opened (committed) conditioning, its copies per image held bit for bit,
        and the pipeline's own code derives the whole conditioning from them."""
        kwargs = self._kwargs(request, mode="embeds")
        _check_size(kwargs)
        per = _per_prompt(kwargs)
        for arg, key in self.family.request_inputs:
            if key.endswith("Embeds") and key in request:
                spec = embeds_spec(request, key, rank=2 if "pooled" in key.lower() else 3)
                kwargs[arg] = _find(spec, opened, per, key)
        return self._capture(kwargs, request, recipe)

    def _capture(
        self, kwargs: dict[str, Any], request: Mapping[str, Any], recipe: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """What the denoiser receives on the first step of the pipeline run on ``kwargs``."""
        from samplerguard.commitment.plan import build_scheduler

        _check_size(kwargs)
        guidance = float(request["guidanceScale"])
        calls = self.family.calls_per_step(guidance)
        seen: dict[str, torch.Tensor] = {}
        samples: list[torch.Size] = []

        def on_call(args: tuple[Any, ...], kw: Mapping[str, Any]) -> Any:
            samples.append(_sample(args, kw).shape)
            seen.update(self.family.capture_call(args, kw, guidance, len(samples) - 1))
            if len(samples) >= calls:
                raise _Stop
            return _zeros(args, kw)

        with contextlib.suppress(_Stop):
            self._run({**kwargs, "output_type": "latent"}, build_scheduler(recipe), on_call)
        if not samples:
            raise MalformedInputError("the reference pipeline never called its denoiser")
        _check_latents(recipe, samples[0])
        return {name: tensor.detach().clone() for name, tensor in seen.items()}

    def output(
        self,
        final_latent: torch.Tensor,
        recipe: Mapping[str, Any],
        request: Mapping[str, Any] | None = None,
    ) -> bytes:
        from samplerguard.commitment.digest import output_bytes

        if request is None:
            raise UncheckedBinding("the decode needs the request's arguments")
        kind = recipe.get("output_type")
        if not isinstance(kind, str) or kind not in OUTPUT_TYPES:
            raise UncheckedBinding(f"no reference post-processing for output type {kind!r}")
        device = getattr(self.pipe, self.family.denoiser).device
        try:  # the provider's request, as it committed it
            kwargs = self._kwargs(request, mode="output")
            _check_size(kwargs)
            kwargs.update(
                num_inference_steps=1, output_type=kind, latents=final_latent.clone().to(device)
            )
            out = self._run(kwargs, _identity_scheduler(recipe), _zeros)
        except MalformedInputError as exc:
            raise VerificationError(f"output binding: {exc}", check="output-binding") from None
        return output_bytes(self.family.outputs(out))


def cleaning_differs(recipe: Mapping[str, Any], what: str, remedy: str | None) -> str | None:
    """Why a prompt a pipeline cleans with optional packages cannot be derived here, or None:
    the provider's build fingerprint must record the same packages (``textCleaning``) as this
    verifier has. A provider recording others only turns the check into NOT CHECKED; one
    recording these while it cleaned otherwise is rejected by the derivation."""
    from samplerguard.commitment.fingerprint import text_cleaning

    runtime = recipe.get("runtime")
    recorded = runtime.get("textCleaning") if isinstance(runtime, Mapping) else None
    mine = text_cleaning()
    if recorded == mine:
        return None
    hint = f": {remedy} to have the prompt checked" if remedy else ""
    return (
        f"{what} with optional packages, and the provider's ({str(recorded)[:60]}) are not "
        f"this verifier's ({mine}){hint}"
    )


def _find(spec: Mapping[str, Any], opened: Mapping[str, torch.Tensor], per: int, key: str) -> Any:
    """The embeddings ``spec`` binds, found in the opened conditioning: a block of rows at
    either end of a tensor of their shape (the unconditional half comes first), each prompt's
    first image's rows holding them. Where they are found, every image's copy must be them,
    bit for bit. Which tensor and block is searched does not weaken the check: what is found
    has the consumer's digest, and the pipeline derives the whole conditioning from it."""
    shape = spec["shape"]
    narrowed: UncheckedBinding | None = None
    candidates = [
        (tensor, repeats, start)
        for tensor in opened.values()
        if tensor.dim() == len(shape) and list(tensor.shape[1:]) == shape[1:]
        # some pipelines repeat sent embeddings per image, others leave that to the denoiser
        for repeats in dict.fromkeys((per, 1))
        if tensor.shape[0] >= shape[0] * repeats
        for start in dict.fromkeys((0, int(tensor.shape[0]) - shape[0] * repeats))
    ]
    for tensor, repeats, start in candidates:
        block = tensor[start : start + shape[0] * repeats]
        try:
            found = sent_embeds(block[::repeats], spec, key)
        except UncheckedBinding as exc:
            narrowed = exc
            continue
        except VerificationError:
            continue
        repeated_exactly(block, found, repeats, key)
        return found
    if narrowed is not None:
        raise narrowed
    raise VerificationError(
        f"request binding: the committed conditioning does not hold the request's {key} "
        "(swapped embeddings)",
        check="request-binding",
    )


def _checked(key: str, value: Any) -> Any:
    """A request value as a pipeline argument: bounded strings, numbers, lists of them."""
    if isinstance(value, str):
        if len(value) > MAX_PROMPT_CHARS:
            raise MalformedInputError(f"the request's {key} is longer than {MAX_PROMPT_CHARS}")
        return value
    if isinstance(value, int) and key in _INT_BOUNDS and not 0 <= value <= _INT_BOUNDS[key]:
        raise MalformedInputError(f"the request's {key} is not an integer 0..{_INT_BOUNDS[key]}")
    if isinstance(value, int | float):  # bool included
        return value
    if isinstance(value, list) and 0 < len(value) <= MAX_PROMPTS:
        items = [_checked(key, v) for v in value]
        if all(isinstance(v, str) for v in items) or all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in items
        ):
            return items
    raise MalformedInputError(f"the request's {key} is not a string, a number or a list of them")


def _per_prompt(kwargs: Mapping[str, Any]) -> Any:
    """The call's images (videos, waveforms) per prompt, as the request gave it."""
    return next((kwargs[k] for k in _PER_PROMPT if k in kwargs), 1)


def _check_size(kwargs: Mapping[str, Any]) -> None:
    """The request cannot make the verifier allocate more than a bounded latent."""
    prompt = kwargs.get("prompt")
    prompts = len(prompt) if isinstance(prompt, list) else 1
    per = _per_prompt(kwargs)
    if not isinstance(per, int) or isinstance(per, bool) or not 0 < prompts * per <= MAX_IMAGES:
        raise MalformedInputError(
            f"the request makes more than {MAX_IMAGES} images (prompts times images per prompt)"
        )
    total = prompts
    for key in (
        "height",
        "width",
        "num_frames",
        "num_images_per_prompt",
        "num_videos_per_prompt",
        "num_waveforms_per_prompt",
    ):
        value = kwargs.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 1 << 16:
            raise MalformedInputError(f"the request's {key} is not an integer 1..65536")
        total *= value
    if total > _MAX_REQUEST_ELEMENTS:
        raise MalformedInputError("the request asks for more than this verifier derives")


def _check_latents(recipe: Mapping[str, Any], sample: torch.Size) -> None:
    """The committed latents are the ones the request makes: the denoiser's first sample is
    the latents (or their CFG batch, twice as many) with the same trailing shape."""
    shape = recipe.get("latent_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) for d in shape):
        raise VerificationError(
            "request binding: the recipe's latent shape is malformed", check="request-binding"
        )
    rows = int(sample[0])
    if list(sample[1:]) != shape[1:] or rows not in (shape[0], 2 * shape[0]):
        raise VerificationError(
            f"request binding: the request makes latents of shape {list(sample[1:])} "
            f"({rows} rows with any CFG batch), the committed latents are {shape}",
            check="request-binding",
            found=str(shape),
            expected=str(list(sample)),
        )


def load_pipeline_codec(
    folder: Path,
    family: Family,
    denoiser: torch.nn.Module,
    device: torch.device | str = "cpu",
    text_encoders: Sequence[str] = (),
) -> PipelineCodec | None:
    """The reference codec of a diffusers pipeline folder of ``family``, or None when the
    folder lacks a component the pipeline needs to encode a prompt or decode (a denoiser-only
    reference). Raises :class:`MalformedInputError` for an unusable folder or a component
    class outside :data:`COMPONENT_CLASSES`, :class:`VerificationError` for a text encoder the
    policy does not pin."""
    import diffusers

    index = read_config(folder / "model_index.json")
    cls_name = index.get("_class_name")
    if cls_name not in family.pipelines:
        raise MalformedInputError(
            f"reference {folder}/model_index.json names {str(cls_name)[:60]!r}; the "
            f"{family.name} pipeline is one of {list(family.pipelines)}"
        )
    parts: dict[str, Any] = {}
    pipeline_cls = getattr(diffusers, cls_name)
    accepted = inspect.signature(pipeline_cls.__init__).parameters
    for name, entry in index.items():
        if name.startswith("_") or name in (family.denoiser, "scheduler"):
            continue
        is_component = name in _LEFT_OUT or name.rstrip("_0123456789") in COMPONENT_CLASSES
        if not isinstance(entry, list) and name in accepted and not is_component:
            # a pipeline setting (Wan's expand_timesteps, say), not a component
            if not isinstance(entry, bool | int | float | str | type(None)):
                raise MalformedInputError(f"reference {folder}: setting {name!r} is malformed")
            parts[name] = entry
            continue
        if name in _LEFT_OUT:
            parts[name] = None
            continue
        if not isinstance(entry, list) or entry[:1] == [None]:
            if name not in _OPTIONAL.get(family.name, ()):
                return None  # a denoiser-only reference: nothing to encode or decode with
            parts[name] = None
            continue
        if len(entry) != 2 or not all(isinstance(e, str) for e in entry):
            raise MalformedInputError(f"reference {folder}: component {name!r} is malformed")
        kind = name.rstrip("_0123456789")
        library, component = entry
        if (library, component) not in COMPONENT_CLASSES.get(kind, frozenset()):
            raise MalformedInputError(
                f"reference {folder}: {name} is {library}.{component}; a {kind} is one of "
                f"{sorted(c for _, c in COMPONENT_CLASSES.get(kind, frozenset()))}"
            )
        if not (folder / name).is_dir():
            return None
        if kind == "text_encoder":
            check_encoder_pin(folder / name, name, text_encoders)
        parts[name] = _load(folder / name, library, component, kind, device)
    try:
        pipe = pipeline_cls(**parts, **{family.denoiser: denoiser}, scheduler=None)
    except Exception as exc:  # diffusers raises many types for a component that does not fit
        raise MalformedInputError(
            f"reference {folder}: the components do not make a {cls_name}: "
            f"{type(exc).__name__}: {str(exc)[:160]}"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return PipelineCodec(pipe, family)


def _load(sub: Path, library: str, component: str, kind: str, device: torch.device | str) -> Any:
    cls = getattr(importlib.import_module(_LIBRARIES.get(library, library)), component)
    try:
        if kind == "tokenizer":
            return cls.from_pretrained(sub, local_files_only=True)
        with warnings.catch_warnings():
            # Oobleck builds on torch's deprecated weight_norm
            warnings.filterwarnings("ignore", ".*weight_norm", FutureWarning)
            model = cls.from_pretrained(sub, local_files_only=True, use_safetensors=True)
        return aligned(model.to(device).eval())
    except Exception as exc:  # diffusers/transformers raise many types for a bad folder
        raise MalformedInputError(
            f"reference {sub} cannot be loaded as {component}: {type(exc).__name__}: "
            f"{str(exc)[:200]}"
        ) from None
