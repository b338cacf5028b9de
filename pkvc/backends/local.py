"""A repository in a local directory (the default)."""

from __future__ import annotations

import errno
import os
import secrets
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from pkvc.backends.base import Backend, ObjectInfo, Upload, validate_name
from pkvc.errors import BackendError, NoRepositoryError

TEMP_PREFIX = ".tmp-"


def from_url(url: str) -> "LocalBackend | None":
    """A plain path or a file:// URL means a local directory."""
    if url.startswith("file://"):
        return LocalBackend(unquote(urlparse(url).path))
    if "://" in url:
        return None
    return LocalBackend(url)


class LocalBackend(Backend):
    """Objects are files below `root`; writes go through temp + fsync + rename."""

    reads_after_fork = True  # (each read opens the file)

    def __init__(self, root):
        self.root = Path(root).expanduser().absolute()
        self.location = str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def store(self, name: str, data) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with memoryview(data) as view:
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as e:
            _unlink_quietly(tmp)
            raise BackendError(f"cannot write {path}: {e.strerror}") from e

    def upload(self, folder: str) -> Upload:
        return _FileUpload(self, self._path(folder))

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                f.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise BackendError(f"object {name} is missing from {self.location}") from None
        except OSError as e:
            raise BackendError(f"cannot read {path}: {e.strerror}") from e

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        if prefix and not prefix.endswith("/"):
            raise BackendError("list prefixes are folders ending in '/'")
        yield from self._walk(base, prefix)

    def _walk(self, folder: Path, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), f"{prefix}{entry.name}/")
            else:
                yield ObjectInfo(prefix + entry.name, entry.stat(follow_symlinks=False).st_size)

    def remove_stale_uploads(self, folder: str, older_than: float) -> tuple[int, int]:
        cutoff, count, size = time.time() - older_than, 0, 0
        for dirpath, _, names in os.walk(self._path(folder)):
            for name in names:
                path = os.path.join(dirpath, name)
                if not name.startswith(TEMP_PREFIX):
                    continue
                try:
                    st = os.lstat(path)
                    if st.st_mtime < cutoff:
                        os.unlink(path)
                        count, size = count + 1, size + st.st_size
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise BackendError(f"cannot delete {path}: {e.strerror}") from e
        return count, size

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            raise BackendError(f"cannot delete {path}: {e.strerror}") from e
        _fsync_dir(path.parent)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            raise BackendError(f"object {name} is missing from {self.location}") from None

    def is_initialized(self) -> bool:
        return (self.root / "config").is_file()

    def create(self, folders: tuple[str, ...] = ()) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if any(self.root.iterdir()):
                raise NoRepositoryError(
                    f"{self.location} is not empty and holds no pkvc repository; "
                    "choose an empty or new directory")
            for folder in folders:
                (self.root / validate_name(folder)).mkdir()
        except OSError as e:
            raise BackendError(f"cannot create {self.location}: {e.strerror}") from e


class _FileUpload(Upload):
    """A temp file in the object's folder tree, written as bytes come;
    `commit` is `store`'s fsync + rename + directory fsync."""

    def __init__(self, backend: LocalBackend, folder: Path):
        self._backend, self._fd = backend, -1
        self._tmp: Path | None = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise BackendError(f"cannot write {self._tmp}: {e.strerror}") from e

    def write(self, data) -> None:
        try:
            with memoryview(data) as view:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
        except OSError as e:
            self.abort()
            raise BackendError(f"cannot write {self._tmp}: {e.strerror}") from e

    def commit(self, name: str) -> None:
        path = self._backend._path(name)
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, path)
            self._tmp = None
            _fsync_dir(path.parent)
        except OSError as e:
            self.abort()
            raise BackendError(f"cannot write {path}: {e.strerror}") from e

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp is not None:
            _unlink_quietly(self._tmp)
            self._tmp = None


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink durable (a crash must not undo a stored pack)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
