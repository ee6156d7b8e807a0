"""The reference plan of a declared sampler: what a genuine scheduler carries into every step.

An adaptive provider controls the tensors and the state it hands the hook. If the verifier
installed an opened sampler state as it came, the state could carry a schedule of the
provider's choosing (``sigmas`` with σ_i = σ_i+1 makes a step an exact no-op), a shifted step
counter, or attributes the declared class never has. So the verifier never trusts the shape of
an opened state. It builds the declared scheduler class from its declared config, and runs it
dry through every step twice, on two different inputs (the model output, the sample and the noise
all 0, then all 1). That gives, for every step:

* the **skeleton** of the state a genuine instance carries into the step: which attributes,
  which of them are tensors, lists, ``None``; the values of all its scalars (counters, orders,
  Heun's ``dt``); an opened state must match it exactly;
* which tensors are **fixed**: equal in both dry runs, so independent of the data (a schedule
  tensor a scheduler re-assigns, for instance). An opened fixed tensor must equal the plan's
  bit for bit; only data-dependent tensors (multistep histories, Heun's first-order sample) are
  taken from the opening, and those are bound by the chain of committed states;
* the **noise** the step draws (count, shapes, dtypes), and the timesteps.

Schedule tensors themselves are never part of a state: the verifier's scheduler keeps the ones
its own ``set_timesteps`` computed.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from samplerguard.commitment.digest import tensor_digest
from samplerguard.commitment.draws import noise_from, observe_noise
from samplerguard.commitment.fingerprint import differences
from samplerguard.commitment.state import (
    SamplerState,
    capture_schedule,
    capture_state,
    schedule_digest,
    version_counter,
)
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.policy.schedule import schedule_id

__all__ = [
    "SAMPLER_VARIANTS",
    "SCHEDULE_KEYS",
    "SamplerPlan",
    "StatePlan",
    "begin_index",
    "build_scheduler",
    "check_schedule_digest",
    "check_scheduler_config",
    "loop_timesteps",
    "reset_to_fresh",
    "sampler_plan",
    "step_args",
    "timesteps_call",
]

_MAX_STEPS = 1000
_CACHE_SIZE = 32


def _decode_floats(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$float"} and value["$float"] in ("inf", "-inf", "nan"):
            return float(value["$float"])
        return {k: _decode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_floats(v) for v in value]
    return value


def _float_fields(cls: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The signed recipe is canonical JSON (RFC 8785), which writes 1.0 as 1: a float config
    field arrives as an int, and a scheduler keeps it as one (FlowMatch's ``_shift``), so the
    fields the class declares as floats are made floats again."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    out = dict(config)
    for key, value in config.items():
        param = params.get(key)
        if param is None or isinstance(value, bool) or not isinstance(value, int):
            continue
        if isinstance(param.default, float) or "float" in str(param.annotation):
            out[key] = float(value)
    return out


def build_scheduler(recipe: Mapping[str, Any]) -> Any:
    """A fresh scheduler of the declared class and config, with the declared steps set.

    Any failure to build it (an unknown class, a config diffusers refuses, a ``set_timesteps``
    that raises) is a :class:`VerificationError` of this recipe, never an exception that could
    stop the caller's work on other trajectories."""
    import diffusers

    from samplerguard.policy.spec import KNOWN_SAMPLERS

    sampler, cls_name = recipe.get("sampler"), recipe.get("scheduler_class")
    if not isinstance(sampler, str) or sampler not in KNOWN_SAMPLERS:
        raise VerificationError(
            f"recipe declares unknown sampler {str(sampler)[:40]!r}; known: "
            f"{sorted(KNOWN_SAMPLERS)}",
            check="sampler",
            found=str(sampler),
        )
    if KNOWN_SAMPLERS[sampler] != cls_name:
        raise VerificationError(
            f"recipe declares sampler {sampler!r} but scheduler class {str(cls_name)[:60]!r} "
            f"(expected {KNOWN_SAMPLERS[sampler]!r})",
            check="sampler",
            found=str(cls_name),
            expected=KNOWN_SAMPLERS[sampler],
        )
    config = recipe.get("scheduler_config")
    steps = recipe.get("steps")
    if (
        not isinstance(config, dict)
        or isinstance(steps, bool)
        or not isinstance(steps, int)
        or not 1 <= steps <= _MAX_STEPS
    ):
        raise MalformedInputError("recipe lacks a scheduler_config object or a steps count")
    call = timesteps_call(recipe)
    begin = begin_index(recipe)
    cls = getattr(diffusers, cls_name)
    _check_config_keys(cls, config)
    try:
        scheduler = cls.from_config(_float_fields(cls, _decode_floats(config)))
        scheduler.set_timesteps(**call)
        if begin is not None and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
    except Exception as exc:  # diffusers raises anything on a bad config
        raise VerificationError(
            f"the declared scheduler {cls_name} cannot be built from its config: "
            f"{type(exc).__name__}: {str(exc)[:200]}",
            check="sampler",
        ) from None
    if begin is not None and not 0 <= begin < len(scheduler.timesteps):
        raise VerificationError(
            f"the recipe's begin index {begin} is outside the declared schedule's "
            f"{len(scheduler.timesteps)} timesteps",
            check="schedule",
            found=str(begin),
        )
    return scheduler


