"""ChunkFeed and the walk around it: big files chunked on a thread give the
same blobs as files chunked in line, errors come back, nothing leaks."""

import os
import threading
import time
from pathlib import Path

import pytest

from memstore import MemStore
from pkvc import tree
from pkvc.blobref import BlobRef
from pkvc.chunker import KiB, ChunkerParams, Piece, chunk_bytes
from pkvc.chunkfeed import DONE, MAX_QUEUED, ChunkFeed
from pkvc.tree import put_path

SMALL = ChunkerParams(min_size=1 * KiB, avg_size=4 * KiB, max_size=16 * KiB)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _no_feed_thread() -> bool:
    return not any(t.name == "pkvc-chunk" for t in threading.enumerate())


def _take_all(feed: ChunkFeed) -> list:
    items = []
    while feed.busy:
        items += feed.take(wait=True)
    return items


def test_pieces_come_in_order_with_refs_and_equal_chunking_in_memory(tmp_path):
    data = [os.urandom(200 * KiB), os.urandom(70 * KiB)]
    feed = ChunkFeed(SMALL)
    try:
        for n, body in enumerate(data):
            (tmp_path / f"f{n}").write_bytes(body)
            feed.submit(os.open(tmp_path / f"f{n}", os.O_RDONLY), None, n)
        items = _take_all(feed)
    finally:
        feed.close()
    for n, body in enumerate(data):
        mine = [item for token, item in items if token == n]
        assert mine[-1] is DONE
        pieces = mine[:-1]
        assert [(p.offset, p.size, p.data) for p in pieces] == \
            [(p.offset, p.size, p.data) for p in chunk_bytes(body, SMALL)]
        assert all(p.ref == BlobRef.of(p.data) for p in pieces)
    assert [token for token, item in items if item is DONE] == [0, 1]  # in submission order
    assert _no_feed_thread()


def test_a_read_error_comes_back_as_the_files_last_item(tmp_path):
    (tmp_path / "w").write_bytes(b"x" * (50 * KiB))
    feed = ChunkFeed(SMALL)
    try:
        feed.submit(os.open(tmp_path / "w", os.O_WRONLY), None, "w")  # pread: EBADF
        items = _take_all(feed)
    finally:
        feed.close()
    assert len(items) == 1 and isinstance(items[0][1], OSError)


def test_the_queue_is_bounded_and_close_stops_a_waiting_thread(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * MAX_QUEUED))
    before = _open_fds()
    feed = ChunkFeed(ChunkerParams(min_size=64 * KiB, avg_size=256 * KiB, max_size=1024 * KiB))
    feed.submit(os.open(big, os.O_RDONLY), None, "big")
    feed.submit(os.open(big, os.O_RDONLY), None, "again")  # never started
    deadline = time.monotonic() + 30
    while feed._queued <= MAX_QUEUED - 1024 * KiB and time.monotonic() < deadline:
        time.sleep(0.01)  # until the thread has filled the queue (a piece more would pass it)
    time.sleep(0.1)
    held = sum(item.size for _, item in feed._out)
    assert MAX_QUEUED - 1024 * KiB < held <= MAX_QUEUED
    feed.close()
    assert _open_fds() == before and _no_feed_thread()


def _mixed_tree(root: Path) -> Path:
    """Big files at several depths, first in their directory and not, with
    small files and subdirectories after them."""
    for rel in ["a/b/c", "a/d", "e"]:
        (root / rel).mkdir(parents=True)
    (root / "0-big").write_bytes(os.urandom(300 * KiB))
    (root / "a" / "b" / "c" / "big").write_bytes(os.urandom(150 * KiB))
    (root / "a" / "b" / "c" / "z-small").write_bytes(b"small")
    (root / "a" / "b" / "after").write_bytes(os.urandom(3 * KiB))
    (root / "a" / "d" / "big1").write_bytes(os.urandom(90 * KiB))
    (root / "a" / "d" / "big2").write_bytes(os.urandom(90 * KiB) + b"\0" * (200 * KiB))
    (root / "e" / "x").write_bytes(b"x")
    return root


def test_a_tree_walked_with_the_feed_has_the_refs_of_one_walked_in_line(tmp_path, monkeypatch):
    root = _mixed_tree(tmp_path / "src")
    inline = put_path(root, MemStore(), chunker=SMALL)
    monkeypatch.setattr(tree, "FEED_MIN_SIZE", 64 * KiB)
    store, events = MemStore(), []
    fed = put_path(root, store, chunker=SMALL, progress=events.append)
    assert fed.ref == inline.ref and fed.errors == []
    assert (fed.files, fed.dirs, fed.bytes_read, fed.file_bytes) == \
        (inline.files, inline.dirs, inline.bytes_read, inline.file_bytes)
    stored = {e.path for e in events if isinstance(e, tree.FileStored)}
    assert str(root / "a" / "d" / "big2") in stored and len(stored) == fed.files
    assert _no_feed_thread()


def test_a_big_file_that_cannot_be_read_is_skipped_and_the_rest_stored(tmp_path, monkeypatch):
    root = _mixed_tree(tmp_path / "src")
    monkeypatch.setattr(tree, "FEED_MIN_SIZE", 64 * KiB)
    real_submit = ChunkFeed.submit

    def submit_unreadable(self, fd, previous, token):  # a file whose reads fail (EBADF)
        if token.name == b"big1":
            os.close(fd)
            fd = os.open(root / "a" / "d" / "big1", os.O_WRONLY)
        real_submit(self, fd, previous, token)

    monkeypatch.setattr(ChunkFeed, "submit", submit_unreadable)
    result = put_path(root, MemStore(), chunker=SMALL)
    assert [path for path, _ in result.errors] == [str(root / "a" / "d" / "big1")]
    st = os.stat(root / "a" / "d")
    (root / "a" / "d" / "big1").unlink()
    os.utime(root / "a" / "d", ns=(st.st_atime_ns, st.st_mtime_ns))  # the tree as it was, less big1
    monkeypatch.setattr(ChunkFeed, "submit", real_submit)
    assert result.ref == put_path(root, MemStore(), chunker=SMALL).ref


class _FailingStore(MemStore):
    def __init__(self, after: int):
        super().__init__()
        self.left = after

    def put_data(self, data, ref=None):
        self.left -= 1
        if self.left < 0:
            raise OSError(28, "No space left on device")
        return super().put_data(data, ref)


def test_an_error_of_the_store_stops_the_walk_and_leaks_no_fd_or_thread(tmp_path, monkeypatch):
    root = _mixed_tree(tmp_path / "src")
    monkeypatch.setattr(tree, "FEED_MIN_SIZE", 64 * KiB)
    before = _open_fds()
    with pytest.raises(OSError, match="No space"):
        put_path(root, _FailingStore(after=5), chunker=SMALL)
    assert _open_fds() == before and _no_feed_thread()


def test_more_big_files_than_the_feed_holds(tmp_path, monkeypatch):
    root = tmp_path / "src"
    for d in range(3):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(5):
            (root / f"d{d}" / f"big{i}").write_bytes(os.urandom(70 * KiB))
    inline = put_path(root, MemStore(), chunker=SMALL).ref
    monkeypatch.setattr(tree, "FEED_MIN_SIZE", 64 * KiB)
    before = _open_fds()
    assert put_path(root, MemStore(), chunker=SMALL).ref == inline
    assert _open_fds() == before
