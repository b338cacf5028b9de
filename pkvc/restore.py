"""Writing schema blobs back out as files, and streaming a file's bytes.

Blobs may come from anyone who could write to the repository, so restore
treats names as hostile: a name that is empty, ".", "..", or holds "/" or
NUL, two entries with one name in a directory, a directory that contains
itself, or a child that is not a file-system node raise SchemaError naming
the entry, before anything of that directory is written. Every create is
relative to an open directory fd, with O_NOFOLLOW / O_EXCL / mkdirat /
symlinkat, so no symlink, whether restored a moment ago or already in the
destination, is ever followed: nothing is written outside `dest_dir`.

Reads go by batch, not by blob, when the source has `get_many` (the
repository reads them by pack): a directory's entries together, and file
contents in batches of pieces written at their offsets as blobs arrive.
The walk (reading and checking directories, making them, planning each
file's pieces) runs on the caller's thread; a writer thread creates the
files and writes, sizes and closes them, so the two overlap, and a batch's
reads start as soon as it is planned (`eager`), while the writer is still
on the batches before.

Order: contents first, then mode and mtime of each file; a directory's
owner, mode and mtime when all of it is done (deepest first), so writing
children cannot disturb them and a read-only directory can still be filled.
Ownership is set only when running as root, to ids that exist here (owner
name first, as Perkeep's MapUid does); failures there are ignored. Holes
stay holes (seek past them, truncate to size). Files sharing a
`pkvcLinkGroup` are hard-linked to the first one restored.

Damage loses only what it touches, as in restic and borg: a data or bytes
blob that is missing or damaged (BlobNotFoundError, IntegrityError) fails
the files that need it, a directory whose entries cannot be read is not
made, an entry blob that cannot be read is reported against its directory;
each is listed in `RestoreResult.errors` and everything else is restored.
A file whose content could not all be written is removed, with its hard
links, so every file left is complete (restic reports such a file but
leaves what it wrote, at full size, where it looks whole). Anything else
stops the restore: the top blob unreadable, the storage failing, a
hostile blob.
"""

from __future__ import annotations

import gc
import grp
import os
import pwd
import queue
import stat as statmod
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from pkvc.blobref import BlobRef
from pkvc.errors import BlobNotFoundError, IntegrityError, PkvcError, SchemaError
from pkvc.schema.anyblob import SchemaBlob, parse_blob
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob, SpecialBlob, SymlinkBlob
from pkvc.schema.names import name_problem
from pkvc.schema.parts import BytesBlob
from pkvc.schema.staticset import StaticSetBlob

MAX_BYTES_DEPTH = 32      # nesting of bytes blobs; pkvc's own files need ~3
MAX_SET_DEPTH = 8         # nesting of mergeSets; Perkeep's rule needs 2 for 10^8 entries
STREAM_BLOCK = 1 << 20    # holes are streamed as zeros in blocks of this size
LISTING_BATCH = 4096      # directory entries read together
AHEAD_LIMIT = 4 * LISTING_BATCH  # listing blobs read ahead and not yet used, at most
BATCH_PIECES = 4096       # pieces of file content fetched together (see _Content)
WRITER_THREAD = True
BATCH_OPEN = 256          # files and directories held open until their batch is written
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NODE_TYPES = (FileBlob, DirectoryBlob, SymlinkBlob, SpecialBlob)
Node = FileBlob | DirectoryBlob | SymlinkBlob | SpecialBlob


class BlobSource(Protocol):
    def get(self, ref: BlobRef) -> bytes:
        """The blob's bytes, already checked against `ref`."""

    # Optional: `get_many(refs, skip_missing=..., eager=...)` yielding (ref, bytes)
    # of each, in any order (the repository reads them by pack), the ones not
    # stored left out with `skip_missing`, the reads started at once with
    # `eager`; without it, `get` is called for each.


# A blob that is missing or damaged: only the entries that need it are lost
# (reported, the rest restores). Any other error (the storage failing, a
# hostile blob) stops the restore.
_UNREADABLE = (BlobNotFoundError, IntegrityError)


def _get_many(source: BlobSource, refs, skip_missing: bool = False,
              eager: bool = False) -> Iterator[tuple[BlobRef, bytes]]:
    many = getattr(source, "get_many", None)
    if many is not None:
        return many(refs, skip_missing=skip_missing, eager=eager)
    return _get_each(source, refs, skip_missing)