#: Scheduler config keys that select the sampler's schedule: a provider may set them, and the
#: policy judges the result (its schedule id). Every other key of a declared config must be what
#: the reference checkpoint's config gives the declared class (``cls.from_config(reference)``,
#: with the declared sampler's own variant below): zero ``trained_betas``, a ``steps_offset``
#: past the training range or a clipped λ repeat σ and make steps no-ops, and ``solver_order``,
#: ``algorithm_type`` or ``final_sigmas_type`` run another solver than the declared one.
SCHEDULE_KEYS = frozenset(
    {"timestep_spacing", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"}
)
#: The config a sampler id fixes beyond its class's defaults.
SAMPLER_VARIANTS: dict[str, dict[str, Any]] = {
    "dpmpp_2m": {"algorithm_type": "dpmsolver++"},
    "dpmpp_2m_sde": {"algorithm_type": "sde-dpmsolver++"},
}


def _same_value(a: object, b: object) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)  # type: ignore[arg-type]
    return a == b


def _check_config_keys(cls: Any, config: Mapping[str, Any]) -> None:
    """A declared config says what runs. diffusers resets the keys a private
    ``_use_default_values`` lists, so private keys are refused. Keys the class does not take
    are kept by ``from_config`` for compatible classes and change nothing that runs (an
    ``EulerDiscreteScheduler.from_config(sd_config)`` carries them honestly); they are refused
    only where the policy would read them: when they change the schedule id the policy judges
    (``use_karras_sigmas`` on a class that ignores it would label a plain schedule karras)."""
    import inspect

    private = sorted(k for k in config if str(k).startswith("_"))
    if private:
        raise VerificationError(
            f"the declared scheduler config carries private keys {private[:4]} (diffusers "
            "rewrites the config by them)",
            check="sampler",
            found=str(private[:4]),
        )
    takes = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(config) - takes)
    taken = {k: v for k, v in config.items() if k in takes}
    if unknown and schedule_id(cls.__name__, config) != schedule_id(cls.__name__, taken):
        raise VerificationError(
            f"the declared scheduler config names {unknown[:4]}, which {cls.__name__} does "
            "not take and which change the schedule id the policy judges",
            check="sampler",
            found=str(unknown[:4]),
        )


def check_scheduler_config(recipe: Mapping[str, Any], reference: Mapping[str, Any]) -> None:
    """The declared scheduler config is the reference checkpoint's for the declared sampler,
    but for :data:`SCHEDULE_KEYS`. Raises :class:`VerificationError` naming the first key that
    differs."""
    scheduler = build_scheduler(recipe)
    cls = type(scheduler)
    variant = SAMPLER_VARIANTS.get(str(recipe.get("sampler")), {})
    declared = scheduler.config
    schedule = {k: declared[k] for k in SCHEDULE_KEYS if k in declared}
    try:
        base = _float_fields(cls, _decode_floats(dict(reference)))
        reference_scheduler = cls.from_config({**base, **variant, **schedule})
    except Exception as exc:  # diffusers raises anything on a bad config
        raise VerificationError(
            f"the reference scheduler config cannot configure {cls.__name__}: {type(exc).__name__}",
            check="sampler",
        ) from None
    # Some classes rewrite their own config in set_timesteps (DPM-Solver single-step turns on
    # lower_order_final for a step count its order does not divide); the recorded config is
    # the one after that call, so the reference goes through the same call.
    with contextlib.suppress(Exception):
        reference_scheduler.set_timesteps(**timesteps_call(recipe))
    expected = reference_scheduler.config
    for key in sorted(k for k in declared if not k.startswith("_") and k not in SCHEDULE_KEYS):
        if not _same_value(declared[key], expected.get(key)):
            got, want = str(declared[key])[:60], str(expected.get(key))[:60]
            raise VerificationError(
                f"scheduler config: {key} is {got}, the reference checkpoint's for "
                f"{recipe.get('sampler')} is {want} (another noise process or solver than the "
                "declared one)",
                check="sampler",
                found=got,
                expected=want,
            )


