"""The backend protocol: named objects and nothing else.

A backend stores opaque bytes under slash-separated names (`config`,
`keys/<id>`, `packs/ab/<id>`). It never sees blobs, keys or plaintext.
Writes are atomic: a reader sees the whole object or no object. Names are
validated here, in one place, so no backend can be steered outside its root.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Iterator, NamedTuple

from pkvc.errors import BackendError

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class ObjectInfo(NamedTuple):
    name: str
    size: int


def validate_name(name: str) -> str:
    """Refuse names that could escape the root or collide with temp files."""
    parts = name.split("/")
    if not name or any(not _SEGMENT.match(p) or p in (".", "..") for p in parts):
        raise BackendError(f"invalid object name {name!r}")
    return name


class Upload(ABC):
    """An object written piece by piece and named once complete (a pack's
    name is the hash of its bytes): nothing appears under any name before
    `commit`, and `abort` leaves nothing behind."""

    @abstractmethod
    def write(self, data) -> None:
        """Append bytes (not kept after the call returns)."""

    @abstractmethod
    def commit(self, name: str) -> None:
        """Store what was written, atomically, as `name`."""

    @abstractmethod
    def abort(self) -> None:
        """Drop what was written; after `commit`, does nothing."""


class _BufferedUpload(Upload):
    """For backends that can only store whole objects: keep the bytes, store at commit."""

    def __init__(self, backend: "Backend"):
        self._backend, self._buf = backend, bytearray()

    def write(self, data) -> None:
        self._buf += data

    def commit(self, name: str) -> None:
        self._backend.store(name, self._buf)
        self._buf = bytearray()

    def abort(self) -> None:
        self._buf = bytearray()


class Backend(ABC):
    """A dozen-verb store of named objects (borgstore's shape)."""

    #: Where the objects live, as the user would write it.
    location: str
    #: Whether a forked process may read through its copy of this object
    #: (`packscan`): true where it holds no connection or buffer that the
    #: parent's copy goes on using (files opened per call).
    reads_after_fork: bool = False

    @abstractmethod
    def store(self, name: str, data) -> None:
        """Write the object atomically; an existing object is replaced."""

    def upload(self, folder: str) -> Upload:
        """An `Upload` whose object will be named inside `folder` (a local
        backend writes it to a temp file there as it comes: no copy of the
        whole object in memory)."""
        validate_name(folder)
        return _BufferedUpload(self)

    @abstractmethod
    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read an object or a slice of it; a negative offset counts from the end."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose name starts with `prefix` (a folder ending in '/')."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove the object; removing a missing one is not an error."""

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether the object is there."""

    @abstractmethod
    def size(self, name: str) -> int:
        """The object's size in bytes."""

    @abstractmethod
    def is_initialized(self) -> bool:
        """Whether this location holds a repository (has a `config`)."""

    @abstractmethod
    def create(self, folders: tuple[str, ...] = ()) -> None:
        """Prepare an empty location; make `folders` where the store has folders."""

    def remove_stale_uploads(self, folder: str, older_than: float) -> tuple[int, int]:
        """Delete unfinished writes in `folder` (left by a killed process) last
        touched more than `older_than` seconds ago: (how many, bytes). A store
        that never shows unfinished writes has none."""
        validate_name(folder)
        return 0, 0

    def close(self) -> None:
        """Release connections; local backends have none."""
