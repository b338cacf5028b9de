"""Reading every byte of packs (check's data pass), on worker processes.

Opening a blob is C code that releases the GIL (XChaCha20-Poly1305, zstd,
SHA-224) between short stretches of Python per blob, and most blobs are
small: two threads of one process serialise on those stretches (check of
the benchmark's 2 GiB repository used 1.45 of 2 cores), two processes do
not (its check: 6.1-7.6 s on two threads, 4.4-4.7 s on two processes).
Workers inherit the backend and the data key when they start, then a pack's
name and size at a time, and send back only what they found (`PackScan`):
no blob crosses between processes.

Workers are forked (Linux): they start at once, with nothing to import,
and as children of this process the time and memory they use count as its
own (`wait4`, the benchmark). The parent has threads (RocksDB's, its own),
which fork does not copy; a worker only reads files and calls zstd,
libsodium and hashlib, and ends with `os._exit` (no destructors run).
Where there is one core, no fork, a backend that a forked process cannot
read through (`Backend.reads_after_fork`), or workers that die, threads do
the same work.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from pkvc.backends import Backend
from pkvc.errors import BackendError, IntegrityError, SchemaError
from pkvc.index import PLACE
from pkvc.pack import KIND_DATA, PackEntry, open_blob_view, pack_name, read_header
from pkvc.schema.anyblob import walk_refs

SCAN_PIECE = 1024 * 1024  # a pack is read in pieces of about this size
MAX_WORKERS = 8  # processes at most, however many cores (each holds one piece)


@dataclass
class PackScan:
    """What reading one pack found. `error`: why its header or its bytes
    could not be read (what follows is then known only up to there).
    `entries`: how many blobs its header lists; `entries_digest`: their
    `entries_digest`. `digest`: the SHA-256 (hex) of its bytes, of which
    `bytes_read` were read. `bad`: blobs that do not open or do not match
    their ref, as (ref key, kind, problem); `refs`: each other blob that is
    not data, as (ref key, the keys of the blobs it references)."""

    pack_id: str
    error: str | None = None
    entries: int = 0
    entries_digest: bytes = b""
    digest: str = ""
    bytes_read: int = 0
    bad: list[tuple[bytes, int, str]] = field(default_factory=list)
    refs: list[tuple[bytes, list[bytes]]] = field(default_factory=list)


def entry_bytes(key: bytes, offset: int, length: int) -> bytes:
    """An entry as the index and a header must agree on: its ref key, offset and length."""
    return bytes([len(key)]) + key + PLACE.pack(offset, length)


def entries_digest(entries: list[PackEntry]) -> bytes:
    """The SHA-256 of the entries' `entry_bytes` in ref-key order: what the
    index's entries of the pack must hash to as well."""
    records = [entry_bytes(e.ref.to_key(), e.offset, e.length) for e in entries]
    if len({r[0] for r in records}) == 1:
        records.sort()  # (keys of one width: in key order)
    else:
        records.sort(key=lambda r: r[1:1 + r[0]])
    return hashlib.sha256(b"".join(records)).digest()


def read_pack_header(backend: Backend, data_key: bytes, pack_id: str,
                     size: int) -> list[PackEntry]:
    """The header of the pack `pack_id` of `size` bytes (two reads at most)."""
    name = pack_name(pack_id)
    return read_header(data_key, lambda off, n: backend.load(name, off, n), size,
                       f"pack {pack_id}")


def scan_blobs(backend: Backend, data_key: bytes, pack_id: str, entries: list[PackEntry],
               on_blob: Callable[[PackEntry, "bytes | memoryview | IntegrityError"], None],
               ) -> tuple[str, int]:
    """Read a pack front to back in pieces of about SCAN_PIECE bytes, each
    ending where a blob ends (memory: one piece and one blob; no bytes kept
    across pieces), opening each entry's blob and handing it (bytes, or a
    read-only view: `open_blob_view`), or the IntegrityError opening it
    raised, to `on_blob` in offset order; the caller checks it against its
    ref. Returns the SHA-256 (hex) of every byte of the pack, and how many."""
    name = pack_name(pack_id)
    digest, end, eof = hashlib.sha256(), 0, False

    def read_to(stop: int) -> tuple[memoryview, int]:
        nonlocal end, eof
        start, chunk = end, backend.load(name, end, stop - end)
        digest.update(chunk)
        end += len(chunk)
        eof = end < stop
        return memoryview(chunk), start

    piece, start = memoryview(b""), 0
    for group in _scan_groups(entries):
        if not eof:
            piece, start = read_to(group[-1].offset + group[-1].length)
        for e in group:
            if e.offset >= start:
                sealed = piece[e.offset - start:e.offset - start + e.length]
            else:  # overlaps an earlier piece (a header no writer makes)
                sealed = backend.load(name, e.offset, e.length)
            try:
                if len(sealed) != e.length:
                    raise IntegrityError(f"pack {pack_id} is truncated (blob {e.ref})")
                on_blob(e, open_blob_view(data_key, e, sealed))
            except IntegrityError as err:
                on_blob(e, err)
            del sealed
    del piece
    while not eof:
        read_to(end + SCAN_PIECE)
    return digest.hexdigest(), end


