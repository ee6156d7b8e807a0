"""Per-tenant, per-request noise derived from one master secret that only the sidecar holds.

Derivation (HKDF-SHA256 throughout; ``lp(x)`` is x prefixed by its 4-byte length, so no two
different (tenant, id) pairs collide)::

    tenant_key     = HKDF(master,     salt="samplerguard/v1/tenant",  info=lp(tenant))
    entropy_input  = HKDF(tenant_key, salt="samplerguard/v1/request", info=lp(request_id))  # 32 B
    nonce          = os.urandom(16)       (or HKDF(tenant_key, "…/nonce", lp(request_id)) when
                                           deterministic=True, for tests and the demo)
    pseudonym_key  = HKDF(master, salt="samplerguard/v1/pseudonym")
    tenant_pseudonym = "t-"  + HMAC(pseudonym_key, lp("tenant") ‖ lp(tenant))[:12].hex()
    seed_pseudonym   = "s-"  + HMAC(pseudonym_key, lp("seed") ‖ seed material)[:8].hex()
    ledger entry     = HMAC(ledger_key, lp(tenant) ‖ lp(request_id))[:16]

The DRBG is then instantiated with (entropy_input, nonce, personalization =
"samplerguard/v1|<mode>|<tenant pseudonym>|<request id>"). Different tenants get different
tenant keys, so their streams are independent; a request id is claimed in the
:class:`~samplerguard.rng.ledger.RequestLedger` before any noise is produced.

The master secret comes from ``SAMPLERGUARD_MASTER_SECRET_FILE`` (a file holding ≥ 32 raw bytes,
or their hex) or ``SAMPLERGUARD_MASTER_SECRET`` (hex, or ``base64:`` followed by base64).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from samplerguard.errors import MalformedInputError
from samplerguard.rng.ledger import RequestLedger
from samplerguard.rng.noise import RequestNoise
from samplerguard.rng.seed import RequestSeed, RngMode, check_mode

__all__ = [
    "ENV_JOURNAL",
    "ENV_SECRET",
    "ENV_SECRET_FILE",
    "NoiseAuthority",
    "load_master_secret",
]

ENV_SECRET_FILE = "SAMPLERGUARD_MASTER_SECRET_FILE"  # noqa: S105 - a variable name
ENV_SECRET = "SAMPLERGUARD_MASTER_SECRET"  # noqa: S105 - a variable name
ENV_JOURNAL = "SAMPLERGUARD_REQUEST_JOURNAL"

_MIN_SECRET = 32
_MAX_SECRET = 4096
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,252}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_HEXTEXT = re.compile(rb"^[0-9a-fA-F]+$")


def _lp(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return len(raw).to_bytes(4, "big") + raw


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _decode_secret(raw: bytes, where: str) -> bytes:
    text = raw.strip()
    if text.startswith(b"base64:"):
        try:
            secret = base64.b64decode(text[7:], validate=True)
        except (binascii.Error, ValueError):
            raise MalformedInputError(f"the master secret in {where} is not valid base64") from None
    elif len(text) >= 2 * _MIN_SECRET and len(text) % 2 == 0 and _HEXTEXT.fullmatch(text):
        secret = bytes.fromhex(text.decode())
    else:
        secret = raw
    if not _MIN_SECRET <= len(secret) <= _MAX_SECRET:
        # The length is not secret; the bytes are never shown.
        raise MalformedInputError(
            f"the master secret in {where} is {len(secret)} bytes; "
            f"{_MIN_SECRET}..{_MAX_SECRET} are required"
        )
    return secret


def load_master_secret(env: Mapping[str, str] | None = None) -> bytes:
    """Read the master secret from ``$SAMPLERGUARD_MASTER_SECRET_FILE`` or
    ``$SAMPLERGUARD_MASTER_SECRET`` (the file wins when both are set)."""
    env = os.environ if env is None else env
    path = env.get(ENV_SECRET_FILE)
    if path:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(_MAX_SECRET * 2 + 64)
        except OSError as exc:
            raise MalformedInputError(
                f"cannot read the master secret file {path} ({ENV_SECRET_FILE}): {exc.strerror}"
            ) from None
        return _decode_secret(raw, f"{ENV_SECRET_FILE}={path}")
    value = env.get(ENV_SECRET)
    if value:
        return _decode_secret(value.encode(), ENV_SECRET)
    raise MalformedInputError(f"no master secret: set {ENV_SECRET_FILE} or {ENV_SECRET}")


class NoiseAuthority:
    """Hands out one :class:`RequestNoise` per (tenant, request id), never twice.

    ``ledger_capacity`` bounds memory (16 bytes and some overhead per remembered id);
    ``journal`` makes the used-id ledger survive restarts (see :mod:`samplerguard.rng.ledger`).
    ``deterministic=True`` derives the DRBG nonce instead of drawing it from the OS, so that a
    (master, tenant, request id) triple always gives the same noise: for tests and the demo.
    """

    def __init__(
        self,
        master_secret: bytes,
        mode: str = "ctr-drbg",
        *,
        ledger_capacity: int = 1 << 18,
        journal: Path | None = None,
        journal_fsync: bool = True,
        deterministic: bool = False,
    ) -> None:
        _check_master(master_secret)
        self._mode: RngMode = check_mode(mode)
        self._master = master_secret
        self._pseudonym_key = _hkdf(master_secret, b"samplerguard/v1/pseudonym", b"")
        ledger_key = _hkdf(master_secret, b"samplerguard/v1/ledger", b"")
        self._ledger_key = ledger_key
        fingerprint = hmac.new(ledger_key, b"journal-id", hashlib.sha256).digest()[:8]
        self._ledger = RequestLedger(
            fingerprint, capacity=ledger_capacity, journal=journal, fsync=journal_fsync
        )
        self._deterministic = deterministic

    @classmethod
    def from_env(
        cls,
        mode: str = "ctr-drbg",
        *,
        env: Mapping[str, str] | None = None,
        ledger_capacity: int = 1 << 18,
    ) -> NoiseAuthority:
        """Master secret from the environment (see :func:`load_master_secret`); the request
        journal from ``$SAMPLERGUARD_REQUEST_JOURNAL`` when set."""
        env = os.environ if env is None else env
        journal = env.get(ENV_JOURNAL)
        return cls(
            load_master_secret(env),
            mode,
            ledger_capacity=ledger_capacity,
            journal=Path(journal) if journal else None,
        )

    def with_master(self, master_secret: bytes) -> NoiseAuthority:
        """An authority under a new master secret (a rotated or re-made one) that keeps this
        one's used-id ledger: a request id served before the change is still refused after it,
        so a rotation never gives the app a second seed to choose from. New seeds and tenant
        pseudonyms derive from the new secret; the ledger keeps the key its entries were
        made with."""
        other = NoiseAuthority.__new__(NoiseAuthority)
        _check_master(master_secret)
        other._mode = self._mode
        other._master = master_secret
        other._pseudonym_key = _hkdf(master_secret, b"samplerguard/v1/pseudonym", b"")
        other._ledger_key = self._ledger_key
        other._ledger = self._ledger
        other._deterministic = self._deterministic
        return other

    @property
    def mode(self) -> RngMode:
        return self._mode

    @property
    def ledger(self) -> RequestLedger:
        return self._ledger

    def tenant_pseudonym(self, tenant: str) -> str:
        """A stable keyed pseudonym of ``tenant`` (safe for logs, reports and commitments)."""
        _check_tenant(tenant)
        mac = hmac.new(self._pseudonym_key, _lp("tenant") + _lp(tenant), hashlib.sha256)
        return "t-" + mac.digest()[:12].hex()

    def request(self, tenant: str, request_id: str, *, record_draws: bool = True) -> RequestNoise:
        """The noise source for one request. Raises
        :class:`~samplerguard.rng.ledger.RequestReuseError` if ``request_id`` was served before
        (for any mode) within the ledger's window."""
        return RequestNoise(self.seed_for(tenant, request_id), record_draws=record_draws)

    def seed_for(self, tenant: str, request_id: str, *, derived: bool = False) -> RequestSeed:
        """Claim ``request_id`` and derive its seed (what :meth:`request` wraps). With
        ``derived`` the DRBG nonce is derived like the entropy input, so the seed is a function
        of (master secret, tenant, request id) alone: every sidecar holding the namespace's
        master secret, and the same sidecar after a restart, issues the same seed for the id.
        The sidecar does so for a request id a gateway ticketed (unique per request), so that a
        provider asking several replicas, or one replica across a restart, gets one draw."""
        _check_tenant(tenant)
        _check_request_id(request_id)
        pseudonym = self.tenant_pseudonym(tenant)
        entry = hmac.new(self._ledger_key, _lp(tenant) + _lp(request_id), hashlib.sha256).digest()[
            :16
        ]
        self._ledger.claim(entry, f"request id {request_id!r} of tenant {pseudonym}")
        tenant_key = _hkdf(self._master, b"samplerguard/v1/tenant", _lp(tenant))
        entropy = _hkdf(tenant_key, b"samplerguard/v1/request", _lp(request_id))
        if self._deterministic or derived:
            nonce = _hkdf(tenant_key, b"samplerguard/v1/nonce", _lp(request_id), 16)
        else:
            nonce = os.urandom(16)
        material = entropy + nonce
        seed_mac = hmac.new(self._pseudonym_key, _lp("seed") + material, hashlib.sha256)
        return RequestSeed(
            material,
            mode=self._mode,
            tenant_pseudonym=pseudonym,
            request_id=request_id,
            seed_pseudonym="s-" + seed_mac.digest()[:8].hex(),
        )

    def close(self) -> None:
        self._ledger.close()

    def __repr__(self) -> str:
        return f"<NoiseAuthority mode={self._mode} ledger={self._ledger!r}>"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("NoiseAuthority holds the master secret and cannot be pickled")


def _check_master(master_secret: bytes) -> None:
    if not isinstance(master_secret, bytes) or not (
        _MIN_SECRET <= len(master_secret) <= _MAX_SECRET
    ):
        raise MalformedInputError(f"the master secret must be {_MIN_SECRET}..{_MAX_SECRET} bytes")


def _check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise MalformedInputError(
            "a tenant is 1..253 characters of letters, digits and ._:/@- starting with a "
            "letter or digit"
        )


def _check_request_id(request_id: str) -> None:
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise MalformedInputError(
            "a request id is 1..128 characters of letters, digits and ._:- starting with a "
            "letter or digit"
        )
