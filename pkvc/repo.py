"""The repository: blobs by ref, stored in encrypted packs on a backend.

It is the only user of the pack format, the index and the backend, and the
one place that checks that bytes match their blobref (on put and on get).
Above it, code speaks only of blobs: `put / get / has / enumerate / remove`,
and `get_many` to read many blobs by pack rather than one at a time.

Writers and a gc share the repository through leases and plans
(`pkvc.sessions`, docs/gc.md): a repository opened with `lease=True` (the
default) takes a lease before its first `has` or `put`, renews it while it
works and ends it on `close` (or `end_lease`). While it holds a lease,
`has` answers for deduplication: a blob that a pending gc plan condemns
counts as absent unless a copy of it lives outside the plan's packs, so the
writer stores it again instead of relying on a copy about to go. Opened
with `lease=False` (check, restore, gc itself) the repository cannot `put`
and `has` says what is stored. `enumerate` leaves out blobs a pending plan
condemns (garbage in transit); `all_locations` lists every copy.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from pkvc import crypto, keyslots
from pkvc.backends import Backend
from pkvc.blobref import BlobRef
from pkvc.chunker import ChunkerParams
from pkvc.errors import (BackendError, BlobNotFoundError, IntegrityError, NoRepositoryError,
                         PkvcError, RepositoryExistsError, UsageError)
from pkvc.index import Index, Location, LocationColumns
from pkvc.pack import (KIND_DATA, KIND_SCHEMA, KIND_SIGNED, TARGET_PACK_SIZE, FinishedPack,
                       PackEntry, PackWriter, open_blob, pack_data_size,
                       pack_id_from_name, pack_name, read_header)
from pkvc.packer import Packer
from pkvc.packscan import PackScanner, read_pack_header, scan_blobs
from pkvc.progress import NO_PROGRESS, Progress
from pkvc.sessions import (DEFAULT_TTL, KIND_WRITE, PLAN_PURPOSE, SESSION_PURPOSE, Lease,
                           LeaseExpiredError, PlanStore, PlanView, SessionStore)

FORMAT_VERSION = 1
MAX_BLOB_SIZE = 16 * 1024 * 1024
PACKS = "packs/"
_SIGNATURE_MARK = b',"camliSig":"'
LEASE_REFRESH = 60.0  # seconds between lease renewals while a writer works
# Batched reads (`get_many`): one backend read covers neighbouring blobs of a
# pack, up to READ_SPAN bytes (sealed, and plaintext); READ_AHEAD such reads
# are decoded ahead of the consumer by READ_THREADS threads, so a batch holds
# at most about READ_AHEAD x 2 x READ_SPAN bytes (24 MiB), whatever its size.
READ_SPAN = 4 * 1024 * 1024
READ_GAP = 256 * 1024  # blobs closer than this share one read
READ_AHEAD = 3
READ_THREADS = 2


@dataclass(frozen=True)
class Config:
    """The plaintext `config` object: parameters, never secrets."""

    id: str
    version: int = FORMAT_VERSION
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    pack_size: int = TARGET_PACK_SIZE

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": "pkvc",
            "version": self.version,
            "id": self.id,
            "blobref_hash": "sha224",
            "chunker": {"algorithm": "fastcdc", "min_size": self.chunker.min_size,
                        "avg_size": self.chunker.avg_size, "max_size": self.chunker.max_size},
            "pack": {"target_size": self.pack_size, "compression": "zstd",
                     "aead": "xchacha20poly1305", "subkeys": "blake2b"},
            "kdf": "argon2id",
        }, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, location: str) -> "Config":
        try:
            raw = json.loads(data)
            if raw.get("format") != "pkvc":
                raise ValueError
            c = raw["chunker"]
            config = cls(raw["id"], raw["version"],
                         ChunkerParams(c["min_size"], c["avg_size"], c["max_size"]),
                         raw["pack"]["target_size"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise NoRepositoryError(f"{location} has a config that is not pkvc's") from None
        if config.version != FORMAT_VERSION:
            raise PkvcError(f"repository format {config.version} is not supported by this pkvc "
                            f"(it reads format {FORMAT_VERSION})")
        return config


REFS_TABLE = "refs"  # schema-blob ref key -> the ref keys it holds (`record_refs`)
REFS_TABLE_NAME = REFS_TABLE.encode()


def split_refs(row: bytes) -> list[bytes]:
    """The ref keys of a refs-cache row (each: one length byte, then the key)."""
    if row and len(row) % (row[0] + 1) == 0:  # all of one width (the usual): sliced in C
        step = row[0] + 1
        if row[::step] == row[:1] * (len(row) // step):
            return [row[i + 1:i + step] for i in range(0, len(row), step)]
    found, at = [], 0
    while at < len(row):
        end = at + 1 + row[at]
        found.append(row[at + 1:end])
        at = end
    return found


def sniff_kind(data) -> int:
    """Schema blobs are JSON objects with camliVersion; signed ones carry camliSig."""
    head = bytes(data[:128])
    if not head.lstrip().startswith(b"{") or b'"camliVersion"' not in head:
        return KIND_DATA
    return KIND_SIGNED if _SIGNATURE_MARK in data else KIND_SCHEMA


@dataclass
class WriteStats:
    """What this open repository added: for summaries like `snapshot --json`."""

    blobs: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    packs: int = 0


@dataclass
class SyncReport:
    packs_added: int = 0
    packs_dropped: int = 0
    blobs_added: int = 0
    damaged: dict[str, str] = field(default_factory=dict)  # pack id -> why unreadable


class Repository:
    """An open repository. Use `create` or `open`; close (or use `with`) to flush."""

    def __init__(self, backend: Backend, config: Config, master: bytes, slot_id: str,
                 cache_dir: Path, progress: Progress = NO_PROGRESS, *, lease: bool = True,
                 lease_ttl: float = DEFAULT_TTL, clock: Callable[[], int] = time.time_ns):
        self.backend = backend
        self.config = config
        self.slot_id = slot_id
        self._master = master
        self._data_key = crypto.derive_subkey(master, "pkvc-data")
        # Blobs added but not yet stored and indexed: queued in the packer,
        # being sealed, in a pack filling or being written (pkvc.packer).
        self._unflushed: set[BlobRef] = set()
        self._packer = Packer(self._data_key, config.pack_size,
                              lambda: self.backend.upload("packs"), self._pack_stored)
        self._packs_written: list[str] = []
        self._index_unsaved = False
        self.stats = WriteStats()
        self.sessions = SessionStore(backend, self.subkey(SESSION_PURPOSE), config.id, clock)
        self.plans = PlanStore(backend, self.subkey(PLAN_PURPOSE), config.id)
        self._lease_enabled = lease
        self._lease_ttl = lease_ttl
        self._lease: Lease | None = None
        self._lease_renewed = 0.0  # time.monotonic() when the lease was last stored
        self._lease_lapsed = False
        self._view = PlanView()
        # get_many's iterator may be consumed on another thread (restore's
        # writer), whose fallback reads consult the index: reads lock it.
        self._read_lock = threading.RLock()
        self._index_dir = Path(cache_dir) / config.id / "index"
        self.index = self._open_index()
        self.refresh_plans(strict=False)  # writers read them again, strictly, with their lease
        self.sync_index(progress)

    # -- lifecycle -----------------------------------------------------

    @classmethod
    def create(cls, backend: Backend, password: bytes, cache_dir: Path,
               chunker: ChunkerParams = ChunkerParams(), pack_size: int = TARGET_PACK_SIZE,
               ) -> "Repository":
        if backend.is_initialized():
            raise RepositoryExistsError(f"a repository already exists at {backend.location}")
        backend.create(folders=("keys", "packs"))
        config = Config(uuid.uuid4().hex, chunker=chunker, pack_size=pack_size)
        master = crypto.random_key()
        slot_id = keyslots.add_slot(backend, master, password, config.id)
        backend.store("config", config.to_bytes())
        return cls(backend, config, master, slot_id, cache_dir)

    @classmethod
    def open(cls, backend: Backend, password: bytes, cache_dir: Path,
             progress: Progress = NO_PROGRESS, *, lease: bool = True,
             lease_ttl: float = DEFAULT_TTL) -> "Repository":
        """Open for reading and writing; `lease=False` opens for reading only
        (no lease is taken, `put` is refused, `has` says what is stored)."""
        config = read_config(backend)
        master, slot_id = keyslots.unlock(backend, password, config.id)
        return cls(backend, config, master, slot_id, cache_dir, progress, lease=lease,
                   lease_ttl=lease_ttl)

    def close(self) -> None:
        try:
            if self._lease_lapsed:
                self._drop_unflushed()  # it may name blobs a gc has removed since
            else:
                self.flush()
        finally:
            try:
                self.end_lease()
            finally:
                self._packer.abort()  # nothing, unless flushing failed
                self._packer.close()
                self.index.close()
                self.backend.close()

    def __enter__(self) -> "Repository":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def master_key(self) -> bytes:
        """For wrapping in a new key slot only; everything else uses subkeys."""
        return self._master

    def subkey(self, purpose: str) -> bytes:
        """A key derived from the master key for one purpose other than packs."""
        return crypto.derive_subkey(self._master, purpose)

    # -- leases: writing beside a gc ------------------------------------

    @property
    def lease(self) -> Lease | None:
        """The write lease this repository holds now, if any."""
        return self._lease

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease of this process stays valid without renewal."""
        return self._lease_ttl

    def _keep_lease(self) -> None:
        """Take the lease (then read the pending plans), renew it when due, or
        refuse to go on when it lapsed: see the module docstring."""
        if self._lease_lapsed:
            raise LeaseExpiredError("this write session lost its lease earlier; start it again")
        now = time.monotonic()
        if self._lease is None:
            self._lease = self.sessions.begin(KIND_WRITE, self._lease_ttl)
            self._lease_renewed = now
            # In this order: a gc that lists leases before ours was stored has
            # published its plan already, so we read it now; and a plan that is
            # gone by now had deleted its packs already, so the listing below
            # drops them from the index: we never count on a blob it removed.
            self.refresh_plans()
            self.sync_index()
            return
        idle = now - self._lease_renewed
        if idle > self._lease_ttl / 2:
            self._lease_lapsed = True
            raise LeaseExpiredError(
                f"this write session was idle {idle:.0f} s, longer than its lease allows "
                f"({self._lease_ttl / 2:.0f} s); a gc may have removed blobs it had seen, "
                "so nothing more is written: run the command again")
        if idle > min(LEASE_REFRESH, self._lease_ttl / 10):
            self._lease_renewed = now
            self._lease = self.sessions.refresh(self._lease)

    def end_lease(self) -> None:
        """Write what is pending and give the lease back (the next `has` or
        `put` takes a new one). Long-lived processes call this between jobs
        so that a gc never waits on them."""
        if self._lease is None:
            return
        if not self._lease_lapsed:
            self.flush()
        lease, self._lease = self._lease, None
        self.sessions.end(lease)

    @contextmanager
    def without_lease(self):
        """Inside the block: no lease, `has` says what is stored, `put` is refused."""
        self.end_lease()
        enabled, self._lease_enabled = self._lease_enabled, False
        try:
            yield self
        finally:
            self._lease_enabled = enabled

    def refresh_plans(self, strict: bool = True) -> PlanView:
        """Read the pending gc plans (which blobs are condemned, which packs go).
        Not `strict`: a plan that cannot be read is left out (`check` reports it)."""
        self._view = PlanView.of(self.plans.load_all(strict))
        self.index.hidden = self._view.condemned or None
        return self._view

    @property
    def pending_plans(self) -> PlanView:
        return self._view

    def _drop_unflushed(self) -> None:
        self._packer.abort()
        self._unflushed.clear()

    # -- the blob API --------------------------------------------------

    def put(self, data, ref: BlobRef | None = None, kind: int | None = None,
            refs: list[BlobRef] | None = None, *, hashed: bool = False) -> BlobRef:
        """Store `data` unless present; returns its ref. A given `ref` must match
        (`hashed`: the caller has just computed it from these very bytes).

        `refs`: for a schema blob whose writer knows them, exactly the refs it
        holds (as `walk_refs` gives them), kept in the refs cache for gc."""
        if not self._lease_enabled:
            raise UsageError("this repository was opened read-only (lease=False): "
                             "it cannot store blobs")
        if len(data) > MAX_BLOB_SIZE:
            raise UsageError(f"blob of {len(data)} bytes exceeds the {MAX_BLOB_SIZE}-byte limit")
        if ref is None:
            ref = BlobRef.of(data)
        elif not hashed and not ref.matches(data):
            raise IntegrityError(f"data does not match {ref}; not stored")
        if self.has(ref):
            return ref
        self._add(ref, data, sniff_kind(data) if kind is None else kind)
        if refs is not None:
            self.record_refs(ref.to_key(), [r.to_key() for r in refs])
        self.stats.blobs += 1
        self.stats.raw_bytes += len(data)
        return ref

    def put_data(self, data, ref: BlobRef | None = None) -> BlobRef:
        """Store file content as data even if it looks like a schema blob.
        `ref`: `BlobRef.of(data)`, when the caller has just computed it from
        these very bytes (the chunker does): not computed again."""
        return self.put(data, ref, KIND_DATA, hashed=ref is not None)

    def has(self, ref: BlobRef) -> bool:
        """Whether the blob is stored; for a writer, whether it may rely on it."""
        if ref in self._unflushed:
            return True
        if self._lease_enabled:
            self._keep_lease()
        loc = self.index.lookup(ref)
        if loc is None:
            return False
        return not self._lease_enabled or loc.kind == KIND_SIGNED or self._outlives_plans(ref)

    def _outlives_plans(self, ref: BlobRef) -> bool:
        """Whether no pending gc plan takes the (stored) blob away."""
        view = self._view
        if not view or ref not in view.condemned:
            return True
        return any(loc.pack_id not in view.touched for loc in self.index.locations(ref))

    def rely_on(self, ref: BlobRef) -> None:
        """A blob about to be written names `ref` without storing it (a claim
        its permanode, a delete claim its target). If a pending gc plan
        condemns it: a signed blob was deleted and is being collected, so
        naming it now fails (storing it again would bring it back without the
        delete claim the gc removes with it); any other blob is stored again.
        A ref to nothing stored is left to the caller (an attribute value may
        name any blob)."""
        if ref in self._unflushed or not self._lease_enabled:
            return
        self._keep_lease()
        loc = self.index.lookup(ref)
        if loc is None or self._outlives_plans(ref):
            return
        if loc.kind == KIND_SIGNED:
            raise BlobNotFoundError(f"{ref} was deleted and a gc is collecting it: "
                                    "it cannot be named any more")
        self._add(ref, self.get(ref), loc.kind)

    def contains(self, ref: BlobRef) -> bool:
        """Whether some pack holds the blob, whatever any gc plan says of it."""
        return ref in self._unflushed or self.index.lookup(ref) is not None

    def get(self, ref: BlobRef) -> bytes:
        """The blob's bytes, verified against `ref`; IntegrityError if they differ."""
        if ref in self._unflushed:
            self.flush()
        with self._read_lock:
            loc = self.index.lookup(ref)
            if loc is None:
                self.sync_index()  # another process may have written it since we opened
                loc = self.index.lookup(ref)
        if loc is None:
            raise BlobNotFoundError(f"blob {ref} is not in the repository")
        try:
            data = self._load(ref, loc)
        except BackendError as first:
            loc, data = self._load_elsewhere(ref, loc, first)
        return _verified(ref, loc, data)

    def get_many(self, refs: Iterable[BlobRef], *, skip_missing: bool = False,
                 eager: bool = False) -> Iterator[tuple[BlobRef, bytes]]:
        """(ref, bytes) of each blob once, verified like `get`, in pack order
        (not the order given): neighbouring blobs come from one read, and reads
        are decoded in a few threads, a bounded number ahead of the consumer.
        The blobs are looked up here; the iterator may then be consumed on
        another thread.

        A blob that is not stored raises BlobNotFoundError before anything is
        read (with `skip_missing` it is left out); a damaged one raises
        IntegrityError naming it when its turn comes.

        With `eager` the first reads start now, not at the first `next`: for
        a caller that queues the iterator behind other work (restore hands
        batches to its writer thread), so that reading overlaps that work.
        Its `close` cancels the reads not yet begun.
        """
        wanted = dict.fromkeys(refs)
        if any(ref in self._unflushed for ref in wanted):
            self.flush()
        return self.read_located(self._locate_all(wanted, skip_missing), skip_missing=skip_missing,
                                 eager=eager)

    def read_located(self, located: list[tuple[BlobRef, Location]], *, skip_missing: bool = False,
                     eager: bool = False) -> Iterator[tuple[BlobRef, bytes]]:
        """`get_many` for blobs whose locations the caller already has (from
        `all_locations`): no index lookup. A location whose pack is gone since
        falls back to the index, as `get` does."""
        spans = _spans(located)
        if not eager:
            return self._read_spans(spans, skip_missing)
        pending: deque = deque()
        queued = iter(spans)
        self._read_ahead(queued, pending)
        return _Reads(self._read_spans(spans, skip_missing, queued, pending), pending)

    def _read_ahead(self, queued: Iterator["_Span"], pending: deque) -> None:
        """Start reads until READ_AHEAD are under way."""
        pool = _reader_pool()
        while len(pending) < READ_AHEAD:
            span = next(queued, None)
            if span is None:
                return
            pending.append((span, pool.submit(self._read_span, span)))

    def _locate_all(self, refs: Iterable[BlobRef],
                    skip_missing: bool) -> list[tuple[BlobRef, Location]]:
        with self._read_lock:
            return self._locate_all_locked(refs, skip_missing)

    def _locate_all_locked(self, refs: Iterable[BlobRef],
                           skip_missing: bool) -> list[tuple[BlobRef, Location]]:
        found, missing = [], []
        for ref in refs:
            loc = self.index.lookup(ref)
            if loc is None:
                missing.append(ref)
            else:
                found.append((ref, loc))
        if missing:
            self.sync_index()  # another process may have written them since we opened
            for ref in missing:
                loc = self.index.lookup(ref)
                if loc is not None:
                    found.append((ref, loc))
                elif not skip_missing:
                    raise BlobNotFoundError(f"blob {ref} is not in the repository")
        return found

    def _read_spans(self, spans: list["_Span"], skip_missing: bool,
                    queued: Iterator["_Span"] | None = None,
                    pending: deque | None = None) -> Iterator[tuple[BlobRef, bytes]]:
        """The blobs of `spans`, READ_AHEAD reads decoded ahead in the reader
        threads; `queued` and `pending`: reads not started and started (eager)."""
        if pending is None and len(spans) <= 1:  # one read: threads would only add their overhead
            for span in spans:
                try:
                    found = self._read_span(span)
                except BackendError:
                    found = self._read_elsewhere(span, skip_missing)
                yield from found
            return
        queued = iter(spans) if queued is None else queued
        pending = deque() if pending is None else pending
        try:
            while True:
                self._read_ahead(queued, pending)
                if not pending:
                    return
                yield from self._span_result(*pending.popleft(), skip_missing)
        finally:
            for _, future in pending:
                future.cancel()

    def _span_result(self, span: "_Span", future,
                     skip_missing: bool) -> list[tuple[BlobRef, bytes]]:
        try:
            return future.result()
        except BackendError:
            return self._read_elsewhere(span, skip_missing)

    def _read_elsewhere(self, span: "_Span", skip_missing: bool) -> list[tuple[BlobRef, bytes]]:
        """The pack went away under us: read each blob where it is now, one by one."""
        out = []
        for ref, loc in span.blobs:
            try:
                out.append((ref, self._fetch_elsewhere(ref, loc)))
            except BlobNotFoundError:
                if not skip_missing:
                    raise
        return out

    def _read_span(self, span: "_Span") -> list[tuple[BlobRef, bytes]]:
        """One backend read, then each blob opened and verified (in a worker thread:
        it touches neither the index nor any state of this object)."""
        data = memoryview(self.backend.load(pack_name(span.pack_id), span.start,
                                            span.end - span.start))
        out = []
        for ref, loc in span.blobs:
            at = loc.offset - span.start
            sealed = data[at:at + loc.length]
            if len(sealed) != loc.length:
                raise IntegrityError(f"pack {loc.pack_id} is truncated (blob {ref})")
            out.append((ref, _verified(ref, loc, open_blob(self._data_key, loc.entry(ref),
                                                           sealed))))
        return out

    def _fetch_elsewhere(self, ref: BlobRef, loc: Location) -> bytes:
        try:
            data = self._load(ref, loc)
        except BackendError as first:
            loc, data = self._load_elsewhere(ref, loc, first)
        return _verified(ref, loc, data)

    def _load_elsewhere(self, ref: BlobRef, failed: Location,
                        error: BackendError) -> tuple[Location, bytes]:
        """The pack went away under us (a gc deletes a pack only after copying
        what stays in it): catch up with the index and read another copy."""
        with self._read_lock:
            return self._load_elsewhere_locked(ref, failed, error)

    def _load_elsewhere_locked(self, ref: BlobRef, failed: Location,
                               error: BackendError) -> tuple[Location, bytes]:
        self.sync_index()
        tried = {failed.pack_id}
        for _ in range(2):
            for loc in self.index.locations(ref):
                if loc.pack_id in tried:
                    continue
                tried.add(loc.pack_id)
                try:
                    return loc, self._load(ref, loc)
                except BackendError as e:
                    error = e
            time.sleep(0.05)  # a gc between deleting a pack and updating the index
            self.index.refresh(latest=True)
        if self.index.lookup(ref) is None:
            raise BlobNotFoundError(f"blob {ref} is not in the repository") from None
        raise error

    def _load(self, ref: BlobRef, loc: Location) -> bytes:
        sealed = self.backend.load(pack_name(loc.pack_id), loc.offset, loc.length)
        if len(sealed) != loc.length:
            raise IntegrityError(f"pack {loc.pack_id} is truncated (blob {ref})")
        return open_blob(self._data_key, loc.entry(ref), sealed)

    def locate(self, ref: BlobRef) -> Location | None:
        return self.index.lookup(ref)

    def enumerate(self) -> Iterator[tuple[BlobRef, Location]]:
        """Every stored blob with its location (kind, sizes), in ref-key order,
        except those a pending gc plan condemns."""
        self.flush()
        return self.index.blobs()

    def primary_columns(self) -> tuple[dict[int, bytes], LocationColumns]:
        """Every blob's ref key, hidden or not, and its primary location, as
        buffers and columns (`Index.primary_columns`): gc reads all of them."""
        self.flush()
        return self.index.primary_columns()

    def all_locations(self, copies: bool = True) -> Iterator[tuple[bytes, Location, bool]]:
        """(ref key, location, is primary) of every blob's primary copy in key
        order, then (with `copies`) of every other copy. No BlobRef is made:
        gc walks millions of these."""
        self.flush()
        for key, loc in self.index.all_blobs():
            yield key, loc, True
        if copies:
            for key, loc in self.all_copies():
                yield key, loc, False

    def all_copies(self) -> Iterator[tuple[bytes, Location]]:
        """(ref key, location) of every copy that is not the primary one."""
        self.flush()
        return self.index.all_copies()

    def locations(self, ref: BlobRef) -> list[Location]:
        """Every copy of the blob, the primary first."""
        return self.index.locations(ref)

    def _add(self, ref: BlobRef, data, kind: int) -> None:
        """Hand a blob to the packer; `has` counts it from now on."""
        self._unflushed.add(ref)
        try:
            self._packer.add(ref, data, kind)
        except BaseException:
            self._unflushed.clear()  # the packer dropped all it had not stored
            raise

    def flush(self) -> str | None:
        """Store every pending blob in packs, then index them; returns the id
        of the last pack written (None if nothing was pending).

        A crash between storing and indexing loses only cache entries: the
        next open finds the unindexed packs and reads their headers.
        """
        if not self._packer.pending:
            if self._index_unsaved:  # packs stored while putting
                self.index.flush()
                self._index_unsaved = False
            return None
        if self._lease is not None or self._lease_lapsed:
            self._keep_lease()  # a lapsed writer stores nothing
        first = len(self._packs_written)
        try:
            self._packer.flush()
        except BaseException:
            self._unflushed.clear()
            raise
        self.index.flush()
        self._index_unsaved = False
        return self._packs_written[-1] if len(self._packs_written) > first else None

    def _pack_stored(self, pack: FinishedPack) -> None:
        """Back on the caller's thread: index the stored pack (the index is
        written to disk at `flush`, or when its buffer is full)."""
        self.index.add_pack(pack.pack_id, pack.size, pack.entries)
        for e in pack.entries:
            self._unflushed.discard(e.ref)
        self._packs_written.append(pack.pack_id)
        self._index_unsaved = True
        self.stats.packs += 1
        self.stats.stored_bytes += pack_data_size(pack.entries)

    # -- packs, for the garbage collector --------------------------------

    def store_pack(self, pack: FinishedPack) -> None:
        """Store a finished pack, then index it (an interruption between the
        two only costs the next open a header read)."""
        self.backend.store(pack_name(pack.pack_id), pack.data)
        self.index.add_pack(pack.pack_id, pack.size, pack.entries)
        self.index.flush()

    def seal_pack(self, blobs: Iterable[tuple[BlobRef, bytes, int]]) -> FinishedPack:
        """A pack of (ref, bytes, kind) built in memory, not stored: its id is
        known before it exists (a gc names it in its plan first)."""
        writer = PackWriter(self._data_key)
        for ref, data, kind in blobs:
            if not ref.matches(data):
                raise IntegrityError(f"data does not match {ref}; not packed")
            writer.add(ref, data, kind)
        return writer.finish()

    def repacker(self) -> "Repacker":
        return Repacker(self)

    def delete_pack(self, pack_id: str) -> None:
        """Delete a pack object; the index learns of it through `forget_packs`."""
        self.backend.delete(pack_name(pack_id))

    def forget_packs(self, pack_ids: set[str], keys: Iterable[bytes] | None = None) -> int:
        """Tell the index these packs are gone (`keys`: the ref keys they held)."""
        return self.index.forget_packs(set(pack_ids), keys)

    # -- the index as a cache -----------------------------------------

    def cache_table(self, name: str) -> "CacheTable":
        """A key-value table in the local index for data derived from blobs.

        Like the index it is a cache: `reindex` empties it, and its owner
        must be able to rebuild it from the blobs.
        """
        return CacheTable(self.index, name.encode())

    def record_refs(self, key: bytes, ref_keys: list[bytes]) -> None:
        """Remember which refs (keys) the schema blob with ref key `key` holds.

        The refs cache: a derived table (`reindex` empties it), so a missing
        row only means the blob must be read. Rows are keyed by the blob's own
        ref and blobs are immutable, so a row, once right, stays right."""
        if all(len(k) < 256 for k in ref_keys):  # (else no row: the blob is read)
            self.index.table_put(REFS_TABLE_NAME, key,
                                 b"".join([bytes((len(k),)) + k for k in ref_keys]))

    def known_refs(self, keys: list[bytes]) -> list[list[bytes] | None]:
        """For each blob, the ref keys `record_refs` kept; None if it has no row.
        (Many at once: gc asks for thousands, and one multi-get is cheaper.)"""
        return [None if row is None else split_refs(row)
                for row in self.index.table_get_many(REFS_TABLE_NAME, keys)]

    def all_known_refs(self) -> Iterator[tuple[bytes, bytes]]:
        """(blob ref key, row) of every row `record_refs` kept, in key order;
        `split_refs` reads a row. One scan costs ~0.7 µs a row, a multi-get
        ~5 µs a key: gc, which wants nearly all of them, reads them so."""
        return self.index.table_scan(REFS_TABLE_NAME)

    def _open_index(self) -> Index:
        try:
            return Index(self._index_dir)
        except Exception:  # a damaged cache is rebuilt, never trusted or fatal
            shutil.rmtree(self._index_dir, ignore_errors=True)
            return Index(self._index_dir)

    def list_packs(self) -> dict[str, int]:
        """Pack id -> size, as the backend has them now."""
        return {pack_id_from_name(i.name): i.size for i in self.backend.list(PACKS)}

    def read_pack_header(self, pack_id: str, size: int) -> list[PackEntry]:
        return read_pack_header(self.backend, self._data_key, pack_id, size)

    def scan_pack(self, pack_id: str, entries: list[PackEntry],
                  on_blob: Callable[[PackEntry, "bytes | memoryview | IntegrityError"], None],
                  ) -> tuple[str, int]:
        """`packscan.scan_blobs` of one pack of this repository, in this process."""
        return scan_blobs(self.backend, self._data_key, pack_id, entries, on_blob)

    def pack_scanner(self) -> PackScanner:
        """Reads whole packs on worker processes (`packscan`), for check's data pass."""
        return PackScanner(self.backend, self._data_key, READ_THREADS)

    def load_pack(self, pack_id: str) -> bytes:
        return self.backend.load(pack_name(pack_id))

    def pack_entries(self, pack_id: str, data: bytes) -> list[PackEntry]:
        """The header of a pack already loaded whole (`load_pack`)."""
        def load(offset: int, length: int | None) -> bytes:
            return data[offset:] if length is None else data[offset:offset + length]
        return read_header(self._data_key, load, len(data), f"pack {pack_id}")

    def open_pack_blob(self, entry: PackEntry, sealed) -> bytes:
        return open_blob(self._data_key, entry, sealed)

    def sync_index(self, progress: Progress = NO_PROGRESS) -> SyncReport:
        """Bring the index in line with the packs the backend holds."""
        self.index.refresh(latest=True)
        present = self.list_packs()
        known = self.index.packs()
        new = sorted(set(present) - set(known))
        report = SyncReport(packs_dropped=len(set(known) - set(present)))
        if report.packs_dropped:
            self.index.forget_packs(set(known) - set(present))
        if new:
            progress.start("index", len(new), "packs")
            for pack_id in new:
                try:
                    entries = self.read_pack_header(pack_id, present[pack_id])
                except (IntegrityError, BackendError) as e:
                    report.damaged[pack_id] = str(e)  # left for `check` to report
                else:
                    self.index.add_pack(pack_id, present[pack_id], entries)
                    report.blobs_added += len(entries)
                    report.packs_added += 1
                progress.advance()
            self.index.flush()
            progress.finish()
        return report

    def reindex(self, progress: Progress = NO_PROGRESS) -> SyncReport:
        """Throw the index away and rebuild it from every pack header."""
        self.flush()
        self.index.close()
        shutil.rmtree(self._index_dir, ignore_errors=True)
        self.index = Index(self._index_dir)
        return self.sync_index(progress)


