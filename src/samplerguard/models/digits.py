"""The bundled tiny model: class-conditional pixel-space diffusion on scikit-learn's 8×8 digits.

It is small enough to train in minutes on two CPU cores and to run the whole samplerguard lane
(generation, commitment, re-check, audit) in seconds, yet it is a real diffusers model
(:class:`diffusers.UNet2DModel` with class embeddings), trained with classifier-free guidance
(label ``NULL_CLASS`` is the unconditional token), and sampled by the real diffusers schedulers.

:class:`DigitsClassifier` is a small CNN that scores whether an output follows its conditioning.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from samplerguard.policy.spec import KNOWN_SAMPLERS

__all__ = [
    "CLASSIFIER_FILE",
    "IMAGE_SHAPE",
    "MODEL_FILE",
    "NULL_CLASS",
    "NUM_CLASSES",
    "SCHEDULER_CONFIG",
    "WEIGHTS_DIR",
    "DigitsClassifier",
    "DigitsPipeline",
    "StepInputs",
    "build_unet",
    "denoise_step",
    "guided_eps",
    "load_classifier",
    "load_unet",
    "make_scheduler",
    "scheduler_step",
    "to_pixels",
]

NUM_CLASSES = 10
NULL_CLASS = 10  # the "no condition" token used for classifier-free guidance
IMAGE_SHAPE = (1, 8, 8)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODEL_FILE = WEIGHTS_DIR / "digits-unet.safetensors"
CLASSIFIER_FILE = WEIGHTS_DIR / "digits-classifier.safetensors"

#: The noise schedule the model was trained with (DDPM, linear betas, ε-prediction). Every
#: sampler is built from this config, which also goes into the checkpoint's metadata.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}


def make_scheduler(sampler: str) -> Any:
    """A diffusers scheduler for a sampler id, on the bundled model's noise schedule."""
    import diffusers

    cls = getattr(diffusers, KNOWN_SAMPLERS[sampler])
    extra: dict[str, Any] = {}
    if sampler == "dpmpp_2m":
        extra = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    return cls.from_config({**SCHEDULER_CONFIG, **extra})


UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "num_class_embeds": NUM_CLASSES + 1,
    "norm_num_groups": 8,
    "attention_head_dim": 16,
}


def build_unet(seed: int | None = None) -> UNet2DModel:
    """A freshly initialised UNet with the bundled architecture."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return UNet2DModel(**UNET_CONFIG)
    return UNet2DModel(**UNET_CONFIG)


def load_unet(path: Path | str = MODEL_FILE, device: str | torch.device = "cpu") -> UNet2DModel:
    """Load the bundled UNet from a safetensors checkpoint (weights only, no pickle)."""
    from safetensors.torch import load_file

    unet = build_unet(seed=0)
    state = load_file(str(path), device=str(device))
    unet.load_state_dict(state, strict=True)
    return unet.to(device).eval()


class DigitsClassifier(torch.nn.Module):
    """A small CNN over 8×8 digits in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(64 * 4 * 4, 128),
            torch.nn.SiLU(),
            torch.nn.Linear(128, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of ``images`` classified as their conditioning ``labels``."""
        pred = self(images.clamp(-1, 1)).argmax(dim=1)
        return float((pred == labels.to(pred.device)).float().mean())


def load_classifier(
    path: Path | str = CLASSIFIER_FILE, device: str | torch.device = "cpu"
) -> DigitsClassifier:
    from safetensors.torch import load_file

    with torch.random.fork_rng(devices=[]):  # initialisation must not move the global RNG
        clf = DigitsClassifier()
    clf.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    return clf.to(device).eval()


def to_pixels(images: torch.Tensor) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """[-1, 1] float images (B, 1, 8, 8) → uint8 (B, 8, 8)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).squeeze(1).numpy()


@dataclass(frozen=True)
class StepInputs:
    """Everything besides the latent and sampler state that one denoising step reads."""

    class_labels: torch.Tensor  # (B,) int64, the conditioning
    guidance_scale: float


