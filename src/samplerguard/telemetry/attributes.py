"""Attribute values for metrics: closed vocabularies, so cardinality stays bounded.

Every attribute value samplerguard puts on a metric comes from one of the functions here. Each
maps free input (a sampler name from a request, a digest, a check name) onto a *known, finite*
set plus ``"other"`` (or ``"invalid"`` for malformed input). Nothing a client sends reaches a
metric attribute verbatim, which gives two guarantees at once:

* cardinality: a time-series database sees at most ``len(vocabulary) + 2`` values per key, even
  when a client sends a new schedule id with every request;
* secrecy: seeds, keys, tenant names and request ids cannot leak into telemetry, because no
  function here passes through an arbitrary string.

Hash beacons are the one open-ended value. :class:`BoundedLabels` keeps the first ``limit``
distinct 12-hex-digit prefixes it sees and maps later ones to ``"other"``.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable

from samplerguard.errors import CHECKS
from samplerguard.policy.spec import KNOWN_SAMPLERS, KNOWN_SCHEDULES

__all__ = [
    "ARTIFACTS",
    "DRIFT_FEATURES",
    "INVALID",
    "OTHER",
    "POLICY_ACTIONS",
    "POLICY_CHECKS",
    "RNG_MODES",
    "SAMPLERS",
    "SCHEDULES",
    "SEED_HEALTH_CHECKS",
    "VERIFICATION_OUTCOMES",
    "VERIFICATION_REASONS",
    "BoundedLabels",
    "beacon_prefix",
    "normalise",
]

#: The value for a well-formed name outside the vocabulary.
OTHER = "other"
#: The value for input that is not a name at all (wrong type, empty, too long, odd characters).
INVALID = "invalid"

SAMPLERS: frozenset[str] = frozenset(KNOWN_SAMPLERS)
SCHEDULES: frozenset[str] = KNOWN_SCHEDULES
# -> RngRule.mode in policy.spec
RNG_MODES: frozenset[str] = frozenset({"ctr-drbg", "hmac-drbg", "framework"})
# The battery in rng.health (not imported: it needs torch), plus the reuse detector.
SEED_HEALTH_CHECKS: frozenset[str] = frozenset(
    {
        "finite",
        "mean",
        "channel-mean",
        "variance",
        "skewness",
        "kurtosis",
        "ks",
        "autocorr-w",
        "autocorr-h",
        "autocorr-c",
        "batch-coherence",
        "repeats",
        "noise-reuse",
    }
)
# -> GoldenDigests fields in policy.spec, plus the combined beacon.
ARTIFACTS: frozenset[str] = frozenset(
    {"model_weights", "text_encoder", "scheduler_config", "solver_code", "beacon"}
)
#: Features the drift detector compares (``samplerguard.telemetry.drift``).
DRIFT_FEATURES: frozenset[str] = frozenset({"guidance_scale", "steps", "schedule", "sampler"})
VERIFICATION_OUTCOMES: frozenset[str] = frozenset({"pass", "fail", "error"})
#: Why a verification ended the way it did: the verifier's own reasons, then the check a rejected
#: commitment or trajectory failed (``VerificationError.check``).
VERIFICATION_REASONS: frozenset[str] = CHECKS | frozenset(
    {
        "ok",
        "signature",
        "inclusion",
        "rel_l2",
        "seed_escrow",
        "malformed",
        "timeout",
        "unreachable",
        "digest",
        "internal",
    }
)
#: Recipe checks the sidecar enforces.
POLICY_CHECKS: frozenset[str] = frozenset(
    {
        "guidance",
        "steps",
        "schedule",
        "sampler",
        "rng",
        "prediction_type",
        "integrity",
        "seed",
        "ticket",
    }
)
# -> SamplerPolicySpec.mode: enforce rejects, warn and audit let the request through.
POLICY_ACTIONS: frozenset[str] = frozenset({"rejected", "quarantined", "warned", "audited"})

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.+-]{0,63}$")
_DIGEST = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
_PREFIX_HEX = 12


def normalise(value: object, vocabulary: Iterable[str]) -> str:
    """Map ``value`` onto ``vocabulary`` ∪ {"other", "invalid"}.

    Case and surrounding whitespace are ignored and ``_``/``-`` are interchangeable, so
    ``"DPMPP-2M"`` finds ``"dpmpp_2m"``. A string that is not name-shaped is ``"invalid"``.
    """
    if not isinstance(value, str):
        return INVALID
    text = value.strip().lower()
    if not _NAME.fullmatch(text):
        return INVALID
    known = _lowered(vocabulary if isinstance(vocabulary, frozenset) else frozenset(vocabulary))
    for variant in (text, text.replace("-", "_"), text.replace("_", "-")):
        if variant in known:
            return known[variant]
    return OTHER


@functools.lru_cache(maxsize=64)
def _lowered(vocabulary: frozenset[str]) -> dict[str, str]:
    """The vocabulary by lower-case spelling (diffusers class names are mixed case)."""
    return {v.lower(): v for v in vocabulary}


def beacon_prefix(digest: object) -> str:
    """``"sha256:<64 hex>"`` (or bare hex) → its first 12 hex digits; anything else → ``"invalid"``.

    Twelve hex digits (48 bits) tell a fleet's builds apart and say nothing more than the
    public beacon itself.
    """
    if not isinstance(digest, str):
        return INVALID
    match = _DIGEST.fullmatch(digest.strip().lower())
    return match.group(1)[:_PREFIX_HEX] if match else INVALID


class BoundedLabels:
    """First-come label set with a hard cap: the ``limit + 1``-th distinct label is ``"other"``.

    Thread-safe. ``"invalid"`` and ``"other"`` pass through and do not use up the cap.
    """

    def __init__(self, limit: int = 32, *, initial: Iterable[str] = ()) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        for label in initial:
            self.admit(label)

    @property
    def labels(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._seen)

    def admit(self, label: str) -> str:
        """Return ``label`` if it is (or can become) one of the tracked labels, else ``"other"``."""
        if label in (OTHER, INVALID):
            return label
        with self._lock:
            if label in self._seen:
                return label
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(label)
            return label
