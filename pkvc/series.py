"""The Git-style layer: series, snapshots and revisions (design section 2).

A *series* is one permanode per backed-up source, marked
`camliNodeType: "pkvc:series"` (Perkeep's `domain:type` convention for
node types), named by its `title` and labelled by `tag`s. A *snapshot* is a
`set-attribute camliContent` claim on the series whose value is the root
`directory` blob; the series' *log* is that claim history, newest first,
leaving out claims that are deleted (`forget`) or do not verify.

Revisions name a snapshot, optionally a path inside it:
`SERIES[@REV][:PATH]`, REV being `@N` (N snapshots back, `@0` the latest)
or `@{DATE}`; or, in place of `SERIES@REV`, a unique prefix of a snapshot's
claim blobref or root directory blobref (with or without `sha224-`, at least
4 hex digits without it). Series names are matched first, longest first,
so a name may itself contain `@` or `:`. DATE is RFC 3339 (`2026-01-31T10:00:00Z`,
any offset), a date and time without offset (taken as UTC), or a day
`2026-01-31`, which means the end of that day in UTC: `series@{2026-01-31}`
is the snapshot that was latest when that day ended.

Trees are read back with `walk`, `lookup_path`, `list_dir` and `diff_trees`
(directory -> static-set, with mergeSets -> children by file name; names
are bytes).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from pkvc.blobref import BlobRef
from pkvc.claims import (
    ClaimInfo, ClaimsIndex, InvalidBlob, PermanodeInfo, PermanodeState, add_claim, monotonic,
    new_permanode,
)
from pkvc.errors import BlobNotFoundError, SchemaError, UsageError
from pkvc.repo import Repository
from pkvc.schema import jsonsign
from pkvc.schema.anyblob import parse_blob
from pkvc.schema.claims import AttributeClaim, Clock, MultiClaim
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob, SpecialBlob, SymlinkBlob
from pkvc.schema.names import name_problem
from pkvc.schema.staticset import StaticSetBlob
from pkvc.schema.timefmt import SchemaTime

NODE_TYPE = "pkvc:series"
NODE_TYPE_ATTR = "camliNodeType"
CONTENT_ATTR = "camliContent"
TITLE_ATTR = "title"
TAG_ATTR = "tag"
ATTRIBUTE_MODES = {"set": "set-attribute", "add": "add-attribute", "del": "del-attribute"}
MAX_SET_DEPTH = 8
MIN_BARE_PREFIX = 4
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_HEX = re.compile(r"[0-9a-f]+")
_NS = 1_000_000_000
Node = FileBlob | DirectoryBlob | SymlinkBlob | SpecialBlob


# -- values ------------------------------------------------------------------

@dataclass(frozen=True)
class Series:
    permanode: BlobRef
    name: str
    tags: tuple[str, ...]
    created: SchemaTime | None  # the permanode's claimDate
    key_id: str  # who signed the permanode


@dataclass(frozen=True)
class Snapshot:
    """One camliContent claim; `number` is N in SERIES@N (None if not counted)."""

    claim: BlobRef
    date: SchemaTime
    root: BlobRef
    series: BlobRef
    signer: BlobRef | None
    key_id: str
    verified: bool
    number: int | None


@dataclass(frozen=True)
class Resolved:
    """What a revision names: a snapshot, and the blob at PATH inside it."""

    series: Series | None
    snapshot: Snapshot
    path: bytes | None  # None: the whole snapshot
    ref: BlobRef  # the root directory, or the entry at path


@dataclass(frozen=True)
class HistoryEntry:
    claim: ClaimInfo
    deleted: bool  # as of the time asked about


@dataclass(frozen=True)
class PermanodeDescription:
    permanode: BlobRef
    info: PermanodeInfo | None  # None: the permanode blob itself is not stored
    state: PermanodeState
    history: tuple[HistoryEntry, ...]  # attribute claims, oldest first
    deleted_by: tuple[HistoryEntry, ...]  # delete claims on the permanode
    invalid: tuple[InvalidBlob, ...]  # claims on it that never count


@dataclass(frozen=True)
class TreeEntry:
    path: bytes  # relative to the walked directory, "/"-separated
    ref: BlobRef
    blob: Node


@dataclass(frozen=True)
class TreeDiff:
    added: list[bytes]
    removed: list[bytes]
    changed: list[bytes]


# -- series ------------------------------------------------------------------

def create_series(repo: Repository, signer: jsonsign.Signer, name: str,
                  tags=(), clock: Clock = time.time_ns) -> Series:
    """A new series permanode with its node type, title and tags (one claim each)."""
    _check_name(name)
    tags = _check_tags(tags)
    if find_series(repo, name) is not None:
        raise UsageError(f"a series named {name!r} already exists")
    tick = monotonic(clock)
    pn = new_permanode(repo, signer, tick)
    add_claim(repo, signer, "set-attribute", pn, NODE_TYPE_ATTR, NODE_TYPE, tick)
    add_claim(repo, signer, "set-attribute", pn, TITLE_ATTR, name, tick)
    for tag in tags:
        add_claim(repo, signer, "add-attribute", pn, TAG_ATTR, tag, tick)
    return _series(ClaimsIndex.open(repo), pn)


def ensure_series(repo: Repository, signer: jsonsign.Signer, name: str, tags=(),
                  clock: Clock = time.time_ns) -> tuple[Series, bool]:
    """The series named `name`, created if needed, with `tags` added; (series, created)."""
    series = find_series(repo, name)
    if series is None:
        return create_series(repo, signer, name, tags, clock), True
    return add_tags(repo, signer, series, tags, clock), False


def add_tags(repo: Repository, signer: jsonsign.Signer, series: Series, tags,
             clock: Clock = time.time_ns) -> Series:
    """Add the tags the series does not have yet (one add-attribute claim each)."""
    tick = monotonic(clock)
    for tag in _check_tags(tags):
        if tag not in series.tags:
            add_claim(repo, signer, "add-attribute", series.permanode, TAG_ATTR, tag, tick)
    return _series(ClaimsIndex.open(repo), series.permanode)


def list_series(repo: Repository) -> list[Series]:
    """Every series that is not deleted, by name."""
    return _list_series(ClaimsIndex.open(repo))


def find_series(repo: Repository, name: str) -> Series | None:
    """The series with this title; UsageError if several claim it."""
    found = [s for s in list_series(repo) if s.name == name]
    return _only(found, name)


def get_series(repo: Repository, name_or_ref: str) -> Series:
    """A series by name, or by its permanode's full blobref; UsageError if unknown."""
    index = ClaimsIndex.open(repo)
    everything = _list_series(index)
    found = _only([s for s in everything if s.name == name_or_ref], name_or_ref)
    if found is None:
        found = next((s for s in everything if str(s.permanode) == name_or_ref), None)
    if found is None:
        raise UsageError(f"no series named {name_or_ref!r} ({_known(everything)})")
    return found


