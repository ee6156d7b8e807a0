"""``samplerguard verify-image REF --policy FILE``: check an image as the admission webhook
would, like ``cosign verify`` and policy-controller's ``policy-tester``.

It prints every check (what was looked at, what was found, what was expected) and exits
0 when the image passes every policy in FILE that governs it, 1 when one rejects it (or none
governs it), and 2 when nothing could be checked: a bad reference, an unreadable policy or
trusted root, or a registry that cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]

EXIT_OK, EXIT_REJECT, EXIT_UNUSABLE = 0, 1, 2
MAX_POLICY_BYTES = 1 << 20
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "verify-image",
        help="verify an image's signatures and attestations against a policy",
        description="Verify IMAGE (tag or digest) against the SamplerPolicy/ClusterSamplerPolicy "
        "documents in --policy: cosign signatures (key or keyless, N-of-M), SLSA provenance "
        "and golden ML digests. Exit 0 pass, 1 fail, 2 unusable input or unreachable registry.",
    )
    parser.add_argument("image", metavar="IMAGE", help="image reference, e.g. reg/acme/x:1.0")
    parser.add_argument(
        "--policy", required=True, type=Path, help="policy file (YAML or JSON, multi-document)"
    )
    parser.add_argument(
        "--trusted-root",
        type=Path,
        help="trusted_root.json for keyless authorities without their own trustedRoot "
        "(default: the Sigstore production root bundled with sigstore-python); authorities "
        "naming a trustedRoot file path use that file",
    )
    parser.add_argument(
        "--docker-config",
        type=Path,
        help="registry credentials (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json)",
    )
    parser.add_argument(
        "--plain-http",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="speak plain HTTP to this registry (loopback registries always are)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    parser.set_defaults(_run=run)


def _load_policies(path: Path) -> list[Any]:
    import yaml

    from samplerguard.errors import PolicyError
    from samplerguard.policy.spec import parse_policy

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"policy file {path}: {exc.strerror}") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy file {path} is larger than {MAX_POLICY_BYTES} bytes")
    try:
        docs = [d for d in yaml.safe_load_all(raw) if d is not None]
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy file {path} is not YAML: {exc}") from None
    if not docs:
        raise PolicyError(f"policy file {path} holds no policy")
    return [parse_policy(d) for d in docs]


def _docker_config(path: Path | None) -> Any:
    from samplerguard.supplychain import DockerConfig

    if path is None:
        base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
        path = Path(base) / "config.json"
        if not path.is_file():
            return None
    try:
        return DockerConfig.from_dockerconfigjson(path.read_bytes())
    except OSError as exc:
        from samplerguard.errors import MalformedInputError

        raise MalformedInputError(f"docker config {path}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    from samplerguard.errors import MalformedInputError, TemporaryError
    from samplerguard.supplychain import (
        ImageVerifier,
        RegistryClient,
        TrustedRoots,
        glob_candidates,
        parse_reference,
    )

    try:
        image = parse_reference(args.image)
        policies = _load_policies(args.policy)
        roots = TrustedRoots.from_files(default=args.trusted_root, allow_paths=True)
        credentials = _docker_config(args.docker_config)
    except MalformedInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    host = image.registry.rsplit(":", 1)[0] if not image.registry.startswith("[") else "[::1]"
    plain = list(args.plain_http) + ([image.registry] if host in _LOOPBACK else [])
    candidates = glob_candidates(args.image, image)
    governing = [p for p in policies if any(p.spec.image_rules_for(c) for c in candidates)]
    if not governing:
        names = ", ".join(f"{p.kind}/{p.metadata.name}" for p in policies)
        print(f"FAIL {args.image}: no policy in {args.policy} governs it ({names})")
        return EXIT_REJECT
    verdicts = []
    with RegistryClient(credentials=credentials, plain_http=plain, timeout=args.timeout) as client:
        verifier = ImageVerifier(client, trusted_roots=roots)
        digest = None
        for policy in governing:
            name = f"{policy.kind}/{policy.metadata.name}"
            try:
                verdict = verifier.verify(args.image, policy.spec, policy_name=name, digest=digest)
            except TemporaryError as exc:
                print(f"error: {exc} (nothing was verified)", file=sys.stderr)
                return EXIT_UNUSABLE
            except MalformedInputError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_UNUSABLE
            digest = verdict.digest or None
            verdicts.append(verdict)
    if args.json:
        doc = [
            {
                "image": v.image,
                "digest": v.digest,
                "policy": v.policy,
                "passed": v.passed,
                "checks": [
                    {"name": c.name, "passed": c.passed, "detail": c.detail} for c in v.checks
                ],
            }
            for v in verdicts
        ]
        print(json.dumps(doc, indent=2))
    else:
        for v in verdicts:
            print(v.summary())
    return EXIT_OK if all(v.passed for v in verdicts) else EXIT_REJECT
