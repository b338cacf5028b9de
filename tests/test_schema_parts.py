"""Parts and `bytes` blobs: refs, holes, offsets, and hostile parts."""

import pytest
from hypothesis import given, strategies as st

from pkvc.blobref import BlobRef
from pkvc.errors import SchemaError
from pkvc.schema.canonical import canonical_json
from pkvc.schema.parts import BytesBlob, Part
from vectors import vector_files

A, B = BlobRef.of(b"a"), BlobRef.of(b"b")


def test_part_json_shapes():
    assert Part(3, blob_ref=A).to_map() == {"blobRef": str(A), "size": 3}
    assert Part(5, bytes_ref=B, offset=2).to_map() == {"bytesRef": str(B), "size": 5, "offset": 2}
    assert Part(4096).to_map() == {"size": 4096}
    assert Part(4096).is_hole and not Part(1, blob_ref=A).is_hole


def test_bytes_blob_json():
    blob = BytesBlob((Part(3, blob_ref=A), Part(10), Part(2, bytes_ref=B)))
    assert blob.to_json() == canonical_json(blob.to_map())
    assert blob.to_json().startswith(b'{"camliVersion": 1,\n  "camliType": "bytes",\n  "parts": [')
    assert BytesBlob.from_json(blob.to_json()) == blob
    assert blob.size == 15 and blob.refs() == [A, B]


@pytest.mark.parametrize("part", [
    {"size": 1, "blobRef": "sha224-00", "bytesRef": str(B)},
    {"size": 1, "blobRef": str(A), "bytesRef": str(B)},
    {"size": -1, "blobRef": str(A)},
    {"blobRef": str(A)},
    {"size": "3", "blobRef": str(A)},
    {"size": 1, "blobRef": "nope"},
    {"size": 1, "offset": -2, "blobRef": str(A)},
    "sha224-xx",
])
def test_bad_parts_are_schema_errors(part):
    with pytest.raises(SchemaError):
        BytesBlob.from_json({"camliVersion": 1, "camliType": "bytes", "parts": [part]})


def test_constructor_refuses_both_refs():
    with pytest.raises(ValueError):
        Part(1, blob_ref=A, bytes_ref=B)


def test_wrong_type_is_refused():
    with pytest.raises(SchemaError):
        BytesBlob.from_json({"camliVersion": 1, "camliType": "file", "parts": []})


@pytest.mark.parametrize("path", vector_files("handwritten/fileread-bytes*.json",
                                              "handwritten/share-link-bytes.json"),
                         ids=lambda p: p.name)
def test_handwritten_bytes_blobs(path):
    blob = BytesBlob.from_json(path.read_bytes())
    assert blob.size in (6, 12) and blob.refs()


_ref = st.binary(min_size=1, max_size=4).map(BlobRef.of)
_part = st.one_of(
    st.builds(Part, st.integers(0, 2**40), blob_ref=_ref, offset=st.integers(0, 2**20)),
    st.builds(Part, st.integers(0, 2**40), bytes_ref=_ref),
    st.builds(Part, st.integers(0, 2**40)),
)


@given(st.lists(_part, max_size=8))
def test_bytes_round_trip(parts):
    blob = BytesBlob(tuple(parts))
    assert BytesBlob.from_json(blob.to_json()) == blob
