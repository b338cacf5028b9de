"""File-system nodes: `file`, `directory`, `symlink`, `fifo`, `socket`.

All share Perkeep's "common" fields: a name (`fileName`, or `fileNameBytes`
when not UTF-8) and optional Unix metadata (`unixPermission` as an octal
string, owner/group ids and names, `unixMtime`, `unixCtime`).

pkvc differences, all readable by Perkeep (it ignores what it does not use):
- `unixPermission` keeps the setuid/setgid/sticky bits ("04755"); Perkeep
  itself writes only the 0777 bits and masks the rest when reading.
- `pkvcLinkGroup` (file only): an opaque string shared by every path of one
  hard-linked inode within a snapshot, so restore can link them again.
Names are returned as raw bytes; `name_problem` flags names that must not
be used as a path component, so a restorer can refuse hostile blobs.
"""

from __future__ import annotations

import os
import stat as statmod
from dataclasses import dataclass, field
from typing import ClassVar

from pkvc.blobref import BlobRef
from pkvc.errors import SchemaError
from pkvc.schema.canonical import canonical_json, go_string, json_value, schema_json
from pkvc.schema.fields import (
    as_map, expect_type, get_int, get_ref, get_str, get_time,
)
from pkvc.schema.names import decode_name, encode_name, mixed_array_from_bytes, name_problem
from pkvc.schema.parts import Part, parse_parts, part_refs, parts_json, parts_size
from pkvc.schema.timefmt import SchemaTime, format_time

PERMISSION_BITS = 0o7777
LINK_GROUP_KEY = "pkvcLinkGroup"


@dataclass(frozen=True)
class UnixMeta:
    """Optional Unix metadata; None fields are not written."""

    permission: int | None = None
    uid: int | None = None
    owner: str | None = None
    gid: int | None = None
    group: str | None = None
    mtime: SchemaTime | None = None
    ctime: SchemaTime | None = None

    @classmethod
    def from_stat(cls, st: os.stat_result, owner: str | None = None,
                  group: str | None = None) -> "UnixMeta":
        """Metadata of `st` as pkvc stores it (no ctime: it churns, see docs)."""
        perm = None if statmod.S_ISLNK(st.st_mode) else st.st_mode & PERMISSION_BITS
        return cls(perm, st.st_uid, owner, st.st_gid, group, SchemaTime(st.st_mtime_ns))

    def to_map(self) -> dict:
        m: dict = {}
        if self.permission is not None:
            m["unixPermission"] = "0%o" % self.permission
        for key, value in (("unixOwnerId", self.uid), ("unixOwner", self.owner),
                           ("unixGroupId", self.gid), ("unixGroup", self.group)):
            if value is not None:
                m[key] = value
        if self.mtime is not None:
            m["unixMtime"] = str(self.mtime)
        if self.ctime is not None:
            m["unixCtime"] = str(self.ctime)
        return m

    def json_fields(self) -> list[tuple[str, str]]:
        """`to_map`'s items, each value as `json_value` writes it."""
        fields = []
        if self.permission is not None:
            fields.append(("unixPermission", '"0%o"' % self.permission))
        for key, value in (("unixOwnerId", self.uid), ("unixOwner", self.owner),
                           ("unixGroupId", self.gid), ("unixGroup", self.group)):
            if value is not None:
                fields.append((key, str(value) if type(value) is int else json_value(value)))
        if self.mtime is not None:
            fields.append(("unixMtime", '"' + format_time(self.mtime) + '"'))
        if self.ctime is not None:
            fields.append(("unixCtime", '"' + format_time(self.ctime) + '"'))
        return fields

    @classmethod
    def from_map(cls, m) -> "UnixMeta":
        return cls(_permission(m), get_int(m, "unixOwnerId"), get_str(m, "unixOwner"),
                   get_int(m, "unixGroupId"), get_str(m, "unixGroup"),
                   get_time(m, "unixMtime"), get_time(m, "unixCtime"))


def _permission(m) -> int | None:
    text = get_str(m, "unixPermission")
    if text is None:
        return None
    if not text or not text.isascii() or not text.isdigit() or "8" in text or "9" in text:
        raise SchemaError(f"unixPermission is not octal: {text!r}")
    value = int(text, 8)
    if value > PERMISSION_BITS:
        raise SchemaError(f"unixPermission out of range: {text!r}")
    return value


class _Node:
    """What every file-system node blob shares: name, metadata, JSON."""

    name: bytes | None
    meta: UnixMeta
    camli_type: ClassVar[str]

    @property
    def name_problem(self) -> str | None:
        """Why the name cannot be a path component, or None."""
        return name_problem(self.name)

    def _common_map(self) -> dict:
        m: dict = {"camliVersion": 1, "camliType": self.camli_type}
        if self.name is not None:
            m.update(encode_name(self.name, "fileName"))
        m.update(self.meta.to_map())
        return m

    def _common_fields(self) -> list[tuple[str, str]]:
        """`_common_map`'s items but camliVersion, as `json_value` writes them."""
        fields = [("camliType", go_string(self.camli_type))]
        if self.name is not None:
            fields.append(name_field(self.name, "fileName"))
        fields += self.meta.json_fields()
        return fields

    def to_json(self) -> bytes:
        """canonical_json(self.to_map()), written without the map (one per file
        of a snapshot); `tests/test_schema_fsnodes.py` checks they agree."""
        return schema_json(self._json_fields())

    def _json_fields(self) -> list[tuple[str, str]]:
        return self._common_fields()