def _list_series(index: ClaimsIndex) -> list[Series]:
    out = []
    for pn in index.with_node_type(NODE_TYPE):
        series = _series(index, pn)
        if series is not None:
            out.append(series)
    return sorted(out, key=lambda s: (s.name, str(s.permanode)))


def _series(index: ClaimsIndex, pn: BlobRef) -> Series | None:
    info = index.permanode(pn)
    if info is None:
        return None
    state = index.state(pn)
    if state.deleted or NODE_TYPE not in state.attributes.get(NODE_TYPE_ATTR, ()):
        return None
    return Series(pn, state.get(TITLE_ATTR) or str(pn), state.attributes.get(TAG_ATTR, ()),
                  info.date, info.key_id)


def _only(found: list[Series], name: str) -> Series | None:
    if len(found) > 1:
        refs = ", ".join(str(s.permanode) for s in found)
        raise UsageError(f"{len(found)} series are named {name!r} ({refs}); rename all but one "
                         f"with `pkvc attr PERMANODE title NEW-NAME`")
    return found[0] if found else None


def _known(series: list[Series]) -> str:
    if not series:
        return "the repository has no series yet"
    names = [s.name for s in series]
    shown = ", ".join(repr(n) for n in names[:5])
    return f"known: {shown}" + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise UsageError("a series name cannot be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UsageError(f"series name {name!r} contains a control character")


def _check_tags(tags) -> tuple[str, ...]:
    out = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or any(ord(c) < 32 for c in tag):
            raise UsageError(f"unusable tag {tag!r}")
        if tag not in out:
            out.append(tag)
    return tuple(out)


# -- snapshots ---------------------------------------------------------------

def record_snapshot(repo: Repository, signer: jsonsign.Signer, series: Series | BlobRef,
                    root: BlobRef, clock: Clock = time.time_ns) -> BlobRef:
    """Sign `set-attribute camliContent = root` on the series; the claim's ref."""
    if not repo.has(root):
        raise BlobNotFoundError(f"snapshot root {root} is not in the repository")
    return add_claim(repo, signer, "set-attribute", _pn(series), CONTENT_ATTR, str(root), clock)


def snapshots(repo: Repository, series: Series | BlobRef,
              include_invalid: bool = False) -> list[Snapshot]:
    """The series' snapshots, newest first; with `include_invalid`, camliContent
    claims that do not verify are listed too (verified=False, never numbered)."""
    index = ClaimsIndex.open(repo)
    found = _snapshots(index, _pn(series))
    if include_invalid:
        found += _invalid_snapshots(repo, index, _pn(series))
        found.sort(key=lambda s: (s.date.ns, str(s.claim)), reverse=True)
    return found


def latest_snapshot(repo: Repository, series: Series | BlobRef) -> Snapshot | None:
    found = snapshots(repo, series)
    return found[0] if found else None


def _snapshots(index: ClaimsIndex, pn: BlobRef) -> list[Snapshot]:
    found = []
    for claim in index.claims_on(pn):
        for change in claim.changes:
            root = BlobRef.parse_or_none(change.value) if change.attribute == CONTENT_ATTR else None
            if change.claim_type == "set-attribute" and root is not None:
                found.append((claim, root))
    count = len(found)
    return [Snapshot(c.ref, c.date, root, pn, c.signer, c.key_id, True, count - 1 - i)
            for i, (c, root) in reversed(list(enumerate(found)))]


def _invalid_snapshots(repo: Repository, index: ClaimsIndex, pn: BlobRef) -> list[Snapshot]:
    out = []
    for bad in index.invalid_on(pn):
        try:
            parsed = parse_blob(repo.get(bad.ref))
        except Exception:  # unreadable or unparseable: `check` reports it
            continue
        changes = [parsed.change] if isinstance(parsed, AttributeClaim) else (
            list(parsed.changes) if isinstance(parsed, MultiClaim) else [])
        for c in changes:
            root = BlobRef.parse_or_none(c.value)
            is_snapshot = c.claim_type == "set-attribute" and c.attribute == CONTENT_ATTR
            if c.permanode == pn and is_snapshot and root is not None:
                out.append(Snapshot(bad.ref, bad.date or SchemaTime(0), root, pn, bad.signer, "",
                                    False, None))
    return out


def _pn(series: Series | BlobRef) -> BlobRef:
    return series.permanode if isinstance(series, Series) else series


# -- revisions -----------------------------------------------------------------

def resolve(repo: Repository, spec: str) -> Resolved:
    """The snapshot (and entry) that `SERIES[@REV][:PATH]` names; see the module doc."""
    if not spec:
        raise UsageError("empty revision: expected SERIES[@REV][:PATH]")
    index = ClaimsIndex.open(repo)
    everything = _list_series(index)
    for name in sorted({s.name for s in everything}, key=len, reverse=True):
        if spec == name or (spec.startswith(name) and spec[len(name)] in "@:"):
            series = _only([s for s in everything if s.name == name], name)
            rev, path = _split_rev(spec[len(name):], spec)
            snapshot = _pick(_snapshots(index, series.permanode), rev, series)
            return _at_path(repo, series, snapshot, path)
    prefix, _, path_text = spec.partition(":")
    path = path_text if ":" in spec else None
    series, snapshot = _by_prefix(index, everything, prefix, spec)
    return _at_path(repo, series, snapshot, path)


def _split_rev(rest: str, spec: str) -> tuple[str | None, str | None]:
    """('' | '@N' | '@{DATE}' remainder) -> (rev or None, path or None)."""
    rev = None
    if rest.startswith("@{"):
        end = rest.find("}")
        if end < 0:
            raise UsageError(f"{spec!r}: missing '}}' after @{{")
        rev, rest = rest[1:end + 1], rest[end + 1:]
    elif rest.startswith("@"):
        end = rest.find(":")
        rev, rest = (rest[1:], "") if end < 0 else (rest[1:end], rest[end:])
        if not rev.isdigit():
            raise UsageError(f"{spec!r}: a revision is @N (a number), @{{DATE}} or nothing")
    if rest and not rest.startswith(":"):
        raise UsageError(f"{spec!r}: unexpected {rest!r} (expected :PATH)")
    return rev, (rest[1:] if rest else None)


def _pick(snaps: list[Snapshot], rev: str | None, series: Series) -> Snapshot:
    if not snaps:
        raise UsageError(f"series {series.name!r} has no snapshots yet")
    if rev is None:
        return snaps[0]
    if rev.startswith("{"):
        when = parse_date(rev[1:-1])
        for snap in snaps:
            if snap.date.ns <= when.ns:
                return snap
        raise UsageError(f"series {series.name!r} has no snapshot at or before {when} "
                         f"(the first is from {snaps[-1].date})")
    n = int(rev)
    if n >= len(snaps):
        raise UsageError(f"series {series.name!r} has {len(snaps)} snapshot(s): "
                         f"@{n} is out of range (@0 to @{len(snaps) - 1})")
    return snaps[n]


def _by_prefix(index: ClaimsIndex, everything: list[Series], prefix: str,
               spec: str) -> tuple[Series, Snapshot]:
    """A snapshot whose claim or root directory ref starts with `prefix`."""
    if "-" in prefix:
        matches = lambda ref: str(ref).startswith(prefix)  # noqa: E731
    elif len(prefix) >= MIN_BARE_PREFIX and _HEX.fullmatch(prefix):
        matches = lambda ref: ref.hexdigest.startswith(prefix)  # noqa: E731
    else:
        raise UsageError(f"no series named {prefix!r} ({_known(everything)}), and it is not "
                         "a blobref prefix")
    hits: dict[BlobRef, tuple[Series, Snapshot]] = {}
    for series in everything:
        for snap in reversed(_snapshots(index, series.permanode)):  # newest wins below
            for ref in (snap.claim, snap.root):
                if matches(ref):
                    hits[ref] = (series, snap)
    if not hits:
        raise BlobNotFoundError(f"no series named {prefix!r}, and no snapshot claim or root "
                                f"directory starts with {prefix}")
    if len(hits) > 1:
        shown = ", ".join(sorted(str(r) for r in hits)[:4])
        raise UsageError(f"{prefix} is ambiguous: {len(hits)} snapshot refs start with it ({shown})")
    return next(iter(hits.values()))


def _at_path(repo: Repository, series: Series | None, snapshot: Snapshot,
             path: str | None) -> Resolved:
    if path is None:
        return Resolved(series, snapshot, None, snapshot.root)
    raw = os.fsencode(path)
    return Resolved(series, snapshot, _clean_path(raw), lookup_path(repo, snapshot.root, raw))


def parse_date(text: str) -> SchemaTime:
    """RFC 3339; a date-time without offset (UTC); or a day (the end of it, UTC)."""
    text = text.strip()
    if _DAY.fullmatch(text):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise UsageError(f"not a date: {text!r}") from None
        next_day = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(days=1)
        return SchemaTime(SchemaTime.from_datetime(next_day).ns - 1)
    try:
        return SchemaTime.parse(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"not a date: {text!r} (use 2026-01-31 or 2026-01-31T10:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return SchemaTime.from_datetime(dt)


# -- attributes and describe --------------------------------------------------

def set_attribute(repo: Repository, signer: jsonsign.Signer, permanode: BlobRef, name: str,
                  value: str | None, mode: str = "set", clock: Clock = time.time_ns) -> BlobRef:
    """`pkvc attr`: a set / add / del attribute claim (del with value None: all values)."""
    claim_type = ATTRIBUTE_MODES.get(mode)
    if claim_type is None:
        raise UsageError(f"attribute mode must be set, add or del, not {mode!r}")
    if not name:
        raise UsageError("an attribute name cannot be empty")
    if value is None and mode != "del":
        raise UsageError(f"{mode} needs a value")
    index = ClaimsIndex.open(repo)
    if index.permanode(permanode) is None:
        raise UsageError(f"{permanode} is not a verified permanode in this repository")
    return add_claim(repo, signer, claim_type, permanode, name, value, clock)


def describe_permanode(repo: Repository, permanode: BlobRef, at=None) -> PermanodeDescription:
    """Attributes (as of `at`, default now) and the whole claim history."""
    index = ClaimsIndex.open(repo)
    info = index.permanode(permanode)
    invalid_self = index.invalid_record(permanode)
    claims = index.claims_on(permanode, at, include_deleted=True)
    if info is None and invalid_self is None and not claims:
        if repo.has(permanode):
            raise UsageError(f"{permanode} is not a permanode")
        raise BlobNotFoundError(f"no permanode {permanode} in the repository")
    state = index.state(permanode, at)
    history = tuple(HistoryEntry(c, index.is_deleted(c.ref, at)) for c in claims)
    deleted_by = tuple(HistoryEntry(c, index.is_deleted(c.ref, at))
                       for c in index.deleters(permanode, at))
    invalid = ((invalid_self,) if invalid_self else ()) + tuple(index.invalid_on(permanode))
    return PermanodeDescription(permanode, info, state, history, deleted_by, invalid)


# -- trees ---------------------------------------------------------------------

def read_node(repo: Repository, ref: BlobRef) -> Node:
    return _node(ref, parse_blob(repo.get(ref)))


def read_nodes(repo: Repository, refs) -> dict[BlobRef, Node]:
    """Many nodes at once, read by pack (`Repository.get_many`), not one by one."""
    return {ref: _node(ref, parse_blob(data)) for ref, data in repo.get_many(refs)}


def _node(ref: BlobRef, blob) -> Node:
    if not isinstance(blob, (FileBlob, DirectoryBlob, SymlinkBlob, SpecialBlob)):
        raise SchemaError(f"{ref} is a {blob.camli_type}, not a file-system node")
    return blob


def _directory(ref: BlobRef, blob: Node) -> DirectoryBlob:
    if not isinstance(blob, DirectoryBlob):
        raise UsageError(f"{ref} is a {blob.camli_type}, not a directory")
    return blob


def list_dir(repo: Repository, dir_ref: BlobRef) -> list[tuple[bytes, BlobRef, Node]]:
    """A directory's entries (name, ref, blob), by name; hostile names refused."""
    blob = _directory(dir_ref, read_node(repo, dir_ref))
    entries = {}
    for member in _members(repo, blob.entries, 0, set()):
        child = read_node(repo, member)
        problem = name_problem(child.name)
        if problem or child.name in entries:
            raise SchemaError(f"directory {dir_ref}: entry {member} has a refused name "
                              f"{child.name!r}: {problem or 'used twice'}")
        entries[child.name] = (child.name, member, child)
    return [entries[name] for name in sorted(entries)]


def dir_members(repo: Repository, dir_refs) -> dict[BlobRef, list[BlobRef]]:
    """The refs of each directory's entries, left unread (its static-set's
    members); the directories and their sets are read by pack."""
    dirs = {ref: _directory(ref, blob) for ref, blob in read_nodes(repo, dir_refs).items()}
    sets = {ref: parse_blob(data) for ref, data in
            repo.get_many({blob.entries for blob in dirs.values()})}
    return {ref: _members(repo, blob.entries, 0, set(), sets[blob.entries])
            for ref, blob in dirs.items()}


def _members(repo: Repository, set_ref: BlobRef, depth: int, seen: set,
             blob=None) -> list[BlobRef]:
    """`blob`: the set `set_ref` names, if the caller read it already."""
    if depth > MAX_SET_DEPTH or set_ref in seen:
        raise SchemaError(f"static-set {set_ref} nests too deep or repeats")
    seen.add(set_ref)
    if blob is None:
        blob = parse_blob(repo.get(set_ref))
    if not isinstance(blob, StaticSetBlob):
        raise SchemaError(f"directory entries {set_ref} is a {blob.camli_type}, not a static-set")
    if not blob.merge_sets:
        return list(blob.members)
    return [m for sub in blob.merge_sets for m in _members(repo, sub, depth + 1, seen)]


def lookup_path(repo: Repository, root: BlobRef, path: bytes | str) -> BlobRef:
    """The ref of the entry at `path` ("a/b", slashes at the ends ignored) under `root`."""
    ref = root
    walked: list[bytes] = []
    clean = _clean_path(os.fsencode(path))
    for name in clean.split(b"/") if clean else []:
        node = read_node(repo, ref)
        where = b"/".join(walked) or b"."
        if not isinstance(node, DirectoryBlob):
            raise BlobNotFoundError(f"{os.fsdecode(where)} is not a directory in this snapshot")
        match = [r for n, r, _ in list_dir(repo, ref) if n == name]
        walked.append(name)
        if not match:
            raise BlobNotFoundError(f"no {os.fsdecode(b'/'.join(walked))} in this snapshot")
        ref = match[0]
    return ref


def _clean_path(path: bytes) -> bytes:
    parts = [p for p in path.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise UsageError(f"path {os.fsdecode(path)!r} may not contain '..'")
    return b"/".join(parts)


def walk(repo: Repository, ref: BlobRef) -> Iterator[TreeEntry]:
    """Everything below a directory, depth first, by name (a directory right
    before its contents). For a non-directory, the one entry itself (its name)."""
    top = read_node(repo, ref)
    if not isinstance(top, DirectoryBlob):
        yield TreeEntry(top.name or b"", ref, top)
        return
    yield from _walk_below(repo, b"", ref)


def _walk_below(repo: Repository, prefix: bytes, dir_ref: BlobRef) -> Iterator[TreeEntry]:
    """Iterative, one listing per open level, so deep trees cannot overflow the stack."""
    stack = [(prefix, iter(list_dir(repo, dir_ref)))]
    while stack:
        prefix, entries = stack[-1]
        item = next(entries, None)
        if item is None:
            stack.pop()
            continue
        name, child_ref, child = item
        path = prefix + name
        yield TreeEntry(path, child_ref, child)
        if isinstance(child, DirectoryBlob):
            stack.append((path + b"/", iter(list_dir(repo, child_ref))))


def diff_trees(repo: Repository, a: BlobRef, b: BlobRef) -> TreeDiff:
    """Paths added, removed and changed (another blob: content or metadata)
    from tree `a` to tree `b`; identical subtrees are skipped unread."""
    diff = TreeDiff([], [], [])
    _diff(repo, b"", a, b, diff)
    for paths in (diff.added, diff.removed, diff.changed):
        paths.sort()
    return diff


def _diff(repo: Repository, prefix: bytes, a: BlobRef, b: BlobRef, diff: TreeDiff) -> None:
    pending = [(prefix, a, b)]
    while pending:
        prefix, a, b = pending.pop()
        if a == b:
            continue
        old = {name: (ref, node) for name, ref, node in list_dir(repo, a)}
        new = {name: (ref, node) for name, ref, node in list_dir(repo, b)}
        for name in sorted(set(old) | set(new)):
            path = prefix + name
            if name not in new:
                _everything(repo, path, *old[name], diff.removed)
            elif name not in old:
                _everything(repo, path, *new[name], diff.added)
            elif old[name][0] != new[name][0]:
                (ra, na), (rb, nb) = old[name], new[name]
                if isinstance(na, DirectoryBlob) and isinstance(nb, DirectoryBlob):
                    pending.append((path + b"/", ra, rb))
                    continue
                diff.changed.append(path)
                if isinstance(na, DirectoryBlob):
                    _below(repo, path, ra, diff.removed)
                if isinstance(nb, DirectoryBlob):
                    _below(repo, path, rb, diff.added)


def _everything(repo: Repository, path: bytes, ref: BlobRef, node: Node, out: list) -> None:
    out.append(path)
    if isinstance(node, DirectoryBlob):
        _below(repo, path, ref, out)


def _below(repo: Repository, path: bytes, ref: BlobRef, out: list) -> None:
    out.extend(path + b"/" + e.path for e in _walk_below(repo, b"", ref))
