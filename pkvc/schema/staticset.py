"""`static-set`: an immutable list of blobrefs (a directory's entries).

A set holds `members`, or, when it has more than 10,000 of them (Perkeep's
`maxStaticSetMembers`, chosen so a set stays under 1 MiB), `mergeSets`:
refs of sub-sets that together hold the members. The split follows
Perkeep's `SetStaticSetMembers` exactly, so pkvc and Perkeep give the same
refs for the same directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pkvc.blobref import BlobRef
from pkvc.errors import SchemaError
from pkvc.schema.canonical import canonical_json
from pkvc.schema.fields import as_map, expect_type, get_ref_list

MAX_STATIC_SET_MEMBERS = 10_000


@dataclass(frozen=True)
class StaticSetBlob:
    members: tuple[BlobRef, ...] = ()
    merge_sets: tuple[BlobRef, ...] = ()
    camli_type: ClassVar[str] = "static-set"

    def __post_init__(self):
        if self.members and self.merge_sets:
            raise ValueError("a static-set has members or mergeSets, not both")

    def refs(self) -> list[BlobRef]:
        return list(self.members) + list(self.merge_sets)

    def to_map(self) -> dict:
        m: dict = {"camliVersion": 1, "camliType": "static-set"}
        if self.merge_sets:
            m["mergeSets"] = [str(r) for r in self.merge_sets]
        else:
            m["members"] = [str(r) for r in self.members]
        return m

    def to_json(self) -> bytes:
        return canonical_json(self.to_map())

    @classmethod
    def from_json(cls, data) -> "StaticSetBlob":
        m = as_map(data)
        expect_type(m, "static-set")
        members, merge_sets = get_ref_list(m, "members"), get_ref_list(m, "mergeSets")
        if members and merge_sets:
            raise SchemaError("static-set has both members and mergeSets")
        return cls(members or (), merge_sets or ())


def static_set_blobs(members, max_members: int = MAX_STATIC_SET_MEMBERS
                     ) -> list[tuple[bytes, list[BlobRef]]]:
    """JSON of the top set first, then of every sub-set it needs, each with
    the refs it holds (for the refs cache of gc); store them all."""
    members = list(members)
    subsets: list[tuple[bytes, list[BlobRef]]] = []
    top = _split(members, max_members, subsets)
    return [(top.to_json(), top.refs())] + subsets


def _split(members: list, max_members: int, out: list[tuple[bytes, list[BlobRef]]]
           ) -> StaticSetBlob:
    """Perkeep's rule: fill sub-sets of max_members, or max_members-1 even ones."""
    if len(members) <= max_members:
        return StaticSetBlob(tuple(members))
    count = len(members) // max_members
    if count < max_members:
        per = max_members
    else:
        count = max_members - 1
        per = len(members) // count
    chunks = [members[i * per:(i + 1) * per] for i in range(count)]
    if per * count < len(members):
        chunks.append(members[per * count:])
    tops = []
    for chunk in chunks:
        children: list[tuple[bytes, list[BlobRef]]] = []
        sub = _split(chunk, max_members, children)
        data = sub.to_json()
        out.append((data, sub.refs()))
        out.extend(children)
        tops.append(BlobRef.of(data))
    return StaticSetBlob(merge_sets=tuple(tops))
