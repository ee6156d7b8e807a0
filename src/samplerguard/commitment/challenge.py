"""One challenge of a committed request: the transcript checks, the noise stream, and windows of
re-checked steps, with the probability that a sparse deviation is caught.

Steps are drawn only after the signed root is held, from the challenger's CSPRNG, as ``k``
windows of ``w`` consecutive steps. Every opened step is re-checked from its own committed input,
so a window catches any deviation inside it: a periodic deviation (feature caching every 4th
step) is caught by every whole window at least as long as its period. Windows are clipped at
the ends so that the first and last steps are covered as often as the others.

The tolerance: when the verifier reproduces the provider's build (no fingerprint difference
after the settable flags are set), an honest step re-checks to exactly 0 and the tolerance is 0,
so even a 1e-6 nudge of one latent fails when it is challenged. Otherwise the caller's τ applies:
the verifier takes it from the policy's calibration entry for that pair of builds
(:func:`samplerguard.policy.tolerance.select_tolerance`; ``samplerguard calibrate`` measures it).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from samplerguard.commitment.digest import tensor_digest
from samplerguard.commitment.fingerprint import differences
from samplerguard.commitment.opening import Opening
from samplerguard.commitment.plan import sampler_plan
from samplerguard.commitment.recheck import RecheckResult, recheck_step
from samplerguard.commitment.statement import Commitment
from samplerguard.commitment.transcript import (
    TailFacts,
    Transcript,
    UncheckedBinding,
    check_noise_stream,
    check_transcript,
)
from samplerguard.errors import MalformedInputError, VerificationError

__all__ = [
    "ChallengeResult",
    "catch_probability",
    "challenge_steps",
    "requests_for",
    "verify_challenge",
]

#: ``draw(shape, dtype) -> tensor``: the request's noise stream, in draw order
NoiseDraw = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]


def challenge_steps(
    n: int, k: int, window: int = 1, rng: secrets.SystemRandom | None = None
) -> list[int]:
    """``k`` windows of ``window`` consecutive steps in ``[0, n)`` (sorted, de-duplicated), each
    step equally likely to be covered. Windows longer than the trajectory cover all of it."""
    if n < 1 or k < 1 or window < 1:
        raise MalformedInputError(f"cannot draw {k} windows of {window} steps from {n} steps")
    if window >= n:
        return list(range(n))
    rng = rng or secrets.SystemRandom()
    w = window
    steps: set[int] = set()
    for _ in range(k):
        # starts in [-(w-1), n-1], windows clipped to [0, n): every step, the first and the
        # last included, is covered by a window with the same probability w / (n + w - 1)
        start = rng.randrange(-(w - 1), n)
        steps.update(range(max(start, 0), min(start + w, n)))
    return sorted(steps)


def catch_probability(n: int, checked: int, deviating: int) -> float:
    """The probability that ``checked`` distinct steps, drawn uniformly from ``n``, include at
    least one of ``deviating`` steps placed anywhere: ``1 - C(n-m, c) / C(n, c)``."""
    if deviating <= 0:
        return 0.0
    c = min(max(checked, 0), n)
    if deviating + c > n:
        return 1.0
    return 1.0 - math.comb(n - deviating, c) / math.comb(n, c)


def requests_for(target: float, per_request: float) -> int | None:
    """How many challenged requests catch a provider with probability ``target`` when each
    catches it with ``per_request`` (``None`` when never)."""
    if per_request >= 1.0:
        return 1
    if per_request <= 0.0:
        return None
    return max(1, math.ceil(math.log1p(-target) / math.log1p(-per_request)))


@dataclass
class ChallengeResult:
    steps: list[int]
    exact: bool
    tau: float
    results: list[RecheckResult] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    noise_checked: bool = False
    #: bindings this verifier could not check (see :class:`TailFacts`): a challenge whose
    #: steps all pass but with something unchecked is incomplete, not a pass
    unchecked: list[str] = field(default_factory=list)

    @property
    def worst(self) -> RecheckResult | None:
        if not self.results:
            return None
        return max(self.results, key=lambda r: (not r.accepted, r.worst))

    @property
    def accepted(self) -> bool:
        return all(r.accepted for r in self.results)


def verify_challenge(
    commitment: Commitment,
    transcript: Transcript,
    opening: Callable[[int], Opening],
    program: Any,
    *,
    steps: list[int],
    tau: float,
    noise: NoiseDraw | None = None,
    require_exact: bool = False,
) -> ChallengeResult:
    """Check the transcript (tail, request, schedule, noise counts), the noise stream when
    ``noise`` is given, then re-check every step in ``steps``. Raises
    :class:`VerificationError` for a failed binding check (with the check in the message);
    returns the re-check scores otherwise (see :attr:`ChallengeResult.accepted`)."""
    recipe: Mapping[str, Any] = commitment.recipe
    z = transcript.initial
    # (0): exact when this verifier reproduces the provider's build; a policy may demand it
    diff = differences(recipe.get("runtime"), program.device)
    exact = not diff
    if require_exact and not exact:
        raise VerificationError(
            "build: the policy demands exact re-checks, and this verifier cannot reproduce the "
            f"declared build ({'; '.join(diff[:4])})",
            check="build",
        )
    # (1): the declared sampler's plan; a recipe that cannot be built fails this request only
    plan = sampler_plan(recipe, tuple(z.shape), z.dtype)
    # (2): leaves, tail, output decode, request
    facts = check_transcript(commitment, transcript, plan, program)
    # (3): the whole noise stream, in the DRBG modes
    if noise is not None:
        check_noise_stream(facts, plan, noise, latent_dtype=z.dtype)
    # (4): the re-checks, at tolerance 0 on the same build
    result = ChallengeResult(
        steps=list(steps),
        exact=exact,
        tau=0.0 if exact else tau,
        differences=diff,
        noise_checked=noise is not None,
        unchecked=list(facts.unchecked),
    )
    first: Opening | None = None
    for step in steps:
        if not 0 <= step < commitment.n_steps:
            raise MalformedInputError(f"step {step} is outside the committed trajectory")
        opened = opening(step)
        if opened.step != step:
            raise VerificationError(
                f"step {opened.step} was served when step {step} was asked",
                check="commitment",
                found=str(opened.step),
                expected=str(step),
            )
        res = recheck_step(commitment, opened, program, tau=result.tau)
        first = first or opened
        result.results.append(res)
        if not res.accepted:
            break
    # (5): on another build, what could not be compared bit for bit
    _check_approximate(facts, first, result)
    return result


def _check_approximate(facts: TailFacts, opened: Opening | None, result: ChallengeResult) -> None:
    """The conditioning this verifier derives on another build than the provider's is compared
    with the opened (committed) conditioning at the challenge's tau: a swapped prompt or text
    encoder differs by far more than an encoder's drift across builds. A served output that is
    not the reference decode is explained by the build only if the steps do not reproduce bit
    for bit either: when every challenged step re-checks to exactly 0, the declared build is a
    false claim and the swapped output is rejected."""
    if not result.accepted:
        return
    # every challenged step reproduced bit for bit: the declared build is this verifier's in
    # all that matters, and whatever the build would explain must be exact too
    reproduced = bool(result.results) and all(r.worst == 0.0 for r in result.results)
    approximate = dict(facts.approximate)
    if facts.from_opened is not None and opened is not None:
        approximate.update(_from_opened(facts, opened, result))
    elif facts.from_opened is not None:
        result.unchecked.append("request conditioning (no step opened to compare it with)")
    if approximate:
        if opened is None:
            result.unchecked.append("request conditioning (no step opened to compare it with)")
        else:
            for name, derived in approximate.items():
                committed = opened.conditioning.get(name)
                if reproduced:
                    raise VerificationError(
                        f"request binding: conditioning {name!r} derived here differs from the "
                        "committed one, while every challenged step reproduces bit for bit: "
                        "the declared build does not explain it (a swapped prompt or text "
                        "encoder behind a false build claim)",
                        check="request-binding",
                    )
                score = _rel_l2(derived, committed)
                if score > result.tau:
                    raise VerificationError(
                        f"request binding: conditioning {name!r} derived here differs from the "
                        f"committed one by relL2 {score:.3g} > tau {result.tau:g} (a swapped "
                        "prompt or text encoder)",
                        check="request-binding",
                        found=f"relL2 {score:.3g}",
                        expected=f"<= {result.tau:g}",
                    )
    if facts.output_differs and reproduced:
        raise VerificationError(
            "output binding: the served output is not the reference decode of the final "
            "latent, while every challenged step reproduces bit for bit: the declared build "
            "does not explain the difference (a swapped output behind a false build claim)",
            check="output-binding",
        )


def _from_opened(
    facts: TailFacts, opened: Opening, result: ChallengeResult
) -> dict[str, torch.Tensor]:
    """A request that sent embeddings: the opened (committed) conditioning must hold them, and
    be what the pipeline derives from them (their repeats per image, the negative half). Exact
    on the same build; what may differ in its last bits here (another build) is returned, to be
    compared at the challenge's tau."""
    assert facts.from_opened is not None
    try:
        derived = facts.from_opened(opened.conditioning)
    except UncheckedBinding as exc:
        result.unchecked.append(f"request conditioning ({exc})")
        return {}
    except MalformedInputError as exc:
        raise VerificationError(f"request binding: {exc}", check="request-binding") from None
    if set(derived) != set(opened.conditioning):
        raise VerificationError(
            f"request binding: the request derives conditioning {sorted(derived)}, the recipe "
            f"commits {sorted(opened.conditioning)}",
            check="request-binding",
        )
    inexact = {}
    for name, tensor in derived.items():
        committed = opened.conditioning[name]
        if tensor_digest(tensor.to(committed.dtype)) == tensor_digest(committed):
            continue
        if not facts.inexact:
            raise VerificationError(
                f"request binding: conditioning {name!r} is not what the request's embeddings "
                "derive (their repeats or the negative half differ)",
                check="request-binding",
            )
        inexact[name] = tensor
    return inexact


def _rel_l2(derived: torch.Tensor, committed: torch.Tensor | None) -> float:
    """The worst relative L2 distance over the rows (first dimension) of two tensors: one
    swapped prompt among many is not diluted by the rows that match."""
    if committed is None or tuple(committed.shape) != tuple(derived.shape):
        return math.inf
    a = derived.detach().to("cpu", torch.float64)
    b = committed.detach().to("cpu", torch.float64)
    rows = a.shape[0] if a.dim() else 1
    den = b.reshape(rows, -1).norm(dim=1)
    diff = (a - b).reshape(rows, -1).norm(dim=1)
    if bool(((den == 0) & (diff > 0)).any()):
        return math.inf
    return float(torch.where(den > 0, diff / den, 0.0).max())
