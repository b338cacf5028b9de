"""Cutting file content into blobs: FastCDC chunks, and holes for sparse files.

Content-defined chunking (the `fastcdc` package) puts cut points where the
content says, so an insertion early in a file changes only nearby chunks
and the rest deduplicate. Defaults: min 256 KiB, average 1 MiB, max 4 MiB;
a file smaller than the minimum is one chunk. The repository config
carries the parameters; any object with `min_size`/`avg_size`/`max_size`
works here.

Memory stays bounded: data is read with `pread` into a window of a few
max-sizes, and a chunk is only emitted once `max_size` bytes after its start
are in the window (or the data ended), so the cut points are exactly those
FastCDC finds on the whole file. No mmap: a file truncated while mapped
would kill the process with SIGBUS.

Sparse files: `SEEK_DATA`/`SEEK_HOLE` find the data extents; gaps of at
least `hole_min` (64 KiB) become hole pieces (no data), smaller gaps are
read as zeros. Each data extent is chunked on its own.

Following a file's previous chunks: a FastCDC cut depends only on the bytes
from the chunk's start to the cut, unless the data ends first. So where a
chunk equals one of the previous version's (same hash), the next chunk is
the previous version's next one whenever its bytes follow it again (same
hash) and that one did not end the file: it is taken without running
FastCDC (a 4 KiB insertion into a 600 MB file: FastCDC for a few chunks,
SHA-224 for the rest). The pieces are exactly those of plain chunking.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fastcdc import fastcdc

from pkvc.blobref import BlobRef

KiB, MiB = 1024, 1024 * 1024
_GROWTH_READ = 64 * KiB  # what to ask for past the size a file had when opened


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = 256 * KiB
    avg_size: int = 1 * MiB
    max_size: int = 4 * MiB
    hole_min: int = 64 * KiB

    def __post_init__(self):
        if not (64 <= self.min_size <= self.avg_size <= self.max_size):
            raise ValueError("chunk sizes must satisfy 64 <= min <= avg <= max")
        if self.avg_size < 256 or self.max_size < 1024:
            raise ValueError("FastCDC needs avg >= 256 and max >= 1024 bytes")


DEFAULT_PARAMS = ChunkerParams()


@dataclass(frozen=True)
class Piece:
    """`size` bytes at `offset`: a chunk (`data`) or a hole (`data` None);
    `ref` is the chunk's `BlobRef.of(data)` when the chunker computed it."""

    offset: int
    size: int
    data: bytes | None
    ref: BlobRef | None = None

    @property
    def is_hole(self) -> bool:
        return self.data is None


def chunk_bytes(data, params=DEFAULT_PARAMS) -> Iterator[Piece]:
    """Chunks of an in-memory buffer."""
    view = memoryview(data)
    if not len(view):
        return
    for c in fastcdc(view, params.min_size, params.avg_size, params.max_size):
        yield Piece(c.offset, c.length, bytes(view[c.offset:c.offset + c.length]))


def chunk_stream(read: Callable[[int], bytes], params=DEFAULT_PARAMS) -> Iterator[Piece]:
    """Chunks of a stream, given its `read(n)` (b"" at the end)."""
    yield from _chunk_reads(read, 0, params)


def chunk_fd(fd: int, params=DEFAULT_PARAMS, sparse: bool = True,
             previous: list[tuple[int, BlobRef]] | None = None) -> Iterator[Piece]:
    """Chunks and holes of an open regular file, in order, covering it.

    Reads until end of file; if the file shrinks while being read, the
    pieces stop where its data stopped. `previous`: (size, ref) of the
    chunks of an earlier version of the file, in order, chunked with the
    same `params`, with no hole: the pieces are the same, found faster
    where they repeat those (see the module's docstring), and carry refs.
    """
    st = os.fstat(fd)
    size = st.st_size
    data = read_small(fd, st, params, sparse)
    if data is not None:
        if data:
            yield Piece(0, len(data), data)
        return
    extents = data_extents(fd, size, getattr(params, "hole_min", DEFAULT_PARAMS.hole_min)) \
        if sparse else [(0, size)]
    if previous and extents == [(0, size)]:
        yield from _follow(_RangeReader(fd, 0, None, size).read, params, previous)
        return
    pos = 0
    for i, (start, end) in enumerate(extents):
        if start > pos:
            yield Piece(pos, start - pos, None)
        last = i == len(extents) - 1 and end == size
        reader = _RangeReader(fd, start, None if last else end, size)
        yield from _chunk_reads(reader.read, start, params)
        if reader.pos < end:
            return  # the file shrank under us: stop at its data
        pos = reader.pos
    if pos < size:
        yield Piece(pos, size - pos, None)


def read_small(fd: int, st: os.stat_result, params=DEFAULT_PARAMS,
               sparse: bool = True) -> bytes | None:
    """The whole content of a file that is one chunk at most and has no hole
    worth finding (`st` is its fstat): one read, sized to the file (+1 to
    see it grow), no window, no FastCDC. None for any other file, or one
    that grew while read: chunk it with `chunk_fd`."""
    size = st.st_size
    if size >= params.min_size or (sparse and st.st_blocks * 512 < size):
        return None
    data = os.pread(fd, size + 1, 0)
    return data if len(data) <= size else None


