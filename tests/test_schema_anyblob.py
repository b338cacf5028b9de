"""parse_blob dispatch over every vector, and schema_refs for the GC and checker."""

import pytest

from pkvc.blobref import BlobRef
from pkvc.errors import SchemaError
from pkvc.schema.anyblob import OtherBlob, parse_blob, schema_refs
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob, SymlinkBlob
from pkvc.schema.parts import BytesBlob, Part
from pkvc.schema.staticset import StaticSetBlob
from vectors import vector_files

TYPED_ROUND_TRIP = [
    p for p in vector_files("canonical/*.json", "unsigned/*.json")
    if p.name != "misc-vectors.json" and "oldformat" not in p.name
]


@pytest.mark.parametrize("path", TYPED_ROUND_TRIP, ids=lambda p: p.name)
def test_typed_round_trip_of_canonical_vectors(path):
    data = path.read_bytes()
    assert parse_blob(data).to_json() == data


@pytest.mark.parametrize("path", vector_files("signed-sha224/*.json"), ids=lambda p: p.name)
def test_typed_round_trip_of_signed_bodies(path):
    data = path.read_bytes()
    body = data[:data.rindex(b',"camliSig":"')] + b"}"
    assert parse_blob(body).to_json() == body
    assert parse_blob(data).to_json() == body  # camliSig is jsonsign's business


@pytest.mark.parametrize("path", vector_files("handwritten/*"), ids=lambda p: p.name)
def test_handwritten_vectors_parse(path):
    blob = parse_blob(path.read_bytes())
    assert schema_refs(blob)
    assert blob.to_json() != path.read_bytes()  # never re-serialise these for their ref


def test_handwritten_refs():
    (d,) = vector_files("handwritten/index-directory.json")
    (f,) = vector_files("handwritten/share-link-file-with-bytesref.json")
    assert schema_refs(parse_blob(d.read_bytes())) == [
        BlobRef.parse("sha224-3d06e49b5dc309570ff284db94d05c0d484adb92ea25722e359f36d4")]
    assert [r.hexdigest[:8] for r in schema_refs(parse_blob(f.read_bytes()))] == ["4d868223", "1f6ca22f"]


def test_old_shapes_come_back_as_other_blobs():
    (share,) = vector_files("signed/share-user2.sha1-*.json")
    blob = parse_blob(share.read_bytes())
    assert isinstance(blob, OtherBlob) and blob.camli_type == "share"
    assert [str(r)[:9] for r in schema_refs(blob)] == ["sha1-0e5e", "sha1-f019"]


def test_refs_of_every_type():
    a, b, c = (BlobRef.of(x) for x in (b"a", b"b", b"c"))
    assert schema_refs(FileBlob(b"f", (Part(1, blob_ref=a), Part(9), Part(2, bytes_ref=b)))) == [a, b]
    assert schema_refs(BytesBlob((Part(1, blob_ref=c),))) == [c]
    assert schema_refs(DirectoryBlob(b"d", a)) == [a]
    assert schema_refs(StaticSetBlob((a, b))) == [a, b]
    assert schema_refs(StaticSetBlob(merge_sets=(c,))) == [c]
    assert schema_refs(SymlinkBlob(b"l", b"t")) == []


@pytest.mark.parametrize("data", [
    b"hello", b'{"camliVersion": 1, "camliType": "file", "parts": [{"size": "x"}]}',
    b'{"camliVersion": 1, "camliType": "mystery", "camliSigner": "bad"}',
])
def test_not_a_valid_schema_blob(data):
    with pytest.raises(SchemaError):
        parse_blob(data)
