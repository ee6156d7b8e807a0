"""``samplerguard adapt-policy``: an example policy moved to your registry and signing key."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "adapt-policy",
        help="adapt an example policy to your registry and signing key",
        description="Print POLICY with every image glob moved to --registry and every key "
        "authority trusting --public-key (the public half of the key the images are signed "
        "with, e.g. cosign.pub). Pipe it to `kubectl apply -f -`.",
    )
    p.add_argument("policy", type=Path, help="a policy YAML file (one document)")
    p.add_argument("--registry", help="registry HOST[:PORT] the images were pushed to")
    p.add_argument("--public-key", type=Path, help="PEM public key the images are signed with")
    p.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from samplerguard.errors import MalformedInputError
    from samplerguard.policy.adapt import adapt
    from samplerguard.policy.load import read_documents

    try:
        docs = read_documents(args.policy)
        if len(docs) != 1 or not isinstance(docs[0], dict):
            raise MalformedInputError(f"{args.policy} holds {len(docs)} documents, expected one")
        key = args.public_key.read_text(encoding="utf-8") if args.public_key else None
        out = adapt(docs[0], registry=args.registry, public_key=key)
    except (OSError, yaml.YAMLError, MalformedInputError) as exc:
        print(f"samplerguard adapt-policy: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(out, sort_keys=False))
    return 0