def _get_each(source: BlobSource, refs, skip_missing: bool) -> Iterator[tuple[BlobRef, bytes]]:
    for ref in dict.fromkeys(refs):
        try:
            data = source.get(ref)
        except BlobNotFoundError:
            if skip_missing:
                continue
            raise
        yield ref, data


def _read_each(source: BlobSource, refs,
               unreadable: Callable[[BlobRef, PkvcError], None]) -> Iterator[tuple[BlobRef, bytes]]:
    """(ref, bytes) of each blob that can be read, batched as `_get_many`
    reads them; each one missing or damaged goes to `unreadable` instead,
    once. The blobs are looked up now, on the caller's thread; the iterator
    may be consumed on another. A damaged blob ends a batched read (and
    may take its neighbours with it), so what the batch did not deliver
    by then is read again one by one: only the bad blob itself is lost."""
    wanted = dict.fromkeys(refs)
    return _each_readable(source, wanted, _get_many(source, wanted, skip_missing=True), unreadable)


def _each_readable(source: BlobSource, wanted: dict, batch: Iterator, unreadable) -> Iterator:
    """`_read_each` of the blobs `wanted`, from `batch`, their `_get_many`."""
    got: set[BlobRef] = set()
    damaged = False
    try:
        for ref, data in batch:
            got.add(ref)
            yield ref, data
    except _UNREADABLE:
        damaged = True
    finally:
        close = getattr(batch, "close", None)
        if close is not None:
            close()  # cancels reads still under way
    for ref in wanted:
        if ref in got:
            continue
        if not damaged:  # left out of the batch as missing
            unreadable(ref, BlobNotFoundError(f"blob {ref} is not in the repository"))
            continue
        try:
            data = source.get(ref)
        except _UNREADABLE as e:
            unreadable(ref, e)
            continue
        yield ref, data


@dataclass(frozen=True)
class BytesWritten:
    path: str
    n: int


@dataclass(frozen=True)
class EntryRestored:
    path: str
    kind: str


@dataclass(frozen=True)
class EntryNotRestored:
    path: str
    message: str


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    hardlinks: int = 0
    bytes_written: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # on purpose: sockets


# -- reading file content ----------------------------------------------------

def iter_file_pieces(blob: "FileBlob | BytesBlob", source: BlobSource) -> Iterator[tuple[int, memoryview | None]]:
    """(size, data) runs of a file's content in order; data None is a hole."""
    yield from _pieces(blob.parts, source, 0, blob.size, 0, frozenset())


def iter_file_spans(blob: "FileBlob | BytesBlob", source: BlobSource
                    ) -> Iterator[tuple[int, BlobRef | None, int]]:
    """(size, data blob ref or None for a hole, offset in that blob) runs of a
    file's content in order, nested `bytes` blobs read and resolved (at most
    MAX_BYTES_DEPTH deep); the data blobs are not read."""
    return _spans(blob.parts, source, 0, blob.size, 0, frozenset())


def iter_file_bytes(ref: BlobRef, source: BlobSource, block: int = STREAM_BLOCK) -> Iterator[bytes]:
    """A `file` or `bytes` blob's content as byte strings (holes as zeros)."""
    blob = parse_blob(source.get(ref))
    if not isinstance(blob, (FileBlob, BytesBlob)):
        raise SchemaError(f"{ref} is a {blob.camli_type}, not a file")
    for size, data in iter_file_pieces(blob, source):
        if data is not None:
            yield bytes(data)
            continue
        while size > 0:
            n = min(size, block)
            yield bytes(n)
            size -= n


def read_file_bytes(ref: BlobRef, source: BlobSource) -> bytes:
    """All of a small file's content (use iter_file_bytes for big ones)."""
    return b"".join(iter_file_bytes(ref, source))


def _pieces(parts, source, skip: int, take: int, depth: int, seen: frozenset):
    for n, ref, start in _spans(parts, source, skip, take, depth, seen):
        yield n, None if ref is None else _slice(source.get(ref), ref, start, n)


def _spans(parts, source, skip: int, take: int, depth: int, seen: frozenset):
    """(size, blob ref or None for a hole, offset in that blob) runs of content,
    nested bytes blobs resolved (they are read here, the data blobs are not)."""
    for part in parts:
        if take <= 0:
            return
        if skip >= part.size:
            skip -= part.size
            continue
        n = min(part.size - skip, take)
        if part.is_hole:
            yield n, None, 0
        elif part.blob_ref is not None:
            yield n, part.blob_ref, part.offset + skip
        else:
            yield from _nested(part.bytes_ref, source, part.offset + skip, n, depth, seen)
        take -= n
        skip = 0


