"""Sharing: signed `share` claims, the graph a share opens, and which shares are live.

Terms (Perkeep's, see docs/sharing.md): a *share* is a signed claim with
`claimType: share` and `authType: haveref`: whoever knows its blobref may
fetch its `target`, and, when it is `transitive`, every blob linked from the
target through the file-system schema. A share *expires* at `expires`
(RFC 3339) and is *revoked* by a delete claim that targets it. Only shares
signed by one of this repository's own identities count (`own_signers`). A
*live* share is such a verified share, neither expired nor revoked: its
claim and its target are GC roots.

The *links* of the graph are typed, stricter than "any ref in the JSON"
(Perkeep issue 228): a `file` or `bytes` blob links to its `parts[].blobRef`
(raw bytes, never parsed as schema, even when they look like it) and
`parts[].bytesRef` (a `bytes` blob); a `directory` to its `entries` (a
`static-set`); a `static-set` to its `members` (file-system nodes) and
`mergeSets` (static-sets). Nothing else counts: not `wholeRef`, not the
2011 `contentParts`, not a ref's text inside some other field or blob.

`live_shares(repo, now)` is what the garbage collector asks; `list_shares`
is what `pkvc shares` shows, revoked and expired ones included.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pkvc import series as series_mod
from pkvc.blobref import BlobRef
from pkvc.claims import ClaimsIndex, add_delete_claim, sign_and_put
from pkvc.errors import BlobNotFoundError, PkvcError, SchemaError, UsageError
from pkvc.identity import list_identities
from pkvc.repo import Repository
from pkvc.schema import jsonsign
from pkvc.schema.anyblob import parse_blob
from pkvc.schema.canonical import MAX_SCHEMA_BLOB_SIZE, looks_like_schema, parse_schema
from pkvc.schema.claims import SHARE_HAVEREF, Clock, ShareClaim, new_share_claim, parse_claim
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob
from pkvc.schema.parts import BytesBlob
from pkvc.schema.staticset import StaticSetBlob
from pkvc.schema.timefmt import SchemaTime

# What a ref in the graph is expected to be, from the link that reached it.
TARGET = "target"  # the share's target: any blob
RAW = "raw"        # a part's blobRef: bytes, never parsed
BYTES = "bytes"    # a part's bytesRef
SET = "set"        # a directory's entries, a static-set's mergeSets
NODE = "node"      # a static-set's members: file, directory, symlink, fifo, socket
_ALLOWED = {
    TARGET: {"file", "bytes", "directory", "static-set"},
    BYTES: {"bytes"},
    SET: {"static-set"},
    NODE: {"file", "directory"},  # symlinks and specials link to nothing
}
RESOLUTION_TABLE = "shares"
_NS = 1_000_000_000
_DURATION = re.compile(r"(\d+)([smhdwy])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class ShareError(PkvcError):
    """A share cannot be made, read or used as asked."""


# -- the graph ---------------------------------------------------------------

def links_of(data: bytes, kind: str) -> dict[BlobRef, str] | None:
    """The blobs `data` links to, each with the kind it must be; None when
    `data`, reached as `kind`, is not a schema blob that may link anywhere."""
    if kind == RAW or len(data) > MAX_SCHEMA_BLOB_SIZE or not looks_like_schema(data):
        return None
    try:
        raw = parse_schema(data)
        blob = parse_blob(raw)
    except (SchemaError, ValueError):
        return None
    if blob.camli_type not in _ALLOWED.get(kind, ()):
        return None
    links: dict[BlobRef, str] = {}
    if isinstance(blob, (FileBlob, BytesBlob)):
        if "parts" not in raw:  # the 2011 `contentParts` is not followed (nor by Perkeep)
            return links
        for part in blob.parts:
            if part.blob_ref is not None:
                links.setdefault(part.blob_ref, RAW)
            elif part.bytes_ref is not None:
                links.setdefault(part.bytes_ref, BYTES)
    elif isinstance(blob, DirectoryBlob):
        links[blob.entries] = SET
    elif isinstance(blob, StaticSetBlob):
        for member in blob.members:
            links.setdefault(member, NODE)
        for sub in blob.merge_sets:
            links.setdefault(sub, SET)
    return links


Obtain = Callable[[BlobRef, tuple, str], "bytes | None"]


def walk_graph(target: BlobRef, obtain: Obtain, transitive: bool = True) -> Iterator[BlobRef]:
    """Every blob of the share's graph, each once, depth first from the target.

    `obtain(ref, via, kind)` returns the blob's bytes (None when the caller
    need not look inside, e.g. raw data it already holds); `via` is the
    chain of refs from the target down to the blob's parent, exactly what a
    client puts after the share in `?via=`.
    """
    seen = {target}
    stack: list[tuple[BlobRef, tuple, str]] = [(target, (), TARGET)]
    while stack:
        ref, via, kind = stack.pop()
        data = obtain(ref, via, kind)
        yield ref
        if not transitive or data is None:
            continue
        children = links_of(data, kind) or {}
        for child, child_kind in reversed(list(children.items())):
            if child not in seen:
                seen.add(child)
                stack.append((child, via + (ref,), child_kind))


# -- reading a share claim ----------------------------------------------------

@dataclass(frozen=True)
class VerifiedShare:
    """A share claim whose structure and signature checked out."""

    ref: BlobRef
    claim: ShareClaim
    signer: BlobRef
    key_id: str
    fingerprint: str

    @property
    def target(self) -> BlobRef:
        return self.claim.target

    @property
    def transitive(self) -> bool:
        return self.claim.transitive

    @property
    def expires(self) -> SchemaTime | None:
        return self.claim.expires

    def expired(self, now_ns: int | None = None) -> bool:
        now_ns = time.time_ns() if now_ns is None else now_ns
        return self.claim.expires is not None and now_ns > self.claim.expires.ns


def parse_share(data: bytes) -> ShareClaim:
    """A haveref share of one target, as Perkeep's handler requires one to be."""
    if len(data) > MAX_SCHEMA_BLOB_SIZE:
        raise ShareError("share claim is larger than 1 MiB")
    try:
        jsonsign.split_signed(data)  # camliSigner and a camliSig string
        claim = parse_claim(parse_schema(data))
    except (SchemaError, ValueError) as e:
        raise ShareError(f"not a share claim: {e}") from None
    if not isinstance(claim, ShareClaim):
        raise ShareError(f"not a share claim but a {claim.claim_type} claim")
    if claim.auth_type != SHARE_HAVEREF:
        raise ShareError(f"share authType {claim.auth_type!r} is not haveref")
    if claim.target is None:
        raise ShareError("share by search is not supported: pkvc shares one target")
    return claim