def _verified(ref: BlobRef, loc: Location, data: bytes) -> bytes:
    if not ref.matches(data):
        raise IntegrityError(f"blob {ref} in pack {loc.pack_id} does not match its ref")
    return data


@dataclass
class _Span:
    """One backend read: bytes start..end of a pack, holding these blobs."""

    pack_id: str
    start: int
    end: int
    blobs: list[tuple[BlobRef, Location]]


def _spans(located: list[tuple[BlobRef, Location]]) -> list[_Span]:
    """Group blobs by pack and offset into reads of at most READ_SPAN bytes
    (a bigger blob gets a read of its own), joining those at most READ_GAP apart."""
    spans: list[_Span] = []
    span = None
    raw = 0
    for ref, loc in sorted(located, key=lambda rl: (rl[1].pack_id, rl[1].offset)):
        end = loc.offset + loc.length
        if (span is not None and loc.pack_id == span.pack_id
                and loc.offset - span.end <= READ_GAP and end - span.start <= READ_SPAN
                and raw + loc.raw_length <= READ_SPAN):
            span.end = max(span.end, end)
            span.blobs.append((ref, loc))
            raw += loc.raw_length
            continue
        span = _Span(loc.pack_id, loc.offset, end, [(ref, loc)])
        raw = loc.raw_length
        spans.append(span)
    return spans


