"""check: one pass over the packs finds damage and dangling references, and goes on."""

import os

import pytest

from pkvc.backends.local import LocalBackend
from pkvc.blobref import BlobRef
from pkvc import check as check_mod
from pkvc.check import check_repository
from pkvc.pack import KIND_DATA, pack_name
from pkvc.repo import Repository
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob
from pkvc.schema.parts import Part
from pkvc.schema.staticset import StaticSetBlob

PASSWORD = b"correct horse battery staple"  # as in conftest.py


@pytest.fixture
def small(tmp_path):
    """A repository of small packs: 30 files in a directory, one part missing;
    the file blobs in packs of ten."""
    r = Repository.create(LocalBackend(tmp_path / "repo"), PASSWORD, tmp_path / "cache",
                          pack_size=16 * 1024)
    files = []
    for i in range(30):
        data = os.urandom(2000 + i)
        files.append(r.put(FileBlob(b"f%d" % i, (Part(len(data), blob_ref=r.put_data(data)),)).to_json()))
        if i % 10 == 9:
            r.flush()  # schema blobs in several packs (they never share one with data)
    ghost = BlobRef.of(b"never stored")
    files.append(r.put(FileBlob(b"dangling", (Part(5, blob_ref=ghost),)).to_json()))
    top = r.put(DirectoryBlob(b"top", r.put(StaticSetBlob(tuple(files)).to_json())).to_json())
    r.flush()
    yield r, top, ghost, files
    r.close()


def _flip(repo_path, r, ref):
    loc = r.locate(ref)
    path = repo_path / pack_name(loc.pack_id)
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return loc.pack_id


@pytest.mark.parametrize("read_data", [False, True])
def test_a_dangling_reference_is_found_with_or_without_reading_data(small, read_data):
    r, _, ghost, files = small
    report = check_repository(r, read_data=read_data)
    assert report.problems == [f"blob {ghost}, referenced by {files[-1]}, is missing"]
    assert report.packs >= 4 and report.schema_blobs == 33
    assert report.bytes_read == (sum(r.list_packs().values()) if read_data else 0)


@pytest.mark.parametrize("hash_batch", [None, 7])
def test_headers_that_the_index_holds_exactly_need_no_lookup_per_entry(small, monkeypatch,
                                                                       hash_batch):
    r, _, ghost, files = small
    if hash_batch:  # the index pass hashes its entries a few at a time: same digests
        monkeypatch.setattr(check_mod, "HASH_BATCH", hash_batch)
    monkeypatch.setattr(r, "locate", lambda ref: pytest.fail(f"looked up {ref}"))
    report = check_repository(r, read_data=True)
    assert report.problems == [f"blob {ghost}, referenced by {files[-1]}, is missing"]


def test_a_damaged_schema_blob_is_named_and_the_rest_still_checked(small, tmp_path):
    r, _, ghost, files = small
    pack = _flip(tmp_path / "repo", r, files[3])
    problems = check_repository(r, read_data=True).problems
    assert f"pack {pack}: content does not match its name (damaged)" in problems
    assert any(p.startswith(f"blob {files[3]} in pack {pack}:") for p in problems)
    assert any(p.startswith(f"schema blob {files[3]}:") for p in problems)
    assert f"blob {ghost}, referenced by {files[-1]}, is missing" in problems
    without = check_repository(r).problems  # headers intact: only the reference walk reads it
    assert any(p.startswith(f"schema blob {files[3]}:") for p in without)
    assert f"blob {ghost}, referenced by {files[-1]}, is missing" in without


def test_a_damaged_data_blob_and_a_missing_pack(small, tmp_path):
    r, _, ghost, files = small
    gone = r.locate(files[20]).pack_id
    data_ref = next(ref for ref, loc in r.enumerate()
                    if loc.kind == KIND_DATA and loc.pack_id != gone)
    damaged = _flip(tmp_path / "repo", r, data_ref)
    os.unlink(tmp_path / "repo" / pack_name(gone))
    problems = check_repository(r, read_data=True).problems
    assert any(p.startswith(f"blob {data_ref} in pack {damaged}:") for p in problems)
    assert f"blob {files[20]}: indexed in pack {gone}, which is missing" in problems
    assert any(p.startswith(f"schema blob {files[20]}:") for p in problems)
    assert f"blob {ghost}, referenced by {files[-1]}, is missing" in problems


def test_an_index_that_disagrees_with_a_header_is_named(small):
    r, _, ghost, files = small
    lost, moved = files[5], files[6]
    lost_pack = r.locate(lost).pack_id
    moved_loc = r.locate(moved)
    r.index._pending[b"b" + lost.to_key()] = None  # damage the cache: one row gone,
    wrong = moved_loc._replace(offset=moved_loc.offset + 1)  # one row pointing elsewhere
    r.index.add_pack(moved_loc.pack_id, r.list_packs()[moved_loc.pack_id],
                     [wrong.entry(moved)])
    r.index.flush()
    problems = check_repository(r, read_data=True).problems
    assert f"blob {lost} in pack {lost_pack} is not in the index (run reindex)" in problems
    assert f"blob {moved}: index and header of pack {moved_loc.pack_id} disagree" in problems


def test_a_truncated_pack_is_named_and_its_schema_blobs_too(small, tmp_path):
    r, _, ghost, files = small
    loc = r.locate(files[12])
    path = tmp_path / "repo" / pack_name(loc.pack_id)
    path.write_bytes(path.read_bytes()[:loc.offset + loc.length // 2])  # its header gone too
    problems = check_repository(r, read_data=True).problems
    assert any(p.startswith(f"pack {loc.pack_id}: ") for p in problems)
    assert any(p.startswith(f"schema blob {files[12]}:") for p in problems)
    assert f"blob {ghost}, referenced by {files[-1]}, is missing" in problems


def test_a_data_pack_read_before_the_index_pass_ends_still_names_a_disagreement(small):
    r, _, ghost, files = small
    data_ref, loc = next((ref, loc) for ref, loc in r.enumerate() if loc.kind == KIND_DATA)
    r.index.add_pack(loc.pack_id, r.list_packs()[loc.pack_id],
                     [loc._replace(length=loc.length - 1).entry(data_ref)])
    r.index.flush()
    report = check_repository(r, read_data=True)
    assert sorted(report.problems) == sorted([  # (in the order of pack names)
        f"blob {data_ref}: index and header of pack {loc.pack_id} disagree",
        f"pack {loc.pack_id}: the index lists 1 blobs its header does not hold (run reindex)",
        f"blob {ghost}, referenced by {files[-1]}, is missing"])
    assert report.bytes_read == sum(r.list_packs().values())  # each pack read once


def test_a_failing_index_pass_stops_the_check_with_its_error(small, monkeypatch):
    r = small[0]

    def failing():
        yield from ()
        raise OSError("index unreadable")

    monkeypatch.setattr(r.index, "all_blob_places", failing)
    with pytest.raises(OSError, match="index unreadable"):
        check_repository(r, read_data=True)
