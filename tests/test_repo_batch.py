"""Batched reads: get_many and scan_pack give what get gives, verified, with bounded memory."""

import os
import random
import threading

import pytest

from pkvc import packscan, repo as repo_mod
from pkvc.backends.local import LocalBackend
from pkvc.blobref import BlobRef
from pkvc.errors import BlobNotFoundError, IntegrityError
from pkvc.pack import pack_name
from pkvc.repo import READ_SPAN, Repository, _reader_pool, _spans
from pkvc.index import Location

PASSWORD = b"correct horse battery staple"  # as in conftest.py
SMALL_PACKS = 64 * 1024


@pytest.fixture
def many(repo_path, cache_dir):
    """A repository of small packs holding 200 blobs of mixed sizes, closed after."""
    r = Repository.create(LocalBackend(repo_path), PASSWORD, cache_dir, pack_size=SMALL_PACKS)
    rnd = random.Random(7)
    blobs = {}
    for i in range(200):
        data = os.urandom(rnd.choice((10, 300, 5000, 40000))) if i % 3 else b"%d" % i * 50
        blobs[r.put(data)] = data
    r.flush()
    yield r, blobs
    r.close()


def _packs_of(r, refs):
    return {r.locate(ref).pack_id for ref in refs}


def test_same_blobs_as_get_in_any_order_with_duplicates(many):
    r, blobs = many
    refs = list(blobs)
    assert len(_packs_of(r, refs)) > 10  # spread over many packs
    random.Random(1).shuffle(refs)
    got = list(r.get_many(refs + refs[:20]))
    assert len(got) == len(blobs)  # each blob once
    assert dict(got) == blobs
    assert dict(r.get_many(reversed(refs))) == blobs


def test_unflushed_blobs_are_read_too(repo):
    ref = repo.put(b"not yet in a pack")
    assert list(repo.get_many([ref])) == [(ref, b"not yet in a pack")]


def test_a_missing_blob_raises_before_anything_is_read(many):
    r, blobs = many
    absent = BlobRef.of(b"never stored")
    with pytest.raises(BlobNotFoundError, match=str(absent)):
        next(r.get_many([*blobs, absent]))
    assert dict(r.get_many([*blobs, absent], skip_missing=True)) == blobs


def test_a_damaged_blob_in_a_batch_is_named(many, repo_path):
    r, blobs = many
    victim = sorted(blobs, key=str)[17]
    loc = r.locate(victim)
    path = repo_path / pack_name(loc.pack_id)
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=str(victim)):
        dict(r.get_many(blobs))
    others = [ref for ref in blobs if r.locate(ref).pack_id != loc.pack_id]
    assert dict(r.get_many(others)) == {ref: blobs[ref] for ref in others}


def test_a_pack_deleted_meanwhile(many, repo_path):
    r, blobs = many
    gone = r.locate(next(iter(blobs))).pack_id
    (repo_path / pack_name(gone)).unlink()  # the index still lists it
    lost = {ref for ref in blobs if r.locate(ref).pack_id == gone}
    with pytest.raises(BlobNotFoundError):
        dict(r.get_many(blobs))
    got = dict(r.get_many(blobs, skip_missing=True))
    assert got == {ref: data for ref, data in blobs.items() if ref not in lost}


def test_reads_stay_a_bounded_number_ahead(many, repo_path, monkeypatch):
    r, blobs = many
    monkeypatch.setattr(repo_mod, "READ_SPAN", 8 * 1024)  # many small reads
    loads = []

    class Counting(LocalBackend):
        def load(self, name, offset=0, length=None):
            loads.append(length)
            return super().load(name, offset, length)

    r.backend = Counting(repo_path)
    batch = r.get_many(blobs)
    first = next(batch)
    assert 0 < len(loads) <= repo_mod.READ_AHEAD + 1
    assert dict([first, *batch]) == blobs and len(loads) > 20


