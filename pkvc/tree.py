"""Storing a file or directory tree as Perkeep schema blobs.

A regular file becomes a `file` blob whose parts name its FastCDC chunks
(and holes, for sparse files); when a file has more parts than fit in one
schema blob, runs of them move into `bytes` blobs (`bytesRef`), recursively,
so no schema blob passes 1 MiB. A directory becomes a `directory` blob
whose `entries` is a `static-set` of its children's blobs, in sorted name
order, so the same tree always gives the same ref. Symlinks, FIFOs and
sockets get their own small blobs; device files are skipped (reported).

Files are opened relative to their directory's fd with O_NOFOLLOW, so a
path swapped for a symlink mid-backup is never followed. A file that cannot
be read is skipped and reported in `PutResult.errors`, never fatal.

Hard links: a regular file with more than one link carries `pkvcLinkGroup`,
a digest of (st_dev, st_ino), equal for all its paths; restore links them.

The callers' side is declared here, narrowly: a `BlobSink` stores blobs,
an optional `StatCache` lets an unchanged file cost one `stat`, and an
optional progress callable receives the small event objects below.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import pwd
import stat as statmod
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from pkvc.blobref import BlobRef
from pkvc.chunker import DEFAULT_PARAMS, Piece, chunk_fd, chunk_stream, read_small
from pkvc.chunkfeed import DONE, ChunkFeed
from pkvc.errors import PkvcError
from pkvc.schema.canonical import MAX_SCHEMA_BLOB_SIZE
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob, SpecialBlob, SymlinkBlob, UnixMeta
from pkvc.schema.parts import BytesBlob, Part, parts_size
from pkvc.schema.staticset import MAX_STATIC_SET_MEMBERS, static_set_blobs

# Parts per file/bytes blob before nesting: about 125 bytes each in JSON, so
# 5,000 stay near 600 KiB, well under the 1 MiB schema limit.
MAX_PARTS = 5000
_O_NOATIME = getattr(os, "O_NOATIME", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
# Bumped whenever `_finish_dir` builds directory blobs differently, so that
# refs cached by an older pkvc are not reused for what would now differ.
_DIR_KEY_VERSION = 1
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Read-ahead: the walker stats entries this many at a time, a block ahead of
# the one it stores, and hands the small files to be read to READ_THREADS
# threads in jobs of READ_JOB files (one wake-up per job, not per file).
AHEAD_BLOCK = 32
READ_JOB = 16
READ_THREADS = 1
# A changed file this big is chunked following its previous chunks (one
# blob read and parsed, to save FastCDC over most of its bytes).
FOLLOW_MIN_SIZE = 16 * 1024 * 1024
# Small files read from a subdirectory before the walk enters it, at most
# (bytes; see `_prefetch_dir`).
PREFETCH_BYTES = 256 * 1024
# A file this big is chunked and hashed on a thread of its own (`ChunkFeed`)
# while the walk goes on; its directory's blob waits for it (2 GiB bench,
# mutated re-snapshot, where the walk overlaps the changed 601 MB file:
# 2.8-3.3 -> 2.1-2.6 s).
FEED_MIN_SIZE = 16 * 1024 * 1024


class BlobSink(Protocol):
    def put(self, data: bytes, refs: list[BlobRef] | None = None) -> BlobRef:
        """Store a schema blob unless already there; return its ref. `refs`,
        when given, are exactly the refs it holds (a hint the sink may keep)."""

    def put_data(self, data: bytes, ref: BlobRef | None = None) -> BlobRef:
        """Store file content: never treated as schema, whatever it looks like.
        `ref`: `BlobRef.of(data)`, when the caller has just computed it."""

    def has(self, ref: BlobRef) -> bool: ...


class StatCache(Protocol):
    """Remembers which blob an unchanged file or directory gave last time.

    `path` is the absolute path in bytes. A cached file ref may be reused
    only while every field of `stat_cache_key(st)` is unchanged: the file
    blob records them (mode, owner, mtime, size; inode for hard links). A
    directory ref is reused only for the same `key`, a digest of everything
    its blobs are built from (`_Walker._dir_key`). `lookup_dir` returns a
    ref only while the sink still has that blob; `lookup` need not check:
    the walker asks the sink, once per directory when the directory's own
    blob is unchanged and present (a blob the sink has comes with
    everything it references, as gc keeps or drops them together).
    """

    def lookup(self, path: bytes, st: os.stat_result) -> BlobRef | None: ...

    def record(self, path: bytes, st: os.stat_result, ref: BlobRef) -> None: ...

    def lookup_dir(self, path: bytes, key: bytes) -> BlobRef | None: ...

    def record_dir(self, path: bytes, key: bytes, ref: BlobRef) -> None: ...

    def previous_chunks(self, path: bytes) -> list[tuple[int, BlobRef]] | None:
        """(size, ref) of the chunks of the file last recorded at `path`,
        whatever its stat now, if known and without holes: a changed big file
        is chunked faster where it repeats them (`chunker.chunk_fd`)."""


def stat_cache_key(st: os.stat_result) -> tuple:
    """The stat fields a cached file ref depends on."""
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            st.st_ino, st.st_dev, st.st_nlink > 1)


# -- progress events -------------------------------------------------------

@dataclass(frozen=True)
class BytesRead:
    path: str
    n: int


@dataclass(frozen=True)
class FileStored:
    path: str
    size: int
    cached: bool


@dataclass(frozen=True)
class EntrySkipped:
    path: str
    message: str


@dataclass
class PutResult:
    ref: BlobRef
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    cached_files: int = 0
    stale_files: int = 0  # the stat cache named a blob the sink no longer has
    bytes_read: int = 0
    # Content bytes (file blob sizes) of the files this walk stored, not those
    # the stat cache gave: with no cached file, the size of every file in the tree.
    file_bytes: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


# -- entry points ------------------------------------------------------------

def put_path(path, sink: BlobSink, progress: Callable | None = None,
             stat_cache: StatCache | None = None, *, chunker=DEFAULT_PARAMS,
             max_parts: int = MAX_PARTS, max_set_members: int = MAX_STATIC_SET_MEMBERS,
             exclude: Callable[[bytes, bool], bool] | None = None) -> PutResult:
    """Store the file, symlink or directory tree at `path`; return its top ref.

    `exclude(relative_path, is_dir)` may drop entries below the top.
    Raises PkvcError only when the top itself cannot be read.
    """
    walker = _Walker(sink, progress, stat_cache, chunker, max_parts, max_set_members, exclude)
    return walker.run(os.fsencode(os.path.abspath(os.fspath(path))))


def put_stream(read: Callable[[int], bytes], sink: BlobSink, name: bytes | None = None, *,
               chunker=DEFAULT_PARAMS, max_parts: int = MAX_PARTS) -> BlobRef:
    """Store a stream (e.g. stdin) as a `file` blob without Unix metadata."""
    parts = [Part(p.size, blob_ref=sink.put_data(p.data)) for p in chunk_stream(read, chunker)]
    parts = fit_parts(parts, sink, max_parts)
    return _put_blob(sink, FileBlob(name, tuple(parts)))


def fit_parts(parts: list[Part], sink: BlobSink, max_parts: int = MAX_PARTS) -> list[Part]:
    """Nest runs of parts in `bytes` blobs until at most max_parts remain."""
    if max_parts < 2:
        raise ValueError("max_parts must be at least 2")
    while len(parts) > max_parts:
        groups = [parts[i:i + max_parts] for i in range(0, len(parts), max_parts)]
        parts = [g[0] if len(g) == 1 else _bytes_part(g, sink) for g in groups]
    return parts


def _bytes_part(group: list[Part], sink: BlobSink) -> Part:
    ref = _put_blob(sink, BytesBlob(tuple(group)))
    return Part(parts_size(group), bytes_ref=ref)


def _put_blob(sink: BlobSink, blob) -> BlobRef:
    """Store a schema object, telling the sink the refs it holds (for gc)."""
    return _put_schema(sink, blob.to_json(), blob.refs())


def _put_schema(sink: BlobSink, data: bytes, refs: list[BlobRef] | None = None) -> BlobRef:
    if len(data) > MAX_SCHEMA_BLOB_SIZE:
        raise PkvcError(f"internal error: a schema blob of {len(data)} bytes passes 1 MiB")
    return sink.put(data, refs=refs)


def link_group(st: os.stat_result) -> str | None:
    """Same string for every path of one multiply-linked regular file."""
    if not statmod.S_ISREG(st.st_mode) or st.st_nlink < 2:
        return None
    return hashlib.sha224(f"{st.st_dev}:{st.st_ino}".encode()).hexdigest()[:32]


# -- the walk ------------------------------------------------------------------

@dataclass
class _DirFrame:
    fd: int
    path: bytes
    rel: bytes
    name: bytes | None
    st: os.stat_result
    names: list[bytes]
    refs: list[BlobRef] = field(default_factory=list)
    # Files whose ref came from the stat cache unchecked: (position in refs, name);
    # no stat kept, so a directory of many files holds little memory
    unchecked: list[tuple[int, bytes]] = field(default_factory=list)
    # Entries stat'ed (and their small files being read) ahead of the walk
    ahead: deque = field(default_factory=deque)
    jobs: list = field(default_factory=list)  # read-ahead jobs that use `fd`
    scanned: int = 0  # names[:scanned] are in `ahead` or done
    # Small files read before the walk came here (`_prefetch_dir`): name -> (fstat, content)
    prefetched: dict | None = None
    # Refs still coming (None in `refs` until then): files in the chunk feed,
    # subdirectories that wait for theirs. A frame walked to its end while
    # some are still coming is finished when the last one comes, keeping
    # its fd open until then; `parent`/`slot`: where its own ref goes then,
    # `ref`: the top frame's ref once finished.
    waiting: int = 0
    walked: bool = False
    parent: "_DirFrame | None" = None
    slot: int = 0
    ref: BlobRef | None = None

    def child_paths(self, name: bytes) -> tuple[bytes, bytes]:
        """(absolute path, path relative to the top) of an entry."""
        path = self.path + name if self.path.endswith(b"/") else self.path + b"/" + name
        return path, (self.rel + b"/" + name if self.rel else name)


@dataclass
class _FedFile:
    """A file in the chunk feed: what its blob needs once its pieces are in."""

    frame: _DirFrame
    slot: int  # its place in frame.refs
    name: bytes
    path: bytes
    st: os.stat_result
    parts: list[Part] = field(default_factory=list)


class _Entry:
    """A directory entry prepared ahead: its stat (or the error getting it),
    the stat cache's answer for a file, and where its read-ahead lands."""

    __slots__ = ("name", "path", "rel", "st", "error", "cached", "job", "slot", "read")

    def __init__(self, name, path, rel, st, error=None):
        self.name, self.path, self.rel, self.st, self.error = name, path, rel, st, error
        self.cached = _NOT_LOOKED_UP
        self.job: Future | None = None  # its read-ahead job, if any
        self.slot = 0  # its place in the job's results
        self.read = None  # (fstat, content) read with its parent's prefetch, if any


