"""The openings store: commit point, restart recovery, retention, size cap, free-space floor."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from samplerguard.errors import MalformedInputError
from samplerguard.hook.wire import TensorSpec
from samplerguard.sidecar.store import (
    BLOCK,
    CHUNK,
    CorruptTrajectoryError,
    OpeningStore,
    StoreFullError,
    StoreWriteError,
    TrajectoryWriter,
    UnknownTrajectoryError,
)


def _spec(name: str, nbytes: int) -> TensorSpec:
    return TensorSpec(name, "uint8", (nbytes,), 0, nbytes)


def _store(root: Path, **kw: object) -> OpeningStore:
    args: dict[str, object] = {"retention": 3600.0, "max_bytes": 1 << 20, "min_free_bytes": 0}
    args.update(kw)
    return OpeningStore(root, **args)  # type: ignore[arg-type]


def _commit(store: OpeningStore, tid: str, nbytes: int = 1000, at: float | None = None) -> None:
    w = store.open(tid)
    w.add("i/", [_spec("latent", nbytes)], bytearray(nbytes))
    _commit_writer(w, tid, at)


def _commit_writer(w: TrajectoryWriter, tid: str, at: float | None = None) -> None:
    index = {
        "id": tid,
        "committedAt": time.time() if at is None else at,
        "root": "00" * 32,
        "envelope": {},
        "leaves": [],
        "steps": [],
        "initial": {},
        "conditioning": {},
    }
    w.commit(index, fsync=True)


def test_commit_is_visible_and_survives_a_restart_uncommitted_is_dropped(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _commit(store, "a")
    half = store.open("b")
    half.add("i/", [_spec("latent", 10)], bytearray(10))
    # crash: no commit, no discard
    again = _store(tmp_path)
    assert [e.id for e in again.committed()] == ["a"]
    assert not list(tmp_path.glob("*.partial"))
    assert again.committed_bytes == 2 * BLOCK  # the data file and the index, in whole blocks
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
    store = _store(tmp_path, max_bytes=5 * BLOCK)
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


def test_a_trajectory_that_cannot_fit_evicts_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path, max_bytes=8 * BLOCK)
    for tid in ("a", "b"):
        _commit(store, tid)
    w = store.open("huge")
    with pytest.raises(StoreFullError, match="do not fit"):
        w.add("i/", [_spec("x", 9 * BLOCK)], bytearray(9 * BLOCK))
    w.discard()
    assert [e.id for e in store.committed()] == ["a", "b"] and store.evicted == 0


def test_index_files_count_against_the_cap(tmp_path: Path) -> None:
    """Many small trajectories: the store's files on disk, indexes included, stay under
    the cap."""
    cap = 40 * BLOCK
    store = _store(tmp_path, max_bytes=cap)
    for i in range(60):
        _commit(store, f"t{i}", nbytes=10)
    used = sum(-(-p.stat().st_size // BLOCK) * BLOCK for p in tmp_path.iterdir())
    assert used <= cap and store.committed_bytes == used
    assert store.evicted == 60 - len(store.committed())


def test_an_index_that_does_not_fit_refuses_the_commit(tmp_path: Path) -> None:
    store = _store(tmp_path, max_bytes=BLOCK)
    w = store.open("a")
    w.add("i/", [_spec("latent", BLOCK)], bytearray(BLOCK))
    with pytest.raises(StoreFullError):
        _commit_writer(w, "a")
    w.discard()
    assert store.committed() == [] and not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["{not json", "[]", '{"leaves": ["%%%"]}', '{"leaves": []}'])
def test_a_corrupt_index_is_a_lost_trajectory_not_an_outage(tmp_path: Path, damage: str) -> None:
    store = _store(tmp_path)
    _commit(store, "a")
    _commit(store, "b")
    (tmp_path / "a.json").write_text(damage)
    with pytest.raises(CorruptTrajectoryError, match="is lost: its stored index is unreadable"):
        store.opening_bytes("a", 0)
    with pytest.raises(UnknownTrajectoryError, match="no committed trajectory"):
        store.index("a")  # deleted: an unknown id from now on
    assert [e.id for e in store.committed()] == ["b"] and not (tmp_path / "a.bin").exists()


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
    _commit_writer(retry, "again")
    assert [e.id for e in store.committed()] == ["again"]
    assert store.committed_bytes == 2 * BLOCK


# -- staged writes: O_DIRECT and buffered -------------------------------------------------------


def _frames(seed: int, sizes: list[int]) -> list[bytes]:
    import random

    rng = random.Random(seed)
    return [rng.randbytes(n) for n in sizes]


# odd sizes: chunk boundaries fall inside frames, and the tail is not block-aligned
_SIZES = [65_536 + 17, 1, 300_001, CHUNK, 3, 777_777, 65_536]


@pytest.mark.parametrize("copy", ["compiled", "slice"])
@pytest.mark.parametrize("direct", [None, True, False])
def test_staged_writes_store_every_byte_in_order(
    tmp_path: Path, direct: bool | None, copy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames staged with the compiled copy (GIL released) and, on a host that could not build
    it, with slice assignment: the same bytes in the same places."""
    from samplerguard.sidecar import store as store_module

    if copy == "slice":
        monkeypatch.setattr(store_module, "_copy_into", None)
    elif store_module._copy_into is None:
        pytest.skip("samplerguard._digest is not built here")
    store = _store(tmp_path, max_bytes=1 << 30, direct_io=direct)
    frames = _frames(1, _SIZES)
    w = store.open("t")
    assert w.direct is (direct is True) or direct is None  # auto: whatever the volume takes
    for i, body in enumerate(frames):
        w.add(f"s{i}/", [_spec("latent", len(body))], memoryview(body))
    _commit_writer(w, "t")
    data = (tmp_path / "t.bin").read_bytes()
    assert data == b"".join(frames)  # exact size: the O_DIRECT padding is cut
    table = store.index("t")["tensors"]
    for i, body in enumerate(frames):
        offset, _, _, nbytes = table[f"s{i}/latent"]
        assert data[offset : offset + nbytes] == body
    store.close()