def data_extents(fd: int, size: int, hole_min: int = DEFAULT_PARAMS.hole_min) -> list[tuple[int, int]]:
    """[(start, end)] of data worth reading; gaps >= hole_min are holes."""
    st = os.fstat(fd)
    if size == 0:
        return []
    if st.st_blocks * 512 >= size or not hasattr(os, "SEEK_DATA"):
        return [(0, size)]
    here = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        raw = _seek_extents(fd, size)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return [(0, size)]  # file system cannot tell us: read it all
        raise
    finally:
        os.lseek(fd, here, os.SEEK_SET)
    return _merge_small_gaps(raw, size, hole_min)


def _seek_extents(fd: int, size: int) -> list[tuple[int, int]]:
    extents, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break  # only a hole remains
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end))
        pos = end
    return extents


def _merge_small_gaps(extents, size: int, hole_min: int) -> list[tuple[int, int]]:
    """Absorb gaps smaller than hole_min (also at the start and end) into data."""
    bounded = [(0, 0)] + list(extents) + [(size, size)]
    merged: list[list[int]] = []
    for start, end in bounded:
        if merged and start - merged[-1][1] < hole_min:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged if e > s]


class _RangeReader:
    """`read(n)` over [start, end) of a file by pread; end None means EOF.

    Reads ask for no more than the file's size (+1: it may grow), so a small
    file never gets a buffer of the chunker's whole window.
    """

    def __init__(self, fd: int, start: int, end: int | None, size: int):
        self.fd, self.pos, self.end, self.size = fd, start, end, size

    def read(self, n: int) -> bytes:
        if self.end is not None:
            n = min(n, self.end - self.pos)
        else:
            n = min(n, max(self.size - self.pos + 1, _GROWTH_READ))
        if n <= 0:
            return b""
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data


def _chunk_reads(read: Callable[[int], bytes], base: int, params) -> Iterator[Piece]:
    """FastCDC over a bounded sliding window of `read` results.

    The window is immutable bytes: a file read whole in one `read` is cut
    into chunks with one copy each (none for a single chunk), and only the
    tail left after the last certain cut is copied into the next window.
    """
    window = 2 * params.max_size  # >= max_size more than a chunk: always progress
    buf, done = b"", False
    while True:
        if not done and len(buf) < window:
            buf, done = _fill(read, buf, window)
        consumed = 0
        for offset, length in _cut_points(buf, params, done):
            whole = offset == 0 and length == len(buf)
            yield Piece(base + offset, length, buf if whole else buf[offset:offset + length])
            consumed = offset + length
        buf = buf[consumed:]
        base += consumed
        if done and not buf:
            return


def _fill(read: Callable[[int], bytes], tail: bytes, window: int) -> tuple[bytes, bool]:
    """`tail` followed by `read` results, up to `window` bytes (no copy when
    one piece makes it), and whether the data ended first."""
    pieces, have = [tail] if tail else [], len(tail)
    while have < window:
        data = read(window - have)
        if not data:
            break
        pieces.append(data)
        have += len(data)
    joined = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    return joined, have < window


def _cut_points(buf: bytes, params, final: bool) -> list[tuple[int, int]]:
    """Chunks whose end is certain: max_size bytes follow their start, or no more data."""
    cuts = []
    if not buf:
        return cuts
    with memoryview(buf) as view:
        for c in fastcdc(view, params.min_size, params.avg_size, params.max_size):
            if not final and len(buf) - c.offset < params.max_size:
                break
            cuts.append((c.offset, c.length))
    return cuts


def _follow(read: Callable[[int], bytes], params, previous: list[tuple[int, BlobRef]]
            ) -> Iterator[Piece]:
    """`_chunk_reads(read, 0, params)`'s pieces, with refs, taking the
    previous version's chunk that follows a repeated one without FastCDC
    when its bytes come next again and it was not the last one."""
    where = {ref: i for i, (_, ref) in enumerate(previous)}
    window = 2 * params.max_size  # as _chunk_reads (4x: +33 MiB peak RSS, no faster)
    buf, at, base, done = b"", 0, 0, False  # the data from `base` on is buf[at:]
    last = -1  # index in `previous` of the chunk just taken, if it repeated one
    while True:
        if not done and len(buf) - at < params.max_size:  # what FastCDC needs to cut
            (buf, done), at = _fill(read, buf[at:], window), 0
        if at == len(buf):
            return
        length = None
        if 0 <= last < len(previous) - 2:  # the chunk after it is not the last one
            size, ref = previous[last + 1]
            if 0 < size and at + size <= len(buf):  # (a chunk is never empty)
                data = buf[at:at + size]
                if BlobRef.of(data) == ref:
                    length, last = size, last + 1
        if length is None:
            with memoryview(buf) as view, view[at:] as rest:
                length = next(iter(fastcdc(rest, params.min_size, params.avg_size,
                                           params.max_size))).length
            data = buf if length == len(buf) else buf[at:at + length]
            ref = BlobRef.of(data)
            last = where.get(ref, -1)
        yield Piece(base, length, data, ref)
        at += length
        base += length