class _Reads:
    """An eager `get_many`: its reads began before the first `next`, so
    `close` cancels them even if it never started."""

    def __init__(self, blobs: Iterator[tuple[BlobRef, bytes]], pending: deque):
        self._blobs, self._pending = blobs, pending

    def __iter__(self):
        return self

    def __next__(self) -> tuple[BlobRef, bytes]:
        return next(self._blobs)

    def close(self) -> None:
        self._blobs.close()
        for _, future in self._pending:
            future.cancel()


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _reader_pool() -> ThreadPoolExecutor:
    """The threads that read and decode for `get_many`, shared by the process
    (zstd, libsodium, hashlib and file reads release the GIL)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="pkvc-read")
        return _pool


class Repacker:
    """Copies blobs into new packs, each stored and indexed as soon as it fills.

    Bytes are checked against their ref before they are copied, so a gc
    never spreads a damaged blob.
    """

    def __init__(self, repo: Repository):
        self._repo = repo
        self._writer = PackWriter(repo._data_key)
        self._refs: set[BlobRef] = set()
        self.written: list[str] = []
        self.bytes_written = 0

    def __contains__(self, ref: BlobRef) -> bool:
        return ref in self._refs

    def add(self, ref: BlobRef, data: bytes, kind: int) -> str | None:
        """Queue one blob; returns the id of a pack this completed, if any."""
        if ref in self._refs:
            return None
        if not ref.matches(data):
            raise IntegrityError(f"blob {ref} does not match its ref; it is not copied")
        self._writer.add(ref, data, kind)
        self._refs.add(ref)
        if self._writer.size >= self._repo.config.pack_size:
            return self.flush()
        return None

    def flush(self) -> str | None:
        if not len(self._writer):
            return None
        pack = self._writer.finish()
        self._repo.store_pack(pack)
        self.written.append(pack.pack_id)
        self.bytes_written += pack.size
        self._refs.clear()
        return pack.pack_id


class CacheTable:
    """One named table of the index cache (see Repository.cache_table)."""

    def __init__(self, index: Index, name: bytes):
        self._index = index
        self._name = name

    def get(self, key: bytes) -> bytes | None:
        return self._index.table_get(self._name, key)

    def put(self, key: bytes, value: bytes) -> None:
        self._index.table_put(self._name, key, value)

    def delete(self, key: bytes) -> None:
        self._index.table_put(self._name, key, None)

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self._index.table_scan(self._name, prefix)

    def flush(self) -> None:
        self._index.flush()


def read_config(backend: Backend) -> Config:
    if not backend.is_initialized():
        raise NoRepositoryError(f"no pkvc repository at {backend.location} (run `pkvc init` first)")
    return Config.from_bytes(backend.load("config"), backend.location)