def test_the_compiled_copy_refuses_bytes_that_do_not_fit() -> None:
    import mmap

    digest_ext = pytest.importorskip("samplerguard._digest")
    buf = mmap.mmap(-1, 16)
    assert digest_ext.copy_into(buf, 12, b"abcd") == 4
    assert buf[8:16] == b"\0\0\0\0abcd"
    for offset, data in ((13, b"abcd"), (-1, b"a"), (17, b"")):
        with pytest.raises(ValueError, match="do not fit"):
            digest_ext.copy_into(buf, offset, data)
    with pytest.raises(BufferError):
        digest_ext.copy_into(b"read-only", 0, b"a")
    assert buf[:12] == bytes(12)  # nothing written by the refused copies


def test_a_volume_that_refuses_o_direct_at_open_gets_buffered_writes_or_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which volumes refuse O_DIRECT depends on the kernel (tmpfs takes it since Linux 6.6), so
    the refusal is injected: ``open`` with O_DIRECT fails with EINVAL, as on such a volume."""
    import errno
    import os

    real_open = os.open

    def refusing_open(path: object, flags: int, *a: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refusing_open)
    store = _store(tmp_path / "s", max_bytes=1 << 30, direct_io=None)
    frames = _frames(2, _SIZES[:3])
    w = store.open("t")
    assert not w.direct and not store.direct_io  # and later writers do not try again
    for body in frames:
        w.add("x/", [_spec("latent", len(body))], body)
    _commit_writer(w, "t")
    assert (tmp_path / "s" / "t.bin").read_bytes() == b"".join(frames)
    store.close()

    strict = _store(tmp_path / "strict", direct_io=True)
    with pytest.raises(OSError, match="refuses O_DIRECT"):
        strict.open("t")
    assert not list((tmp_path / "strict").iterdir())
    strict.close()


def _refuse_direct_writes(monkeypatch: pytest.MonkeyPatch, *, together: int = 1) -> None:
    """``os.pwrite`` refuses every write to a file opened with O_DIRECT (EINVAL); with
    ``together`` > 1 the refusals wait for each other, so that many are refused at once."""
    import errno
    import fcntl
    import os
    import threading

    real_pwrite = os.pwrite
    barrier = threading.Barrier(together, timeout=10) if together > 1 else None

    def refusing_pwrite(fd: int, data: object, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            if barrier is not None:
                barrier.wait()
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "pwrite", refusing_pwrite)


def _write_refused_then_buffered(tmp_path: Path, frames: list[bytes]) -> None:
    store = _store(tmp_path, max_bytes=1 << 30, direct_io=None)
    w = store.open("t")
    assert w.direct
    for body in frames:
        w.add("x/", [_spec("latent", len(body))], bytearray(body))
    _commit_writer(w, "t")
    assert not store.direct_io
    assert (tmp_path / "t.bin").read_bytes() == b"".join(frames)
    store.close()


def test_a_volume_that_refuses_o_direct_at_write_is_switched_to_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some network and FUSE volumes accept O_DIRECT at open and refuse the first write."""
    _refuse_direct_writes(monkeypatch)
    _write_refused_then_buffered(tmp_path, _frames(4, _SIZES))


