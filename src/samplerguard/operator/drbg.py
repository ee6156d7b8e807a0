"""The DRBG Secrets: the operator creates them when absent and keeps them consistent.

* the escrow Secret, in samplerguard's namespace: an X25519 key pair made with
  ``cryptography``. The verifier mounts it to open the seed escrows. Created once; the
  operator never replaces a private key (rotation is a documented, deliberate step), and a
  Secret whose private key does not parse is reported, never overwritten;
* one DRBG Secret per namespace whose pods get sidecars: 32 bytes from ``os.urandom`` (hex)
  as that namespace's master secret, and the escrow public key. Each namespace has its own
  independent master secret, so one that leaks (its Secrets are readable by whoever may read
  Secrets there) predicts no other namespace's noise; inside a namespace the DRBG's
  personalization separates the tenants. A master secret that is missing or malformed is
  replaced by a fresh one (the escrows already made stay openable: they carry the seed); a
  public key that differs from the escrow Secret's is brought in line.

Nothing here logs a secret's bytes: only names and what was done.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from samplerguard.errors import SamplerGuardError, TemporaryError
from samplerguard.kubeapi import Conflict
from samplerguard.operator.certs import CertState
from samplerguard.operator.kube import Kube
from samplerguard.policy.drbg import ESCROW_PRIVATE_KEY, ESCROW_PUBLIC_KEY, MASTER_SECRET_KEY

__all__ = ["NEW_MASTER", "DrbgSecrets", "reconcile_drbg"]

log = logging.getLogger("samplerguard.operator.drbg")

_MASTER_BYTES = 32
_MASTER = re.compile(rb"^[0-9a-f]{64,8192}$")
#: the change reported when a DRBG Secret was absent and is made (first install, or lost)
NEW_MASTER = "a new master secret"


@dataclass(frozen=True)
class DrbgSecrets:
    """Where the DRBG Secrets live (the chart's ``drbg`` values)."""

    #: samplerguard's own namespace, holding the escrow Secret
    namespace: str
    escrow_secret: str
    #: the DRBG Secret's name in every namespace of ``namespaces``
    drbg_secret: str
    namespaces: tuple[str, ...]


def _public_pem(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _new_escrow() -> dict[str, bytes]:
    key = X25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {ESCROW_PRIVATE_KEY: private, ESCROW_PUBLIC_KEY: _public_pem(key)}


def _escrow_public(kube: Kube, cfg: DrbgSecrets) -> tuple[bytes, bool]:
    """The escrow public key, creating the key pair when the Secret is absent."""
    where = f"{cfg.namespace}/{cfg.escrow_secret}"
    for _ in range(5):
        state, rv = kube.get_secret(cfg.namespace, cfg.escrow_secret)
        if rv is None:
            data = _new_escrow()
            try:
                kube.put_secret(
                    cfg.namespace, cfg.escrow_secret, CertState(data), None, type_="Opaque"
                )
            except Conflict:
                continue  # another replica created it first: use theirs
            log.info("escrow Secret %s created (a new X25519 key pair)", where)
            return data[ESCROW_PUBLIC_KEY], True
        raw = state.data.get(ESCROW_PRIVATE_KEY, b"")
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, X25519PrivateKey):
            # Never overwritten: the verifier may still need it for escrows it holds.
            raise TemporaryError(
                f"escrow Secret {where}: {ESCROW_PRIVATE_KEY} is not an X25519 private key "
                "(PKCS#8 PEM); delete the Secret to have a new key pair made"
            )
        public = _public_pem(key)
        if state.data.get(ESCROW_PUBLIC_KEY) == public:
            return public, False
        try:
            kube.put_secret(
                cfg.namespace,
                cfg.escrow_secret,
                CertState({**state.data, ESCROW_PUBLIC_KEY: public}),
                rv,
                type_="Opaque",
            )
        except Conflict:
            continue
        log.info("escrow Secret %s: public key rewritten from the private key", where)
        return public, True
    raise TemporaryError(f"escrow Secret {where} kept changing under us")


def _ensure_namespace(kube: Kube, cfg: DrbgSecrets, ns: str, public: bytes) -> list[str]:
    """The changes written to the namespace's DRBG Secret (none when it was right)."""
    where = f"{ns}/{cfg.drbg_secret}"
    for _ in range(5):
        state, rv = kube.get_secret(ns, cfg.drbg_secret)
        data = dict(state.data) if rv is not None else {}
        changes = []
        if not _MASTER.match(data.get(MASTER_SECRET_KEY, b"")):
            data[MASTER_SECRET_KEY] = os.urandom(_MASTER_BYTES).hex().encode()
            changes.append(NEW_MASTER if rv is None else "master secret replaced")
        if data.get(ESCROW_PUBLIC_KEY) != public:
            data[ESCROW_PUBLIC_KEY] = public
            changes.append("escrow public key updated")
        if not changes:
            return []
        try:
            kube.put_secret(ns, cfg.drbg_secret, CertState(data), rv, type_="Opaque")
        except Conflict:
            continue
        log.info("DRBG Secret %s: %s", where, ", ".join(changes))
        return changes
    raise TemporaryError(f"DRBG Secret {where} kept changing under us")


def reconcile_drbg(
    kube: Kube,
    cfg: DrbgSecrets,
    on_reconciled: Callable[[str, list[str]], None] | None = None,
) -> list[str]:
    """Make every DRBG Secret right. Returns the names of the Secrets written;
    ``on_reconciled`` gets each namespace whose Secret is now right and the changes written
    there (none when it was right already), for Events. A namespace that cannot be written
    (no RoleBinding there, the API server away) does not stop the others; the failures are
    raised together after all were tried: a :class:`TemporaryError` when any of them may
    pass on a retry, else a permanent :class:`SamplerGuardError` (a namespace the operator
    is forbidden to write stays so until the installation changes)."""
    public, created = _escrow_public(kube, cfg)
    written = [f"{cfg.namespace}/{cfg.escrow_secret}"] if created else []
    failures: list[tuple[str, Exception]] = []
    for ns in _unique(cfg.namespaces):
        try:
            changes = _ensure_namespace(kube, cfg, ns, public)
            if changes:
                written.append(f"{ns}/{cfg.drbg_secret}")
            if on_reconciled is not None:
                on_reconciled(ns, changes)
        except Exception as exc:
            failures.append((ns, exc))
    if failures:
        text = "DRBG Secrets not written: " + "; ".join(f"{ns}: {exc}" for ns, exc in failures)
        permanent = all(
            isinstance(exc, SamplerGuardError) and not isinstance(exc, TemporaryError)
            for _, exc in failures
        )
        raise SamplerGuardError(text) if permanent else TemporaryError(text)
    return written


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n))
