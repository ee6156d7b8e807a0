"""``samplerguard digest PATH``: the digests a policy's ``goldenDigests`` pins for a model.

PATH is a ``.safetensors`` checkpoint, a diffusers component folder (``unet/``,
``text_encoder/``, ``scheduler/``) or a whole pipeline folder (``model_index.json``). The output
is a ``goldenDigests`` block to paste into a ClusterSamplerPolicy, each digest computed by the
function its check uses:

  modelWeights, textEncoder  the weights digest of the safetensors file, which equals the digest
                             of the loaded module the hook declares (not sha256sum of the file)
  schedulerConfig            the scheduler config as diffusers loads it and, when different, as
                             written in scheduler_config.json (the sidecar's file check)
  solverCode                 the diffusers scheduler code installed here: run this command with
                             the diffusers version the serving image runs

Exit 0 on success, 2 when PATH is not a model this command can digest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "digest",
        help="print the goldenDigests a policy pins for a checkpoint or a diffusers folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path", type=Path, help="a .safetensors file, a diffusers component or pipeline folder"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--variant",
        help="weights variant, as diffusers' variant= (fp16 reads "
        "diffusion_pytorch_model.fp16.safetensors) (default: none)",
    )
    parser.add_argument(
        "--no-solver-code",
        action="store_true",
        help="leave out solverCode (it needs diffusers installed at the serving version)",
    )
    parser.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    from samplerguard.cli._pins import pinned_digests
    from samplerguard.errors import MalformedInputError

    try:
        pins = pinned_digests(args.path, variant=args.variant, solver=not args.no_solver_code)
    except MalformedInputError as exc:
        print(f"samplerguard digest: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(pins.as_json(), indent=2) if args.json else pins.as_yaml())
    return 0
