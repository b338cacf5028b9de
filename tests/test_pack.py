"""The pack format: what goes in comes out, and any tampering is caught."""

import hashlib
import os

import pytest
from hypothesis import given, settings, strategies as st

from pkvc import crypto
from pkvc.blobref import BlobRef
from pkvc.errors import IntegrityError
from pkvc.compression import (COMPRESSION_NONE, COMPRESSION_ZSTD, COMPRESSION_ZSTD_SCHEMA_1,
                              SCHEMA_DICTIONARY_1, BlobCompressor, decompress)
from pkvc.pack import (KIND_DATA, KIND_SCHEMA, KIND_SIGNED, PackWriter,
                       decode_header, encode_header, open_blob, open_blob_view, read_header)

KEY = bytes(range(32))


def _loader(data: bytes):
    def load(offset, length):
        return data[offset:] if length is None else data[offset:offset + length]
    return load


blobs = st.lists(st.binary(max_size=5000) | st.builds(lambda n: b"a" * n, st.integers(0, 70000)),
                 min_size=1, max_size=20, unique=True)


@given(blobs)
@settings(max_examples=60)
def test_pack_round_trip(contents):
    writer = PackWriter(KEY)
    for i, data in enumerate(contents):
        writer.add(BlobRef.of(data), data, KIND_SCHEMA if i % 2 else KIND_DATA)
    pack = writer.finish()
    entries = read_header(KEY, _loader(pack.data), len(pack.data))
    assert entries == pack.entries
    for entry, data in zip(entries, contents):
        sealed = pack.data[entry.offset:entry.offset + entry.length]
        assert open_blob(KEY, entry, sealed) == data
        assert entry.raw_length == len(data)


def test_header_encoding_round_trip_with_every_hash():
    writer = PackWriter(KEY)
    for name in ("sha224", "sha1", "sha256"):
        writer.add(BlobRef.of(b"x", name), b"x", KIND_DATA)
    writer.add(BlobRef.parse("foo-abc"), b"y", KIND_DATA)
    pack = writer.finish()
    assert decode_header(encode_header(pack.entries)) == pack.entries


def test_compression_only_when_it_helps():
    writer = PackWriter(KEY)
    compressible = writer.add(BlobRef.of(b"z" * 10000), b"z" * 10000, KIND_DATA)
    noise = os.urandom(10000)
    incompressible = writer.add(BlobRef.of(noise), noise, KIND_DATA)
    assert compressible.compression == COMPRESSION_ZSTD
    assert compressible.length < 200
    assert incompressible.compression == COMPRESSION_NONE


FILE_SCHEMA = b"""{"camliVersion": 1,
  "camliType": "file",
  "fileName": "notes-2026.md",
  "parts": [
    {
      "blobRef": "sha224-1053463d383dc1e87f06fff34b3c6a2d340d91e184d46d70144ffa5a",
      "size": 5123
    }
  ],
  "unixGroup": "alice",
  "unixGroupId": 1000,
  "unixMtime": "2026-03-01T09:30:12.5Z",
  "unixOwner": "alice",
  "unixOwnerId": 1000,
  "unixPermission": "0600"
}"""


def test_schema_blobs_are_compressed_against_the_schema_dictionary():
    writer = PackWriter(KEY)
    as_schema = writer.add(BlobRef.of(FILE_SCHEMA), FILE_SCHEMA, KIND_SCHEMA)
    as_signed = writer.add(BlobRef.of(FILE_SCHEMA + b" "), FILE_SCHEMA + b" ", KIND_SIGNED)
    as_data = writer.add(BlobRef.of(FILE_SCHEMA + b"  "), FILE_SCHEMA + b"  ", KIND_DATA)
    assert as_schema.compression == as_signed.compression == COMPRESSION_ZSTD_SCHEMA_1
    assert as_data.compression == COMPRESSION_ZSTD  # file contents never use the dictionary
    # the dictionary is what makes a lone schema blob small: 140 bytes against 248 here
    overhead = crypto.SEAL_OVERHEAD
    assert as_schema.length - overhead < 0.7 * (as_data.length - overhead)
    pack = writer.finish()
    entries = read_header(KEY, _loader(pack.data), len(pack.data))
    for e in entries:
        assert open_blob(KEY, e, pack.data[e.offset:e.offset + e.length]).startswith(FILE_SCHEMA)


def test_schema_dictionary_never_changes():
    """Blobs already stored decompress only against these exact bytes; a
    better dictionary must take a new compression id."""
    assert hashlib.sha256(SCHEMA_DICTIONARY_1).hexdigest() == (
        "0de0ed0c37f2dc5c90ecc07f05edc6d43060e9f2b999a602ec40bdee074d2ab5")


