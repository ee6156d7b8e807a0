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
    "MalformedInputError",
    "PolicyError",
    "SamplerGuardError",
    "TemporaryError",
    "VerificationError",
]


class SamplerGuardError(Exception):
    """Base of every error samplerguard raises on purpose."""


class VerificationError(SamplerGuardError):
    """A check ran and the object failed it."""


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
