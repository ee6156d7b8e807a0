"""Verify an image against a :class:`~samplerguard.policy.spec.SamplerPolicySpec`.

The order of checks, for one image and one policy:

1. resolve the reference to a manifest digest (once; every later check binds to it);
2. pick the policy's image rules whose glob matches the image; none → the verdict fails
   (a policy that does not name an image does not vouch for it);
3. fetch the signatures once: referrers API, else the ``sha256-<hex>.sig`` tag, plus
   Sigstore bundles attached as referrers;
4. per rule, per authority: does at least one signature verify (key, or keyless chain +
   identity + Rekor SET) *and* bind the image digest? ``threshold`` authorities must pass;
5. fetch the attestations once (referrers, else the ``.att`` tag); keep the DSSE envelopes
   signed by any authority of the matching rules whose in-toto subject names this digest;
6. per attestation rule: a kept attestation of its predicate type must satisfy the SLSA
   checks (builder id, source URI, ref);
7. golden digests: when the policy pins model weights, encoder, scheduler config or solver
   code, the kept attestations must carry those artefacts, and every carried digest of a
   pinned kind must be in the golden list.

Outcomes: a *rejection* is a returned :class:`ImageVerdict` with ``passed=False`` (call
:meth:`ImageVerdict.raise_for_failure` for a :class:`VerificationError`). A registry that
cannot be reached raises :class:`TemporaryError` (fail closed, or use a last-known-good
cache). A reference that cannot be parsed raises :class:`MalformedInputError`.
"""

from __future__ import annotations

from samplerguard.policy.spec import SamplerPolicySpec
from samplerguard.supplychain.registry import RegistryClient
from samplerguard.supplychain.trust import TrustedRoots
from samplerguard.supplychain.verdict import ImageVerdict

__all__ = ["ImageVerifier"]


class ImageVerifier:
    """Verifies images; thread-safe, meant to live as long as the process.

    Args:
        client: the registry client (connections and tokens are reused across calls).
        trusted_roots: roots for keyless authorities and Sigstore bundles.
    """

    def __init__(
        self, client: RegistryClient, *, trusted_roots: TrustedRoots | None = None
    ) -> None:
        self._client = client
        self._roots = trusted_roots or TrustedRoots()

    def verify(
        self,
        image_ref: str,
        spec: SamplerPolicySpec,
        *,
        policy_name: str,
        digest: str | None = None,
        client: RegistryClient | None = None,
    ) -> ImageVerdict:
        """Verify ``image_ref`` under ``spec``.

        Args:
            image_ref: as written in the pod (``repo:tag`` or ``repo@sha256:…``).
            spec: the policy spec.
            policy_name: shown in denials (e.g. ``ClusterSamplerPolicy/prod``).
            digest: an already resolved digest (skips the tag lookup).
            client: a client for this call only, e.g. ``client.with_credentials(pull_secrets)``.

        Returns the verdict (a rejection is ``passed=False``). Raises :class:`TemporaryError`
        when the registry is unreachable and :class:`MalformedInputError` for a bad reference.
        """
        raise NotImplementedError
