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

A blob may sit in several packs at once: a gc copies blobs out of a pack
before deleting it, and a writer stores again a blob that a pending gc plan
condemned. The `b` row names one copy (the *primary*); every other copy
gets a `c` row, resolved under the lock when a batch is applied. When packs
vanish, `forget_packs` promotes a surviving copy, so a blob stays findable
as long as any pack holds it. Blobs condemned by a pending gc plan can be
*hidden* from `blobs()` (set `hidden`): they are garbage in transit, which
`check` must not follow; `all_blobs()` and `lookup()` still see them.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import struct
import sys
import time
from array import array
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from rocksdict import AccessType, BlockBasedOptions, Options, Rdict, WriteBatch

from pkvc.blobref import BlobRef
from pkvc.pack import PackEntry

FORMAT_VERSION = b"2"  # 2: copy rows and the write sequence (gc)
FLUSH_EVERY = 20_000
MULTI_GET = 1000  # keys per RocksDB multi-get
PRIMARY_CHUNK = 16_384  # rows `primary_columns` decodes at once

_BLOB = b"b"  # b + ref key -> location
_PACK = b"p"  # p + pack id (32 bytes) -> size, blob count
_META_VERSION = b"m:version"
_META_SEQ = b"m:seq"  # bumped by every write: tells whether a reader has caught up
_TABLE = b"t"  # t + table name + NUL + key -> value: derived data kept by higher layers
_COPY = b"c"  # c + key length (u8) + ref key + pack id (32 bytes) -> location of another copy
_LOCATION = struct.Struct("<32sBBQII")  # pack id, kind, compression, offset, length, raw length
_PACKINFO = struct.Struct("<QI")
PLACE = struct.Struct("<QI")  # offset, length: bytes 34-46 of a location (all_blob_places)


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


class LocationColumns(NamedTuple):
    """Many locations as columns (about 21 bytes a blob, no object per blob):
    blob i is in pack `pack_ids[packs[i]]`, of kind `kinds[i]`, and so on."""

    pack_ids: list[str]
    packs: array  # of "I": a number in pack_ids
    kinds: bytes
    compressions: bytes
    offsets: array  # of "Q"
    lengths: array  # of "I"
    raw_lengths: array  # of "I"

    @classmethod
    def decode(cls, values: list[bytes], numbers: dict[bytes, int]) -> "LocationColumns":
        """From encoded locations: each column is cut from them all at once
        (strided slices), not one row at a time. `numbers` (raw pack id ->
        number) is shared by the parts that `join` makes one."""
        size, n = _LOCATION.size, len(values)
        packed = b"".join(values)
        if len(packed) != size * n:
            for value in values:
                _decode_location(value)  # raises on the bad one
        packs = array("I", [numbers.setdefault(v[:32], len(numbers)) for v in values])

        def column(at: int, width: int, code: str) -> array:
            buf = bytearray(width * n)
            for b in range(width):
                buf[b::width] = packed[at + b::size]
            out = array(code)
            assert out.itemsize == width
            out.frombytes(buf)
            if sys.byteorder == "big":
                out.byteswap()
            return out
        return cls([], packs, packed[32::size], packed[33::size],
                   column(34, 8, "Q"), column(42, 4, "I"), column(46, 4, "I"))

    @classmethod
    def join(cls, parts: list["LocationColumns"], numbers: dict[bytes, int]) -> "LocationColumns":
        """The parts end to end (decoded with this `numbers`)."""
        out = cls([raw.hex() for raw in numbers], array("I"), b"".join(p.kinds for p in parts),
                  b"".join(p.compressions for p in parts), array("Q"), array("I"), array("I"))
        for p in parts:
            out.packs.extend(p.packs)
            out.offsets.extend(p.offsets)
            out.lengths.extend(p.lengths)
            out.raw_lengths.extend(p.raw_lengths)
        return out

    def location(self, i: int) -> Location:
        return Location(self.pack_ids[self.packs[i]], self.kinds[i], self.compressions[i],
                        self.offsets[i], self.lengths[i], self.raw_lengths[i])