_NOT_LOOKED_UP = object()
_FED = object()  # `_put_file`'s answer for a file handed to the chunk feed


def _present(refs: list[BlobRef | None]) -> list[BlobRef]:
    """A directory's refs less the files skipped after their place was taken
    (by the chunk feed, or by `_check_files`)."""
    return [r for r in refs if r is not None] if None in refs else refs


class _Walker:
    """One put_path run: walks depth-first, sorted, holding one fd per level."""

    def __init__(self, sink, progress, stat_cache, chunker, max_parts, max_set_members, exclude):
        self.sink, self.progress, self.stat_cache = sink, progress, stat_cache
        self.chunker, self.max_parts, self.max_set_members = chunker, max_parts, max_set_members
        self.exclude = exclude
        self.result: PutResult | None = None
        self._users: dict[int, str | None] = {}
        self._groups: dict[int, str | None] = {}
        self._defer_to: _DirFrame | None = None  # where _cached may leave a ref unchecked
        self._unchecked = False  # set by _cached when it did so
        self._read_again = False  # _check_files is storing a file whose cached blob is gone
        self._readers: ThreadPoolExecutor | None = None
        self._feed: ChunkFeed | None = None  # big files chunked on a thread, once one comes
        self._deferred: list[_DirFrame] = []  # walked, not on the stack, waiting for refs
        self._cache_hits = self._cache_misses = 0  # stat cache answers for files

    def run(self, path: bytes) -> PutResult:
        self.result = PutResult(ref=None)  # type: ignore[arg-type]
        parent, name = os.path.split(path)
        try:
            st = os.lstat(path)
            parent_fd = os.open(parent or b"/", _DIR_FLAGS & ~os.O_NOFOLLOW)
        except OSError as e:
            raise PkvcError(f"cannot read {os.fsdecode(path)}: {e.strerror}") from None
        try:
            ref = self._top(parent_fd, name or None, path, st)
        finally:
            os.close(parent_fd)
        if ref is None:
            message = self.result.errors[-1][1] if self.result.errors else "skipped"
            raise PkvcError(f"cannot read {os.fsdecode(path)}: {message}")
        self.result.ref = ref
        return self.result

    def _top(self, parent_fd: int, name: bytes | None, path: bytes, st) -> BlobRef | None:
        if statmod.S_ISDIR(st.st_mode):
            return self._walk(parent_fd, name, path, st)
        return self._put_leaf(parent_fd, name, path, st)

    def _emit(self, event) -> None:
        if self.progress is not None:
            self.progress(event)

    def _skip(self, path: bytes, message: str) -> None:
        shown = os.fsdecode(path)
        self.result.errors.append((shown, message))
        self._emit(EntrySkipped(shown, message))

    # directories, iteratively (deep trees must not hit Python's recursion limit)

    def _walk(self, parent_fd: int, name: bytes | None, path: bytes, st) -> BlobRef | None:
        top = self._open_dir(parent_fd, name, path, b"", st)
        if top is None:
            return None
        stack = [top]
        try:
            while stack:
                if self._feed is not None and self._feed.busy:
                    self._take_pieces(wait=False)
                frame = stack[-1]
                if len(frame.ahead) <= AHEAD_BLOCK and frame.scanned < len(frame.names):
                    self._prepare(frame)
                if frame.ahead:
                    child = self._visit(frame, frame.ahead.popleft())
                    if child is not None:
                        stack.append(child)
                    continue
                stack.pop()
                frame.walked = True
                if frame.waiting:  # a big file below is still being chunked
                    self._defer(frame, stack[-1] if stack else None)
                    continue
                ref = self._finish_dir(frame)
                if not stack:
                    return ref
                stack[-1].refs.append(ref)
            while top.ref is None:  # the top waits for big files
                if self._feed is None or not self._feed.busy:
                    raise PkvcError("internal error: the walk ended waiting for nothing")
                self._take_pieces(wait=True)
            return top.ref
        finally:
            if self._feed is not None:  # (an error or Ctrl-C: stop chunking)
                self._feed.close()
                self._feed = None
            if self._readers is not None:  # no read may use a directory fd once closed
                self._readers.shutdown(wait=True, cancel_futures=True)
                self._readers = None
            for frame in stack + self._deferred:
                os.close(frame.fd)
            self._deferred.clear()

    def _defer(self, frame: _DirFrame, parent: _DirFrame | None) -> None:
        """Finish `frame` when its last ref comes (`_resolve`), not now."""
        self._deferred.append(frame)
        if parent is not None:
            frame.parent, frame.slot = parent, len(parent.refs)
            parent.refs.append(None)
            parent.waiting += 1

    def _resolve(self, frame: _DirFrame, slot: int, ref: BlobRef | None) -> None:
        """A ref that was still coming came (None: the file was skipped)."""
        frame.refs[slot] = ref
        frame.waiting -= 1
        if frame.waiting or not frame.walked:
            return
        self._deferred.remove(frame)
        ref = self._finish_dir(frame)
        if frame.parent is None:
            frame.ref = ref
        else:
            self._resolve(frame.parent, frame.slot, ref)

    def _feed_file(self, fd: int, path: bytes, name: bytes, st) -> None:
        """Hand the open big file `fd` to the chunk feed; its ref comes later."""
        if self._feed is None:
            self._feed = ChunkFeed(self.chunker)
        while self._feed.full:
            self._take_pieces(wait=True)
        frame = self._defer_to
        previous = self._previous_chunks(path, st)
        frame.waiting += 1
        self._feed.submit(fd, previous, _FedFile(frame, len(frame.refs), name, path, st))

    def _take_pieces(self, wait: bool) -> None:
        """Store the pieces the chunk feed has handed back; finish the files it ended."""
        put = self.sink.put_data
        for fed, item in self._feed.take(wait):
            if isinstance(item, Piece):
                if item.data is None:
                    fed.parts.append(Part(item.size))
                    continue
                fed.parts.append(Part(item.size, blob_ref=put(item.data, item.ref)))
                self.result.bytes_read += item.size
                self._emit(BytesRead(os.fsdecode(fed.path), item.size))
            elif item is DONE:
                self._resolve(fed.frame, fed.slot, self._store_file(fed.name, fed.path, fed.st,
                                                                   fed.parts))
            elif isinstance(item, OSError):
                self._skip(fed.path, item.strerror or str(item))
                self._resolve(fed.frame, fed.slot, None)
            else:
                raise item

    def _open_dir(self, parent_fd, name, path, rel, st) -> _DirFrame | None:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd) if name else \
                os.open(path, _DIR_FLAGS)
        except OSError as e:
            self._skip(path, e.strerror or str(e))
            return None
        try:
            names = sorted([n.encode(_FS_ENCODING, _FS_ERRORS) for n in os.listdir(fd)])
            st = os.fstat(fd)
        except OSError as e:
            os.close(fd)
            self._skip(path, e.strerror or str(e))
            return None
        return _DirFrame(fd, path, rel, name, st, names)

    def _prepare(self, frame: _DirFrame) -> None:
        """Stat the next block of entries, ask the stat cache about its files,
        and start reading the small files it does not know."""
        end = min(frame.scanned + AHEAD_BLOCK, len(frame.names))
        names, frame.scanned = frame.names[frame.scanned:end], end
        cache, exclude, dir_fd = self.stat_cache, self.exclude, frame.fd
        min_size = self.chunker.min_size
        to_read: list[_Entry] = []
        subdirs: list[_Entry] = []
        prefetched = frame.prefetched
        for name in names:
            path, rel = frame.child_paths(name)
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as e:
                frame.ahead.append(_Entry(name, path, rel, None, e.strerror or str(e)))
                continue
            if exclude is not None and exclude(rel, statmod.S_ISDIR(st.st_mode)):
                continue
            entry = _Entry(name, path, rel, st)
            frame.ahead.append(entry)
            if statmod.S_ISDIR(st.st_mode):
                subdirs.append(entry)
                continue
            if not statmod.S_ISREG(st.st_mode):
                continue
            if cache is not None:
                entry.cached = cache.lookup(path, st)
                if entry.cached is not None:
                    self._cache_hits += 1
                    continue
                self._cache_misses += 1
            if st.st_size < min_size:
                read = prefetched.pop(name, None) if prefetched else None
                if read is not None and _same_file(st, read[0]):
                    entry.read = read
                else:
                    to_read.append(entry)
        jobs = [to_read[i:i + READ_JOB] for i in range(0, len(to_read), READ_JOB)] or [[]]
        if self._mostly_new:
            # Reading subdirectories' small files ahead pays while most files
            # are new (`_prefetch_dir`); in a re-snapshot, where the stat cache
            # answers for most, it costs a thread hand-off per directory and
            # saves nothing (unchanged re-snapshot of the 2 GiB tree, 10,684
            # directories: 4.9 -> 2.7 s, when it listed them).
            jobs.append(subdirs)  # (after the files: the walk needs those first)
        for entries in jobs:
            if entries:
                self._read_ahead(frame, entries)

    @property
    def _mostly_new(self) -> bool:
        """Whether the stat cache has known fewer files than not, so far."""
        return self._cache_misses >= self._cache_hits

    def _read_ahead(self, frame: _DirFrame, entries: list[_Entry]) -> None:
        """One job: read the files among `entries`, or the small files of the
        directories among them (only while most files are new does `_prepare`
        give it directories)."""
        if self._readers is None:
            self._readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="pkvc-read")
        files = [e.name for e in entries if not statmod.S_ISDIR(e.st.st_mode)]
        dirs = [e.name for e in entries[len(files):]]
        job = self._readers.submit(_read_block, frame.fd, files, dirs, self.chunker)
        frame.jobs.append(job)
        for slot, entry in enumerate(entries):
            entry.job, entry.slot = job, slot

    def _visit(self, frame: _DirFrame, entry: _Entry) -> _DirFrame | None:
        """Store one entry of `frame`; return a frame to descend into, if a dir."""
        name, path, st = entry.name, entry.path, entry.st
        if entry.error is not None:
            self._skip(path, entry.error)
            return None
        if statmod.S_ISDIR(st.st_mode):
            child = self._open_dir(frame.fd, name, path, entry.rel, st)
            if child is not None and entry.job is not None:
                results = entry.job.result()
                child.prefetched, results[entry.slot] = results[entry.slot], None
            return child
        self._defer_to, self._unchecked = frame, False
        try:
            ref = self._put_leaf(frame.fd, name, path, st, entry)
        finally:
            self._defer_to = None
        if ref is _FED:
            frame.refs.append(None)  # (`_resolve` fills it in)
        elif ref is not None:
            if self._unchecked:
                frame.unchecked.append((len(frame.refs), name))
            frame.refs.append(ref)
        return None

    def _finish_dir(self, frame: _DirFrame) -> BlobRef:
        """The directory's blob: from the stat cache when built from the same
        inputs before (an unchanged subtree costs no JSON and no hashing)."""
        for job in frame.jobs:  # done by now, all but surely: they use frame.fd
            job.result()
        try:
            return self._dir_blob(frame)
        finally:
            os.close(frame.fd)

    def _dir_blob(self, frame: _DirFrame) -> BlobRef:
        self.result.dirs += 1
        owner, group = self._user(frame.st.st_uid), self._group(frame.st.st_gid)
        cache = self.stat_cache
        if cache is not None:
            key = self._dir_key(frame, owner, group)
            ref = cache.lookup_dir(frame.path, key)
            if ref is not None:
                return ref  # the sink has it, so it has everything it references
            if self._check_files(frame):
                key = self._dir_key(frame, owner, group)
        sets = static_set_blobs(_present(frame.refs), self.max_set_members)
        for data, refs in reversed(sets):  # sub-sets before the set that names them
            entries = _put_schema(self.sink, data, refs)
        meta = UnixMeta.from_stat(frame.st, owner, group)
        ref = _put_blob(self.sink, DirectoryBlob(frame.name, entries, meta))
        if cache is not None:
            cache.record_dir(frame.path, key, ref)
        return ref

    def _check_files(self, frame: _DirFrame) -> bool:
        """Check the sink has every file ref the stat cache gave for this
        directory; store again (read) the files whose blobs are gone.
        Returns whether any ref changed."""
        changed = False
        for position, name in frame.unchecked:
            if self.sink.has(frame.refs[position]):
                continue
            path = frame.child_paths(name)[0]
            self.result.files -= 1
            self.result.cached_files -= 1
            self.result.stale_files += 1
            self._read_again = True
            try:
                ref = self._put_file(frame.fd, name, path, os.stat(name, dir_fd=frame.fd,
                                                                 follow_symlinks=False))
            except OSError as e:
                self._skip(path, e.strerror or str(e))
                ref = None
            finally:
                self._read_again = False
            if ref != frame.refs[position]:
                changed = True
            frame.refs[position] = ref
        frame.unchecked.clear()
        return changed

    def _dir_key(self, frame: _DirFrame, owner: str | None, group: str | None) -> bytes:
        """A digest of every input of `_finish_dir`'s blobs: the name, the
        stat fields `UnixMeta.from_stat` reads, owner and group names, the
        set size limit and the children's refs in order."""
        st, refs = frame.st, _present(frame.refs)
        head = repr((_DIR_KEY_VERSION, frame.name, st.st_mode, st.st_uid, st.st_gid,
                     st.st_mtime_ns, owner, group, self.max_set_members, len(refs)))
        digest = hashlib.sha224(head.encode("utf-8", "surrogateescape"))
        digest.update("\n".join([str(r) for r in refs]).encode())
        return digest.digest()

    # everything but directories

    def _put_leaf(self, dir_fd: int, name: bytes | None, path: bytes, st,
                  entry: _Entry | None = None) -> BlobRef | None:
        mode = st.st_mode
        try:
            if statmod.S_ISREG(mode):
                return self._put_file(dir_fd, name, path, st, entry)
            if statmod.S_ISLNK(mode):
                target = os.readlink(name, dir_fd=dir_fd)
                self.result.symlinks += 1
                return _put_blob(self.sink, SymlinkBlob(name, target, self._meta(st)))
            if statmod.S_ISFIFO(mode) or statmod.S_ISSOCK(mode):
                kind = "fifo" if statmod.S_ISFIFO(mode) else "socket"
                self.result.specials += 1
                return _put_blob(self.sink, SpecialBlob(kind, name, self._meta(st)))
        except OSError as e:
            self._skip(path, e.strerror or str(e))
            return None
        self._skip(path, "device files are not backed up")
        return None

    def _put_file(self, dir_fd: int, name: bytes, path: bytes, st,
                  entry: _Entry | None = None) -> BlobRef:
        cached = self._cached(path, st, _NOT_LOOKED_UP if entry is None else entry.cached)
        if cached is not None:
            return cached
        read = None
        if entry is not None and entry.read is not None:
            read, entry.read = entry.read, None
        elif entry is not None and entry.job is not None:
            results = entry.job.result()
            read, results[entry.slot] = results[entry.slot], None  # the frame keeps the job
            if isinstance(read, OSError):
                raise read
        if read is not None and read[1] is not None:
            st, data = read
            # Copied on this thread, so the reader's buffer is freed now: the
            # reader's malloc arena then stays a job big, instead of holding
            # what waits to be sealed (2 GiB bench peak RSS: 184 -> 170 MiB).
            data = bytes(memoryview(data))
            parts = [Part(len(data), blob_ref=self.sink.put_data(data))] if data else []
            self.result.bytes_read += len(data)
            if data:
                self._emit(BytesRead(os.fsdecode(path), len(data)))
        else:  # not read ahead, or not as one chunk
            fd = _open_for_reading(dir_fd, name)
            try:
                st = _fstat_file(fd)
                if st.st_size >= FEED_MIN_SIZE and self._defer_to is not None \
                        and not self._read_again:  # (in a walk, and not a stale file's re-read)
                    self._feed_file(fd, path, name, st)
                    fd = None  # the feed closes it
                    return _FED
                parts = self._read_parts(fd, path, self._previous_chunks(path, st))
            finally:
                if fd is not None:
                    os.close(fd)
        return self._store_file(name, path, st, parts)

    def _store_file(self, name: bytes, path: bytes, st, parts: list[Part]) -> BlobRef:
        """The file blob of a file read (in line or by the chunk feed)."""
        parts = fit_parts(parts, self.sink, self.max_parts)
        blob = FileBlob(name, tuple(parts), self._meta(st), link_group=link_group(st))
        ref = _put_blob(self.sink, blob)
        if self.stat_cache is not None:
            self.stat_cache.record(path, st, ref)
        self.result.files += 1
        self.result.file_bytes += blob.size
        self._emit(FileStored(os.fsdecode(path), blob.size, False))
        return ref

    def _cached(self, path: bytes, st, looked_up=_NOT_LOOKED_UP) -> BlobRef | None:
        """The stat cache's ref for an unchanged file (`looked_up`: its answer,
        if asked already). Inside a directory the sink is asked about it
        later, once for the whole directory when the directory is unchanged
        too (`_finish_dir`); elsewhere now."""
        if self.stat_cache is None or self._read_again:
            return None
        ref = self.stat_cache.lookup(path, st) if looked_up is _NOT_LOOKED_UP else looked_up
        if ref is None:
            return None
        if self._defer_to is not None:
            self._unchecked = True
        elif not self.sink.has(ref):
            return None
        self.result.files += 1
        self.result.cached_files += 1
        self._emit(FileStored(os.fsdecode(path), st.st_size, True))
        return ref

    def _previous_chunks(self, path: bytes, st) -> list[tuple[int, BlobRef]] | None:
        if self.stat_cache is None or st.st_size < FOLLOW_MIN_SIZE:
            return None
        return self.stat_cache.previous_chunks(path)

    def _read_parts(self, fd: int, path: bytes, previous=None) -> list[Part]:
        parts, shown, put = [], os.fsdecode(path), self.sink.put_data
        for piece in chunk_fd(fd, self.chunker, previous=previous):
            if piece.is_hole:
                parts.append(Part(piece.size))
                continue
            ref = put(piece.data) if piece.ref is None else put(piece.data, piece.ref)
            parts.append(Part(piece.size, blob_ref=ref))
            self.result.bytes_read += piece.size
            self._emit(BytesRead(shown, piece.size))
        return parts

    def _meta(self, st) -> UnixMeta:
        return UnixMeta.from_stat(st, self._user(st.st_uid), self._group(st.st_gid))

    def _user(self, uid: int) -> str | None:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = None
        return self._users[uid]

    def _group(self, gid: int) -> str | None:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = None
        return self._groups[gid]


