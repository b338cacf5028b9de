"""restore from a real repository: batched reads and batched writes give back
exactly the tree, however the batches fall; a missing or damaged blob loses
only the entries that need it."""

import os
import threading

import pytest

from fstree import make_rich_tree, tree_state
from pkvc import restore as restore_mod
from pkvc.backends.local import LocalBackend
from pkvc.chunker import KiB, ChunkerParams
from pkvc.errors import BackendError
from pkvc.pack import KIND_DATA
from pkvc.repo import Repository
from pkvc.restore import restore
from pkvc.schema.fsnodes import FileBlob
from pkvc.series import list_dir, walk
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


def _files_needing(r, ref, lost) -> set[bytes]:
    """Paths (relative) of the files whose content needs one of the `lost` blobs."""
    return {e.path for e in walk(r, ref) if isinstance(e.blob, FileBlob) and any(
        span[1] in lost for span in restore_mod._spans(e.blob.parts, r, 0, e.blob.size, 0, frozenset()))}


def _assert_all_but(dst, src, lost: set[bytes], result) -> None:
    """`lost` are reported once each and absent; everything else is exactly as in `src`."""
    top = os.fsencode(dst)
    assert sorted(os.path.relpath(os.fsencode(path), top) for path, _ in result.errors) == sorted(lost)
    want, got = tree_state(src), tree_state(dst)
    assert got["entries"] == {k: v for k, v in want["entries"].items() if k not in lost}
    assert got["links"] == [g for g in ([p for p in group if p not in lost] for group in want["links"])
                            if len(g) > 1]


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


def _flip_byte(r, repo_dir, ref) -> None:
    loc = r.locate(ref)
    path = repo_dir / "packs" / loc.pack_id[:2] / loc.pack_id
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0xFF
    os.chmod(path, 0o600)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("pieces,open_files,thread,reopen", [
    (4096, 256, True, True), (3, 2, True, False), (4096, 256, False, True)])
def test_a_missing_data_pack_loses_only_the_files_that_need_it(stored, tmp_path, monkeypatch,
                                                               pieces, open_files, thread, reopen):
    """Each file that needs a blob of the deleted pack is reported and left
    out (not half-written); every other file comes back exactly; nothing stays
    open. Opened again, the repository knows the pack is gone (as a new
    process would); else the pack goes away under the open repository."""
    r, ref, src = stored
    monkeypatch.setattr(restore_mod, "BATCH_PIECES", pieces)
    monkeypatch.setattr(restore_mod, "BATCH_OPEN", open_files)
    monkeypatch.setattr(restore_mod, "WRITER_THREAD", thread)
    packs = {}
    for blob, loc in r.enumerate():
        if loc.kind == KIND_DATA:
            packs.setdefault(loc.pack_id, set()).add(blob)
    victim = max(packs, key=lambda pack_id: len(_files_needing(r, ref, packs[pack_id])))
    lost = _files_needing(r, ref, packs[victim])
    os.unlink(tmp_path / "repo" / "packs" / victim[:2] / victim)
    if reopen:
        r.close()
        r = Repository.open(LocalBackend(tmp_path / "repo"), PASSWORD, tmp_path / "cache")
    try:
        result = restore(ref, tmp_path / "dst", r)
    finally:
        if reopen:
            r.close()
    assert _open_files_under(tmp_path / "dst") == [] and _open_files_under(tmp_path / "repo") == []
    assert not any(t.name == "pkvc-restore-write" for t in threading.enumerate())
    assert lost and all("is not in the repository" in message or "which was not restored" in message
                        for _, message in result.errors)
    _assert_all_but(tmp_path / "dst", src, lost, result)
    assert result.files + result.hardlinks == len(
        [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]) - len(lost)


def test_a_damaged_blob_loses_only_its_files_not_its_neighbours(stored, tmp_path):
    """A flipped byte fails one blob's authentication: the batched read of
    its pack stops there, the blobs it did not deliver are read again one by
    one, so only the files that need the damaged blob are lost."""
    r, ref, src = stored
    packs = {}
    for blob, loc in r.enumerate():
        if loc.kind == KIND_DATA:
            packs.setdefault(loc.pack_id, []).append((loc.offset, blob))
    crowded = sorted(max(packs.values(), key=len))
    damaged = crowded[len(crowded) // 2][1]  # blobs before and after it in one read
    lost = _files_needing(r, ref, {damaged})
    _flip_byte(r, tmp_path / "repo", damaged)
    result = restore(ref, tmp_path / "dst", r)
    assert lost and all(str(damaged) in message for _, message in result.errors)
    _assert_all_but(tmp_path / "dst", src, lost, result)


def test_a_writer_error_that_is_not_a_damaged_blob_stops_the_restore_and_closes_every_file(
        stored, tmp_path):
    """The storage failing (a pack that cannot be read at all: here a
    directory where it should be) is not one damaged file: it reaches the
    caller as such, with nothing left open and the writer thread gone."""
    r, ref, src = stored
    victim = max(loc.pack_id for _, loc in r.enumerate() if loc.kind == KIND_DATA)
    path = tmp_path / "repo" / "packs" / victim[:2] / victim
    path.unlink()
    (tmp_path / "elsewhere").mkdir()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BackendError):
        restore(ref, tmp_path / "dst", r)
    assert _open_files_under(tmp_path / "dst") == [] and _open_files_under(tmp_path / "repo") == []
    assert not any(t.name == "pkvc-restore-write" for t in threading.enumerate())


