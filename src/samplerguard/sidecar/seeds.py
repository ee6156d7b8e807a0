"""Per-request seeds issued by the sidecar, never chosen by the app.

In the DRBG modes the sidecar holds the master secret; the app does not. Before a generation
the hook asks the sidecar for its request's seed (a ``SEED`` frame over the Unix socket). The
sidecar derives it (HKDF per tenant and request, :class:`~samplerguard.rng.NoiseAuthority`),
seals it to the verifier's X25519 key (the escrow, AEAD-bound to the request id and tenant) and
keeps the escrow until the request's ``START``, where it is bound into the signed predicate.
The app gets the seed so it can draw its noise locally at full speed; it learns its noise but
cannot choose it, so it can neither steer the noise nor escrow a seed of its choice (a replayed
trajectory under a new request id fails the verifier's noise check).

Pending seeds are bounded in number and age, and are never logged.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from samplerguard.errors import MalformedInputError
from samplerguard.rng import NoiseAuthority
from samplerguard.rng.escrow import escrow_seed
from samplerguard.rng.seed import RequestSeed

__all__ = ["IssuedSeed", "SeedIssuer"]


@dataclass(frozen=True)
class IssuedSeed:
    seed: RequestSeed
    tenant: str
    escrow: dict[str, Any] | None
    at: float


class SeedIssuer:
    def __init__(
        self,
        authority: NoiseAuthority,
        escrow_key: X25519PublicKey | None,
        *,
        max_pending: int = 4096,
        ttl: float = 900.0,
    ) -> None:
        self.authority = authority
        self.escrow_key = escrow_key
        self.max_pending = max_pending
        self.ttl = ttl
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, IssuedSeed] = OrderedDict()

    @property
    def mode(self) -> str:
        return str(self.authority.mode)

    def _expire(self, now: float) -> None:
        while self._pending:
            _, first = next(iter(self._pending.items()))
            if now - first.at <= self.ttl and len(self._pending) <= self.max_pending:
                return
            self._pending.popitem(last=False)

    def issue(self, tenant: str, request_id: str, mode: str) -> IssuedSeed:
        """The seed of ``request_id`` (the same one again if the hook asks twice before its
        START, e.g. after a dropped connection)."""
        if mode != self.mode:
            raise MalformedInputError(
                f"the request asks for {mode!r} noise; this sidecar issues {self.mode!r}"
            )
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            hit = self._pending.get(request_id)
            if hit is not None:
                if hit.tenant != tenant:
                    raise MalformedInputError(
                        f"request id {request_id!r} was issued a seed for another tenant"
                    )
                return hit
        seed = self.authority.seed_for(tenant, request_id)
        escrow = None
        if self.escrow_key is not None:
            escrow = escrow_seed(seed, self.escrow_key).model_dump(mode="json", by_alias=True)
        issued = IssuedSeed(seed, tenant, escrow, now)
        with self._lock:
            self._pending[request_id] = issued
            self._expire(now)
        return issued

    def take(self, tenant: str, request_id: str) -> IssuedSeed:
        """The seed issued for ``request_id``, removed from the pending set (at START)."""
        with self._lock:
            self._expire(time.monotonic())
            issued = self._pending.pop(request_id, None)
        if issued is None or issued.tenant != tenant:
            raise MalformedInputError(
                f"no seed was issued for request {request_id!r} (or it expired): in the DRBG "
                "modes the hook asks the sidecar for the request's noise before generating "
                "(SidecarSink.request_noise)"
            )
        return issued
