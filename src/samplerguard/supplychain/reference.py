"""Image references: ``[registry/]repository[:tag][@sha256:digest]``, parsed once and strictly.

Docker's normalisation applies: a reference without a registry host means Docker Hub
(``index.docker.io``) and a single-component repository there lives under ``library/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from samplerguard.errors import MalformedInputError

__all__ = ["DOCKER_HUB", "ImageReference", "parse_reference"]

DOCKER_HUB = "index.docker.io"
MAX_REFERENCE_LENGTH = 1024

# The grammar of distribution/reference, reduced to what the API v2 accepts.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(
    r"^(?:localhost|\[[0-9a-fA-F:]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]{1,5})?$"
)


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference. ``tag`` and ``digest`` may both be set (``repo:tag@digest``);
    the digest then wins, as in Kubernetes."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes into ``/v2/<name>/manifests/<reference>``: the digest, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> ImageReference:
        return ImageReference(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_reference(ref: str) -> ImageReference:
    """Parse ``ref``; raise :class:`MalformedInputError` naming what is wrong with it."""
    if not isinstance(ref, str) or not ref:
        raise MalformedInputError("image reference is empty")
    if len(ref) > MAX_REFERENCE_LENGTH:
        raise MalformedInputError(
            f"image reference is {len(ref)} characters long (at most {MAX_REFERENCE_LENGTH})"
        )
    if not ref.isascii() or any(c.isspace() or not c.isprintable() for c in ref):
        raise MalformedInputError(f"image reference {ref!r} has non-ASCII or control characters")
    rest, digest = ref, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise MalformedInputError(
                f"image reference {ref!r} has digest {digest!r} (expected sha256:<64 hex>)"
            )
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise MalformedInputError(f"image reference {ref!r} has an invalid tag {tag!r}")
    first, _, remainder = rest.partition("/")
    if remainder and (
        "." in first or ":" in first or first == "localhost" or first != first.lower()
    ):
        registry, repository = first, remainder
    else:
        registry, repository = DOCKER_HUB, rest
        if "/" not in repository:
            repository = f"library/{repository}"
    if registry in ("docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if not _HOST.match(registry):
        raise MalformedInputError(f"image reference {ref!r} has an invalid registry {registry!r}")
    if not _REPOSITORY.match(repository) or len(repository) > 255:
        raise MalformedInputError(
            f"image reference {ref!r} has an invalid repository {repository!r}"
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry, repository, tag, digest)