def guided_eps(
    unet: UNet2DModel,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    t: torch.Tensor,
    inputs: StepInputs,
) -> torch.Tensor:
    """The classifier-free-guided ε prediction for one step."""
    labels = inputs.class_labels.to(latents.device)
    do_cfg = inputs.guidance_scale > 1.0
    if do_cfg:
        model_in = torch.cat([latents, latents])
        labels = torch.cat([torch.full_like(labels, NULL_CLASS), labels])
    else:
        model_in = latents
    model_in = scheduler.scale_model_input(model_in, t)
    eps: torch.Tensor = unet(model_in, t, class_labels=labels).sample
    if do_cfg:
        eps_uncond, eps_cond = eps.chunk(2)
        eps = eps_uncond + inputs.guidance_scale * (eps_cond - eps_uncond)
    return eps


def scheduler_step(
    scheduler: SchedulerMixin,
    eps: torch.Tensor,
    t: torch.Tensor,
    latents: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The scheduler's update, passing ``generator`` only to schedulers that take one."""
    extra: dict[str, Any] = {}
    if generator is not None and "generator" in _step_parameters(scheduler):
        extra["generator"] = generator
    out: torch.Tensor = scheduler.step(eps, t, latents, return_dict=False, **extra)[0]
    return out


def denoise_step(
    unet: UNet2DModel,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    t: torch.Tensor,
    inputs: StepInputs,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One step of the bundled pipeline: CFG-combined ε, then the scheduler's update.

    The pipeline *and* the verifier call this one function, so an honest re-check reproduces the
    generation bit for bit on the same build.
    """
    eps = guided_eps(unet, scheduler, latents, t, inputs)
    return scheduler_step(scheduler, eps, t, latents, generator)


_STEP_PARAMETERS: dict[str, frozenset[str]] = {}


def _step_parameters(scheduler: Any) -> frozenset[str]:
    name = type(scheduler).__qualname__
    params = _STEP_PARAMETERS.get(name)
    if params is None:
        params = frozenset(inspect.signature(type(scheduler).step).parameters)
        _STEP_PARAMETERS[name] = params
    return params


StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


class DigitsPipeline(DiffusionPipeline):  # type: ignore[misc]
    """A diffusers pipeline over the bundled UNet, with diffusers' callback contract."""

    _callback_tensor_inputs: list[str] = ["latents", "class_labels"]  # noqa: RUF012
    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int] | torch.Tensor,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        output_type: str = "pt",
    ) -> torch.Tensor | np.ndarray[Any, Any]:
        for name in callback_on_step_end_tensor_inputs:
            if name not in self._callback_tensor_inputs:
                raise ValueError(
                    f"callback tensor input {name!r} is not one of {self._callback_tensor_inputs}"
                )
        device = self.unet.device
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)
        if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES:
            raise ValueError(f"class_labels must be in [0, {NUM_CLASSES}), got {labels.tolist()}")
        shape = (labels.shape[0], *IMAGE_SHAPE)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(shape, generator, latents)
        self._guidance_scale = guidance_scale
        self._num_timesteps = len(self.scheduler.timesteps)
        inputs = StepInputs(class_labels=labels, guidance_scale=float(guidance_scale))
        for i, t in enumerate(self.scheduler.timesteps):
            latents = denoise_step(self.unet, self.scheduler, latents, t, inputs, generator)
            if callback_on_step_end is not None:
                kwargs = {"latents": latents, "class_labels": labels}
                seen = {k: kwargs[k] for k in callback_on_step_end_tensor_inputs}
                returned = callback_on_step_end(self, i, t, seen)
                latents = returned.pop("latents", latents)
        if output_type == "np":
            return to_pixels(latents)
        return latents

    def prepare_latents(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """z_N: drawn (and scaled by the scheduler's initial sigma) or passed in as is."""
        from diffusers.utils.torch_utils import randn_tensor

        if latents is None:
            device = self.unet.device
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
            scaled: torch.Tensor = latents * self.scheduler.init_noise_sigma
            return scaled
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        return latents.to(self.unet.device)

    @property
    def guidance_scale(self) -> float:
        return float(getattr(self, "_guidance_scale", 1.0))


def model_metadata() -> dict[str, str]:
    """The safetensors ``__metadata__`` the training script writes beside the weights."""
    return {
        "samplerguard.model": "digits-unet",
        "samplerguard.unet_config": json.dumps(UNET_CONFIG, sort_keys=True),
        "samplerguard.scheduler_config": json.dumps(SCHEDULER_CONFIG, sort_keys=True),
    }