def _scan_groups(entries: list[PackEntry]) -> Iterator[list[PackEntry]]:
    """Entries in offset order, in runs that span at most SCAN_PIECE bytes
    (a bigger blob alone): what `scan_blobs` reads at once."""
    group: list[PackEntry] = []
    for e in sorted(entries, key=lambda e: e.offset):
        if group and e.offset + e.length - group[0].offset > SCAN_PIECE:
            yield group
            group = []
        group.append(e)
    if group:
        yield group


def scan_pack(backend: Backend, data_key: bytes, pack_id: str, size: int) -> PackScan:
    """Read one pack whole: its header, every byte, every blob against its
    ref, and the references of the blobs that are not data."""
    scan = PackScan(pack_id)
    try:
        entries = read_pack_header(backend, data_key, pack_id, size)
    except (IntegrityError, BackendError) as e:
        scan.error = f"pack {pack_id}: {e}"
        return scan
    scan.entries, scan.entries_digest = len(entries), entries_digest(entries)

    def on_blob(e: PackEntry, raw) -> None:
        if isinstance(raw, IntegrityError):
            scan.bad.append((e.ref.to_key(), e.kind, f"blob {e.ref} in pack {pack_id}: {raw}"))
        elif not e.ref.matches(raw):
            scan.bad.append((e.ref.to_key(), e.kind,
                             f"blob {e.ref} in pack {pack_id} does not match its ref"))
        elif e.kind != KIND_DATA:
            scan.refs.append((e.ref.to_key(), [t.to_key() for t in references(raw)]))

    try:
        scan.digest, scan.bytes_read = scan_blobs(backend, data_key, pack_id, entries, on_blob)
    except BackendError as e:
        scan.error = f"pack {pack_id}: {e}"
    return scan


def references(data) -> list:
    """The blobrefs a blob's schema names; none for JSON that only looks like
    schema (that is data, not damage)."""
    try:
        return walk_refs(data)
    except (SchemaError, ValueError, TypeError):
        return []


class PackScanner:
    """`scan(packs)`: each (pack id, size)'s `PackScan`, in order, worked out
    ahead on one process per core (at most MAX_WORKERS) when there are two
    cores or more, else on `threads` threads. Use it in a `with` block."""

    def __init__(self, backend: Backend, data_key: bytes, threads: int):
        self._backend, self._key, self._threads = backend, data_key, threads
        self._executor: Executor | None = None
        self.in_processes, self.workers = False, threads
        cores = min(_cores(), MAX_WORKERS)
        if cores >= 2 and sys.platform == "linux" and backend.reads_after_fork:
            self._executor = ProcessPoolExecutor(cores, multiprocessing.get_context("fork"),
                                                 _start_worker, (backend, data_key))
            self.in_processes, self.workers = True, cores
        else:
            self._use_threads()

    def scan(self, packs: Iterable[tuple[str, int]]) -> Iterator[PackScan]:
        """Starts the first scans at once (before the first `next`)."""
        todo, pending = iter(packs), deque()
        self._start(pending, todo)
        return self._results(pending, todo)

    def _start(self, pending: deque, todo: Iterator[tuple[str, int]]) -> None:
        while len(pending) < 2 * self.workers + 1:
            item = next(todo, None)
            if item is None:
                return
            pending.append((item, self._submit(*item)))

    def _submit(self, pack_id: str, size: int) -> Future:
        if self.in_processes:
            try:
                return self._executor.submit(_scan_in_worker, pack_id, size)
            except (BrokenProcessPool, OSError):
                self._use_threads()
        return self._executor.submit(scan_pack, self._backend, self._key, pack_id, size)

    def _results(self, pending: deque, todo: Iterator[tuple[str, int]]) -> Iterator[PackScan]:
        while pending:
            item, future = pending.popleft()
            try:
                scan = future.result()
            except BrokenProcessPool:
                self._use_threads()  # (a worker died: the rest is scanned here)
                pending.appendleft((item, None))
                pending = deque((i, self._submit(*i)) for i, _ in pending)
                continue
            self._start(pending, todo)
            yield scan

    def _use_threads(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="pkvc-scan")
        self.in_processes, self.workers = False, self._threads

    def __enter__(self) -> "PackScanner":
        return self

    def __exit__(self, *exc) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on every system)
        return os.cpu_count() or 1


_worker: tuple[Backend, bytes] | None = None


def _start_worker(backend: Backend, data_key: bytes) -> None:
    """In a new worker process (the arguments are inherited, not sent): Ctrl-C
    is for the parent, which stops it."""
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker = (backend, data_key)


def _scan_in_worker(pack_id: str, size: int) -> PackScan:
    backend, data_key = _worker
    return scan_pack(backend, data_key, pack_id, size)