def name_field(raw: bytes, key: str) -> tuple[str, str]:
    """`encode_name(raw, key)`'s one item, its value as `json_value` writes it."""
    try:
        return key, go_string(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return key + "Bytes", json_value(mixed_array_from_bytes(raw))
    except AttributeError:  # not bytes: a bytearray or memoryview
        return name_field(bytes(raw), key)


@dataclass(frozen=True)
class FileBlob(_Node):
    name: bytes | None
    parts: tuple[Part, ...] = ()
    meta: UnixMeta = field(default_factory=UnixMeta)
    whole_ref: BlobRef | None = None
    link_group: str | None = None
    camli_type: ClassVar[str] = "file"

    @property
    def size(self) -> int:
        return parts_size(self.parts)

    def refs(self) -> list[BlobRef]:
        return part_refs(self.parts) + ([self.whole_ref] if self.whole_ref else [])

    def _json_fields(self) -> list[tuple[str, str]]:
        fields = self._common_fields()
        fields.append(("parts", parts_json(self.parts)))
        if self.whole_ref is not None:
            fields.append(("wholeRef", go_string(str(self.whole_ref))))
        if self.link_group is not None:
            fields.append((LINK_GROUP_KEY, json_value(self.link_group)))
        return fields

    def to_map(self) -> dict:
        m = self._common_map()
        m["parts"] = [p.to_map() for p in self.parts]
        if self.whole_ref is not None:
            m["wholeRef"] = str(self.whole_ref)
        if self.link_group is not None:
            m[LINK_GROUP_KEY] = self.link_group
        return m

    @classmethod
    def from_json(cls, data) -> "FileBlob":
        m = as_map(data)
        expect_type(m, "file")
        key = "parts" if "parts" in m or "contentParts" not in m else "contentParts"
        return cls(decode_name(m, "fileName"), parse_parts(m, key), UnixMeta.from_map(m),
                   get_ref(m, "wholeRef"), get_str(m, LINK_GROUP_KEY))


@dataclass(frozen=True)
class DirectoryBlob(_Node):
    name: bytes | None
    entries: BlobRef
    meta: UnixMeta = field(default_factory=UnixMeta)
    camli_type: ClassVar[str] = "directory"

    def refs(self) -> list[BlobRef]:
        return [self.entries]

    def _json_fields(self) -> list[tuple[str, str]]:
        return self._common_fields() + [("entries", go_string(str(self.entries)))]

    def to_map(self) -> dict:
        return {**self._common_map(), "entries": str(self.entries)}

    @classmethod
    def from_json(cls, data) -> "DirectoryBlob":
        m = as_map(data)
        expect_type(m, "directory")
        return cls(decode_name(m, "fileName"), get_ref(m, "entries", required=True),
                   UnixMeta.from_map(m))


@dataclass(frozen=True)
class SymlinkBlob(_Node):
    name: bytes | None
    target: bytes
    meta: UnixMeta = field(default_factory=UnixMeta)
    camli_type: ClassVar[str] = "symlink"

    def refs(self) -> list[BlobRef]:
        return []

    def _json_fields(self) -> list[tuple[str, str]]:
        return self._common_fields() + [name_field(self.target, "symlinkTarget")]

    def to_map(self) -> dict:
        return {**self._common_map(), **encode_name(self.target, "symlinkTarget")}

    @classmethod
    def from_json(cls, data) -> "SymlinkBlob":
        m = as_map(data)
        expect_type(m, "symlink")
        target = decode_name(m, "symlinkTarget")
        if not target:
            raise SchemaError("symlink has no target")
        return cls(decode_name(m, "fileName"), target, UnixMeta.from_map(m))


@dataclass(frozen=True)
class SpecialBlob(_Node):
    """A `fifo` or `socket`: only a name and metadata."""

    kind: str
    name: bytes | None
    meta: UnixMeta = field(default_factory=UnixMeta)

    def __post_init__(self):
        if self.kind not in ("fifo", "socket"):
            raise ValueError(f"not a special file type: {self.kind!r}")

    @property
    def camli_type(self) -> str:  # type: ignore[override]
        return self.kind

    def refs(self) -> list[BlobRef]:
        return []

    def to_map(self) -> dict:
        return self._common_map()

    @classmethod
    def from_json(cls, data) -> "SpecialBlob":
        m = as_map(data)
        return cls(expect_type(m, "fifo", "socket"), decode_name(m, "fileName"),
                   UnixMeta.from_map(m))
