"""The family contract and its registry."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from samplerguard.commitment.digest import module_digest
from samplerguard.commitment.transcript import UncheckedBinding
from samplerguard.errors import MalformedInputError, SamplerGuardError, VerificationError

__all__ = [
    "Family",
    "FamilyProgram",
    "UnsupportedPipeline",
    "aligned",
    "all_families",
    "check_encoder_pin",
    "describe_argument",
    "family_for_pipeline",
    "family_named",
    "register",
]


class UnsupportedPipeline(SamplerGuardError):
    """The pipeline, or an option of this call, cannot be verified: raised when the request
    starts (or at its first step), never after the generation."""


#: Keyword arguments a denoiser call may carry with these values and still be verified: the
#: step programs pass exactly these (anything else, such as a LoRA scale in
#: ``cross_attention_kwargs`` or an IP-adapter embedding, changes the output in a way no
#: family re-runs).
_NEUTRAL: Mapping[str, tuple[object, ...]] = {
    "return_dict": (False,),
    "cross_attention_kwargs": (None, {}),
    "joint_attention_kwargs": (None, {}),
    "attention_kwargs": (None, {}),
    "down_block_additional_residuals": (None,),
    "mid_block_additional_residual": (None,),
    "down_intrablock_additional_residuals": (None,),
    "encoder_attention_mask": (None,),
    "timestep_cond": (None,),
    "class_labels": (None,),
    "added_cond_kwargs": (None,),
}


class Family:
    """One kind of pipeline. Subclasses set the class attributes and :meth:`program`."""

    #: the recipe's ``pipeline``
    name: ClassVar[str]
    #: the diffusers pipeline classes it covers, by class name
    pipelines: ClassVar[tuple[str, ...]]
    #: the pipeline attribute holding the denoiser
    denoiser: ClassVar[str] = "unet"
    #: call arguments that are the consumer's request, in call order: (argument, params key)
    request_inputs: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: denoiser keyword arguments (``a.b`` for a key of a dict argument) that are the
    #: conditioning, and the names they are committed under
    conditioning: ClassVar[Mapping[str, str]] = {}
    #: denoiser keyword arguments the step program computes itself from the latent, the
    #: timestep and the declared guidance (never taken from the provider)
    derived: ClassVar[frozenset[str]] = frozenset({"timestep"})
    #: pipeline call options that change the loop body in a way the step program does not
    #: re-run, with the only value it verifies (guidance rescale, adapters, skip layers …)
    neutral_options: ClassVar[Mapping[str, object]] = {}
    #: the output attribute holding what the consumer receives
    output: ClassVar[str] = "images"
    #: the pipeline starts its loop part-way into the schedule (img2img's strength)
    partial_schedule: ClassVar[bool] = False
    #: the strength the pipeline runs at when the request names none (a partial schedule's)
    default_strength: ClassVar[float] = 1.0
    #: ``scheduler.step`` keyword arguments the pipeline passes from its call when the
    #: scheduler's step takes them (diffusers' ``prepare_extra_step_kwargs``): the request
    #: key each is read from, and the pipeline's default
    step_inputs: ClassVar[Mapping[str, tuple[str, float]]] = {}
    #: z_N is the first draw of the request's noise, scaled by the initial sigma: what the
    #: verifier checks in the DRBG modes (Flux packs the draw into patches, so it cannot)
    plain_initial_noise: ClassVar[bool] = True

    def capture(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], guidance_scale: float
    ) -> dict[str, torch.Tensor]:
        """The conditioning of one generation, from its first denoiser call (every call of
        the first step, where :meth:`calls_per_step` is more than one). Raises
        :class:`UnsupportedPipeline` for an argument no step program of this family passes."""
        if len(args) > 2:
            raise UnsupportedPipeline(
                f"{self.name}: the denoiser was called with {len(args)} positional arguments"
            )
        out: dict[str, torch.Tensor] = {}
        for key, value in kwargs.items():
            if key in self.derived:
                continue
            if isinstance(value, Mapping) and any(f"{key}.{k}" in self.conditioning for k in value):
                for sub, v in value.items():
                    name = self.conditioning.get(f"{key}.{sub}")
                    if name is None or not isinstance(v, torch.Tensor):
                        if v is None:
                            continue
                        raise UnsupportedPipeline(
                            f"{self.name}: the denoiser's {key}[{sub!r}] is not verified by "
                            "this family"
                        )
                    out[name] = v
                continue
            name = self.conditioning.get(key)
            if name is not None and isinstance(value, torch.Tensor):
                out[name] = value
                continue
            if (
                name is not None
                and isinstance(value, tuple)
                and value
                and all(isinstance(v, torch.Tensor) for v in value)
            ):
                out.update({f"{name}.{i}": v for i, v in enumerate(value)})
                continue
            if name is not None and value is None:
                continue
            allowed = _NEUTRAL.get(key)
            if allowed is None or not any(value == a and type(value) is type(a) for a in allowed):
                shown = describe_argument(value)
                raise UnsupportedPipeline(
                    f"{self.name}: the denoiser was called with {key}={shown}, which "
                    "this family's step program does not re-run (an adapter, a LoRA scale or "
                    "a control input cannot be verified)"
                )
        return out

    def calls_per_step(self, guidance_scale: float) -> int:
        """How many times the loop body calls the denoiser (Wan runs the unconditional pass
        as a second call; everything else batches it)."""
        return 1

    def check_pipe(self, pipe: Any) -> None:
        """Raise :class:`UnsupportedPipeline` for a configuration of the pipeline object the
        step program does not re-run (checked when a call starts)."""

    def capture_call(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], guidance_scale: float, call: int
    ) -> dict[str, torch.Tensor]:
        """The conditioning seen by denoiser call ``call`` of the first step."""
        return self.capture(args, kwargs, guidance_scale) if call == 0 else {}

    def program(self, denoiser: torch.nn.Module, model_digest: str | None = None) -> Any:
        """The step program over a reference ``denoiser``."""
        raise NotImplementedError

    def outputs(self, output: Any) -> Any:
        """What the consumer receives from a pipeline output (``.images``, ``.frames`` …)."""
        if isinstance(output, torch.Tensor) or not hasattr(output, self.output):
            return output
        return getattr(output, self.output)


def describe_argument(value: object) -> str:
    """A pipeline or denoiser argument as an error message names it: a tensor by its shape,
    anything else by its ``repr`` cut to 60 characters."""
    if isinstance(value, torch.Tensor):
        return f"<tensor {tuple(value.shape)}>"
    return repr(value)[:60]


#: the largest component config a reference folder may hold
MAX_CONFIG_BYTES = 1 << 20


def read_config(path: Path) -> dict[str, Any]:
    """A component config of a reference folder: a JSON object of at most 1 MiB. Raises
    :class:`MalformedInputError` naming the file otherwise."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise MalformedInputError(f"reference {path} is larger than 1 MiB")
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MalformedInputError(f"reference {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedInputError(f"reference {path} is not a JSON object")
    return doc


class FamilyProgram:
    """A reference step program: a denoiser whose digest was checked, and the family's loop
    body. Subclasses implement :meth:`step` and may override :meth:`expected_timesteps`."""

    family: ClassVar[Family]
    #: the reference checkpoint's scheduler config (its noise process), when the verifier has
    #: it: a declared config must be it, but for the schedule keys (``commitment.plan``)
    scheduler_reference: Mapping[str, Any] | None = None

    def __init__(self, denoiser: torch.nn.Module, model_digest: str | None = None) -> None:
        self.denoiser = denoiser.eval()
        self.device = next(denoiser.parameters()).device
        self.model_digest = model_digest or module_digest(denoiser)

    @property
    def pipeline(self) -> str:
        return self.family.name

    @property
    def partial_schedule(self) -> bool:
        return self.family.partial_schedule

    def expected_timesteps(
        self, recipe: Mapping[str, Any], latent_shape: tuple[int, ...]
    ) -> dict[str, Any]:
        """The ``set_timesteps`` arguments the family's pipeline passes for this recipe."""
        return {"num_inference_steps": recipe.get("steps")}

    @property
    def request_keys(self) -> frozenset[str]:
        """The request parameters the family's pipeline reads besides the common ones."""
        inputs = {key for _, key in self.family.request_inputs if key}
        return frozenset(inputs | {key for key, _ in self.family.step_inputs.values()})

    def check_step_args(self, recipe: Mapping[str, Any], request: Mapping[str, Any]) -> None:
        """The scalar arguments every ``scheduler.step`` ran with are the ones the family's
        pipeline passes for this request (DDIM's ``eta`` from the call, nothing else): Euler's
        ``s_churn`` and ``s_noise``, say, inject noise of the provider's choosing into every
        step. Raises :class:`VerificationError`."""
        import inspect

        import diffusers

        from samplerguard.commitment.plan import step_args

        recorded = step_args(recipe)
        cls = getattr(diffusers, str(recipe.get("scheduler_class")), None)
        takes = set(inspect.signature(cls.step).parameters) if cls is not None else set()
        expected: dict[str, float] = {}
        for arg, (key, default) in self.family.step_inputs.items():
            if arg not in takes:
                continue
            value = request.get(key, default)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise MalformedInputError(f"the request's {key} is not a number")
            expected[arg] = float(value)
        same = set(recorded) == set(expected) and all(
            float(recorded[k]) == v for k, v in expected.items()
        )
        if not same:
            raise VerificationError(
                f"request binding: the scheduler's steps ran with {recorded}, the "
                f"{self.pipeline} pipeline passes {expected} for this request (step noise or "
                "arithmetic of the provider's choosing)",
                check="request-binding",
            )

    def check_initial_latent(self, recipe: Mapping[str, Any]) -> None:
        """Raises :class:`UncheckedBinding` when z_N is not a draw the verifier can check:
        a family that starts part-way starts from the consumer's image, encoded with the VAE's
        sampled posterior and noised, which is not re-derived."""
        if self.family.partial_schedule:
            raise UncheckedBinding(
                "the consumer's image, encoded and noised into z_N, is not re-derived"
            )

    def loop_begin(self, request: Mapping[str, Any], order: int) -> int:
        """The schedule index the family's pipeline starts its loop at for the consumer's
        ``request``: 0, or for a family that starts part-way what its pipeline's
        ``get_timesteps`` computes from the strength, ``(N − min(⌊N·strength⌋, N))·order``.
        A provider that starts later runs fewer steps than the request paid for."""
        if not self.family.partial_schedule:
            return 0
        strength = request.get("strength", self.family.default_strength)
        if (
            not isinstance(strength, int | float)
            or isinstance(strength, bool)
            or not 0.0 <= float(strength) <= 1.0
        ):
            raise MalformedInputError(
                f"the request's strength {str(strength)[:24]!r} is not a number in [0, 1]"
            )
        steps = request.get("steps")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise MalformedInputError("the request's steps is not a positive integer")
        start = max(steps - min(int(steps * float(strength)), steps), 0)
        return start * order

    @staticmethod
    def need(conditioning: Mapping[str, torch.Tensor], *names: str) -> list[torch.Tensor]:
        missing = [n for n in names if n not in conditioning]
        if missing:
            raise MalformedInputError(f"the committed conditioning lacks {missing}")
        return [conditioning[n] for n in names]

    def step(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        guidance_scale: float,
    ) -> torch.Tensor:
        raise NotImplementedError


_REGISTRY: dict[str, Family] = {}
_BY_PIPELINE: dict[str, Family] = {}
_LOCK = threading.Lock()


def register(family: Family) -> Family:
    """Add a family (its name and pipeline classes must be new)."""
    with _LOCK:
        if family.name in _REGISTRY:
            raise ValueError(f"pipeline family {family.name!r} is already registered")
        clash = [p for p in family.pipelines if p in _BY_PIPELINE]
        if clash:
            raise ValueError(f"pipeline classes {clash} already belong to another family")
        _REGISTRY[family.name] = family
        for p in family.pipelines:
            _BY_PIPELINE[p] = family
    return family


def family_for_pipeline(pipeline_class: str) -> Family:
    family = _BY_PIPELINE.get(pipeline_class)
    if family is None:
        raise UnsupportedPipeline(
            f"{pipeline_class} is not a supported pipeline; supported: {sorted(_BY_PIPELINE)}"
        )
    return family


def family_named(name: str) -> Family:
    family = _REGISTRY.get(name)
    if family is None:
        raise UnsupportedPipeline(
            f"pipeline family {name[:60]!r} is not supported; supported: {sorted(_REGISTRY)}"
        )
    return family


def all_families() -> list[Family]:
    return list(_REGISTRY.values())


def aligned(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every parameter and buffer in memory of its own (64-byte aligned, as
    torch allocates it). Loaders may leave tensors at any offset of the file they read, and a
    CPU matrix product over an odd width rounds its last bit differently at different
    alignments; the pipeline's own components, built or copied in memory, are aligned."""
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()
    return module


def check_encoder_pin(folder: Path, name: str, pins: Sequence[str]) -> None:
    """Hold a reference text encoder's weights file to the policy's ``goldenDigests.textEncoder``
    (``pins``; empty: unpinned) before anything is deserialised from it. The digest is the
    file's, as ``samplerguard digest`` prints it: a module's own digest would count a tied
    embedding (T5's) twice."""
    from samplerguard.commitment.digest import safetensors_digest

    if not pins:
        return
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise MalformedInputError(
            f"reference {folder}: no model.safetensors to hold to goldenDigests.textEncoder "
            "(save the encoder as one safetensors file)"
        )
    got = safetensors_digest(weights)
    if got not in pins:
        raise VerificationError(
            f"reference {name.replace('_', ' ')} {got[:23]}… is not among the policy's "
            "goldenDigests.textEncoder",
            check="model",
            found=got,
        )
