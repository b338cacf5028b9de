"""Taking a snapshot: store a directory tree and sign it into its series.

Order matters for safety: the tree's blobs are flushed into packs before
the claim that names its root is written, so a claim never points at a
blob the repository does not hold, whatever moment the process dies at.

A snapshot's *added size* (what `log` shows) is a pure function of its root
and the previous snapshot's root, so it is kept in the index's `added` cache
table. `snapshot` fills the row when it costs nothing: a first snapshot's
is the tree writer's total of the files it stored, an unchanged one's is 0.
`log` computes any other row once, comparing the two trees (which reads
only what changed), and keeps it: a snapshot of changes, an index rebuilt
from the packs, a pulled series, a repository written by an older pkvc.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from pkvc import series as series_mod, tree
from pkvc.blobref import BlobRef
from pkvc.errors import UsageError
from pkvc.excludes import Excluder
from pkvc.filecache import FileCache
from pkvc.progress import NO_PROGRESS, Progress, bytes_of
from pkvc.repo import Repository
from pkvc.schema.claims import Clock
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob

_SIZE = struct.Struct(">Q")
COMPARE_AT_ONCE = 1000  # directory pairs `added_bytes` reads together (bounds its memory)


@dataclass
class SnapshotSummary:
    series: str
    series_created: bool
    claim: str
    root: str
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    excluded: int = 0
    bytes_read: int = 0
    bytes_added: int = 0  # after dedup and compression, as stored
    blobs_added: int = 0
    duration: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)


def take_snapshot(repo: Repository, signer, path: Path, series_name: str | None = None,
                  tags=(), excludes=(), progress: Progress = NO_PROGRESS,
                  clock: Clock = time.time_ns) -> SnapshotSummary:
    """Snapshot the directory at `path` into its series (created on first use)."""
    started = time.monotonic()
    path = Path(os.path.abspath(path))
    if not path.is_dir():
        raise UsageError(f"{path} is not a directory (a snapshot's root is a directory)")
    name = series_name or str(path)
    before = (repo.stats.stored_bytes, repo.stats.blobs)
    chosen, created = series_mod.ensure_series(repo, signer, name, tags, clock)
    previous = None if created else series_mod.latest_snapshot(repo, chosen)
    excluder = Excluder(path, excludes)
    cache = FileCache(repo)
    progress.start("snapshot", None, "B")
    result = tree.put_path(path, repo, bytes_of(progress, tree.BytesRead), stat_cache=cache,
                           chunker=repo.config.chunker, exclude=excluder)
    progress.finish()
    repo.flush()  # every blob of the tree is in a pack before the claim names it
    claim = series_mod.record_snapshot(repo, signer, chosen, result.ref, clock)
    if previous is None and result.cached_files == 0:  # the writer measured every file
        remember_added_size(repo, None, result.ref, result.file_bytes)
    elif previous is not None and previous.root == result.ref:  # unchanged: nothing added
        remember_added_size(repo, previous.root, result.ref, 0)
    # Else `log` measures once: comparing the trees reads every changed directory
    # (0.9 s for the benchmark's mutations of 500 files in 2 GiB, too much to add here).
    repo.flush()
    return SnapshotSummary(
        series=name, series_created=created, claim=str(claim), root=str(result.ref),
        files_new=cache.new, files_changed=cache.changed + result.stale_files,
        files_unchanged=result.cached_files,
        dirs=result.dirs, excluded=excluder.excluded, bytes_read=result.bytes_read,
        bytes_added=repo.stats.stored_bytes - before[0], blobs_added=repo.stats.blobs - before[1],
        duration=round(time.monotonic() - started, 3), errors=result.errors)


ADDED_TABLE = "added"  # u8 length + new root key + old root key (or none) -> u64 bytes


def added_size(repo: Repository, old_root: BlobRef | None, new_root: BlobRef) -> int:
    """`added_bytes`, remembered in the `added` cache table: `log` costs one
    row per snapshot, whatever the size of its tree."""
    known = known_added_size(repo, old_root, new_root)
    if known is not None:
        return known
    total = added_bytes(repo, old_root, new_root)
    remember_added_size(repo, old_root, new_root, total)
    return total


def known_added_size(repo: Repository, old_root: BlobRef | None, new_root: BlobRef) -> int | None:
    """The `added` row for these roots; None if it has none."""
    key = _added_key(old_root, new_root)
    row = repo.cache_table(ADDED_TABLE).get(key) if key is not None else None
    return _SIZE.unpack(row)[0] if row is not None and len(row) == _SIZE.size else None


def remember_added_size(repo: Repository, old_root: BlobRef | None, new_root: BlobRef,
                        total: int) -> None:
    """Keep `total`, which must equal `added_bytes(repo, old_root, new_root)`."""
    key = _added_key(old_root, new_root)
    if key is not None:  # (a ref too long for a key: measured every time)
        repo.cache_table(ADDED_TABLE).put(key, _SIZE.pack(total))


def _added_key(old_root: BlobRef | None, new_root: BlobRef) -> bytes | None:
    new = new_root.to_key()
    if len(new) > 255:
        return None
    return bytes((len(new),)) + new + (old_root.to_key() if old_root is not None else b"")


def added_bytes(repo: Repository, old_root, new_root) -> int:
    """Content bytes of files that are new or changed from `old_root` to `new_root`:
    every file of the new tree whose path holds another blob (or nothing) in
    the old tree.

    What `log` shows as a snapshot's added size. Identical subtrees are
    skipped unread, and so are the unchanged entries of a changed
    directory: an entry whose ref is also in the old directory has the same
    name there (the name is in the blob). So it costs in proportion to what
    changed (all of the tree for a first snapshot: `added_size` remembers
    it). Directories are compared up to COMPARE_AT_ONCE at a time, their
    blobs read together by pack (`get_many`).
    """
    total, pending = 0, [(old_root, new_root)]
    while pending:
        pairs = [(old, new) for old, new in pending[-COMPARE_AT_ONCE:] if old != new]
        del pending[-COMPARE_AT_ONCE:]
        members = series_mod.dir_members(
            repo, {ref for pair in pairs for ref in pair if ref is not None})
        changed = []  # (entries of the new directory not in the old, the old's not in the new)
        for old, new in pairs:
            before = members[old] if old is not None else []
            kept, now = set(before), set(members[new])
            fresh = [ref for ref in members[new] if ref not in kept]
            if fresh:
                changed.append((fresh, [ref for ref in before if ref not in now]))
        nodes = series_mod.read_nodes(
            repo, {ref for fresh, gone in changed for ref in fresh + gone})
        for fresh, gone in changed:
            prior = {nodes[ref].name: ref for ref in gone}
            for ref in fresh:
                node = nodes[ref]
                if isinstance(node, DirectoryBlob):
                    old_dir = prior.get(node.name)
                    is_dir = old_dir is not None and isinstance(nodes[old_dir], DirectoryBlob)
                    pending.append((old_dir if is_dir else None, ref))
                elif isinstance(node, FileBlob):
                    total += node.size
    return total
