"""diffusers integration: record a pipeline call at the boundaries every pipeline shares.

``instrument(pipe, recorder)`` returns a callable with the pipeline's signature plus a
``trajectory_request`` keyword. Whatever the pipeline family (see :mod:`samplerguard.families`),
its call goes through three boundaries, which the hook observes and changes nothing at:

* the scheduler's ``set_timesteps`` and ``set_begin_index``: the schedule as the pipeline set
  it (custom ``sigmas``, Flux's ``mu``, img2img's start index), recorded in the recipe, and the
  sampler state a fresh instance carries into the loop;
* the denoiser's forward (``unet`` or ``transformer``): its first call gives the conditioning
  the family commits (prompt embeddings, pooled projections, attention masks …), and a second
  call within one step (true CFG, skip-layer guidance) is refused;
* the scheduler's ``step``: its first call gives z_N (the latent the loop starts from), every
  call gives the step's latent, state and noise, and its scalar arguments (``eta`` …) go into
  the recipe.

Nothing is patched on the pipeline or scheduler *instance*: the scheduler class's methods and a
forward pre-hook on the denoiser are installed once and act only for the thread whose call is
being recorded, so one pipeline object may be called from several threads. diffusers keeps
per-call state on the pipeline object and its scheduler, so calls on one pipeline object are
serialised (they would corrupt each other otherwise); pipelines built with ``from_pipe`` run
side by side.

An option no family step program re-runs (an adapter, a LoRA scale, a ControlNet residual, a
pipeline that changes the latents between steps) raises
:class:`~samplerguard.families.UnsupportedPipeline` at the first step, before the generation
goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from samplerguard.commitment.digest import bytes_digest, output_bytes
from samplerguard.commitment.plan import reset_to_fresh
from samplerguard.commitment.request import embeds_param
from samplerguard.commitment.state import SamplerState, capture_schedule, capture_state
from samplerguard.commitment.statement import Commitment
from samplerguard.families import (
    Family,
    UnsupportedPipeline,
    describe_argument,
    family_for_pipeline,
)
from samplerguard.hook.recorder import Begun, Recorder, Trajectory, TrajectoryRequest

__all__ = [
    "InstrumentedPipeline",
    "RecordedOutput",
    "bound_arguments",
    "input_digest",
    "instrument",
    "output_bytes",
    "request_params",
]


@dataclass(frozen=True)
class RecordedOutput:
    output: Any
    commitment: Commitment
    trajectory: Trajectory


def request_params(
    family: Family, request: TrajectoryRequest, call: Mapping[str, Any]
) -> dict[str, Any]:
    """The consumer's request parameters, read from the pipeline call's arguments (``call``:
    bound by name, see :func:`bound_arguments`): the declared steps and guidance, and the
    family's request inputs."""
    params: dict[str, Any] = {
        "requestId": request.request_id,
        "tenant": request.tenant,
        "steps": request.steps,
        "guidanceScale": request.guidance_scale,
    }
    inputs = [*family.request_inputs, *((a, k) for a, (k, _) in family.step_inputs.items())]
    for arg, key in inputs:
        value = call.get(arg)
        if value is None or not key:
            continue
        if key.endswith("Digest"):
            value = input_digest(value)
        elif key.endswith("Embeds"):
            value = embeds_param(value)
        elif isinstance(value, torch.Tensor):
            value = value.reshape(-1).tolist()
        if isinstance(value, tuple):
            value = list(value)
        params[key] = value
    return params


def _call_output_type(pipe: Any, bound: Mapping[str, Any]) -> str | None:
    """The ``output_type`` a pipeline call produces: its argument, or the signature's default
    (``"pil"`` for most diffusers pipelines); None for a pipeline without one."""
    if "output_type" in bound:
        value = bound["output_type"]
        return value if isinstance(value, str) else None
    return _default_output_type(type(pipe).__call__)


@functools.cache
def _default_output_type(call: Callable[..., Any]) -> str | None:
    param = _signature(call).parameters.get("output_type")
    return param.default if param is not None and isinstance(param.default, str) else None


