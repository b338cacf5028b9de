"""Pack files: many encrypted blobs in one object that describes itself.

Layout of a pack (all integers little-endian):

    blob_0 | blob_1 | ... | blob_n-1 | header | header_length (u32)

Each `blob_i` is `seal(data_key, payload, ad=blobref key)` where payload is
the blob, zstd-compressed when that makes it smaller (`pkvc.compression`).
`header` is `seal(data_key, entries, ad=HEADER_AD)`; its entries give each
blob's ref, kind, compression, offset, sealed length and raw length. So a
pack can be read without any index, which is what makes the index a mere
cache. A pack is named by the SHA-256 of its bytes and is never modified.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Callable, NamedTuple

from pkvc import crypto
from pkvc.blobref import BlobRef
from pkvc.compression import BlobCompressor, decompress
from pkvc.errors import IntegrityError

HEADER_VERSION = 1
HEADER_AD = b"pkvc pack header v1"
TARGET_PACK_SIZE = 16 * 1024 * 1024
TAIL_READ = 64 * 1024

KIND_DATA = 0  # raw bytes: file chunks, key blobs, anything not schema
KIND_SCHEMA = 1  # unsigned schema blob (file, directory, static-set, ...)
KIND_SIGNED = 2  # signed schema blob (permanode, claim)
KIND_NAMES = {KIND_DATA: "data", KIND_SCHEMA: "schema", KIND_SIGNED: "signed"}

_ENTRY_FIXED = struct.Struct("<BBQII")  # kind, compression, offset, length, raw_length
_TRAILER = struct.Struct("<I")


class PackEntry(NamedTuple):
    """Where one blob sits in a pack and how to turn it back into bytes."""

    ref: BlobRef
    kind: int
    compression: int
    offset: int
    length: int
    raw_length: int


def pack_name(pack_id: str) -> str:
    """The backend object name of a pack: `packs/<2 hex>/<id>`."""
    return f"packs/{pack_id[:2]}/{pack_id}"


def pack_id_from_name(name: str) -> str:
    return name.rsplit("/", 1)[-1]


@dataclass
class FinishedPack:
    pack_id: str
    data: bytes | bytearray | None  # never changed once finished; None once streamed out
    entries: list[PackEntry]
    size: int  # bytes of the whole pack


def seal_blob(data_key: bytes, compressor: BlobCompressor, ref: BlobRef,
              raw, kind: int) -> tuple[int, bytes]:
    """(compression, sealed bytes) of one blob: zstd if that makes it smaller.

    Pure and thread-safe given a compressor per thread (zstd and libsodium
    release the GIL), so `pkvc.packer` runs it on a pool of threads.
    """
    compression, payload = compressor.compress(raw, schema=kind != KIND_DATA)
    return compression, crypto.seal(data_key, payload, ref.to_key())


class PackWriter:
    """Accumulates sealed blobs in memory until the pack is big enough."""

    def __init__(self, data_key: bytes):
        self._key = data_key
        self._buf = bytearray()
        self._entries: list[PackEntry] = []
        self._compressor: BlobCompressor | None = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return len(self._buf)

    def add(self, ref: BlobRef, raw, kind: int) -> PackEntry:
        """Compress if it helps, seal, append; returns the new entry."""
        if self._compressor is None:
            self._compressor = BlobCompressor()
        compression, sealed = seal_blob(self._key, self._compressor, ref, raw, kind)
        return self.append(ref, kind, compression, sealed, len(raw))

    def append(self, ref: BlobRef, kind: int, compression: int, sealed, raw_length: int) -> PackEntry:
        """Append a blob `seal_blob` already sealed with this writer's key."""
        entry = PackEntry(ref, kind, compression, len(self._buf), len(sealed), raw_length)
        self._buf += sealed
        self._entries.append(entry)
        return entry

    def finish(self) -> FinishedPack:
        """Append the sealed header and trailer; name the pack by its hash.

        The pack's bytes are the writer's own buffer, handed over without a
        copy (16 MiB less at peak); the writer starts a new one.
        """
        self._buf += pack_tail(self._key, self._entries)
        data = self._buf
        pack = FinishedPack(hashlib.sha256(data).hexdigest(), data, self._entries, len(data))
        self._buf = bytearray()
        self._entries = []
        return pack


