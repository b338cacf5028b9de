"""How a blob's bytes are compressed before they are sealed into a pack.

A pack entry's compression id says how to get the blob back:

- 0, none: stored as is (zstd would not make it smaller);
- 1, zstd: one zstd frame;
- 2, zstd with schema dictionary 1: one zstd frame compressed against
  `SCHEMA_DICTIONARY_1` as raw content (a prefix zstd may copy from).

Schema blobs (file, directory, static-set, bytes, symlink; claims) are a
few hundred bytes of JSON with the same keys in the same order. Compressed
one by one, zstd has nothing earlier in the frame to copy from: on the
benchmark's repository 74,074 schema blobs, 28.9 MiB of JSON, took 18.7 MiB
with plain zstd and 10.7 MiB against the dictionary, at the same speed. A
dictionary trained on the data itself did a little better (8.4 MiB) but
learns one machine's names, owners and dates; this one is written by hand,
generic, and readable.

The dictionary is part of the repository format: its bytes must never
change (a test pins their hash). A better dictionary takes a new id.
"""

from __future__ import annotations

import threading

import zstandard

from pkvc.errors import IntegrityError

COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
COMPRESSION_ZSTD_SCHEMA_1 = 2
ZSTD_LEVEL = 3

# Typical schema blobs as pkvc writes them (canonical JSON, keys sorted,
# two-space indent), the commonest shape last: zstd copies nearby matches
# more cheaply.
SCHEMA_DICTIONARY_1 = b"".join([
    b'{"camliVersion": 1,\n'
    b'  "camliType": "permanode",\n'
    b'  "camliSigner": "sha224-\n'
    b'  "random": "\n'
    b'  "claimDate": "\n'
    b'  "claimType": "set-attribute",\n'
    b'  "attribute": "camliContent",\n'
    b'  "value": "sha224-\n'
    b'  "permaNode": "sha224-\n'
    b',"camliSig":"\n'
    b'{"camliVersion": 1,\n'
    b'  "camliType": "symlink",\n'
    b'  "fileName": "\n'
    b'  "symlinkTarget": "../\n'
    b'  "unixGroup": "users",\n'
    b'  "unixGroupId": 100,\n'
    b'  "unixMtime": "2019-06-30T12:00:00.123456789Z",\n'
    b'  "unixOwner": "user",\n'
    b'  "unixOwnerId": 1000\n'
    b'}\n'
    b'{"camliVersion": 1,\n'
    b'  "camliType": "bytes",\n'
    b'  "parts": [\n'
    b'    {\n'
    b'      "bytesRef": "sha224-\n'
    b'      "size": 1048576\n'
    b'    },\n'
    b'    {\n'
    b'      "blobRef": "sha224-\n'
    b'      "offset": \n'
    b'      "size": 2097152\n'
    b'    }\n'
    b'  ]\n'
    b'}\n'
    b'{"camliVersion": 1,\n'
    b'  "camliType": "static-set",\n'
    b'  "members": [\n'
    b'    "sha224-\n'
    b'    "sha224-\n'
    b'  ],\n'
    b'  "mergeSets": [\n'
    b'  ]\n'
    b'}\n'
    b'{"camliVersion": 1,\n'
    b'  "camliType": "directory",\n'
    b'  "entries": "sha224-\n'
    b'  "fileName": "\n'
    b'  "unixGroup": "users",\n'
    b'  "unixGroupId": 100,\n'
    b'  "unixMtime": "2024-01-01T00:00:00.000000000Z",\n'
    b'  "unixOwner": "root",\n'
    b'  "unixOwnerId": 0,\n'
    b'  "unixPermission": "0755"\n'
    b'}\n'
    b'{"camliVersion": 1,\n'
    b'  "camliType": "file",\n'
    b'  "fileName": ".txt",\n'
    b'  "parts": [\n'
    b'    {\n'
    b'      "blobRef": "sha224-\n'
    b'      "size": 4096\n'
    b'    }\n'
    b'  ],\n'
    b'  "unixGroup": "root",\n'
    b'  "unixGroupId": 0,\n'
    b'  "unixMtime": "2025-12-31T23:59:59Z",\n'
    b'  "unixOwner": "root",\n'
    b'  "unixOwnerId": 1000,\n'
    b'  "unixPermission": "0644"\n'
    b'}\n'
])


def _dictionary() -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(SCHEMA_DICTIONARY_1, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


class BlobCompressor:
    """Compresses blobs for one thread (a zstd context is not safe to share)."""

    def __init__(self):
        self._plain = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._schema = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=_dictionary())

    def compress(self, raw, schema: bool) -> tuple[int, "bytes | memoryview"]:
        """(compression id, payload): zstd, against the schema dictionary
        for schema blobs, when that makes the blob smaller; else `raw`."""
        if schema:
            compressed, compression = self._schema.compress(raw), COMPRESSION_ZSTD_SCHEMA_1
        else:
            compressed, compression = self._plain.compress(raw), COMPRESSION_ZSTD
        if len(compressed) < len(raw):
            return compression, compressed
        return COMPRESSION_NONE, raw


_local = threading.local()


def _decompressor(compression: int) -> zstandard.ZstdDecompressor:
    """One decompressor per thread and id: making one costs ~25 us (a CPU
    probe), more than decompressing a small blob; one is not safe across threads."""
    cache = getattr(_local, "dctx", None)
    if cache is None:
        cache = _local.dctx = {}
    dctx = cache.get(compression)
    if dctx is None:
        dctx = cache[compression] = (zstandard.ZstdDecompressor(dict_data=_dictionary())
                                     if compression == COMPRESSION_ZSTD_SCHEMA_1
                                     else zstandard.ZstdDecompressor())
    return dctx


def decompress(compression: int, payload, raw_length: int, what: str) -> "bytes | memoryview":
    """The blob's bytes from its unsealed payload (the payload itself when
    stored as is); IntegrityError, naming `what`, when they do not come back."""
    if compression == COMPRESSION_NONE:
        return payload
    if compression not in (COMPRESSION_ZSTD, COMPRESSION_ZSTD_SCHEMA_1):
        raise IntegrityError(f"{what} has unknown compression {compression} "
                             "(written by a newer pkvc?)")
    try:
        return _decompressor(compression).decompress(payload, max_output_size=raw_length)
    except zstandard.ZstdError:
        raise IntegrityError(f"{what} does not decompress") from None
