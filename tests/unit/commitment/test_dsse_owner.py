"""DSSE has one owner: the commitments and the supply chain agree on every envelope."""

from __future__ import annotations

import ast
import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import samplerguard
from samplerguard.commitment.dsse import (
    IN_TOTO_PAYLOAD_TYPE,
    IN_TOTO_STATEMENT_TYPES,
    MAX_ATTESTATION_ENVELOPE_BYTES,
    MAX_ENVELOPE_BYTES,
    MAX_SIGNATURES,
    pae,
    sign_envelope,
    verify_envelope,
)
from samplerguard.commitment.statement import STATEMENT_TYPE
from samplerguard.errors import MalformedInputError
from samplerguard.supplychain.dsse import Envelope

_STATEMENT = {
    "_type": STATEMENT_TYPE,
    "subject": [{"name": "out", "digest": {"sha256": "ab" * 32}}],
    "predicateType": "https://samplerguard.dev/test/v1",
    "predicate": {"k": 1},
}


def test_an_envelope_signed_for_a_commitment_parses_and_verifies_as_an_attestation() -> None:
    key = Ed25519PrivateKey.generate()
    payload = json.dumps(_STATEMENT).encode()
    signed = sign_envelope(payload, key)
    parsed = Envelope.from_json(json.dumps(signed).encode())
    assert parsed.payload == payload and parsed.payload_type == IN_TOTO_PAYLOAD_TYPE
    assert parsed.pae == pae(IN_TOTO_PAYLOAD_TYPE, payload)
    [(_, sig)] = parsed.signatures
    key.public_key().verify(sig, parsed.pae)  # raises on disagreement
    assert parsed.statement().type in IN_TOTO_STATEMENT_TYPES
    assert verify_envelope(signed, key.public_key()) == payload


def test_both_sides_refuse_more_signatures_than_the_one_cap() -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign_envelope(json.dumps(_STATEMENT).encode(), key)
    signed["signatures"] = signed["signatures"] * (MAX_SIGNATURES + 1)
    with pytest.raises(MalformedInputError, match=f"1 to {MAX_SIGNATURES} signatures"):
        verify_envelope(signed, key.public_key())
    with pytest.raises(MalformedInputError, match=f"at most {MAX_SIGNATURES}"):
        Envelope.from_dict(signed)
    signed["signatures"] = signed["signatures"][:MAX_SIGNATURES]
    assert len(Envelope.from_dict(signed).signatures) == MAX_SIGNATURES


def test_the_size_caps_are_the_owners() -> None:
    key = Ed25519PrivateKey.generate()
    big = b"x" * MAX_ENVELOPE_BYTES
    envelope = json.dumps(
        {
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "payload": base64.b64encode(big).decode(),
            "signatures": [{"keyid": "", "sig": "AA=="}],
        }
    ).encode()
    assert MAX_ENVELOPE_BYTES < len(envelope) <= MAX_ATTESTATION_ENVELOPE_BYTES
    with pytest.raises(MalformedInputError, match=f"exceeds {MAX_ENVELOPE_BYTES} bytes"):
        verify_envelope(envelope, key.public_key())
    assert Envelope.from_json(envelope).payload == big  # an attestation may be this large
    with pytest.raises(MalformedInputError, match=f"at most {MAX_ATTESTATION_ENVELOPE_BYTES}"):
        Envelope.from_json(envelope + b" " * MAX_ATTESTATION_ENVELOPE_BYTES)


def test_no_other_module_defines_the_encoding_or_the_types() -> None:
    """``pae`` and the in-toto payload and statement types are written in one module only."""
    owner = Path(samplerguard.__file__).parent / "commitment" / "dsse.py"
    strings = {IN_TOTO_PAYLOAD_TYPE, *IN_TOTO_STATEMENT_TYPES, "DSSEv1"}
    elsewhere = []
    for path in sorted(owner.parents[1].rglob("*.py")):
        if path == owner:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name == "pae":
                continue  # Envelope.pae, a property over the owner's pae, is checked above
            if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
                text = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
                if any(s in text for s in strings):
                    elsewhere.append(f"{path.name}: {text[:60]!r}")
    assert not elsewhere