def _slice(data: bytes, ref: BlobRef, start: int, n: int) -> memoryview:
    if start + n > len(data):
        raise SchemaError(f"a part wants bytes {start}..{start + n} of {ref}, which has {len(data)}")
    return memoryview(data)[start:start + n]


def _nested(ref: BlobRef, source, skip: int, take: int, depth: int, seen: frozenset):
    if depth >= MAX_BYTES_DEPTH or ref in seen:
        raise SchemaError(f"bytes blob {ref} nests too deep or contains itself")
    sub = parse_blob(source.get(ref))
    if not isinstance(sub, BytesBlob):
        raise SchemaError(f"bytesRef {ref} is a {sub.camli_type}, not bytes")
    got = 0
    for span in _spans(sub.parts, source, skip, take, depth + 1, seen | {ref}):
        got += span[0]
        yield span
    if got != take:
        raise SchemaError(f"bytes blob {ref} is shorter than the part that uses it")


# -- restoring trees -------------------------------------------------------------

def restore(ref: BlobRef, dest_dir, source: BlobSource, progress: Callable | None = None, *,
            name: bytes | str | None = None, overwrite: bool = False) -> RestoreResult:
    """Restore `ref` into `dest_dir`: a directory's contents, or the one node.

    `name` overrides a single node's file name. Existing directories are
    merged into; other existing entries are replaced only with `overwrite`.
    Per-entry I/O failures and missing or damaged blobs below the top are
    listed in `RestoreResult.errors`; hostile or malformed blobs raise SchemaError.
    """
    with _collector_paused():
        return _Restorer(source, progress, overwrite).run(ref, os.fsencode(os.fspath(dest_dir)),
                                                          os.fsencode(name) if name is not None else None)


