"""Per-request seeds issued by the sidecar, never chosen by the app.

In the DRBG modes the sidecar holds the master secret; the app does not. Before a generation
the hook asks the sidecar for its request's seed (a ``SEED`` frame over the Unix socket). The
sidecar derives it (HKDF per tenant and request, :class:`~samplerguard.rng.NoiseAuthority`),
seals it to the verifier's X25519 key (the escrow, AEAD-bound to the request id and tenant) and
keeps the escrow until the request's ``START``, where it is bound into the signed predicate.
The app gets the seed so it can draw its noise locally at full speed; it learns its noise but
cannot choose it, so it can neither steer the noise nor escrow a seed of its choice (a replayed
trajectory under a new request id fails the verifier's noise check).

The master secret and the escrow key are files of the namespace's DRBG Secret volume. The
kubelet updates such a volume in place (a new generation directory behind an atomically swapped
``..data`` link) when the Secret changes, e.g. when the operator makes a new master secret after
the old one was lost. The issuer follows the files: at most once per ``check_interval`` it
compares their identity (device, inode, size, mtime) and, when it changed, reads them again.
A new master secret is used for the seeds issued from then on (the used-id ledger is kept, so
no request id gets a second seed); the seeds already issued keep their escrows, which carry the
seed sealed to the verifier, so they still open. While a file is missing or malformed no seed
is issued (fail closed: the app's DRBG generation is refused, never served other noise) until
a valid one is back.

Pending seeds are bounded in number and age, and are never logged; nor is the master secret.
A seed that lapses unbound (its time to live ran out, the pending set was full, or the sidecar
restarted first) is written to the :class:`~samplerguard.sidecar.abandoned.SeedLedger`, which
the verifier reads: asking for seeds under fresh request ids and keeping the draw one likes
leaves one abandoned seed per draw discarded.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from samplerguard.errors import MalformedInputError, TemporaryError
from samplerguard.rng import NoiseAuthority, load_master_secret
from samplerguard.rng.authority import ENV_SECRET_FILE
from samplerguard.rng.escrow import escrow_seed, load_x25519_public_key
from samplerguard.rng.seed import RequestSeed
from samplerguard.sidecar.abandoned import EVICTED, EXPIRED, SeedLedger

__all__ = ["IssuedSeed", "SecretUnavailableError", "SeedIssuer", "seed_issuer_from_files"]

log = logging.getLogger(__name__)

#: what ``on_change`` is told: a new master secret, a new escrow key, the files unusable, the
#: same files usable again
SecretChange = str


class SecretUnavailableError(TemporaryError):
    """The master secret (or the escrow key) cannot be used right now: no seed is issued."""


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
        files: _SecretFiles | None = None,
        master_digest: bytes = b"",
        check_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[SecretChange], None] | None = None,
        ledger: SeedLedger | None = None,
        tenant: str | None = None,
    ) -> None:
        self.authority = authority
        self.ledger = ledger
        #: the pod's tenant, when the sidecar is bound to one: seeds are issued for it alone
        self.tenant = tenant or None
        self.escrow_key = escrow_key
        self.max_pending = max_pending
        self.ttl = ttl
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, IssuedSeed] = OrderedDict()
        #: the mounted files the secret and key came from (None: fixed for the process's life)
        self._files = files
        self.check_interval = check_interval
        self._clock = clock
        self._on_change = on_change
        self._files_lock = threading.Lock()
        self._checked = clock()
        #: the files' identity when last read (None: read them at the next check)
        self._identity: tuple[tuple[int, int, int, int], ...] | None = None
        #: SHA-256 of the master secret in use (to tell a new secret from a rewritten one)
        self._master_digest = master_digest
        #: why no seed is issued right now (the files are missing or malformed), else None
        self.secret_problem: str | None = None
        #: how many times a new master secret was taken up
        self.secret_changes = 0

    @property
    def mode(self) -> str:
        return str(self.authority.mode)

    def _expire(self, now: float) -> None:
        while self._pending:
            _, first = next(iter(self._pending.items()))
            expired = now - first.at > self.ttl
            if not expired and len(self._pending) <= self.max_pending:
                return
            rid, _ = self._pending.popitem(last=False)
            if self.ledger is not None:
                self.ledger.abandoned(rid, EXPIRED if expired else EVICTED)

    def sweep(self) -> None:
        """Move the seeds past their time to live to the ledger now (before a listing)."""
        with self._lock:
            self._expire(time.monotonic())

    def issue(
        self, tenant: str, request_id: str, mode: str, *, derived: bool = False
    ) -> IssuedSeed:
        """The seed of ``request_id`` (the same one again if the hook asks twice before its
        START, e.g. after a dropped connection). ``derived``: a ticketed request id, whose seed
        is a function of the master secret, tenant and id (see ``NoiseAuthority.seed_for``)."""
        if self.tenant is not None and tenant != self.tenant:
            raise MalformedInputError(
                f"request tenant {tenant[:128]!r} is not this pod's tenant {self.tenant!r}: no "
                "seed is issued for it"
            )
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
        authority, escrow_key = self.current()
        seed = authority.seed_for(tenant, request_id, derived=derived)
        escrow = None
        if escrow_key is not None:
            escrow = escrow_seed(seed, escrow_key).model_dump(mode="json", by_alias=True)
        issued = IssuedSeed(seed, tenant, escrow, now)
        with self._lock:
            if self.ledger is not None:
                self.ledger.issued(request_id, tenant)
            self._pending[request_id] = issued
            self._expire(now)
        return issued

    def take(self, tenant: str, request_id: str) -> IssuedSeed:
        """The seed issued for ``request_id``, removed from the pending set (at START)."""
        with self._lock:
            self._expire(time.monotonic())
            issued = self._pending.pop(request_id, None)
            if issued is not None and issued.tenant != tenant and self.ledger is not None:
                self.ledger.abandoned(request_id, "claimed for another tenant")
        if issued is None or issued.tenant != tenant:
            raise MalformedInputError(
                f"no seed was issued for request {request_id!r} (or it expired): in the DRBG "
                "modes the hook asks the sidecar for the request's noise before generating "
                "(SidecarSink.request_noise)"
            )
        return issued

    # -- the mounted secret --------------------------------------------------------------------

    def current(self) -> tuple[NoiseAuthority, X25519PublicKey | None]:
        """The authority and escrow key to issue with now, after looking at the mounted files
        when ``check_interval`` has passed. Raises :class:`SecretUnavailableError` while they
        are unusable."""
        if self._files is not None:
            with self._files_lock:
                now = self._clock()
                if now - self._checked >= self.check_interval:
                    self._checked = now
                    self._recheck(self._files)
                if self.secret_problem is not None:
                    raise SecretUnavailableError(self.secret_problem)
        return self.authority, self.escrow_key

    def _recheck(self, files: _SecretFiles) -> None:
        # identity before content: a swap in between shows up as a change at the next check
        try:
            identity = files.identity()
            if identity == self._identity and self.secret_problem is None:
                return
            master, escrow_key = files.read()
        except (OSError, MalformedInputError) as exc:
            problem = (
                "the DRBG master secret is unusable, new DRBG requests are refused until it is "
                f"valid again: {_reason(exc)}"
            )
            if self.secret_problem is None:
                log.error("%s", problem)
                self._notify("unusable")
            self.secret_problem = problem
            self._identity = None
            return
        recovered, changes = self.secret_problem is not None, []
        digest = hashlib.sha256(master).digest()
        if not hmac.compare_digest(digest, self._master_digest):
            self.authority = self.authority.with_master(master)
            self._master_digest = digest
            self.secret_changes += 1
            changes.append("rotated")
            log.warning(
                "DRBG master secret changed (%s): new requests get seeds from the new secret; "
                "the escrows already made still open at the verifier",
                files.secret_file,
            )
        if escrow_key is not None and not _same_key(escrow_key, self.escrow_key):
            self.escrow_key = escrow_key
            changes.append("escrow-key")
            log.warning(
                "escrow public key changed (%s): new seeds are escrowed to the new key",
                files.escrow_file,
            )
        self._identity, self.secret_problem = identity, None
        if recovered and not changes:
            changes.append("restored")
            log.warning("DRBG master secret usable again (%s)", files.secret_file)
        for change in changes:
            self._notify(change)

    def _notify(self, change: SecretChange) -> None:
        if self._on_change is not None:
            try:
                self._on_change(change)
            except Exception:  # reporting must not stop issuing
                log.exception("DRBG secret change %s not reported", change)


@dataclass(frozen=True)
class _SecretFiles:
    """The master secret file and the escrow public key file (both from the Secret volume)."""

    secret_file: Path
    escrow_file: Path | None

    def identity(self) -> tuple[tuple[int, int, int, int], ...]:
        """(device, inode, size, mtime) of each file, through the volume's links."""
        out = []
        for path in (self.secret_file, self.escrow_file):
            if path is not None:
                st = os.stat(path)
                out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def read(self) -> tuple[bytes, X25519PublicKey | None]:
        master = load_master_secret({ENV_SECRET_FILE: str(self.secret_file)})
        key = None
        if self.escrow_file is not None:
            try:
                raw = self.escrow_file.read_bytes()
            except OSError as exc:
                raise MalformedInputError(
                    f"cannot read the verifier's escrow key {self.escrow_file}: {exc.strerror}"
                ) from None
            try:
                key = load_x25519_public_key(raw)
            except MalformedInputError as exc:
                raise MalformedInputError(
                    f"the verifier's escrow key {self.escrow_file}: {exc}"
                ) from None
        return master, key


def seed_issuer_from_files(
    mode: str,
    secret_file: Path,
    escrow_file: Path | None,
    *,
    check_interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    on_change: Callable[[SecretChange], None] | None = None,
    ttl: float = 900.0,
    ledger: SeedLedger | None = None,
    tenant: str | None = None,
) -> SeedIssuer:
    """The sidecar's issuer: the master secret and the escrow key read from their files, and
    followed there (see the module's docstring). A file unusable at start is an error."""
    files = _SecretFiles(secret_file, escrow_file)
    master, escrow_key = files.read()
    return SeedIssuer(
        NoiseAuthority(master, mode),
        escrow_key,
        files=files,
        master_digest=hashlib.sha256(master).digest(),
        check_interval=check_interval,
        clock=clock,
        on_change=on_change,
        ttl=ttl,
        ledger=ledger,
        tenant=tenant,
    )


def _same_key(a: X25519PublicKey, b: X25519PublicKey | None) -> bool:
    if b is None:
        return False
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    return a.public_bytes(*raw) == b.public_bytes(*raw)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read {exc.filename}: {exc.strerror}"
    return str(exc)
