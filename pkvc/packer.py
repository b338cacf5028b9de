"""Filling packs on a few threads, in an order that does not depend on them.

Compressing (zstd) and sealing (XChaCha20-Poly1305) take most of a first
snapshot's CPU, and both release the GIL. So `Packer.add` queues blobs in
batches for a small pool of threads that compress and seal them, while the
caller goes on reading and hashing files. The caller's thread appends the
sealed results to the packs in the order the blobs were added, so which
blob lands in which pack never depends on thread timing; one more thread
writes each full pack to the backend (write, fsync) while the next fills.

Memory stays bounded: at most `MAX_IN_FLIGHT` bytes of blobs wait for the
pool (the caller waits beyond that), and one full pack at a time is being
stored while the next ones (data, schema) fill.

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

import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import zstandard

from pkvc.blobref import BlobRef
from pkvc.pack import KIND_DATA, ZSTD_LEVEL, FinishedPack, PackWriter, seal_blob

BATCH_BYTES = 1024 * 1024  # a batch is handed to the pool at this size...
BATCH_BLOBS = 256  # ...or at this many blobs (small files: one blob each)
MAX_IN_FLIGHT = 8 * 1024 * 1024  # bytes of blobs queued or being sealed
SEAL_THREADS = max(1, min(4, os.cpu_count() or 1))

_Batch = list[tuple[BlobRef, bytes, int]]  # (ref, bytes, kind), as added
_Sealed = list[tuple[int, bytes, int]]  # (compression, sealed bytes, raw length)


class Packer:
    """Blobs in, stored packs out; one caller thread at a time.

    `store(pack)` writes a finished pack (on the store thread); `stored(pack)`
    is then called on the caller's thread, in pack order, to index it.
    """

    def __init__(self, data_key: bytes, pack_size: int, store: Callable[[FinishedPack], None],
                 stored: Callable[[FinishedPack], None], *, threads: int = SEAL_THREADS,
                 level: int = ZSTD_LEVEL):
        self._key, self._pack_size, self._level = data_key, pack_size, level
        self._store, self._stored = store, stored
        self._threads = threads
        self._writers = {False: PackWriter(data_key), True: PackWriter(data_key)}  # by is-schema
        self._batch: _Batch = []
        self._batch_bytes = 0
        self._sealing: deque[tuple[list[tuple[BlobRef, int]], int, Future]] = deque()
        self._in_flight = 0
        self._storing: deque[Future] = deque()
        self._seal_pool: ThreadPoolExecutor | None = None
        self._store_pool: ThreadPoolExecutor | None = None
        self._local = threading.local()

    @property
    def pending(self) -> bool:
        """Whether some blob added is not stored yet."""
        return bool(self._batch or self._sealing or self._storing
                    or any(len(w) for w in self._writers.values()))

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
            for schema, writer in self._writers.items():
                if len(writer):
                    self._ship(schema)
            self._reap(wait=True)

    def abort(self) -> None:
        """Drop whatever is not stored yet (waits for running work to end);
        packs already stored are indexed."""
        self._batch, self._batch_bytes = [], 0
        futures = [f for _, _, f in self._sealing] + list(self._storing)
        for f in futures:
            f.cancel()
        for f in futures:
            if not f.cancelled():
                f.exception()  # wait; the error, if any, was raised already
        stored = [f.result() for f in self._storing if not f.cancelled() and not f.exception()]
        self._sealing.clear()
        self._storing.clear()
        for pack in stored:
            try:
                self._stored(pack)
            except Exception:
                break  # the error being raised says more; the next open indexes it
        self._in_flight = 0
        self._writers = {False: PackWriter(self._key), True: PackWriter(self._key)}

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
            for (ref, kind), (compression, blob, raw_length) in zip(refs, sealed):
                schema = kind != KIND_DATA
                writer = self._writers[schema]
                writer.append(ref, kind, compression, blob, raw_length)
                if writer.size >= self._pack_size:
                    self._ship(schema)
        self._reap(wait=False)

    def _ship(self, schema: bool) -> None:
        """Hand a full writer to the store thread, once the previous pack is stored."""
        writer = self._writers[schema]
        self._writers[schema] = PackWriter(self._key)
        while len(self._storing) >= 1:
            self._reap_one()
        if self._store_pool is None:
            self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="pkvc-store")
        self._storing.append(self._store_pool.submit(self._finish_and_store, writer))

    def _reap(self, wait: bool) -> None:
        while self._storing and (wait or self._storing[0].done()):
            self._reap_one()

    def _reap_one(self) -> None:
        pack = self._storing[0].result()
        self._storing.popleft()
        self._stored(pack)

    # -- the pool's threads ---------------------------------------------

    def _seal(self, batch: _Batch) -> _Sealed:
        compressor = getattr(self._local, "zstd", None)
        if compressor is None:  # a compressor is not safe to share between threads
            compressor = self._local.zstd = zstandard.ZstdCompressor(level=self._level)
        sealed = []
        while batch:  # drop each blob's bytes as soon as it is sealed
            ref, raw, _ = batch.pop(0)
            sealed.append((*seal_blob(self._key, compressor, ref, raw), len(raw)))
        return sealed

    def _finish_and_store(self, writer: PackWriter) -> FinishedPack:
        pack = writer.finish()
        self._store(pack)
        return pack



