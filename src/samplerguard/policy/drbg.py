"""The DRBG Secrets of a deployment: their keys, shared by the operator that writes them, the
webhook that mounts them into injected sidecars and the verifier that opens the escrows.

Two Secrets (docs/operator.md, "DRBG noise"):

* in every namespace whose pods get sidecars, the *DRBG Secret*: ``master-secret`` (32 random
  bytes, hex; the per-request DRBGs of that namespace derive from it) and
  ``escrow-public.pem`` (the verifier's X25519 public key, to which every issued seed is
  escrowed). Only the injected sidecar mounts it;
* in samplerguard's own namespace, the *escrow Secret*: ``escrow-private.pem`` (the X25519
  private key, PKCS#8) and ``escrow-public.pem``. Only the verifier mounts it.
"""

from __future__ import annotations

__all__ = [
    "DRBG_MODES",
    "ESCROW_PRIVATE_KEY",
    "ESCROW_PUBLIC_KEY",
    "MASTER_SECRET_KEY",
    "is_drbg_mode",
]

#: the DRBG Secret's key holding the namespace's master secret
MASTER_SECRET_KEY = "master-secret"  # noqa: S105 - a Secret key's name
#: the verifier's X25519 public key (PEM), in both Secrets
ESCROW_PUBLIC_KEY = "escrow-public.pem"
#: the verifier's X25519 private key (PKCS#8 PEM), in the escrow Secret only
ESCROW_PRIVATE_KEY = "escrow-private.pem"

#: the policy ``rng.mode`` values whose noise comes from the sidecar-issued DRBG seeds
DRBG_MODES = frozenset({"ctr-drbg", "hmac-drbg"})


def is_drbg_mode(mode: str) -> bool:
    return mode in DRBG_MODES
