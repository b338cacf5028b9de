"""Any schema blob: parse it to its typed object, list what it points at.

`parse_blob` dispatches on `camliType`; types pkvc does not model (e.g. the
2011 `"camliType": "share"`) come back as `OtherBlob` so walkers can still
follow their `target` and `camliSigner`. `schema_refs` is what the checker
and the GC follow. Note for walkers: a part's `blobRef` names raw bytes;
never parse those as schema, even when they look like it (a user's file may
well start with `{"camliVersion"`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

from pkvc.blobref import BlobRef
from pkvc.errors import SchemaError
from pkvc.schema.claims import (
    AttributeClaim, DeleteClaim, MultiClaim, PermanodeBlob, ShareClaim, parse_claim,
)
from pkvc.schema.fields import as_map, get_ref, get_ref_list
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob, SpecialBlob, SymlinkBlob
from pkvc.schema.parts import BytesBlob
from pkvc.schema.staticset import StaticSetBlob


@dataclass(frozen=True)
class OtherBlob:
    """A schema blob of a type pkvc does not model; kept as its raw map."""

    camli_type: str
    fields: Mapping = field(compare=False)

    def refs(self) -> list[BlobRef]:
        found = []
        for key in ("target", "camliSigner"):
            ref = BlobRef.parse_or_none(self.fields.get(key))
            if ref is not None:
                found.append(ref)
        return found


SchemaBlob = Union[
    FileBlob, BytesBlob, DirectoryBlob, SymlinkBlob, SpecialBlob, StaticSetBlob,
    PermanodeBlob, AttributeClaim, MultiClaim, DeleteClaim, ShareClaim, OtherBlob,
]

_PARSERS = {
    "file": FileBlob.from_json,
    "bytes": BytesBlob.from_json,
    "directory": DirectoryBlob.from_json,
    "symlink": SymlinkBlob.from_json,
    "fifo": SpecialBlob.from_json,
    "socket": SpecialBlob.from_json,
    "static-set": StaticSetBlob.from_json,
    "permanode": PermanodeBlob.from_json,
    "claim": parse_claim,
}


def parse_blob(data: "bytes | Mapping") -> SchemaBlob:
    """The typed object for a schema blob; SchemaError if it is malformed."""
    m = as_map(data)
    ctype = m.get("camliType")
    parser = _PARSERS.get(ctype)
    if parser is None:
        get_ref(m, "camliSigner")  # still refuse a malformed signer
        return OtherBlob(ctype if isinstance(ctype, str) else "", m)
    return parser(m)


def schema_refs(blob: SchemaBlob) -> list[BlobRef]:
    """Every blobref this schema blob points at, in field order, duplicates kept."""
    return blob.refs()


def walk_refs(data: "bytes | Mapping") -> list[BlobRef]:
    """`schema_refs(parse_blob(data))`, faster for the blobs a tree is made of.

    For gc's mark, which reads every live schema blob: a file, bytes,
    directory or static-set gives its refs straight from the JSON, its other
    fields unchecked (a blob malformed elsewhere still names what it points
    at: the gc keeps more, never less). Every other type goes through
    `parse_blob`. SchemaError when a ref field itself is malformed.
    """
    m = as_map(data)
    ctype = m.get("camliType")
    if ctype == "file" or ctype == "bytes":
        key = "parts" if ctype == "bytes" or "parts" in m or "contentParts" not in m else "contentParts"
        found = _part_refs(m.get(key))
        whole = get_ref(m, "wholeRef") if ctype == "file" else None
        return found + [whole] if whole is not None else found
    if ctype == "directory":
        entries = get_ref(m, "entries", required=True)
        return [entries]
    if ctype == "static-set":
        return list(get_ref_list(m, "members") or ()) + list(get_ref_list(m, "mergeSets") or ())
    return schema_refs(parse_blob(m))


def _part_refs(parts) -> list[BlobRef]:
    if parts is None:
        return []
    if not isinstance(parts, list):
        raise SchemaError("parts must be a list")
    found = []
    for part in parts:
        if not isinstance(part, Mapping):
            raise SchemaError("a part must be a JSON object")
        ref = get_ref(part, "blobRef") or get_ref(part, "bytesRef")
        if ref is not None:
            found.append(ref)
    return found
