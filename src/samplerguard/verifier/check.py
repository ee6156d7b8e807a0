"""Judging one committed trajectory: signature → inclusion → one-step re-check, per DESIGN.md.

1. fetch the commitment and verify its DSSE signature under the sidecar's published key;
2. refuse a replay: the signed predicate must name the trajectory it was served for (two
   honest requests with the same seed and recipe share a root, so the root alone proves
   nothing; the signed request id does, and the sidecar commits each request id once);
3. one ``recipe`` result for every trajectory (guidance and steps, for the report's
   histograms); quarantined ones are ``warn`` with the sidecar's reasons;
4. decide the challenge (the policy's fraction; always for quarantined trajectories) and draw
   k steps from :mod:`secrets`, *after* holding the signed root;
5. for each step: fetch the opening, parse it (bounded), and
   :func:`~samplerguard.commitment.recheck.recheck_step` it with the reference model;
6. when the sidecar kept a seed escrow and the verifier holds the X25519 key: regenerate z_N
   and compare it with the committed initial latent.

A :class:`~samplerguard.errors.TemporaryError` (sidecar slow or gone) propagates: the
trajectory is not judged and is tried again next round.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from samplerguard.commitment.challenge import (
    catch_probability,
    challenge_steps,
    requests_for,
    verify_challenge,
)
from samplerguard.commitment.fingerprint import build_fingerprint
from samplerguard.commitment.opening import Opening
from samplerguard.commitment.statement import Commitment
from samplerguard.commitment.ticket import TicketSigners, verify_ticket
from samplerguard.commitment.transcript import Transcript
from samplerguard.errors import MalformedInputError, TemporaryError, VerificationError
from samplerguard.policy.conformance import recipe_violations
from samplerguard.policy.report import ReportResult
from samplerguard.policy.schedule import schedule_id
from samplerguard.policy.spec import SamplerPolicySpec
from samplerguard.policy.tolerance import select_tolerance
from samplerguard.verifier.client import SidecarClient
from samplerguard.verifier.discovery import Target
from samplerguard.verifier.reference import ReferenceModels

__all__ = ["Checker", "Judgement"]

log = logging.getLogger(__name__)


@dataclass
class Judgement:
    root: str
    results: list[ReportResult]
    challenged: bool
    outcome: str  # pass | fail | error


@dataclass
class _Case:
    """One trajectory under judgement: what every result carries, and the results so far."""

    target: Target
    ids: dict[str, str]
    root: str = ""
    common: dict[str, Any] = field(default_factory=dict)
    results: list[ReportResult] = field(default_factory=list)


class Checker:
    def __init__(
        self,
        spec: SamplerPolicySpec,
        policy_name: str,
        references: ReferenceModels,
        *,
        escrow_key: Any = None,
        challenge: Any = None,
        telemetry: Any = None,
    ) -> None:
        self.spec = spec
        self.policy_name = policy_name
        self.references = references
        self.escrow_key = escrow_key
        #: (key, draw) -> steps; the service journals the draw (see Journal.challenge)
        self.challenge = challenge or (lambda key, draw: draw())
        self.telemetry = telemetry
        self._rng = secrets.SystemRandom()
        #: per provider (pod uid): the probability that every challenge passed so far missed a
        #: provider deviating on the policy's fraction of steps (the sequential test)
        self._missed: dict[str, float] = {}

    def _result(
        self, target: Target, rule: str, result: str, message: str, **kw: Any
    ) -> ReportResult:
        return ReportResult.build(
            policy=self.policy_name,
            rule=rule,  # type: ignore[arg-type]
            result=result,  # type: ignore[arg-type]
            message=message,
            resource=target.resource,
            **kw,
        )

    def challenged(self, quarantined: bool) -> bool:
        if quarantined:
            return True
        fraction = self.spec.verification.fraction
        return secrets.randbelow(1_000_000) < round(fraction * 1_000_000)

    def judge(
        self, target: Target, client: SidecarClient, public_key: Any, key: str, trajectory_id: str
    ) -> Judgement:
        doc = client.trajectory(trajectory_id)
        case = _Case(target, {"trajectoryId": trajectory_id, "requestId": trajectory_id})
        # (1)+(2): the signed commitment, served for this trajectory
        commitment = self._commitment(case, doc, public_key, trajectory_id)
        if isinstance(commitment, Judgement):
            return commitment
        # (3): the recipe, once per trajectory, held to the policy by the verifier itself
        problems = self._recipe(case, commitment, doc.get("ticket"))
        if isinstance(problems, Judgement):
            return problems
        # (4): challenge decision and steps (k windows of w), drawn only now that the signed
        # root is held, and journaled before any opening is fetched (an interrupted check reuses
        # the same draw)
        steps = self._draw(key, commitment.n_steps, bool(problems))
        if not steps:
            return Judgement(case.root, case.results, False, "pass")
        reference = self._reference(case, commitment)
        if isinstance(reference, Judgement):
            return reference
        program, tolerance = reference
        # (5)+(6): the transcript, the escrowed noise and every opened step
        checked = self._challenge(case, client, doc, commitment, program, steps, tolerance.tau)
        if isinstance(checked, Judgement):
            return checked
        outcome, seed_checked = checked
        return self._verdict(case, commitment, steps, outcome, tolerance.why, seed_checked)

    def _commitment(
        self, case: _Case, doc: dict[str, Any], public_key: Any, trajectory_id: str
    ) -> Commitment | Judgement:
        """(1): the DSSE signature under the sidecar's key; (2): no replay."""
        try:
            commitment = Commitment.verify(doc.get("commitment"), public_key)
        except (VerificationError, MalformedInputError) as exc:
            return self._fail(case, f"commitment rejected: {exc}", _fields(exc))
        case.root = commitment.root.hex()
        case.ids["trajectoryRoot"] = case.root
        if commitment.request_id != trajectory_id:
            return self._fail(
                case,
                f"replayed commitment: served for trajectory {trajectory_id!r} but signed for "
                f"request {commitment.request_id!r}",
                {"check": "replay", "found": commitment.request_id, "expected": trajectory_id},
            )
        return commitment

    def _recipe(self, case: _Case, commitment: Commitment, ticket: object) -> list[str] | Judgement:
        """(3): one ``recipe`` result; returns the recipe's problems (policy violations, the
        request ticket a policy requires, the sidecar's quarantine reasons), or the failure when
        the policy enforces them."""
        recipe = commitment.recipe
        raw_config = recipe.get("scheduler_config")
        config: dict[str, Any] = raw_config if isinstance(raw_config, dict) else {}
        quarantine = commitment.predicate.get("quarantine") or []
        case.common = {
            "guidance": _float(recipe.get("guidance_scale")),
            "steps": _int(recipe.get("steps")),
            "sampler": str(recipe.get("sampler"))[:64],
            "schedule": schedule_id(str(recipe.get("scheduler_class") or ""), config),
            **case.ids,
        }
        violations = recipe_violations(self.spec, recipe, str(recipe.get("rng", "framework")))
        unticketed = self._ticket_problem(commitment, ticket)
        if unticketed is not None:
            violations.append(("ticket", unticketed))
        problems = [m for _, m in violations] + [str(q) for q in quarantine]
        if violations and self.spec.mode == "enforce":
            message = "recipe out of policy: " + "; ".join(problems)
            check = "ticket" if unticketed is not None else "policy"
            self._observe("fail", None, check)
            fail = self._result(case.target, "recipe", "fail", message, check=check, **case.common)
            return Judgement(case.root, [fail], True, "fail")
        message = (
            ("out of policy (quarantined): " + "; ".join(problems))
            if problems
            else "recipe committed within the policy"
        )
        verdict = "warn" if problems else "pass"
        case.results.append(self._result(case.target, "recipe", verdict, message, **case.common))
        return problems

    def _ticket_problem(self, commitment: Commitment, envelope: object) -> str | None:
        """Under a policy requiring request tickets: why this trajectory's ticket does not hold
        (none kept, not the one the commitment binds, not signed by a policy signer, for
        another request, tenant or request parameters), or None. Its lifetime was the
        sidecar's to check at the time; here only the cap is."""
        rule = self.spec.rng.tickets
        if rule is None:
            return None
        bound = commitment.predicate.get("requestTicket")
        if envelope is None or not isinstance(bound, dict):
            return "request ticket: the policy requires one and the trajectory has none"
        try:
            ticket = verify_ticket(
                envelope,
                TicketSigners.of(rule),
                tenant=commitment.tenant,
                request_id=commitment.request_id,
                request_digest=_str_or_none(commitment.recipe.get("request")),
            )
        except (VerificationError, MalformedInputError) as exc:
            return str(exc)
        if ticket.digest != bound.get("digest"):
            return "request ticket: the ticket kept is not the one the commitment binds"
        return None

    def _draw(self, key: str, n: int, quarantined: bool) -> list[int]:
        """(4): the challenged steps, or none; the service journals the draw under ``key``."""
        rule = self.spec.verification

        def draw() -> list[int]:
            if not self.challenged(quarantined):
                return []
            return challenge_steps(n, rule.steps_per_challenge, rule.window, self._rng)

        steps: list[int] = self.challenge(key, draw)
        return steps

    def _reference(self, case: _Case, commitment: Commitment) -> tuple[Any, Any] | Judgement:
        """The reference program for the declared pipeline and model, and the tolerance: exact
        on a reproduced build, else the policy's entry for this pair of builds, else its
        fallback, or a refusal under requireSameBuild (policy.tolerance)."""
        recipe = commitment.recipe
        try:
            program = self.references.program(recipe)
        except MalformedInputError as exc:
            # the verifier cannot check this pipeline: an error, not the prover's failure
            err = self._result(
                case.target, "trajectory-recheck", "error", f"cannot re-check: {exc}", **case.common
            )
            self._observe("error", None, "internal")
            return Judgement(case.root, [*case.results, err], True, "error")
        except VerificationError as exc:
            return self._rejected(case, exc)
        rule = self.spec.verification
        tolerance = select_tolerance(rule, recipe.get("runtime"), build_fingerprint(program.device))
        if tolerance.tau is None:
            return self._rejected(case, VerificationError(tolerance.why, check="build"), tau=0.0)
        return program, tolerance

    def _challenge(
        self,
        case: _Case,
        client: SidecarClient,
        doc: dict[str, Any],
        commitment: Commitment,
        program: Any,
        steps: list[int],
        tau: float,
    ) -> tuple[Any, bool] | Judgement:
        """(5): transcript (tail, request, schedule), noise stream, then every opened step;
        returns the outcome and whether the noise was checked against the escrow."""
        trajectory_id = case.ids["trajectoryId"]
        try:
            transcript = _parse(
                Transcript.from_bytes, client.transcript(trajectory_id), "transcript"
            )
            noise = self._noise(doc, commitment)

            def opening(step: int) -> Opening:
                raw = client.opening(trajectory_id, step)
                opened: Opening = _parse(Opening.from_bytes, raw, f"opening of step {step}")
                return opened

            outcome = verify_challenge(
                commitment,
                transcript,
                opening,
                program,
                steps=steps,
                tau=tau,
                noise=noise,
            )
        except TemporaryError:
            raise
        except (VerificationError, MalformedInputError) as exc:
            # a malformed opening, transcript or recipe from the prover is the prover's failure
            return self._rejected(case, exc, tau=tau)
        except Exception as exc:  # anything a hostile recipe or tensor makes diffusers raise
            log.warning("trajectory %s: re-check raised %s", trajectory_id, type(exc).__name__)
            failed = VerificationError(
                f"re-check failed: {type(exc).__name__}: {exc}", check="recheck"
            )
            return self._rejected(case, failed, tau=tau)
        return outcome, noise is not None

    def _verdict(
        self,
        case: _Case,
        commitment: Commitment,
        steps: list[int],
        outcome: Any,
        why: str,
        seed_checked: bool,
    ) -> Judgement:
        """The ``seed-health`` and ``trajectory-recheck`` results, and the provider's running
        probability of having been caught (the sequential test)."""
        worst = outcome.worst
        assert worst is not None
        if seed_checked:
            matched = "z_N and every step's noise match the escrow"
            case.results.append(
                self._result(case.target, "seed-health", "pass", matched, **case.ids)
            )
        rule = self.spec.verification
        n = commitment.n_steps
        ok = outcome.accepted
        per_request = catch_probability(
            n, len(steps), max(1, math.ceil(rule.deviation_fraction * n))
        )
        needed = requests_for(rule.target_catch_probability, per_request * rule.fraction)
        provider = case.target.uid or case.target.url
        prior = self._missed.get(provider, 1.0)
        # an incomplete challenge (a binding NOT CHECKED) is no evidence either way
        missed = 0.0 if not ok else prior if outcome.unchecked else prior * (1.0 - per_request)
        if len(self._missed) >= 100_000 and provider not in self._missed:
            self._missed.clear()  # bounded; the figure restarts, it never overstates
        self._missed[provider] = missed
        mode = "exact (same build)" if outcome.exact else why
        message = (
            f"steps {steps}: worst relL2 {worst.worst:.3g}, {mode}; P(catch a "
            f"{rule.deviation_fraction:g} deviation) {per_request:.3f} per challenged request, "
            f"{1.0 - missed:.4f} for this provider so far, "
            f"{rule.target_catch_probability:g} after {needed} requests"
            if ok
            else f"step {worst.step}: relL2 {worst.worst:.3g} > tau {outcome.tau:g} ({mode})"
            + (f" ({'; '.join(worst.reasons)})" if worst.reasons else "")
            + " (substituted model, skipped steps, altered guidance or schedule?)"
        )
        incomplete = ok and bool(outcome.unchecked)
        if incomplete:  # every step passed, but a binding could not be checked here
            message += "; NOT CHECKED: " + "; ".join(outcome.unchecked)
        verdict = "error" if incomplete else "pass" if ok else "fail"
        case.results.append(
            self._result(
                case.target,
                "trajectory-recheck",
                verdict,
                message,
                rel_l2=worst.worst,
                tau=outcome.tau,
                step=worst.step,
                **case.common,
            )
        )
        self._observe(
            verdict,
            worst.worst,
            "incomplete" if incomplete else "ok" if ok else "rel_l2",
            str(commitment.recipe.get("sampler")),
        )
        return Judgement(case.root, case.results, True, verdict)

    def _rejected(
        self, case: _Case, exc: VerificationError | MalformedInputError, *, tau: float | None = None
    ) -> Judgement:
        """A failed re-check: the results so far, and the failed check's."""
        fields = _fields(exc)
        fail = self._result(
            case.target, "trajectory-recheck", "fail", str(exc), tau=tau, **fields, **case.common
        )
        self._observe("fail", None, fields["check"])
        return Judgement(case.root, [*case.results, fail], True, "fail")

    def _noise(self, doc: dict[str, Any], commitment: Commitment) -> Any:
        """The request's noise stream from its escrow, or ``None`` when there is none to check.
        The escrow must be the one the signed predicate binds, and its authenticated labels must
        name this request; a policy that requires an escrow fails a request without one."""
        escrow_doc = doc.get("seedEscrow")
        declared = commitment.recipe.get("rng")
        drbg = declared in ("ctr-drbg", "hmac-drbg")
        if escrow_doc is None:
            if self.spec.rng.escrow or drbg:
                raise VerificationError(
                    f"noise binding: the recipe declares {declared!r} noise but the sidecar "
                    "kept no seed escrow, so the claim cannot be checked",
                    check="noise-binding",
                )
            return None
        if self.escrow_key is None:
            raise VerificationError(
                "noise binding: the trajectory's seed escrow cannot be opened, this verifier "
                "holds no escrow key (--escrow-key)",
                check="noise-binding",
            )
        from samplerguard.rng.escrow import SeedEscrow, escrow_digest, open_escrow
        from samplerguard.rng.noise import RequestNoise

        bound = commitment.predicate.get("seedEscrowDigest")
        got = escrow_digest(escrow_doc)
        if bound != got:
            raise VerificationError(
                f"noise binding: the seed escrow is not the one the commitment binds "
                f"(got {got}, signed {bound})",
                check="noise-binding",
                found=got,
                expected=str(bound),
            )
        escrow = SeedEscrow.from_json(json.dumps(escrow_doc))
        seed = open_escrow(self.escrow_key, escrow, request_id=commitment.request_id)
        stream = RequestNoise(seed, record_draws=False)

        def draw(shape: tuple[int, ...], dtype: Any) -> Any:
            return stream.randn(shape, dtype=dtype)

        return draw

    def _fail(self, case: _Case, message: str, fields: dict[str, str]) -> Judgement:
        """The commitment itself is rejected: one failed result, nothing else checked."""
        self._observe("fail", None, fields["check"])
        return Judgement(
            case.root,
            [
                self._result(
                    case.target, "trajectory-recheck", "fail", message, **fields, **case.ids
                )
            ],
            True,
            "fail",
        )

    def _observe(
        self, outcome: str, rel: float | None, reason: str, sampler: str = "other"
    ) -> None:
        if self.telemetry is not None:
            self.telemetry.record_verification(outcome, rel_l2=rel, reason=reason, sampler=sampler)


def _parse(parse: Any, raw: bytes, what: str) -> Any:
    try:
        return parse(raw)
    except MalformedInputError as exc:
        raise VerificationError(f"{what} rejected: {exc}", check="malformed") from None


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _fields(exc: VerificationError | MalformedInputError) -> dict[str, str]:
    """The failed check as report properties: ``check`` always (``malformed`` for input that
    could not be checked), ``found`` and ``expected`` where the check knows them."""
    if not isinstance(exc, VerificationError):
        return {"check": "malformed"}
    fields = {"check": exc.check or "other", "found": exc.found, "expected": exc.expected}
    return {key: value for key, value in fields.items() if value is not None}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
