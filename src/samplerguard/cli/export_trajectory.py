"""``samplerguard export-trajectory``: fetch one trajectory from a sidecar into an audit bundle.

The bundle (layout in :mod:`samplerguard.verifier.bundle`) holds the signed commitment, the
sidecar's public key, the transcript and the openings, so ``samplerguard verify-trajectory
--bundle DIR`` checks the response later, without the sidecar. Exit 0 written, 2 the sidecar
or the arguments could not be used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from samplerguard.cli._options import duration

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export-trajectory",
        help="fetch a trajectory's commitment, key, transcript and openings into a bundle",
        description="Fetches one trajectory from a sidecar's authenticated API and writes an "
        "audit bundle directory that verify-trajectory --bundle checks offline.",
    )
    p.add_argument("--sidecar", required=True, help="the sidecar's URL (http://host:port)")
    p.add_argument(
        "--token-file", type=Path, required=True, help="bearer token the sidecar accepts"
    )
    p.add_argument("--trajectory", required=True, help="the trajectory (request) id")
    p.add_argument("--out", type=Path, required=True, help="the bundle directory to write")
    p.add_argument(
        "--step",
        type=int,
        action="append",
        help="export only this step's opening (repeatable; default: every step)",
    )
    p.add_argument("--timeout", type=duration, default="30s", help="time per sidecar call")
    p.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    from samplerguard.errors import SamplerGuardError
    from samplerguard.verifier.bundle import export_bundle
    from samplerguard.verifier.client import SidecarClient

    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        print(f"cannot read token file {args.token_file}: {exc.strerror}", file=sys.stderr)
        return 2
    client = SidecarClient(args.sidecar, lambda: token, timeout=args.timeout)
    try:
        out = export_bundle(client, args.trajectory, args.out, steps=args.step)
    except SamplerGuardError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    print(out)
    return 0
