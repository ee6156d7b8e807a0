"""Per-tenant, per-request derivation; the used-id ledger and its journal; the master secret."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import torch

from samplerguard.errors import MalformedInputError
from samplerguard.rng import NoiseAuthority, RequestReuseError, load_master_secret

MASTER = bytes(range(32, 64))


def det(**kw: object) -> NoiseAuthority:
    return NoiseAuthority(MASTER, deterministic=True, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["ctr-drbg", "hmac-drbg", "framework"])
def test_same_request_same_noise_and_different_requests_differ(mode: str) -> None:
    a = NoiseAuthority(MASTER, mode, deterministic=True)
    b = NoiseAuthority(MASTER, mode, deterministic=True)
    z1 = a.request("acme", "r-1").randn((2, 4, 8, 8))
    assert torch.equal(z1, b.request("acme", "r-1").randn((2, 4, 8, 8)))
    assert not torch.equal(z1, a.request("acme", "r-2").randn((2, 4, 8, 8)))
    assert not torch.equal(z1, a.request("globex", "r-1").randn((2, 4, 8, 8)))


def test_tenants_streams_are_independent() -> None:
    a = det()
    x = a.request("acme", "r-1").randn((64, 64))
    y = a.request("globex", "r-1").randn((64, 64))
    corr = float((x * y).mean() / (x.std() * y.std()))
    assert abs(corr) < 0.06  # 4096 pairs: |corr| ~ 1/64 under independence
    assert a.tenant_pseudonym("acme") != a.tenant_pseudonym("globex")
    assert a.tenant_pseudonym("acme") == det().tenant_pseudonym("acme")


def test_fresh_nonce_by_default() -> None:
    # Non-deterministic authorities draw the DRBG nonce from the OS: the same (master, tenant,
    # id) on two authorities (e.g. before and after the ledger forgot it) yields fresh noise.
    a, b = NoiseAuthority(MASTER), NoiseAuthority(MASTER)
    assert not torch.equal(a.request("t", "r").randn((32,)), b.request("t", "r").randn((32,)))


def test_reused_request_id_is_refused() -> None:
    a = det()
    first = a.request("acme", "job-7")
    with pytest.raises(RequestReuseError, match=r"request id 'job-7' of tenant t-[0-9a-f]{24}"):
        a.request("acme", "job-7")
    a.request("globex", "job-7")  # another tenant's namespace of ids
    assert first.request_id == "job-7"


def test_ledger_is_bounded() -> None:
    a = det(ledger_capacity=4)
    for i in range(10):
        a.request("t", f"r{i}")
    assert len(a.ledger) == 4
    with pytest.raises(RequestReuseError):
        a.request("t", "r9")


def test_journal_survives_restart_and_stays_bounded(tmp_path: Path) -> None:
    j = tmp_path / "ledger"
    a = det(journal=j, ledger_capacity=3, journal_fsync=False)
    for i in range(5):
        a.request("t", f"r{i}")
    a.close()
    b = det(journal=j, ledger_capacity=3)
    with pytest.raises(RequestReuseError):
        b.request("t", "r4")
    for i in range(5, 20):
        b.request("t", f"r{i}")
    b.close()
    assert j.stat().st_size <= 16 + 16 * 2 * 3 + 16
    c = det(journal=j, ledger_capacity=3)
    with pytest.raises(RequestReuseError):
        c.request("t", "r19")


def test_torn_journal_record_is_dropped(tmp_path: Path) -> None:
    j = tmp_path / "ledger"
    a = det(journal=j)
    a.request("t", "r1")
    a.close()
    with j.open("ab") as fh:
        fh.write(b"\x01\x02\x03")  # a crash mid-append
    b = det(journal=j)
    with pytest.raises(RequestReuseError):
        b.request("t", "r1")
    b.request("t", "r2")
    b.close()
    assert (j.stat().st_size - 16) % 16 == 0


def test_journal_of_another_master_or_another_file_is_refused(tmp_path: Path) -> None:
    j = tmp_path / "ledger"
    det(journal=j).close()
    with pytest.raises(MalformedInputError, match="different master secret"):
        NoiseAuthority(bytes(32), journal=j)
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a journal at all")
    with pytest.raises(MalformedInputError, match="not a samplerguard request journal"):
        det(journal=junk)


@pytest.mark.parametrize(
    ("tenant", "request_id"),
    [("", "r"), ("acme", ""), ("acme\n", "r"), ("acme", "r\n"), ("a b", "r"), ("acme", "x" * 129)],
)
def test_bad_tenant_or_request_id(tenant: str, request_id: str) -> None:
    with pytest.raises(MalformedInputError):
        det().request(tenant, request_id)


def test_master_secret_from_file_and_env(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(MASTER)
    assert load_master_secret({"SAMPLERGUARD_MASTER_SECRET_FILE": str(raw)}) == MASTER
    hexfile = tmp_path / "hex"
    hexfile.write_text(MASTER.hex() + "\n")
    assert load_master_secret({"SAMPLERGUARD_MASTER_SECRET_FILE": str(hexfile)}) == MASTER
    assert load_master_secret({"SAMPLERGUARD_MASTER_SECRET": MASTER.hex()}) == MASTER
    b64 = "base64:" + base64.b64encode(MASTER).decode()
    assert load_master_secret({"SAMPLERGUARD_MASTER_SECRET": b64}) == MASTER
    env = {
        "SAMPLERGUARD_MASTER_SECRET": "00" * 32,
        "SAMPLERGUARD_REQUEST_JOURNAL": str(tmp_path / "j"),
    }
    a = NoiseAuthority.from_env(env=env)
    a.request("t", "r")
    a.close()
    assert (tmp_path / "j").stat().st_size == 32


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no master secret"),
        ({"SAMPLERGUARD_MASTER_SECRET": "abcd"}, "is 4 bytes; 32..4096 are required"),
        ({"SAMPLERGUARD_MASTER_SECRET": "base64:!!!"}, "not valid base64"),
        ({"SAMPLERGUARD_MASTER_SECRET_FILE": "/nonexistent/secret"}, "cannot read"),
    ],
)
def test_bad_master_secret(env: dict[str, str], message: str) -> None:
    with pytest.raises(MalformedInputError, match=message) as info:
        load_master_secret(env)
    assert "abcd" not in str(info.value)


def test_bad_construction() -> None:
    with pytest.raises(MalformedInputError, match=r"32\.\.4096"):
        NoiseAuthority(b"short")
    with pytest.raises(MalformedInputError, match="rng mode 'mt19937' is unknown"):
        NoiseAuthority(MASTER, "mt19937")


def test_a_derived_seed_is_the_same_on_every_authority_of_the_secret() -> None:
    """``derived=True`` (a ticketed request id): the seed is a function of the master secret,
    tenant and id, so two replicas, or one after a restart, issue the same one; another id,
    tenant or secret gives another. Drawn seeds differ every time."""
    secret = b"s" * 32

    def material(master: bytes, tenant: str, rid: str, derived: bool) -> bytes:
        seed = NoiseAuthority(master).seed_for(tenant, rid, derived=derived)
        return seed._unsafe_material()

    same = material(secret, "t", "r-1", True)
    assert material(secret, "t", "r-1", True) == same
    assert len({same, material(secret, "t", "r-2", True), material(secret, "u", "r-1", True)}) == 3
    assert material(b"x" * 32, "t", "r-1", True) != same
    assert material(secret, "t", "r-1", False) != material(secret, "t", "r-1", False)
