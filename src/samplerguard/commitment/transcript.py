"""The transcript: every leaf of a trajectory, z_N, the final latent and the consumer's request.

A challenged step proves one transition. What binds the rest of the trajectory to the request
and to the served output is checked on *every* challenged request, from the transcript, at the
cost of hashing a few kilobytes of leaves and one decode:

1. the leaves rebuild the signed root (no inclusion proofs needed: all leaves are present);
2. the recipe leaf is the signed recipe; the initial leaf commits the declared schedule;
3. every step leaf has its index, the declared schedule's timestep and the declared sampler's
   noise count;
4. the final latent is the last step's latent, and the transcript's final tensor is it;
5. the output leaf is the commitment's subject, and it is the reference decode of the final
   latent (:meth:`TailProgram.output`): a provider that serves another image is rejected with
   probability 1 on every challenged request;
6. the request parameters hash to the committed request digest, name the committed request id,
   ask for the declared steps and guidance, and re-derive the committed conditioning with the
   reference encoder (:meth:`TailProgram.conditioning`).

In the DRBG modes, :func:`check_noise_stream` regenerates the whole noise stream from the
escrowed seed and compares it with z_N and with every step's committed noise digests.

The transcript travels as one safetensors file (tensors ``initial``, ``final``; JSON in
``__metadata__["samplerguard.transcript"]``), like an opening, and is bounded the same way.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from samplerguard.commitment.digest import bytes_digest, tensor_digest
from samplerguard.commitment.fingerprint import differences
from samplerguard.commitment.merkle import merkle_root
from samplerguard.commitment.opening import parse_signed_tensors
from samplerguard.commitment.plan import (
    SamplerPlan,
    check_schedule_digest,
    check_scheduler_config,
)
from samplerguard.commitment.request import REQUIRED_PARAMS, request_digest
from samplerguard.commitment.statement import Commitment
from samplerguard.commitment.trajectory import (
    LEAF_FINAL,
    LEAF_INITIAL,
    LEAF_OUTPUT,
    LEAF_RECIPE,
    LEAF_STEP,
    TrajectoryRecord,
    canonical,
)
from samplerguard.errors import MalformedInputError, VerificationError

__all__ = [
    "TRANSCRIPT_KEY",
    "TailFacts",
    "TailProgram",
    "Transcript",
    "TranscriptMeta",
    "UncheckedBinding",
    "build_transcript",
    "check_noise_stream",
    "check_transcript",
]

TRANSCRIPT_KEY = "samplerguard.transcript"
_Leaf = Annotated[str, Field(max_length=1 << 16)]


class TranscriptMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    request_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
    tree_size: Annotated[int, Field(ge=5, le=4100)]
    root: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    leaves: Annotated[list[_Leaf], Field(min_length=5, max_length=4100)]
    #: the request parameters as the hook declared them (checked against the committed digest)
    request: dict[str, Any] | None = None


class UncheckedBinding(Exception):
    """A reference program cannot check this binding here (no reference component, or an input
    it does not re-derive): the challenge is incomplete, never a pass. The message names what
    is missing."""


class FromOpenedConditioning(UncheckedBinding):
    """The request binds its conditioning by digest (prompt embeddings the consumer sent), so
    it is checked against the conditioning a challenged step opens, with the program's
    ``conditioning_from_opened``; without an opened step it stays unchecked."""


class TailProgram(Protocol):
    """What a pipeline family's reference program offers for the tail and request checks."""

    pipeline: str

    def output(
        self,
        final_latent: torch.Tensor,
        recipe: Mapping[str, Any],
        request: Mapping[str, Any] | None = None,
    ) -> bytes:
        """The canonical output bytes the pipeline produces from ``final_latent``."""

    def conditioning(
        self, request: Mapping[str, Any], recipe: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The conditioning tensors the pipeline derives from the consumer's request."""


class Transcript:
    """A parsed transcript. Construct with :meth:`from_bytes` or :func:`build_transcript`."""

    def __init__(self, meta: TranscriptMeta, tensors: Mapping[str, torch.Tensor]) -> None:
        for name in ("initial", "final"):
            if name not in tensors:
                raise MalformedInputError(f"transcript lacks tensor {name!r}")
        if len(meta.leaves) != meta.tree_size:
            raise MalformedInputError(
                f"transcript carries {len(meta.leaves)} leaves for a tree of {meta.tree_size}"
            )
        self.meta = meta
        self.initial = tensors["initial"]
        self.final = tensors["final"]

    def leaf_bytes(self) -> list[bytes]:
        out = []
        for i, text in enumerate(self.meta.leaves):
            try:
                out.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise MalformedInputError(f"transcript leaf {i} is not base64") from None
        return out

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors = {"initial": self.initial.contiguous(), "final": self.final.contiguous()}
        return bytes(save(tensors, metadata={TRANSCRIPT_KEY: self.meta.model_dump_json()}))

    @classmethod
    def from_bytes(cls, data: bytes) -> Transcript:
        meta, tensors = parse_signed_tensors(data, TranscriptMeta, TRANSCRIPT_KEY, "transcript")
        return cls(meta, tensors)


def build_transcript(
    record: TrajectoryRecord,
    request_id: str,
    final_latent: torch.Tensor,
    request: Mapping[str, Any] | None,
) -> Transcript:
    meta = TranscriptMeta(
        request_id=request_id,
        tree_size=record.tree_size,
        root=record.root.hex(),
        leaves=[base64.b64encode(leaf).decode() for leaf in record.leaves],
        request=dict(request) if request is not None else None,
    )
    return Transcript(
        meta,
        {
            "initial": record.initial.latent.detach().cpu().clone(),
            "final": final_latent.detach().cpu().clone(),
        },
    )


@dataclass(frozen=True)
class TailFacts:
    """What the transcript established, for the noise-stream check."""

    initial_latent: torch.Tensor
    #: the committed noise digests of every step, in order
    step_noise: list[list[str]]
    #: bindings this verifier could not check for lack of a reference (a family without a
    #: reference decode or request encoder): the challenge is incomplete, never a pass
    unchecked: list[str] = dataclasses.field(default_factory=list)
    #: conditioning derived from the request on another build than the provider's, whose
    #: digest differs: compared with the opened conditioning at the challenge's tau
    approximate: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    #: the reference decode differs from the served output on another build: that is only
    #: explained by the build if the steps do not reproduce bit for bit either
    output_differs: bool = False
    #: for a request that binds its conditioning by digest: derives the conditioning from the
    #: opened (committed) one, after checking that it holds the request's embeddings (see
    #: :class:`FromOpenedConditioning`)
    from_opened: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    #: whether derived conditioning may differ in its last bits here (another build)
    inexact: bool = False


def _doc(data: bytes, index: int, kind: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
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


def check_transcript(
    commitment: Commitment, transcript: Transcript, plan: SamplerPlan, program: TailProgram
) -> TailFacts:
    """Run checks 1-6 of the module docstring. Raises :class:`VerificationError` naming the
    check that failed."""
    meta = transcript.meta
    # (1): the leaves rebuild the signed root
    if meta.request_id != commitment.request_id:
        raise VerificationError(
            f"transcript is for request {meta.request_id!r}, commitment is for "
            f"{commitment.request_id!r}",
            check="commitment",
            found=meta.request_id,
            expected=commitment.request_id,
        )
    leaves = transcript.leaf_bytes()
    if len(leaves) != commitment.tree_size or merkle_root(leaves) != commitment.root:
        raise VerificationError(
            "transcript: its leaves do not rebuild the committed root "
            f"{commitment.root.hex()[:16]}… (tree size {commitment.tree_size})",
            check="inclusion",
            expected=commitment.root.hex(),
        )
    n = commitment.n_steps
    # (2): recipe and initial leaves
    recipe = _doc(leaves[0], 0, LEAF_RECIPE)
    if canonical(recipe) != canonical(commitment.recipe):
        raise VerificationError(
            "transcript: the recipe leaf differs from the signed recipe", check="digest"
        )
    initial = _doc(leaves[1], 1, LEAF_INITIAL)
    try:
        check_schedule_digest(
            initial.get("schedule"), plan, recipe, getattr(program, "device", None)
        )
    except VerificationError as exc:
        raise VerificationError(
            f"transcript: {exc}", check=exc.check, found=exc.found, expected=exc.expected
        ) from None
    if initial.get("latent") != tensor_digest(transcript.initial):
        raise VerificationError("transcript: z_N does not match the initial leaf", check="digest")
    if recipe.get("latent_shape") != list(transcript.initial.shape):
        raise VerificationError(
            f"transcript: z_N has shape {list(transcript.initial.shape)}, the recipe declares "
            f"{recipe.get('latent_shape')}",
            check="shape",
            found=str(list(transcript.initial.shape)),
            expected=str(recipe.get("latent_shape")),
        )
    if plan.n_steps != n:
        raise VerificationError(
            f"transcript: the declared sampler runs {plan.n_steps} steps, the commitment has {n}",
            check="sampler",
            found=str(n),
            expected=str(plan.n_steps),
        )
    # (3): every step leaf
    step_noise: list[list[str]] = []
    last_latent = initial.get("latent")
    for i in range(n):
        doc = _doc(leaves[2 + i], 2 + i, LEAF_STEP)
        ts = doc.get("timestep")
        if doc.get("index") != i or not _same_number(ts, plan.timesteps[i]):
            raise VerificationError(
                f"transcript: step leaf {i} has index {doc.get('index')!r} and timestep "
                f"{ts!r}; the declared schedule has step {i} at {plan.timesteps[i]}",
                check="schedule",
                found=str(ts),
                expected=str(plan.timesteps[i]),
            )
        noise = doc.get("noise")
        if not isinstance(noise, list) or len(noise) != len(plan.noise[i]):
            raise VerificationError(
                f"transcript: step {i} commits {len(noise) if isinstance(noise, list) else 0} "
                f"noise draws, the declared sampler draws {len(plan.noise[i])}",
                check="noise",
                expected=str(len(plan.noise[i])),
            )
        step_noise.append([str(d) for d in noise])
        last_latent = doc.get("latent")
    # (4): the final latent is the last step's latent
    final = _doc(leaves[2 + n], 2 + n, LEAF_FINAL)
    if final.get("latent") != last_latent:
        raise VerificationError(
            "output binding: the committed final latent is not the last step's latent",
            check="output-binding",
        )
    if tensor_digest(transcript.final) != last_latent:
        raise VerificationError(
            "output binding: the transcript's final latent is not committed", check="output-binding"
        )
    # (5): the output is the decode of the final latent, and the signed subject
    output = _doc(leaves[3 + n], 3 + n, LEAF_OUTPUT)
    if output.get("digest") != commitment.output_digest:
        raise VerificationError(
            "output binding: the output leaf is not the signed subject",
            check="output-binding",
            found=str(output.get("digest")),
            expected=commitment.output_digest,
        )
    unchecked: list[str] = []
    output_differs = False
    # (4b): the declared scheduler config keeps the model's noise process
    reference = getattr(program, "scheduler_reference", None)
    try:
        if reference is None:
            raise UncheckedBinding(
                f"the {recipe.get('pipeline')} reference carries no scheduler config to hold "
                "the declared noise process to"
            )
        check_scheduler_config(recipe, reference)
    except UncheckedBinding as exc:
        unchecked.append(f"scheduler config ({exc})")
    decode = getattr(program, "output", None)
    try:
        if decode is None:
            raise UncheckedBinding(f"the {recipe.get('pipeline')} reference has no decode")
        decoded = bytes_digest(decode(transcript.final, recipe, meta.request))
        if decoded != commitment.output_digest:
            if _inexact_here(program, recipe):
                output_differs = True
                raise UncheckedBinding(
                    "the reference decode differs from the served output, and this verifier "
                    "runs another build than the provider's, where the decode is not bit-exact"
                )
            raise VerificationError(
                f"output binding: the served output {commitment.output_digest[:23]}… is not "
                f"the reference decode of the final latent {decoded[:23]}…",
                check="output-binding",
                found=commitment.output_digest,
                expected=decoded,
            )
    except UncheckedBinding as exc:
        unchecked.append(f"output binding ({exc})")
    check_initial = getattr(program, "check_initial_latent", None)
    try:
        if check_initial is not None:
            check_initial(recipe)
    except UncheckedBinding as exc:
        unchecked.append(f"initial latent ({exc})")
    # (6): the consumer's request
    approximate: dict[str, torch.Tensor] = {}
    deferred: list[Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]] = []
    unchecked += _check_request(
        commitment, recipe, meta.request, program, plan.order, approximate, deferred
    )
    return TailFacts(
        initial_latent=transcript.initial,
        step_noise=step_noise,
        unchecked=unchecked,
        approximate=approximate,
        output_differs=output_differs,
        from_opened=deferred[0] if deferred else None,
        inexact=_inexact_here(program, recipe),
    )


def _inexact_here(program: TailProgram, recipe: Mapping[str, Any]) -> bool:
    """Whether the reference's decode and encoder may differ in their last bits here from the
    provider's: a build this verifier does not reproduce, and a program whose derivations are
    not bit-exact on every build (a VAE, a text encoder; the digits decode is elementwise and
    its conditioning integers, so they are)."""
    if getattr(program, "exact_everywhere", False):
        return False
    return bool(differences(recipe.get("runtime"), getattr(program, "device", None)))


def _same_number(value: object, want: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and float(value) == want
    )


def _check_request(
    commitment: Commitment,
    recipe: Mapping[str, Any],
    params: Mapping[str, Any] | None,
    program: TailProgram,
    order: int,
    approximate: dict[str, torch.Tensor],
    deferred: list[Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]],
) -> list[str]:
    """Check the request binding; returns what could not be checked, puts in ``approximate``
    the conditioning to compare with the opened one at the challenge's tau, and in ``deferred``
    the derivation that needs the opened conditioning (a request that sent embeddings)."""
    committed = recipe.get("request")
    if committed is None or params is None:
        raise VerificationError(
            "request binding: the commitment binds no request parameters (the recipe has no "
            "request digest, or the sidecar kept no parameters)",
            check="request-binding",
        )
    try:
        got = request_digest(params)
    except MalformedInputError as exc:
        raise VerificationError(f"request binding: {exc}", check="request-binding") from None
    if got != committed:
        raise VerificationError(
            f"request binding: the parameters served hash to {got[:23]}…, the recipe commits "
            f"{str(committed)[:23]}…",
            check="request-binding",
            found=got,
            expected=str(committed),
        )
    if params["requestId"] != commitment.request_id:
        raise VerificationError(
            f"request binding: the parameters are for request {params['requestId']!r}, the "
            f"commitment for {commitment.request_id!r}",
            check="request-binding",
            found=str(params["requestId"]),
            expected=commitment.request_id,
        )
    keys = getattr(program, "request_keys", None)
    if keys is not None:
        extra = sorted(set(params) - set(REQUIRED_PARAMS) - set(keys))
        if extra:
            raise VerificationError(
                f"request binding: the request names {extra[:8]}, which the "
                f"{recipe.get('pipeline')} pipeline does not take (a request for another "
                "pipeline, or an option it ignored)",
                check="request-binding",
                found=str(extra[:8]),
            )
    if params["steps"] != recipe.get("steps") or not _same_number(
        recipe.get("guidance_scale"), float(params["guidanceScale"])
    ):
        raise VerificationError(
            f"request binding: the request asked for {params['steps']!r} steps at guidance "
            f"{params['guidanceScale']!r}; the recipe declares {recipe.get('steps')!r} at "
            f"{recipe.get('guidance_scale')!r}",
            check="request-binding",
        )
    _check_loop_begin(recipe, params, program, order)
    check_step_args = getattr(program, "check_step_args", None)
    try:
        if check_step_args is not None:
            check_step_args(recipe, params)
        elif recipe.get("step_args"):
            raise VerificationError(
                f"request binding: the {recipe.get('pipeline')} pipeline passes no step "
                f"arguments, the recipe records {recipe.get('step_args')}",
                check="request-binding",
            )
    except MalformedInputError as exc:
        raise VerificationError(f"request binding: {exc}", check="request-binding") from None
    cond = recipe.get("conditioning")
    if not isinstance(cond, dict):
        raise VerificationError(
            "request binding: the recipe commits no conditioning", check="request-binding"
        )
    derive = getattr(program, "conditioning", None)
    try:
        if derive is None:
            raise UncheckedBinding(
                f"the {recipe.get('pipeline')} reference has no request encoder to re-derive it"
            )
        derived = derive(params, recipe)
        if set(derived) != set(cond):
            raise VerificationError(
                f"request binding: the request derives conditioning {sorted(derived)}, the "
                f"recipe commits {sorted(cond)}",
                check="request-binding",
                found=str(sorted(derived)),
                expected=str(sorted(cond)),
            )
        for name, tensor in derived.items():
            if tensor_digest(tensor) == cond[name]:
                continue
            if _inexact_here(program, recipe):
                approximate[name] = tensor  # another build: compared within tau
                continue
            raise VerificationError(
                f"request binding: conditioning {name!r} is not what the request derives "
                "(a swapped prompt or label)",
                check="request-binding",
            )
    except FromOpenedConditioning:
        from_opened = getattr(program, "conditioning_from_opened", None)
        if from_opened is None:
            return ["request conditioning (no derivation from the committed conditioning)"]
        deferred.append(lambda opened: from_opened(params, recipe, opened))
    except UncheckedBinding as exc:
        return [f"request conditioning ({exc})"]
    except MalformedInputError as exc:
        raise VerificationError(f"request binding: {exc}", check="request-binding") from None
    return []


