"""What a snapshot leaves out: gitignore patterns, `.pkvcignore`, cache dirs.

Patterns use gitignore syntax (pathspec's GitIgnoreSpec): those given on
the command line apply from the snapshot's top; a `.pkvcignore` file in
any directory applies to that directory's subtree, as `.gitignore` does.
A directory holding a valid `CACHEDIR.TAG` (https://bford.info/cachedir/)
is skipped whole, as restic's and borg's `--exclude-caches` do.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pathspec

IGNORE_FILE = b".pkvcignore"
CACHEDIR_TAG = b"CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


def _spec(lines) -> pathspec.GitIgnoreSpec | None:
    lines = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return None
    import pathspec  # only when there are patterns: most snapshots have none
    return pathspec.GitIgnoreSpec.from_lines(lines)


class Excluder:
    """Callable `(relative path, is_dir) -> bool` for `tree.put_path(exclude=...)`."""

    def __init__(self, top, patterns=(), ignore_files: bool = True, exclude_caches: bool = True):
        self.top = os.fsencode(os.path.abspath(os.fspath(top)))
        self.ignore_files = ignore_files
        self.exclude_caches = exclude_caches
        self._active: dict[bytes, tuple] = {}  # directory -> its active specs, the top included
        self._given = _spec(patterns)
        self.excluded = 0

    def __call__(self, rel: bytes, is_dir: bool) -> bool:
        if self._matches(rel, is_dir) or (is_dir and self.exclude_caches and self._is_cache(rel)):
            self.excluded += 1
            return True
        return False

    def _matches(self, rel: bytes, is_dir: bool) -> bool:
        active = self._active_specs(rel.rpartition(b"/")[0])
        if self._given is None and not active:
            return False
        slash = "/" if is_dir else ""
        if self._given is not None and self._given.match_file(os.fsdecode(rel) + slash):
            return True
        for cut, spec in active:
            if spec.match_file(os.fsdecode(rel[cut:]) + slash):
                return True
        return False

    def _active_specs(self, rel_dir: bytes) -> tuple:
        """(prefix length, spec) of every `.pkvcignore` from the top down to
        `rel_dir`, computed once per directory."""
        active = self._active.get(rel_dir)
        if active is None:
            active = self._active_specs(rel_dir.rpartition(b"/")[0]) if rel_dir else ()
            spec = self._read_spec(rel_dir) if self.ignore_files else None
            if spec is not None:
                active += ((len(rel_dir) + 1 if rel_dir else 0, spec),)
            self._active[rel_dir] = active
        return active

    def _read_spec(self, rel_dir: bytes) -> pathspec.GitIgnoreSpec | None:
        path = os.path.join(self.top, rel_dir, IGNORE_FILE) if rel_dir else os.path.join(self.top, IGNORE_FILE)
        if not os.access(path, os.F_OK):
            return None  # the common case, answered without an exception
        try:
            with open(path, "rb") as f:
                return _spec(f.read().decode("utf-8", "surrogateescape").splitlines())
        except OSError:
            return None

    def _is_cache(self, rel: bytes) -> bool:
        path = os.path.join(self.top, rel, CACHEDIR_TAG)
        if not os.access(path, os.F_OK):
            return False
        try:
            with open(path, "rb") as f:
                return f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
        except OSError:
            return False
