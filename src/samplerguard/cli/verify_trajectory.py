"""``samplerguard verify-trajectory``: check a commitment and an opening offline; with
``--transcript`` also the leaves, the tail and the request; with ``--request`` and ``--output``
also what the consumer holds.

Exit codes: 0 the step re-checks within τ, 1 rejected, 2 unusable input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]

MAX_COMMITMENT_BYTES = 1 << 20


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify-trajectory",
        help="check a trajectory commitment and one opening offline",
        description="Checks the DSSE signature, the Merkle inclusion of the opened leaves, the "
        "opened tensors against their digests, then re-runs the opened step with the given "
        "model and compares rel-L2 with tau.",
    )
    p.add_argument("--commitment", type=Path, required=True, help="DSSE envelope (JSON)")
    p.add_argument("--opening", type=Path, required=True, help="opening (.safetensors)")
    p.add_argument("--model", type=Path, required=True, help="reference checkpoint (.safetensors)")
    p.add_argument(
        "--public-key",
        type=Path,
        required=True,
        help="the sidecar's Ed25519 public key (PEM) that signed the commitment",
    )
    p.add_argument(
        "--transcript",
        type=Path,
        help="the trajectory's transcript (.safetensors, from the sidecar's /transcript): also "
        "check every leaf, the output decode and the request",
    )
    p.add_argument(
        "--request",
        type=Path,
        help="the consumer's request parameters (JSON): check the commitment binds them",
    )
    p.add_argument(
        "--output", type=Path, help="the output bytes received: check the commitment binds them"
    )
    p.add_argument(
        "--tau",
        type=float,
        default=1e-5,
        help="tolerance on rel-L2 across builds (default 1e-5); 0 is used when this machine "
        "reproduces the generation's build fingerprint",
    )
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for loading (the re-check itself uses the count the generation "
        "recorded, which reproduces it exactly)",
    )
    p.set_defaults(_run=run)


def _read(path: Path, limit: int, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise ValueError(f"{what} {path} is {size} bytes, over the {limit}-byte limit")
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    import json

    from samplerguard.commitment.challenge import verify_challenge
    from samplerguard.commitment.dsse import load_public_key
    from samplerguard.commitment.fingerprint import differences
    from samplerguard.commitment.opening import MAX_OPENING_BYTES, Opening
    from samplerguard.commitment.recheck import recheck_step
    from samplerguard.commitment.request import verify_response
    from samplerguard.commitment.statement import Commitment
    from samplerguard.commitment.transcript import Transcript
    from samplerguard.errors import MalformedInputError, VerificationError

    def say(verdict: str, reasons: list[str], **facts: Any) -> None:
        if args.json:
            print(json.dumps({"verdict": verdict, "reasons": reasons, **facts}, default=str))
        else:
            print(f"verdict: {verdict}")
            for k, v in facts.items():
                print(f"  {k}: {v}")
            for r in reasons:
                print(f"  reason: {r}")

    try:
        key = load_public_key(_read(args.public_key, 1 << 16, "public key"))
        envelope = _read(args.commitment, MAX_COMMITMENT_BYTES, "commitment")
        opening_bytes = _read(args.opening, MAX_OPENING_BYTES, "opening")
        opening = Opening.from_bytes(opening_bytes)
    except (ValueError, MalformedInputError) as exc:
        say("unusable", [str(exc)])
        return 2
    try:
        commitment = Commitment.verify(envelope, key)
        print("checked: DSSE signature (Ed25519)", file=sys.stderr)
        if args.request is not None or args.output is not None:
            if args.request is None or args.output is None:
                say("unusable", ["--request and --output go together (the consumer's check)"])
                return 2
            try:
                params = json.loads(_read(args.request, 1 << 16, "request"))
                output = _read(args.output, 1 << 30, "output")
            except ValueError as exc:
                say("unusable", [f"cannot read the request or output: {exc}"])
                return 2
            if not isinstance(params, dict):
                say("unusable", ["the request file is not a JSON object"])
                return 2
            verify_response(envelope, key, request=params, output=output)
            print("checked: request and output binding", file=sys.stderr)
        pipeline = commitment.recipe.get("pipeline")
        if pipeline != "digits":
            say(
                "unusable",
                [
                    f"no offline reference program for pipeline {pipeline!r}; "
                    "this command re-runs the bundled digits pipeline"
                ],
            )
            return 2
        import torch

        from samplerguard.models.digits import load_unet
        from samplerguard.models.programs import DigitsProgram

        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            program = DigitsProgram(load_unet(args.model))
        except Exception as exc:  # safetensors/torch raise many types for a bad checkpoint
            say("unusable", [f"cannot load model {args.model}: {exc}"])
            return 2
        if args.transcript is not None:
            transcript = Transcript.from_bytes(
                _read(args.transcript, MAX_OPENING_BYTES, "transcript")
            )
            outcome = verify_challenge(
                commitment,
                transcript,
                lambda step: opening,
                program,
                steps=[opening.step],
                tau=args.tau,
            )
            print("checked: transcript (root, schedule, tail, output, request)", file=sys.stderr)
            result = outcome.results[0]
            tau = outcome.tau
        else:
            diff = differences(commitment.recipe.get("runtime"), program.device)
            tau = 0.0 if not diff else args.tau
            result = recheck_step(commitment, opening, program, tau=tau)
    except (MalformedInputError, ValueError) as exc:
        say("unusable", [str(exc)])
        return 2
    except VerificationError as exc:
        say("reject", [str(exc)], request=opening.meta.request_id, step=opening.step)
        return 1
    print("checked: Merkle inclusion, opened tensor digests, reference step", file=sys.stderr)
    facts = {
        "request": commitment.request_id,
        "root": commitment.root.hex(),
        "step": result.step,
        "rel_l2": f"{result.rel_l2:.3e}",
        "score (error over the model output's share)": f"{result.worst:.3e}",
        "tau": f"{tau:.1e}" + (" (same build: exact)" if tau == 0 else ""),
    }
    if result.accepted:
        say("accept", [], **facts)
        return 0
    reasons = result.reasons or [f"score {result.worst:.3e} exceeds tau {tau:.1e}"]
    say("reject", reasons, **facts)
    return 1
