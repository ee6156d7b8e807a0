"""The error hierarchy every component shares.

The type decides what happens next:

* :class:`VerificationError`: the object was checked and is *rejected* (deny, exit 1).
* :class:`MalformedInputError`: the input cannot be checked at all (HTTP 4xx, exit 2).
* :class:`TemporaryError`: a dependency is unavailable; retrying later may succeed.
  Callers that must fail closed treat it as a rejection.

Third-party exceptions are translated once, where they enter, with ``raise Ours(...) from exc``.
Messages say what was checked, what was found and what was expected, and never carry secrets.
"""

from __future__ import annotations

__all__ = [
    "CHECKS",
    "MalformedInputError",
    "PolicyError",
    "SamplerGuardError",
    "TemporaryError",
    "VerificationError",
]


class SamplerGuardError(Exception):
    """Base of every error samplerguard raises on purpose."""


#: The checks a :class:`VerificationError` of a commitment or trajectory names in ``check``:
#: stable identifiers that reports, metrics and callers branch on (never the message).
CHECKS: frozenset[str] = frozenset(
    {
        "signature",  # the DSSE envelope and its signature under the producer's key
        "statement",  # the in-toto statement: types and the recipe digest it carries
        "replay",  # the commitment was signed for another trajectory or request
        "commitment",  # an opening or transcript for another commitment, or a step outside it
        "inclusion",  # a leaf under the signed Merkle root
        "leaf",  # a committed leaf's shape: JSON, type and index
        "digest",  # an opened tensor or leaf against its committed digest
        "state",  # a sampler state a genuine scheduler carries
        "schedule",  # the timesteps, sigmas and loop range of the declared schedule
        "sampler",  # the declared sampler: known, buildable, its number of steps
        "noise",  # the number and shapes of the noise draws of a step
        "shape",  # the latent shape the recipe declares
        "model",  # the declared model and pipeline against the reference
        "recheck",  # re-running one step with the reference
        "build",  # the verifier's build against the one the policy requires
        "request-binding",  # the request's parameters and conditioning
        "output-binding",  # the served output against the final latent and the signed subject
        "noise-binding",  # the noise against the escrowed seed
        "escrow",  # the seed escrow: recipient, tenant, request and keys
        "malformed",  # a transcript or opening from the prover that does not parse
        "policy",  # the committed recipe against the policy
        "ticket",  # the gateway's request ticket: signer, request, tenant, lifetime
    }
)

#: Longest ``found`` / ``expected`` kept on an error (they are summaries, not payloads).
_FIELD_CHARS = 200


class VerificationError(SamplerGuardError):
    """A check ran and the object failed it.

    ``check`` names the check that failed (one of :data:`CHECKS` for commitments and
    trajectories; other components use their own short names), ``found`` and ``expected`` what
    it saw and what it wanted, as short strings, or ``None`` where there is no single value.
    """

    def __init__(
        self,
        message: str,
        *,
        check: str | None = None,
        found: str | None = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message)
        self.check = check
        self.found = None if found is None else found[:_FIELD_CHARS]
        self.expected = None if expected is None else expected[:_FIELD_CHARS]


class MalformedInputError(SamplerGuardError):
    """The input is truncated, corrupted, oversized or of the wrong shape; nothing was checked."""


class PolicyError(MalformedInputError):
    """A policy is invalid: wrong types, inconsistent ranges, unknown names, bad keys or regexes."""


class TemporaryError(SamplerGuardError):
    """A dependency (registry, sidecar, API server) did not answer in time.

    Retry after ``delay`` seconds.
    """

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay
