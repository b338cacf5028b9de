"""restore: trees come back exactly, and hostile blobs write nothing outside."""

import os
from pathlib import Path

import pytest

from fstree import NOBODY, has_user, make_rich_tree, tree_state
from memstore import MemStore
from pkvc.blobref import BlobRef
from pkvc.chunker import KiB, MiB, ChunkerParams
from pkvc.errors import BlobNotFoundError, PkvcError, SchemaError
from pkvc.restore import (
    BytesWritten, EntryRestored, iter_file_bytes, read_file_bytes, restore,
)
from pkvc.schema.anyblob import parse_blob
from pkvc.schema.claims import new_delete_claim
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob, SymlinkBlob, UnixMeta
from pkvc.schema.parts import BytesBlob, Part
from pkvc.schema.staticset import StaticSetBlob
from pkvc.tree import put_path

SMALL = ChunkerParams(min_size=1 * KiB, avg_size=4 * KiB, max_size=16 * KiB)


def _round_trip(src: Path, dst: Path, **put_kw):
    store = MemStore()
    result = put_path(src, store, **put_kw)
    assert result.errors == []
    restored = restore(result.ref, dst, store)
    assert restored.errors == []
    return store, result, restored


def test_rich_tree_round_trip(tmp_path):
    src = make_rich_tree(tmp_path / "src")
    store, result, restored = _round_trip(src, tmp_path / "dst", chunker=SMALL)
    assert tree_state(tmp_path / "dst") == tree_state(src)
    assert restored.hardlinks == 2 and restored.specials == 1 and restored.symlinks == 3
    assert tree_state(src)["links"] == [[b"h2", b"sub/deep/h1", b"sub/h3"]]


@pytest.mark.skipif(os.geteuid() != 0 or not has_user(NOBODY), reason="needs root and nobody")
def test_owners_are_restored_only_to_ids_that_exist(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "nobodys").write_bytes(b"1")
    os.chown(src / "nobodys", NOBODY, NOBODY)
    (src / "ghosts").write_bytes(b"2")
    os.chown(src / "ghosts", 54321, 54321)
    _round_trip(src, tmp_path / "dst")
    assert os.lstat(tmp_path / "dst" / "nobodys").st_uid == NOBODY
    if not has_user(54321):
        assert os.lstat(tmp_path / "dst" / "ghosts").st_uid == os.geteuid()


def test_sparse_file_stays_sparse(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.truncate(64 * MiB)
        f.seek(10 * MiB)
        f.write(b"island" * 1000)
        f.seek(40 * MiB)
        f.write(b"another")
    if os.lstat(src / "sparse").st_blocks * 512 > 1 * MiB:
        pytest.skip("this file system does not make sparse files")
    store, result, restored = _round_trip(src, tmp_path / "dst")
    out = tmp_path / "dst" / "sparse"
    assert out.stat().st_size == 64 * MiB and out.stat().st_blocks * 512 <= 1 * MiB
    assert out.read_bytes() == (src / "sparse").read_bytes()
    assert result.bytes_read < 1 * MiB and restored.bytes_written < 1 * MiB


def test_a_directory_of_10001_entries(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10_001):
        (src / f"f{i:05d}").touch()
    store, result, restored = _round_trip(src, tmp_path / "dst")
    entries = parse_blob(store.get(parse_blob(store.get(result.ref)).entries))
    assert len(entries.merge_sets) == 2 and not entries.members
    assert sorted(os.listdir(tmp_path / "dst")) == sorted(os.listdir(src))
    assert restored.files == 10_001


def test_nested_bytes_round_trip(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(400 * KiB))
    store, result, _ = _round_trip(src, tmp_path / "dst", chunker=SMALL, max_parts=3)
    assert any(isinstance(parse_blob(d), BytesBlob) for d in store.blobs.values()
               if d.startswith(b'{"camliVersion"'))
    assert (tmp_path / "dst" / "big").read_bytes() == (src / "big").read_bytes()


def test_sockets_are_skipped_on_purpose(tmp_path):
    import socket
    src = tmp_path / "src"
    src.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    sock.close()
    store = MemStore()
    restored = restore(put_path(src, store).ref, tmp_path / "dst", store)
    assert restored.errors == [] and restored.skipped == [
        (str(tmp_path / "dst" / "sock"), "sockets are not restored")]
    assert os.listdir(tmp_path / "dst") == []


def test_single_file_and_symlink(tmp_path):
    (tmp_path / "f").write_bytes(b"just me")
    os.symlink("f", tmp_path / "l")
    store = MemStore()
    file_ref, link_ref = (put_path(tmp_path / n, store).ref for n in ("f", "l"))
    restore(file_ref, tmp_path / "out", store)
    restore(file_ref, tmp_path / "out", store, name="renamed")
    restore(link_ref, tmp_path / "out", store)
    assert sorted(os.listdir(tmp_path / "out")) == ["f", "l", "renamed"]
    assert os.readlink(tmp_path / "out" / "l") == "f"
    assert (tmp_path / "out" / "l").read_bytes() == b"just me"


def test_existing_entries_need_overwrite(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"new")
    store = MemStore()
    ref = put_path(src, store).ref
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "a").write_bytes(b"old")
    (dst / "keep").write_bytes(b"mine")
    with pytest.raises(PkvcError, match="already exists"):
        restore(ref, dst, store)
    restore(ref, dst, store, overwrite=True)
    assert (dst / "a").read_bytes() == b"new" and (dst / "keep").read_bytes() == b"mine"


