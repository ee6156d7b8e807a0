"""``samplerguard crds``: write (or check) the CRDs generated from the policy models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "crds",
        help="generate the CustomResourceDefinitions from the policy models",
        description="Generate the ClusterSamplerPolicy, SamplerPolicy and wgpolicyk8s.io "
        "PolicyReport CRDs from the pydantic models. Without --out, print them to stdout as "
        "one multi-document YAML stream (pipe it to `kubectl apply -f -`).",
    )
    parser.add_argument("--out", type=Path, help="directory to write one file per CRD into")
    parser.add_argument(
        "--check",
        action="store_true",
        help="with --out: write nothing, exit 1 if the files there differ from the models",
    )
    parser.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    from samplerguard.policy.crd import render_all

    files = render_all()
    if args.out is None:
        if args.check:
            print("--check needs --out DIR", file=sys.stderr)
            return 2
        sys.stdout.write("---\n".join(files.values()))
        return 0
    out: Path = args.out
    if args.check:
        stale = [
            name
            for name, text in files.items()
            if not (out / name).is_file() or (out / name).read_text() != text
        ]
        for name in stale:
            print(f"{out / name}: differs from the models; run `samplerguard crds --out {out}`")
        return 1 if stale else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(out / name)
    return 0