#: ``set_timesteps`` arguments a recipe may carry (beside the device, which is never recorded).
_TIMESTEP_ARGS = frozenset({"num_inference_steps", "sigmas", "mu", "timesteps"})
#: ``step`` arguments a recipe may carry: scalars that change the update (DDIM's eta, …).
_STEP_ARGS = frozenset(
    {"eta", "use_clipped_model_output", "s_churn", "s_tmin", "s_tmax", "s_noise"}
)
_MAX_SCHEDULE = 1001


def timesteps_call(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments the pipeline passed to ``set_timesteps``: the recipe's
    ``set_timesteps`` object (custom sigmas, Flux's ``mu``), or ``steps`` alone."""
    call = recipe.get("set_timesteps")
    if call is None:
        return {"num_inference_steps": recipe.get("steps")}
    if not isinstance(call, dict) or not set(call) <= _TIMESTEP_ARGS:
        raise MalformedInputError(f"the recipe's set_timesteps takes only {sorted(_TIMESTEP_ARGS)}")
    out: dict[str, Any] = {}
    for key, value in call.items():
        if key in ("sigmas", "timesteps"):
            if (
                not isinstance(value, list)
                or not 1 <= len(value) <= _MAX_SCHEDULE
                or not all(_is_number(v) for v in value)
            ):
                raise MalformedInputError(f"the recipe's set_timesteps {key} is not a number list")
            out[key] = [float(v) for v in value] if key == "sigmas" else [int(v) for v in value]
        elif key == "mu":
            if not _is_number(value):
                raise MalformedInputError("the recipe's set_timesteps mu is not a number")
            out[key] = float(value)
        else:
            if value is not None and (
                not isinstance(value, int)
                or isinstance(value, bool)
                or not 1 <= value <= _MAX_STEPS
            ):
                raise MalformedInputError("the recipe's set_timesteps step count is not 1..1000")
            out[key] = value
    return out


def begin_index(recipe: Mapping[str, Any]) -> int | None:
    """The index the loop starts at (img2img's strength, ``set_begin_index``), or None."""
    value = recipe.get("begin_index")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _MAX_SCHEDULE:
        raise MalformedInputError("the recipe's begin_index is not an integer 0..1000")
    return value


def step_args(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar arguments the pipeline passed to every ``scheduler.step``."""
    value = recipe.get("step_args", {})
    if not isinstance(value, dict) or not set(value) <= _STEP_ARGS:
        raise MalformedInputError(f"the recipe's step_args take only {sorted(_STEP_ARGS)}")
    for key, v in value.items():
        if not (isinstance(v, bool) or _is_number(v)):
            raise MalformedInputError(f"the recipe's step argument {key!r} is not a scalar")
    return dict(value)


def _is_number(value: object) -> bool:
    import math

    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def loop_timesteps(scheduler: Any, recipe: Mapping[str, Any]) -> Any:
    """The timesteps the pipeline's loop runs: the schedule from the recipe's begin index on
    (img2img skips the start of the schedule, whether or not its scheduler is told)."""
    begin = begin_index(recipe)
    return scheduler.timesteps[begin:] if begin else scheduler.timesteps


@dataclass(frozen=True)
class StatePlan:
    """What a genuine scheduler carries into one step."""

    skeleton: Mapping[str, Any]
    #: path -> (shape, dtype) of every tensor in the state
    tensors: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
    #: path -> digest of the tensors that do not depend on the data
    fixed: Mapping[str, str]

    def check(self, state: SamplerState, where: str) -> None:
        """Raise :class:`VerificationError` unless ``state`` is one a genuine scheduler of the
        declared class could carry here."""
        skeleton = state.skeleton()
        if skeleton != self.skeleton:
            extra = sorted(set(skeleton) - set(self.skeleton))
            missing = sorted(set(self.skeleton) - set(skeleton))
            differs = sorted(
                k for k in set(skeleton) & set(self.skeleton) if skeleton[k] != self.skeleton[k]
            )
            detail = "; ".join(
                part
                for part in (
                    f"attributes the declared scheduler does not carry: {extra[:5]}"
                    if extra
                    else "",
                    f"attributes missing: {missing[:5]}" if missing else "",
                    f"attributes that differ from the declared schedule's: {differs[:5]}"
                    if differs
                    else "",
                )
                if part
            )
            raise VerificationError(
                f"the sampler state {where} is not genuine ({detail})", check="state"
            )
        tensors = state.tensors()
        for path, (shape, dtype) in self.tensors.items():
            got = tensors[path]
            if tuple(got.shape) != shape or got.dtype != dtype:
                raise VerificationError(
                    f"the sampler state {where} holds {path!r} as {got.dtype} "
                    f"{tuple(got.shape)}, the declared scheduler carries {dtype} {shape}",
                    check="state",
                    found=f"{got.dtype} {tuple(got.shape)}",
                    expected=f"{dtype} {shape}",
                )
            want = self.fixed.get(path)
            if want is not None and tensor_digest(got) != want:
                raise VerificationError(
                    f"the sampler state {where} alters {path!r}, which the declared "
                    "schedule fixes (a smuggled schedule)",
                    check="schedule",
                )


@dataclass(frozen=True)
class SamplerPlan:
    """The dry run of a declared sampler for one latent shape and dtype."""

    scheduler_class: str
    schedule_digest: str
    timesteps: tuple[float, ...]
    init_noise_sigma: float
    #: ``states[i]``: carried into step i; ``states[n]``: after the last step
    states: tuple[StatePlan, ...]
    #: ``noise[i]``: the (shape, dtype) of every draw of step i, in order
    noise: tuple[tuple[tuple[tuple[int, ...], torch.dtype], ...], ...]
    #: the state of a fresh instance right after ``set_timesteps``
    fresh: SamplerState
    #: the names of the schedule attributes
    schedule_names: frozenset[str]
    #: the scheduler's order: the model calls one step of the pipeline's loop makes
    order: int = 1
    #: whether a step writes in place into a tensor it carried or returned earlier (PNDM adds
    #: into its running model output): a recorder must then copy the state tensors at each
    #: step instead of borrowing them (see ``SidecarSink.borrows``)
    writes_in_place: bool = False

    def reset(self, scheduler: Any) -> list[str]:
        """Bring a *reused* scheduler, just after ``set_timesteps``, to the state of a fresh
        one: diffusers' ``set_timesteps`` leaves some attributes of the previous run behind
        (Euler's ``is_scale_input_called``, Heun's ``sample``, UniPC's ``timestep_list``) that
        the step never reads before writing. Returns the names it changed; a scheduler of
        another class than the plan's is left alone."""
        if type(scheduler).__name__ != self.scheduler_class:
            return []
        schedule = {n: getattr(scheduler, n) for n in self.schedule_names if hasattr(scheduler, n)}
        live = capture_state(scheduler, schedule).skeleton()
        want = self.fresh.skeleton()
        changed = sorted(set(live) - set(want))
        for name in changed:
            delattr(scheduler, name)
        for name, value in self.fresh.values.items():
            if live.get(name, _MISSING) != want[name]:
                setattr(scheduler, name, _clone(value))
                changed.append(name)
        return changed

    @property
    def n_steps(self) -> int:
        return len(self.timesteps)

    def scheduler(self, recipe: Mapping[str, Any], state: SamplerState, step: int) -> Any:
        """A fresh scheduler of the declared class, at ``step``, carrying ``state``, which is
        checked against the plan first. Schedule attributes are never taken from ``state``."""
        self.states[step].check(state, f"carried into step {step}")
        scheduler = build_scheduler(recipe)
        for name, value in state.values.items():
            setattr(scheduler, name, _clone(value))
        return scheduler


_MISSING = object()


_FRESH: OrderedDict[str, tuple[frozenset[str], SamplerState]] = OrderedDict()


def _fresh_state(scheduler: Any, call: Mapping[str, Any]) -> tuple[frozenset[str], SamplerState]:
    """The schedule names and the state of a fresh instance of ``scheduler``'s class and config
    after ``set_timesteps(**call)`` (cached: a pipeline sets the same schedule request after
    request)."""
    import json

    key = json.dumps(
        [type(scheduler).__qualname__, dict(scheduler.config), dict(call)],
        sort_keys=True,
        default=str,
    )
    with _LOCK:
        hit = _FRESH.get(key)
        if hit is not None:
            _FRESH.move_to_end(key)
            return hit
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(**call)
    schedule = capture_schedule(fresh, call)
    out = (frozenset(schedule), capture_state(fresh, schedule))
    with _LOCK:
        _FRESH[key] = out
        while len(_FRESH) > _CACHE_SIZE:
            _FRESH.popitem(last=False)
    return out


def reset_to_fresh(scheduler: Any, call: Mapping[str, Any]) -> list[str]:
    """Bring a *reused* scheduler, just after ``set_timesteps(**call)``, to the state of a
    fresh instance of its class and config set the same way (see :meth:`SamplerPlan.reset`);
    returns the names it changed."""
    schedule_names, want = _fresh_state(scheduler, call)
    live = capture_state(
        scheduler, {n: getattr(scheduler, n) for n in schedule_names if hasattr(scheduler, n)}
    )
    live_skeleton, want_skeleton = live.skeleton(), want.skeleton()
    changed = sorted(set(live_skeleton) - set(want_skeleton))
    for name in changed:
        delattr(scheduler, name)
    for name, value in want.values.items():
        if live_skeleton.get(name, _MISSING) != want_skeleton[name]:
            setattr(scheduler, name, _clone(value))
            changed.append(name)
    return changed


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _ignore(_: torch.Tensor) -> None:
    """A dry run's draws are nobody's noise: an enclosing recorder must not see them."""


class _Writes:
    """Watches a dry run for in-place writes: every tensor a step receives, carries in its
    state or returns is remembered with its version counter, and a later change of a counter
    is a write into a tensor the step had already handed over."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[torch.Tensor, int]] = {}
        self.found = False

    def after_step(self, scheduler: Any, schedule: Mapping[str, torch.Tensor], *more: Any) -> None:
        for t, seen in self.seen.values():
            if version_counter(t) != seen:
                self.found = True
        live = [v for k, v in vars(scheduler).items() if k not in schedule]
        for value in [*live, *more]:
            for t in value if isinstance(value, list | tuple) else [value]:
                if isinstance(t, torch.Tensor) and id(t) not in self.seen:
                    version = version_counter(t)
                    if version is None:  # a tensor that keeps no counter: assume the worst
                        self.found = True
                    else:
                        self.seen[id(t)] = (t, version)


def _dry_run(
    recipe: Mapping[str, Any], shape: tuple[int, ...], dtype: torch.dtype, fill: float
) -> tuple[Any, dict[str, torch.Tensor], list[SamplerState], list[list[tuple[Any, ...]]], bool]:
    scheduler = build_scheduler(recipe)
    schedule = capture_schedule(scheduler, timesteps_call(recipe))
    extra = step_args(recipe)
    schedule_copy = {k: v.clone() for k, v in schedule.items()}
    sample = torch.full(shape, fill, dtype=dtype)
    states = [capture_state(scheduler, schedule)]
    noise: list[list[tuple[Any, ...]]] = []
    writes = _Writes()
    for t in loop_timesteps(scheduler, recipe):
        draws: list[tuple[Any, ...]] = []

        def zero(
            s: tuple[int, ...], d: torch.dtype, dev: torch.device, draws: list[Any] = draws
        ) -> torch.Tensor:
            # the noise varies between the two runs too, so a tensor derived from it (SA-Solver's
            # last_noise) is data, not schedule
            draws.append((tuple(s), d))
            return torch.full(s, fill, dtype=d, device=dev)

        try:
            with torch.no_grad(), noise_from(zero), observe_noise(_ignore):
                model_in = (
                    scheduler.scale_model_input(sample, t)
                    if hasattr(scheduler, "scale_model_input")
                    else sample
                )
                out = scheduler.step(model_in * 0 + fill, t, sample, return_dict=False, **extra)[0]
        except Exception as exc:
            raise VerificationError(
                f"the declared scheduler {type(scheduler).__name__} cannot step a "
                f"{tuple(shape)} {dtype} latent: {type(exc).__name__}: {str(exc)[:200]}",
                check="sampler",
            ) from None
        writes.after_step(scheduler, schedule, sample, out)
        sample = out.to(dtype) * 0 + fill
        states.append(capture_state(scheduler, schedule))
        noise.append(draws)
    writes.after_step(scheduler, schedule)
    return scheduler, schedule_copy, states, noise, writes.found


def _plan(recipe: Mapping[str, Any], shape: tuple[int, ...], dtype: torch.dtype) -> SamplerPlan:
    # ordinary tensors even when the caller runs under inference mode (a serving app's): the
    # dry run reads their version counters, which inference tensors do not keep
    with torch.inference_mode(False):
        scheduler, schedule, states_a, noise, writes = _dry_run(recipe, shape, dtype, 0.0)
        _, _, states_b, _, _ = _dry_run(recipe, shape, dtype, 1.0)
    plans = []
    for a, b in zip(states_a, states_b, strict=True):
        ta, tb = a.tensors(), b.tensors()
        fixed = {
            p: tensor_digest(t)
            for p, t in ta.items()
            if p in tb and t.shape == tb[p].shape and torch.equal(t, tb[p])
        }
        plans.append(
            StatePlan(
                skeleton=a.skeleton(),
                tensors={p: (tuple(t.shape), t.dtype) for p, t in ta.items()},
                fixed=fixed,
            )
        )
    return SamplerPlan(
        scheduler_class=type(scheduler).__name__,
        schedule_digest=schedule_digest(schedule),
        timesteps=tuple(float(t) for t in loop_timesteps(scheduler, recipe)),
        init_noise_sigma=float(getattr(scheduler, "init_noise_sigma", 1.0)),
        states=tuple(plans),
        noise=tuple(tuple(d) for d in noise),
        fresh=states_a[0],
        schedule_names=frozenset(schedule),
        order=int(getattr(scheduler, "order", 1)),
        writes_in_place=writes,
    )


def check_schedule_digest(
    committed: object, plan: SamplerPlan, recipe: Mapping[str, Any], device: Any
) -> bool:
    """Compare the committed schedule digest with the declared sampler's, as this verifier
    computes it. Returns True when they are equal. A build the verifier reproduces computes
    the schedule bit for bit, so a difference there is a tampered schedule. Another build
    (another CPU kernel level, another device) may compute it a few bits apart: that is
    tolerated, because every re-check runs with *this* verifier's schedule, never the
    provider's, and a provider that ran another schedule is caught by the steps it ran with
    it. Raises :class:`VerificationError` otherwise."""
    if committed == plan.schedule_digest:
        return True
    if not differences(recipe.get("runtime"), device):
        raise VerificationError(
            "committed schedule digest differs from the declared scheduler's schedule "
            "(tampered timesteps or sigmas)",
            check="schedule",
        )
    return False


_CACHE: OrderedDict[tuple[str, tuple[int, ...], str], SamplerPlan] = OrderedDict()
_LOCK = threading.Lock()


def sampler_plan(
    recipe: Mapping[str, Any], shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> SamplerPlan:
    """The plan of the recipe's declared sampler for latents of ``shape`` and ``dtype``
    (cached). Raises :class:`VerificationError` when the declared sampler cannot be built or
    run."""
    import json

    key_shape = tuple(int(s) for s in shape)
    if not key_shape or any(s <= 0 for s in key_shape) or len(key_shape) > 6:
        raise MalformedInputError(f"latent shape {key_shape} is not a tensor shape")
    try:
        ident = json.dumps(
            [
                recipe.get("sampler"),
                recipe.get("scheduler_class"),
                recipe.get("scheduler_config"),
                recipe.get("steps"),
                recipe.get("set_timesteps"),
                recipe.get("begin_index"),
                recipe.get("step_args"),
            ],
            sort_keys=True,
        )
    except (TypeError, ValueError):
        raise MalformedInputError("the recipe's sampler fields are not JSON") from None
    key = (ident, key_shape, str(dtype))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    plan = _plan(recipe, key_shape, dtype)
    with _LOCK:
        _CACHE[key] = plan
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return plan
