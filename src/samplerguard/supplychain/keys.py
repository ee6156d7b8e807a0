"""Public keys as cosign uses them: ECDSA P-256/P-384 (ASN.1 DER signatures), Ed25519 (pure)
and RSA (PKCS#1 v1.5), loaded once from PEM."""

from __future__ import annotations

from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from samplerguard.errors import MalformedInputError

__all__ = ["PublicKey", "SignatureAlgorithmError", "default_hash", "load_public_key"]

HashName = Literal["sha256", "sha384", "sha512"]

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

SupportedKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


class SignatureAlgorithmError(MalformedInputError):
    """The key's algorithm or size is not one cosign keys may have."""


class PublicKey:
    """A verification key. :meth:`verify` answers a plain bool and never raises on a bad
    signature, so callers word the failure themselves."""

    def __init__(self, key: SupportedKey, hash_name: HashName = "sha256") -> None:
        if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(
            key.curve, ec.SECP256R1 | ec.SECP384R1 | ec.SECP521R1
        ):
            raise SignatureAlgorithmError(f"ECDSA curve {key.curve.name} is not supported")
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
            raise SignatureAlgorithmError(f"RSA key of {key.key_size} bits is too small")
        self.key = key
        self.hash_name = hash_name

    @property
    def algorithm(self) -> str:
        if isinstance(self.key, ec.EllipticCurvePublicKey):
            return f"ecdsa-{self.key.curve.name}-{self.hash_name}"
        if isinstance(self.key, rsa.RSAPublicKey):
            return f"rsa{self.key.key_size}-pkcs1v15-{self.hash_name}"
        return "ed25519"

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, data)
            elif isinstance(self.key, ec.EllipticCurvePublicKey):
                self.key.verify(signature, data, ec.ECDSA(_HASHES[self.hash_name]()))
            else:
                self.key.verify(signature, data, padding.PKCS1v15(), _HASHES[self.hash_name]())
        except (InvalidSignature, ValueError):
            return False
        return True


def load_public_key(pem: str | bytes, hash_name: HashName = "sha256") -> PublicKey:
    """Load a PEM ``PUBLIC KEY``; :class:`MalformedInputError` for anything else."""
    raw = pem.encode() if isinstance(pem, str) else pem
    try:
        key = load_pem_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise MalformedInputError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise SignatureAlgorithmError(f"{type(key).__name__} keys are not supported by cosign")
    return PublicKey(key, hash_name)


def default_hash(key: PublicKey) -> HashName:
    """The hash cosign pairs with a key when none is configured: SHA-384 for P-384, SHA-512
    for P-521, SHA-256 otherwise (sigstore's ``LoadDefaultSignerVerifier``)."""
    size = key.key.curve.key_size if isinstance(key.key, ec.EllipticCurvePublicKey) else 0
    if size == 384:
        return "sha384"
    if size == 521:
        return "sha512"
    return "sha256"
