"""Unsigned bodies of `permanode` and `claim` blobs.

A permanode is a stable name for something mutable: only randomness (or a
planned `key`) plus the signer. A claim changes a permanode's attributes
(`set-`/`add-`/`del-attribute`, several at once in a `multi` claim), deletes
a permanode or claim (`delete` + `target`), or shares a blob or search
(`share`). This module only builds and reads the JSON; jsonsign adds
`camliSig`. `claimDate` comes from an injectable clock (ns since epoch) so
tests are exact. The field sets follow Perkeep's `populateClaimMap`:
`del-attribute` without a value omits `value`, a share always says
`transitive`, and a share's `search` keeps its own key order.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from pkvc.blobref import BlobRef
from pkvc.errors import SchemaError
from pkvc.schema.canonical import KeepOrder, canonical_json
from pkvc.schema.fields import (
    as_map, expect_type, get_bool, get_ref, get_str, get_time,
)
from pkvc.schema.timefmt import SchemaTime

Clock = Callable[[], int]
ATTRIBUTE_CLAIMS = ("set-attribute", "add-attribute", "del-attribute")
SHARE_HAVEREF = "haveref"


def _header(camli_type: str, signer: BlobRef | None) -> dict:
    m: dict = {"camliVersion": 1, "camliType": camli_type}
    if signer is not None:
        m["camliSigner"] = str(signer)
    return m


def _signer_refs(signer: BlobRef | None) -> list[BlobRef]:
    return [signer] if signer is not None else []


@dataclass(frozen=True)
class PermanodeBlob:
    random: str | None = None
    key: str | None = None
    signer: BlobRef | None = None
    claim_date: SchemaTime | None = None
    camli_type: ClassVar[str] = "permanode"

    def refs(self) -> list[BlobRef]:
        return _signer_refs(self.signer)

    def to_map(self) -> dict:
        m = _header("permanode", self.signer)
        for k, v in (("random", self.random), ("key", self.key)):
            if v is not None:
                m[k] = v
        if self.claim_date is not None:
            m["claimDate"] = str(self.claim_date)
        return m

    def to_json(self) -> bytes:
        return canonical_json(self.to_map())

    @classmethod
    def from_json(cls, data) -> "PermanodeBlob":
        m = as_map(data)
        expect_type(m, "permanode")
        return cls(get_str(m, "random"), get_str(m, "key"), get_ref(m, "camliSigner"),
                   get_time(m, "claimDate"))


def new_permanode(signer: BlobRef | None,
                  random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> PermanodeBlob:
    """A fresh permanode: 20 random bytes, base64, as Perkeep makes them."""
    return PermanodeBlob(random=base64.b64encode(random_bytes(20)).decode(), signer=signer)


def new_planned_permanode(key: str, signer: BlobRef | None) -> PermanodeBlob:
    """A permanode whose ref is fixed by `key` (and signer and signing time)."""
    return PermanodeBlob(key=key, signer=signer)


@dataclass(frozen=True)
class AttributeChange:
    """One attribute edit: a whole claim, or one element of a `multi` claim."""

    claim_type: str
    permanode: BlobRef
    attribute: str
    value: str | None = None

    def __post_init__(self):
        if self.claim_type not in ATTRIBUTE_CLAIMS:
            raise ValueError(f"not an attribute claim type: {self.claim_type!r}")

    def to_map(self) -> dict:
        m = {"claimType": self.claim_type, "permaNode": str(self.permanode),
             "attribute": self.attribute}
        if not (self.claim_type == "del-attribute" and not self.value):
            m["value"] = self.value or ""
        return m

    @classmethod
    def from_map(cls, m) -> "AttributeChange":
        if not isinstance(m, Mapping):
            raise SchemaError("a claim must be a JSON object")
        ctype = get_str(m, "claimType", required=True)
        if ctype not in ATTRIBUTE_CLAIMS:
            raise SchemaError(f"not an attribute claim: {ctype!r}")
        value = get_str(m, "value")
        if ctype == "del-attribute":
            value = value or None  # "" and absent both mean "every value"
        elif value is None:
            value = ""
        return cls(ctype, get_ref(m, "permaNode", required=True),
                   get_str(m, "attribute", required=True), value)

    def value_refs(self) -> list[BlobRef]:
        """The value if it is a blobref of a known hash (camliContent, camliMember, ...)."""
        ref = BlobRef.parse_or_none(self.value)
        return [ref] if ref is not None and ref.is_known else []


class _Claim:
    """What every claim shares: a date, a signer, and its JSON."""

    claim_date: SchemaTime
    signer: BlobRef | None
    camli_type: ClassVar[str] = "claim"

    def _claim_header(self, claim_type: str) -> dict:
        m = _header("claim", self.signer)
        m["claimDate"] = str(self.claim_date)
        m["claimType"] = claim_type
        return m

    def to_json(self) -> bytes:
        return canonical_json(self.to_map())


@dataclass(frozen=True)
class AttributeClaim(_Claim):
    claim_type: str
    permanode: BlobRef
    attribute: str
    value: str | None
    claim_date: SchemaTime
    signer: BlobRef | None = None

    @property
    def change(self) -> AttributeChange:
        return AttributeChange(self.claim_type, self.permanode, self.attribute, self.value)

    def refs(self) -> list[BlobRef]:
        return [self.permanode] + self.change.value_refs() + _signer_refs(self.signer)

    def to_map(self) -> dict:
        return {**self._claim_header(self.claim_type), **self.change.to_map()}

    @classmethod
    def from_map(cls, m, claim_date, signer) -> "AttributeClaim":
        c = AttributeChange.from_map(m)
        return cls(c.claim_type, c.permanode, c.attribute, c.value, claim_date, signer)


@dataclass(frozen=True)
class MultiClaim(_Claim):
    changes: tuple[AttributeChange, ...]
    claim_date: SchemaTime
    signer: BlobRef | None = None
    claim_type: ClassVar[str] = "multi"

    def refs(self) -> list[BlobRef]:
        refs = [r for c in self.changes for r in [c.permanode] + c.value_refs()]
        return refs + _signer_refs(self.signer)

    def to_map(self) -> dict:
        return {**self._claim_header("multi"), "claims": [c.to_map() for c in self.changes]}

    @classmethod
    def from_map(cls, m, claim_date, signer) -> "MultiClaim":
        claims = m.get("claims")
        if not isinstance(claims, list):
            raise SchemaError("multi claim needs a claims list")
        return cls(tuple(AttributeChange.from_map(c) for c in claims), claim_date, signer)


@dataclass(frozen=True)
class DeleteClaim(_Claim):
    target: BlobRef
    claim_date: SchemaTime
    signer: BlobRef | None = None
    claim_type: ClassVar[str] = "delete"

    def refs(self) -> list[BlobRef]:
        return [self.target] + _signer_refs(self.signer)

    def to_map(self) -> dict:
        return {**self._claim_header("delete"), "target": str(self.target)}

    @classmethod
    def from_map(cls, m, claim_date, signer) -> "DeleteClaim":
        return cls(get_ref(m, "target", required=True), claim_date, signer)


@dataclass(frozen=True)
class ShareClaim(_Claim):
    claim_date: SchemaTime
    signer: BlobRef | None = None
    target: BlobRef | None = None
    search: Mapping | None = None
    transitive: bool = False
    expires: SchemaTime | None = None
    auth_type: str = SHARE_HAVEREF
    claim_type: ClassVar[str] = "share"

    def __post_init__(self):
        if (self.target is None) == (self.search is None):
            raise ValueError("a share has a target or a search, exactly one")

    def refs(self) -> list[BlobRef]:
        return ([self.target] if self.target else []) + _signer_refs(self.signer)

    def to_map(self) -> dict:
        m = self._claim_header("share")
        m.update(authType=self.auth_type, transitive=self.transitive)
        if self.target is not None:
            m["target"] = str(self.target)
        if self.search is not None:
            m["search"] = _keep_order(self.search)
        if self.expires is not None:
            m["expires"] = str(self.expires)
        return m

    @classmethod
    def from_map(cls, m, claim_date, signer) -> "ShareClaim":
        target, search = get_ref(m, "target"), m.get("search")
        if (target is None) == (search is None):
            raise SchemaError("share needs exactly one of target and search")
        if search is not None and not isinstance(search, Mapping):
            raise SchemaError("share search must be a JSON object")
        return cls(claim_date, signer, target, search, bool(get_bool(m, "transitive")),
                   get_time(m, "expires"), get_str(m, "authType", required=True))


def _keep_order(value):
    """Go structs keep field order all the way down; so does a share's search."""
    if isinstance(value, Mapping):
        return KeepOrder((k, _keep_order(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_keep_order(v) for v in value]
    return value


_CLAIM_CLASSES = {"multi": MultiClaim, "delete": DeleteClaim, "share": ShareClaim,
                  **{t: AttributeClaim for t in ATTRIBUTE_CLAIMS}}


def parse_claim(data) -> "AttributeClaim | MultiClaim | DeleteClaim | ShareClaim":
    """Read a claim body (a `camliSig`, if present, is ignored here)."""
    m = as_map(data)
    expect_type(m, "claim")
    ctype = get_str(m, "claimType", required=True)
    cls = _CLAIM_CLASSES.get(ctype)
    if cls is None:
        raise SchemaError(f"unknown claimType {ctype!r}")
    return cls.from_map(m, get_time(m, "claimDate", required=True), get_ref(m, "camliSigner"))


def _now(clock: Clock) -> SchemaTime:
    return SchemaTime(clock())


def new_attribute_claim(claim_type: str, permanode: BlobRef, attribute: str,
                        value: str | None = None, *, signer: BlobRef | None,
                        clock: Clock = time.time_ns) -> AttributeClaim:
    """set-attribute / add-attribute / del-attribute (value None: delete all)."""
    AttributeChange(claim_type, permanode, attribute, value)  # validates
    return AttributeClaim(claim_type, permanode, attribute, value, _now(clock), signer)


def new_multi_claim(changes, *, signer: BlobRef | None,
                    clock: Clock = time.time_ns) -> MultiClaim:
    return MultiClaim(tuple(changes), _now(clock), signer)


def new_delete_claim(target: BlobRef, *, signer: BlobRef | None,
                     clock: Clock = time.time_ns) -> DeleteClaim:
    return DeleteClaim(target, _now(clock), signer)


def new_share_claim(*, target: BlobRef | None = None, search: Mapping | None = None,
                    transitive: bool = False, expires: "SchemaTime | int | None" = None,
                    signer: BlobRef | None, clock: Clock = time.time_ns) -> ShareClaim:
    """A haveref share of one blob (target) or of a search."""
    if isinstance(expires, int):
        expires = SchemaTime(expires)
    return ShareClaim(_now(clock), signer, target, search, transitive, expires)
