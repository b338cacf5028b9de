"""Filling packs on a few threads, in an order that does not depend on them.

Compressing (zstd) and sealing (XChaCha20-Poly1305) take most of a first
snapshot's CPU, and both release the GIL. So `Packer.add` queues blobs in
batches for a small pool of threads that compress and seal them, while the
caller goes on reading and hashing files. The caller's thread appends the
sealed results to the packs in the order the blobs were added, so which
blob lands in which pack never depends on thread timing; one more thread
writes them to the backend as they come (`Backend.upload`: a local backend
appends to a temp file) and, once a pack is full, its header, fsync and
name (the hash of its bytes).

Memory stays bounded: at most `MAX_IN_FLIGHT` bytes of blobs wait for the
pool (the caller waits beyond that), and at most `MAX_UNWRITTEN` bytes of
sealed blobs wait for the store thread. No pack is ever held whole in
memory (it was: 16 MiB filling plus 16 MiB being stored).

Schema blobs (file, directory, static-set, bytes; signed claims) go to
packs of their own, apart from file data, as restic keeps tree packs apart
from data packs: gc's mark, check and restore listings then read metadata
from a few small packs. The pack format is unchanged: each header entry
has always carried its blob's kind.

An error of a worker or of a store (a full disk) is raised, as it was
raised there, by the `add` or `flush` that collects it. Everything not yet
stored is then dropped (`abort`); packs stored before stay whole, and are
indexed.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from pkvc.blobref import BlobRef
from pkvc.compression import BlobCompressor
from pkvc.errors import BackendError
from pkvc.pack import (KIND_DATA, FinishedPack, PackEntry, pack_name, pack_tail,
                       seal_blob)

BATCH_BYTES = 1024 * 1024  # a batch is handed to the pool at this size...
BATCH_BLOBS = 256  # ...or at this many blobs (small files: one blob each)
MAX_IN_FLIGHT = 8 * 1024 * 1024  # bytes of blobs queued or being sealed
MAX_UNWRITTEN = 8 * 1024 * 1024  # bytes of sealed blobs queued for the store thread
# The caller's thread keeps one core busy (walk, read, chunk, hash): one
# sealer per other core. On 2 cores a second sealer only waits for the GIL
# and adds a malloc arena (600 MB bench: 121-128 MiB peak instead of
# 135-149, wall the same or less).
SEAL_THREADS = max(1, min(4, (os.cpu_count() or 2) - 1))

_Batch = list[tuple[BlobRef, bytes, int]]  # (ref, bytes, kind), as added
_Sealed = list[tuple[int, bytes, int]]  # (compression, sealed bytes, raw length)


class _OpenPack:
    """A pack being filled: its entries and size (the caller's thread), its
    upload and running hash (the store thread, which alone touches them)."""

    def __init__(self):
        self.entries: list[PackEntry] = []
        self.size = 0
        self.upload = None
        self.hash = hashlib.sha256()
        self.committed = False


class Packer:
    """Blobs in, stored packs out; one caller thread at a time.

    `open_upload()` gives a backend `Upload` for a new pack (called on the
    store thread); `stored(pack)` is then called on the caller's thread, in
    pack order, to index it.
    """

    def __init__(self, data_key: bytes, pack_size: int, open_upload: Callable[[], object],
                 stored: Callable[[FinishedPack], None], *, threads: int | None = None):
        self._key, self._pack_size = data_key, pack_size
        self._open_upload, self._stored = open_upload, stored
        self._threads = threads or SEAL_THREADS
        self._packs = {False: _OpenPack(), True: _OpenPack()}  # by is-schema
        self._batch: _Batch = []
        self._batch_bytes = 0
        self._sealing: deque[tuple[list[tuple[BlobRef, int]], int, Future]] = deque()
        self._in_flight = 0
        self._storing: deque[tuple[Future, int]] = deque()  # (future, bytes it writes)
        self._store_failed = False  # set on the store thread: it then does nothing more
        self._unwritten = 0
        self._shipped: list[_OpenPack] = []  # full, not yet known stored
        self._seal_pool: ThreadPoolExecutor | None = None
        self._store_pool: ThreadPoolExecutor | None = None
        self._local = threading.local()

    @property
    def pending(self) -> bool:
        """Whether some blob added is not stored yet."""
        return bool(self._batch or self._sealing or self._storing
                    or any(p.entries for p in self._packs.values()))

    def add(self, ref: BlobRef, raw, kind: int) -> None:
        """Queue one blob (its bytes must not change afterwards: they are copied
        unless immutable); may store packs that filled meanwhile."""
        if type(raw) is not bytes:
            raw = bytes(raw)
        self._batch.append((ref, raw, kind))
        self._batch_bytes += len(raw)
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_BLOBS:
            with self._aborting_on_error():
                self._submit()
                self._collect(wait=False)  # what is sealed by now, in order

    def flush(self) -> None:
        """Seal, pack and store everything added so far; returns when stored."""
        with self._aborting_on_error():
            self._submit()
            self._collect(wait=True)
            for schema, pack in self._packs.items():
                if pack.entries:
                    self._ship(schema)
            self._reap(wait=True)

    def abort(self) -> None:
        """Drop whatever is not stored yet (waits for running work to end);
        packs already stored are indexed."""
        self._batch, self._batch_bytes = [], 0
        futures = [f for _, _, f in self._sealing] + [f for f, _ in self._storing]
        for f in futures:
            f.cancel()
        for f in futures:
            if not f.cancelled():
                f.exception()  # wait; the error, if any, was raised already
        stored = [f.result() for f, _ in self._storing
                  if not f.cancelled() and not f.exception() and f.result() is not None]
        self._sealing.clear()
        self._storing.clear()
        for pack in self._shipped + list(self._packs.values()):
            if pack.upload is not None and not pack.committed:
                pack.upload.abort()  # no thread uses it any more
        for pack in stored:
            try:
                self._stored(pack)
            except Exception:
                break  # the error being raised says more; the next open indexes it
        self._in_flight = self._unwritten = 0
        self._store_failed = False
        self._shipped = []
        self._packs = {False: _OpenPack(), True: _OpenPack()}

    def close(self) -> None:
        """Stop the threads (after `flush` or `abort`)."""
        for pool in (self._seal_pool, self._store_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._seal_pool = self._store_pool = None

    # -- the caller's thread --------------------------------------------

    @contextmanager
    def _aborting_on_error(self):
        """Any exception (a worker's, a store's, Ctrl-C) drops the unstored work."""
        try:
            yield
        except BaseException:
            self.abort()
            raise

    def _submit(self) -> None:
        batch, size = self._batch, self._batch_bytes
        if not batch:
            return
        self._batch, self._batch_bytes = [], 0
        if self._seal_pool is None:
            self._seal_pool = ThreadPoolExecutor(self._threads, thread_name_prefix="pkvc-seal")
        # Only the pool holds the blobs' bytes: they are freed once sealed.
        refs = [(ref, kind) for ref, _, kind in batch]
        self._sealing.append((refs, size, self._seal_pool.submit(self._seal, batch)))
        self._in_flight += size

    def _collect(self, wait: bool) -> None:
        """Append sealed batches in the order they were added; block only when
        `wait` or while too many bytes are in flight."""
        while self._sealing:
            refs, size, future = self._sealing[0]
            if not (wait or self._in_flight > MAX_IN_FLIGHT or future.done()):
                break
            sealed = future.result()
            self._sealing.popleft()
            self._in_flight -= size
            blobs: dict[bool, list[bytes]] = {False: [], True: []}
            for (ref, kind), (compression, blob, raw_length) in zip(refs, sealed):
                schema = kind != KIND_DATA
                pack = self._packs[schema]
                pack.entries.append(PackEntry(ref, kind, compression, pack.size, len(blob),
                                              raw_length))
                pack.size += len(blob)
                blobs[schema].append(blob)
                if pack.size >= self._pack_size:
                    self._write(pack, blobs[schema])
                    blobs[schema] = []
                    self._ship(schema)
            for schema, pending in blobs.items():
                if pending:
                    self._write(self._packs[schema], pending)
        self._reap(wait=False)

    def _write(self, pack: _OpenPack, blobs: list[bytes]) -> None:
        """Queue sealed blobs for the store thread, waiting while too many are queued."""
        size = sum(len(b) for b in blobs)
        while self._storing and self._unwritten + size > MAX_UNWRITTEN:
            self._reap_one()
        self._queue_store(self._write_blobs, pack, blobs, size=size)

    def _ship(self, schema: bool) -> None:
        """The pack is full: the store thread finishes and names it."""
        pack = self._packs[schema]
        self._packs[schema] = _OpenPack()
        self._shipped.append(pack)
        self._queue_store(self._finish_and_store, pack)

    def _queue_store(self, work, *args, size: int = 0) -> None:
        if self._store_pool is None:
            self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="pkvc-store")
        self._storing.append((self._store_pool.submit(self._on_store_thread, work, *args), size))
        self._unwritten += size

    def _reap(self, wait: bool) -> None:
        while self._storing and (wait or self._storing[0][0].done()):
            self._reap_one()

    def _reap_one(self) -> None:
        future, size = self._storing[0]
        pack = future.result()
        self._storing.popleft()
        self._unwritten -= size
        if pack is not None:
            self._shipped.pop(0)  # the store thread finishes packs in the order shipped
            self._stored(pack)

    # -- the pool's threads ---------------------------------------------

    def _seal(self, batch: _Batch) -> _Sealed:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:  # a compressor is not safe to share between threads
            compressor = self._local.compressor = BlobCompressor()
        sealed = []
        while batch:  # drop each blob's bytes as soon as it is sealed
            ref, raw, kind = batch.pop(0)
            sealed.append((*seal_blob(self._key, compressor, ref, raw, kind), len(raw)))
        return sealed

    # -- the store thread -----------------------------------------------

    def _on_store_thread(self, work, *args):
        """After one failure nothing more is written: a later write to another
        temp file, or a commit, could make a pack with blobs missing."""
        if self._store_failed:
            raise BackendError("not written: an earlier write failed")
        try:
            return work(*args)
        except BaseException:
            self._store_failed = True
            raise

    def _write_blobs(self, pack: _OpenPack, blobs: list[bytes]) -> None:
        if pack.upload is None:
            pack.upload = self._open_upload()
        data = blobs[0] if len(blobs) == 1 else b"".join(blobs)  # one call, not one per blob
        pack.upload.write(data)
        pack.hash.update(data)

    def _finish_and_store(self, pack: _OpenPack) -> FinishedPack:
        tail = pack_tail(self._key, pack.entries)
        self._write_blobs(pack, [tail])
        pack_id = pack.hash.hexdigest()
        pack.upload.commit(pack_name(pack_id))
        pack.committed = True
        return FinishedPack(pack_id, None, pack.entries, pack.size + len(tail))
