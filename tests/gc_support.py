"""Helpers shared by the gc tests: trees on disk, what a repository stores and reaches."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from pkvc.backends.local import LocalBackend
from pkvc.blobref import BlobRef
from pkvc.check import check_repository
from pkvc.pack import KIND_DATA
from pkvc.repo import Repository
from pkvc.restore import restore
from pkvc.schema.anyblob import parse_blob, schema_refs

PASSWORD = b"correct horse battery staple"  # as in conftest.py
MTIME = 1_600_000_000 * 10**9
T0 = 1_800_000_000 * 10**9  # claim dates of the gc tests


def tick(start: int = T0):
    """A claim clock that moves one second per call, from `start`."""
    n = [start]

    def clock():
        n[0] += 10**9
        return n[0]
    return clock


def write_tree(root: Path, files: dict) -> None:
    """Make `root` hold exactly `files` (relative path -> bytes), fixed mtimes."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(MTIME, MTIME), follow_symlinks=False)


def digest_tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def digest_files(files: dict) -> dict[str, str]:
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


def stored_refs(repo: Repository) -> set[BlobRef]:
    """Every blob some pack holds, read from the pack headers (not the index)."""
    found = set()
    for pack_id, size in repo.list_packs().items():
        found.update(e.ref for e in repo.read_pack_header(pack_id, size))
    return found


def reachable_refs(repo: Repository, roots) -> set[BlobRef]:
    """What the roots reach, walked independently of pkvc.gc."""
    seen, stack = set(), list(roots)
    while stack:
        ref = stack.pop()
        if ref in seen or not repo.contains(ref):
            continue
        seen.add(ref)
        if repo.locate(ref).kind != KIND_DATA:
            try:
                stack.extend(schema_refs(parse_blob(repo.get(ref))))
            except Exception:
                pass
    return seen


def pack_bytes(repo_path: Path) -> int:
    return sum(p.stat().st_size for p in (repo_path / "packs").rglob("*") if p.is_file())


def open_reader(repo_path: Path, cache: Path) -> Repository:
    """A repository opened the way `check` and `restore` should: no write lease."""
    return Repository.open(LocalBackend(repo_path), PASSWORD, cache, lease=False)


def assert_checks(repo_path: Path, cache: Path) -> None:
    with open_reader(repo_path, cache) as r:
        report = check_repository(r, read_data=True)
        assert report.ok, "\n".join(report.problems[:20])


def assert_restores(repo: Repository, root: BlobRef, expected: dict[str, str], out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    result = restore(root, out, repo)  # a lost blob is reported, not raised
    assert result.errors == []
    assert digest_tree(out) == expected


def remove_blobs(repo: Repository, refs: set[BlobRef]) -> int:
    """Drop blobs the way a gc sweep does, without its safety (tests only):
    copy the other blobs of their packs into new packs, then delete the old
    packs. Returns the pack bytes freed."""
    repo.flush()
    present = repo.list_packs()
    doomed = sorted({loc.pack_id for key, loc, _ in repo.all_locations()
                     if BlobRef.from_key(key) in refs})
    repacker = repo.repacker()
    for pack_id in doomed:
        data = repo.load_pack(pack_id)
        for e in repo.pack_entries(pack_id, data):
            if e.ref not in refs:
                repacker.add(e.ref, repo.open_pack_blob(e, data[e.offset:e.offset + e.length]),
                             e.kind)
    repacker.flush()
    for pack_id in doomed:
        repo.delete_pack(pack_id)
    repo.forget_packs(set(doomed))
    return sum(present[p] for p in doomed) - repacker.bytes_written
