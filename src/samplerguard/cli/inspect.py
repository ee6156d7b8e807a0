"""``samplerguard inspect FILE``: show the recipe of a checkpoint or the provenance of a PNG.

For a ``.safetensors`` checkpoint it prints the tensors summary, the ``modelWeights`` digest a
policy's ``goldenDigests`` pins (the same as ``samplerguard digest`` prints) and the embedded
recipe, and verifies the recipe's pinned hashes (exit 1 on a mismatch). The recipe's
``weights`` hash is the file's own integrity hash, not the digest a policy pins. For a PNG it
prints the ``samplerguard`` provenance record. Exit 2 when the file is unusable: unreadable,
truncated, corrupt, oversized, or without a record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]

_PNG = b"\x89PNG\r\n\x1a\n"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "inspect",
        help="show a checkpoint's recipe or a PNG's provenance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, help="a .safetensors checkpoint or a .png image")
    parser.add_argument(
        "--public-key",
        type=Path,
        help="PNG: the sidecar's public key (PEM) to verify the record against the commitment "
        "the PNG carries",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not hash the checkpoint's weights (no check, no modelWeights digest)",
    )
    parser.set_defaults(_run=run)


def _emit(args: argparse.Namespace, body: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True, default=str))
    else:
        print("\n".join(lines))


def run(args: argparse.Namespace) -> int:
    from samplerguard.errors import MalformedInputError, VerificationError

    path: Path = args.file
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        print(f"samplerguard inspect: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        if head == _PNG:
            return _inspect_png(args, path)
        return _inspect_checkpoint(args, path)
    except MalformedInputError as exc:
        print(f"samplerguard inspect: {exc}", file=sys.stderr)
        return 2
    except VerificationError as exc:
        print(f"samplerguard inspect: REJECTED: {exc}", file=sys.stderr)
        return 1


def _inspect_png(args: argparse.Namespace, path: Path) -> int:
    from samplerguard.recipe.provenance import (
        provenance_filename,
        read_commitment,
        read_provenance,
        verify_provenance,
    )

    p = read_provenance(path)
    record: dict[str, Any] = p.model_dump(by_alias=True, mode="json", exclude_none=True)
    body: dict[str, Any] = {"kind": "png", "file": str(path), "provenance": record}
    lines = [f"{path}: PNG with samplerguard provenance"]
    lines += [f"  {key}: {value}" for key, value in record.items()]
    expected = provenance_filename(p)
    if path.name != expected:
        lines.append(f"  (conventional name: {expected})")
    envelope = read_commitment(path)
    if envelope is None:
        body["signature"] = "unsigned"
        lines.append("  unsigned: the PNG carries no commitment; the record is not checked")
    elif args.public_key is None:
        body["signature"] = "unsigned"
        lines.append(
            "  unsigned: the PNG carries its commitment, but no --public-key was given to "
            "check it against"
        )
    else:
        from samplerguard.commitment.dsse import load_public_key
        from samplerguard.errors import MalformedInputError

        try:
            key = load_public_key(args.public_key.read_bytes())
        except OSError as exc:
            raise MalformedInputError(f"cannot read {args.public_key}: {exc.strerror}") from None
        verify_provenance(p, envelope, key)
        body["signature"] = "verified"
        lines.append(
            "  verified: the commitment's signature, and the record's root, tree size, request, "
            "recipe, sampler, schedule, steps and guidance match it"
        )
    _emit(args, body, lines)
    return 0


def _inspect_checkpoint(args: argparse.Namespace, path: Path) -> int:
    from samplerguard.recipe.checkpoint import read_checkpoint, verify_hashes

    ckpt = read_checkpoint(path)
    recipe = ckpt.recipe
    body: dict[str, Any] = {
        "kind": "safetensors",
        "file": str(path),
        "tensors": len(ckpt.tensors),
        "parameters": ckpt.parameters,
        "metadataKeys": sorted(ckpt.metadata),
        "recipe": json.loads(recipe.to_json()) if recipe else None,
    }
    lines = [
        f"{path}: safetensors, {len(ckpt.tensors)} tensors, {ckpt.parameters:,} parameters",
        f"  metadata keys: {', '.join(sorted(ckpt.metadata)) or '(none)'}",
    ]
    if not args.no_verify:
        from samplerguard.cli._pins import pinned_digests

        golden = pinned_digests(path).golden_digests()
        body["goldenDigests"] = golden
        lines.append(f"  goldenDigests.modelWeights: {golden['modelWeights'][0]}")
    if recipe is None:
        lines.append("  no samplerguard recipe")
        _emit(args, body, lines)
        return 0
    lines += [
        f"  recipe: {recipe.model_id} — {recipe.sampler}/{recipe.schedule}, "
        f"{recipe.default_steps} steps ({recipe.steps.min}..{recipe.steps.max}), "
        f"CFG {recipe.default_cfg:g} ({recipe.cfg.min:g}..{recipe.cfg.max:g}), "
        f"{recipe.prediction_type}",
        f"  grid: {recipe.grid.class_name}, {recipe.grid.canonical_steps} canonical steps, "
        f"subsampling {recipe.grid.subsampling}",
        f"  forbidden: samplers {recipe.forbidden_samplers or '-'}, "
        f"schedules {recipe.forbidden_schedules or '-'}",
        f"  presets: {', '.join(sorted(recipe.presets)) or '-'}",
    ]
    if recipe.hashes is None:
        body["hashes"] = "unpinned"
        lines.append("  recipe hashes: none pinned")
    elif args.no_verify:
        body["hashes"] = "not checked"
        lines.append(f"  recipe hashes: file weights {recipe.hashes.weights} (not checked)")
    else:
        verify_hashes(path, recipe)
        body["hashes"] = "verified"
        lines.append(f"  recipe hashes: file weights {recipe.hashes.weights} verified")
    _emit(args, body, lines)
    return 0
