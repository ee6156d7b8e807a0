"""The openings store: every committed trajectory's tensors on the sidecar's volume.

Per trajectory two files in the store directory:

* ``<id>.bin``: the tensor bytes exactly as the frames carried them, in arrival order (while
  the trajectory is open the file is ``<id>.bin.partial``);
* ``<id>.json``: the index, written last and renamed into place. Its presence *is* the commit:
  after a crash or restart, a ``.bin`` without an index is an uncommitted trajectory and is
  deleted; everything with an index is served again.

Writes go through a staging buffer per open trajectory: frames are copied into a reused, page-
aligned 4 MiB buffer, and each full buffer is written by the store's writer threads while
ingestion goes on into the next (at most two writes in flight per trajectory), so the write
runs beside ingestion instead of in it. Where the volume takes it (``direct_io`` auto, the
default) the file is opened with ``O_DIRECT``: the bytes go to the disk without the page cache.
The disk has to take every byte either way (openings are kept for hours, past writeback); what
the page cache adds is a copy into freshly allocated pages, charged to the pod's memory cgroup
as dirty pages. On the project's 2-core VM that copy cost 90 us of kernel CPU per 64 KiB record
(6 us into resident pages: the host faults every fresh guest page in) against 5 us direct, and
the sidecar ingested 7.7k records per CPU-second direct against 4.4k buffered. A volume that
refuses ``O_DIRECT`` gets buffered writes through the same staging (auto), or an error
(``direct_io=True``).

Bounds: a retention time, a size cap (the oldest trajectories are evicted first) and a floor
on the volume's free space. Both count everything the store writes, the index files included,
in whole filesystem blocks (what an emptyDir's ``sizeLimit`` measures). Space is reserved before
each frame and before each index is written; when nothing more can be evicted the trajectory is
refused (:class:`StoreFullError`), so the sidecar never fills the disk. A trajectory that could
not fit even in an empty store is refused *without* evicting anything: committed trajectories
are only ever given up for one that will be kept.

An index that cannot be read back (a damaged volume) is treated as a lost trajectory: it is
deleted and reported as :class:`CorruptTrajectoryError`, which callers handle like an unknown
id, never as an outage.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import logging
import mmap
import os
import re
import shutil
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson
import torch

from samplerguard.commitment.merkle import inclusion_proof, leaf_hash
from samplerguard.commitment.opening import LeafProof, Opening, OpeningMeta
from samplerguard.commitment.trajectory import leaf_index_of_step
from samplerguard.commitment.transcript import Transcript, TranscriptMeta
from samplerguard.errors import MalformedInputError, TemporaryError
from samplerguard.hook.wire import DTYPES, TensorSpec

_copy_into: Callable[[Any, int, Any], int] | None
try:
    # the compiled copy releases the GIL while it runs (a slice assignment holds it, and the
    # connection's digester thread waits for it to append its leaves)
    from samplerguard._digest import copy_into as _compiled_copy
except ImportError:  # built without a C compiler: slice assignment
    _copy_into = None
else:
    _copy_into = _compiled_copy

__all__ = [
    "CorruptTrajectoryError",
    "OpeningStore",
    "StoreFullError",
    "StoreWriteError",
    "StoredTrajectory",
    "TrajectoryWriter",
    "UnknownTrajectoryError",
]

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: the allocation unit the cap and the floor count files in (an emptyDir's usage is counted in
#: blocks: a 10-byte index takes 4 KiB of the ``sizeLimit``)
BLOCK = 4096
_INDEX_CACHE = 32
_STATVFS_EVERY = 8 << 20
#: staging buffer size: one write per 4 MiB of frames. Staging buffers are page-aligned (mmap)
#: and every direct write is a whole chunk at a chunk offset, so O_DIRECT's alignment (512 B or
#: 4 KiB sectors) always holds; only the tail is shorter, and it is written through the page
#: cache. A direct write's CPU cost is mostly per call (pinning, the request, the virtio kick):
#: on the project's 2-core VM the writer threads spent 13.5 us per 64 KiB record with 1 MiB
#: chunks and 6.5 us with 4 MiB.
CHUNK = 4 << 20
#: idle staging buffers kept for reuse (resident pages); more are made on demand and unmapped
_KEEP_BUFFERS = 6
_O_DIRECT = getattr(os, "O_DIRECT", 0)
#: a trajectory's staged chunks being written at once (the disk works on one while the next
#: is written; ingestion waits beyond)
_IN_FLIGHT = 2


class StoreFullError(TemporaryError):
    """No room for this trajectory without breaking the size cap or the free-space floor."""


class StoreWriteError(TemporaryError):
    """The volume failed a write (full, quota, I/O error): the trajectory is refused."""


def _write_failed(exc: OSError) -> StoreWriteError:
    return StoreWriteError(f"writing the openings failed: {exc.strerror or exc}", delay=5.0)


class UnknownTrajectoryError(MalformedInputError):
    """No committed trajectory with this id (never committed, or evicted)."""


class CorruptTrajectoryError(UnknownTrajectoryError):
    """The trajectory's index could not be read back; it was deleted (the opening is lost)."""