def test_two_writes_refused_at_once_both_fall_back_to_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both of a trajectory's writes in flight are refused at the same moment: the first
    switches the file to buffered, the second retries instead of failing the trajectory (a
    race CI once hit)."""
    _refuse_direct_writes(monkeypatch, together=2)
    # two full chunks go out together, then the tail
    _write_refused_then_buffered(tmp_path, [bytes([i]) * CHUNK for i in range(1, 4)])


@pytest.mark.parametrize(
    ("limit", "sizes"),
    [
        (CHUNK, [CHUNK] * 4),  # the second chunk (a direct write) fails
        (1000, [3000]),  # the tail (the page-cache write at commit) fails: all of a small one
    ],
    ids=["chunk", "tail"],
)
def test_a_failed_write_surfaces_and_the_trajectory_is_dropped(
    tmp_path: Path, limit: int, sizes: list[int]
) -> None:
    """A volume that fails mid-trajectory (full, I/O error): the error reaches the ingest
    thread at the next flush or the commit, nothing is committed, the partial file is gone."""
    import resource
    import signal

    store = _store(tmp_path, max_bytes=1 << 30, direct_io=None)
    w = store.open("t")
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # writes past it fail: EFBIG
    try:
        with pytest.raises(StoreWriteError, match="File too large"):
            for body in _frames(3, sizes):
                w.add("x/", [_spec("latent", len(body))], body)
            _commit_writer(w, "t")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    w.discard()
    assert not list(tmp_path.iterdir())
    assert store.committed() == []
    assert store._open_bytes == 0  # the failed trajectory's reservation is released
    _commit(store, "t")  # the id is free again
    store.close()


def test_a_tail_that_cannot_be_switched_to_buffered_fails_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tail is written through the page cache; if the file cannot be switched from O_DIRECT
    (fcntl fails), the commit fails as a store write error and nothing is committed."""
    import fcntl

    store = _store(tmp_path, max_bytes=1 << 30, direct_io=None)
    w = store.open("t")
    assert w.direct
    w.add("x/", [_spec("latent", 3000)], bytearray(3000))
    real = fcntl.fcntl

    def failing(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL:
            raise OSError(5, "Input/output error")
        return real(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", failing)  # the module the store calls
    with pytest.raises(StoreWriteError, match="buffered"):
        _commit_writer(w, "t")
    monkeypatch.setattr(fcntl, "fcntl", real)
    w.discard()
    assert store.committed() == []
    assert not list(tmp_path.iterdir())
    assert store._open_bytes == 0
    store.close()


def test_an_index_orjson_cannot_write_is_written_by_json() -> None:
    import json as _json

    from samplerguard.sidecar.store import _index_bytes

    for index in ({"seq": 1, "committedAt": 1.5e9, "id": "é"}, {"seq": 2**70}):
        assert _json.loads(_index_bytes(index)) == index
