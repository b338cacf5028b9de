"""walk_refs: the gc's fast path gives exactly schema_refs(parse_blob(...)) on valid blobs."""

import json

import pytest

from fstree import make_rich_tree
from memstore import MemStore
from pkvc.blobref import BlobRef
from pkvc.chunker import KiB, ChunkerParams
from pkvc.errors import SchemaError
from pkvc.schema.anyblob import parse_blob, schema_refs, walk_refs
from pkvc.schema.fsnodes import FileBlob
from pkvc.schema.parts import BytesBlob, Part
from pkvc.schema.staticset import StaticSetBlob
from pkvc.tree import put_path
from vectors import vector_files

A, B, C = (BlobRef.of(x) for x in (b"a", b"b", b"c"))


def _same(data: bytes) -> None:
    try:
        expected = schema_refs(parse_blob(data))
    except (SchemaError, ValueError, TypeError):
        return
    assert walk_refs(data) == expected


def test_every_vector():
    files = vector_files("**/*.json")
    for path in files:
        _same(path.read_bytes())


def test_every_blob_of_a_stored_tree(tmp_path):
    store = MemStore()
    put_path(make_rich_tree(tmp_path / "src"), store,
             chunker=ChunkerParams(1 * KiB, 4 * KiB, 16 * KiB), max_parts=3, max_set_members=4)
    schema = [d for d in store.blobs.values() if d.startswith(b'{"camliVersion"')]
    assert len(schema) > 20
    for data in schema:
        _same(data)


@pytest.mark.parametrize("blob", [
    FileBlob(b"f", (Part(1, blob_ref=A), Part(9), Part(2, bytes_ref=B)), whole_ref=C),
    BytesBlob((Part(1, blob_ref=C), Part(3))),
    StaticSetBlob((A, B)), StaticSetBlob(merge_sets=(C,)),
])
def test_each_tree_type(blob):
    assert walk_refs(blob.to_json()) == schema_refs(blob)


def test_content_parts_and_malformed_refs():
    old = {"camliVersion": 1, "camliType": "file", "contentParts": [{"blobRef": str(A), "size": 1}]}
    assert walk_refs(json.dumps(old).encode()) == schema_refs(parse_blob(json.dumps(old).encode()))
    bad = {"camliVersion": 1, "camliType": "file", "parts": [{"blobRef": "sha224-zz", "size": 1}]}
    with pytest.raises(SchemaError):
        walk_refs(json.dumps(bad).encode())
    with pytest.raises(SchemaError):
        walk_refs(b'{"camliVersion": 1, "camliType": "directory"}')