@pytest.fixture
def one_blob_per_pack(tmp_path):
    """A repository whose every blob is alone in its pack: deleting a pack loses exactly one blob."""
    r = Repository.create(LocalBackend(tmp_path / "repo"), PASSWORD, tmp_path / "cache", pack_size=1)
    yield r
    r.close()


def _delete_pack_of(r, repo_dir, ref) -> None:
    pack_id = r.locate(ref).pack_id
    os.unlink(repo_dir / "packs" / pack_id[:2] / pack_id)


def test_missing_directory_blobs_lose_their_subtrees_only(one_blob_per_pack, tmp_path):
    """A subdirectory whose directory blob is missing is unknown, even by
    name: reported against its parent. One whose entries blob is missing is
    reported by its path and not made. The rest of the tree restores."""
    r = one_blob_per_pack
    src = tmp_path / "src"
    for d in ("gone", "empty-listing", "kept"):
        (src / d).mkdir(parents=True)
        (src / d / "inside").write_bytes(d.encode() * 100)
    (src / "top.txt").write_bytes(b"top\n")
    ref = put_path(src, r).ref
    r.flush()
    entries = {name: (child_ref, child) for name, child_ref, child in list_dir(r, ref)}
    _delete_pack_of(r, tmp_path / "repo", entries[b"gone"][0])
    _delete_pack_of(r, tmp_path / "repo", entries[b"empty-listing"][1].entries)
    dst = tmp_path / "dst"
    result = restore(ref, dst, r)
    assert sorted(result.errors) == sorted([
        (str(dst), f"an entry could not be read: blob {entries[b'gone'][0]} is not in the repository"),
        (str(dst / "empty-listing"), "directory not restored, its entries cannot be read: blob "
         f"{entries[b'empty-listing'][1].entries} is not in the repository")])
    assert sorted(os.listdir(dst)) == ["kept", "top.txt"]
    assert (dst / "kept" / "inside").read_bytes() == b"kept" * 100
    assert (dst / "top.txt").read_bytes() == b"top\n"
    assert result.dirs == 2 and result.files == 2  # the top and kept


def test_a_missing_bytes_blob_loses_its_file_only(one_blob_per_pack, tmp_path):
    """A big file's content goes through `bytes` blobs (read while planning, not by the writer)."""
    r = one_blob_per_pack
    src = tmp_path / "src"
    src.mkdir()
    (src / "chunky").write_bytes(os.urandom(200 * KiB))
    (src / "plain").write_bytes(b"plain")
    ref = put_path(src, r, chunker=SMALL, max_parts=4).ref
    r.flush()
    chunky = {name: child for name, _, child in list_dir(r, ref)}[b"chunky"]
    nested = [part.bytes_ref for part in chunky.parts if part.bytes_ref is not None]
    _delete_pack_of(r, tmp_path / "repo", nested[-1])
    dst = tmp_path / "dst"
    result = restore(ref, dst, r)
    assert result.errors == [(str(dst / "chunky"), f"blob {nested[-1]} is not in the repository")]
    assert os.listdir(dst) == ["plain"] and (dst / "plain").read_bytes() == b"plain"


def test_hard_links_to_a_file_whose_data_is_missing_are_reported_and_removed(one_blob_per_pack,
                                                                               tmp_path):
    r = one_blob_per_pack
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a-big").write_bytes(os.urandom(300 * KiB))
    os.link(src / "a-big", src / "b-link")
    os.link(src / "a-big", src / "sub" / "c-link")
    (src / "small").write_bytes(b"fits")
    ref = put_path(src, r, chunker=SMALL).ref
    r.flush()
    big = {name: child for name, _, child in list_dir(r, ref)}[b"a-big"]
    data = [span[1] for span in restore_mod._spans(big.parts, r, 0, big.size, 0, frozenset())]
    _delete_pack_of(r, tmp_path / "repo", data[len(data) // 2])
    dst = tmp_path / "dst"
    result = restore(ref, dst, r)
    assert sorted(result.errors) == [
        (str(dst / "a-big"), f"blob {data[len(data) // 2]} is not in the repository"),
        (str(dst / "b-link"), f"hard link to {dst / 'a-big'}, which was not restored"),
        (str(dst / "sub" / "c-link"), f"hard link to {dst / 'a-big'}, which was not restored")]
    assert sorted(os.listdir(dst)) == ["small", "sub"] and os.listdir(dst / "sub") == []
    assert result.hardlinks == 0 and result.files == 1 and result.bytes_written == len(b"fits")


def test_hard_links_to_a_file_that_could_not_be_written_are_reported_too(repo, tmp_path):
    """A file too big for the destination (RLIMIT_FSIZE: a real EFBIG from
    pwrite): its hard links made meanwhile are the same file, so they are
    reported as not restored, not counted as restored links; the partly
    written file and those links are removed."""
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
    assert os.listdir(tmp_path / "out") == ["small"]  # nothing half-written is left
    assert (tmp_path / "out" / "small").read_bytes() == b"fits"
