"""The sidecar's DRBG master secret follows its mounted Secret: a Secret volume is updated by
the kubelet through an atomic swap of its ``..data`` link, and the sidecar must pick a new
master secret up without a restart, with bounded checks, refusing seeds (never falling back)
while the file is unusable, and keeping the escrows it already made openable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from samplerguard.errors import TemporaryError
from samplerguard.rng import NoiseAuthority, RequestReuseError
from samplerguard.rng.escrow import SeedEscrow, open_escrow
from samplerguard.sidecar.seeds import SeedIssuer, seed_issuer_from_files
from tests.support.secret_volume import SecretVolume

OLD = bytes(range(32)).hex().encode()
NEW = bytes(range(100, 132)).hex().encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def escrow_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def _public_pem(key: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _issuer(
    tmp_path: Path, key: X25519PrivateKey, clock: Clock, **kw: object
) -> tuple[SeedIssuer, SecretVolume, list[str]]:
    volume = SecretVolume(
        tmp_path / "drbg", {"master-secret": OLD, "escrow-public.pem": _public_pem(key)}
    )
    changes: list[str] = []
    issuer = seed_issuer_from_files(
        "ctr-drbg",
        volume.root / "master-secret",
        volume.root / "escrow-public.pem",
        clock=clock,
        on_change=changes.append,
        **kw,  # type: ignore[arg-type]
    )
    return issuer, volume, changes


def _pseudonym(secret: bytes, tenant: str = "acme") -> str:
    return NoiseAuthority(bytes.fromhex(secret.decode())).tenant_pseudonym(tenant)


def _open(key: X25519PrivateKey, escrow: object, request_id: str) -> bytes:
    import json

    seed = open_escrow(key, SeedEscrow.from_json(json.dumps(escrow)), request_id=request_id)
    return seed._unsafe_material()


def test_a_replaced_master_secret_is_used_for_new_seeds_without_a_restart(
    tmp_path: Path, escrow_key: X25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    issuer, volume, changes = _issuer(tmp_path, escrow_key, clock, check_interval=2.0)
    before = issuer.issue("acme", "r-1", "ctr-drbg")
    assert before.seed.tenant_pseudonym == _pseudonym(OLD)

    volume.update({"master-secret": NEW, "escrow-public.pem": _public_pem(escrow_key)})
    clock.now += 2.5
    with caplog.at_level(logging.INFO, logger="samplerguard.sidecar.seeds"):
        after = issuer.issue("acme", "r-2", "ctr-drbg")
    assert after.seed.tenant_pseudonym == _pseudonym(NEW)
    assert changes == ["rotated"]
    assert issuer.secret_changes == 1 and issuer.secret_problem is None
    assert "master secret changed" in caplog.text
    # never the secret in a log line, in either encoding
    for secret in (OLD, NEW):
        assert secret.decode() not in caplog.text
        assert bytes.fromhex(secret.decode()).hex() not in caplog.text

    # the seed issued before the change still has its escrow, and it opens to that seed
    taken = issuer.take("acme", "r-1")
    assert _open(escrow_key, taken.escrow, "r-1") == before.seed._unsafe_material()
    assert _open(escrow_key, after.escrow, "r-2") == after.seed._unsafe_material()


def test_checks_are_bounded_by_the_interval(tmp_path: Path, escrow_key: X25519PrivateKey) -> None:
    clock = Clock()
    issuer, volume, changes = _issuer(tmp_path, escrow_key, clock, check_interval=10.0)
    issuer.issue("acme", "r-1", "ctr-drbg")
    volume.update({"master-secret": NEW, "escrow-public.pem": _public_pem(escrow_key)})
    clock.now += 5.0  # within the interval: the file is not looked at
    assert issuer.issue("acme", "r-2", "ctr-drbg").seed.tenant_pseudonym == _pseudonym(OLD)
    assert changes == []
    clock.now += 5.5
    assert issuer.issue("acme", "r-3", "ctr-drbg").seed.tenant_pseudonym == _pseudonym(NEW)
    assert changes == ["rotated"]


def test_the_same_secret_rewritten_is_no_change(
    tmp_path: Path, escrow_key: X25519PrivateKey
) -> None:
    clock = Clock()
    issuer, volume, changes = _issuer(tmp_path, escrow_key, clock, check_interval=1.0)
    issuer.issue("acme", "r-1", "ctr-drbg")
    # the kubelet swaps the whole volume when any key changes (here: nothing did)
    volume.update({"master-secret": OLD, "escrow-public.pem": _public_pem(escrow_key)})
    clock.now += 2.0
    assert issuer.issue("acme", "r-2", "ctr-drbg").seed.tenant_pseudonym == _pseudonym(OLD)
    assert changes == [] and issuer.secret_changes == 0


@pytest.mark.parametrize(
    "damage",
    ["malformed", "gone"],
)
def test_an_unusable_secret_file_refuses_seeds_until_a_valid_one_is_back(
    tmp_path: Path, escrow_key: X25519PrivateKey, damage: str
) -> None:
    clock = Clock()
    issuer, volume, changes = _issuer(tmp_path, escrow_key, clock, check_interval=1.0)
    issuer.issue("acme", "r-1", "ctr-drbg")
    if damage == "malformed":
        volume.update({"master-secret": b"too short", "escrow-public.pem": _public_pem(escrow_key)})
    else:
        (volume.root / "..data").unlink()
    clock.now += 2.0
    with pytest.raises(TemporaryError, match="master secret") as err:
        issuer.issue("acme", "r-2", "ctr-drbg")
    assert "new DRBG requests are refused" in str(err.value)
    assert str(volume.root / "master-secret") in str(err.value)
    assert issuer.secret_problem is not None
    assert changes == ["unusable"]
    # refused again within the interval, without a second change being reported
    with pytest.raises(TemporaryError):
        issuer.issue("acme", "r-2", "ctr-drbg")
    assert changes == ["unusable"]

    if damage == "gone":
        (volume.root / "..data").symlink_to(f"..gen-{volume.generation}")
    volume.update({"master-secret": NEW, "escrow-public.pem": _public_pem(escrow_key)})
    clock.now += 2.0
    # the refused request id was never claimed: it is served now, under the new secret
    assert issuer.issue("acme", "r-2", "ctr-drbg").seed.tenant_pseudonym == _pseudonym(NEW)
    assert changes == ["unusable", "rotated"]
    assert issuer.secret_problem is None


def test_a_request_id_served_before_the_change_is_still_refused_after_it(
    tmp_path: Path, escrow_key: X25519PrivateKey
) -> None:
    """The used-id ledger survives the new secret: the app cannot get a second seed (a second
    noise stream to choose from) for a request id by waiting for a rotation."""
    clock = Clock()
    issuer, volume, _ = _issuer(tmp_path, escrow_key, clock, check_interval=1.0)
    issuer.issue("acme", "job-1", "ctr-drbg")
    issuer.take("acme", "job-1")
    volume.update({"master-secret": NEW, "escrow-public.pem": _public_pem(escrow_key)})
    clock.now += 2.0
    with pytest.raises(RequestReuseError):
        issuer.issue("acme", "job-1", "ctr-drbg")


def test_a_new_escrow_key_in_the_volume_seals_new_escrows_to_it(
    tmp_path: Path, escrow_key: X25519PrivateKey
) -> None:
    clock = Clock()
    issuer, volume, changes = _issuer(tmp_path, escrow_key, clock, check_interval=1.0)
    old = issuer.issue("acme", "r-1", "ctr-drbg")
    new_key = X25519PrivateKey.generate()
    volume.update({"master-secret": OLD, "escrow-public.pem": _public_pem(new_key)})
    clock.now += 2.0
    new = issuer.issue("acme", "r-2", "ctr-drbg")
    assert changes == ["escrow-key"]
    assert _open(new_key, new.escrow, "r-2") == new.seed._unsafe_material()
    assert _open(escrow_key, old.escrow, "r-1") == old.seed._unsafe_material()
    # a malformed escrow key refuses seeds: an escrow nobody can open is no escrow
    volume.update({"master-secret": OLD, "escrow-public.pem": b"not a key"})
    clock.now += 2.0
    with pytest.raises(TemporaryError, match="escrow"):
        issuer.issue("acme", "r-3", "ctr-drbg")


def test_a_missing_secret_at_start_is_a_clear_error(tmp_path: Path) -> None:
    from samplerguard.errors import MalformedInputError

    with pytest.raises(MalformedInputError, match="master secret file"):
        seed_issuer_from_files("ctr-drbg", tmp_path / "absent", None)
