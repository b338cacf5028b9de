"""Taking a snapshot: store a directory tree and sign it into its series.

Order matters for safety: the tree's blobs are flushed into packs before
the claim that names its root is written, so a claim never points at a
blob the repository does not hold, whatever moment the process dies at.

A snapshot's *added size* (what `log` shows) is a pure function of its root
and the previous snapshot's root, so it is kept in the index's `added` cache
table: `snapshot` fills the row (a first snapshot from the tree writer's
total, at no cost; a later one by comparing the two trees, which reads only
what changed), and `log` computes a missing row once (an index rebuilt from
the packs, a pulled series, a repository written by an older pkvc).
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
    if previous is not None:
        added_size(repo, previous.root, result.ref)
    elif result.cached_files == 0:  # the writer stored, and so measured, every file
        remember_added_size(repo, None, result.ref, result.file_bytes)
    # (else the stat cache gave files of another series: `log` measures once)
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
    """Content bytes of files that are new or changed from `old_root` to `new_root`.

    What `log` shows as a snapshot's added size; identical subtrees are
    skipped unread, so it costs in proportion to what changed (all of the
    tree for a first snapshot: `added_size` remembers it).
    """
    total, pending = 0, [(old_root, new_root)]
    while pending:
        old, new = pending.pop()
        if old == new:
            continue
        before = {name: (ref, node) for name, ref, node in series_mod.list_dir(repo, old)} \
            if old is not None else {}
        for name, ref, node in series_mod.list_dir(repo, new):
            prior = before.get(name)
            if prior is not None and prior[0] == ref:
                continue
            if isinstance(node, DirectoryBlob):
                old_dir = prior[0] if prior and isinstance(prior[1], DirectoryBlob) else None
                pending.append((old_dir, ref))
            elif isinstance(node, FileBlob):
                total += node.size
    return total
