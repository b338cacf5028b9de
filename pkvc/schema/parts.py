"""Byte ranges: the `parts` list of `file` and `bytes` blobs.

A part contributes `size` bytes. It takes them from a raw blob (`blobRef`),
from another `bytes` schema blob (`bytesRef`, how big files become a tree so
no schema blob passes 1 MiB), or from nowhere: a part with neither ref is
`size` zero bytes, a hole of a sparse file. `offset` skips that many bytes
of the referenced blob first (Perkeep writes it only when non-zero).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from pkvc.blobref import BlobRef
from pkvc.errors import SchemaError
from pkvc.schema.canonical import go_string, json_value, schema_json
from pkvc.schema.fields import as_map, expect_type, get_int, get_ref


@dataclass(frozen=True)
class Part:
    """One contiguous range of a file's bytes."""

    size: int
    blob_ref: BlobRef | None = None
    bytes_ref: BlobRef | None = None
    offset: int = 0

    def __post_init__(self):
        if self.blob_ref is not None and self.bytes_ref is not None:
            raise ValueError("a part has a blobRef or a bytesRef, not both")
        if self.size < 0 or self.offset < 0:
            raise ValueError("part size and offset must be >= 0")

    @property
    def is_hole(self) -> bool:
        return self.blob_ref is None and self.bytes_ref is None

    @property
    def ref(self) -> BlobRef | None:
        return self.blob_ref or self.bytes_ref

    def to_map(self) -> dict:
        m: dict = {"size": self.size}
        if self.blob_ref is not None:
            m["blobRef"] = str(self.blob_ref)
        if self.bytes_ref is not None:
            m["bytesRef"] = str(self.bytes_ref)
        if self.offset:
            m["offset"] = self.offset
        return m

    @classmethod
    def from_map(cls, m) -> "Part":
        if not isinstance(m, Mapping):
            raise SchemaError("a part must be a JSON object")
        blob_ref, bytes_ref = get_ref(m, "blobRef"), get_ref(m, "bytesRef")
        if blob_ref is not None and bytes_ref is not None:
            raise SchemaError("part has both blobRef and bytesRef")
        return cls(get_int(m, "size", required=True), blob_ref, bytes_ref,
                   get_int(m, "offset") or 0)


def parse_parts(m: Mapping, key: str = "parts") -> tuple[Part, ...]:
    """The parts under `key`; a missing list means no bytes (as in Perkeep)."""
    value = m.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SchemaError(f"{key} must be a list")
    return tuple(Part.from_map(p) for p in value)


def parts_size(parts) -> int:
    return sum(p.size for p in parts)


def parts_json(parts) -> str:
    """The `parts` list of a file or bytes blob as `canonical_json` writes
    it (a top-level value): one object per part, keys in order."""
    if not parts:
        return "[]"
    items = []
    for p in parts:
        fields = []
        if p.blob_ref is not None:
            fields.append('"blobRef": ' + go_string(str(p.blob_ref)))
        if p.bytes_ref is not None:
            fields.append('"bytesRef": ' + go_string(str(p.bytes_ref)))
        if p.offset:
            fields.append('"offset": ' + json_value(p.offset))
        fields.append('"size": ' + json_value(p.size))
        items.append("{\n      " + ",\n      ".join(fields) + "\n    }")
    return "[\n    " + ",\n    ".join(items) + "\n  ]"


def part_refs(parts) -> list[BlobRef]:
    return [p.ref for p in parts if p.ref is not None]


@dataclass(frozen=True)
class BytesBlob:
    """A `bytes` schema blob: a run of bytes described by parts."""

    parts: tuple[Part, ...] = ()
    camli_type: ClassVar[str] = "bytes"

    @property
    def size(self) -> int:
        return parts_size(self.parts)

    def refs(self) -> list[BlobRef]:
        return part_refs(self.parts)

    def to_map(self) -> dict:
        return {"camliVersion": 1, "camliType": "bytes",
                "parts": [p.to_map() for p in self.parts]}

    def to_json(self) -> bytes:
        return schema_json([("camliType", '"bytes"'), ("parts", parts_json(self.parts))])

    @classmethod
    def from_json(cls, data) -> "BytesBlob":
        m = as_map(data)
        expect_type(m, "bytes")
        return cls(parse_parts(m))