def test_decompress_refuses_what_it_cannot_read():
    compression, payload = BlobCompressor().compress(FILE_SCHEMA, schema=True)
    assert compression == COMPRESSION_ZSTD_SCHEMA_1
    assert decompress(compression, payload, len(FILE_SCHEMA), "blob x") == FILE_SCHEMA
    with pytest.raises(IntegrityError, match="blob x does not decompress"):
        decompress(COMPRESSION_ZSTD, payload, len(FILE_SCHEMA), "blob x")  # needs the dictionary
    with pytest.raises(IntegrityError, match="blob x has unknown compression 9"):
        decompress(9, payload, len(FILE_SCHEMA), "blob x")
    incompressible = os.urandom(300)
    assert BlobCompressor().compress(incompressible, schema=True) == (COMPRESSION_NONE, incompressible)


def test_backend_sees_no_plaintext_or_blobref():
    data = b"my secret diary " * 100
    writer = PackWriter(KEY)
    ref = BlobRef.of(data)
    writer.add(ref, data, KIND_DATA)
    pack = writer.finish()
    assert b"secret" not in pack.data
    assert ref.digest not in pack.data
    assert ref.hexdigest.encode() not in pack.data


def test_flipped_byte_anywhere_is_caught():
    data = os.urandom(3000)
    writer = PackWriter(KEY)
    writer.add(BlobRef.of(data), data, KIND_DATA)
    pack = writer.finish()
    entry = pack.entries[0]
    for pos in (0, entry.length // 2, entry.length - 1):
        damaged = bytearray(pack.data)
        damaged[pos] ^= 1
        with pytest.raises(IntegrityError):
            open_blob(KEY, entry, damaged[entry.offset:entry.offset + entry.length])
    damaged = bytearray(pack.data)
    damaged[-10] ^= 1  # inside the sealed header
    with pytest.raises(IntegrityError):
        read_header(KEY, _loader(bytes(damaged)), len(damaged))


def test_wrong_key_and_swapped_blobs_are_refused():
    a, b = b"blob a" * 10, b"blob b" * 10
    writer = PackWriter(KEY)
    ea = writer.add(BlobRef.of(a), a, KIND_DATA)
    eb = writer.add(BlobRef.of(b), b, KIND_DATA)
    pack = writer.finish()
    with pytest.raises(IntegrityError):
        read_header(crypto.random_key(), _loader(pack.data), len(pack.data))
    # b's ciphertext presented as a's: the blobref is associated data, so it fails.
    with pytest.raises(IntegrityError):
        open_blob(KEY, ea, pack.data[eb.offset:eb.offset + eb.length])


def test_large_header_needs_a_second_read():
    writer = PackWriter(KEY)
    for i in range(3000):  # ~150 KiB of header, more than the first tail read
        data = i.to_bytes(4, "big")
        writer.add(BlobRef.of(data), data, KIND_DATA)
    pack = writer.finish()
    assert len(read_header(KEY, _loader(pack.data), len(pack.data))) == 3000


def test_truncated_pack_is_refused():
    writer = PackWriter(KEY)
    writer.add(BlobRef.of(b"q"), b"q", KIND_DATA)
    pack = writer.finish()
    for cut in (3, len(pack.data) // 2):
        with pytest.raises(IntegrityError):
            read_header(KEY, _loader(pack.data[:cut]), cut)


def test_open_blob_view_reads_in_place_and_catches_what_open_blob_catches():
    plain, packed = os.urandom(5000), b"z" * 70000
    writer = PackWriter(KEY)
    e1 = writer.add(BlobRef.of(plain), plain, KIND_DATA)
    e2 = writer.add(BlobRef.of(packed), packed, KIND_DATA)
    pack = writer.finish()
    view = memoryview(bytes(pack.data))
    assert (e1.compression, e2.compression) == (COMPRESSION_NONE, COMPRESSION_ZSTD)
    for e, data in ((e1, plain), (e2, packed)):
        got = open_blob_view(KEY, e, view[e.offset:e.offset + e.length])
        assert bytes(got) == data and BlobRef.of(data).matches(got)
        assert type(open_blob(KEY, e, view[e.offset:e.offset + e.length])) is bytes
    damaged = bytearray(pack.data)
    damaged[e1.offset + 30] ^= 1
    with pytest.raises(IntegrityError, match="failed authentication"):
        open_blob_view(KEY, e1, memoryview(damaged)[e1.offset:e1.offset + e1.length])
    with pytest.raises(IntegrityError, match="truncated"):
        open_blob_view(KEY, e1, view[e1.offset:e1.offset + crypto.SEAL_OVERHEAD - 1])
    with pytest.raises(ValueError):
        crypto.unseal_view(KEY[:16], view[e1.offset:e1.offset + e1.length], b"")
