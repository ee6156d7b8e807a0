"""Seed escrow: a request's seed encrypted to the verifier's X25519 key.

For seed-synchronised checks the sidecar places a :class:`SeedEscrow` beside the commitment. Only
the holder of the verifier's private key can open it, regenerate z_N and compare it with the
committed leaf. The construction is ECIES-style, from ``cryptography`` only:

1. a fresh ephemeral X25519 key pair; ``shared = X25519(ephemeral, recipient)``;
2. ``key = HKDF-SHA256(shared, salt = ephemeral_pub ‖ recipient_pub,
   info = "samplerguard/v1/seed-escrow")``, 32 bytes;
3. AES-256-GCM over the 48 secret seed bytes with a random 96-bit nonce, and as associated data
   the canonical JSON of every other field: version, algorithm, recipient fingerprint, ephemeral
   key, nonce, rng mode, tenant pseudonym, request id and seed pseudonym. Changing any label, or
   moving an escrow to another request, breaks the tag.

A wrong key, a tampered field or ciphertext, or labels that differ from what the caller expects
raise :class:`~samplerguard.errors.VerificationError`; an escrow that does not parse raises
:class:`~samplerguard.errors.MalformedInputError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError
from pydantic.alias_generators import to_camel

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.rng.seed import SEED_BYTES, RequestSeed

__all__ = [
    "SeedEscrow",
    "escrow_digest",
    "escrow_seed",
    "load_x25519_private_key",
    "load_x25519_public_key",
    "open_escrow",
    "recipient_fingerprint",
]

_INFO = b"samplerguard/v1/seed-escrow"
_MAX_ESCROW_BYTES = 8192
_B64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+={0,2}$", max_length=1024)]
_Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/@-]{1,253}$")]


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def _b64d(text: str, what: str, size: int | None = None) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text)
    except (binascii.Error, ValueError):
        raise MalformedInputError(f"escrow {what} is not base64url") from None
    if size is not None and len(raw) != size:
        raise MalformedInputError(f"escrow {what} is {len(raw)} bytes, expected {size}")
    return raw


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def recipient_fingerprint(key: X25519PublicKey) -> str:
    """``sha256:<hex>`` of the raw 32-byte public key."""
    return "sha256:" + hashlib.sha256(_raw_public(key)).hexdigest()


def load_x25519_public_key(data: bytes) -> X25519PublicKey:
    """A verifier public key: 32 raw bytes or PEM (SubjectPublicKeyInfo)."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
            if not isinstance(key, X25519PublicKey):
                raise MalformedInputError(f"the PEM key is {type(key).__name__}, not X25519")
            return key
        if len(data) != 32:
            raise MalformedInputError(f"a raw X25519 public key is 32 bytes, got {len(data)}")
        return X25519PublicKey.from_public_bytes(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MalformedInputError(f"not an X25519 public key: {exc}") from None


def load_x25519_private_key(data: bytes) -> X25519PrivateKey:
    """A verifier private key: 32 raw bytes or unencrypted PEM (PKCS#8). Errors never quote
    the key."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
            if not isinstance(key, X25519PrivateKey):
                raise MalformedInputError(f"the PEM key is {type(key).__name__}, not X25519")
            return key
        if len(data) != 32:
            raise MalformedInputError(f"a raw X25519 private key is 32 bytes, got {len(data)}")
        return X25519PrivateKey.from_private_bytes(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise MalformedInputError("not an unencrypted X25519 private key") from None


class SeedEscrow(BaseModel):
    """The escrow record that travels beside a commitment (JSON, camelCase)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    version: Literal["sg-seed-escrow/v1"] = "sg-seed-escrow/v1"
    algorithm: Literal["X25519-HKDF-SHA256-AES-256-GCM"] = "X25519-HKDF-SHA256-AES-256-GCM"
    recipient: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
    ephemeral_public_key: _B64
    nonce: _B64
    ciphertext: _B64
    mode: Literal["ctr-drbg", "hmac-drbg", "framework"]
    tenant_pseudonym: _Label
    request_id: _Label
    seed_pseudonym: _Label

    def associated_data(self) -> bytes:
        """Canonical JSON of every field but the ciphertext: what the GCM tag binds."""
        fields: dict[str, Any] = self.model_dump(by_alias=True, mode="json")
        del fields["ciphertext"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    @classmethod
    def from_json(cls, data: str | bytes) -> SeedEscrow:
        if len(data) > _MAX_ESCROW_BYTES:
            raise MalformedInputError(
                f"a seed escrow is at most {_MAX_ESCROW_BYTES} bytes, got {len(data)}"
            )
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False)[:5]
            )
            raise MalformedInputError(f"seed escrow does not parse: {problems}") from None