def verify_share(ref: BlobRef, data: bytes, fetch_key) -> VerifiedShare:
    """Check bytes, structure and signature; ShareError or SignatureError if not."""
    if not ref.matches(data):
        raise ShareError(f"share claim bytes do not match {ref}")
    claim = parse_share(data)
    verified = jsonsign.verify(data, fetch_key)
    return VerifiedShare(ref, claim, verified.signer, verified.key_id, verified.fingerprint)


def load_share(repo: Repository, ref: BlobRef) -> VerifiedShare:
    """A share claim stored in this repository, verified with its signer's key blob."""
    try:
        data = repo.get(ref)
    except BlobNotFoundError:
        raise BlobNotFoundError(f"no share claim {ref} in this repository") from None
    return verify_share(ref, data, lambda key: repo.get(key) if repo.has(key) else None)


# -- writing -------------------------------------------------------------------

def check_target(repo: Repository, target: BlobRef) -> str:
    """The target's camliType; a share opens a file or a directory, never a permanode."""
    if not repo.has(target):
        raise BlobNotFoundError(f"nothing to share: {target} is not in the repository")
    data = repo.get(target)
    kind = None
    if looks_like_schema(data):
        try:
            kind = parse_schema(data).get("camliType")
        except SchemaError:
            kind = None
    if kind not in ("file", "directory"):
        what = f"a {kind} blob" if kind else "not a schema blob"
        raise UsageError(f"{target} is {what}: a share's target is a file or a directory "
                         "(share the snapshot or a path in it, never the series permanode)")
    return kind


def create_share(repo: Repository, signer: jsonsign.Signer, target: BlobRef, *,
                 transitive: bool = True, expires: SchemaTime | None = None,
                 clock: Clock = time.time_ns) -> BlobRef:
    """Sign and store a haveref share of `target`; its ref is the secret to hand out."""
    check_target(repo, target)
    now = clock()
    if expires is not None and expires.ns <= now:
        raise UsageError(f"the expiry {expires} is already past")
    claim = new_share_claim(target=target, transitive=transitive, expires=expires,
                            signer=BlobRef.of(signer.public_key), clock=lambda: now)
    ref = sign_and_put(repo, signer, claim)
    repo.flush()
    return ref


def revoke_share(repo: Repository, signer: jsonsign.Signer, share: BlobRef,
                 clock: Clock = time.time_ns) -> BlobRef:
    """A signed delete claim on the share: servers refuse it from their next request on."""
    load_share(repo, share)
    ref = add_delete_claim(repo, signer, share, clock)
    repo.flush()
    return ref


