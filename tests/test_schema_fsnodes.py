"""file / directory / symlink / fifo / socket blobs and their Unix metadata."""

import os

import pytest
from hypothesis import given, strategies as st

from pkvc.blobref import BlobRef
from pkvc.errors import SchemaError
from pkvc.schema.fsnodes import (
    LINK_GROUP_KEY, DirectoryBlob, FileBlob, SpecialBlob, SymlinkBlob, UnixMeta,
)
from pkvc.schema.canonical import canonical_json
from pkvc.schema.parts import BytesBlob, Part
from pkvc.schema.timefmt import SchemaTime
from vectors import vector_files

A = BlobRef.of(b"a")
META = UnixMeta(0o4755, 1000, "alice", 100, "staff", SchemaTime(1_700_000_000_123_000_000))


def test_file_json_is_perkeep_shaped():
    blob = FileBlob(b"x.txt", (Part(3, blob_ref=A),), META, link_group="g1")
    text = blob.to_json().decode()
    assert text.startswith('{"camliVersion": 1,\n  "camliType": "file",\n  "fileName": "x.txt",')
    for line in ('"unixPermission": "04755"', '"unixOwnerId": 1000', '"unixOwner": "alice"',
                 '"unixGroupId": 100', '"unixGroup": "staff"',
                 '"unixMtime": "2023-11-14T22:13:20.123Z"', f'"{LINK_GROUP_KEY}": "g1"'):
        assert line in text
    assert FileBlob.from_json(blob.to_json()) == blob
    assert blob.size == 3 and blob.refs() == [A]


def test_non_utf8_name_uses_file_name_bytes():
    blob = FileBlob(b"caf\xe9", ())
    assert b'"fileNameBytes": [\n    "caf",\n    233\n  ]' in blob.to_json()
    assert FileBlob.from_json(blob.to_json()).name == b"caf\xe9"


def test_meta_from_stat(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    os.chmod(path, 0o2640)
    st = os.lstat(path)
    meta = UnixMeta.from_stat(st, "root", "root")
    assert meta.permission == 0o2640 and meta.mtime == SchemaTime(st.st_mtime_ns)
    os.symlink("f", tmp_path / "l")
    assert UnixMeta.from_stat(os.lstat(tmp_path / "l")).permission is None


@pytest.mark.parametrize("perm", ["", "0x1", "9", "0o644", "077777", " 644", "٣"])
def test_bad_permissions_are_schema_errors(perm):
    with pytest.raises(SchemaError):
        FileBlob.from_json({"camliVersion": 1, "camliType": "file", "unixPermission": perm})


def test_directory_symlink_special():
    d = DirectoryBlob(b"d", A, UnixMeta(0o755))
    assert DirectoryBlob.from_json(d.to_json()) == d and d.refs() == [A]
    s = SymlinkBlob(b"l", b"../t\xff", UnixMeta(uid=1))
    assert b'"symlinkTargetBytes"' in s.to_json() and b"unixPermission" not in s.to_json()
    assert SymlinkBlob.from_json(s.to_json()) == s
    f = SpecialBlob("fifo", b"p", UnixMeta(0o600))
    assert f.camli_type == "fifo" and SpecialBlob.from_json(f.to_json()) == f
    with pytest.raises(ValueError):
        SpecialBlob("chardev", b"x")


@pytest.mark.parametrize("m", [
    {"camliType": "directory"},
    {"camliType": "directory", "entries": "x"},
    {"camliType": "symlink"},
    {"camliType": "symlink", "symlinkTarget": "a", "symlinkTargetBytes": ["a"]},
    {"camliType": "file", "fileName": "a", "fileNameBytes": ["a"]},
    {"camliType": "file", "unixMtime": "yesterday"},
    {"camliType": "file", "unixOwnerId": -1},
    {"camliType": "file", "parts": "nope"},
])
def test_malformed_nodes_are_schema_errors(m):
    cls = {"directory": DirectoryBlob, "symlink": SymlinkBlob, "file": FileBlob}[m["camliType"]]
    with pytest.raises(SchemaError):
        cls.from_json({"camliVersion": 1, **m})


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"/abs", b"a\0"])
def test_hostile_names_parse_but_are_flagged(name):
    blob = FileBlob.from_json(FileBlob(name, ()).to_json())
    assert blob.name == name and blob.name_problem


def test_perkeep_file_vectors_round_trip_typed():
    paths = [p for p in vector_files("unsigned/file-*.json") if "oldformat" not in p.name]
    for path in paths:
        assert FileBlob.from_json(path.read_bytes()).to_json() == path.read_bytes()
    (old,) = vector_files("unsigned/file-oldformat*.json")
    blob = FileBlob.from_json(old.read_bytes())
    assert blob.size == 14 and blob.meta.permission == 0o644 and blob.name == b"Hi.txt"
    assert blob.to_json() != old.read_bytes()  # 2011 contentParts are rewritten as parts


_name = st.binary(max_size=12)
_meta = st.builds(
    UnixMeta, st.none() | st.integers(0, 0o7777), st.none() | st.integers(0, 2**32),
    st.none() | st.text(max_size=8), st.none() | st.integers(0, 2**32),
    st.none() | st.text(max_size=8),
    st.none() | st.integers(0, 2**62).map(SchemaTime),
)
_parts = st.lists(st.builds(Part, st.integers(0, 2**30), blob_ref=st.just(A)), max_size=4)


@given(_name, _parts, _meta, st.none() | st.text(min_size=1, max_size=8))
def test_file_round_trip(name, parts, meta, group):
    blob = FileBlob(name, tuple(parts), meta, link_group=group)
    assert FileBlob.from_json(blob.to_json()) == blob


@given(_name, st.binary(min_size=1, max_size=30), _meta)
def test_symlink_round_trip(name, target, meta):
    blob = SymlinkBlob(name, target, meta)
    assert SymlinkBlob.from_json(blob.to_json()) == blob


_any_parts = st.lists(st.builds(
    Part, st.integers(0, 2**40), blob_ref=st.none() | st.just(A),
    offset=st.integers(0, 2**20)), max_size=4).map(
    lambda ps: ps + [Part(7, bytes_ref=A, offset=3)] if len(ps) % 2 else ps)
_text = st.text(max_size=8)  # any code points: escapes, surrogates, U+2028, "<&>"


@given(_name | st.none(), _any_parts, _meta, st.none() | _text, st.none() | st.just(A))
def test_file_json_is_canonical_json_of_its_map(name, parts, meta, group, whole):
    """to_json writes the blob without building its map: the same bytes."""
    blob = FileBlob(name, tuple(parts), meta, whole_ref=whole, link_group=group)
    assert blob.to_json() == canonical_json(blob.to_map())


@given(_name | st.none(), st.binary(min_size=1, max_size=30), _meta,
       st.sampled_from(["fifo", "socket"]))
def test_other_node_json_is_canonical_json_of_its_map(name, target, meta, kind):
    for blob in (DirectoryBlob(name, A, meta), SymlinkBlob(name, target, meta),
                 SpecialBlob(kind, name, meta)):
        assert blob.to_json() == canonical_json(blob.to_map())


@given(_any_parts)
def test_bytes_json_is_canonical_json_of_its_map(parts):
    blob = BytesBlob(tuple(parts))
    assert blob.to_json() == canonical_json(blob.to_map())