def _read_block(dir_fd: int, files: list[bytes], dirs: list[bytes], params) -> list:
    """A read-ahead job, on a reader thread: for each of `files` (small
    files), (its fstat, its content) or (its fstat, None) when it is not one
    chunk any more, or the OSError met. Syscalls and all: the walker
    meanwhile holds the GIL only for Python. Then `_prefetch_dir` each of
    `dirs` (one more result each)."""
    results: list = []
    for name in files:
        try:
            results.append(_read_small_file(dir_fd, name, params))
        except OSError as e:
            results.append(e)
    for name in dirs:
        results.append(_prefetch_dir(dir_fd, name, params))
    return results


def _prefetch_dir(dir_fd: int, name: bytes, params) -> dict:
    """Read a subdirectory's small files before the walker enters it:
    name -> (fstat, content or None as in `_read_block`), up to
    PREFETCH_BYTES. The walker takes a file's content from here only if its
    own lstat of the file agrees (`_same_file`), and reads it again
    otherwise; a file that cannot be read here is left out, for the walker
    to meet and report the error itself. Directories hold five files on
    average: read only when the walker gets there, each was a job it
    submitted and at once waited for."""
    out: dict = {}
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return out
    try:
        with os.scandir(fd) as entries:
            files = [os.fsencode(e.name) for e in entries if e.is_file(follow_symlinks=False)]
        budget = PREFETCH_BYTES
        for file in files:
            if budget <= 0:
                break
            try:
                st, content = _read_small_file(fd, file, params)
            except OSError:
                continue
            if st.st_size < params.min_size:
                out[file] = (st, content)
                budget -= st.st_size
    except OSError:
        pass
    finally:
        os.close(fd)
    return out


