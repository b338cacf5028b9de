"""The porcelain: one function per command, taking plain values, returning data.

The CLI parses arguments, gathers the password and the cache directory, and
renders what these functions return; nothing here prints or reads the
environment. Scripts may call these functions directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pkvc import keyslots
from pkvc.backends import open_backend
from pkvc.blobref import BlobRef
from pkvc.check import CheckReport, check_repository
from pkvc.errors import BlobNotFoundError, UsageError
from pkvc.progress import NO_PROGRESS, Progress
from pkvc.repo import Repository, SyncReport


@dataclass(frozen=True)
class Session:
    """Where the repository is and how to open it."""

    url: str
    password: bytes
    cache_dir: Path


def init(session: Session) -> Repository:
    """Create a new repository; the caller closes what is returned."""
    return Repository.create(open_backend(session.url), session.password, session.cache_dir)


def open_repo(session: Session, progress: Progress = NO_PROGRESS) -> Repository:
    return Repository.open(open_backend(session.url), session.password, session.cache_dir, progress)


# -- key slots ---------------------------------------------------------------

def key_list(repo: Repository) -> list[keyslots.KeySlot]:
    return keyslots.list_slots(repo.backend)


def key_add(repo: Repository, new_password: bytes) -> str:
    return keyslots.add_slot(repo.backend, repo.master_key, new_password, repo.config.id)


def key_remove(repo: Repository, slot_id: str) -> None:
    keyslots.remove_slot(repo.backend, slot_id)


def key_passwd(repo: Repository, new_password: bytes) -> str:
    """Replace the password that opened the repository: new slot first, then drop the old."""
    new_id = key_add(repo, new_password)
    keyslots.remove_slot(repo.backend, repo.slot_id)
    return new_id


# -- blobs ---------------------------------------------------------------------

def resolve_ref(repo: Repository, text: str) -> BlobRef:
    """A full blobref, or a unique prefix of one stored in the repository."""
    ref = BlobRef.parse_or_none(text)
    if ref is not None:
        return ref
    if not text or "-" not in text:
        raise UsageError(f"{text!r} is not a blobref (expected sha224-<hex> or a unique prefix)")
    matches = [r for r, _ in repo.enumerate() if str(r).startswith(text)]
    if not matches:
        raise BlobNotFoundError(f"no blob starts with {text}")
    if len(matches) > 1:
        raise UsageError(f"{text} is ambiguous: {len(matches)} blobs start with it")
    return matches[0]


def get_blob(repo: Repository, text: str) -> bytes:
    return repo.get(resolve_ref(repo, text))


def check(repo: Repository, read_data: bool = False, progress: Progress = NO_PROGRESS) -> CheckReport:
    return check_repository(repo, read_data, progress)


def reindex(repo: Repository, progress: Progress = NO_PROGRESS) -> SyncReport:
    return repo.reindex(progress)