def test_eager_reads_start_at_once_and_close_stops_them(many, repo_path, monkeypatch):
    r, blobs = many
    monkeypatch.setattr(repo_mod, "READ_SPAN", 8 * 1024)  # many small reads
    loads = []
    started = threading.Event()

    class Counting(LocalBackend):
        def load(self, name, offset=0, length=None):
            loads.append(length)
            started.set()
            return super().load(name, offset, length)

    r.backend = Counting(repo_path)
    batch = r.get_many(blobs, eager=True)
    assert started.wait(10)  # before any next()
    assert dict(batch) == blobs and len(loads) > 20
    done = len(loads)
    unused = r.get_many(blobs, eager=True)
    unused.close()  # never iterated: the reads not begun are cancelled
    for _ in range(2 * repo_mod.READ_THREADS):  # the reader threads have taken what was queued
        _reader_pool().submit(lambda: None).result()
    assert len(loads) - done <= repo_mod.READ_AHEAD


def test_spans_are_bounded_in_bytes_read_and_bytes_returned():
    refs = [BlobRef.of(b"%d" % i) for i in range(1000)]
    rnd = random.Random(3)
    located, offset = [], 0
    for i, ref in enumerate(refs):
        length = rnd.choice((100, 50_000, 1_000_000))
        raw = length * rnd.choice((1, 20))  # some compress very well
        located.append((ref, Location(f"{i % 3:064x}", 0, 1, offset, length, raw)))
        offset += length + rnd.choice((0, 0, 300_000))
    spans = _spans(located)
    assert sorted(ref for s in spans for ref, _ in s.blobs) == sorted(refs)
    for s in spans:
        assert all(loc.pack_id == s.pack_id for _, loc in s.blobs)
        assert all(s.start <= loc.offset and loc.offset + loc.length <= s.end for _, loc in s.blobs)
        if len(s.blobs) > 1:
            assert s.end - s.start <= READ_SPAN
            assert sum(loc.raw_length for _, loc in s.blobs) <= READ_SPAN


def test_scan_pack_hashes_every_byte_and_opens_every_blob(many, repo_path):
    r, blobs = many
    pack_id, size = next(iter(r.list_packs().items()))
    entries = r.read_pack_header(pack_id, size)
    seen = {}
    digest, n = r.scan_pack(pack_id, entries, lambda e, raw: seen.__setitem__(e.ref, raw))
    assert (digest, n) == (pack_id, size)
    assert seen == {e.ref: blobs[e.ref] for e in entries}
    path = repo_path / pack_name(pack_id)
    data = bytearray(path.read_bytes())
    victim = entries[len(entries) // 2]
    data[victim.offset] ^= 0x01
    path.write_bytes(bytes(data))
    seen.clear()
    digest, _ = r.scan_pack(pack_id, entries, lambda e, raw: seen.__setitem__(e.ref, raw))
    assert digest != pack_id
    assert isinstance(seen.pop(victim.ref), IntegrityError)
    assert seen == {e.ref: blobs[e.ref] for e in entries if e.ref != victim.ref}


def test_scan_pack_in_pieces_smaller_than_its_blobs_and_of_a_truncated_pack(many, repo_path,
                                                                           monkeypatch):
    r, blobs = many
    monkeypatch.setattr(packscan, "SCAN_PIECE", 4096)  # blobs of 5000 and 40000 bytes span pieces
    pack_id, size = max(r.list_packs().items(), key=lambda item: item[1])
    entries = r.read_pack_header(pack_id, size)
    seen = {}
    assert r.scan_pack(pack_id, entries, lambda e, raw: seen.__setitem__(e.ref, raw)) == (pack_id,
                                                                                         size)
    assert seen == {e.ref: blobs[e.ref] for e in entries}
    path = repo_path / pack_name(pack_id)
    cut = sorted(entries, key=lambda e: e.offset)[len(entries) // 2]
    path.write_bytes(path.read_bytes()[:cut.offset + cut.length // 2])
    seen.clear()
    digest, n = r.scan_pack(pack_id, entries, lambda e, raw: seen.__setitem__(e.ref, raw))
    assert digest != pack_id and n == cut.offset + cut.length // 2
    for e in entries:
        if e.offset + e.length <= n:
            assert seen[e.ref] == blobs[e.ref]
        else:
            assert isinstance(seen[e.ref], IntegrityError) and "truncated" in str(seen[e.ref])
