"""The file-stat cache: an unchanged file costs one `stat`, not a read.

Rows live in two cache tables of the index. `files`: absolute path -> the
stat fields a file blob depends on (`tree.stat_cache_key`) and the file
blob's ref. `dirs`: absolute path -> a digest of everything a directory's
blobs are built from (its stat fields and its children's refs, computed by
the tree walker) and the directory blob's ref, so an unchanged subtree costs
no JSON and no hashing either.

A hit is trusted only while the repository still has that blob (a gc may
have removed it; a condemned blob counts as absent), and everything the
blob references goes with it, since gc keeps or drops a blob together with
what it references. So the walker asks the repository about a directory's
blob (`lookup_dir` does), and about its files' blobs only when that one is
gone or changed: an unchanged subtree costs one `has` per directory. Like every cache table, both are rebuilt as needed: a
lost or emptied cache only costs reading and hashing again, and gives the
same refs.
"""

from __future__ import annotations

import os
import struct

from pkvc.blobref import BlobRef
from pkvc.errors import PkvcError
from pkvc.repo import Repository
from pkvc.restore import iter_file_spans
from pkvc.schema.fsnodes import FileBlob
from pkvc.tree import stat_cache_key

_KEY = struct.Struct("<9q")
_DIR_KEY_SIZE = 28  # a SHA-224 digest


class FileCache:
    """`tree.StatCache` over the index; counts files with no row (new), with
    another stat (changed) and with the same one (matched: unchanged unless
    the walker finds their blob gone, `PutResult.stale_files`)."""

    def __init__(self, repo: Repository):
        self._repo = repo
        self._table = repo.cache_table("files")
        self._dirs = repo.cache_table("dirs")
        self.new = self.changed = self.matched = 0

    def lookup(self, path: bytes, st: os.stat_result) -> BlobRef | None:
        row = self._table.get(path)
        if row is None:
            self.new += 1
            return None
        key = _KEY.pack(*stat_cache_key(st))
        if not row.startswith(key) or len(row) <= len(key):
            self.changed += 1
            return None
        self.matched += 1
        return BlobRef.from_key(row[len(key):])

    def previous_chunks(self, path: bytes) -> list[tuple[int, BlobRef]] | None:
        """(size, ref) of the chunks of the file blob last recorded for
        `path`, whatever its stat: None if there is none, it has a hole, or
        it cannot be read (the walker then chunks without them)."""
        row = self._table.get(path)
        if row is None or len(row) <= _KEY.size:
            return None
        chunks: list[tuple[int, BlobRef]] = []
        try:
            blob = FileBlob.from_json(self._repo.get(BlobRef.from_key(row[_KEY.size:])))
            for size, ref, start in iter_file_spans(blob, self._repo):
                if ref is None or start:  # a hole, or part of a blob: not a chunk
                    return None
                chunks.append((size, ref))
        except (PkvcError, ValueError):
            return None
        return chunks or None

    def record(self, path: bytes, st: os.stat_result, ref: BlobRef) -> None:
        self._table.put(path, _KEY.pack(*stat_cache_key(st)) + ref.to_key())

    def lookup_dir(self, path: bytes, key: bytes) -> BlobRef | None:
        row = self._dirs.get(path)
        return None if row is None else self._present(row, key)

    def record_dir(self, path: bytes, key: bytes, ref: BlobRef) -> None:
        if len(key) != _DIR_KEY_SIZE:
            raise ValueError("a directory key is a SHA-224 digest")
        self._dirs.put(path, key + ref.to_key())

    def _present(self, row: bytes, key: bytes) -> BlobRef | None:
        """The row's ref if it was stored under `key` and the repository has it."""
        if not row.startswith(key) or len(row) <= len(key):
            return None
        ref = BlobRef.from_key(row[len(key):])
        return ref if self._repo.has(ref) else None
