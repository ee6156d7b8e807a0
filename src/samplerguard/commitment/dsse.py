"""DSSE envelopes (secure-systems-lab/dsse v1): the one owner of the encoding and its limits.

Everything DSSE that samplerguard signs or checks goes through this module: :func:`pae` (what
every signature covers), the in-toto payload and statement types, and the caps on an envelope.
The trajectory commitments are signed and verified here with Ed25519, via ``cryptography``; the
supply chain's attestations (:mod:`samplerguard.supplychain.dsse`) are parsed there with the
same encoding, types and caps.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from samplerguard.errors import MalformedInputError, VerificationError

__all__ = [
    "IN_TOTO_PAYLOAD_TYPE",
    "IN_TOTO_STATEMENT_TYPES",
    "IN_TOTO_STATEMENT_V1",
    "MAX_ATTESTATION_ENVELOPE_BYTES",
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNATURES",
    "decode_b64",
    "keyid",
    "load_public_key",
    "pae",
    "sign_envelope",
    "verify_envelope",
]

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: The in-toto statement type the commitments write, and those an attestation may carry.
IN_TOTO_STATEMENT_V1 = "https://in-toto.io/Statement/v1"
IN_TOTO_STATEMENT_TYPES = frozenset({"https://in-toto.io/Statement/v0.1", IN_TOTO_STATEMENT_V1})
#: The largest trajectory commitment envelope (a recipe and a root: kilobytes in practice).
MAX_ENVELOPE_BYTES = 1 << 20
#: The largest attestation envelope pulled from a registry (SLSA provenance lists materials).
MAX_ATTESTATION_ENVELOPE_BYTES = 4 << 20
#: The most signatures an envelope may carry, either kind.
MAX_SIGNATURES = 16


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what every DSSE signature in samplerguard signs (the
    trajectory commitments here, the supply chain's attestations in
    :mod:`samplerguard.supplychain.dsse`)."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def keyid(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise MalformedInputError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise MalformedInputError(
            f"commitment keys are Ed25519, got {type(key).__name__.removeprefix('_')}"
        )
    return key


def sign_envelope(
    payload: bytes, key: Ed25519PrivateKey, payload_type: str = IN_TOTO_PAYLOAD_TYPE
) -> dict[str, Any]:
    sig = key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": keyid(key.public_key()), "sig": base64.b64encode(sig).decode()}],
    }


def decode_b64(value: object, what: str, *, where: str = "DSSE") -> bytes:
    """Decode a base64 field of a signed document; :class:`MalformedInputError` naming
    ``where`` and ``what`` otherwise. Both alphabets occur in the wild (Go's StdEncoding and
    URLEncoding) and DSSE allows either."""
    if not isinstance(value, str):
        raise MalformedInputError(f"{where} {what} must be a base64 string")
    try:
        if "-" in value or "_" in value:
            return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedInputError(f"{where} {what} is not valid base64") from None


def _b64(value: object, what: str) -> bytes:
    return decode_b64(value, what)


def verify_envelope(
    envelope: object, public_key: Ed25519PublicKey, payload_type: str = IN_TOTO_PAYLOAD_TYPE
) -> bytes:
    """Check a DSSE envelope and return its payload. At least one signature must be by
    ``public_key``; signatures by other keys are ignored, never trusted."""
    if isinstance(envelope, bytes | str):
        if len(envelope) > MAX_ENVELOPE_BYTES:
            raise MalformedInputError(f"DSSE envelope exceeds {MAX_ENVELOPE_BYTES} bytes")
        try:
            envelope = json.loads(envelope)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedInputError(f"DSSE envelope is not JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise MalformedInputError("DSSE envelope is not a JSON object")
    if envelope.get("payloadType") != payload_type:
        raise VerificationError(
            f"DSSE payloadType is {envelope.get('payloadType')!r}, expected {payload_type!r}",
            check="signature",
            found=str(envelope.get("payloadType")),
            expected=payload_type,
        )
    payload = _b64(envelope.get("payload"), "payload")
    sigs = envelope.get("signatures")
    if not isinstance(sigs, list) or not sigs or len(sigs) > MAX_SIGNATURES:
        raise MalformedInputError(f"DSSE envelope needs 1 to {MAX_SIGNATURES} signatures")
    message = pae(payload_type, payload)
    want = keyid(public_key)
    for entry in sigs:
        if not isinstance(entry, dict):
            raise MalformedInputError("DSSE signature entry is not an object")
        sig = _b64(entry.get("sig"), "signature")
        try:
            public_key.verify(sig, message)
        except InvalidSignature:
            continue
        return payload
    raise VerificationError(
        f"DSSE signature check failed: no signature verifies under key {want[:16]}…",
        check="signature",
        expected=want[:16],
    )
