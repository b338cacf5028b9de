"""A staging area: verified blobs waiting, outside the repository, to be committed.

`pull` and bundle import must store nothing unless everything checks out,
yet a pull of gigabytes must survive an interruption. So blobs are first
kept here, in the local cache directory, one file per blob, each sealed
(XChaCha20-Poly1305) under a key derived from the repository's master key
(purpose `pkvc-staging`) with the blobref as associated data: no plaintext
touches the disk, and a file cannot be passed off as another blob. Only
when the whole graph is present and verified are the blobs put into the
repository; then the area is removed. A later run with the same area
resumes: what is staged is not fetched again.

Layout: `<cache>/<repository id>/staging/<name>/<blobref>`; writes go
through a temporary file and a rename, so a file is whole or absent.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from pkvc import crypto
from pkvc.blobref import BlobRef
from pkvc.errors import BlobNotFoundError, IntegrityError
from pkvc.repo import Repository

SUBKEY_PURPOSE = "pkvc-staging"
_TMP = ".tmp-"


class StagingArea:
    """Sealed blobs in a private directory; only blobs that match their ref get in."""

    def __init__(self, repo: Repository, cache_dir: Path, name: str):
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad staging area name {name!r}")
        self.path = Path(cache_dir) / repo.config.id / "staging" / name
        self._key = repo.subkey(SUBKEY_PURPOSE)
        self._ad = f"pkvc staging {repo.config.id} ".encode()

    def _file(self, ref: BlobRef) -> Path:
        if not ref.is_known:
            raise IntegrityError(f"{ref} uses a hash pkvc cannot check")
        return self.path / str(ref)

    def exists(self) -> bool:
        return self.path.is_dir()

    def has(self, ref: BlobRef) -> bool:
        return self._file(ref).is_file()

    def put(self, ref: BlobRef, data) -> None:
        """Keep a blob that was already checked against `ref` (checked again here)."""
        if not ref.matches(data):
            raise IntegrityError(f"data does not match {ref}; not staged")
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self._file(ref)
        tmp = self.path / f"{_TMP}{secrets.token_hex(8)}"
        with open(tmp, "wb") as f:
            f.write(crypto.seal(self._key, data, self._ad + str(ref).encode()))
        os.replace(tmp, final)

    def get(self, ref: BlobRef) -> bytes:
        try:
            sealed = self._file(ref).read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(f"{ref} is not staged") from None
        # sealed with the ref as associated data, after put checked it: no second hash
        return crypto.unseal(self._key, sealed, self._ad + str(ref).encode(), f"staged blob {ref}")

    def count(self) -> int:
        if not self.exists():
            return 0
        return sum(1 for p in self.path.iterdir() if not p.name.startswith(_TMP))

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
