"""The openings store: commit point, restart recovery, retention, size cap, free-space floor."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from samplerguard.errors import MalformedInputError
from samplerguard.hook.wire import TensorSpec
from samplerguard.sidecar.store import OpeningStore, StoreFullError, UnknownTrajectoryError


def _spec(name: str, nbytes: int) -> TensorSpec:
    return TensorSpec(name, "uint8", (nbytes,), 0, nbytes)


def _store(root: Path, **kw: object) -> OpeningStore:
    args: dict[str, object] = {"retention": 3600.0, "max_bytes": 1 << 20, "min_free_bytes": 0}
    args.update(kw)
    return OpeningStore(root, **args)  # type: ignore[arg-type]


def _commit(store: OpeningStore, tid: str, nbytes: int = 1000, at: float | None = None) -> None:
    w = store.open(tid)
    w.add("i/", [_spec("latent", nbytes)], bytearray(nbytes))
    index = {
        "id": tid,
        "committedAt": time.time() if at is None else at,
        "root": "00" * 32,
        "leaves": [],
        "steps": [],
        "initial": {},
        "conditioning": {},
    }
    w.commit(index, fsync=False)


def test_commit_is_visible_and_survives_a_restart_uncommitted_is_dropped(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _commit(store, "a")
    half = store.open("b")
    half.add("i/", [_spec("latent", 10)], bytearray(10))
    # crash: no commit, no discard
    again = _store(tmp_path)
    assert [e.id for e in again.committed()] == ["a"]
    assert not list(tmp_path.glob("*.partial"))
    assert again.committed_bytes == 1000
    _commit(again, "c")
    assert [e.seq for e in again.committed()] == [1, 2]


def test_a_request_id_is_committed_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _commit(store, "a")
    with pytest.raises(MalformedInputError, match="already used"):
        store.open("a")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 200, ".."])
def test_ids_cannot_escape_the_store(tmp_path: Path, bad: str) -> None:
    with pytest.raises(MalformedInputError, match="malformed"):
        _store(tmp_path).open(bad)


def test_size_cap_evicts_the_oldest_first(tmp_path: Path) -> None:
    store = _store(tmp_path, max_bytes=2500)
    for tid in ("a", "b", "c", "d"):
        _commit(store, tid)
    assert [e.id for e in store.committed()] == ["c", "d"]
    assert store.evicted == 2
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.json").exists()
    with pytest.raises(UnknownTrajectoryError):
        store.index("a")


def test_a_trajectory_bigger_than_the_cap_is_refused_not_written(tmp_path: Path) -> None:
    store = _store(tmp_path, max_bytes=500)
    w = store.open("big")
    with pytest.raises(StoreFullError, match="openings store is full"):
        w.add("i/", [_spec("x", 1000)], bytearray(1000))
    w.discard()
    assert not list(tmp_path.iterdir())


def test_free_space_floor_is_never_crossed(tmp_path: Path) -> None:
    store = _store(tmp_path, min_free_bytes=1 << 62)  # more than any disk has
    w = store.open("x")
    with pytest.raises(StoreFullError, match="free on the volume"):
        w.add("i/", [_spec("x", 1)], bytearray(1))


def test_retention_expires_old_trajectories(tmp_path: Path) -> None:
    store = _store(tmp_path, retention=60.0)
    now = time.time()
    _commit(store, "old", at=now - 120)
    _commit(store, "new", at=now)
    assert store.expire(now) == 1
    assert [e.id for e in store.committed()] == ["new"]


def test_an_unreadable_index_is_removed_at_start(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _commit(store, "a")
    (tmp_path / "a.json").write_text("{not json")
    assert _store(tmp_path).committed() == []
    assert not (tmp_path / "a.bin").exists()
    assert json.loads("{}") == {}


def test_a_second_discard_never_touches_a_retry_under_the_same_id(tmp_path: Path) -> None:
    """The ingest server discards a refused stream before it answers, and again when the
    connection ends; a retry may have reopened the id in between."""
    store = _store(tmp_path)
    first = store.open("again")
    first.add("i/", [_spec("latent", 10)], bytearray(10))
    first.discard()
    retry = store.open("again")
    retry.add("i/", [_spec("latent", 10)], bytearray(10))
    first.discard()  # the late second discard of the refused stream
    assert retry.path.exists()
    _ = retry.commit(
        {
            "id": "again",
            "committedAt": time.time(),
            "root": "00" * 32,
            "leaves": [],
            "steps": [],
            "initial": {},
            "conditioning": {},
        },
        fsync=False,
    )
    assert [e.id for e in store.committed()] == ["again"]
    assert store.committed_bytes == 10
