"""What the webhook needs from the supply-chain verifier, as protocols.

:class:`samplerguard.supplychain.ImageVerifier` and :class:`~samplerguard.supplychain.
RegistryClient` satisfy them; the webhook depends on the shape only, so tests and embedders
can hand in anything that keeps the contract:

* ``verify`` returns a verdict (``passed=False`` is a rejection), raises
  :class:`~samplerguard.errors.TemporaryError` when the registry is unreachable and
  :class:`~samplerguard.errors.MalformedInputError` for a reference it cannot parse;
* ``resolve`` turns a tag into the manifest digest, with the same errors.

Both are blocking; the webhook runs them in a bounded thread pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from samplerguard.policy import SamplerPolicySpec
from samplerguard.supplychain.auth import DockerConfig

__all__ = ["CheckLike", "DigestResolver", "ImageVerifierLike", "PullSecrets", "VerdictLike"]


class CheckLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def detail(self) -> str: ...


class VerdictLike(Protocol):
    @property
    def passed(self) -> bool: ...

    @property
    def digest(self) -> str: ...

    @property
    def failed(self) -> Sequence[CheckLike]:
        """The checks that failed, each naming what it found and what it expected."""
        ...


class ImageVerifierLike(Protocol):
    def verify(
        self,
        image_ref: str,
        spec: SamplerPolicySpec,
        *,
        policy_name: str,
        digest: str | None = ...,
        client: Any = ...,
        policy_namespace: str | None = ...,
    ) -> VerdictLike:
        """``client``: the resolver to use for this call (one carrying the pod's pull
        secrets), or None for the verifier's own. ``policy_namespace``: a namespaced policy's
        namespace, where its keys' ``secretRef`` are read by default."""
        ...


class DigestResolver(Protocol):
    def resolve(self, ref: str) -> str: ...

    def with_credentials(self, credentials: DockerConfig) -> DigestResolver:
        """A resolver sharing this one's connections but using the pod's pull secrets."""
        ...


class PullSecrets(Protocol):
    async def credentials(self, namespace: str, names: Sequence[str]) -> DockerConfig | None:
        """The merged ``.dockerconfigjson`` of the named Secrets; None if none is readable."""
        ...
