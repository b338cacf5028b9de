"""FastCDC chunking over files: same cuts as in memory, bounded memory, holes."""

import os
import random
import tracemalloc

import pytest
from hypothesis import given, strategies as st

from pkvc import chunker
from pkvc.blobref import BlobRef
from pkvc.chunker import (
    DEFAULT_PARAMS, KiB, MiB, ChunkerParams, chunk_bytes, chunk_fd, chunk_stream, data_extents,
)

SMALL = ChunkerParams(min_size=1 * KiB, avg_size=4 * KiB, max_size=16 * KiB, hole_min=64 * KiB)


def _data(n, seed=1):
    return random.Random(seed).randbytes(n)


def _cuts(pieces):
    return [(p.offset, p.size, p.is_hole) for p in pieces]


def _fd(tmp_path, data: bytes, name="f"):
    path = tmp_path / name
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_defaults():
    assert (DEFAULT_PARAMS.min_size, DEFAULT_PARAMS.avg_size, DEFAULT_PARAMS.max_size) == \
        (256 * KiB, 1 * MiB, 4 * MiB)


def test_file_cuts_equal_in_memory_cuts(tmp_path):
    data = _data(300 * KiB)
    fd = _fd(tmp_path, data)
    try:
        pieces = list(chunk_fd(fd, SMALL))
    finally:
        os.close(fd)
    assert _cuts(pieces) == _cuts(chunk_bytes(data, SMALL))
    assert b"".join(p.data for p in pieces) == data
    assert all(SMALL.min_size <= p.size <= SMALL.max_size for p in pieces[:-1])


@given(st.integers(0, 100 * KiB), st.integers(1, 20000), st.integers(0, 5))
def test_stream_with_any_read_sizes_gives_the_same_cuts(n, step, seed):
    data = _data(n, seed)
    pos = 0

    def read(k):
        nonlocal pos
        out = data[pos:pos + min(k, step)]
        pos += len(out)
        return out
    assert _cuts(chunk_stream(read, SMALL)) == _cuts(chunk_bytes(data, SMALL))


def test_small_and_empty_files(tmp_path):
    fd = _fd(tmp_path, b"hello", "small")
    assert [(p.offset, p.size, p.data) for p in chunk_fd(fd)] == [(0, 5, b"hello")]
    os.close(fd)
    fd = _fd(tmp_path, b"", "empty")
    assert list(chunk_fd(fd)) == []
    os.close(fd)


def test_content_defined_cuts_survive_an_insertion():
    data = _data(400 * KiB)
    before = {p.data for p in chunk_bytes(data, SMALL)}
    after = [p.data for p in chunk_bytes(b"inserted!" + data, SMALL)]
    assert sum(d in before for d in after) >= len(after) - 2


def test_memory_stays_bounded_on_a_large_file(tmp_path):
    path = tmp_path / "big"
    with open(path, "wb") as f:
        for i in range(48):
            f.write(_data(1 * MiB, i))
    fd = os.open(path, os.O_RDONLY)
    tracemalloc.start()
    try:
        total = sum(p.size for p in chunk_fd(fd))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert total == 48 * MiB
    assert peak < 6 * DEFAULT_PARAMS.max_size  # a window, not the file


def _sparse(tmp_path, size, writes, name="sparse"):
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
    return os.open(path, os.O_RDONLY)


def test_sparse_file_gives_holes(tmp_path):
    fd = _sparse(tmp_path, 8 * MiB, [(1 * MiB, b"a" * 5000), (4 * MiB, b"b" * 10)])
    try:
        if os.fstat(fd).st_blocks * 512 >= 8 * MiB:
            pytest.skip("this file system does not make sparse files")
        pieces = list(chunk_fd(fd, SMALL))
        content = b"".join(bytes(p.size) if p.is_hole else p.data for p in pieces)
        with open(fd, "rb", closefd=False) as f:
            assert content == f.read()
        holes = [p for p in pieces if p.is_hole]
        assert sum(p.size for p in holes) > 7 * MiB
        assert [p.offset for p in holes][0] == 0 and pieces[-1].is_hole
        assert all(p.size >= SMALL.hole_min for p in holes)
    finally:
        os.close(fd)


def test_small_gaps_are_read_as_data(tmp_path):
    fd = _sparse(tmp_path, 1 * MiB, [(0, b"x"), (48 * KiB, b"y")])
    try:
        extents = data_extents(fd, 1 * MiB, 64 * KiB)
        assert extents[0][0] == 0 and len(extents) == 1 and extents[0][1] < 1 * MiB
    finally:
        os.close(fd)


