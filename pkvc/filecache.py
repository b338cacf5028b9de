"""The file-stat cache: an unchanged file costs one `stat`, not a read.

Rows live in the index's `files` cache table: absolute path -> the stat
fields a file blob depends on (`tree.stat_cache_key`) and the file blob's
ref. A hit is trusted only while the repository still has that blob (a gc
may have removed it; a condemned blob counts as absent), and everything
the file blob references goes with it, since gc keeps or drops a file
blob's parts together with it.
"""

from __future__ import annotations

import os
import struct

from pkvc.blobref import BlobRef
from pkvc.repo import Repository
from pkvc.tree import stat_cache_key

_KEY = struct.Struct("<9q")


class FileCache:
    """`tree.StatCache` over the index; counts new, changed and unchanged files."""

    def __init__(self, repo: Repository):
        self._repo = repo
        self._table = repo.cache_table("files")
        self.new = self.changed = self.unchanged = 0

    def lookup(self, path: bytes, st: os.stat_result) -> BlobRef | None:
        row = self._table.get(path)
        if row is None:
            self.new += 1
            return None
        if row[:_KEY.size] != _KEY.pack(*stat_cache_key(st)):
            self.changed += 1
            return None
        ref = BlobRef.from_key(row[_KEY.size:])
        if not self._repo.has(ref):
            self.changed += 1
            return None
        self.unchanged += 1
        return ref

    def record(self, path: bytes, st: os.stat_result, ref: BlobRef) -> None:
        self._table.put(path, _KEY.pack(*stat_cache_key(st)) + ref.to_key())
