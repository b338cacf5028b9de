"""Signed permanodes and claims in a repository, and the claims index.

Terms (Perkeep's, see docs/permanode.md and docs/claim.md): a *permanode*
is a signed blob of randomness, a stable name for something mutable; a
*claim* is a signed blob that changes a permanode's attributes
(`set-`/`add-`/`del-attribute`, several at once in `multi`), deletes a
blob (`delete` of a `target`), or shares one (`share`). The *state* of a
permanode is its claims folded in order: by `claimDate`, ties broken by the
claim's blobref (byte order of `sha224-…`), which Perkeep leaves undefined.
A blob is *deleted* when a delete claim that is not itself deleted targets
it; so deleting a delete claim undoes it. Every verified signer counts:
anyone who can write to the repository holds its master key anyway, so
signatures give integrity and an audit trail, not access control.

Writing: `new_permanode`, `add_claim`, `add_multi_claim`,
`add_delete_claim` and `sign_and_put` build, sign and store (KIND_SIGNED),
storing the signer's public key blob too, so what pkvc writes always
verifies.

Reading goes through the *claims index*, the cache table `claims` of the
repository's local index. Signed blobs are verified once per cache, when
first seen, and what they say is kept there; a blob that does not verify,
or whose signer key blob is missing, is recorded as invalid, ignored by
every query and listed by `invalid_claims` (for `check`). Like the index it
is only a cache: `reindex` or a deleted cache directory empties it and the
next query rebuilds it from the blobs.

Staying current cheaply (`ClaimsIndex.sync`, run once per query): the index
knows the set of packs; a digest of that set is kept in the table, so when
no pack was added or removed a query costs one scan of the pack list (no
blob is read, none verified). Otherwise only the packs not yet processed
are read: their headers (one small read each) list their signed blobs, or,
for many new packs at once (a rebuild), one pass over the index. Each
signed blob is verified unless its per-blob marker says it already was
(claims this process wrote are indexed at write time). Each processed pack
keeps the list of its signed blobs, so when a pack disappears (gc) the
entries of blobs that went with it are dropped. Blobs whose signer key was
missing are retried whenever new packs arrive.

Table rows (keys are bytes; `R(ref)` = one length byte + `BlobRef.to_key()`,
`D(date)` = claimDate in ns + 2**95 as 12 bytes big-endian, `S(ref)` =
the ASCII blobref, so rows sort by date, then by blobref):

    m:layout                          layout version of this table
    m:packs                           digest of the pack set last synced
    p <pack id, 32 bytes>             signed refs in that pack, "\\n"-joined
    b R(blob)                         per-blob record (JSON): the marker
    c R(permanode) D(date) S(claim)   changes a claim makes on that permanode
    d R(target) D(date) S(claim)      delete claims by target
    k <claimType> NUL D(date) S(claim)  delete and share claims by type
    n R(permanode)                    a verified permanode (signer, key id, date)
    t <camliNodeType> NUL R(pn)       permanodes that ever claimed that node type
    x R(blob)                         an invalid signed blob and why (JSON)
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from pkvc.blobref import BlobRef
from pkvc.errors import BackendError, BlobNotFoundError, IntegrityError, SchemaError, SignatureError
from pkvc.pack import KIND_DATA, KIND_SIGNED
from pkvc.repo import CacheTable, Repository
from pkvc.schema import jsonsign
from pkvc.schema.anyblob import OtherBlob, parse_blob
from pkvc.schema.claims import (
    AttributeChange, AttributeClaim, Clock, DeleteClaim, MultiClaim, PermanodeBlob, ShareClaim,
    new_attribute_claim, new_delete_claim, new_multi_claim,
)
from pkvc.schema.claims import new_permanode as _unsigned_permanode
from pkvc.schema.timefmt import SchemaTime

TABLE = "claims"
LAYOUT = b"1"
NODE_TYPE_ATTR = "camliNodeType"
# Up to this many new packs, read their headers; beyond it, or when the new
# packs are more than 1/INDEX_PASS_SHARE of all, one pass over the index's
# rows (its cost grows with the index, a header's with its pack's blobs).
HEADER_READ_LIMIT = 32
INDEX_PASS_SHARE = 8

OK = "ok"
BAD_SIGNATURE = "bad-signature"
MISSING_KEY = "missing-key"
MALFORMED = "malformed"
UNREADABLE = "unreadable"

_META_LAYOUT = b"m:layout"
_META_PACKS = b"m:packs"
_PACK, _BLOB, _CLAIM, _DELETE, _BYTYPE, _NODE, _NODETYPE, _INVALID = (
    b"p", b"b", b"c", b"d", b"k", b"n", b"t", b"x")
_DATE_BIAS = 1 << 95
_DATE_LEN = 12
_INDEXED_TYPES = ("delete", "share")


# -- values ------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimInfo:
    """A verified claim as the index knows it.

    `changes` holds the attribute edits on the permanode that was asked
    about (for a multi claim, only those); `target` is set for delete and
    share claims.
    """

    ref: BlobRef
    claim_type: str
    date: SchemaTime
    signer: BlobRef
    key_id: str
    changes: tuple[AttributeChange, ...] = ()
    target: BlobRef | None = None


@dataclass(frozen=True)
class PermanodeInfo:
    ref: BlobRef
    signer: BlobRef
    key_id: str
    date: SchemaTime | None  # its claimDate, when it has one


@dataclass(frozen=True)
class PermanodeState:
    """A permanode folded at a time: attribute name -> values, in order.

    `valid` is True when the permanode blob verified, None when it is not in
    the repository (its claims still count, as in Perkeep), False when it is
    there but invalid (then every claim on it is ignored).
    """

    permanode: BlobRef
    attributes: dict[str, tuple[str, ...]]
    claims: tuple[ClaimInfo, ...]
    deleted: bool
    valid: bool | None
    at: SchemaTime | None = None

    def get(self, name: str) -> str | None:
        """The first value of an attribute (Perkeep's single-valued view)."""
        values = self.attributes.get(name)
        return values[0] if values else None


@dataclass(frozen=True)
class InvalidBlob:
    """A signed blob every query ignores, and why (for `check`)."""

    ref: BlobRef
    status: str  # bad-signature, missing-key, malformed, unreadable
    reason: str
    signer: BlobRef | None = None
    camli_type: str | None = None
    permanodes: tuple[BlobRef, ...] = ()
    date: SchemaTime | None = None


@dataclass
class SyncStats:
    packs_read: int = 0
    packs_dropped: int = 0
    blobs_verified: int = 0
    invalid: int = 0
    retried: int = 0
    skipped_packs: list[str] = field(default_factory=list)


# -- writing -----------------------------------------------------------------

def monotonic(clock: Clock) -> Clock:
    """A clock that never repeats or goes back, so claims written in one
    operation (set then add) keep their order even on a coarse clock."""
    last = [None]

    def tick() -> int:
        now = clock()
        if last[0] is not None and now <= last[0]:
            now = last[0] + 1
        last[0] = now
        return now
    return tick


def sign_and_put(repo: Repository, signer: jsonsign.Signer, unsigned) -> BlobRef:
    """Sign a permanode or claim (built with this signer's ref), store it and
    the signer's key blob, and index it at once so it is never re-verified."""
    key_ref = repo.put(signer.public_key, kind=KIND_DATA)
    for ref in unsigned.refs():  # a gc plan must not take away what the claim names
        repo.rely_on(ref)
    blob = jsonsign.sign(unsigned.to_json(), signer)
    ref = repo.put(blob, kind=KIND_SIGNED)
    index = ClaimsIndex(repo)
    index.check_layout()
    if index.table.get(_BLOB + _rk(ref)) is None:
        index.index_blob(ref, blob, {key_ref: bytes(signer.public_key)}.get)
    return ref


def new_permanode(repo: Repository, signer: jsonsign.Signer, clock: Clock = time.time_ns,
                  random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> BlobRef:
    """A fresh permanode: 20 random bytes (as Perkeep) and, unlike Perkeep's,
    a claimDate from `clock`, so its creation time does not depend on gpg."""
    pn = _unsigned_permanode(BlobRef.of(signer.public_key), random_bytes)
    pn = PermanodeBlob(pn.random, pn.key, pn.signer, SchemaTime(clock()))
    return sign_and_put(repo, signer, pn)


def add_claim(repo: Repository, signer: jsonsign.Signer, claim_type: str, permanode: BlobRef,
              attribute: str, value: str | None = None, clock: Clock = time.time_ns) -> BlobRef:
    """A signed set-/add-/del-attribute claim (del with value None: every value)."""
    claim = new_attribute_claim(claim_type, permanode, attribute, value,
                                signer=BlobRef.of(signer.public_key), clock=clock)
    return sign_and_put(repo, signer, claim)


def add_multi_claim(repo: Repository, signer: jsonsign.Signer,
                    changes: Iterable[AttributeChange], clock: Clock = time.time_ns) -> BlobRef:
    """One signed claim making several attribute edits, applied in order."""
    claim = new_multi_claim(list(changes), signer=BlobRef.of(signer.public_key), clock=clock)
    return sign_and_put(repo, signer, claim)


def add_delete_claim(repo: Repository, signer: jsonsign.Signer, target: BlobRef,
                     clock: Clock = time.time_ns) -> BlobRef:
    """Delete a permanode or claim; deleting a delete claim undoes it."""
    claim = new_delete_claim(target, signer=BlobRef.of(signer.public_key), clock=clock)
    return sign_and_put(repo, signer, claim)


# -- reading: module-level conveniences (each syncs once) -----------------------

def sync_claims(repo: Repository) -> SyncStats:
    return ClaimsIndex(repo).sync()


def claims_on(repo: Repository, permanode: BlobRef, at=None,
              include_deleted: bool = False) -> list[ClaimInfo]:
    return ClaimsIndex.open(repo).claims_on(permanode, at, include_deleted)


def permanode_state(repo: Repository, permanode: BlobRef, at=None) -> PermanodeState:
    return ClaimsIndex.open(repo).state(permanode, at)


def is_deleted(repo: Repository, ref: BlobRef, at=None) -> bool:
    return ClaimsIndex.open(repo).is_deleted(ref, at)


def invalid_claims(repo: Repository) -> list[InvalidBlob]:
    """Signed blobs that every query ignores: what `check` reports."""
    return ClaimsIndex.open(repo).invalid()


# -- the index -----------------------------------------------------------------

class ClaimsIndex:
    """Queries over the claims cache table; `open` syncs it first."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.table: CacheTable = repo.cache_table(TABLE)
        self._deletes: dict[BlobRef, list[ClaimInfo]] | None = None

    @classmethod
    def open(cls, repo: Repository) -> "ClaimsIndex":
        index = cls(repo)
        index.sync()
        return index

    # -- keeping it current ------------------------------------------------

    def check_layout(self) -> None:
        """Empty the table if it was written by another layout version."""
        if self.table.get(_META_LAYOUT) == LAYOUT:
            return
        for key, _ in list(self.table.scan()):
            self.table.delete(key)
        self.table.put(_META_LAYOUT, LAYOUT)

    def sync(self) -> SyncStats:
        """Process signed blobs in packs not seen yet; see the module docstring."""
        stats = SyncStats()
        self.repo.flush()
        self.check_layout()
        packs = self.repo.index.packs()
        digest = _pack_set_digest(packs)
        if self.table.get(_META_PACKS) == digest:
            return stats
        done = {key[1:].hex(): value for key, value in self.table.scan(_PACK)}
        new = {p: size for p, size in packs.items() if p not in done}
        signed = self._signed_refs(new, packs)
        keys = _KeyCache(self.repo)
        for pack_id in sorted(new):
            refs = signed.get(pack_id)
            if refs is None:
                stats.skipped_packs.append(pack_id)
                continue
            for ref in refs:
                if self.table.get(_BLOB + _rk(ref)) is None:
                    status = self.index_blob(ref, None, keys.fetch)
                    stats.blobs_verified += status != UNREADABLE
                    stats.invalid += status != OK
            self.table.put(_PACK + bytes.fromhex(pack_id), b"\n".join(str(r).encode() for r in refs))
            stats.packs_read += 1
        for pack_id in sorted(set(done) - set(packs)):
            self._drop_pack(pack_id, done[pack_id])
            stats.packs_dropped += 1
        if new:
            stats.retried = self._retry_missing_keys(keys)
        if not stats.skipped_packs:
            self.table.put(_META_PACKS, digest)
        # (the rows stay buffered, read through, until the next index write or
        # close: each write opens the database for writing, tens of ms)
        return stats

    def _signed_refs(self, new: dict[str, int], known: dict[str, int]) -> dict[str, list[BlobRef]]:
        """Signed blobs per new pack; a pack whose header cannot be read now is left out.
        `known`: every pack of the index (the index pass reads all of their rows)."""
        if not new:
            return {}
        if len(new) > HEADER_READ_LIMIT or len(new) * INDEX_PASS_SHARE > len(known):
            found: dict[str, list[BlobRef]] = {p: [] for p in new}
            self.repo.flush()
            for ref, pack_id in self.repo.index.blobs_of_kind(KIND_SIGNED):
                if pack_id in found:
                    found[pack_id].append(ref)
            return found
        found = {}
        for pack_id, size in new.items():
            try:
                entries = self.repo.read_pack_header(pack_id, size)
            except (IntegrityError, BackendError):
                continue  # check reports damaged packs; retried next time
            found[pack_id] = [e.ref for e in entries if e.kind == KIND_SIGNED]
        return found

    def _drop_pack(self, pack_id: str, listed: bytes) -> None:
        for text in listed.split(b"\n") if listed else []:
            ref = BlobRef.parse_or_none(text.decode())
            if ref is not None and not self.repo.has(ref):
                self._forget_blob(ref)
        self.table.delete(_PACK + bytes.fromhex(pack_id))

    def _retry_missing_keys(self, keys: "_KeyCache") -> int:
        retried = 0
        for key, value in list(self.table.scan(_INVALID)):
            record = json.loads(value)
            signer = BlobRef.parse_or_none(record.get("signer"))
            if record["status"] != MISSING_KEY or signer is None or not self.repo.has(signer):
                continue
            ref = _ref_from_rk(key[1:])
            self._forget_blob(ref)
            self.index_blob(ref, None, keys.fetch)
            retried += 1
        return retried

    def _forget_blob(self, ref: BlobRef) -> None:
        self._deletes = None
        record = self.table.get(_BLOB + _rk(ref))
        if record is not None:
            for hex_key in json.loads(record).get("rows", []):
                self.table.delete(bytes.fromhex(hex_key))
        self.table.delete(_BLOB + _rk(ref))
        self.table.delete(_INVALID + _rk(ref))

    # -- indexing one blob -------------------------------------------------

    def index_blob(self, ref: BlobRef, data: bytes | None, fetch_key) -> str:
        """Verify one signed blob and record what it says; returns its status."""
        self._deletes = None
        if data is None:
            try:
                data = self.repo.get(ref)
            except BlobNotFoundError:
                return UNREADABLE  # listed in a pack header but not indexed: skip
            except (IntegrityError, BackendError) as e:
                self._record_invalid(ref, UNREADABLE, str(e), None)
                return UNREADABLE
        status, reason, verified = _verify(data, fetch_key)
        parsed, parse_error = _parse(data)
        if status == OK and parse_error:
            status, reason = MALFORMED, parse_error
        if status != OK:
            self._record_invalid(ref, status, reason, parsed)
            return status
        rows = self._write_rows(ref, parsed, verified)
        self.table.put(_BLOB + _rk(ref), _dumps({"status": OK, "rows": [k.hex() for k in rows]}))
        return OK

    def _record_invalid(self, ref: BlobRef, status: str, reason: str, parsed) -> None:
        record: dict = {"status": status, "reason": reason}
        if parsed is not None:
            record["type"] = parsed.camli_type
            signer = getattr(parsed, "signer", None)
            if signer is not None:
                record["signer"] = str(signer)
            record["permanodes"] = [str(p) for p in _permanodes_of(parsed)]
            date = getattr(parsed, "claim_date", None)
            if date is not None:
                record["date"] = date.ns
        self.table.put(_INVALID + _rk(ref), _dumps(record))
        self.table.put(_BLOB + _rk(ref), _dumps({"status": status, "rows": []}))

    def _write_rows(self, ref: BlobRef, parsed, verified: jsonsign.VerifiedSignature) -> list[bytes]:
        rows: list[tuple[bytes, bytes]] = []
        who = {"signer": str(verified.signer), "key": verified.key_id}
        if isinstance(parsed, PermanodeBlob):
            date = parsed.claim_date.ns if parsed.claim_date else None
            rows.append((_NODE + _rk(ref), _dumps({**who, "date": date})))
        elif isinstance(parsed, (AttributeClaim, MultiClaim)):
            date = parsed.claim_date.ns
            changes = [parsed.change] if isinstance(parsed, AttributeClaim) else list(parsed.changes)
            by_pn: dict[BlobRef, list] = {}
            for c in changes:
                by_pn.setdefault(c.permanode, []).append([c.claim_type, c.attribute, c.value])
                if (c.attribute == NODE_TYPE_ATTR and c.claim_type != "del-attribute" and c.value
                        and "\0" not in c.value):
                    rows.append((_NODETYPE + c.value.encode() + b"\0" + _rk(c.permanode), b""))
            for pn, edits in by_pn.items():
                rows.append((_CLAIM + _rk(pn) + _date_key(date) + str(ref).encode(),
                             _dumps({**who, "type": parsed.claim_type, "changes": edits})))
        elif isinstance(parsed, (DeleteClaim, ShareClaim)):
            date = parsed.claim_date.ns
            target = str(parsed.target) if parsed.target is not None else None
            value = _dumps({**who, "target": target})
            if isinstance(parsed, DeleteClaim):
                rows.append((_DELETE + _rk(parsed.target) + _date_key(date) + str(ref).encode(), value))
            rows.append((_BYTYPE + parsed.claim_type.encode() + b"\0" + _date_key(date)
                         + str(ref).encode(), value))
        for key, value in rows:
            self.table.put(key, value)
        return [key for key, _ in rows]

    # -- queries -----------------------------------------------------------

    def permanode(self, ref: BlobRef) -> PermanodeInfo | None:
        """The permanode blob's record, if it is stored and verified."""
        value = self.table.get(_NODE + _rk(ref))
        if value is None:
            return None
        r = json.loads(value)
        date = SchemaTime(r["date"]) if r.get("date") is not None else None
        return PermanodeInfo(ref, BlobRef.parse(r["signer"]), r["key"], date)

    def permanodes(self) -> list[BlobRef]:
        """Every verified permanode the table knows (deleted or not): one scan of
        its `n` rows, not of every blob row of the index."""
        return [_ref_from_rk(key[1:]) for key, _ in self.table.scan(_NODE)]

    def invalid_record(self, ref: BlobRef) -> InvalidBlob | None:
        value = self.table.get(_INVALID + _rk(ref))
        return _invalid_from(ref, value) if value is not None else None

    def claims_on(self, permanode: BlobRef, at=None, include_deleted: bool = False) -> list[ClaimInfo]:
        """Attribute claims on a permanode, by claimDate then blobref.

        Deleted claims are left out unless `include_deleted`; with `at`, only
        claims dated at or before it (and deletions as of then) count.
        """
        at_ns = _at_ns(at)
        prefix = _CLAIM + _rk(permanode)
        out = []
        memo: dict[BlobRef, bool] = {}
        for key, value in self.table.scan(prefix):
            date_ns, ref = _date_ref(key[len(prefix):])
            if at_ns is not None and date_ns > at_ns:
                break
            if not include_deleted and self._deleted(ref, at_ns, memo, ()):
                continue
            r = json.loads(value)
            changes = tuple(AttributeChange(t, permanode, a, v) for t, a, v in r["changes"])
            out.append(ClaimInfo(ref, r["type"], SchemaTime(date_ns), BlobRef.parse(r["signer"]),
                                 r["key"], changes))
        return out

    def deleters(self, target: BlobRef, at=None) -> list[ClaimInfo]:
        """Every delete claim on `target` (deleted or not), oldest first."""
        at_ns = _at_ns(at)
        return [c for c in self._deleters(target) if at_ns is None or c.date.ns <= at_ns]

    def _deleters(self, target: BlobRef) -> list[ClaimInfo]:
        """From one scan of every delete row, made once per ClaimsIndex: cheaper
        than a seek per claim when a log of thousands asks for each of them."""
        if self._deletes is None:
            self._deletes = {}
            for key, value in self.table.scan(_DELETE):
                n = key[1] + 2
                date_ns, ref = _date_ref(key[n:])
                r = json.loads(value)
                target_ref = _ref_from_rk(key[1:n])
                self._deletes.setdefault(target_ref, []).append(ClaimInfo(
                    ref, "delete", SchemaTime(date_ns), BlobRef.parse(r["signer"]), r["key"],
                    target=target_ref))
        return self._deletes.get(target, [])

    def is_deleted(self, ref: BlobRef, at=None) -> bool:
        return self._deleted(ref, _at_ns(at), {}, ())

    def _deleted(self, ref: BlobRef, at_ns: int | None, memo: dict, path: tuple) -> bool:
        """Deleted if some delete claim on it (dated by `at`) is not deleted itself."""
        if ref in memo:
            return memo[ref]
        if ref in path:  # impossible with hashes; never loop on a forged index
            return False
        result = False
        for claim in self._deleters(ref):
            if at_ns is not None and claim.date.ns > at_ns:
                break
            if not self._deleted(claim.ref, at_ns, memo, path + (ref,)):
                result = True
                break
        memo[ref] = result
        return result

    def state(self, permanode: BlobRef, at=None) -> PermanodeState:
        """Fold the permanode's claims (Perkeep's rules, see docs/claim.md)."""
        at_ns = _at_ns(at)
        at_time = SchemaTime(at_ns) if at_ns is not None else None
        if self.invalid_record(permanode) is not None:
            return PermanodeState(permanode, {}, (), self.is_deleted(permanode, at_ns), False, at_time)
        valid = True if self.permanode(permanode) is not None else None
        claims = self.claims_on(permanode, at_ns)
        return PermanodeState(permanode, fold(claims), tuple(claims),
                              self.is_deleted(permanode, at_ns), valid, at_time)

    def with_node_type(self, node_type: str) -> list[BlobRef]:
        """Permanodes that ever claimed this camliNodeType (fold to confirm)."""
        prefix = _NODETYPE + node_type.encode() + b"\0"
        return [_ref_from_rk(key[len(prefix):]) for key, _ in self.table.scan(prefix)]

    def of_type(self, claim_type: str, include_deleted: bool = False) -> list[ClaimInfo]:
        """Delete or share claims, oldest first."""
        if claim_type not in _INDEXED_TYPES:
            raise ValueError(f"claims of type {claim_type!r} are indexed by permanode, not by type")
        prefix = _BYTYPE + claim_type.encode() + b"\0"
        out, memo = [], {}
        for key, value in self.table.scan(prefix):
            date_ns, ref = _date_ref(key[len(prefix):])
            if not include_deleted and self._deleted(ref, None, memo, ()):
                continue
            r = json.loads(value)
            target = BlobRef.parse(r["target"]) if r.get("target") else None
            out.append(ClaimInfo(ref, claim_type, SchemaTime(date_ns), BlobRef.parse(r["signer"]),
                                 r["key"], target=target))
        return out

    def invalid(self) -> list[InvalidBlob]:
        return [_invalid_from(_ref_from_rk(key[1:]), value) for key, value in self.table.scan(_INVALID)]

    def invalid_on(self, permanode: BlobRef) -> list[InvalidBlob]:
        return [b for b in self.invalid() if permanode in b.permanodes]


# -- folding -----------------------------------------------------------------

def fold(claims: Iterable[ClaimInfo]) -> dict[str, tuple[str, ...]]:
    """Perkeep's attribute semantics over claims already in order.

    set-attribute replaces every value with its own; add-attribute appends
    (duplicates kept); del-attribute with a value removes every copy of that
    value, without one removes them all. A multi claim's edits apply in
    their order. Attributes left without values disappear.
    """
    values: dict[str, list[str]] = {}
    for claim in claims:
        for change in claim.changes:
            current = values.setdefault(change.attribute, [])
            if change.claim_type == "set-attribute":
                current[:] = [change.value or ""]
            elif change.claim_type == "add-attribute":
                current.append(change.value or "")
            elif change.value is None:
                current.clear()
            else:
                current[:] = [v for v in current if v != change.value]
    return {name: tuple(vs) for name, vs in values.items() if vs}


# -- helpers -------------------------------------------------------------------

class _KeyCache:
    """Signer key blobs fetched once per sync; missing ones come back None."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self._keys: dict[BlobRef, bytes | None] = {}

    def fetch(self, ref: BlobRef) -> bytes | None:
        if ref not in self._keys:
            self._keys[ref] = None
            if self.repo.has(ref):  # a miss in get() would list the backend
                try:
                    self._keys[ref] = self.repo.get(ref)
                except (BlobNotFoundError, IntegrityError, BackendError):
                    pass
        return self._keys[ref]


def _verify(data: bytes, fetch_key) -> tuple[str, str, jsonsign.VerifiedSignature | None]:
    try:
        return OK, "", jsonsign.verify(data, fetch_key)
    except jsonsign.MissingSignerKeyError as e:
        return MISSING_KEY, str(e), None
    except SignatureError as e:
        return BAD_SIGNATURE, str(e), None
    except SchemaError as e:
        return MALFORMED, str(e), None


def _parse(data: bytes):
    """(parsed blob, None) or (None, why); only permanodes and claims are signed."""
    try:
        parsed = parse_blob(data)
    except (SchemaError, ValueError) as e:
        return None, f"not a valid schema blob: {e}"
    if isinstance(parsed, OtherBlob) and parsed.camli_type != "share":
        return parsed, f"a signed {parsed.camli_type or 'untyped'} blob is neither permanode nor claim"
    if not isinstance(parsed, (PermanodeBlob, AttributeClaim, MultiClaim, DeleteClaim,
                               ShareClaim, OtherBlob)):
        return parsed, f"a signed {parsed.camli_type} blob is neither permanode nor claim"
    return parsed, None


def _permanodes_of(parsed) -> list[BlobRef]:
    if isinstance(parsed, AttributeClaim):
        return [parsed.permanode]
    if isinstance(parsed, MultiClaim):
        return sorted({c.permanode for c in parsed.changes})
    return []


def _invalid_from(ref: BlobRef, value: bytes) -> InvalidBlob:
    r = json.loads(value)
    signer = BlobRef.parse_or_none(r.get("signer"))
    pns = tuple(BlobRef.parse(p) for p in r.get("permanodes", []))
    date = SchemaTime(r["date"]) if r.get("date") is not None else None
    return InvalidBlob(ref, r["status"], r["reason"], signer, r.get("type"), pns, date)


def _rk(ref: BlobRef) -> bytes:
    key = ref.to_key()
    return bytes([len(key)]) + key


def _ref_from_rk(data: bytes) -> BlobRef:
    return BlobRef.from_key(data[1:1 + data[0]])


def _date_key(ns: int) -> bytes:
    return (ns + _DATE_BIAS).to_bytes(_DATE_LEN, "big")


def _date_ref(tail: bytes) -> tuple[int, BlobRef]:
    ns = int.from_bytes(tail[:_DATE_LEN], "big") - _DATE_BIAS
    return ns, BlobRef.parse(tail[_DATE_LEN:].decode())


def _pack_set_digest(packs: dict[str, int]) -> bytes:
    return hashlib.sha256("\n".join(sorted(packs)).encode()).digest()


def _dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _at_ns(at) -> int | None:
    """`at` as ns since the epoch: None, int ns, SchemaTime, aware datetime or RFC 3339."""
    if at is None or isinstance(at, int) and not isinstance(at, bool):
        return at
    if isinstance(at, SchemaTime):
        return at.ns
    if isinstance(at, datetime):
        return SchemaTime.from_datetime(at).ns
    if isinstance(at, str):
        return SchemaTime.parse(at).ns
    raise TypeError(f"cannot use {at!r} as a time")
