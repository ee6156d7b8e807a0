"""``samplerguard verify-image``: check images as the admission webhook would, like
``cosign verify`` and ``kyverno test``.

What is checked: IMAGE arguments and every container image of the Pods and workloads in
``--manifest`` files, against the SamplerPolicy/ClusterSamplerPolicy documents in ``--policy``
(a file, or a directory read recursively) and, with ``--key``, against "signed by one of these
keys" (as ``cosign verify --key``). Keys that policies reference with ``secretRef`` are read
from the Secret objects in the ``--manifest`` files.

It prints every check (what was looked at, what was found, what was expected), or JSON with
``--json``, and exits 0 when every image passes every policy that governs it, 1 when one
rejects an image (or none governs it), and 2 when nothing could be checked: a bad reference
or manifest, an unreadable policy, key or trusted root, or a registry that cannot be reached.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samplerguard.cli._options import duration

__all__ = ["register", "run"]

EXIT_OK, EXIT_REJECT, EXIT_UNUSABLE = 0, 1, 2
MAX_FILES = 256
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
_POLICY_KINDS = ("ClusterSamplerPolicy", "SamplerPolicy")
_SUFFIXES = (".yaml", ".yml", ".json")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "verify-image",
        help="verify images' signatures and attestations against policies or keys",
        description="Verify IMAGEs (tag or digest) and the images of the Pods and workloads in "
        "--manifest against the SamplerPolicy/ClusterSamplerPolicy documents in --policy "
        "and/or the public keys given with --key: cosign signatures (key or keyless, N-of-M), "
        "Sigstore bundles, SLSA provenance and golden ML digests. Exit 0 pass, 1 fail, "
        "2 unusable input or unreachable registry.",
    )
    parser.add_argument("images", metavar="IMAGE", nargs="*", help="image reference(s)")
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        type=Path,
        help="policy file (YAML or JSON, multi-document) or directory of them (repeatable)",
    )
    parser.add_argument(
        "--manifest",
        "-f",
        action="append",
        default=[],
        type=Path,
        help="Pod or workload manifests whose container images are verified; Secrets in "
        "them serve the policies' secretRef keys (repeatable)",
    )
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        help="a PEM public key: the images must carry a signature by one of the keys "
        "(repeatable), as `cosign verify --key`",
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
        help="registry credentials, credHelpers and credsStore included (default: "
        "$DOCKER_CONFIG/config.json or ~/.docker/config.json)",
    )
    parser.add_argument(
        "--plain-http",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="speak plain HTTP to this registry (loopback registries always are)",
    )
    parser.add_argument("--timeout", type=duration, default="10s", help="time per request")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    parser.set_defaults(_run=run)


@dataclass
class _Inputs:
    policies: list[Any] = field(default_factory=list)
    #: (where it came from, image reference)
    images: list[tuple[str, str]] = field(default_factory=list)
    #: (namespace, name) → data (decoded)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    read: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _files(path: Path, what: str) -> list[Path]:
    from samplerguard.errors import MalformedInputError

    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
        if len(found) > MAX_FILES:
            raise MalformedInputError(f"{what} directory {path} holds more than {MAX_FILES} files")
        return found
    if not path.is_file():
        raise MalformedInputError(f"{what} {path} does not exist")
    return [path]


def _documents(path: Path, what: str) -> list[Any]:
    from samplerguard.errors import MalformedInputError
    from samplerguard.policy.load import read_documents

    return read_documents(path, what=what, error=MalformedInputError)


def _load_policies(paths: list[Path], inputs: _Inputs) -> None:
    from samplerguard.errors import MalformedInputError, PolicyError
    from samplerguard.policy.spec import parse_policy

    for base in paths:
        directory = base.is_dir()
        files = _files(base, "policy")
        before = len(inputs.policies)
        for path in files:
            inputs.read.append(f"policy {path}")
            for doc in _documents(path, "policy file"):
                kind = doc.get("kind") if isinstance(doc, dict) else None
                if directory and kind not in _POLICY_KINDS:
                    inputs.skipped.append(f"{path}: {kind or type(doc).__name__}")
                    continue
                try:
                    inputs.policies.append(parse_policy(doc))
                except PolicyError as exc:
                    raise MalformedInputError(f"policy file {path}: {exc}") from None
        if len(inputs.policies) == before:
            raise MalformedInputError(f"policy {base} holds no policy")


def _load_manifests(paths: list[Path], inputs: _Inputs) -> None:
    from samplerguard.errors import MalformedInputError
    from samplerguard.webhook.workloads import find_pod_template, handles

    for base in paths:
        for path in _files(base, "manifest"):
            inputs.read.append(f"manifest {path}")
            for doc in _documents(path, "manifest"):
                if not isinstance(doc, dict):
                    raise MalformedInputError(f"manifest {path} holds a non-object document")
                kind, api = str(doc.get("kind", "")), str(doc.get("apiVersion", ""))
                raw_meta = doc.get("metadata")
                meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
                name = f"{kind}/{meta.get('name', '?')}"
                group = api.rpartition("/")[0] if "/" in api else ""
                if kind == "Secret" and group == "":
                    _add_secret(doc, meta, inputs, path)
                elif handles(group, kind):
                    template = find_pod_template(group, kind, doc)
                    for container in template.containers:
                        where = f"{path}: {name} {container.list_name}[{container.name}]"
                        inputs.images.append((where, container.image))
                else:
                    inputs.skipped.append(f"{path}: {name}")


def _add_secret(doc: dict[str, Any], meta: dict[str, Any], inputs: _Inputs, path: Path) -> None:
    from samplerguard.errors import MalformedInputError

    data: dict[str, str] = {}
    try:
        for key, value in (doc.get("data") or {}).items():
            data[str(key)] = base64.b64decode(str(value), validate=True).decode()
        for key, value in (doc.get("stringData") or {}).items():
            data[str(key)] = str(value)
    except (binascii.Error, UnicodeDecodeError, AttributeError):
        raise MalformedInputError(f"manifest {path}: Secret data is not base64 text") from None
    namespace = str(meta.get("namespace") or "default")
    inputs.secrets[(namespace, str(meta.get("name", "")))] = data


def _key_policy(keys: list[str]) -> Any:
    """A policy naming ``keys`` as authorities, any one of which must have signed."""
    from samplerguard.errors import MalformedInputError
    from samplerguard.policy.spec import ClusterSamplerPolicy

    authorities = []
    for i, path in enumerate(keys):
        if path.startswith(("k8s://", "kms://", "awskms://", "gcpkms://", "hashivault://")):
            raise MalformedInputError(
                f"--key {path}: only PEM files are supported here; reference a Secret from a "
                "policy's key.secretRef and pass the Secret with --manifest"
            )
        try:
            pem = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise MalformedInputError(f"--key {path}: cannot be read ({exc})") from None
        authorities.append({"name": f"key-{i}", "key": {"publicKey": pem}})
    try:
        return ClusterSamplerPolicy.model_validate(
            {
                "metadata": {"name": "--key"},
                "spec": {"images": [{"glob": "**", "authorities": authorities}]},
            }
        )
    except ValueError as exc:
        raise MalformedInputError(f"--key: {exc}") from None


def _docker_config(path: Path | None) -> Any:
    from samplerguard.supplychain import DockerConfig

    if path is None:
        base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
        path = Path(base) / "config.json"
        if not path.is_file():
            return None
    try:
        # A config the user chose: its credential helpers run, as docker runs them.
        return DockerConfig.from_dockerconfigjson(path.read_bytes(), helpers=True)
    except OSError as exc:
        from samplerguard.errors import MalformedInputError

        raise MalformedInputError(f"docker config {path}: {exc.strerror}") from None


def _secret_reader(inputs: _Inputs) -> Any:
    from samplerguard.errors import VerificationError
    from samplerguard.policy.spec import SecretKeyRef

    def read(ref: SecretKeyRef, namespace: str | None) -> str:
        ns = ref.namespace or namespace or "samplerguard"
        data = inputs.secrets.get((ns, ref.name))
        if data is None:
            given = sorted(f"{n}/{m}" for n, m in inputs.secrets) or "none"
            raise VerificationError(
                f"public key Secret {ns}/{ref.name} is not among the --manifest Secrets "
                f"(given: {given})"
            )
        if ref.key not in data:
            raise VerificationError(
                f"public key Secret {ns}/{ref.name} has no data key {ref.key!r} "
                f"(got keys {sorted(data)})"
            )
        return data[ref.key]

    return read


def run(args: argparse.Namespace) -> int:
    from samplerguard.errors import MalformedInputError, PolicyError, TemporaryError
    from samplerguard.supplychain import (
        ImageVerifier,
        RegistryClient,
        TrustedRoots,
        glob_candidates,
        parse_reference,
    )

    inputs = _Inputs()
    try:
        if not args.policy and not args.key:
            raise MalformedInputError("give --policy, --key or both")
        _load_policies(list(args.policy), inputs)
        if args.key:
            inputs.policies.append(_key_policy(list(args.key)))
        inputs.images += [("argument", image) for image in args.images]
        _load_manifests(list(args.manifest), inputs)
        if not inputs.images:
            raise MalformedInputError("no image to verify (give IMAGE or a --manifest with pods)")
        parsed = [(where, ref, parse_reference(ref)) for where, ref in inputs.images]
        roots = TrustedRoots.from_files(default=args.trusted_root, allow_paths=True)
        credentials = _docker_config(args.docker_config)
    except (MalformedInputError, PolicyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    plain = list(args.plain_http)
    for _, _, image in parsed:
        host = image.registry.rsplit(":", 1)[0] if not image.registry.startswith("[") else "[::1]"
        if host in _LOOPBACK:
            plain.append(image.registry)
    results: list[dict[str, Any]] = []
    lines: list[str] = []
    with RegistryClient(credentials=credentials, plain_http=plain, timeout=args.timeout) as client:
        verifier = ImageVerifier(client, trusted_roots=roots, key_source=_secret_reader(inputs))
        for where, ref, image in parsed:
            candidates = glob_candidates(ref, image)
            governing = [
                p for p in inputs.policies if any(p.spec.image_rules_for(c) for c in candidates)
            ]
            if not governing:
                globs = {
                    f"{p.kind}/{p.metadata.name}": [r.glob for r in p.spec.images]
                    for p in inputs.policies
                }
                reason = (
                    f"no policy governs it: matched {list(candidates)} against the globs {globs}"
                )
                lines.append(f"FAIL {ref} ({where}): {reason}")
                results.append(
                    {
                        "image": ref,
                        "source": where,
                        "passed": False,
                        "policies": [],
                        "reason": reason,
                    }
                )
                continue
            digest = None
            verdicts = []
            for policy in governing:
                name = f"{policy.kind}/{policy.metadata.name}"
                try:
                    verdict = verifier.verify(
                        ref,
                        policy.spec,
                        policy_name=name,
                        digest=digest,
                        policy_namespace=policy.metadata.namespace,
                    )
                except (TemporaryError, MalformedInputError) as exc:
                    print(f"error: {ref}: {exc} (nothing was verified)", file=sys.stderr)
                    return EXIT_UNUSABLE
                digest = verdict.digest or None
                verdicts.append(verdict)
                lines.append(verdict.summary())
            results.append(
                {
                    "image": ref,
                    "source": where,
                    "passed": all(v.passed for v in verdicts),
                    "policies": [_verdict_json(v) for v in verdicts],
                }
            )
    if args.json:
        print(
            json.dumps(
                {"read": inputs.read, "skipped": inputs.skipped, "images": results}, indent=2
            )
        )
    else:
        for line in lines:
            print(line)
        print(f"read: {', '.join(inputs.read) or '--key only'}")
        if inputs.skipped:
            print(f"skipped (not a policy, workload or Secret): {', '.join(inputs.skipped[:20])}")
    return EXIT_OK if all(r["passed"] for r in results) else EXIT_REJECT


def _verdict_json(v: Any) -> dict[str, Any]:
    return {
        "policy": v.policy,
        "digest": v.digest,
        "passed": v.passed,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in v.checks],
    }