@contextmanager
def _collector_paused():
    """The cyclic garbage collector off while restoring: the restore makes no
    cycles of its own, and the collector's passes over its many live objects
    (listings, parsed nodes, planned batches) cost the walk's thread about an
    eighth of its CPU (2 GiB bench tree: 6.2-7.0 s -> 5.4-6.0 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class _DirFrame:
    fd: int
    path: bytes
    rel: tuple[bytes, ...]
    blob: DirectoryBlob | None          # None: dest_dir that existed, leave its metadata
    ref: BlobRef | None
    entries: list[tuple[bytes, BlobRef, Node]]
    fresh: bool = False  # made by this restore: nothing in it to look for or clear
    next: int = 0


@dataclass
class _LinkGroup:
    """The first restored file of a hard-link group, and the paths linked to it."""

    rel: tuple  # its directory, from the top
    name: bytes
    path: bytes
    linked: list[tuple[tuple, bytes, bytes]] = field(default_factory=list)  # (rel, name, path)


class _Restorer:
    def __init__(self, source: BlobSource, progress, overwrite: bool):
        self.source, self.progress, self.overwrite = source, progress, overwrite
        self.result = RestoreResult()
        self.links: dict[str, _LinkGroup] = {}
        self.root_fd = -1
        self.as_root = os.geteuid() == 0
        self.lock = threading.Lock()  # results, events and link groups: both threads use them
        self.open_fds: set[int] = set()  # files and directories opened here, not yet closed
        self.content = _Content(self)
        self._ids: dict[tuple, int] = {}  # (kind, name, number) -> local id
        self.ahead: dict[BlobRef, bytes] = {}  # subdirectories' entry blobs, read ahead
        self.ahead_sets: dict[BlobRef, SchemaBlob] = {}  # and their static-sets, parsed

    def run(self, ref: BlobRef, dest: bytes, name: bytes | None) -> RestoreResult:
        blob = self._node(ref, dest)
        entries = self._listing(blob, ref, dest) if isinstance(blob, DirectoryBlob) else None
        if entries is None:
            name = self._top_name(blob, ref, name)
        created = not os.path.lexists(dest)
        try:
            if created:
                os.makedirs(dest)
            self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise PkvcError(f"cannot restore into {os.fsdecode(dest)}: {e.strerror}") from None
        try:
            if entries is not None:
                self._walk(_DirFrame(self.root_fd, dest, (), blob if created else None, ref, entries,
                                     fresh=created))
            else:
                self._place_top(blob, ref, dest, name)
            self.content.finish()
        finally:
            self.content.abandon()
            os.close(self.root_fd)
        return self.result

    @staticmethod
    def _top_name(blob: Node, ref: BlobRef, name: bytes | None) -> bytes:
        name = name if name is not None else blob.name
        problem = name_problem(name)
        if problem:
            raise SchemaError(f"{blob.camli_type} {ref} cannot be restored by name {name!r}: {problem}")
        return name

    def _place_top(self, blob: Node, ref: BlobRef, dest: bytes, name: bytes) -> None:
        self._place(self.root_fd, (), os.path.join(dest, name), name, blob)

    def _emit(self, event) -> None:
        if self.progress is not None:
            with self.lock:
                self.progress(event)

    def _fail(self, path: bytes, message: str) -> None:
        shown = os.fsdecode(path)
        with self.lock:
            self.result.errors.append((shown, message))
        self._emit(EntryNotRestored(shown, message))

    def _open(self, name: bytes, flags: int, dir_fd: int, mode: int = 0o600) -> int:
        fd = os.open(name, flags, mode, dir_fd=dir_fd)
        self.open_fds.add(fd)
        return fd

    def _close(self, fd: int) -> None:
        self.open_fds.discard(fd)
        os.close(fd)

    # reading and checking a directory before writing any of it

    def _node(self, ref: BlobRef, where: bytes) -> Node:
        return self._parsed_node(ref, self.source.get(ref), where)

    @staticmethod
    def _parsed_node(ref: BlobRef, data: bytes, where: bytes) -> Node:
        blob = parse_blob(data)
        if not isinstance(blob, _NODE_TYPES):
            raise SchemaError(f"{os.fsdecode(where)}: {ref} is a {blob.camli_type}, "
                              "not a file, directory, symlink, fifo or socket")
        return blob

    def _listing(self, blob: DirectoryBlob, ref: BlobRef, path: bytes):
        """The directory's (name, ref, node) entries, checked. An entry or a
        part of the listing that cannot be read (missing or damaged) is
        reported against the directory and left out; if its entries blob
        itself cannot be read, that error is raised."""
        entries, names = [], set()
        for member, child in self._nodes(self._members(blob.entries, 0, set(), path), path):
            problem = name_problem(child.name)
            if problem:
                raise SchemaError(f"directory {os.fsdecode(path)} ({ref}): entry {member} "
                                  f"has a refused name {child.name!r}: {problem}")
            if child.name in names:
                raise SchemaError(f"directory {os.fsdecode(path)} ({ref}): two entries "
                                  f"named {child.name!r}")
            names.add(child.name)
            entries.append((child.name, member, child))
        self._read_ahead(entries)
        return entries

    def _read_ahead(self, entries: list[tuple[bytes, BlobRef, Node]]) -> None:
        """Read the listings of a directory's subdirectories together before
        the walk enters them one by one: two batched reads in place of two
        small ones per subdirectory. Nothing is checked here; what is read
        is checked when it is used, and a failed read is simply tried again then."""
        sets = [child.entries for _, _, child in entries if isinstance(child, DirectoryBlob)]
        if len(sets) < 2 or len(self.ahead) + len(self.ahead_sets) >= AHEAD_LIMIT:
            return
        members: dict[BlobRef, None] = {}
        try:
            for ref, data in _get_many(self.source, sets):
                blob = parse_blob(data)
                self.ahead_sets[ref] = blob  # (parsed once: a third of a small listing's cost)
                if isinstance(blob, StaticSetBlob) and not blob.merge_sets:
                    members.update(dict.fromkeys(blob.members))
            wanted = [ref for ref in members if ref not in self.ahead][:LISTING_BATCH]
            self.ahead.update(_get_many(self.source, wanted))
        except (PkvcError, ValueError):
            pass

    def _read_listed(self, refs: list[BlobRef], where: bytes) -> dict[BlobRef, bytes]:
        """The blobs' bytes: those read ahead, and the others read now, together;
        one that cannot be read is reported and left out."""
        found, wanted = {}, []
        for ref in refs:
            data = self.ahead.pop(ref, None)
            if data is not None:
                found[ref] = data
            elif ref not in found:
                wanted.append(ref)
        if wanted:
            found.update(_read_each(self.source, wanted, lambda ref, error: self._fail(
                where, f"an entry could not be read: {error}")))
        return found

    def _nodes(self, members: list[BlobRef], where: bytes) -> Iterator[tuple[BlobRef, Node]]:
        """Each member's node in order; read LISTING_BATCH at a time, together."""
        for at in range(0, len(members), LISTING_BATCH):
            batch = members[at:at + LISTING_BATCH]
            found = self._read_listed(batch, where)
            for member in batch:
                if member in found:
                    yield member, self._parsed_node(member, found[member], where)

    def _members(self, set_ref: BlobRef, depth: int, seen: set, where: bytes) -> list[BlobRef]:
        if depth > MAX_SET_DEPTH or set_ref in seen:
            raise SchemaError(f"static-set {set_ref} nests too deep or repeats")
        seen.add(set_ref)
        blob = self.ahead_sets.pop(set_ref, None)
        if blob is None:
            blob = parse_blob(self.source.get(set_ref))
        if not isinstance(blob, StaticSetBlob):
            raise SchemaError(f"directory entries {set_ref} is a {blob.camli_type}, not a static-set")
        if not blob.merge_sets:
            return list(blob.members)
        members = []
        for sub in blob.merge_sets:
            try:
                members += self._members(sub, depth + 1, seen, where)
            except _UNREADABLE as e:
                self._fail(where, f"some entries could not be read: {e}")
        return members

    # the walk: one open fd per level, iteratively

    def _walk(self, top: _DirFrame) -> None:
        """Depth first; on an error the open directories are closed by
        `_Content.abandon`, once the writer no longer uses them."""
        stack = [top]
        while stack:
            frame = stack[-1]
            if frame.next < len(frame.entries):
                name, ref, blob = frame.entries[frame.next]
                frame.next += 1
                child = self._enter(frame, name, ref, blob, stack)
                if child is not None:
                    stack.append(child)
                continue
            stack.pop()
            self.content.finish_dir(frame)  # after its files' contents

    def _enter(self, frame: _DirFrame, name: bytes, ref: BlobRef, blob: Node, stack) -> _DirFrame | None:
        path = os.path.join(frame.path, name)
        if not isinstance(blob, DirectoryBlob):
            self._place(frame.fd, frame.rel, path, name, blob, frame.fresh)
            return None
        if any(f.ref == ref for f in stack):
            raise SchemaError(f"directory {os.fsdecode(path)} ({ref}) contains itself")
        try:
            entries = self._listing(blob, ref, path)
        except _UNREADABLE as e:
            self._fail(path, f"directory not restored, its entries cannot be read: {e}")
            return None
        try:
            fd, fresh = self._make_dir(frame.fd, name, frame.fresh)
        except OSError as e:
            self._fail(path, e.strerror or str(e))
            return None
        return _DirFrame(fd, path, frame.rel + (name,), blob, ref, entries, fresh)

    def _make_dir(self, parent_fd: int, name: bytes, parent_fresh: bool) -> tuple[int, bool]:
        """An fd of the directory, and whether this made it."""
        existing = None if parent_fresh else _lstat_or_none(parent_fd, name)
        if existing is not None and statmod.S_ISDIR(existing.st_mode):
            return self._open(name, _DIR_FLAGS, parent_fd), False
        if existing is not None:
            self._clear(parent_fd, name, existing)
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        return self._open(name, _DIR_FLAGS, parent_fd), True

    def _finish_dir(self, frame: _DirFrame) -> None:
        try:
            if frame.blob is not None:
                self._apply_meta(frame.fd, frame.blob, 0o755)
                self.result.dirs += 1
                self._emit(EntryRestored(os.fsdecode(frame.path), "directory"))
        except OSError as e:
            self._fail(frame.path, e.strerror or str(e))
        finally:
            if frame.fd != self.root_fd:
                self._close(frame.fd)

    # leaves

    def _place(self, dir_fd: int, rel: tuple, path: bytes, name: bytes, blob: Node,
               fresh: bool = False) -> None:
        """`fresh`: `dir_fd` was made by this restore, so `name` cannot exist yet."""
        try:
            existing = None if fresh else _lstat_or_none(dir_fd, name)
            if existing is not None:
                self._clear(dir_fd, name, existing)
            if isinstance(blob, FileBlob):
                if not self._place_file(dir_fd, rel, path, name, blob):
                    return  # its content is written (and reported) with its batch
            elif isinstance(blob, SymlinkBlob):
                self._place_symlink(dir_fd, name, blob)
            elif blob.kind == "fifo":
                self._place_fifo(dir_fd, name, blob)
            else:
                self.result.skipped.append((os.fsdecode(path), "sockets are not restored"))
                self._emit(EntryNotRestored(os.fsdecode(path), "sockets are not restored"))
                return
        except OSError as e:
            self._fail(path, e.strerror or str(e))
            return
        self._emit(EntryRestored(os.fsdecode(path), blob.camli_type))

    def _clear(self, dir_fd: int, name: bytes, existing: os.stat_result) -> None:
        shown = os.fsdecode(name)
        if statmod.S_ISDIR(existing.st_mode) or not self.overwrite:
            raise PkvcError(f"{shown} already exists in the destination; restore into an "
                            "empty directory or allow overwriting")
        os.unlink(name, dir_fd=dir_fd)  # unlinks a symlink itself, never its target

    def _place_file(self, dir_fd: int, rel: tuple, path: bytes, name: bytes, blob: FileBlob) -> bool:
        """A hard link (True: done), or a new file whose content is queued.
        The writer thread creates a file, unless it is the first of a link
        group: that one is created here, so that it exists to be linked to."""
        f = _PendingFile(blob, path, dir_fd, name)
        group = blob.link_group
        if group is not None:
            with self.lock:
                if self._link(dir_fd, name, group):
                    self.links[group].linked.append((rel, name, path))
                    return True
                f.fd = self._open(name, _NEW_FILE_FLAGS, dir_fd)
                if group not in self.links:
                    self.links[group] = _LinkGroup(rel, name, path)
        self.content.add(f)
        return False

    def _file_failed(self, f: "_PendingFile", message: str, remove: bool) -> None:
        """A file could not be restored: so neither could its hard links made
        meanwhile (they are the same file); later ones get copies. With
        `remove` (its content is not all there) the file and those links are
        removed, so that nothing half-written is left looking whole."""
        self._fail(f.path, message)
        if remove:
            _ignore_errors(os.unlink, f.name, dir_fd=f.dir_fd)
            self.result.bytes_written -= f.written  # the writer's own count
        group = f.blob.link_group
        with self.lock:
            if group is None or group not in self.links or self.links[group].path != f.path:
                return
            linked = self.links.pop(group).linked
            self.result.hardlinks -= len(linked)
        for rel, name, path_linked in linked:
            if remove:
                self._unlink_rel(rel, name)
            self._fail(path_linked, f"hard link to {os.fsdecode(f.path)}, which was not restored")

    def _unlink_rel(self, rel: tuple, name: bytes) -> None:
        try:
            dir_fd = self._open_rel(rel)
        except OSError:
            return
        try:
            _ignore_errors(os.unlink, name, dir_fd=dir_fd)
        finally:
            if dir_fd != self.root_fd:
                os.close(dir_fd)

    def _link(self, dir_fd: int, name: bytes, group: str) -> bool:
        """Hard-link to the group's first file; False to write a copy instead
        (called holding `lock`)."""
        first = self.links.get(group)
        if first is None:
            return False
        rel, first_name = first.rel, first.name
        try:
            src_fd = self._open_rel(rel)
        except OSError:
            return False
        try:
            os.link(first_name, name, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return False
        finally:
            if src_fd != self.root_fd:
                os.close(src_fd)
        self.result.hardlinks += 1
        return True

    def _open_rel(self, rel: tuple) -> int:
        """An fd for a restored directory, walked from the top without following links."""
        fd = self.root_fd
        for part in rel:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            if fd != self.root_fd:
                os.close(fd)
            fd = child
        return fd

    def _place_symlink(self, dir_fd: int, name: bytes, blob: SymlinkBlob) -> None:
        os.symlink(blob.target, name, dir_fd=dir_fd)
        uid, gid = self._owner(blob)
        if uid != -1 or gid != -1:
            _ignore_errors(os.chown, name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        if blob.meta.mtime is not None:
            ns = blob.meta.mtime.ns
            _ignore_errors(os.utime, name, ns=(ns, ns), dir_fd=dir_fd, follow_symlinks=False)
        self.result.symlinks += 1

    def _place_fifo(self, dir_fd: int, name: bytes, blob: SpecialBlob) -> None:
        os.mkfifo(name, 0o600, dir_fd=dir_fd)
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if not statmod.S_ISFIFO(os.fstat(fd).st_mode):
                raise OSError(0, "replaced while being restored")
            self._apply_meta(fd, blob, 0o644)
        finally:
            os.close(fd)
        self.result.specials += 1

    # metadata

    def _apply_meta(self, fd: int, blob: Node, default_mode: int) -> None:
        meta = blob.meta
        uid, gid = self._owner(blob)
        if uid != -1 or gid != -1:
            _ignore_errors(os.fchown, fd, uid, gid)  # before chmod: chown clears setuid
        os.fchmod(fd, meta.permission if meta.permission is not None else default_mode)
        if meta.mtime is not None:
            os.utime(fd, ns=(meta.mtime.ns, meta.mtime.ns))

    def _owner(self, blob: Node) -> tuple[int, int]:
        if not self.as_root:
            return -1, -1
        meta, ids = blob.meta, self._ids
        user, group = ("u", meta.owner, meta.uid), ("g", meta.group, meta.gid)
        if user not in ids:  # each lookup re-reads /etc/passwd: once per owner is enough
            ids[user] = _local_id(meta.owner, meta.uid, pwd.getpwnam, pwd.getpwuid, "pw_uid")
        if group not in ids:
            ids[group] = _local_id(meta.group, meta.gid, grp.getgrnam, grp.getgrgid, "gr_gid")
        return ids[user], ids[group]


@dataclass(eq=False)
class _PendingFile:
    blob: FileBlob
    path: bytes
    dir_fd: int
    name: bytes
    fd: int = -1    # opened by the writer thread (here already if it heads a link group)
    size: int = 0   # where its content ends (known once all of it is queued)
    complete: bool = False
    written: int = 0  # bytes of content written so far
    failed: str | None = None  # why its content is not all written: it is removed, reported


@dataclass
class _Batch:
    """What the writer thread does in one go, in this order."""

    new: list[_PendingFile]   # files to create, in walk order
    pieces: dict              # blob ref -> [(file, offset in file, offset in blob, size)]
    reads: Iterator | None    # their batched read, started at once (`eager`)
    data: Iterator | None     # (ref, bytes) of those blobs from it, unreadable ones reported
    done: list[_PendingFile]  # files all of whose pieces are written by now
    dirs: list[_DirFrame]     # directories all of whose files are done by now


class _Content:
    """File contents written in batches, as restic's restorer does: the data
    blobs of many files are fetched together (`get_many`: in pack order, in
    a few threads) and each piece is written at its offset as it arrives.
    Files stay open until their batch is written, then get their size and
    metadata; directories popped meanwhile get theirs after that. A batch
    holds at most BATCH_PIECES pieces and BATCH_OPEN open files and
    directories (a bigger file spans batches), never the data itself.

    The walk plans batches here (and looks their blobs up: the index stays
    on the caller's thread); `_Writer` carries them out behind it."""

    def __init__(self, restorer: "_Restorer"):
        self.r = restorer
        self.files: list[_PendingFile] = []
        self.new: list[_PendingFile] = []
        self.dirs: list[_DirFrame] = []
        self.pieces: dict[BlobRef, list[tuple[_PendingFile, int, int, int]]] = {}
        self.count = 0
        self.writer = _Writer(restorer)

    def add(self, f: _PendingFile) -> None:
        """Queue a new file's content (the file now belongs to this object)."""
        self.files.append(f)
        self.new.append(f)
        pos = 0
        try:
            for n, ref, start in _spans(f.blob.parts, self.r.source, 0, f.blob.size, 0, frozenset()):
                if ref is not None:
                    self.pieces.setdefault(ref, []).append((f, pos, start, n))
                    self.count += 1
                    if self.count >= BATCH_PIECES:
                        self.flush()
                pos += n
        except _UNREADABLE as e:  # a bytes blob of its parts: the rest is not queued
            f.failed = str(e)
        f.size, f.complete = pos, True
        if len(self.files) + len(self.dirs) >= BATCH_OPEN:
            self.flush()

    def finish_dir(self, frame: _DirFrame) -> None:
        self.dirs.append(frame)
        if len(self.files) + len(self.dirs) >= BATCH_OPEN:
            self.flush()

    def flush(self) -> None:
        pieces, self.pieces, self.count = self.pieces, {}, 0
        reads = data = None
        if pieces:  # read from now on, while the writer is still on the batches before
            reads = _get_many(self.r.source, pieces, True, eager=True)
            data = _each_readable(self.r.source, pieces, reads, partial(_lost, pieces))
        done = [f for f in self.files if f.complete]
        self.files = [f for f in self.files if not f.complete]
        batch = _Batch(self.new, pieces, reads, data, done, self.dirs)
        self.new, self.dirs = [], []
        self.writer.submit(batch)

    def finish(self) -> None:
        """Write what is queued and wait for the writer; its error, if any, is raised here."""
        self.flush()
        self.writer.finish()

    def abandon(self) -> None:
        """At the end, or after an error: stop the writer, close whatever is still open."""
        self.writer.stop()
        for fd in list(self.r.open_fds):
            self.r._close(fd)
        self.files, self.new, self.dirs, self.pieces = [], [], [], {}


class _Writer:
    """The thread that creates files and writes their contents, batch after
    batch, while the walk plans the next ones: opening, writing, truncating,
    chmod and close release the GIL, so they overlap the walk's Python work.
    At most one batch waits for it. A missing or damaged data blob fails
    only the files that need it; any other error of the writer (the storage
    failing) is raised on the walk's thread at the next batch or at the
    end; a stop (an error or Ctrl-C there) ends it between two blobs."""

    def __init__(self, restorer: "_Restorer"):
        self.r = restorer
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.stopping = False

    def submit(self, batch: _Batch) -> None:
        self._raise_error()
        if not WRITER_THREAD:
            self._write_batch(batch)
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="pkvc-restore-write", daemon=True)
            self.thread.start()
        self.queue.put(batch)

    def finish(self) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None
        self._raise_error()

    def stop(self) -> None:
        self.stopping = True
        if self.thread is None:
            return
        try:
            while True:  # batches not started: their files are closed by `abandon`
                batch = self.queue.get_nowait()
                if batch is not None and batch.reads is not None:
                    batch.reads.close()  # cancels its reads
        except queue.Empty:
            pass
        self.queue.put(None)
        self.thread.join()
        self.thread = None

    def _raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.stopping or self.error is not None:
                continue
            try:
                self._write_batch(batch)
            except BaseException as e:  # noqa: BLE001 - raised again on the walk's thread
                self.error = e

    def _write_batch(self, batch: _Batch) -> None:
        r = self.r
        for f in batch.new:
            if f.fd < 0 and f.failed is None:
                try:
                    f.fd = r._open(f.name, _NEW_FILE_FLAGS, f.dir_fd)
                except OSError as e:
                    f.failed = e.strerror or str(e)
        if batch.data is not None:
            try:
                self._write(batch.pieces, batch.data)
            finally:
                batch.data.close()  # cancels reads still under way
        if self.stopping:
            return
        for f in batch.done:
            self._finish(f)
        for frame in batch.dirs:  # deepest first, as they were popped
            r._finish_dir(frame)

    def _write(self, pieces: dict, data: Iterator) -> None:
        result, emit = self.r.result, self.r._emit
        for ref, blob_data in data:
            if self.stopping:
                return
            for f, pos, start, n in pieces[ref]:
                piece = _slice(blob_data, ref, start, n)
                if f.failed is not None:
                    continue
                try:
                    _pwrite_all(f.fd, piece, pos)
                except OSError as e:
                    f.failed = e.strerror or str(e)
                    continue
                result.bytes_written += n
                f.written += n
                emit(BytesWritten(os.fsdecode(f.path), n))

    def _finish(self, f: _PendingFile) -> None:
        """Its size, then its metadata, then close it; or, if its content is
        not all written, remove it. A file whose metadata alone failed stays."""
        r, created = self.r, f.fd >= 0
        if f.failed is None and f.written != f.size:  # (a new file: all written, it has its size)
            try:
                os.ftruncate(f.fd, f.size)  # keeps a trailing hole a hole
            except OSError as e:
                f.failed = e.strerror or str(e)
        message = f.failed
        try:
            if message is None:
                r._apply_meta(f.fd, f.blob, 0o644)
                r.result.files += 1
        except OSError as e:
            message = e.strerror or str(e)
        finally:
            if created:
                r._close(f.fd)
        if message is None:
            r._emit(EntryRestored(os.fsdecode(f.path), f.blob.camli_type))
        else:
            r._file_failed(f, message, remove=created and f.failed is not None)


def _lost(pieces: dict, ref: BlobRef, error: PkvcError) -> None:
    """A data blob cannot be read: the files it belongs to fail (writer thread)."""
    for f, _, _, _ in pieces[ref]:
        if f.failed is None:
            f.failed = str(error)


def _local_id(name, number, by_name, by_id, attr: str) -> int:
    """The local id for a stored owner: by name first, else the number if it exists."""
    if name:
        try:
            return getattr(by_name(name), attr)
        except KeyError:
            pass
    if number is not None:
        try:
            by_id(number)
            return number
        except (KeyError, OverflowError):
            pass
    return -1


def _lstat_or_none(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _pwrite_all(fd: int, data, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def _ignore_errors(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except OSError:
        pass