def escrow_digest(escrow: object) -> str:
    """The digest a commitment's ``seedEscrowDigest`` binds: SHA-256 over the escrow's JSON
    object with sorted keys and no whitespace. The sidecar signs it; the verifier compares it."""
    if not isinstance(escrow, dict):
        raise MalformedInputError("a seed escrow is a JSON object")
    try:
        data = json.dumps(escrow, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MalformedInputError(f"seed escrow is not JSON: {exc}") from None
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def _key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_INFO
    ).derive(shared)


def escrow_seed(seed: RequestSeed, verifier_public_key: X25519PublicKey) -> SeedEscrow:
    """Encrypt ``seed`` to the verifier. The result carries no secret in the clear."""
    if not isinstance(verifier_public_key, X25519PublicKey):
        raise MalformedInputError("the verifier key must be an X25519 public key")
    ephemeral = X25519PrivateKey.generate()
    eph_raw = _raw_public(ephemeral.public_key())
    rcpt_raw = _raw_public(verifier_public_key)
    key = _key(ephemeral.exchange(verifier_public_key), eph_raw, rcpt_raw)
    nonce = os.urandom(12)
    draft = SeedEscrow(
        recipient=recipient_fingerprint(verifier_public_key),
        ephemeral_public_key=_b64e(eph_raw),
        nonce=_b64e(nonce),
        ciphertext="AA==",
        mode=seed.mode,
        tenant_pseudonym=seed.tenant_pseudonym,
        request_id=seed.request_id,
        seed_pseudonym=seed.seed_pseudonym,
    )
    ciphertext = AESGCM(key).encrypt(nonce, seed._unsafe_material(), draft.associated_data())
    return draft.model_copy(update={"ciphertext": _b64e(ciphertext)})


def open_escrow(
    private_key: X25519PrivateKey,
    escrow: SeedEscrow,
    *,
    tenant_pseudonym: str | None = None,
    request_id: str | None = None,
) -> RequestSeed:
    """Decrypt ``escrow`` with the verifier's key. Pass the commitment's ``tenant_pseudonym``
    and ``request_id`` to check the escrow belongs to it."""
    if not isinstance(private_key, X25519PrivateKey):
        raise MalformedInputError("the verifier key must be an X25519 private key")
    # (1): the escrow names the key it was sealed to.
    ours = recipient_fingerprint(private_key.public_key())
    if escrow.recipient != ours:
        raise VerificationError(
            f"seed escrow is sealed to a different verifier key "
            f"(got recipient {escrow.recipient}, expected {ours})",
            check="escrow",
            found=escrow.recipient,
            expected=ours,
        )
    # (2): it belongs to the request being checked.
    if tenant_pseudonym is not None and escrow.tenant_pseudonym != tenant_pseudonym:
        raise VerificationError(
            f"seed escrow's tenant does not match (got '{escrow.tenant_pseudonym}', "
            f"expected '{tenant_pseudonym}')",
            check="escrow",
            found=escrow.tenant_pseudonym,
            expected=tenant_pseudonym,
        )
    if request_id is not None and escrow.request_id != request_id:
        raise VerificationError(
            f"seed escrow's request id does not match (got '{escrow.request_id}', "
            f"expected '{request_id}')",
            check="escrow",
            found=escrow.request_id,
            expected=request_id,
        )
    eph_raw = _b64d(escrow.ephemeral_public_key, "ephemeralPublicKey", 32)
    nonce = _b64d(escrow.nonce, "nonce", 12)
    ciphertext = _b64d(escrow.ciphertext, "ciphertext", SEED_BYTES + 16)
    # (3): key agreement; a low-order ephemeral point yields no shared secret.
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(eph_raw))
    except ValueError:
        raise VerificationError(
            "seed escrow's ephemeral key is invalid (low-order point)", check="escrow"
        ) from None
    key = _key(shared, eph_raw, _raw_public(private_key.public_key()))
    # (4): authenticated decryption binds every label.
    try:
        material = AESGCM(key).decrypt(nonce, ciphertext, escrow.associated_data())
    except InvalidTag:
        raise VerificationError(
            "seed escrow failed authentication (tampered escrow or wrong verifier key)",
            check="escrow",
        ) from None
    return RequestSeed(
        material,
        mode=escrow.mode,
        tenant_pseudonym=escrow.tenant_pseudonym,
        request_id=escrow.request_id,
        seed_pseudonym=escrow.seed_pseudonym,
    )
