"""Adapt an example policy to a deployment: your registry, your signing key.

The example policies name example registries and example public keys; no private key anyone
holds matches those keys, so applied as they are they deny every image. :func:`adapt` moves
every image glob onto the registry the images were pushed to and puts the public half of the
key they were signed with into every key authority. Nothing else changes, and the result is
checked by :func:`~samplerguard.policy.spec.parse_policy` before it is returned.
"""

from __future__ import annotations

import copy
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from samplerguard.errors import PolicyError
from samplerguard.policy.spec import parse_policy

__all__ = ["adapt"]


def _rehome(glob: str, registry: str) -> str:
    """``old-registry/path/**`` → ``registry/path/**``; a glob without a registry part (no dot,
    colon or ``localhost`` before the first slash, as in ``docker.io``'s short names) gets
    ``registry/`` in front."""
    first, sep, rest = glob.partition("/")
    has_registry = sep and ("." in first or ":" in first or first == "localhost" or "*" in first)
    return f"{registry}/{rest}" if has_registry else f"{registry}/{glob}"


def adapt(
    body: dict[str, Any], *, registry: str | None = None, public_key: str | None = None
) -> dict[str, Any]:
    """A copy of the policy ``body`` with its images on ``registry`` and its key authorities
    trusting ``public_key`` (PEM). Raises :class:`PolicyError` on a bad key or result."""
    if registry is not None and (not registry or "/" in registry or registry != registry.strip()):
        raise PolicyError(f"registry {registry!r} is not a registry host[:port]")
    if public_key is not None:
        try:
            load_pem_public_key(public_key.encode())
        except ValueError as exc:
            raise PolicyError(f"the public key is not a PEM public key: {exc}") from None
    out = copy.deepcopy(body)
    spec = out.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("images", []), list):
        raise PolicyError("the document has no policy spec with an images list")
    keys = 0
    for rule in spec.get("images", []):
        if not isinstance(rule, dict):
            raise PolicyError("spec.images holds an entry that is not an object")
        if registry is not None and isinstance(rule.get("glob"), str):
            rule["glob"] = _rehome(rule["glob"], registry)
        for authority in rule.get("authorities") or []:
            if public_key is not None and isinstance(authority, dict) and "key" in authority:
                authority["key"] = {**(authority["key"] or {}), "publicKey": public_key}
                keys += 1
    if public_key is not None and not keys:
        raise PolicyError("the policy has no key authority to put the public key into")
    parse_policy(out)
    return out