def on_disk(nbytes: int) -> int:
    """The bytes a file of ``nbytes`` takes on the volume: whole blocks."""
    return -(-nbytes // BLOCK) * BLOCK


@dataclass(frozen=True)
class StoredTrajectory:
    id: str
    seq: int
    committed_at: float
    nbytes: int
    root: str
    quarantine: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "committedAt": self.committed_at,
            "root": self.root,
            "bytes": self.nbytes,
            "quarantine": list(self.quarantine),
        }


def _safe_name(trajectory_id: str) -> str:
    if not _ID.match(trajectory_id) or trajectory_id in (".", ".."):
        raise MalformedInputError(f"trajectory id {trajectory_id[:40]!r} is malformed")
    return trajectory_id


class _Buffers:
    """Page-aligned staging buffers, reused so their pages stay resident (a fresh page costs a
    page fault and, on a VM, a host fault the first time it is touched)."""

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self._idle: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return mmap.mmap(-1, self.size)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(buf)
                return
        buf.close()


class TrajectoryWriter:
    """Appends one trajectory's frames to its ``.bin.partial`` file. One owner thread; the
    staged chunks are written by the store's writer threads, at most two at a time."""

    def __init__(self, store: OpeningStore, trajectory_id: str) -> None:
        self.store = store
        self.id = trajectory_id
        self.path = store.root / f"{trajectory_id}.bin.partial"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        self.direct = store.direct_io
        try:
            self._fd = os.open(self.path, flags | (_O_DIRECT if self.direct else 0), 0o600)
        except OSError as exc:
            if not self.direct or exc.errno != errno.EINVAL:
                raise
            store.no_direct_io(f"open: {exc}")  # the volume refuses O_DIRECT (tmpfs)
            self.direct = False
            self._fd = os.open(self.path, flags, 0o600)
        self.size = 0
        #: key → [offset, dtype, shape, nbytes]
        self.tensors: dict[str, list[Any]] = {}
        self.closed = False  # the file descriptor
        self._finished = False  # committed or discarded: the id is no longer ours
        self._buf: mmap.mmap | None = None
        self._fill = 0  # bytes staged in _buf
        self._offset = 0  # file offset of _buf's first byte
        self._pending: deque[Future[None]] = deque()
        self._direct_lock = threading.Lock()

    def add(
        self, prefix: str, specs: Sequence[TensorSpec], body: bytes | bytearray | memoryview
    ) -> None:
        """Stage a frame body for writing and index its tensors (as
        :func:`~samplerguard.hook.wire.tensor_specs` laid them out) under ``prefix``."""
        self.add_records([(prefix, specs, 0)], body)

    def add_records(
        self,
        records: Sequence[tuple[str, Sequence[TensorSpec], int]],
        body: bytes | bytearray | memoryview,
    ) -> None:
        """Stage a frame body holding several records (a ``STEPS`` frame) with one reservation
        and one copy, and index each record's tensors under its prefix; a record is ``(prefix,
        specs, offset of its first byte in body)``."""
        if self.closed:
            raise MalformedInputError("trajectory is already closed")
        self.store.reserve(self, len(body))
        base = self.size
        self.size += len(body)  # now: a failure below releases the whole reservation
        view = memoryview(body).cast("B")
        while view:
            if self._buf is None:
                self._buf = self.store.buffers.take()
            n = min(len(view), CHUNK - self._fill)
            if _copy_into is not None:
                _copy_into(self._buf, self._fill, view[:n])
            else:
                self._buf[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == CHUNK:
                self._flush(CHUNK)
        tensors = self.tensors
        for prefix, specs, offset in records:
            start = base + offset
            for spec in specs:
                tensors[f"{prefix}{spec.name}"] = [
                    start + spec.offset,
                    spec.dtype,
                    list(spec.shape),
                    spec.nbytes,
                ]

    def _flush(self, length: int) -> None:
        """Hand the staged chunk to a writer thread (once fewer than ``_IN_FLIGHT`` of this
        trajectory's writes are outstanding)."""
        self._wait(keep=_IN_FLIGHT - 1)
        buf, offset = self._buf, self._offset
        assert buf is not None
        self._buf, self._fill, self._offset = None, 0, offset + length
        self._pending.append(self.store.writers.submit(self._write, buf, length, offset))

    def _write(self, buf: mmap.mmap, length: int, offset: int) -> None:
        view = memoryview(buf)[:length]
        try:
            while view:
                direct = self.direct  # what this attempt was issued as
                try:
                    n = os.pwrite(self._fd, view, offset)
                except OSError as exc:
                    if not direct or exc.errno != errno.EINVAL:
                        raise
                    # accepted at open, refused at write (some network and FUSE volumes)
                    self._to_buffered(f"write: {exc}")
                    continue
                view, offset = view[n:], offset + n
        finally:
            view.release()
            self.store.buffers.give(buf)

    def _to_buffered(self, refused: str | None = None) -> None:
        """Switch the file to buffered writes: for the tail, or (``refused``: why) because the
        volume refused a direct write. Both of a trajectory's writes in flight may be refused at
        once; the first switches, the second only retries (before the lock it was refused as a
        genuine error once the first had cleared ``direct``)."""
        with self._direct_lock:
            if not self.direct:
                return
            if refused is not None:
                self.store.no_direct_io(refused)
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
            self.direct = False

    def _wait(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` writes are outstanding; an error (a full or failing
        volume) surfaces here."""
        while len(self._pending) > keep:
            try:
                self._pending.popleft().result()
            except OSError as exc:
                raise _write_failed(exc) from exc

    def _drain(self) -> None:
        """Write everything staged; the file then holds exactly ``size`` bytes.

        The tail (the last, partial chunk) is written through the page cache, on this thread:
        a direct write would have to be padded to a block, cut back with ``ftruncate``, and
        waited for at the disk's latency before the commitment can be answered. For a small
        model's trajectory (a few KiB a step) the tail is all of it, and that wait was 1 ms of
        the 1.6 ms a FINISH took."""
        self._wait()  # first: a failed direct write may have switched the file to buffered
        buf, length = self._buf, self._fill
        self._buf, self._fill = None, 0
        if buf is None:
            return
        if not length:
            self.store.buffers.give(buf)
            return
        try:
            self._to_buffered()
        except OSError:
            self.store.buffers.give(buf)
            raise StoreWriteError("switching the openings file to buffered writes failed") from None
        try:
            self._write(buf, length, self._offset)  # gives the buffer back
        except OSError as exc:
            raise _write_failed(exc) from exc
        self._offset += length

    def commit(self, index: dict[str, Any], *, fsync: bool) -> StoredTrajectory:
        """Make the trajectory durable and visible: data file, then the index (the commit)."""
        self._drain()
        index = dict(index, tensors=self.tensors, bytes=self.size)
        if fsync:
            os.fsync(self._fd)
        os.close(self._fd)
        self.closed = True
        entry = self.store._commit(self, index, fsync=fsync)
        self._finished = True
        return entry

    def discard(self) -> None:
        """Drop the uncommitted trajectory. Idempotent: once discarded (or committed) it never
        touches the id again, which a retry may already have reopened under the same name."""
        if self._finished:
            return
        self._finished = True
        while self._pending:
            with contextlib.suppress(OSError):  # the trajectory is dropped anyway
                self._pending.popleft().result()
        if self._buf is not None:
            self.store.buffers.give(self._buf)
            self._buf = None
        if not self.closed:
            os.close(self._fd)
            self.closed = True
        self.path.unlink(missing_ok=True)
        self.store._release(self)


def _index_bytes(index: dict[str, Any]) -> bytes:
    """The index as compact JSON: with orjson (a 24 KiB index of a 20-step trajectory in 8 us
    instead of json's 145 us, on every commit); json for what orjson does not take (an integer
    beyond 64 bits)."""
    try:
        return orjson.dumps(index)
    except TypeError:
        return json.dumps(index, separators=(",", ":")).encode()


class OpeningStore:
    def __init__(
        self,
        root: Path,
        *,
        retention: float,
        max_bytes: int,
        min_free_bytes: int,
        direct_io: bool | None = None,
        writer_threads: int = 4,
    ) -> None:
        """``direct_io``: ``None`` (auto, default) uses ``O_DIRECT`` where the volume takes
        it, ``True`` insists on it (an error where it is refused), ``False`` writes through the
        page cache."""
        self.root = root
        self.retention = retention
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._direct_required = direct_io is True
        self.direct_io = direct_io is not False and bool(_O_DIRECT)
        if direct_io is True and not _O_DIRECT:
            raise ValueError("O_DIRECT is not available on this platform")
        self.buffers = _Buffers(CHUNK, _KEEP_BUFFERS)
        self.writers = ThreadPoolExecutor(writer_threads, thread_name_prefix="sg-store-write")
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, StoredTrajectory] = OrderedDict()  # by seq
        self._open: dict[str, TrajectoryWriter] = {}
        self._open_bytes = 0
        self._committed_bytes = 0
        self._seq = 0
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.evicted = 0
        self._free_cache: int | None = None
        self._since_statvfs = 0
        root.mkdir(parents=True, exist_ok=True)
        self._recover()

    def no_direct_io(self, why: str) -> None:
        """The volume refused ``O_DIRECT``: fall back to buffered writes (unless required)."""
        if self._direct_required:
            raise OSError(errno.EINVAL, f"the openings volume refuses O_DIRECT ({why})")
        if self.direct_io:
            log.info("store: the volume refuses O_DIRECT (%s); using buffered writes", why)
        self.direct_io = False

    def close(self) -> None:
        """Stop the writer threads (after the writes in flight)."""
        self.writers.shutdown(wait=True)

    # -- startup -------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Drop what was never committed, reload what was."""
        found: list[StoredTrajectory] = []
        for path in self.root.iterdir():
            name = path.name
            if name.endswith((".partial", ".tmp")):
                path.unlink(missing_ok=True)
            elif name.endswith(".json"):
                try:
                    raw = path.read_bytes()
                    data = (self.root / (name.removesuffix(".json") + ".bin")).stat().st_size
                    found.append(self._entry(json.loads(raw), on_disk(data) + on_disk(len(raw))))
                except (OSError, ValueError, KeyError, TypeError, RecursionError):
                    log.warning("store: unreadable index %s is removed", name)
                    path.unlink(missing_ok=True)
                    (self.root / (name.removesuffix(".json") + ".bin")).unlink(missing_ok=True)
        for path in self.root.glob("*.bin"):
            if not (self.root / (path.name.removesuffix(".bin") + ".json")).exists():
                path.unlink(missing_ok=True)
        for entry in sorted(found, key=lambda e: e.seq):
            self._entries[entry.id] = entry
            self._committed_bytes += entry.nbytes
            self._seq = max(self._seq, entry.seq)
        if found:
            log.info("store: %d committed trajectories kept across the restart", len(found))

    @staticmethod
    def _entry(doc: dict[str, Any], nbytes: int) -> StoredTrajectory:
        """``nbytes``: what the trajectory's files take on the volume."""
        return StoredTrajectory(
            id=_safe_name(str(doc["id"])),
            seq=int(doc["seq"]),
            committed_at=float(doc["committedAt"]),
            nbytes=nbytes,
            root=str(doc["root"]),
            quarantine=tuple(doc.get("quarantine", [])),
        )

    # -- writing -------------------------------------------------------------------------------

    def open(self, trajectory_id: str) -> TrajectoryWriter:
        _safe_name(trajectory_id)
        with self._lock:
            if trajectory_id in self._entries or trajectory_id in self._open:
                raise MalformedInputError(
                    f"request id {trajectory_id!r} was already used (a trajectory id is "
                    "committed once; a replayed request is refused)"
                )
            writer = TrajectoryWriter(self, trajectory_id)
            self._open[trajectory_id] = writer
            return writer

    def reserve(self, writer: TrajectoryWriter, nbytes: int) -> None:
        with self._lock:
            self._make_room_locked(nbytes)
            self._open_bytes += nbytes
            self._since_statvfs += nbytes

    def _full(self, nbytes: int) -> StoreFullError:
        return StoreFullError(
            f"openings store is full: {self._committed_bytes + self._open_bytes} bytes held "
            f"of {self.max_bytes}, {self._free_bytes(True)} free on the volume (floor "
            f"{self.min_free_bytes}); {nbytes} more bytes do not fit",
            delay=5.0,
        )

    def _make_room_locked(self, nbytes: int) -> None:
        """Evict the oldest committed trajectories until ``nbytes`` more fit under the cap and
        above the free-space floor. Evicts nothing when even evicting every committed
        trajectory would not make room: those are never given up for bytes that are then
        refused anyway."""
        if self._committed_bytes + self._open_bytes + nbytes <= self.max_bytes and (
            self._free_bytes() - nbytes >= self.min_free_bytes
        ):
            return
        if self._open_bytes + nbytes > self.max_bytes or (
            self._free_bytes(True) + self._committed_bytes - nbytes < self.min_free_bytes
        ):
            raise self._full(nbytes)
        fresh = False
        while self._committed_bytes + self._open_bytes + nbytes > self.max_bytes or (
            self._free_bytes(fresh) - nbytes < self.min_free_bytes
        ):
            if not self._evict_oldest_locked():
                raise self._full(nbytes)
            fresh = True  # an eviction freed space: measure again

    def _free_bytes(self, fresh: bool = False) -> int:
        """Free bytes on the volume, less what was reserved since the last ``statvfs``. It is
        re-read after every 8 MiB reserved and whenever the floor is near, so the hot path does
        not pay a syscall per record."""
        if (
            fresh
            or self._free_cache is None
            or self._since_statvfs > _STATVFS_EVERY
            or self._free_cache - self._since_statvfs < self.min_free_bytes + _STATVFS_EVERY
        ):
            self._free_cache = shutil.disk_usage(self.root).free
            self._since_statvfs = 0
        return self._free_cache - self._since_statvfs

    def _release(self, writer: TrajectoryWriter) -> None:
        with self._lock:
            if self._open.get(writer.id) is writer:
                del self._open[writer.id]
                self._open_bytes -= writer.size

    def _commit(
        self, writer: TrajectoryWriter, index: dict[str, Any], *, fsync: bool
    ) -> StoredTrajectory:
        with self._lock:
            index["seq"] = self._seq + 1
            raw = _index_bytes(index)
            # the index and the data file's last partial block count against the cap as well
            # (reserved before anything is written: refused here, nothing is committed)
            extra = on_disk(len(raw)) + on_disk(writer.size) - writer.size
            self._make_room_locked(extra)
            self._seq += 1
            entry = self._entry(index, writer.size + extra)
            data_path = self.root / f"{writer.id}.bin"
            index_path = self.root / f"{writer.id}.json"
            tmp = self.root / f"{writer.id}.json.tmp"
            os.replace(writer.path, data_path)
            with open(tmp, "wb") as fh:
                fh.write(raw)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, index_path)
            if fsync:
                dfd = os.open(self.root, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            self._open.pop(writer.id, None)
            self._open_bytes -= writer.size
            self._committed_bytes += entry.nbytes
            self._since_statvfs += extra
            self._entries[entry.id] = entry
            return entry

    # -- retention -----------------------------------------------------------------------------

    def _evict_oldest_locked(self) -> bool:
        if not self._entries:
            return False
        _, entry = self._entries.popitem(last=False)
        self._delete_locked(entry)
        return True

    def _delete_locked(self, entry: StoredTrajectory) -> None:
        (self.root / f"{entry.id}.json").unlink(missing_ok=True)
        (self.root / f"{entry.id}.bin").unlink(missing_ok=True)
        self._committed_bytes -= entry.nbytes
        self._cache.pop(entry.id, None)
        self.evicted += 1

    def expire(self, now: float | None = None) -> int:
        """Delete trajectories past the retention time; returns how many."""
        cutoff = (time.time() if now is None else now) - self.retention
        n = 0
        with self._lock:
            while self._entries:
                first = next(iter(self._entries.values()))
                if first.committed_at >= cutoff:
                    break
                self._entries.popitem(last=False)
                self._delete_locked(first)
                n += 1
        return n

    # -- reading -------------------------------------------------------------------------------

    @property
    def committed_bytes(self) -> int:
        return self._committed_bytes

    def committed(self, *, after: int = 0, limit: int = 1000) -> list[StoredTrajectory]:
        with self._lock:
            return [e for e in self._entries.values() if e.seq > after][:limit]

    def index(self, trajectory_id: str) -> dict[str, Any]:
        _safe_name(trajectory_id)
        with self._lock:
            if trajectory_id not in self._entries:
                raise UnknownTrajectoryError(f"no committed trajectory {trajectory_id!r}")
            cached = self._cache.get(trajectory_id)
            if cached is not None:
                self._cache.move_to_end(trajectory_id)
                return cached
        try:
            doc: dict[str, Any] = json.loads((self.root / f"{trajectory_id}.json").read_bytes())
            hashes = [leaf_hash(base64.b64decode(leaf, validate=True)) for leaf in doc["leaves"]]
            for key in ("id", "seq", "committedAt", "envelope", "root", "steps"):
                doc[key]
        except FileNotFoundError:
            raise UnknownTrajectoryError(f"trajectory {trajectory_id!r} was evicted") from None
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            self._drop_corrupt(trajectory_id, exc)
        doc["_hashes"] = hashes
        with self._lock:
            self._cache[trajectory_id] = doc
            while len(self._cache) > _INDEX_CACHE:
                self._cache.popitem(last=False)
        return doc

    def _drop_corrupt(self, trajectory_id: str, exc: BaseException) -> NoReturn:
        """A committed trajectory whose index cannot be read: delete it (it can never be
        served) and say so, once, instead of failing every later request for it."""
        log.warning(
            "store: the index of %s is unreadable (%s); the trajectory is deleted",
            trajectory_id,
            type(exc).__name__,
        )
        with self._lock:
            entry = self._entries.pop(trajectory_id, None)
            if entry is not None:
                self._delete_locked(entry)
        raise CorruptTrajectoryError(
            f"trajectory {trajectory_id!r} is lost: its stored index is unreadable"
        ) from None

    def opening_bytes(self, trajectory_id: str, step: int) -> bytes:
        """The safetensors opening of ``step``, assembled from the stored frames."""
        doc = self.index(trajectory_id)
        try:
            return self._opening(trajectory_id, step, doc)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            # an index that parses but does not hold what the store wrote
            self._drop_corrupt(trajectory_id, exc)

    def _opening(self, trajectory_id: str, step: int, doc: dict[str, Any]) -> bytes:
        steps = doc["steps"]
        if not 0 <= step < len(steps):
            raise MalformedInputError(
                f"step {step} is outside trajectory {trajectory_id!r} of {len(steps)} steps"
            )
        before = doc["initial"] if step == 0 else steps[step - 1]
        after = steps[step]
        wanted: dict[str, str] = {"latent_in": before["latent"], "latent_out": after["latent"]}
        wanted.update({f"state_in/{p}": k for p, k in before["stateTensors"].items()})
        wanted.update({f"state_out/{p}": k for p, k in after["stateTensors"].items()})
        wanted.update({f"noise/{i}": k for i, k in enumerate(after["noise"])})
        wanted.update({f"cond/{c}": k for c, k in doc["conditioning"].items()})
        tensors = self._read(trajectory_id, doc["tensors"], wanted)
        hashes: list[bytes] = doc["_hashes"]
        indices = sorted({0, 1, leaf_index_of_step(step) - 1, leaf_index_of_step(step)})
        leaves = [
            LeafProof(
                index=i,
                data=doc["leaves"][i],
                proof=[p.hex() for p in inclusion_proof(hashes, i, hashed=True)],
            )
            for i in indices
        ]
        meta = OpeningMeta(
            request_id=trajectory_id,
            step=step,
            tree_size=len(hashes),
            root=doc["root"],
            leaves=leaves,
            state_in=before["state"],
            state_out=after["state"],
            noise_count=len(after["noise"]),
            conditioning=sorted(doc["conditioning"]),
        )
        return Opening(meta, tensors).to_bytes()

    def transcript_bytes(self, trajectory_id: str) -> bytes:
        """Every leaf, z_N, the final latent and the request parameters (a transcript)."""
        doc = self.index(trajectory_id)
        tensors = self._read(
            trajectory_id,
            doc["tensors"],
            {"initial": doc["initial"]["latent"], "final": "f/latent"},
        )
        meta = TranscriptMeta(
            request_id=trajectory_id,
            tree_size=len(doc["leaves"]),
            root=doc["root"],
            leaves=doc["leaves"],
            request=doc.get("request"),
        )
        return Transcript(meta, tensors).to_bytes()

    def _read(
        self, trajectory_id: str, table: dict[str, list[Any]], wanted: dict[str, str]
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        try:
            fd = os.open(self.root / f"{trajectory_id}.bin", os.O_RDONLY)
        except FileNotFoundError:
            raise UnknownTrajectoryError(f"trajectory {trajectory_id!r} was evicted") from None
        try:
            for name, key in wanted.items():
                offset, dtype_name, shape, nbytes = table[key]
                dtype = DTYPES[dtype_name]
                if nbytes == 0:
                    out[name] = torch.empty(shape, dtype=dtype)
                    continue
                raw = bytearray(os.pread(fd, nbytes, offset))
                if len(raw) != nbytes:
                    raise MalformedInputError(
                        f"stored trajectory {trajectory_id!r} is truncated at tensor {key!r}"
                    )
                out[name] = torch.frombuffer(raw, dtype=dtype).reshape(shape)
        finally:
            os.close(fd)
        return out
