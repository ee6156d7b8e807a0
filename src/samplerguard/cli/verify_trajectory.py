"""``samplerguard verify-trajectory``: check a response's commitment and its openings offline.

What an auditor holds is enough: the commitment (the DSSE envelope, or the trajectory JSON the
sidecar serves, from which ``.commitment`` is taken), the sidecar's public key (PEM, or its
``/v1/public-key`` JSON) and the openings and transcript fetched from the sidecar, or all of
them as one bundle directory (``samplerguard export-trajectory``, ``samplerguard demo
--export``). With ``--transcript`` (a bundle has it) also the leaves, the tail and the request;
with ``--request`` and ``--output`` also what the consumer received.

Exit codes: 0 every opened step re-checks within τ, 1 rejected, 2 unusable input (a file of the
wrong kind is named with what was expected; it is never reported as tampering).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]

MAX_COMMITMENT_BYTES = 1 << 20
_ENVELOPE_KEYS = {"payloadType", "payload", "signatures"}


class _Unusable(ValueError):
    """An input that cannot be used: exit 2 with this message."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify-trajectory",
        help="verify a response's commitment and openings offline (exit 0/1/2)",
        description="Checks the DSSE signature of the commitment, the Merkle inclusion of the "
        "opened leaves and the opened tensors against their digests, then re-runs every "
        "opened step with the reference model and compares rel-L2 with tau. Exit 0 accept, "
        "1 reject, 2 unusable input.",
    )
    p.add_argument(
        "--bundle",
        type=Path,
        help="an audit bundle directory (export-trajectory, demo --export): commitment, key, "
        "transcript and openings from it; the flags below override its files",
    )
    p.add_argument(
        "--commitment",
        type=Path,
        help="the DSSE envelope (JSON), or the sidecar's trajectory JSON holding it in .commitment",
    )
    p.add_argument(
        "--opening",
        type=Path,
        action="append",
        help="an opening (.safetensors, from the sidecar's /openings/<step>); repeatable",
    )
    p.add_argument(
        "--step",
        type=int,
        action="append",
        help="with --bundle: re-check only this step (repeatable; default: every step in it)",
    )
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        help="reference checkpoint: the digits .safetensors, or a diffusers model or "
        "pipeline folder",
    )
    p.add_argument(
        "--public-key",
        type=Path,
        help="the sidecar's Ed25519 public key: PEM, or the sidecar's /v1/public-key JSON",
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
        help="tolerance on rel-L2 across builds; 0 is used when this machine reproduces the "
        "generation's build fingerprint",
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
            raise _Unusable(f"{what} {path} is {size} bytes, over the {limit}-byte limit")
        return path.read_bytes()
    except OSError as exc:
        raise _Unusable(f"cannot read {what} {path}: {exc.strerror}") from None


def _envelope(path: Path) -> dict[str, Any]:
    """The DSSE envelope in ``path``: the file itself, or ``.commitment`` of the trajectory
    JSON the sidecar serves."""
    raw = _read(path, MAX_COMMITMENT_BYTES, "commitment")
    expected = (
        "expected a DSSE envelope (payloadType, payload, signatures) or the sidecar's "
        "trajectory JSON (with .commitment)"
    )
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise _Unusable(f"commitment {path} is not JSON: {expected}") from None
    if isinstance(doc, dict) and isinstance(doc.get("commitment"), dict):
        doc = doc["commitment"]
        print(f"read: .commitment of the trajectory document {path}", file=sys.stderr)
    if not isinstance(doc, dict) or not doc.keys() >= _ENVELOPE_KEYS:
        got = sorted(doc)[:6] if isinstance(doc, dict) else type(doc).__name__
        raise _Unusable(f"commitment {path}: {expected}; got {got}")
    return doc


def _public_key(path: Path) -> Any:
    from samplerguard.commitment.dsse import load_public_key
    from samplerguard.errors import MalformedInputError

    raw = _read(path, 1 << 16, "public key")
    expected = "expected a PEM public key or the sidecar's /v1/public-key JSON (publicKey)"
    if raw.lstrip().startswith(b"{"):
        try:
            doc = json.loads(raw)
        except ValueError:
            raise _Unusable(f"public key {path} is not valid JSON: {expected}") from None
        pem = doc.get("publicKey") if isinstance(doc, dict) else None
        if not isinstance(pem, str):
            raise _Unusable(f"public key {path} has no publicKey field: {expected}")
        raw = pem.encode()
    if b"-----BEGIN" not in raw:
        raise _Unusable(f"public key {path} is not PEM: {expected}")
    try:
        return load_public_key(raw)
    except MalformedInputError as exc:
        raise _Unusable(f"public key {path}: {exc}") from None


def _opening(path: Path) -> Any:
    from samplerguard.commitment.opening import MAX_OPENING_BYTES, Opening
    from samplerguard.errors import MalformedInputError

    raw = _read(path, MAX_OPENING_BYTES, "opening")
    if raw.lstrip().startswith(b"{"):
        raise _Unusable(
            f"opening {path} is JSON: expected an opening (.safetensors, the sidecar's "
            "/v1/trajectories/<id>/openings/<step>)"
        )
    try:
        return Opening.from_bytes(raw)
    except MalformedInputError as exc:
        raise _Unusable(f"opening {path}: {exc}") from None


def _inputs(args: argparse.Namespace) -> tuple[Path, Path, Path | None, list[Path]]:
    """(commitment, public key, transcript, openings) from the flags and the bundle."""
    from samplerguard.verifier.bundle import (
        PUBLIC_KEY_FILE,
        TRAJECTORY_FILE,
        TRANSCRIPT_FILE,
        bundle_openings,
    )

    bundle: Path | None = args.bundle
    if bundle is not None and not bundle.is_dir():
        raise _Unusable(f"bundle {bundle} is not a directory (export-trajectory writes one)")
    if args.step and bundle is None:
        raise _Unusable("--step selects openings of a --bundle; give --opening files otherwise")
    commitment = args.commitment or (bundle / TRAJECTORY_FILE if bundle else None)
    key = args.public_key or (bundle / PUBLIC_KEY_FILE if bundle else None)
    transcript = args.transcript
    if transcript is None and bundle is not None and (bundle / TRANSCRIPT_FILE).is_file():
        transcript = bundle / TRANSCRIPT_FILE
    openings = list(args.opening or [])
    if not openings and bundle is not None:
        openings = bundle_openings(bundle, args.step)
    missing = [
        flag
        for flag, value in (("--commitment", commitment), ("--public-key", key))
        if value is None
    ]
    if not openings:
        missing.append("--opening")
    if missing:
        raise _Unusable(f"missing {', '.join(missing)} (or a --bundle that holds them)")
    assert commitment is not None and key is not None
    return commitment, key, transcript, openings


def run(args: argparse.Namespace) -> int:
    from samplerguard.commitment.challenge import verify_challenge
    from samplerguard.commitment.fingerprint import differences
    from samplerguard.commitment.opening import MAX_OPENING_BYTES
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
        commitment_path, key_path, transcript_path, opening_paths = _inputs(args)
        key = _public_key(key_path)
        envelope = _envelope(commitment_path)
        openings = {}
        for path in opening_paths:
            o = _opening(path)
            openings[o.step] = o
        request_id = next(iter(openings.values())).meta.request_id
    except _Unusable as exc:
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
        program = _program(args, commitment)
        if transcript_path is not None:
            transcript = Transcript.from_bytes(
                _read(transcript_path, MAX_OPENING_BYTES, "transcript")
            )

            def opened(step: int) -> Any:
                return openings[step]

            outcome = verify_challenge(
                commitment, transcript, opened, program, steps=sorted(openings), tau=args.tau
            )
            print("checked: transcript (root, schedule, tail, output, request)", file=sys.stderr)
            results, tau, unchecked = outcome.results, outcome.tau, outcome.unchecked
        else:
            diff = differences(commitment.recipe.get("runtime"), program.device)
            tau = 0.0 if not diff else args.tau
            results = [
                recheck_step(commitment, openings[s], program, tau=tau) for s in sorted(openings)
            ]
            unchecked = []
    except _Unusable as exc:
        say("unusable", [str(exc)])
        return 2
    except (MalformedInputError, ValueError) as exc:
        say("unusable", [str(exc)])
        return 2
    except VerificationError as exc:
        say("reject", [str(exc)], request=request_id, steps=sorted(openings))
        return 1
    print("checked: Merkle inclusion, opened tensor digests, reference steps", file=sys.stderr)
    worst = max(results, key=lambda r: r.worst)
    facts = {
        "request": commitment.request_id,
        "root": commitment.root.hex(),
        "steps": [r.step for r in results],
        "step": worst.step,
        "rel_l2": f"{worst.rel_l2:.3e}",
        "score (error over the model output's share)": f"{worst.worst:.3e}",
        "tau": f"{tau:.1e}" + (" (same build: exact)" if tau == 0 else ""),
    }
    failed = [r for r in results if not r.accepted]
    if not failed and unchecked:
        # every step passed, but a binding could not be checked: neither accept nor reject
        say("unusable", [f"not checked: {u}" for u in unchecked], **facts)
        return 2
    if not failed:
        say("accept", [], **facts)
        return 0
    reasons = []
    for r in failed:
        found = r.reasons or [f"score {r.worst:.3e} exceeds tau {tau:.1e}"]
        reasons += [f"step {r.step}: {x}" for x in found]
    say("reject", reasons, **facts)
    return 1


def _program(args: argparse.Namespace, commitment: Any) -> Any:
    """The reference step program, after checking the checkpoint is the model the commitment
    declares (hashed before anything is deserialised from it)."""
    from samplerguard.commitment.digest import safetensors_digest
    from samplerguard.errors import SamplerGuardError, VerificationError
    from samplerguard.verifier.reference import load_reference, weights_file

    pipeline = str(commitment.recipe.get("pipeline"))
    model = commitment.recipe.get("model")
    declared = model.get("digest") if isinstance(model, dict) else None
    try:
        weights = weights_file(pipeline, args.model)
        digest = safetensors_digest(weights)
    except SamplerGuardError as exc:
        raise _Unusable(f"cannot read model {args.model}: {exc}") from None
    if declared != digest:
        raise VerificationError(
            f"digest mismatch: the commitment declares model {declared}, the reference "
            f"checkpoint {args.model} is {digest}"
        )
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return load_reference(pipeline, args.model, digest)
    except VerificationError:
        raise
    except SamplerGuardError as exc:
        raise _Unusable(f"cannot load model {args.model}: {exc}") from None
