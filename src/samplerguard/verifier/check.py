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

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from samplerguard.commitment.opening import Opening
from samplerguard.commitment.recheck import RecheckResult, build_scheduler, recheck_step
from samplerguard.commitment.statement import Commitment
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.policy.report import ReportResult
from samplerguard.policy.spec import SamplerPolicySpec
from samplerguard.verifier.client import SidecarClient
from samplerguard.verifier.discovery import Target
from samplerguard.verifier.reference import ReferenceModels

__all__ = ["Checker", "Judgement"]


@dataclass
class Judgement:
    root: str
    results: list[ReportResult]
    challenged: bool
    outcome: str  # pass | fail | error


def _schedule(recipe: dict[str, Any]) -> str:
    config = recipe.get("scheduler_config")
    if isinstance(config, dict):
        if config.get("use_karras_sigmas"):
            return "karras"
        spacing = config.get("timestep_spacing")
        if isinstance(spacing, str):
            return spacing
    return "leading"


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
        ids = {"trajectoryId": trajectory_id, "requestId": trajectory_id}
        # (1): the DSSE signature under the sidecar's key
        try:
            commitment = Commitment.verify(doc.get("commitment"), public_key)
        except (VerificationError, MalformedInputError) as exc:
            return self._fail(target, "", f"commitment rejected: {exc}", "signature", ids)
        root = commitment.root.hex()
        ids["trajectoryRoot"] = root
        # (2): replays
        if commitment.request_id != trajectory_id:
            return self._fail(
                target,
                root,
                f"replayed commitment: served for trajectory {trajectory_id!r} but signed for "
                f"request {commitment.request_id!r}",
                "signature",
                ids,
            )
        # (3): the recipe, once per trajectory
        recipe = commitment.recipe
        quarantine = commitment.predicate.get("quarantine") or []
        common = {
            "guidance": float(recipe.get("guidance_scale", 0.0)),
            "steps": int(recipe.get("steps", 0)),
            "sampler": str(recipe.get("sampler")),
            "schedule": _schedule(recipe),
            **ids,
        }
        results = [
            self._result(
                target,
                "recipe",
                "warn" if quarantine else "pass",
                ("quarantined by the sidecar: " + "; ".join(map(str, quarantine)))
                if quarantine
                else "recipe committed within the policy",
                **common,
            )
        ]
        # (4): challenge decision and steps, drawn only now that the signed root is held, and
        # journaled before any opening is fetched (an interrupted check reuses the same draw)
        n = commitment.n_steps
        k = min(self.spec.verification.steps_per_challenge, n)

        def draw() -> list[int]:
            if not self.challenged(bool(quarantine)):
                return []
            return sorted(self._rng.sample(range(n), k))

        steps = self.challenge(key, draw)
        if not steps:
            return Judgement(root, results, False, "pass")
        tau = self.spec.verification.tau
        worst: RecheckResult | None = None
        try:
            program = self.references.program(recipe)
        except MalformedInputError as exc:
            # the verifier cannot check this pipeline: an error, not the prover's failure
            err = self._result(
                target, "trajectory-recheck", "error", f"cannot re-check: {exc}", **common
            )
            self._observe("error", None, "internal")
            return Judgement(root, [*results, err], True, "error")
        except VerificationError as exc:
            fail = self._result(target, "trajectory-recheck", "fail", str(exc), **common)
            self._observe("fail", None, "digest")
            return Judgement(root, [*results, fail], True, "fail")
        try:
            for step in steps:
                # (5): opening → inclusion → reference step → rel-L2
                raw = client.opening(trajectory_id, step)
                try:
                    opening = Opening.from_bytes(raw)
                except MalformedInputError as exc:
                    raise VerificationError(f"opening of step {step} rejected: {exc}") from None
                if opening.step != step:  # pragma: no cover - recheck would catch it too
                    raise VerificationError(
                        f"sidecar served step {opening.step} when step {step} was challenged"
                    )
                res = recheck_step(commitment, opening, program, tau=tau)
                if worst is None or res.worst > worst.worst or res.reasons:
                    worst = res
                if not res.accepted:
                    break
            # (6): the seed escrow
            escrow_problem = self._check_escrow(doc, commitment, client, trajectory_id)
        except (VerificationError, MalformedInputError) as exc:
            # a malformed opening or recipe from the prover is the prover's failure
            fail = self._result(target, "trajectory-recheck", "fail", str(exc), tau=tau, **common)
            self._observe("fail", None, _reason(str(exc)))
            return Judgement(root, [*results, fail], True, "fail")
        assert worst is not None
        if escrow_problem is not None:
            results.append(self._result(target, "seed-health", "fail", escrow_problem, **ids))
        elif doc.get("seedEscrow") is not None and self.escrow_key is not None:
            results.append(
                self._result(target, "seed-health", "pass", "z_N matches the escrowed seed", **ids)
            )
        ok = worst.accepted
        message = (
            f"steps {steps}: worst relL2 {worst.worst:.3g} <= tau {tau:g}"
            if ok
            else f"step {worst.step}: relL2 {worst.worst:.3g} > tau {tau:g}"
            + (f" ({'; '.join(worst.reasons)})" if worst.reasons else "")
            + " (substituted model, skipped steps, altered guidance or schedule?)"
        )
        results.append(
            self._result(
                target,
                "trajectory-recheck",
                "pass" if ok else "fail",
                message,
                rel_l2=worst.worst,
                tau=tau,
                step=worst.step,
                **common,
            )
        )
        self._observe(
            "pass" if ok else "fail",
            worst.worst,
            "ok" if ok else "rel_l2",
            str(recipe.get("sampler")),
        )
        outcome = "pass" if ok and escrow_problem is None else "fail"
        return Judgement(root, results, True, outcome)

    def _fail(
        self, target: Target, root: str, message: str, reason: str, ids: dict[str, str]
    ) -> Judgement:
        self._observe("fail", None, reason)
        return Judgement(
            root,
            [self._result(target, "trajectory-recheck", "fail", message, **ids)],
            True,
            "fail",
        )

    def _observe(
        self, outcome: str, rel: float | None, reason: str, sampler: str = "other"
    ) -> None:
        if self.telemetry is not None:
            self.telemetry.record_verification(outcome, rel_l2=rel, reason=reason, sampler=sampler)

    def _check_escrow(
        self, doc: dict[str, Any], commitment: Commitment, client: SidecarClient, tid: str
    ) -> str | None:
        escrow_doc = doc.get("seedEscrow")
        if escrow_doc is None or self.escrow_key is None:
            return None
        from samplerguard.rng.escrow import SeedEscrow, regenerate_initial_noise

        bound = commitment.predicate.get("seedEscrowDigest")
        got = (
            "sha256:"
            + hashlib.sha256(
                json.dumps(escrow_doc, sort_keys=True, separators=(",", ":")).encode()
            ).hexdigest()
        )
        if bound != got:
            return f"seed escrow is not the one the commitment binds (got {got}, signed {bound})"
        try:
            escrow = SeedEscrow.from_json(json.dumps(escrow_doc))
            opening = Opening.from_bytes(client.opening(tid, 0))
            z = opening.latent_in
            noise = regenerate_initial_noise(self.escrow_key, escrow, tuple(z.shape), z.dtype)
            sigma = float(build_scheduler(commitment.recipe).init_noise_sigma)
        except (VerificationError, MalformedInputError) as exc:
            return f"seed escrow check failed: {exc}"
        from samplerguard.commitment.recheck import rel_l2

        rel = rel_l2(z, noise * sigma)
        if not rel <= 1e-6:
            return f"z_N does not match the escrowed seed (rel-L2 {rel:.3g}, expected <= 1e-06)"
        return None


def _reason(message: str) -> str:
    text = message.lower()
    if "inclusion" in text or "included" in text:
        return "inclusion"
    if "digest" in text:
        return "digest"
    if "malformed" in text or "corrupt" in text or "truncated" in text:
        return "malformed"
    return "other"