def _check_loop_begin(
    recipe: Mapping[str, Any], params: Mapping[str, Any], program: TailProgram, order: int
) -> None:
    """The loop starts where the family's pipeline starts it for this request (img2img's
    strength): a later start runs fewer steps than the request paid for, each of them honest."""
    loop_begin = getattr(program, "loop_begin", None)
    if loop_begin is None:
        return
    try:
        want = loop_begin(params, order)
    except MalformedInputError as exc:
        raise VerificationError(f"request binding: {exc}", check="request-binding") from None
    got = recipe.get("begin_index") or 0
    if got != want:
        raise VerificationError(
            f"request binding: the request (steps {params.get('steps')!r}, strength "
            f"{params.get('strength', 'default')!r}) starts the {recipe.get('pipeline')} loop at "
            f"schedule index {want}, the recipe at {got!r} (fewer steps run than requested)",
            check="request-binding",
            found=str(got),
            expected=str(want),
        )


def check_noise_stream(
    facts: TailFacts, plan: SamplerPlan, draw: Any, *, latent_dtype: torch.dtype
) -> None:
    """Regenerate the request's noise stream with ``draw(shape, dtype)`` (the escrowed DRBG,
    in draw order) and compare it with z_N and every step's committed noise. Raises
    :class:`VerificationError` at the first draw that differs."""
    z = facts.initial_latent
    first = draw(tuple(z.shape), latent_dtype)
    scaled = (first * plan.init_noise_sigma).to(z.dtype)
    if tensor_digest(z) != tensor_digest(scaled):  # every pipeline scales it; one form only
        raise VerificationError(
            "noise binding: z_N is not the first draw of the escrowed DRBG scaled by the "
            "scheduler's initial sigma",
            check="noise-binding",
        )
    for i, committed in enumerate(facts.step_noise):
        for k, (shape, dtype) in enumerate(plan.noise[i]):
            if tensor_digest(draw(shape, dtype)) != committed[k]:
                raise VerificationError(
                    f"noise binding: step {i} noise {k} is not the escrowed DRBG's draw "
                    "(substituted, replayed or steered noise)",
                    check="noise-binding",
                )
