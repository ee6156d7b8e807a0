"""Seed escrow to the verifier's X25519 key: round trip, binding, tampering, bad keys."""

from __future__ import annotations

import base64
import json

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.rng import (
    NoiseAuthority,
    SeedEscrow,
    load_x25519_private_key,
    load_x25519_public_key,
    open_escrow,
    regenerate_initial_noise,
    verify_initial_noise,
)

MASTER = bytes(range(100, 132))
VERIFIER = X25519PrivateKey.from_private_bytes(bytes(range(32)))


def sealed(mode: str = "ctr-drbg") -> tuple[torch.Tensor, SeedEscrow]:
    n = NoiseAuthority(MASTER, mode).request("acme", "req-1")
    z = n.randn((1, 4, 16, 16))
    return z, n.escrow(VERIFIER.public_key())


@pytest.mark.parametrize("mode", ["ctr-drbg", "hmac-drbg", "framework"])
def test_verifier_regenerates_z_n(mode: str) -> None:
    z, escrow = sealed(mode)
    wire = SeedEscrow.from_json(escrow.to_json())
    assert torch.equal(regenerate_initial_noise(VERIFIER, wire, z.shape), z)
    verify_initial_noise(VERIFIER, wire, z)
    seed = open_escrow(VERIFIER, wire, tenant_pseudonym=escrow.tenant_pseudonym, request_id="req-1")
    assert seed.mode == mode and seed.request_id == "req-1"


def test_escrow_has_no_secret_in_the_clear() -> None:
    n = NoiseAuthority(MASTER).request("acme", "req-2")
    material = n._seed._unsafe_material()
    text = n.escrow(VERIFIER.public_key()).to_json()
    for encoding in (
        material.hex(),
        base64.b64encode(material).decode(),
        base64.urlsafe_b64encode(material).decode(),
    ):
        assert encoding not in text


def test_shifted_z_n_is_rejected() -> None:
    z, escrow = sealed()
    with pytest.raises(VerificationError, match="1 of 1024 values differ"):
        verify_initial_noise(
            VERIFIER, escrow, z.clone().index_put_((torch.tensor([0]),) * 4, torch.tensor(9.0))
        )
    with pytest.raises(VerificationError, match="rel-L2"):
        verify_initial_noise(VERIFIER, escrow, z + 0.1, tolerance=1e-6)
    verify_initial_noise(VERIFIER, escrow, z * (1 + 1e-8), tolerance=1e-6)


def test_wrong_key_is_rejected() -> None:
    _, escrow = sealed()
    with pytest.raises(VerificationError, match="sealed to a different verifier key"):
        open_escrow(X25519PrivateKey.generate(), escrow)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("requestId", "req-2"),
        ("tenantPseudonym", "t-000000000000000000000000"),
        ("mode", "hmac-drbg"),
        ("seedPseudonym", "s-0000000000000000"),
    ],
)
def test_relabelled_escrow_fails_authentication(field: str, value: str) -> None:
    _, escrow = sealed()
    body = json.loads(escrow.to_json())
    body[field] = value
    with pytest.raises(VerificationError, match="failed authentication"):
        open_escrow(VERIFIER, SeedEscrow.from_json(json.dumps(body)))


def test_tampered_ciphertext_and_nonce_fail_authentication() -> None:
    _, escrow = sealed()
    ct = bytearray(base64.urlsafe_b64decode(escrow.ciphertext))
    ct[5] ^= 1
    bad = escrow.model_copy(update={"ciphertext": base64.urlsafe_b64encode(ct).decode()})
    with pytest.raises(VerificationError, match="failed authentication"):
        open_escrow(VERIFIER, bad)
    nonce = base64.urlsafe_b64encode(bytes(12)).decode()
    with pytest.raises(VerificationError, match="failed authentication"):
        open_escrow(VERIFIER, escrow.model_copy(update={"nonce": nonce}))


def test_escrow_for_another_request_is_rejected() -> None:
    _, escrow = sealed()
    with pytest.raises(VerificationError, match="request id does not match"):
        open_escrow(VERIFIER, escrow, request_id="req-9")
    with pytest.raises(VerificationError, match="tenant does not match"):
        open_escrow(VERIFIER, escrow, tenant_pseudonym="t-1")


def test_low_order_ephemeral_point_is_rejected() -> None:
    _, escrow = sealed()
    zero = base64.urlsafe_b64encode(bytes(32)).decode()
    with pytest.raises(VerificationError, match="low-order"):
        open_escrow(
            VERIFIER,
            escrow.model_copy(update={"ephemeralPublicKey": zero, "ephemeral_public_key": zero}),
        )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b | {"version": "v0"}, "version"),
        (lambda b: b | {"extra": 1}, "extra"),
        (lambda b: {k: v for k, v in b.items() if k != "nonce"}, "nonce"),
        (lambda b: b | {"recipient": "md5:00"}, "recipient"),
        (lambda b: b | {"ciphertext": "***"}, "ciphertext"),
    ],
)
def test_malformed_escrow(mutate: object, message: str) -> None:
    _, escrow = sealed()
    body = mutate(json.loads(escrow.to_json()))  # type: ignore[operator]
    with pytest.raises(MalformedInputError, match=message):
        SeedEscrow.from_json(json.dumps(body))


def test_wrong_sized_fields_and_oversized_escrow() -> None:
    _, escrow = sealed()
    short = base64.urlsafe_b64encode(bytes(31)).decode()
    with pytest.raises(MalformedInputError, match="ephemeralPublicKey is 31 bytes"):
        open_escrow(VERIFIER, escrow.model_copy(update={"ephemeral_public_key": short}))
    with pytest.raises(MalformedInputError, match="at most 8192 bytes"):
        SeedEscrow.from_json(b"{" + b" " * 9000 + b"}")
    with pytest.raises(MalformedInputError, match="does not parse"):
        SeedEscrow.from_json(b"[]")


def test_key_loading() -> None:
    pem = VERIFIER.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert load_x25519_private_key(pem).public_key() == VERIFIER.public_key()
    raw = VERIFIER.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert load_x25519_public_key(raw) == VERIFIER.public_key()
    with pytest.raises(MalformedInputError, match="32 bytes, got 31"):
        load_x25519_public_key(raw[:31])
    with pytest.raises(MalformedInputError, match="32 bytes, got 33"):
        load_x25519_private_key(bytes(33))
    ed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(MalformedInputError, match="not X25519"):
        load_x25519_private_key(ed)
    with pytest.raises(MalformedInputError, match="not an unencrypted X25519"):
        load_x25519_private_key(
            b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"
        )
