"""The index: a local rocksdict cache of where every blob lives.

It maps blobref -> (pack, offset, length, ...) and records which packs it
has read. It is only a cache: the packs describe themselves, so a missing,
damaged, stale or outdated index is rebuilt from their headers and nothing
is lost. It lives in the user's cache directory, one folder per repository.

Several processes (a snapshot, a gc, a serve) may use one index at once,
and RocksDB admits one writer per database. So every process reads through
a *secondary* instance, which never locks, and writes by buffering changes
and applying them in a short-lived primary instance under a file lock: a
writer holds the database for milliseconds, never for a whole operation,
and no user ever sees "database is locked".
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

from rocksdict import AccessType, Options, Rdict, WriteBatch

from pkvc.blobref import BlobRef
from pkvc.pack import PackEntry

FORMAT_VERSION = b"1"
FLUSH_EVERY = 20_000

_BLOB = b"b"  # b + ref key -> location
_PACK = b"p"  # p + pack id (32 bytes) -> size, blob count
_META_VERSION = b"m:version"
_TABLE = b"t"  # t + table name + NUL + key -> value: derived data kept by higher layers
_LOCATION = struct.Struct("<32sBBQII")  # pack id, kind, compression, offset, length, raw length
_PACKINFO = struct.Struct("<QI")


class Location(NamedTuple):
    """Where a blob is: its pack and its entry in that pack's header."""

    pack_id: str
    kind: int
    compression: int
    offset: int
    length: int
    raw_length: int

    def entry(self, ref: BlobRef) -> PackEntry:
        return PackEntry(ref, self.kind, self.compression, self.offset, self.length, self.raw_length)


def _encode_location(pack_id: str, e: PackEntry) -> bytes:
    return _LOCATION.pack(bytes.fromhex(pack_id), e.kind, e.compression, e.offset, e.length, e.raw_length)


def _decode_location(value: bytes) -> Location:
    raw_id, *rest = _LOCATION.unpack(value)
    return Location(raw_id.hex(), *rest)


def _options(readonly: bool) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(not readonly)
    if readonly:
        opts.set_max_open_files(-1)  # keep files open even if a writer compacts them away
    return opts


class Index:
    """Lookups from a secondary instance; writes buffered and applied briefly."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._db_path = self.folder / "db"
        self._pending: dict[bytes, bytes | None] = {}
        self.was_reset = self._prepare()
        self._secondary = self.folder / "secondary" / f"{os.getpid()}-{secrets.token_hex(4)}"
        self._secondary.parent.mkdir(exist_ok=True)
        self._reader = Rdict(str(self._db_path), _options(True),
                             access_type=AccessType.secondary(str(self._secondary)))

    # -- opening -------------------------------------------------------

    def _prepare(self) -> bool:
        """Create, or reset an index of another version or a damaged one."""
        with self._writer() as db:
            if db is not None and db.get(_META_VERSION) == FORMAT_VERSION:
                self._clean_stale_secondaries()
                return False
        with self._lock():
            shutil.rmtree(self._db_path, ignore_errors=True)
            db = Rdict(str(self._db_path), _options(False))
            db[_META_VERSION] = FORMAT_VERSION
            db.close()
        return True

    def _clean_stale_secondaries(self) -> None:
        for entry in (self.folder / "secondary").glob("*-*"):
            pid = int(entry.name.split("-")[0]) if entry.name.split("-")[0].isdigit() else 0
            if pid and not _process_alive(pid):
                shutil.rmtree(entry, ignore_errors=True)

    @contextmanager
    def _lock(self):
        with open(self.folder / "lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def _writer(self):
        """The primary instance, held only for the duration of the block."""
        with self._lock():
            try:
                db = Rdict(str(self._db_path), _options(False))
            except Exception:  # damaged beyond opening: the caller resets it
                yield None
                return
            try:
                yield db
            finally:
                db.flush()
                db.close()

    def close(self) -> None:
        self.flush()
        self._reader.close()
        shutil.rmtree(self._secondary, ignore_errors=True)

    # -- reading -------------------------------------------------------

    def lookup(self, ref: BlobRef) -> Location | None:
        key = _BLOB + ref.to_key()
        value = self._pending.get(key, b"") if key in self._pending else self._reader.get(key)
        return _decode_location(value) if value else None

    def refresh(self) -> None:
        """See what other processes have written since we opened."""
        self._reader.try_catch_up_with_primary()

    def packs(self) -> dict[str, int]:
        """Pack id -> size, for every pack whose header the index holds."""
        self.flush()
        return {k[1:].hex(): _PACKINFO.unpack(v)[0] for k, v in self._scan(_PACK)}

    def blobs(self) -> Iterator[tuple[BlobRef, Location]]:
        """Every indexed blob, in ref-key order."""
        self.flush()
        for key, value in self._scan(_BLOB):
            yield BlobRef.from_key(key[1:]), _decode_location(value)

    def count_blobs(self) -> int:
        return sum(1 for _ in self._scan(_BLOB))

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        it = self._reader.iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key, it.value()
            it.next()

    # -- tables for higher layers ---------------------------------------

    def table_get(self, table: bytes, key: bytes) -> bytes | None:
        full = _TABLE + table + b"\0" + key
        if full in self._pending:
            return self._pending[full]
        return self._reader.get(full)

    def table_put(self, table: bytes, key: bytes, value: bytes | None) -> None:
        """Set (or with None, delete) a row; buffered like every write."""
        self._pending[_TABLE + table + b"\0" + key] = value
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def table_scan(self, table: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Rows whose key starts with `prefix`, in key order (pending writes flushed first)."""
        self.flush()
        head = _TABLE + table + b"\0"
        for key, value in self._scan(head + prefix):
            yield key[len(head):], value

    # -- writing -------------------------------------------------------

    def add_pack(self, pack_id: str, size: int, entries: list[PackEntry]) -> None:
        """Record a pack and its blobs (buffered; see flush)."""
        for e in entries:
            self._pending[_BLOB + e.ref.to_key()] = _encode_location(pack_id, e)
        self._pending[_PACK + bytes.fromhex(pack_id)] = _PACKINFO.pack(size, len(entries))
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def forget_packs(self, pack_ids: set[str]) -> int:
        """Drop packs that are gone and every blob entry pointing into them."""
        if not pack_ids:
            return 0
        raw_ids = {bytes.fromhex(p) for p in pack_ids}
        dropped = 0
        for key, value in list(self._scan(_BLOB)):
            if value[:32] in raw_ids:
                self._pending[key] = None
                dropped += 1
        for raw in raw_ids:
            self._pending[_PACK + raw] = None
        self.flush()
        return dropped

    def flush(self) -> None:
        """Apply buffered changes in one short write, then catch up."""
        if not self._pending:
            return
        batch = WriteBatch(raw_mode=True)
        for key, value in self._pending.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        with self._writer() as db:
            if db is None:
                raise OSError(f"index at {self._db_path} cannot be opened for writing")
            db.write(batch)
        self._pending.clear()
        self.refresh()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