def _read_small_file(dir_fd: int, name: bytes, params) -> tuple[os.stat_result, bytes | None]:
    """A file's fstat and its content, when it is one chunk (`read_small`;
    None otherwise, unread)."""
    fd = _open_for_reading(dir_fd, name)
    try:
        st = _fstat_file(fd)
        return st, read_small(fd, st, params)
    finally:
        os.close(fd)


def _same_file(st: os.stat_result, read: os.stat_result) -> bool:
    """Whether `read` (a prefetch's fstat) is of the file the walker stat'ed
    as `st`, unchanged since."""
    return (st.st_ino == read.st_ino and st.st_dev == read.st_dev
            and st.st_size == read.st_size and st.st_mtime_ns == read.st_mtime_ns
            and st.st_ctime_ns == read.st_ctime_ns and st.st_mode == read.st_mode)


def _fstat_file(fd: int) -> os.stat_result:
    """The open file's stat, if it is (still) a regular file."""
    st = os.fstat(fd)
    if not statmod.S_ISREG(st.st_mode):
        raise OSError(errno.EAGAIN, "replaced by a non-file during backup")
    return st


def _open_for_reading(dir_fd: int, name: bytes) -> int:
    """Open without following symlinks, blocking on FIFOs, or touching atime."""
    try:
        return os.open(name, _FILE_FLAGS | _O_NOATIME, dir_fd=dir_fd)
    except PermissionError:
        if not _O_NOATIME:
            raise
        return os.open(name, _FILE_FLAGS, dir_fd=dir_fd)  # O_NOATIME needs ownership