def input_digest(value: Any) -> str:
    """The digest of an image input as the pipeline received it (a tensor, an array, a PIL
    image or a list of them): SHA-256 over :func:`output_bytes`, so a consumer binds its own
    image to the request with the same call."""
    if not isinstance(value, list | torch.Tensor) and hasattr(value, "getbands"):
        value = [value]  # one PIL image
    return bytes_digest(output_bytes(value))


@functools.lru_cache(maxsize=64)
def _signature(call: Callable[..., Any]) -> inspect.Signature:
    """A pipeline class's ``__call__`` signature, worked out once (``inspect.signature`` took
    most of a request's binding)."""
    return inspect.signature(call)


def bound_arguments(pipe: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of a pipeline call by parameter name, positional ones included (a
    positional ``negative_prompt`` is the 8th argument of ``StableDiffusionPipeline``)."""
    try:
        bound = _signature(type(pipe).__call__).bind_partial(pipe, *args, **kwargs)
    except TypeError as exc:
        raise UnsupportedPipeline(f"{type(pipe).__name__}: {exc}") from None
    out: dict[str, Any] = {}
    params = bound.signature.parameters
    for name, value in list(bound.arguments.items())[1:]:
        if params[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif params[name].kind is not inspect.Parameter.VAR_POSITIONAL:
            out[name] = value
    return out


#: ``step`` keyword arguments that are not part of the update's arithmetic
_STEP_PLUMBING = frozenset({"return_dict", "generator"})
_STEP_SCALARS = frozenset(
    {"eta", "use_clipped_model_output", "s_churn", "s_tmin", "s_tmax", "s_noise"}
)


class _Call:
    """The recording of one pipeline call, on the thread that runs it."""

    def __init__(self, tr: Trajectory, family: Family, pipe: Any, guidance: float) -> None:
        self.tr = tr
        self.family = family
        self.scheduler = pipe.scheduler
        self.denoiser = getattr(pipe, family.denoiser)
        self.guidance = guidance
        self.timesteps: dict[str, Any] | None = None
        self.begin_index: int | None = None
        self.before: tuple[dict[str, torch.Tensor], SamplerState] | None = None
        self.conditioning: dict[str, torch.Tensor] | None = None
        self.step_args: dict[str, Any] | None = None
        self.index = 0
        self.calls = 0
        #: the denoiser calls one step may make (one, or two for CFG run unbatched)
        self.max_calls = family.calls_per_step(guidance)
        self.last: torch.Tensor | None = None

    # -- scheduler set-up ----------------------------------------------------------------------

    def set_timesteps(self, scheduler: Any, bound: Mapping[str, Any]) -> None:
        if self.step_args is not None:
            raise UnsupportedPipeline("the pipeline set the schedule again inside its loop")
        call: dict[str, Any] = {}
        for key, value in bound.items():
            if key in ("self", "device") or value is None:
                continue
            if key in ("sigmas", "timesteps"):
                seq = value.tolist() if hasattr(value, "tolist") else list(value)
                value = [float(v) for v in seq] if key == "sigmas" else [int(v) for v in seq]
            elif key == "mu":
                value = float(value)
            elif key != "num_inference_steps":
                raise UnsupportedPipeline(f"set_timesteps({key}=...) is not recorded")
            call[key] = value
        self.timesteps = call
        self.begin_index = None
        reset_to_fresh(scheduler, call)
        self._snapshot(scheduler)

    def set_begin_index(self, scheduler: Any, index: int) -> None:
        if self.timesteps is None:
            raise UnsupportedPipeline("set_begin_index before set_timesteps")
        self.begin_index = int(index)
        self._snapshot(scheduler)

    def _snapshot(self, scheduler: Any) -> None:
        schedule = capture_schedule(scheduler, self.timesteps)
        self.before = (schedule, capture_state(scheduler, schedule))

    # -- the loop ------------------------------------------------------------------------------

    def denoise(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        self.calls += 1
        if self.calls > self.max_calls:
            raise UnsupportedPipeline(
                f"{self.family.name}: the denoiser ran {self.calls} times in step {self.index} "
                "(true CFG, skip-layer guidance), which the step program does not re-run"
            )
        if self.step_args is None:  # the first step: its calls carry the conditioning
            seen = self.family.capture_call(args, kwargs, self.guidance, self.calls - 1)
            self.conditioning = {**(self.conditioning or {}), **seen}

    def step(
        self,
        original: Callable[..., Any],
        scheduler: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if len(args) != 3:
            raise UnsupportedPipeline("scheduler.step takes (model_output, timestep, sample)")
        _, timestep, sample = args
        extra = {k: v for k, v in kwargs.items() if k not in _STEP_PLUMBING}
        bad = [k for k, v in extra.items() if k not in _STEP_SCALARS or isinstance(v, torch.Tensor)]
        if bad:
            raise UnsupportedPipeline(f"scheduler.step({bad[0]}=...) is not verified")
        if self.step_args is None:
            self._begin(scheduler, timestep, sample, extra)
        elif extra != self.step_args:
            raise UnsupportedPipeline("the step arguments changed inside the loop")
        elif sample is not self.last and not torch.equal(sample, self.last):  # type: ignore[arg-type]
            raise UnsupportedPipeline(
                f"{self.family.name}: the pipeline changed the latents between steps "
                f"{self.index - 1} and {self.index} (inpainting's mask blending, a custom "
                "callback): the chain of steps cannot be re-checked"
            )
        out = original(scheduler, *args, **kwargs)
        latents = out[0] if isinstance(out, tuple) else out.prev_sample
        self.tr.step(self.index, timestep, latents, scheduler)
        self.index += 1
        self.calls = 0
        self.last = latents
        return out

    def _begin(
        self, scheduler: Any, timestep: Any, sample: torch.Tensor, extra: dict[str, Any]
    ) -> None:
        if self.before is None or self.timesteps is None:
            raise UnsupportedPipeline("the pipeline stepped its scheduler before set_timesteps")
        if self.conditioning is None:
            raise UnsupportedPipeline(
                f"{self.family.name}: the scheduler stepped before the denoiser ran"
            )
        self.step_args = extra
        if self.begin_index is None:
            # img2img skips the start of the schedule; a scheduler without set_begin_index is
            # not told, so the start is where the first step's timestep sits
            at = (scheduler.timesteps == timestep).nonzero()
            if not len(at):
                raise UnsupportedPipeline(
                    f"{self.family.name}: the first step's timestep {float(timestep)} is not in "
                    "the schedule"
                )
            if int(at[0]):
                self.begin_index = int(at[0])
        if self.tr.request.rng_mode != "framework" and (
            self.begin_index or not self.family.plain_initial_noise
        ):
            raise UnsupportedPipeline(
                f"{self.family.name}: z_N is not a plain draw of the request's noise here "
                f"({'a partial schedule' if self.begin_index else 'packed latents'}), so "
                f"{self.tr.request.rng_mode} noise cannot be checked; use framework noise"
            )
        recipe: dict[str, Any] = {"set_timesteps": self.timesteps}
        if self.begin_index is not None:
            recipe["begin_index"] = self.begin_index
        if extra:
            recipe["step_args"] = extra
        schedule, state = self.before
        self.tr.begin(
            scheduler,
            sample,
            self.conditioning,
            before=Begun(recipe=recipe, schedule=schedule, state=state),
        )


def _same(value: object, neutral: object) -> bool:
    return type(value) is type(neutral) and value == neutral


_ACTIVE = threading.local()
_INSTALL = threading.Lock()
_HOOKED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
_PIPE_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()


def _active(scheduler: Any) -> _Call | None:
    call: _Call | None = getattr(_ACTIVE, "call", None)
    return call if call is not None and call.scheduler is scheduler else None


def _wrap_scheduler_class(cls: type) -> None:
    """Route ``set_timesteps``, ``set_begin_index`` and ``step`` of ``cls`` through the
    recording of the calling thread (a no-op for every other call). Once per class."""
    with _INSTALL:
        for name, make in (
            ("set_timesteps", _wrapped_set_timesteps),
            ("set_begin_index", _wrapped_set_begin_index),
            ("step", _wrapped_step),
        ):
            current = getattr(cls, name, None)
            if current is None or getattr(current, "_samplerguard", False):
                continue
            wrapper = make(current)
            wrapper._samplerguard = True  # type: ignore[attr-defined]
            setattr(cls, name, wrapper)


def _wrapped_set_timesteps(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def set_timesteps(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        call = _active(self)
        if call is not None:
            call.set_timesteps(self, signature.bind(self, *args, **kwargs).arguments)
        return out

    return set_timesteps


def _wrapped_set_begin_index(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def set_begin_index(self: Any, begin_index: int = 0) -> Any:
        out = original(self, begin_index)
        call = _active(self)
        if call is not None:
            call.set_begin_index(self, begin_index)
        return out

    return set_begin_index


def _wrapped_step(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _active(self)
        if call is None:
            return original(self, *args, **kwargs)
        return call.step(original, self, args, kwargs)

    return step


def _denoiser_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    call: _Call | None = getattr(_ACTIVE, "call", None)
    if call is not None and call.denoiser is module:
        call.denoise(args, kwargs)


def _hook_denoiser(module: torch.nn.Module) -> None:
    with _INSTALL:
        if module not in _HOOKED:
            module.register_forward_pre_hook(_denoiser_hook, with_kwargs=True)
            _HOOKED.add(module)


def _pipe_lock(pipe: Any) -> threading.Lock:
    with _INSTALL:
        lock = _PIPE_LOCKS.get(pipe)
        if lock is None:
            lock = _PIPE_LOCKS[pipe] = threading.Lock()
        return lock


class InstrumentedPipeline:
    def __init__(self, pipe: Any, recorder: Recorder) -> None:
        self.family = family_for_pipeline(type(pipe).__name__)
        if not isinstance(getattr(pipe, self.family.denoiser, None), torch.nn.Module):
            raise UnsupportedPipeline(
                f"{type(pipe).__name__} has no {self.family.denoiser} to record"
            )
        self.pipe = pipe
        self.recorder = recorder

    def __call__(
        self, *args: Any, trajectory_request: TrajectoryRequest, **kwargs: Any
    ) -> RecordedOutput:
        pipe, family = self.pipe, self.family
        if trajectory_request.pipeline != family.name:
            raise UnsupportedPipeline(
                f"the request declares pipeline {trajectory_request.pipeline!r}, "
                f"{type(pipe).__name__} is {family.name!r}"
            )
        family.check_pipe(pipe)
        bound = bound_arguments(pipe, args, kwargs)
        for option, neutral in family.neutral_options.items():
            if option in bound and not _same(bound[option], neutral):
                shown = describe_argument(bound[option])
                raise UnsupportedPipeline(
                    f"{type(pipe).__name__}({option}={shown}) is not re-run by "
                    f"the {family.name} step program: leave it at {neutral!r} to be verified"
                )
        if trajectory_request.params is None:
            trajectory_request = dataclasses.replace(
                trajectory_request,
                params=request_params(family, trajectory_request, bound),
            )
        output_type = _call_output_type(pipe, bound)
        if output_type is not None and output_type != trajectory_request.output_type:
            # the recipe records how the pipeline makes its output, which the call decides
            trajectory_request = dataclasses.replace(trajectory_request, output_type=output_type)
        if getattr(_ACTIVE, "call", None) is not None:
            raise UnsupportedPipeline("a recorded pipeline call cannot run inside another")
        with _pipe_lock(pipe):
            _wrap_scheduler_class(type(pipe.scheduler))
            _hook_denoiser(getattr(pipe, family.denoiser))
            with self.recorder.trajectory(trajectory_request) as tr:
                call = _Call(tr, family, pipe, float(trajectory_request.guidance_scale))
                _ACTIVE.call = call
                try:
                    out = pipe(*args, **kwargs)
                finally:
                    _ACTIVE.call = None
                if call.last is None:
                    raise UnsupportedPipeline(f"{type(pipe).__name__} ran no denoising step")
                tr.end(call.last, output_bytes(family.outputs(out)))
        assert tr.commitment is not None
        return RecordedOutput(output=out, commitment=tr.commitment, trajectory=tr)


def instrument(pipe: Any, recorder: Recorder) -> InstrumentedPipeline:
    """Wrap ``pipe`` so each call is recorded. Raises
    :class:`~samplerguard.families.UnsupportedPipeline` for a pipeline no family covers."""
    return InstrumentedPipeline(pipe, recorder)