def test_streaming_content_with_holes():
    store = MemStore()
    parts = (Part(3, blob_ref=store.put(b"abc")), Part(5), Part(2, blob_ref=store.put(b"xyz"), offset=1))
    ref = store.put(FileBlob(b"f", parts).to_json())
    assert read_file_bytes(ref, store) == b"abc" + bytes(5) + b"yz"
    assert list(iter_file_bytes(ref, store, block=2)) == [b"abc", b"\0\0", b"\0\0", b"\0", b"yz"]


def test_progress_events(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"12345")
    store = MemStore()
    events = []
    restore(put_path(src, store).ref, tmp_path / "dst", store, progress=events.append)
    assert BytesWritten(str(tmp_path / "dst" / "f"), 5) in events
    assert EntryRestored(str(tmp_path / "dst"), "directory") == events[-1]


# -- hostile blobs -----------------------------------------------------------

def _file(store, name: bytes, content=b"pwned") -> BlobRef:
    return store.put(FileBlob(name, (Part(len(content), blob_ref=store.put(content)),)).to_json())


def _dir(store, name, children) -> BlobRef:
    entries = store.put(StaticSetBlob(tuple(children)).to_json())
    return store.put(DirectoryBlob(name, entries, UnixMeta(0o755)).to_json())


def _listing(root: Path, skip: Path) -> list:
    return sorted(str(p) for p in root.rglob("*") if skip not in p.parents and p != skip)


@pytest.fixture
def arena(tmp_path):
    """A place to restore into, with a directory outside it that must stay empty."""
    (tmp_path / "outside").mkdir()
    dest = tmp_path / "arena" / "dest"
    (tmp_path / "arena").mkdir()
    before = _listing(tmp_path, dest)
    yield dest
    assert _listing(tmp_path, dest) == before
    assert not any((tmp_path / "outside").iterdir())


@pytest.mark.parametrize("name", [b"..", b".", b"", b"a/b", b"/etc/passwd",
                                  b"../outside/x", b"x\0y", b"../../outside"])
def test_hostile_names_are_refused(arena, name):
    store = MemStore()
    top = _dir(store, b"top", [_file(store, b"fine"), _file(store, name)])
    with pytest.raises(SchemaError, match="refused name"):
        restore(top, arena, store)
    assert not arena.exists()  # checked before anything is written


def test_hostile_name_deep_in_the_tree(arena):
    store = MemStore()
    top = _dir(store, b"top", [_dir(store, b"ok", [_dir(store, b"deeper", [_file(store, b"..")])])])
    with pytest.raises(SchemaError):
        restore(top, arena, store)


def test_hostile_single_file_name(arena):
    store = MemStore()
    with pytest.raises(SchemaError):
        restore(_file(store, b"../../outside/x"), arena, store)
    with pytest.raises(SchemaError):
        restore(_file(store, b"fine"), arena, store, name="../escape")
    assert not arena.exists()


def test_duplicate_names_are_refused(arena):
    store = MemStore()
    top = _dir(store, b"top", [_file(store, b"a", b"1"), _file(store, b"a", b"2")])
    with pytest.raises(SchemaError, match="two entries"):
        restore(top, arena, store)


def test_symlink_then_directory_of_the_same_name(arena):
    store = MemStore()
    outside = arena.parent.parent / "outside"
    link = store.put(SymlinkBlob(b"evil", os.fsencode(outside)).to_json())
    evil_dir = _dir(store, b"evil", [_file(store, b"pwned")])
    with pytest.raises(SchemaError, match="two entries"):
        restore(_dir(store, b"top", [link, evil_dir]), arena, store)


