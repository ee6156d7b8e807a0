"""The single-step re-check: does the declared model, sampler and recipe produce this transition?

Order (DESIGN.md): DSSE signature (done by :meth:`Commitment.verify`, so a :class:`Commitment`
here is already authentic), then Merkle inclusion of every opened leaf, then the opened tensors
against the committed digests, then one reference step, then the score against τ. Nothing is
scored against a latent the root does not commit.

The score is the error relative to what the *model output* contributes to the step:
``‖ẑ − z‖ / ‖∂ẑ/∂log ε‖``, where the denominator is how far the step's output moves when the
model output ε is scaled by 1 + h (divided by h), and likewise for every tensor of the sampler
state. Every diffusers update is affine in ε, so the score is the relative error of the model
output that would explain the committed output: a build that computes ε to 1e-6 relative scores
about 1e-6 at every step of every sampler, and a model whose output is off by 1e-4 scores about
1e-4. The plain ``‖ẑ − z‖ / ‖z‖`` (DESIGN.md's rel-L2) is still reported; it is not compared with
τ, because it depends on how much of the latent the step rewrites: on early steps of a
data-prediction solver the model output is amplified by σ/α, on late steps it barely moves the
latent, and one τ cannot fit both. On the same build every score is exactly 0.

The reference step is a :class:`StepProgram`: the same function the pipeline runs (for the
bundled model, :func:`samplerguard.models.digits.denoise_step`), bound to a reference model whose
digest the caller has checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from samplerguard.commitment.digest import tensor_digest
from samplerguard.commitment.draws import noise_from
from samplerguard.commitment.fingerprint import reproduce
from samplerguard.commitment.merkle import verify_inclusion
from samplerguard.commitment.opening import Opening
from samplerguard.commitment.plan import (
    begin_index,
    build_scheduler,
    check_schedule_digest,
    loop_timesteps,
    sampler_plan,
    step_args,
    timesteps_call,
)
from samplerguard.commitment.state import SamplerState, capture_schedule, capture_state
from samplerguard.commitment.statement import Commitment
from samplerguard.commitment.trajectory import (
    LEAF_INITIAL,
    LEAF_RECIPE,
    LEAF_STEP,
    canonical,
    leaf_index_of_step,
)
from samplerguard.errors import MalformedInputError, VerificationError

__all__ = [
    "RecheckResult",
    "StepProgram",
    "build_scheduler",
    "check_schedule_call",
    "recheck_step",
    "rel_l2",
]


class StepProgram(Protocol):
    """One denoising step of a pipeline family, bound to a reference model."""

    #: the pipeline family this program reproduces (the recipe's ``pipeline``)
    pipeline: str
    #: digest of the reference model's weights (the recipe's ``model.digest``)
    model_digest: str
    device: torch.device

    def step(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        guidance_scale: float,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class RecheckResult:
    request_id: str
    step: int
    #: ‖ẑ − z‖ / ‖z‖ (DESIGN.md), reported, not compared with τ
    rel_l2: float
    #: the worst sampler-state tensor's error relative to the model output's share of it
    state_rel_l2: float
    #: the latent's error relative to the model output's share of the step
    model_rel_l2: float
    tau: float
    reasons: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return not self.reasons and self.worst <= self.tau

    @property
    def worst(self) -> float:
        """The score compared with τ: the worst of the latent's and the sampler state's error,
        each relative to what the model output contributes to it (the module docstring)."""
        scores = (self.rel_l2, self.state_rel_l2, self.model_rel_l2)
        if any(math.isnan(x) for x in scores):  # max() would drop a NaN: it fails instead
            return math.inf
        return max(self.state_rel_l2, self.model_rel_l2)


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    """‖got − want‖₂ / ‖want‖₂ in float64; 0 when both are zero, inf on a shape mismatch."""
    if got.shape != want.shape:
        return math.inf
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    denom = float(torch.linalg.vector_norm(w))
    num = float(torch.linalg.vector_norm(g - w))
    if denom == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / denom


def _share_rel_l2(got: torch.Tensor, want: torch.Tensor, share: torch.Tensor) -> float:
    """‖got − want‖₂ / ‖share‖₂ in float64: the error relative to the model output's share;
    0 when both are zero, inf when only the error is (nothing the model output moves may
    differ), inf on a shape mismatch."""
    if got.shape != want.shape or want.shape != share.shape:
        return math.inf
    denom = float(torch.linalg.vector_norm(share.detach().double().cpu()))
    num = float(
        torch.linalg.vector_norm(got.detach().double().cpu() - want.detach().double().cpu())
    )
    if denom == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / denom


def _state_rel_l2(
    got: SamplerState, want: SamplerState, share: Mapping[str, torch.Tensor] | None = None
) -> float:
    """The worst tensor's error relative to ``share[path]`` (its own norm without ``share``);
    scalars (counters, orders) must match exactly."""
    g, w = got.tensors(), want.tensors()
    if set(g) != set(w) or (share is not None and set(share) != set(g)):
        return math.inf
    worst = 0.0
    for k in g:
        r = rel_l2(g[k], w[k]) if share is None else _share_rel_l2(g[k], w[k], share[k])
        if math.isnan(r):  # a NaN anywhere in the state is a mismatch, not a zero
            return math.inf
        worst = max(worst, r)
    for k, v in want.values.items():  # scalars (counters, orders) must match exactly
        if not isinstance(v, torch.Tensor | list) and got.values.get(k) != v:
            return math.inf
    return worst


def _leaf_doc(opening: Opening, commitment: Commitment, index: int, kind: str) -> dict[str, Any]:
    leaf = opening.leaf(index)
    data = leaf.leaf_bytes()
    # (2): inclusion of the opened leaf under the signed root
    if not verify_inclusion(data, index, commitment.tree_size, leaf.proof_bytes(), commitment.root):
        raise VerificationError(
            f"leaf {index} is not included under the committed root "
            f"{commitment.root.hex()[:16]}… (tree size {commitment.tree_size})",
            check="inclusion",
            expected=commitment.root.hex(),
        )
    try:
        doc = json.loads(data)
    except ValueError:
        raise VerificationError(f"committed leaf {index} is not JSON", check="leaf") from None
    if not isinstance(doc, dict) or doc.get("type") != kind:
        got = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise VerificationError(
            f"leaf {index} has type {got!r}, expected {kind!r}",
            check="leaf",
            found=str(got),
            expected=kind,
        )
    return doc


def _expect_digest(what: str, tensor: torch.Tensor, committed: object) -> None:
    got = tensor_digest(tensor)
    if got != committed:
        raise VerificationError(
            f"opened {what} digest mismatch: got {got[:23]}…, committed {str(committed)[:23]}…",
            check="digest",
            found=got,
            expected=str(committed),
        )


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _to_device(scheduler: Any, state: SamplerState, device: torch.device) -> None:
    if device.type == "cpu":
        return
    for name in state.values:
        value = getattr(scheduler, name)
        if isinstance(value, torch.Tensor):
            setattr(scheduler, name, value.to(device))
        elif isinstance(value, list):
            setattr(
                scheduler,
                name,
                [v.to(device) if isinstance(v, torch.Tensor) else v for v in value],
            )


def check_schedule_call(
    recipe: Mapping[str, Any], program: StepProgram, latent_shape: tuple[int, ...]
) -> None:
    """The schedule is the declared sampler's, set the way the family's pipeline sets it: a
    provider cannot smuggle custom ``sigmas`` (σ_i = σ_i+1 makes a step a no-op) or a ``mu``
    through ``set_timesteps``, or start the loop late, unless the family's pipeline does so
    itself (img2img's strength)."""
    expected = getattr(program, "expected_timesteps", None)
    want = (
        expected(recipe, latent_shape)
        if expected is not None
        else {"num_inference_steps": recipe.get("steps")}
    )
    got = timesteps_call(recipe)
    if got != want:
        raise VerificationError(
            f"the schedule was set with {_brief(got)}, the {program.pipeline} pipeline sets it "
            f"with {_brief(want)} (a custom schedule)",
            check="schedule",
            found=_brief(got),
            expected=_brief(want),
        )
    begin = begin_index(recipe)
    if begin and not getattr(program, "partial_schedule", False):
        raise VerificationError(
            f"the loop starts at schedule index {begin}; the {program.pipeline} pipeline runs "
            "the whole schedule",
            check="schedule",
            found=str(begin),
            expected="0",
        )


#: how far a timestep computed by another build may lie from this verifier's (relative): the
#: last bits of a float32 schedule, far below one step of any schedule
_T_REL = 1e-6


def _brief(call: Mapping[str, Any]) -> str:
    return str(
        {k: ([*v[:4], "…"] if isinstance(v, list) and len(v) > 4 else v) for k, v in call.items()}
    )[:300]


def _replay(noise: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    yield from noise


#: The relative change of the model output the share is measured with: small enough that a
#: clipping step stays on one side of its clip, large enough that float32 rounding of the step's
#: output is 1e-5 of the difference.
_H = 1.0 / 16


class _ObservedStep:
    """Records the reference program's call of ``scheduler.step`` (the model output and the
    arguments), so the step can be run again with the model output scaled."""

    def __init__(self, scheduler: Any, extra: Mapping[str, Any] | None = None) -> None:
        self._scheduler = scheduler
        self._extra = dict(extra or {})
        self.calls: list[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]] = []

    def __enter__(self) -> None:
        real = self._scheduler.step

        def step(model_output: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            kwargs = {**self._extra, **kwargs}
            self.calls.append((model_output, args, kwargs))
            return real(model_output, *args, **kwargs)

        self._scheduler.step = step

    def __exit__(self, *exc: object) -> None:
        del self._scheduler.step  # the class's method again; the state capture never sees it

    def share(
        self,
        fresh: Callable[[], tuple[Any, dict[str, torch.Tensor]]],
        noise: list[torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The model output's share of the step's latent and of every state tensor: the step
        run from a fresh scheduler at ``(1 + h)·ε`` and at ``ε``, with the same noise, the
        difference over h."""
        if len(self.calls) != 1:
            raise VerificationError(
                f"the reference program stepped its scheduler {len(self.calls)} times, the "
                "re-check expects once",
                check="recheck",
                found=str(len(self.calls)),
                expected="1",
            )
        model_output, args, kwargs = self.calls[0]
        runs = []
        for scale in (1.0 + _H, 1.0):
            scheduler, schedule = fresh()
            if hasattr(scheduler, "is_scale_input_called"):
                scheduler.is_scale_input_called = True  # the program scaled ε's input already
            draws = _replay(noise)

            def replay(
                shape: tuple[int, ...],
                dtype: torch.dtype,
                dev: torch.device,
                draws: Iterator[torch.Tensor] = draws,
            ) -> Any:
                n = next(draws, None)
                if n is None or tuple(n.shape) != shape:
                    raise VerificationError(
                        "the step drew other noise when re-run", check="recheck"
                    )
                return n.to(dtype=dtype, device=dev)

            with noise_from(replay):
                out = scheduler.step(model_output * scale, *args, **kwargs)
            latent = out[0] if isinstance(out, tuple) else getattr(out, "prev_sample", out)
            if not isinstance(latent, torch.Tensor):
                raise VerificationError(
                    "the declared scheduler's step returned no latent", check="recheck"
                )
            runs.append((latent, capture_state(scheduler, schedule).tensors()))
        (z1, s1), (z0, s0) = runs
        shares = {k: (s1[k].double() - s0[k].double()) / _H for k in s1 if k in s0}
        return (z1.double() - z0.double()) / _H, shares


def recheck_step(
    commitment: Commitment,
    opening: Opening,
    program: StepProgram,
    *,
    tau: float,
) -> RecheckResult:
    """Re-run one committed step. Raises :class:`VerificationError` for anything that is not a
    clean transition of the declared model; returns the measured rel-L2 otherwise (the caller
    compares it with ``tau`` via :attr:`RecheckResult.accepted`)."""
    step = opening.step
    meta = opening.meta
    # (1): the opening must be for this commitment
    if meta.request_id != commitment.request_id:
        raise VerificationError(
            f"opening is for request {meta.request_id!r}, commitment is for "
            f"{commitment.request_id!r}",
            check="commitment",
            found=meta.request_id,
            expected=commitment.request_id,
        )
    if meta.root != commitment.root.hex() or meta.tree_size != commitment.tree_size:
        raise VerificationError(
            f"opening claims root {meta.root[:16]}…/size {meta.tree_size}, commitment has "
            f"{commitment.root.hex()[:16]}…/size {commitment.tree_size}",
            check="commitment",
            found=meta.root,
            expected=commitment.root.hex(),
        )
    if step >= commitment.n_steps:
        raise VerificationError(
            f"step {step} is outside the committed {commitment.n_steps} steps",
            check="commitment",
            found=str(step),
        )

    # (2): inclusion of the recipe, initial, previous and current leaves
    recipe_doc = _leaf_doc(opening, commitment, 0, LEAF_RECIPE)
    if canonical(recipe_doc) != canonical(commitment.recipe):
        raise VerificationError(
            "the committed recipe leaf differs from the signed recipe", check="digest"
        )
    initial_doc = _leaf_doc(opening, commitment, 1, LEAF_INITIAL)
    prev_index = leaf_index_of_step(step) - 1
    prev_doc = initial_doc if step == 0 else _leaf_doc(opening, commitment, prev_index, LEAF_STEP)
    cur_doc = _leaf_doc(opening, commitment, leaf_index_of_step(step), LEAF_STEP)
    if cur_doc.get("index") != step or (step and prev_doc.get("index") != step - 1):
        raise VerificationError(
            f"leaf indices do not match step {step}", check="leaf", expected=str(step)
        )

    # (3): the opened tensors are the committed ones
    _expect_digest("input latent", opening.latent_in, prev_doc.get("latent"))
    _expect_digest("output latent", opening.latent_out, cur_doc.get("latent"))
    if opening.state_in.digest() != prev_doc.get("state"):
        raise VerificationError(
            "opened input sampler state does not match its committed digest", check="state"
        )
    if opening.state_out.digest() != cur_doc.get("state"):
        raise VerificationError(
            "opened output sampler state does not match its committed digest", check="state"
        )
    committed_noise = cur_doc.get("noise")
    if not isinstance(committed_noise, list) or len(committed_noise) != len(opening.noise):
        raise VerificationError(
            "opened step noise does not match the committed noise count", check="noise"
        )
    for k, (n, d) in enumerate(zip(opening.noise, committed_noise, strict=True)):
        _expect_digest(f"noise {k}", n, d)
    committed_cond = recipe_doc.get("conditioning")
    if not isinstance(committed_cond, dict) or set(committed_cond) != set(opening.conditioning):
        raise VerificationError(
            "opened conditioning tensors do not match the recipe's", check="digest"
        )
    for name, t in opening.conditioning.items():
        _expect_digest(f"conditioning {name!r}", t, committed_cond[name])

    # (4): the declared model, sampler and schedule, rebuilt from the declared class and config
    # only; the opened states must be ones a genuine instance carries (commitment.plan)
    if recipe_doc.get("pipeline") != program.pipeline:
        raise VerificationError(
            f"recipe declares pipeline {recipe_doc.get('pipeline')!r}, reference program is "
            f"{program.pipeline!r}",
            check="model",
            found=str(recipe_doc.get("pipeline")),
            expected=program.pipeline,
        )
    model = recipe_doc.get("model")
    declared_model = model.get("digest") if isinstance(model, dict) else None
    if declared_model != program.model_digest:
        raise VerificationError(
            f"recipe declares model {str(declared_model)[:23]}…, the reference model is "
            f"{program.model_digest[:23]}…",
            check="model",
            found=str(declared_model),
            expected=program.model_digest,
        )
    declared_shape = recipe_doc.get("latent_shape")
    if declared_shape != list(opening.latent_in.shape) or (
        opening.latent_out.shape != opening.latent_in.shape
        or opening.latent_out.dtype != opening.latent_in.dtype
    ):
        raise VerificationError(
            f"opened latents {tuple(opening.latent_in.shape)} -> "
            f"{tuple(opening.latent_out.shape)} do not have the declared latent shape "
            f"{declared_shape}",
            check="shape",
            found=str(tuple(opening.latent_in.shape)),
            expected=str(declared_shape),
        )
    check_schedule_call(recipe_doc, program, tuple(opening.latent_in.shape))
    plan = sampler_plan(recipe_doc, opening.latent_in.shape, opening.latent_in.dtype)
    same_schedule = check_schedule_digest(
        initial_doc.get("schedule"), plan, recipe_doc, program.device
    )
    if plan.n_steps != commitment.n_steps:
        raise VerificationError(
            f"declared sampler runs {plan.n_steps} steps for steps={recipe_doc.get('steps')}, "
            f"commitment has {commitment.n_steps}",
            check="sampler",
            found=str(plan.n_steps),
            expected=str(commitment.n_steps),
        )
    t_value = plan.timesteps[step]
    committed_t = float(_number(cur_doc.get("timestep")))
    if t_value != committed_t and (
        same_schedule or not math.isclose(t_value, committed_t, rel_tol=_T_REL, abs_tol=_T_REL)
    ):
        raise VerificationError(
            f"step {step} committed timestep {cur_doc.get('timestep')}, declared schedule has "
            f"{t_value}",
            check="schedule",
            found=str(cur_doc.get("timestep")),
            expected=str(t_value),
        )
    draws_planned = plan.noise[step]
    if len(opening.noise) != len(draws_planned) or any(
        tuple(n.shape) != shape or n.dtype != dtype
        for n, (shape, dtype) in zip(opening.noise, draws_planned, strict=False)
    ):
        raise VerificationError(
            f"step {step} committed {len(opening.noise)} noise tensors; the declared sampler "
            f"draws {len(draws_planned)} of shapes {[list(s) for s, _ in draws_planned]}",
            check="noise",
            found=str(len(opening.noise)),
            expected=str(len(draws_planned)),
        )
    plan.states[step + 1].check(opening.state_out, f"after step {step}")
    scheduler = plan.scheduler(recipe_doc, opening.state_in, step)
    schedule = capture_schedule(scheduler, timesteps_call(recipe_doc))
    t = loop_timesteps(scheduler, recipe_doc)[step]
    extra = step_args(recipe_doc)
    guidance = recipe_doc.get("guidance_scale")
    if not isinstance(guidance, int | float) or isinstance(guidance, bool):
        raise MalformedInputError("recipe has no numeric guidance_scale")

    # (5): one reference step from the opened latent and state, replaying the committed noise
    device = program.device
    _to_device(scheduler, opening.state_in, device)
    draws = _replay([n.to(device) for n in opening.noise])
    used = 0

    def replay(shape: tuple[int, ...], dtype: torch.dtype, dev: torch.device) -> torch.Tensor:
        nonlocal used
        n = next(draws, None)
        if n is None:
            raise VerificationError(
                f"step {step} drew more noise than was committed", check="noise"
            )
        if tuple(n.shape) != shape:
            raise VerificationError(
                f"committed noise has shape {tuple(n.shape)}, step drew {shape}",
                check="noise",
                found=str(tuple(n.shape)),
                expected=str(shape),
            )
        used += 1
        return n.to(dtype=dtype, device=dev)

    # the pipeline's step arguments (eta …) go into every step call, the share's runs too
    observed = _ObservedStep(scheduler, extra)
    runtime = recipe_doc.get("runtime")
    with torch.no_grad(), noise_from(replay), reproduce(runtime, device), observed:
        z_hat = program.step(
            scheduler,
            opening.latent_in.to(device),
            t,
            {k: v.to(device) for k, v in opening.conditioning.items()},
            float(guidance),
        )
    reasons = []
    if used != len(opening.noise):
        reasons.append(f"step drew {used} noise tensors, {len(opening.noise)} were committed")
    state_hat = capture_state(scheduler, schedule)

    # (6): the model output's share of the step, measured from the same input, state and noise
    def fresh() -> tuple[Any, dict[str, torch.Tensor]]:
        again = plan.scheduler(recipe_doc, opening.state_in, step)
        again_schedule = capture_schedule(again, timesteps_call(recipe_doc))
        _to_device(again, opening.state_in, device)
        return again, again_schedule

    with torch.no_grad(), reproduce(runtime, device):
        z_share, state_share = observed.share(fresh, [n.to(device) for n in opening.noise])
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the captured states are non-blocking host copies
    # (7): the score
    return RecheckResult(
        request_id=commitment.request_id,
        step=step,
        rel_l2=rel_l2(z_hat, opening.latent_out),
        state_rel_l2=_state_rel_l2(state_hat, opening.state_out, state_share),
        model_rel_l2=_share_rel_l2(z_hat, opening.latent_out, z_share),
        tau=tau,
        reasons=reasons,
    )