def parse_expiry(text: str, now_ns: int | None = None) -> SchemaTime:
    """`30d`, `12h`, `1w2d`, `90m`, `45s`, `1y` from now; or a date (see series.parse_date)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    spec = text.strip().lower()
    if spec and _DURATION.sub("", spec) == "":
        seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(spec))
        if seconds <= 0:
            raise UsageError(f"--expires {text!r}: a duration must be longer than zero")
        return SchemaTime((now_ns // _NS + seconds) * _NS)
    try:
        return series_mod.parse_date(text)
    except UsageError:
        raise UsageError(f"--expires {text!r}: use a duration like 30d, 12h, 1w2d, 90m, "
                         "or a date like 2026-12-31 or 2026-12-31T18:00:00Z") from None


# -- listing, and the GC's question ----------------------------------------------

@dataclass(frozen=True)
class ShareInfo:
    ref: BlobRef
    target: BlobRef
    transitive: bool
    expires: SchemaTime | None
    created: SchemaTime  # the claimDate
    signer: BlobRef
    key_id: str
    revoked: bool
    expired: bool

    @property
    def live(self) -> bool:
        return not (self.revoked or self.expired)


def own_signers(repo: Repository) -> set[BlobRef]:
    """The key blobs of this repository's identities: only shares they signed count.

    A share claim may reach a repository from elsewhere (a pull keeps the
    sharer's claim as provenance, a file may hold one): such a share is not
    this repository's to honour, serve or keep alive.
    """
    return {i.public_key_ref for i in list_identities(repo)}


def list_shares(repo: Repository, now_ns: int | None = None,
                index: ClaimsIndex | None = None) -> list[ShareInfo]:
    """Every verified share this repository made, oldest first, revoked ones too."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    index = index or ClaimsIndex.open(repo)
    own = own_signers(repo)
    out = []
    for claim in index.of_type("share", include_deleted=True):
        if claim.signer not in own:
            continue
        try:
            parsed = parse_share(repo.get(claim.ref))
        except (ShareError, BlobNotFoundError):
            continue  # a search share, or gone since it was indexed
        expired = parsed.expires is not None and now_ns > parsed.expires.ns
        out.append(ShareInfo(claim.ref, parsed.target, parsed.transitive, parsed.expires,
                             claim.date, claim.signer, claim.key_id,
                             index.is_deleted(claim.ref), expired))
    return out


def live_shares(repo: Repository, now_ns: int | None = None,
                index: ClaimsIndex | None = None) -> list[ShareInfo]:
    """Shares that protect their target from GC: verified, signed by one of this
    repository's identities, not revoked, not expired.

    The GC's roots are each live share's `ref` (the claim) and `target`, plus
    what the target links to. Pass the GC's own `index` to avoid a second sync.
    """
    return [s for s in list_shares(repo, now_ns, index) if s.live]


def share_is_live(repo: Repository, share: BlobRef, now_ns: int | None = None) -> bool:
    return any(s.ref == share for s in live_shares(repo, now_ns))


# -- what a target is: series, snapshot, path ------------------------------------

@dataclass(frozen=True)
class TargetPlace:
    series: str
    snapshot: str  # the snapshot claim
    date: str
    path: str  # "" for the snapshot's root


def remember_place(repo: Repository, share: BlobRef, place: TargetPlace) -> None:
    """Note where a share's target came from (a cache row; `place_of` can redo it)."""
    table = repo.cache_table(RESOLUTION_TABLE)
    table.put(str(share).encode(), json.dumps(place.__dict__).encode())
    table.flush()


def place_of(repo: Repository, share: BlobRef, target: BlobRef) -> TargetPlace | None:
    """Where the target sits in the snapshots: remembered, else searched and remembered."""
    table = repo.cache_table(RESOLUTION_TABLE)
    row = table.get(str(share).encode())
    if row is not None:
        try:
            found = json.loads(row)
            return TargetPlace(**found) if found else None
        except (ValueError, TypeError):
            pass
    place = find_place(repo, target)
    if place is not None:
        remember_place(repo, share, place)
    else:  # found nowhere (e.g. its snapshots were forgotten): do not search every time
        table.put(str(share).encode(), b"{}")
        table.flush()
    return place


def find_place(repo: Repository, target: BlobRef) -> TargetPlace | None:
    """The newest snapshot holding `target`, and its path there (None if none does).

    Directories are content-addressed, so one that lacks the target in one
    snapshot lacks it in all: each is listed at most once.
    """
    memo: dict[BlobRef, bytes | None] = {}
    for each in series_mod.list_series(repo):
        for snap in series_mod.snapshots(repo, each):
            try:
                path = _path_in(repo, snap.root, target, memo)
            except RecursionError:  # absurdly deep: not worth a label
                path = None
            if path is not None:
                return TargetPlace(each.name, str(snap.claim), str(snap.date), os.fsdecode(path))
    return None


def _path_in(repo: Repository, root: BlobRef, target: BlobRef, memo: dict) -> bytes | None:
    if root == target:
        return b""
    if root in memo:
        return memo[root]
    memo[root] = None
    try:
        entries = series_mod.list_dir(repo, root)
    except (PkvcError, ValueError):
        return None
    for name, ref, node in entries:
        if ref == target:
            memo[root] = name
            return name
    for name, ref, node in entries:
        if isinstance(node, DirectoryBlob):
            below = _path_in(repo, ref, target, memo)
            if below is not None:
                memo[root] = name + b"/" + below
                return memo[root]
    return None

