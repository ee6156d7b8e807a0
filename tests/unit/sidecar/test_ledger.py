"""The request-id ledger: an id is committed once, ever, across evictions and restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from samplerguard.errors import MalformedInputError
from samplerguard.sidecar.ledger import RequestIdLedger


def test_an_id_is_refused_after_it_was_committed_even_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ids.log"
    ledger = RequestIdLedger(path)
    ledger.check("req-1")
    ledger.remember("req-1")
    ledger.remember("req-1")  # idempotent
    with pytest.raises(MalformedInputError, match="already committed by this sidecar"):
        ledger.check("req-1")
    ledger.close()
    again = RequestIdLedger(path)
    assert "req-1" in again and "req-2" not in again and len(again) == 1
    with pytest.raises(MalformedInputError, match="replay is refused"):
        again.check("req-1")
    again.close()


def test_a_torn_last_entry_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "ids.log"
    ledger = RequestIdLedger(path)
    ledger.remember("a")
    ledger.close()
    with path.open("ab") as fh:
        fh.write(b"0123456789")  # a crash mid-append
    again = RequestIdLedger(path)
    assert "a" in again and len(again) == 1
    assert path.stat().st_size == 33
    again.close()


def test_a_full_ledger_refuses_new_ids(tmp_path: Path) -> None:
    ledger = RequestIdLedger(tmp_path / "ids.log", max_ids=2)
    ledger.remember("a")
    ledger.remember("b")
    with pytest.raises(MalformedInputError, match="its cap: rotate"):
        ledger.check("c")
    ledger.close()