def test_symlinks_already_in_the_destination_are_never_followed(arena):
    outside = arena.parent.parent / "outside"
    arena.mkdir()
    os.symlink(outside, arena / "evil")
    os.symlink(outside / "target", arena / "a.txt")
    store = MemStore()
    top = _dir(store, b"top", [_dir(store, b"evil", [_file(store, b"pwned")]),
                               _file(store, b"a.txt")])
    with pytest.raises(PkvcError, match="already exists"):
        restore(top, arena, store)
    restore(top, arena, store, overwrite=True)
    assert (arena / "evil").is_dir() and not (arena / "evil").is_symlink()
    assert (arena / "evil" / "pwned").read_bytes() == b"pwned"
    assert not (arena / "a.txt").is_symlink()
    os.unlink(arena / "a.txt")  # keep the arena check about "outside" only
    for p in (arena / "evil" / "pwned", arena / "evil"):
        os.unlink(p) if p.is_file() else os.rmdir(p)


def test_restored_symlinks_are_never_followed(arena):
    """A symlink restored first cannot redirect a hard link or file restored later."""
    outside = arena.parent.parent / "outside"
    store = MemStore()
    link = store.put(SymlinkBlob(b"s", os.fsencode(outside)).to_json())
    first = store.put(FileBlob(b"a", (Part(1, blob_ref=store.put(b"1")),), link_group="g").to_json())
    top = _dir(store, b"top", [first, link, _dir(store, b"s2", [
        store.put(FileBlob(b"b", (Part(1, blob_ref=store.put(b"2")),), link_group="g").to_json())])])
    restore(top, arena, store)
    assert os.path.samefile(arena / "a", arena / "s2" / "b")
    assert os.readlink(arena / "s") == str(outside)
    for p in ("s2/b", "a", "s"):
        os.unlink(arena / p)
    os.rmdir(arena / "s2")


@pytest.mark.parametrize("bad", ["claim", "static-set", "bytes"])
def test_entries_must_be_file_system_nodes(arena, bad):
    store = MemStore()
    odd = {"claim": lambda: store.put(new_delete_claim(BlobRef.of(b"x"), signer=None).to_json()),
           "static-set": lambda: store.put(StaticSetBlob(()).to_json()),
           "bytes": lambda: store.put(BytesBlob(()).to_json())}[bad]()
    with pytest.raises(SchemaError):
        restore(_dir(store, b"top", [odd]), arena, store)


def test_a_part_longer_than_its_blob_is_refused(arena):
    store = MemStore()
    bad = store.put(FileBlob(b"f", (Part(100, blob_ref=store.put(b"short")),)).to_json())
    with pytest.raises(SchemaError):
        read_file_bytes(bad, store)
    with pytest.raises(SchemaError):
        restore(_dir(store, b"top", [bad]), arena, store)
    for p in arena.iterdir():
        p.unlink()


def test_missing_blobs_are_reported(arena):
    store = MemStore()
    with pytest.raises(BlobNotFoundError):
        restore(BlobRef.of(b"never stored"), arena, store)


def test_a_missing_data_blob_loses_only_its_file(tmp_path):
    """A source without `get_many` (each blob by `get`): the same per-file report."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "lost").write_bytes(b"this content goes missing")
    (src / "kept").write_bytes(b"this one stays")
    store = MemStore()
    ref = put_path(src, store).ref
    del store.blobs[BlobRef.of(b"this content goes missing")]
    result = restore(ref, tmp_path / "dst", store)
    assert result.errors == [(str(tmp_path / "dst" / "lost"),
                              f"blob {BlobRef.of(b'this content goes missing')} is not in the repository")]
    assert os.listdir(tmp_path / "dst") == ["kept"]
    assert (tmp_path / "dst" / "kept").read_bytes() == b"this one stays"


class LyingStore(MemStore):
    """A source that does not check refs: lets a test build impossible cycles."""

    def put_as(self, ref, data):
        self.blobs[ref] = data


def test_cycles_are_refused_even_from_a_lying_source(arena):
    store = LyingStore()
    fake_dir = BlobRef.of(b"the directory")
    entries = store.put(StaticSetBlob((fake_dir,)).to_json())
    store.put_as(fake_dir, DirectoryBlob(b"d", entries).to_json())
    with pytest.raises(SchemaError, match="contains itself"):
        restore(fake_dir, arena, store)
    fake_bytes = BlobRef.of(b"the bytes")
    store.put_as(fake_bytes, BytesBlob((Part(10, bytes_ref=fake_bytes),)).to_json())
    looping = store.put(FileBlob(b"f", (Part(10, bytes_ref=fake_bytes),)).to_json())
    with pytest.raises(SchemaError, match="nests too deep or contains itself"):
        read_file_bytes(looping, store)
    for p in sorted(arena.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
