"""static-set: members, and Perkeep's mergeSets split above the limit."""

import pytest

from pkvc.blobref import BlobRef
from pkvc.errors import SchemaError
from pkvc.schema.staticset import MAX_STATIC_SET_MEMBERS, StaticSetBlob, static_set_blobs
from vectors import vector_files


def _refs(n, tag="m"):
    return [BlobRef.of(f"{tag}{i}".encode()) for i in range(n)]


def _members(blobs):
    """Follow mergeSets through the returned blobs; give members in order."""
    by_ref = {BlobRef.of(b): StaticSetBlob.from_json(b) for b in blobs}

    def walk(s):
        if s.merge_sets:
            return [m for r in s.merge_sets for m in walk(by_ref[r])]
        return list(s.members)
    return walk(StaticSetBlob.from_json(blobs[0]))


def test_perkeep_limit():
    assert MAX_STATIC_SET_MEMBERS == 10_000


def test_small_and_empty_sets_use_members():
    assert static_set_blobs([]) == [(b'{"camliVersion": 1,\n  "camliType": "static-set",\n  "members": []\n}', [])]
    ((only, refs),) = static_set_blobs(_refs(3))
    assert StaticSetBlob.from_json(only).members == tuple(_refs(3)) == tuple(refs)


@pytest.mark.parametrize("n, max_members, top_sets", [
    (10, 10, 0), (11, 10, 2), (13, 10, 2), (20, 10, 2), (103, 10, 9 + 1), (10_001, 10_000, 2),
])
def test_split_follows_perkeep(n, max_members, top_sets):
    members = _refs(n)
    pairs = static_set_blobs(members, max_members)
    assert all(StaticSetBlob.from_json(b).refs() == refs for b, refs in pairs)
    blobs = [b for b, _ in pairs]
    top = StaticSetBlob.from_json(blobs[0])
    assert len(top.merge_sets) == top_sets
    assert _members(blobs) == members
    assert all(len(StaticSetBlob.from_json(b).refs()) <= max_members for b in blobs)


def test_recursive_split_shape():
    blobs = [b for b, _ in static_set_blobs(_refs(103), 10)]
    top = StaticSetBlob.from_json(blobs[0])
    sizes = [len(_members([b for b in blobs if BlobRef.of(b) == r] + blobs)) for r in top.merge_sets]
    assert sizes == [11] * 9 + [4]


def test_both_members_and_merge_sets_is_refused():
    a = str(BlobRef.of(b"a"))
    with pytest.raises(SchemaError):
        StaticSetBlob.from_json({"camliVersion": 1, "camliType": "static-set",
                                 "members": [a], "mergeSets": [a]})
    with pytest.raises(SchemaError):
        StaticSetBlob.from_json({"camliVersion": 1, "camliType": "static-set", "members": ["x"]})


def test_handwritten_vector():
    (path,) = vector_files("handwritten/index-static-set.json")
    assert len(StaticSetBlob.from_json(path.read_bytes()).members) == 1
