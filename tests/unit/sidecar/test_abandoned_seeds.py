"""The ledger of issued seeds: every seed that never became a committed trajectory is listed as
abandoned, across restarts, within bounds, and without a seed in the file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from samplerguard.rng import NoiseAuthority
from samplerguard.sidecar.abandoned import SeedLedger
from samplerguard.sidecar.seeds import SeedIssuer


def _ids(ledger: SeedLedger, after: int = 0) -> list[tuple[str, str]]:
    return [(e["id"], e["reason"]) for e in ledger.listing(after=after)]


def test_committed_seeds_are_not_listed_and_lapsed_ones_are(tmp_path: Path) -> None:
    ledger = SeedLedger(tmp_path / "l.jsonl")
    ledger.issued("a", "t")
    ledger.issued("b", "t")
    ledger.issued("a", "t")  # the same seed handed out again before its START
    ledger.taken("a")
    ledger.abandoned("b", "expired")
    ledger.abandoned("b", "expired")  # once
    ledger.abandoned("never-issued", "expired")
    assert _ids(ledger) == [("b", "expired")]
    assert ledger.open_count == 0
    first = ledger.listing()[0]
    assert first["tenant"] == "t" and first["issuedAt"] <= first["abandonedAt"]


def test_a_restart_lists_the_seeds_issued_and_never_bound(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = SeedLedger(path)
    ledger.issued("kept", "t")
    ledger.taken("kept")
    ledger.issued("lapsed", "t")
    ledger.abandoned("lapsed", "expired")
    ledger.issued("in-flight", "t")
    again = SeedLedger(path)  # the sidecar restarted before in-flight's START
    assert _ids(again) == [("lapsed", "expired"), ("in-flight", "restarted")]
    seq = again.listing()[0]["seq"]
    assert _ids(again, after=seq) == [("in-flight", "restarted")]
    # and once more: nothing is lost or doubled, sequence numbers go on
    third = SeedLedger(path)
    assert _ids(third) == _ids(again)
    third.issued("new", "t")
    third.abandoned("new", "evicted")
    assert third.listing()[-1]["seq"] == 3


def test_torn_and_hostile_lines_are_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_bytes(
        b'{"op":"issued","id":"x","tenant":"t","at":1.0}\n'
        b'{"op":"iss\n'  # torn at a crash
        b'{"op":"nuke","id":"y"}\n'
        + b"[" * 10_000
        + b"\n"
        + b'{"op":"issued","id":"z","tenant":"t","at":"soon"}\n'
    )
    ledger = SeedLedger(path)
    assert _ids(ledger) == [("x", "restarted")]


def test_the_file_and_the_listing_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = SeedLedger(path, max_abandoned=5, max_lines=40)
    for i in range(100):
        ledger.issued(f"r{i}", "t")
        ledger.abandoned(f"r{i}", "expired")
    assert [e["id"] for e in ledger.listing()] == [f"r{i}" for i in range(95, 100)]
    assert len(path.read_text().splitlines()) <= 40
    assert _ids(SeedLedger(path, max_abandoned=5)) == _ids(ledger)


def test_the_issuer_records_what_lapses(tmp_path: Path) -> None:
    ledger = SeedLedger(tmp_path / "l.jsonl")
    issuer = SeedIssuer(
        NoiseAuthority(b"m" * 32, "ctr-drbg"), None, max_pending=2, ttl=0.2, ledger=ledger
    )
    for rid in ("a", "b", "c"):  # c pushes a out of the pending set
        issuer.issue("t", rid, "ctr-drbg")
    assert _ids(ledger) == [("a", "evicted")]
    issuer.take("t", "b")  # bound at START: accounted for once it commits
    time.sleep(0.3)
    issuer.sweep()
    assert _ids(ledger) == [("a", "evicted"), ("c", "expired")]
    issuer.issue("t", "d", "ctr-drbg")
    with pytest.raises(Exception, match="no seed was issued"):
        issuer.take("other-tenant", "d")
    assert _ids(ledger)[-1] == ("d", "claimed for another tenant")
    # no seed material in the file: ids, tenants, times and reasons only
    for line in (tmp_path / "l.jsonl").read_text().splitlines():
        assert set(json.loads(line)) <= {
            "op",
            "id",
            "tenant",
            "at",
            "seq",
            "issuedAt",
            "abandonedAt",
            "reason",
        }