def test_fully_sparse_file_is_one_hole(tmp_path):
    fd = _sparse(tmp_path, 10 * MiB, [])
    try:
        pieces = list(chunk_fd(fd))
        if not pieces[0].is_hole:
            pytest.skip("this file system does not make sparse files")
        assert _cuts(pieces) == [(0, 10 * MiB, True)]
    finally:
        os.close(fd)


def test_sparse_off_reads_everything(tmp_path):
    fd = _sparse(tmp_path, 2 * MiB, [(1 * MiB, b"z")])
    try:
        assert not any(p.is_hole for p in chunk_fd(fd, SMALL, sparse=False))
    finally:
        os.close(fd)


@pytest.mark.parametrize("kw", [dict(min_size=10), dict(min_size=2 * MiB, avg_size=1 * MiB),
                                dict(max_size=512 * KiB), dict(min_size=64, avg_size=128, max_size=2048)])
def test_bad_params_are_refused(kw):
    with pytest.raises(ValueError):
        ChunkerParams(**kw)


def test_read_small_reads_a_small_file_whole_or_says_no(tmp_path):
    from pkvc.chunker import read_small
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        assert read_small(fd, st, SMALL) == b"hello"
        with open(path, "ab") as f:
            f.write(b" world")  # it grew since `st`: chunk it instead
        assert read_small(fd, st, SMALL) is None
        assert read_small(fd, os.fstat(fd), ChunkerParams(min_size=64, avg_size=256,
                                                          max_size=1024)) == b"hello world"
    finally:
        os.close(fd)


def _pieces(tmp_path, data, name, **kw):
    fd = _fd(tmp_path, data, name)
    try:
        return [(p.offset, p.size, p.data, p.ref) for p in chunk_fd(fd, SMALL, **kw)]
    finally:
        os.close(fd)


def _edit(data, seed, kind):
    rng = random.Random(seed)
    at = rng.randrange(len(data) + 1)
    if kind == "insert":
        return data[:at] + rng.randbytes(rng.randrange(1, 3000)) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + rng.randrange(1, 3000):]
    if kind == "overwrite":
        return data[:at] + rng.randbytes(100) + data[at + 100:]
    if kind == "truncate":
        return data[:at]
    if kind == "append":
        return data + rng.randbytes(rng.randrange(1, 40 * KiB))
    return data  # "same"


@pytest.mark.parametrize("kind", ["same", "insert", "delete", "overwrite", "truncate", "append"])
@pytest.mark.parametrize("seed", range(4))
def test_following_previous_chunks_gives_the_plain_pieces(tmp_path, kind, seed):
    # runs of zeros give max-size chunks that repeat, and repeated content
    # gives chunks equal to earlier ones: neither may mislead the guesses
    block = _data(60 * KiB, seed)
    old = block + bytes(50 * KiB) + _data(90 * KiB, seed + 9) + block + bytes(3 * KiB)
    previous = [(size, BlobRef.of(data)) for _, size, data, _ in _pieces(tmp_path, old, "old")]
    new = _edit(old, seed, kind)
    plain = _pieces(tmp_path, new, "plain")
    followed = _pieces(tmp_path, new, "new", previous=previous)
    assert [p[:3] for p in followed] == [p[:3] for p in plain]
    assert all(ref == BlobRef.of(data) for _, _, data, ref in followed)


def test_following_previous_chunks_skips_fastcdc_where_they_repeat(tmp_path, monkeypatch):
    old = _data(400 * KiB)
    previous = [(size, BlobRef.of(data)) for _, size, data, _ in _pieces(tmp_path, old, "old")]
    calls = []
    real = chunker.fastcdc
    monkeypatch.setattr(chunker, "fastcdc", lambda *a: calls.append(1) or real(*a))
    new = old[:5000] + b"inserted" + old[5000:]
    followed = _pieces(tmp_path, new, "new", previous=previous)
    assert b"".join(p[2] for p in followed) == new
    assert len(followed) > 20 and len(calls) <= 4  # the changed chunk, its neighbour, the last


def test_an_empty_previous_chunk_is_never_followed(tmp_path):
    data = _data(100 * KiB)
    plain = _pieces(tmp_path, data, "plain")
    # a damaged or crafted file blob: an empty part after every chunk
    previous = []
    for _, size, chunk, _ in plain:
        previous += [(size, BlobRef.of(chunk)), (0, BlobRef.of(b""))]
    followed = _pieces(tmp_path, data, "new", previous=previous)
    assert [p[:3] for p in followed] == [p[:3] for p in plain]
