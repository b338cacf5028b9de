"""FileCache: the stat cache of files and directories over a real repository."""

import os
import random
import shutil

from gc_support import remove_blobs
from memstore import MemStore
from pkvc import tree
from pkvc.backends.local import LocalBackend
from pkvc.blobref import BlobRef
from pkvc.chunker import ChunkerParams, chunk_bytes
from pkvc.filecache import FileCache
from pkvc.repo import Repository
from pkvc.restore import MAX_BYTES_DEPTH
from pkvc.schema.fsnodes import FileBlob
from pkvc.schema.parts import BytesBlob, Part


def _tree(root):
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "x").mkdir()
    (root / "top.txt").write_bytes(b"top\n")
    (root / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep\n" * 1000)
    (root / "x" / "y.bin").write_bytes(bytes(range(256)) * 64)
    return root


def _snapshot(repo, root):
    cache = FileCache(repo)
    result = tree.put_path(root, repo, stat_cache=cache)
    repo.flush()
    return result, cache


def test_an_unchanged_tree_gives_the_same_ref_reading_nothing(repo, reopen, tmp_path):
    root = _tree(tmp_path / "src")
    first, _ = _snapshot(repo, root)
    repo.close()
    again = reopen()
    blobs = again.stats.blobs
    second, cache = _snapshot(again, root)
    assert second.ref == first.ref
    assert second.bytes_read == 0 and second.cached_files == 3 and cache.new == cache.changed == 0
    assert again.stats.blobs == blobs  # nothing stored


def test_a_deleted_cache_gives_the_same_refs(repo, reopen, tmp_path, cache_dir):
    root = _tree(tmp_path / "src")
    first, _ = _snapshot(repo, root)
    repo.close()
    shutil.rmtree(cache_dir)
    again = reopen()
    second, cache = _snapshot(again, root)
    assert second.ref == first.ref and cache.new == 3 and second.bytes_read > 0
    again.reindex()  # empties the cache tables too
    third, cache = _snapshot(again, root)
    assert third.ref == first.ref and cache.new == 3


def test_a_cached_directory_blob_that_is_gone_is_stored_again(repo, tmp_path):
    root = _tree(tmp_path / "src")
    first, _ = _snapshot(repo, root)
    remove_blobs(repo, {first.ref})
    assert not repo.has(first.ref)
    second, _ = _snapshot(repo, root)
    assert second.ref == first.ref and repo.has(first.ref)


def test_a_changed_file_changes_the_directories_above_it(repo, tmp_path):
    root = _tree(tmp_path / "src")
    first, _ = _snapshot(repo, root)
    (root / "a" / "b" / "c" / "deep.txt").write_bytes(b"changed")
    second, cache = _snapshot(repo, root)
    assert second.ref != first.ref and cache.changed == 1 and second.cached_files == 2
    fresh = tree.put_path(root, repo).ref  # no cache at all
    assert second.ref == fresh


def _children(repo, dir_ref):
    from pkvc.schema.anyblob import parse_blob
    entries = parse_blob(repo.get(dir_ref)).entries
    return {parse_blob(repo.get(r)).name: r for r in parse_blob(repo.get(entries)).members}


def test_a_file_blob_gone_with_its_directory_is_read_again(repo, tmp_path):
    root = _tree(tmp_path / "src")
    first, _ = _snapshot(repo, root)
    x = _children(repo, first.ref)[b"x"]
    y = _children(repo, x)[b"y.bin"]
    remove_blobs(repo, {first.ref, x, y})  # as a gc would: nothing references them
    second, cache = _snapshot(repo, root)
    assert second.ref == first.ref and repo.has(y)
    assert second.stale_files == 1 and second.cached_files == 2 and cache.matched == 3
    assert second.bytes_read == 256 * 64


def test_an_unchanged_tree_asks_about_one_blob_per_directory(repo, tmp_path, monkeypatch):
    root = _tree(tmp_path / "src")
    _snapshot(repo, root)
    asked = []
    has = repo.has
    monkeypatch.setattr(repo, "has", lambda ref: asked.append(ref) or has(ref))
    _snapshot(repo, root)
    assert len(asked) == 5  # src, a, a/b, a/b/c, x; no file blob


def test_a_changed_big_file_follows_its_previous_chunks_to_the_same_refs(
        repo_path, tmp_path, monkeypatch):
    small = ChunkerParams(min_size=1024, avg_size=4096, max_size=16384)
    monkeypatch.setattr(tree, "FOLLOW_MIN_SIZE", 64 * 1024)
    r = Repository.create(LocalBackend(repo_path), b"a password", tmp_path / "cache", chunker=small)
    try:
        root = tmp_path / "src"
        root.mkdir()
        old = random.Random(3).randbytes(400 * 1024)
        (root / "big.bin").write_bytes(old)
        cache = FileCache(r)
        # at most 10 parts a blob: the chunks come back through `bytes` blobs
        tree.put_path(root, r, stat_cache=cache, chunker=small, max_parts=10)
        path = os.fsencode(root / "big.bin")
        assert cache.previous_chunks(path) == \
            [(p.size, BlobRef.of(p.data)) for p in chunk_bytes(old, small)]
        assert cache.previous_chunks(os.fsencode(root / "other")) is None
        (root / "big.bin").write_bytes(old[:9000] + b"inserted" + old[9000:])
        stored = r.stats.raw_bytes
        followed = tree.put_path(root, r, stat_cache=FileCache(r), chunker=small, max_parts=10)
        assert r.stats.raw_bytes - stored < 64 * 1024  # a chunk or two and schema blobs
        plain = tree.put_path(root, MemStore(), chunker=small, max_parts=10)
        assert followed.ref == plain.ref
    finally:
        r.close()


def test_previous_chunks_give_up_on_bytes_blobs_nested_deeper_than_restore_reads(
        repo_path, tmp_path):
    r = Repository.create(LocalBackend(repo_path), b"a password", tmp_path / "cache")
    try:
        chunk = b"some content"
        part = Part(len(chunk), blob_ref=r.put_data(chunk))
        for depth in range(MAX_BYTES_DEPTH + 1):
            part = Part(len(chunk), bytes_ref=r.put(BytesBlob((part,)).to_json()))
            if depth == 2:
                shallow = part
        cache = FileCache(r)
        st = os.stat(repo_path)
        for name, top in ((b"/shallow", shallow), (b"/deep", part)):
            cache.record(name, st, r.put(FileBlob(name[1:], (top,)).to_json()))
        assert cache.previous_chunks(b"/shallow") == [(len(chunk), BlobRef.of(chunk))]
        assert cache.previous_chunks(b"/deep") is None  # (not a RecursionError either)
    finally:
        r.close()
