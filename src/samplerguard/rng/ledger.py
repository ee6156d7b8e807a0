"""The used-request-id ledger: a request id is served once.

Entries are 16-byte keyed hashes of (tenant, request id), never the ids themselves, so neither
memory nor the journal tells who asked for what. The ledger is bounded: it remembers the most
recent ``capacity`` entries (FIFO) and refuses any of them a second time. With a journal it keeps
that promise across restarts:

* the journal is an append-only file: a 16-byte header (magic ``SGLEDGR1`` and an 8-byte
  fingerprint of the ledger key, so a journal written under another master secret is refused),
  then one 16-byte record per claimed id, flushed (and by default fsync'ed) *before* the claim
  returns;
* a torn last record (a crash mid-append) is dropped on open: that claim never returned;
* when the file holds more than ``2 × capacity`` records it is compacted to the last ``capacity``
  through a temporary file and an atomic rename, so the file stays bounded too.

Reuse of an id older than the window is not detected here; it still cannot repeat noise, because
every request's DRBG nonce is fresh (see :mod:`samplerguard.rng.authority`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from samplerguard.errors import MalformedInputError, VerificationError

__all__ = ["RequestLedger", "RequestReuseError"]

_MAGIC = b"SGLEDGR1"
_HEADER = 16
_RECORD = 16


class RequestReuseError(VerificationError):
    """A request id was presented a second time."""


class RequestLedger:
    """Bounded set of claimed entries with an optional on-disk journal."""

    def __init__(
        self,
        fingerprint: bytes,
        *,
        capacity: int = 1 << 18,
        journal: Path | None = None,
        fsync: bool = True,
    ) -> None:
        if len(fingerprint) != 8:
            raise MalformedInputError("a ledger fingerprint is 8 bytes")
        if not 1 <= capacity <= 1 << 26:
            raise MalformedInputError(f"ledger capacity {capacity} is outside 1..2^26")
        self._fingerprint = fingerprint
        self._capacity = capacity
        self._journal = journal
        self._fsync = fsync
        self._lock = threading.Lock()
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._records_on_disk = 0
        self._fh: int | None = None
        if journal is not None:
            self._open_journal(journal)

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, entry: object) -> bool:
        return entry in self._seen

    def _remember(self, entry: bytes) -> None:
        self._seen[entry] = None
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)

    def _open_journal(self, path: Path) -> None:
        header = _MAGIC + self._fingerprint
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise MalformedInputError(
                f"cannot open request journal {path}: {exc.strerror}"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                os.write(fd, header)
                os.fsync(fd)
                size = _HEADER
            # Only the header and the last `capacity` records are ever read: bounded work.
            got = os.pread(fd, _HEADER, 0)
            if got[:8] != _MAGIC:
                raise MalformedInputError(f"{path} is not a samplerguard request journal")
            if got != header:
                raise MalformedInputError(
                    f"request journal {path} was written under a different master secret "
                    "(ledger fingerprint mismatch)"
                )
            records = (size - _HEADER) // _RECORD
            if (size - _HEADER) % _RECORD:
                os.ftruncate(fd, _HEADER + records * _RECORD)  # a torn append never returned
            keep = min(records, self._capacity)
            start = _HEADER + (records - keep) * _RECORD
            data = os.pread(fd, keep * _RECORD, start)
            for i in range(keep):
                self._remember(data[i * _RECORD : (i + 1) * _RECORD])
            self._records_on_disk = records
            os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            os.close(fd)
            raise
        self._fh = fd

    def claim(self, entry: bytes, what: str) -> None:
        """Record ``entry``; raise :class:`RequestReuseError` (naming ``what``) if it is known."""
        if len(entry) != _RECORD:
            raise MalformedInputError("a ledger entry is 16 bytes")
        with self._lock:
            if entry in self._seen:
                raise RequestReuseError(
                    f"{what} was already used; a request id is served once "
                    "(send a fresh request id)"
                )
            # Remembered first: if the journal write fails the id stays refused (fail closed).
            self._remember(entry)
            if self._fh is not None:
                os.write(self._fh, entry)
                if self._fsync:
                    os.fsync(self._fh)
                self._records_on_disk += 1
                if self._records_on_disk > 2 * self._capacity:
                    self._compact()

    def _compact(self) -> None:
        assert self._journal is not None and self._fh is not None
        entries = list(self._seen)[-self._capacity :]
        tmp = self._journal.with_name(self._journal.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _MAGIC + self._fingerprint + b"".join(entries))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._journal)
        os.close(self._fh)
        self._fh = os.open(self._journal, os.O_RDWR | os.O_APPEND)
        self._records_on_disk = len(entries)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                os.close(self._fh)
                self._fh = None

    def __repr__(self) -> str:
        where = f" journal={str(self._journal)!r}" if self._journal else ""
        return f"<RequestLedger {len(self._seen)}/{self._capacity}{where}>"