def pack_tail(data_key: bytes, entries: list[PackEntry]) -> bytes:
    """What follows a pack's blobs: its sealed header, then the header's length."""
    header = crypto.seal(data_key, encode_header(entries), HEADER_AD)
    return header + _TRAILER.pack(len(header))


def encode_header(entries: list[PackEntry]) -> bytes:
    out = bytearray(struct.pack("<BI", HEADER_VERSION, len(entries)))
    for e in entries:
        key = e.ref.to_key()
        out += bytes([len(key)]) + key
        out += _ENTRY_FIXED.pack(e.kind, e.compression, e.offset, e.length, e.raw_length)
    return bytes(out)


def decode_header(data: bytes) -> list[PackEntry]:
    try:
        version, count = struct.unpack_from("<BI", data, 0)
        if version != HEADER_VERSION:
            raise IntegrityError(f"pack header version {version} is not supported")
        pos, entries = 5, []
        for _ in range(count):
            klen = data[pos]
            ref = BlobRef.from_key(data[pos + 1:pos + 1 + klen])
            pos += 1 + klen
            fields = _ENTRY_FIXED.unpack_from(data, pos)
            pos += _ENTRY_FIXED.size
            entries.append(PackEntry(ref, *fields))
    except (struct.error, IndexError, KeyError, ValueError):
        raise IntegrityError("pack header is malformed") from None
    if pos != len(data):
        raise IntegrityError("pack header has trailing bytes")
    return entries


def read_header(data_key: bytes, load: Callable[[int, int | None], bytes], size: int,
                name: str = "pack") -> list[PackEntry]:
    """Read a pack's header through `load(offset, length)` (two reads at most)."""
    if size < _TRAILER.size + crypto.SEAL_OVERHEAD:
        raise IntegrityError(f"{name} is too short to be a pack")
    tail = load(max(0, size - TAIL_READ), None)
    if len(tail) != min(size, TAIL_READ):
        raise IntegrityError(f"{name} changed size while being read")
    (hlen,) = _TRAILER.unpack(tail[-_TRAILER.size:])
    if hlen + _TRAILER.size > size:
        raise IntegrityError(f"{name} has a header length beyond its size")
    if hlen + _TRAILER.size <= len(tail):
        sealed = tail[-_TRAILER.size - hlen:-_TRAILER.size]
    else:
        sealed = load(size - _TRAILER.size - hlen, hlen)
    entries = decode_header(crypto.unseal(data_key, sealed, HEADER_AD, f"header of {name}"))
    header_start = size - _TRAILER.size - hlen
    for e in entries:
        if e.offset + e.length > header_start:
            raise IntegrityError(f"{name} header points past the blob area")
    return entries


def open_blob(data_key: bytes, entry: PackEntry, sealed) -> bytes:
    """Decrypt and decompress one blob; the caller checks it against its ref."""
    plain = open_blob_view(data_key, entry, sealed)
    return plain if isinstance(plain, bytes) else plain.tobytes()


def open_blob_view(data_key: bytes, entry: PackEntry, sealed) -> "bytes | memoryview":
    """`open_blob` without the copy of a blob stored uncompressed (a read-only
    view then): for callers that only hash or write the bytes."""
    what = f"blob {entry.ref}"
    payload = crypto.unseal_view(data_key, sealed, entry.ref.to_key(), what)
    return decompress(entry.compression, payload, entry.raw_length, what)


def pack_data_size(entries: list[PackEntry]) -> int:
    """Bytes the blobs take in the pack, headers excluded."""
    return sum(e.length for e in entries)
