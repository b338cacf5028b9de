"""The porcelain: one function per command, taking plain values, returning data.

The CLI parses arguments, gathers the password and the cache directory, and
renders what these functions return; nothing here prints or reads the
environment. Scripts may call these functions directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pkvc import keyslots, restore, tree
from pkvc.backends import open_backend
from pkvc.blobref import BlobRef
from pkvc.check import CheckReport, check_repository
from pkvc.errors import BlobNotFoundError, SchemaError, UsageError
from pkvc.progress import NO_PROGRESS, Progress
from pkvc.repo import Repository, SyncReport
from pkvc.schema.canonical import looks_like_schema, parse_schema


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


@dataclass
class PutSummary:
    path: str
    ref: str
    files: int
    dirs: int
    bytes_read: int
    errors: list[tuple[str, str]]


def put_paths(repo: Repository, paths: list[Path], progress: Progress = NO_PROGRESS,
              ) -> list[PutSummary]:
    """Store each path (file or tree) and return its top ref; unreadable entries are listed."""
    summaries = []
    progress.start("put", None, "B")
    for path in paths:
        result = tree.put_path(path, repo, progress=_bytes_progress(progress, tree.BytesRead),
                               chunker=repo.config.chunker)
        summaries.append(PutSummary(str(path), str(result.ref), result.files, result.dirs,
                                    result.bytes_read, result.errors))
    repo.flush()
    progress.finish()
    return summaries


def restore_tree(repo: Repository, text: str, output: Path, force: bool = False,
                 progress: Progress = NO_PROGRESS) -> restore.RestoreResult:
    """Write the file or tree named by `text` into `output` (never outside it)."""
    ref = resolve_ref(repo, text)
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not force:
        raise UsageError(f"{output} is not empty; use --force to restore into it anyway")
    output.parent.mkdir(parents=True, exist_ok=True)
    progress.start("restore", None, "B")
    result = restore.restore(ref, output, repo, _bytes_progress(progress, restore.BytesWritten),
                             overwrite=force)
    progress.finish()
    return result


def file_contents(repo: Repository, text: str):
    """The bytes of a `file` blob's content, streamed in blocks."""
    return restore.iter_file_bytes(resolve_ref(repo, text), repo)


@dataclass
class Description:
    ref: str
    size: int
    kind: str  # "schema", "signed" or "data"
    camli_type: str | None
    json: dict | None


def describe(repo: Repository, text: str) -> Description:
    ref = resolve_ref(repo, text)
    data = repo.get(ref)
    if looks_like_schema(data):
        try:
            blob = parse_schema(data)
        except SchemaError:
            pass  # JSON-ish content that is not schema: plain data
        else:
            kind = "signed" if "camliSig" in blob else "schema"
            return Description(str(ref), len(data), kind, blob.get("camliType"), blob)
    return Description(str(ref), len(data), "data", None, None)


def _bytes_progress(progress: Progress, event_type):
    """Turn the tree walkers' events into byte counts on a progress bar."""
    def on_event(event) -> None:
        if isinstance(event, event_type):
            progress.advance(event.n)
    return on_event


def check(repo: Repository, read_data: bool = False, progress: Progress = NO_PROGRESS) -> CheckReport:
    return check_repository(repo, read_data, progress)


def reindex(repo: Repository, progress: Progress = NO_PROGRESS) -> SyncReport:
    return repo.reindex(progress)