def _encode_location(raw_pack_id: bytes, e: PackEntry) -> bytes:
    return _LOCATION.pack(raw_pack_id, e.kind, e.compression, e.offset, e.length, e.raw_length)


def _decode_location(value: bytes) -> Location:
    raw_id, *rest = _LOCATION.unpack(value)
    return Location(raw_id.hex(), *rest)


def _copy_prefix(ref_key: bytes) -> bytes:
    return _COPY + bytes([len(ref_key)]) + ref_key


def _copy_key(ref_key: bytes, raw_pack_id: bytes) -> bytes:
    return _copy_prefix(ref_key) + raw_pack_id


def _prefix_scan(db, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    for key, value in db.items(from_key=prefix):  # (one call per row, not four)
        if not key.startswith(prefix):
            break
        yield key, value


def _open_db(path: Path, readonly: bool, access_type=None) -> Rdict:
    """Open with our options. They are given for the default column family
    too: otherwise rocksdict reopens an existing database with the options
    it saved, which lose the bloom filter."""
    extra = {} if access_type is None else {"access_type": access_type}
    return Rdict(str(path), _options(readonly),
                 column_families={"default": _options(readonly)}, **extra)


def _options(readonly: bool) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(not readonly)
    # A bloom filter per table. Every flush of a writer adds a table that no
    # compaction merges before the next lookups (the writer closes at once),
    # and a lookup that misses (a new blob: nearly every lookup of a first
    # snapshot) searched each of them: 2 GiB bench, ~15 tables, 10-20 us a
    # miss; with the filter ~1.5 us.
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
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
        self.hidden = None  # a set of refs (e.g. sessions.RefSet) that blobs() leaves out
        self._secondary = self.folder / "secondary" / f"{os.getpid()}-{secrets.token_hex(4)}"
        self._secondary.parent.mkdir(exist_ok=True)
        self._seen_seq = 0  # the highest write sequence this process knows was applied
        self.was_reset = self._prepare()  # (opens self._reader)

    def _open_reader(self) -> Rdict:
        return _open_db(self._db_path, True, AccessType.secondary(str(self._secondary)))

    # -- opening -------------------------------------------------------

    def _prepare(self) -> bool:
        """Open the reader, after creating the database or resetting one of
        another version or damaged. Under the lock no primary is open, so a
        secondary opened now sees every write: checking the version through
        it spares a primary open (tens of ms: it writes and syncs files)."""
        with self._lock():
            try:
                reader = self._open_reader()
            except Exception:  # missing, or damaged beyond opening: reset below
                reader = None
            if reader is not None and reader.get(_META_VERSION) == FORMAT_VERSION:
                self._reader = reader
                self._seen_seq = _seq(reader.get(_META_SEQ))
                self._clean_stale_secondaries()
                return False
            if reader is not None:
                reader.close()
            shutil.rmtree(self._db_path, ignore_errors=True)
            db = _open_db(self._db_path, False)
            db[_META_VERSION] = FORMAT_VERSION
            db.close()
            self._reader = self._open_reader()
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
                db = _open_db(self._db_path, False)
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

    def refresh(self, latest: bool = False) -> None:
        """See what was written since we opened: at least every write of this
        process, and with `latest` every write of any process so far.

        A secondary instance does not always catch up with a primary that is
        opened and closed for each write; so every write bumps a sequence
        number, and a reader that stays behind the one we need is reopened.
        """
        if latest:  # a secondary opened under the lock sees every write applied
            with self._lock():
                self._reader.close()
                self._reader = self._open_reader()
                self._seen_seq = max(self._seen_seq, _seq(self._reader.get(_META_SEQ)))
            return
        for attempt in range(20):
            self._reader.try_catch_up_with_primary()
            if _seq(self._reader.get(_META_SEQ)) >= self._seen_seq:
                return
            self._reader.close()
            if attempt:
                time.sleep(0.01 * attempt)
            self._reader = self._open_reader()
        raise OSError(f"index at {self._db_path}: cannot catch up with its writes")

    def _write(self, db, batch: WriteBatch) -> None:
        """Apply a batch in the primary, bumping the write sequence."""
        seq = _seq(db.get(_META_SEQ)) + 1
        batch.put(_META_SEQ, seq.to_bytes(8, "big"))
        db.write(batch)
        self._seen_seq = max(self._seen_seq, seq)

    def packs(self) -> dict[str, int]:
        """Pack id -> size, for every pack whose header the index holds."""
        self._flush_rows()
        return {k[1:].hex(): _PACKINFO.unpack(v)[0] for k, v in self._scan(_PACK)}

    def locations(self, ref: BlobRef) -> list[Location]:
        """Every known copy of the blob, the primary first."""
        primary = self.lookup(ref)
        if primary is None:
            return []
        found = [primary]
        for _, value in self._scan(_copy_prefix(ref.to_key())):
            loc = _decode_location(value)
            if loc.pack_id != primary.pack_id:
                found.append(loc)
        return found

    def blobs(self) -> Iterator[tuple[BlobRef, Location]]:
        """Every indexed blob (primary copy), in ref-key order, leaving out `hidden` ones."""
        self._flush_rows()
        hidden = self.hidden
        for key, value in self._scan(_BLOB):
            if hidden and key[1:] in hidden:
                continue
            yield BlobRef.from_key(key[1:]), _decode_location(value)

    def blobs_of_kind(self, kind: int) -> Iterator[tuple[BlobRef, str]]:
        """(ref, pack id) of every indexed blob (primary copy) of one kind, leaving
        out `hidden` ones: one pass that decodes only the rows it yields."""
        self._flush_rows()
        hidden, kind_byte = self.hidden, bytes([kind])
        for key, value in self._scan(_BLOB):
            if value[32:33] == kind_byte and not (hidden and key[1:] in hidden):
                yield BlobRef.from_key(key[1:]), value[:32].hex()

    def all_blobs(self) -> Iterator[tuple[bytes, Location]]:
        """(ref key, primary location) of every indexed blob, hidden or not, in key order."""
        self._flush_rows()
        for key, value in self._scan(_BLOB):
            yield key[1:], _decode_location(value)

    def primary_columns(self) -> tuple[dict[int, bytes], LocationColumns]:
        """Every indexed blob (hidden or not) by key width, ascending, then in
        key order: the ref keys of each width end to end, and the primary
        locations as columns in that order. Read PRIMARY_CHUNK rows at a time
        and each column cut from them at once: no object per blob outlives
        its chunk (gc reads them all)."""
        self._flush_rows()
        keys: dict[int, bytearray] = {}
        parts: dict[int, list[LocationColumns]] = {}
        numbers: dict[bytes, int] = {}
        rows = self._scan(_BLOB)
        while chunk := list(islice(rows, PRIMARY_CHUNK)):
            widths = set(map(len, (k for k, _ in chunk)))
            for w in widths:
                mine = chunk if len(widths) == 1 else [r for r in chunk if len(r[0]) == w]
                keys.setdefault(w - 1, bytearray()).extend(b"".join([k[1:] for k, _ in mine]))
                parts.setdefault(w - 1, []).append(
                    LocationColumns.decode([v for _, v in mine], numbers))
        order = sorted(keys)
        return ({w: bytes(keys.pop(w)) for w in order},
                LocationColumns.join([p for w in order for p in parts.pop(w)], numbers))

    def all_blob_places(self) -> Iterator[tuple[bytes, bytes, int, bytes]]:
        """(ref key, pack id as 32 raw bytes, kind, offset and length packed as
        PLACE) of every indexed blob's primary copy, hidden or not, in key
        order; no row decoded (`check` passes over every row)."""
        self.flush()
        for key, value in self._scan(_BLOB):
            yield key[1:], value[:32], value[32], value[34:46]

    def all_copies(self) -> Iterator[tuple[bytes, Location]]:
        """(ref key, location) of every copy that is not the primary one."""
        self._flush_rows()
        for key, value in self._scan(_COPY):
            yield key[2:2 + key[1]], _decode_location(value)

    def count_blobs(self) -> int:
        return sum(1 for _ in self._scan(_BLOB))

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return _prefix_scan(self._reader, prefix)

    def _flush_rows(self) -> None:
        """Before a scan of blob, copy or pack rows: apply the pending ones (a
        pending blob row may become a copy row). Pending table rows stay
        buffered: every flush opens the database for writing (tens of ms)."""
        if any(key[:1] != _TABLE for key in self._pending):
            self.flush()

    # -- tables for higher layers ---------------------------------------

    def table_get(self, table: bytes, key: bytes) -> bytes | None:
        full = _TABLE + table + b"\0" + key
        if full in self._pending:
            return self._pending[full]
        return self._reader.get(full)

    def table_get_many(self, table: bytes, keys: list[bytes]) -> list[bytes | None]:
        """`table_get` of each key: one RocksDB multi-get in key order (a
        third of the cost of one get each)."""
        head = _TABLE + table + b"\0"
        full = [head + key for key in keys]
        order = sorted(range(len(full)), key=full.__getitem__)
        found: list[bytes | None] = [None] * len(full)
        for i, value in zip(order, self._reader.get([full[i] for i in order])):
            found[i] = value
        pending = self._pending
        if pending:
            for i, key in enumerate(full):
                if key in pending:
                    found[i] = pending[key]
        return found

    def table_put(self, table: bytes, key: bytes, value: bytes | None) -> None:
        """Set (or with None, delete) a row; buffered like every write."""
        self._pending[_TABLE + table + b"\0" + key] = value
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def table_scan(self, table: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Rows whose key starts with `prefix`, in key order, pending writes
        included (as they were when the scan began; they stay buffered)."""
        head = _TABLE + table + b"\0"
        start = head + prefix
        pending = sorted((k, v) for k, v in self._pending.items() if k.startswith(start))
        n = len(head)
        rows = _overlay(self._scan(start), pending) if pending else self._scan(start)
        for key, value in rows:
            yield key[n:], value

    # -- writing -------------------------------------------------------

    def add_pack(self, pack_id: str, size: int, entries: list[PackEntry]) -> None:
        """Record a pack and its blobs (buffered; see flush)."""
        raw_id, pending = bytes.fromhex(pack_id), self._pending
        for e in entries:
            pending[_BLOB + e.ref.to_key()] = _encode_location(raw_id, e)
        pending[_PACK + raw_id] = _PACKINFO.pack(size, len(entries))
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def forget_packs(self, pack_ids: set[str], keys: Iterable[bytes] | None = None) -> int:
        """Drop packs that are gone: a blob in one of them falls back to another
        copy if it has one, else its entry goes. `keys` (the ref keys the packs
        held, from their headers) spares a scan of the whole index. Returns the
        entries dropped or moved.

        Every row is re-read and changed under the lock, and the pack rows go
        in the last batch (one, unless there are over FLUSH_EVERY keys): whoever
        sees a pack gone from `packs()` finds no entry left in it (the claims
        index relies on that when it drops a pack's claims).
        """
        if not pack_ids:
            return 0
        self.flush()
        raw_ids = {bytes.fromhex(p) for p in pack_ids}
        if keys is None:
            self.refresh()
            candidates = [key[1:] for key, value in self._scan(_BLOB) if value[:32] in raw_ids]
            candidates += [key[2:2 + key[1]] for key, value in self._scan(_COPY)
                           if value[:32] in raw_ids]
        else:
            candidates = list(keys)
        moved = 0
        starts = range(0, max(len(candidates), 1), FLUSH_EVERY)
        for start in starts:
            with self._writer() as db:
                if db is None:
                    raise OSError(f"index at {self._db_path} cannot be opened for writing")
                batch = WriteBatch(raw_mode=True)
                for ref_key in candidates[start:start + FLUSH_EVERY]:
                    moved += _drop_copies(db, batch, ref_key, raw_ids)
                if start == starts[-1]:
                    for raw in raw_ids:
                        batch.delete(_PACK + raw)
                self._write(db, batch)
        self.refresh()
        return moved

    def flush(self) -> None:
        """Apply buffered changes in one short write, then catch up.

        A blob row for a blob already indexed in another (still known) pack
        becomes a copy row: the first copy stays the primary one.
        """
        if not self._pending:
            return
        with self._writer() as db:
            if db is None:
                raise OSError(f"index at {self._db_path} cannot be opened for writing")
            batch = WriteBatch(raw_mode=True)
            written: dict[bytes, bytes | None] = {}

            def current(key: bytes) -> bytes | None:
                return written[key] if key in written else db.get(key)

            # The blob rows already stored, by multi-gets: no other row of
            # this batch can change them (copies go to `c` rows), and a first
            # snapshot flushes ~100,000 of them, nearly all new. In pieces:
            # one multi-get of 20,000 keys raised a snapshot's peak RSS by
            # ~10 MiB.
            blob_keys = sorted(k for k, v in self._pending.items()
                               if v is not None and k[:1] == _BLOB)
            stored = {}
            for start in range(0, len(blob_keys), MULTI_GET):
                keys = blob_keys[start:start + MULTI_GET]
                stored.update((k, v) for k, v in zip(keys, db.get(keys)) if v is not None)
            for key, value in self._pending.items():
                if value is not None and key[:1] == _BLOB:
                    existing = stored.get(key)
                    if (existing and existing[:32] != value[:32]
                            and current(_PACK + existing[:32]) is not None):
                        key = _copy_key(key[1:], value[:32])
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
                written[key] = value
            self._write(db, batch)
        self._pending.clear()
        self.refresh()


def _overlay(stored: Iterator[tuple[bytes, bytes]],
             pending: list[tuple[bytes, bytes | None]]) -> Iterator[tuple[bytes, bytes]]:
    """Merge sorted stored rows with sorted pending changes (None: deleted)."""
    at = 0
    for key, value in stored:
        while at < len(pending) and pending[at][0] < key:
            if pending[at][1] is not None:
                yield pending[at]
            at += 1
        if at < len(pending) and pending[at][0] == key:
            value = pending[at][1]
            at += 1
        if value is not None:
            yield key, value
    for key, value in pending[at:]:
        if value is not None:
            yield key, value


def _seq(value: bytes | None) -> int:
    return int.from_bytes(value, "big") if value else 0


def _drop_copies(db, batch: WriteBatch, ref_key: bytes, gone: set[bytes]) -> int:
    """Under the lock: remove the blob's rows into `gone` packs, promoting a
    surviving copy to primary if the primary went. Returns 1 if anything changed."""
    changed = 0
    survivor = None
    for key, value in _prefix_scan(db, _copy_prefix(ref_key)):
        if value[:32] in gone:
            batch.delete(key)
            changed = 1
        elif survivor is None and db.get(_PACK + value[:32]) is not None:
            survivor = (key, value)
    primary = db.get(_BLOB + ref_key)
    if primary is not None and primary[:32] in gone:
        changed = 1
        if survivor is None:
            batch.delete(_BLOB + ref_key)
        else:
            batch.put(_BLOB + ref_key, survivor[1])
            batch.delete(survivor[0])
    return changed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
