"""restore from a real repository: batched reads and batched writes give back
exactly the tree, however the batches fall."""

import os
import threading

import pytest

from fstree import make_rich_tree, tree_state
from pkvc import restore as restore_mod
from pkvc.backends.local import LocalBackend
from pkvc.chunker import KiB, ChunkerParams
from pkvc.errors import BlobNotFoundError, IntegrityError
from pkvc.pack import KIND_DATA
from pkvc.repo import Repository
from pkvc.restore import restore
from pkvc.tree import put_path

PASSWORD = b"correct horse battery staple"  # as in conftest.py
SMALL = ChunkerParams(min_size=1 * KiB, avg_size=4 * KiB, max_size=16 * KiB)


@pytest.fixture
def stored(tmp_path):
    """A rich tree, a 1 MiB file of ~250 chunks and a few directories, in small packs."""
    src = make_rich_tree(tmp_path / "src")
    (src / "sub" / "large").write_bytes(os.urandom(1024 * KiB))
    with open(src / "sub" / "holes", "wb") as f:
        f.truncate(3000 * KiB)
        f.seek(1000 * KiB)
        f.write(os.urandom(100 * KiB))
    for i in range(5):
        (src / f"d{i}").mkdir()
        for j in range(7):
            (src / f"d{i}" / f"f{j}").write_bytes(b"%d-%d " % (i, j) * (j * 100))
    r = Repository.create(LocalBackend(tmp_path / "repo"), PASSWORD, tmp_path / "cache",
                          pack_size=64 * KiB)
    ref = put_path(src, r, chunker=SMALL, max_parts=40).ref
    r.flush()
    yield r, ref, src
    r.close()


@pytest.mark.parametrize("pieces,open_files,listing,ahead,thread", [
    (4096, 256, 4096, 4 * 4096, True), (3, 2, 2, 1, True), (1, 1, 1, 0, True),
    (4096, 256, 4096, 4 * 4096, False), (3, 2, 2, 3, False)])
def test_round_trip_whatever_the_batch_sizes(stored, tmp_path, monkeypatch, pieces, open_files,
                                             listing, ahead, thread):
    r, ref, src = stored
    monkeypatch.setattr(restore_mod, "BATCH_PIECES", pieces)
    monkeypatch.setattr(restore_mod, "BATCH_OPEN", open_files)
    monkeypatch.setattr(restore_mod, "LISTING_BATCH", listing)
    monkeypatch.setattr(restore_mod, "AHEAD_LIMIT", ahead)
    monkeypatch.setattr(restore_mod, "WRITER_THREAD", thread)
    result = restore(ref, tmp_path / "dst", r)
    assert result.errors == []
    assert tree_state(tmp_path / "dst") == tree_state(src)
    assert result.hardlinks == 2 and result.files == len(
        [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]) - 2


def test_a_failed_batch_closes_every_file(stored, tmp_path, monkeypatch):
    r, ref, src = stored
    monkeypatch.setattr(restore_mod, "BATCH_OPEN", 1000)
    victim = max(loc.pack_id for _, loc in r.enumerate() if loc.kind == KIND_DATA)
    os.unlink(tmp_path / "repo" / "packs" / victim[:2] / victim)  # data goes missing
    with pytest.raises(BlobNotFoundError):
        restore(ref, tmp_path / "dst", r)
    assert _open_files_under(tmp_path / "dst") == [] and _open_files_under(tmp_path / "repo") == []


def _open_files_under(path) -> list[str]:
    """This process's open files below `path` (the index cache's own files
    come and go as its reader catches up: not counted)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path) + "/"):
            found.append(target)
    return found


def test_a_damaged_blob_met_by_the_writer_thread_is_raised_and_every_file_closed(stored, tmp_path):
    """The writer thread reads the data; its IntegrityError reaches the caller as such."""
    r, ref, src = stored
    pack_id, loc = max((loc.pack_id, loc) for _, loc in r.enumerate() if loc.kind == KIND_DATA)
    path = tmp_path / "repo" / "packs" / pack_id[:2] / pack_id
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0xFF
    os.chmod(path, 0o600)
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        restore(ref, tmp_path / "dst", r)
    assert _open_files_under(tmp_path / "dst") == [] and _open_files_under(tmp_path / "repo") == []
    assert not any(t.name == "pkvc-restore-write" for t in threading.enumerate())


def test_hard_links_to_a_file_that_could_not_be_written_are_reported_too(repo, tmp_path):
    """A file too big for the destination (RLIMIT_FSIZE: a real EFBIG from
    pwrite): its hard links made meanwhile are the same file, so they are
    reported as not restored, not counted as restored links."""
    import resource
    import signal

    src = tmp_path / "src"
    src.mkdir()
    (src / "a-big").write_bytes(os.urandom(300 * KiB))
    os.link(src / "a-big", src / "b-link")
    os.link(src / "a-big", src / "c-link")
    (src / "small").write_bytes(b"fits")
    ref = put_path(src, repo).ref
    repo.flush()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100 * KiB, hard))
    try:
        result = restore(ref, tmp_path / "out", repo)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    failed = {os.path.basename(path) for path, _ in result.errors}
    assert failed == {"a-big", "b-link", "c-link"}
    assert result.hardlinks == 0 and result.files == 1
    assert (tmp_path / "out" / "small").read_bytes() == b"fits"
