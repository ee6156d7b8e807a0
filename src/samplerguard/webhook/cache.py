"""The verdict cache, with last-known-good for registry outages.

A verdict is cached under ``(repository, digest, policy uid, policy spec version)``. The
brief's key is (digest, policy uid, resourceVersion). The repository joins it because
signatures live beside the repository and image rules match on its name, so a digest verified
under one name proves nothing about another. The spec version is ``metadata.generation`` in a
cluster (see :func:`~samplerguard.webhook.policies.spec_version`): the resourceVersion also
moves on every status write by the operator.

Three clocks:

* ``fresh_ttl``: a pass younger than this is served without asking the registry;
* ``last_known_good_ttl``: while the registry is unreachable (a :class:`TemporaryError`), a
  pass younger than this still passes; anything else fails closed;
* ``failure_ttl``: a rejection is remembered briefly so a crash-looping bad pod does not hammer
  the registry; temporary failures are never cached. A rejection is remembered per *scope*
  (the pull secrets it was checked with): a registry refusing anonymous access must not deny a
  pod that brings credentials. A pass is a pass whoever asked.

Tag→digest resolutions are cached the same way (``resolve_ttl`` fresh, last-known-good during
an outage), since a tag's digest was verified before it was cached. Everything runs on the
event loop thread, so there is no locking; the size is bounded (least recently used goes).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["CacheKey", "CachedVerdict", "ResolutionCache", "VerdictCache"]

#: (repository, digest, policy uid, policy spec version)
CacheKey = tuple[str, str, str, str]

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class CachedVerdict:
    passed: bool
    #: What was checked (pass) or why it failed (denial text).
    detail: str
    at: float


class _Lru(Generic[K, V]):
    def __init__(self, max_entries: int) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._max = max_entries

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


class VerdictCache:
    def __init__(
        self,
        *,
        fresh_ttl: float = 300.0,
        last_known_good_ttl: float = 3600.0,
        failure_ttl: float = 10.0,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= fresh_ttl <= last_known_good_ttl:
            raise ValueError("need 0 <= fresh_ttl <= last_known_good_ttl")
        self.fresh_ttl = fresh_ttl
        self.last_known_good_ttl = last_known_good_ttl
        self.failure_ttl = failure_ttl
        self._clock = clock
        self._passes: _Lru[CacheKey, CachedVerdict] = _Lru(max_entries)
        self._failures: _Lru[tuple[CacheKey, str], CachedVerdict] = _Lru(max_entries)

    def fresh(self, key: CacheKey, scope: str = "") -> CachedVerdict | None:
        """A verdict to serve without asking the registry, if there is one."""
        now = self._clock()
        failure = self._failures.get((key, scope))
        if failure is not None:
            if now - failure.at < self.failure_ttl:
                return failure
            self._failures.pop((key, scope))
        passed = self._passes.get(key)
        if passed is not None and now - passed.at < self.fresh_ttl:
            return passed
        return None

    def last_known_good(self, key: CacheKey) -> CachedVerdict | None:
        """A pass within the last-known-good window: only for when the registry is down."""
        passed = self._passes.get(key)
        if passed is not None and self._clock() - passed.at < self.last_known_good_ttl:
            return passed
        return None

    def record_pass(self, key: CacheKey, detail: str, scope: str = "") -> CachedVerdict:
        verdict = CachedVerdict(True, detail, self._clock())
        self._passes.put(key, verdict)
        self._failures.pop((key, scope))
        return verdict

    def record_failure(self, key: CacheKey, detail: str, scope: str = "") -> CachedVerdict:
        verdict = CachedVerdict(False, detail, self._clock())
        # A rejection ends the last-known-good of the same key: the registry has spoken.
        self._passes.pop(key)
        if self.failure_ttl > 0:
            self._failures.put((key, scope), verdict)
        return verdict

    def __len__(self) -> int:
        return len(self._passes) + len(self._failures)


class ResolutionCache:
    """Tag → digest, fresh for ``ttl`` and last-known-good for ``last_known_good_ttl``."""

    def __init__(
        self,
        *,
        ttl: float = 30.0,
        last_known_good_ttl: float = 3600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.last_known_good_ttl = last_known_good_ttl
        self._clock = clock
        self._data: _Lru[str, tuple[str, float]] = _Lru(max_entries)

    def fresh(self, ref: str) -> str | None:
        hit = self._data.get(ref)
        return hit[0] if hit is not None and self._clock() - hit[1] < self.ttl else None

    def last_known_good(self, ref: str) -> str | None:
        hit = self._data.get(ref)
        if hit is not None and self._clock() - hit[1] < self.last_known_good_ttl:
            return hit[0]
        return None

    def put(self, ref: str, digest: str) -> None:
        self._data.put(ref, (digest, self._clock()))
