"""Garbage collection: mark what the roots reach, sweep what they do not.

Terms (docs/gc.md explains the design, its guarantees and their tests):

- *Roots*: blobs that are live by themselves, given by a provider (by
  default `claim_roots`: live permanodes, their live claims, signer keys,
  live shares). *Live*: reachable from a root through schema references
  (file and bytes parts, directory entries, static-set members and
  mergeSets, claim values, share targets). Data blobs are never parsed.
- *P0*: the packs that existed when this gc began; it touches no other.
- *Condemned*: stored blobs that are not live, whose every copy is in a
  pack the gc will delete. *Protected*: not live, but kept because
  something that stays stored references them (garbage left in a pack
  below the `max_unused` threshold), or, for a delete claim, because its
  target stays: a delete claim always outlives what it deletes.
- A *plan* (pkvc.sessions) names the condemned blobs and the packs to
  delete; it is published before anything is deleted, then the gc waits
  for every writer lease that may have relied on a condemned blob, marks
  again from what was written meanwhile (rescuing what it reaches), copies
  what stays out of the doomed packs, stores a *tombstone* pack with copies
  of the condemned delete claims, deletes the doomed packs, then the
  tombstone (so a delete claim never goes before what it deletes), then
  the plan.
- A plan left by a gc that died is finished by the next gc, once the
  writers it waited for have ended.

Memory: a `BlobTable` holds every blob key in sorted buffers with a kind
byte (about 30 bytes per sha224 blob), a few flag arrays a byte per blob,
the primary locations as columns and the refs cache's rows in one buffer;
no Python object per blob lives for the whole run.
"""

from __future__ import annotations

import secrets
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice

from pkvc.blobref import BlobRef
from pkvc.claims import ClaimsIndex
from pkvc.errors import BackendError, BlobNotFoundError, IntegrityError, SchemaError
from pkvc.identity import list_identities
from pkvc.pack import KIND_DATA, KIND_SIGNED
from pkvc.progress import NO_PROGRESS, Progress
from pkvc.repo import Location, LocationColumns, Repository, split_refs
from pkvc.schema.anyblob import parse_blob, walk_refs
from pkvc.schema.claims import DeleteClaim, ShareClaim
from pkvc.sessions import KIND_GC, Lease, LeaseExpiredError, Plan, RefSet, SortedKeys

DEFAULT_MAX_UNUSED = 5.0
DEFAULT_WAIT = 300.0  # seconds to wait for writers before leaving the plan for next time
MARK_BATCH = 4096  # blobs marked per wave; the schema blobs among them are read together
FORGET_BATCH = 20_000  # keys of deleted packs dropped from the index in one write
KNOWN_REFS_CHUNK = 16_384  # refs-cache rows read at once (objects live one chunk only)
#: Step names passed to the `fault` hook, in the order a full run reaches them.
STEPS = ("locked", "marked", "resume-waited", "planned", "waiting", "waited", "remarked",
         "copied-pack", "copied", "tombstone", "deleted-pack", "deleted",
         "tombstone-deleted", "plan-removed", "done")
RootProvider = Callable[[], Iterable[BlobRef]]
STALE_UPLOAD_AGE = 3600.0  # seconds since a pack temp file was last written


# -- the result ---------------------------------------------------------------------

@dataclass
class GcSummary:
    """What a gc did (or, with dry_run, would do). Sizes are pack bytes."""

    dry_run: bool = False
    packs_before: int = 0
    bytes_before: int = 0
    packs_after: int = 0
    bytes_after: int = 0
    packs_deleted: int = 0  # deleted outright (nothing in them stayed)
    packs_rewritten: int = 0  # deleted after copying what stayed
    packs_written: int = 0
    bytes_freed: int = 0  # pack bytes deleted minus pack bytes written (dry run: estimated)
    bytes_unreachable: int = 0  # unreachable bytes still stored afterwards
    blobs_removed: int = 0
    live_blobs: int = 0
    live_bytes: int = 0
    blobs_rescued: int = 0  # condemned, then reached from what writers wrote meanwhile
    missing_refs: int = 0  # references to blobs not stored (`check` reports them)
    plans_finished: int = 0  # plans of earlier gcs completed by this one
    plan: str | None = None  # id of the plan this gc published
    deferred: bool = False  # a plan is left for the next gc (writers still running)
    waited_for: int = 0  # leases waited for
    stale_uploads: int = 0  # unfinished pack writes of killed writers removed
    stale_upload_bytes: int = 0
    skipped: str | None = None  # why nothing was done (another gc runs)
    duration: float = 0.0


# -- compact tables --------------------------------------------------------------------

class Bits(bytearray):
    """A flag (0 or 1) per blob ordinal, one byte each (`Bits(n)`: all 0): one
    is read or set by a C operation, not a Python call, and whole tables
    combine at once (`union`, `minus`); a bitmap would be 8x smaller."""

    def set(self, i: int) -> None:
        self[i] = 1

    def count(self) -> int:  # (of the ones: every byte is 0 or 1)
        return bytearray.count(self, 1)

    def union(self, other: "Bits") -> "Bits":
        return Bits((int.from_bytes(self, "little") | int.from_bytes(other, "little"))
                    .to_bytes(len(self), "little"))

    def minus(self, other: "Bits") -> "Bits":
        return Bits((int.from_bytes(self, "little") & ~int.from_bytes(other, "little"))
                    .to_bytes(len(self), "little"))

    def ones(self) -> Iterator[int]:
        """The ordinals set, ascending."""
        i = self.find(1)
        while i >= 0:
            yield i
            i = self.find(1, i + 1)


class BlobTable:
    """The blobs the index held when the gc began: key <-> ordinal, and kind.

    Keys sit in one sorted buffer per key length (`SortedKeys`), kinds in
    one byte per blob: about 30 bytes per sha224 blob, no object per blob.
    """

    def __init__(self, groups: list[tuple[int, SortedKeys]], kinds: bytes):
        self._groups = {g.width: (base, g) for base, g in groups}
        self._order = groups  # (base ordinal, keys), by base
        self.kinds = kinds
        self.n = len(kinds)

    @classmethod
    def build(cls, primaries: Iterable[tuple[bytes, int]]) -> "BlobTable":
        """From (key, kind) in ascending key order, as the index lists them."""
        keys: dict[int, bytearray] = {}
        kinds: dict[int, bytearray] = {}
        for key, kind in primaries:
            w = len(key)
            if w not in keys:
                keys[w], kinds[w] = bytearray(), bytearray()
            keys[w] += key
            kinds[w].append(kind)
        return cls.from_groups({w: bytes(keys[w]) for w in sorted(keys)},
                               b"".join(kinds[w] for w in sorted(kinds)))

    @classmethod
    def from_groups(cls, keys: dict[int, bytes], kinds: bytes) -> "BlobTable":
        """From the keys of each width (ascending), joined in key order, and
        their kinds in the same order (`Repository.primary_columns`)."""
        groups, base = [], 0
        for w, joined in keys.items():
            groups.append((base, SortedKeys(w, joined)))
            base += len(joined) // w
        return cls(groups, bytes(kinds))

    def ordinal(self, key: bytes) -> int:
        found = self._groups.get(len(key))
        if found is None:
            return -1
        i = found[1].index(key)
        return found[0] + i if i >= 0 else -1

    def ordinals(self, keys: list[bytes]) -> list[int]:
        """`ordinal` of each key; one call for a wave of them."""
        if len(self._order) != 1:
            return list(map(self.ordinal, keys))
        base, g = self._order[0]  # one key width (the usual): no dispatch per key
        index, w = g.index, g.width
        return [(base + i if (i := index(k)) >= 0 else -1) if len(k) == w else -1 for k in keys]

    def ordinal_finder(self) -> Callable[[bytes], int]:
        """`ordinal`, faster for keys given in ascending order (as the index
        lists them): each is first tried just after the last one found of its
        width, and only bisected for when it is not there."""
        after: dict[int, int] = {}

        def find(key: bytes) -> int:
            found = self._groups.get(len(key))
            if found is None:
                return -1
            base, g = found
            i = after.get(g.width, 0)
            if not (i < len(g) and g[i] == key):
                i = g.index(key)
                if i < 0:
                    return -1
            after[g.width] = i + 1
            return base + i
        return find

    def key(self, o: int) -> bytes:
        for base, g in reversed(self._order):
            if o >= base:
                return g[o - base]
        raise IndexError(o)

    def nbytes(self) -> int:
        return len(self.kinds) + sum(g.nbytes() for _, g in self._order)


class Places:
    """Where each blob of a BlobTable was when the gc began (its primary copy),
    by ordinal, as columns (about 21 bytes a blob): marking reads schema blobs
    without an index lookup each."""

    def __init__(self, columns: LocationColumns):
        self.pack_ids = columns.pack_ids
        self.packs, self.lengths = columns.packs, columns.lengths
        self.columns = columns

    def location(self, o: int) -> Location:
        return self.columns.location(o)


class Rows:
    """One look at every copy the index lists, as arrays (about 13 bytes a
    copy): its blob's ordinal, its pack, its length, whether it is primary.

    `places`: the primary copies as `prepare` read them, when the index still
    has those (nothing deleted since: only a gc deletes packs, and this one
    holds the gc lease); then only the other copies are read from the index,
    not every row again."""

    def __init__(self, repo: Repository, table: BlobTable, places: "Places | None" = None):
        self.ords, self.packs, self.lengths = array("i"), array("I"), array("I")
        if places is None:
            self.pack_ids: list[str] = []
            self.primary = bytearray()
            rows = repo.all_locations()
        else:
            self.pack_ids = list(places.pack_ids)
            self.ords.extend(range(table.n))
            self.packs.extend(places.packs)
            self.lengths.extend(places.lengths)
            self.primary = bytearray(b"\1") * table.n
            rows = ((key, loc, False) for key, loc in repo.all_copies())
        number = {p: i for i, p in enumerate(self.pack_ids)}
        ordinal = table.ordinal_finder()
        for key, loc, primary in rows:
            o = ordinal(key)
            if o < 0:
                continue  # written after the gc began: never touched, never needed
            p = number.get(loc.pack_id)
            if p is None:
                p = number[loc.pack_id] = len(self.pack_ids)
                self.pack_ids.append(loc.pack_id)
            self.ords.append(o)
            self.packs.append(p)
            self.lengths.append(loc.length)
            self.primary.append(primary)
        self.n = table.n

    def _numbers(self, pack_ids) -> set[int]:
        wanted = set(pack_ids)
        return {i for i, p in enumerate(self.pack_ids) if p in wanted}

    def copies(self, leaving) -> tuple[Bits, Bits]:
        """Blobs stored at all, and blobs with a copy in a pack not in `leaving`."""
        present, outside = Bits(self.n), Bits(self.n)
        gone = self._numbers(leaving)
        for o, p in zip(self.ords, self.packs):
            present[o] = 1
            if p not in gone:
                outside[o] = 1
        return present, outside

    def usage(self, packs, keep: Bits) -> dict[str, list[int]]:
        """pack -> [bytes, bytes kept] for `packs`; only a primary copy counts as kept."""
        numbers = self._numbers(packs)
        totals = {p: [0, 0] for p in numbers}
        for o, p, length, primary in zip(self.ords, self.packs, self.lengths, self.primary):
            u = totals.get(p)
            if u is not None:
                u[0] += length
                if primary and keep[o]:
                    u[1] += length
        return {self.pack_ids[p]: u for p, u in totals.items()}

    def freeing(self, packs, keep: Bits) -> set[str]:
        """Those of `packs` whose deletion frees something (a blob or a second copy)."""
        numbers = self._numbers(packs)
        frees = set()
        for o, p, primary in zip(self.ords, self.packs, self.primary):
            if p in numbers and (not primary or not keep[o]):
                frees.add(self.pack_ids[p])
        return frees


class KnownRefs:
    """The refs cache's rows of a BlobTable's blobs, read in one scan of the
    cache (in one buffer, about 8 bytes a blob beside the rows): marking
    finds the refs of a schema blob without a lookup each."""

    _NONE = 0xFFFFFFFF

    def __init__(self, repo: Repository, table: BlobTable):
        self.data = bytearray()  # (joined slices of it are bytes)
        self.starts = array("I", [self._NONE]) * table.n
        self.ends = array("I", [0]) * table.n
        rows = repo.all_known_refs()
        while chunk := list(islice(rows, KNOWN_REFS_CHUNK)):
            for o, (_, row) in zip(table.ordinals([key for key, _ in chunk]), chunk):
                start = len(self.data)
                if o >= 0 and start + len(row) < self._NONE:  # (else looked up when wanted)
                    self.data += row
                    self.starts[o], self.ends[o] = start, len(self.data)

    def get(self, ordinals: list[int]) -> tuple[list[bytes], list[int]]:
        """The ref keys the blobs `ordinals` hold, together, and the positions
        in `ordinals` of those the cache had no row for (or not in the table: -1)."""
        starts, ends, data, none = self.starts, self.ends, self.data, self._NONE
        rows, unknown = [], []
        for at, o in enumerate(ordinals):
            start = starts[o] if o >= 0 else none
            if start == none:
                unknown.append(at)
            else:
                rows.append(data[start:ends[o]])
        return split_refs(b"".join(rows)), unknown


# -- roots --------------------------------------------------------------------------------

def claim_roots(repo: Repository, clock: Callable[[], int] = time.time_ns) -> Iterator[BlobRef]:
    """The roots of design section 4, from the claims index.

    Every verified permanode that is not deleted and every claim on it that
    is not deleted (their values, signer keys and the permanode itself are
    reached through them); every share claim neither revoked nor expired
    (its target is reached through it); the public key blob of every
    identity; and, never to judge what cannot be read, every signed blob
    that does not verify. Delete claims are no roots: gc keeps one exactly
    as long as its target stays stored.
    """
    index = ClaimsIndex(repo)
    stats = index.sync()
    if stats.skipped_packs:
        raise IntegrityError(f"{len(stats.skipped_packs)} pack(s) could not be read for their "
                             "claims; run `pkvc check` before gc")
    for identity in list_identities(repo):
        yield identity.public_key_ref
    for ref in index.permanodes():  # (synced: a permanode no pack holds has no row)
        if repo.contains(ref) and not index.is_deleted(ref):
            yield ref
            for claim in index.claims_on(ref):
                yield claim.ref
    now = clock()
    for share in index.of_type("share"):
        try:
            parsed = parse_blob(repo.get(share.ref))
        except (SchemaError, ValueError):
            yield share.ref
            continue
        if not (isinstance(parsed, ShareClaim) and parsed.expires is not None
                and parsed.expires.ns <= now):
            yield share.ref
    for bad in index.invalid():
        yield bad.ref


def _provider(roots, repo: Repository) -> RootProvider:
    if roots is None:
        return lambda: claim_roots(repo)
    if callable(roots):
        return roots
    fixed = list(roots)
    return lambda: fixed


# -- one run --------------------------------------------------------------------------------

def _no_fault(step: str) -> None:
    pass


@dataclass
class _Planned:
    packs: set[str]
    condemned: RefSet
    empty: set[str] = field(default_factory=set)  # doomed packs of which nothing stays
    removable: int = 0
    unreachable_after: int = 0


class _Run:
    def __init__(self, repo: Repository, provider: RootProvider, max_unused: float,
                 progress: Progress, fault: Callable[[str], None], wait: float, poll: float,
                 sleep: Callable[[float], None], summary: GcSummary):
        self.repo = repo
        self.provider = provider
        self.max_unused = max_unused
        self.progress = progress
        self.fault = fault
        self.wait = wait
        self.poll = poll
        self.sleep = sleep
        self.summary = summary
        self.lease: Lease | None = None
        self._renewed = 0.0
        self.count_missing = False

    # -- the gc lease ---------------------------------------------------------------

    def acquire(self) -> bool:
        """Our gc lease, unless another live gc holds an earlier one."""
        self.lease = self.repo.sessions.begin(KIND_GC, self.repo.lease_ttl)
        self._renewed = time.monotonic()
        others = [s for s in self.repo.sessions.active() if not isinstance(s, str)
                  and s.kind == KIND_GC and s.id != self.lease.id]
        if any((s.started, s.id) < (self.lease.started, self.lease.id) for s in others):
            self.release()
            return False
        return True

    def release(self) -> None:
        if self.lease is not None:
            self.repo.sessions.end(self.lease)
            self.lease = None

    def tick(self) -> None:
        """Renew our lease when due; stop if it lapsed (another gc may have taken over)."""
        if self.lease is None:
            return
        idle = time.monotonic() - self._renewed
        ttl = self.lease.ttl
        if idle > ttl / 2:
            raise LeaseExpiredError(f"gc was stalled {idle:.0f} s, longer than its lease allows; "
                                    "it stops here and the next gc finishes its plan")
        if idle > min(60.0, ttl / 10):
            self._renewed = time.monotonic()
            self.lease = self.repo.sessions.refresh(self.lease)

    # -- marking ----------------------------------------------------------------------------

    def prepare(self) -> None:
        report = self.repo.sync_index(self.progress)
        if report.damaged:
            pack, why = next(iter(report.damaged.items()))
            raise IntegrityError(f"pack {pack} cannot be read ({why}); run `pkvc check` "
                                 "before gc")
        present = self.repo.list_packs()
        self.repo.index.refresh(latest=True)  # P0 must not miss a pack the index already holds
        indexed = self.repo.index.packs()
        self.p0 = {p: size for p, size in present.items() if p in indexed}
        self.summary.packs_before = len(present)
        self.summary.bytes_before = sum(present.values())
        keys, columns = self.repo.primary_columns()
        self.table = BlobTable.from_groups(keys, columns.kinds)
        del keys
        self.places = Places(columns)
        self.known = KnownRefs(self.repo, self.table)
        self.primaries_read = True  # the index's primary rows are still those of `places`
        self.live = Bits(self.table.n)

    def refs_of(self, keys: Iterable[bytes], ordinals: list[int] | None = None) -> list[bytes]:
        """The refs the given schema blobs hold (`ordinals`: theirs in the
        table, if the caller has them): from the refs cache (`KnownRefs`, then
        `Repository.known_refs` for rows written since), else read in pack
        order, batched, and then cached. A blob that is not valid schema holds
        none; nor does one removed meanwhile (by a plan this gc finished): what
        held it is garbage."""
        keys = list(keys)
        if ordinals is None:
            ordinals = self.table.ordinals(keys)
        found, unknown_at = self.known.get(ordinals)
        unknown = [(keys[at], ordinals[at]) for at in unknown_at]
        if not unknown:
            return found
        located, elsewhere = [], []
        for (key, o), known in zip(unknown, self.repo.known_refs([k for k, _ in unknown])):
            if known is not None:
                found += known
            elif o >= 0:
                located.append((BlobRef.from_key(key), self.places.location(o)))
            else:
                elsewhere.append(BlobRef.from_key(key))  # written after the gc began
        try:
            for ref, data in chain(self.repo.read_located(located, skip_missing=True),
                                   self.repo.get_many(elsewhere, skip_missing=True)):
                try:
                    held = [r.to_key() for r in walk_refs(data)]
                except (SchemaError, ValueError, TypeError):
                    held = []
                self.repo.record_refs(ref.to_key(), held)
                found += held
        except BackendError as e:
            raise IntegrityError(f"gc cannot read a blob it must follow ({e}); "
                                 "run `pkvc check`") from e
        return found

    def mark(self, keys: Iterable[bytes], bits: Bits, stop: Bits | None = None) -> int:
        """Set `bits` on everything reachable from `keys` in the table (stopping at
        blobs set in `stop`); each blob is read once. Returns how many were set.

        Waves of up to MARK_BATCH blobs: the schema blobs among them are read
        together (`refs_of`), and what they reference is the next wave; a stack
        of waves keeps memory bounded by the depth of the graph."""
        table, newly = self.table, 0
        todo: list[tuple[list[bytes], int]] = [(list(keys), 0)]
        while todo:
            wave, start = todo.pop()
            if start + MARK_BATCH < len(wave):
                todo.append((wave, start + MARK_BATCH))
            schema, schema_ordinals = [], []
            chunk = wave[start:start + MARK_BATCH]
            for key, o in zip(chunk, table.ordinals(chunk)):
                if o < 0:
                    if self.count_missing and not self.repo.contains(BlobRef.from_key(key)):
                        self.summary.missing_refs += 1
                    continue
                if bits[o] or (stop is not None and stop[o]):
                    continue
                bits[o] = 1
                newly += 1
                if newly % 1000 == 0:
                    self.progress.advance(1000)
                    self.tick()
                if table.kinds[o] != KIND_DATA:
                    schema.append(key)
                    schema_ordinals.append(o)
            if schema:
                todo.append((self.refs_of(schema, schema_ordinals), 0))
        self.progress.advance(newly % 1000)
        return newly

    def mark_roots(self) -> None:
        self.progress.start("mark", None, "blobs")
        self.count_missing = True
        self.mark((r.to_key() for r in self.provider()), self.live)
        self.count_missing = False
        self.progress.finish()
        self.summary.live_blobs = self.live.count()

    def remark(self, known: set[str]) -> int:
        """After the writers ended: mark from the roots again and from every blob
        in packs that appeared since (whatever they reference stays)."""
        self.repo.sync_index()
        before = self.live.count()
        self.mark((r.to_key() for r in self.provider()), self.live)
        for pack_id, size in sorted(self.repo.list_packs().items()):
            if pack_id in known:
                continue
            try:
                entries = self.repo.read_pack_header(pack_id, size)
            except (IntegrityError, BackendError) as e:
                raise IntegrityError(f"new pack {pack_id} cannot be read ({e}); gc stops "
                                     "before deleting anything") from e
            # (data in a new pack is a copy that stays: nothing to follow)
            self.mark(self.refs_of(e.ref.to_key() for e in entries if e.kind != KIND_DATA),
                      self.live)
            self.tick()
        return self.live.count() - before

    # -- planning --------------------------------------------------------------------------------

    def rows(self) -> Rows:
        return Rows(self.repo, self.table, self.places if self.primaries_read else None)

    def compute_plan(self) -> _Planned:
        """Which packs to delete, which blobs that condemns (see the module docstring)."""
        live, table = self.live, self.table
        rows = self.rows()
        usage = rows.usage(self.p0, live)
        self.summary.live_bytes = sum(u[1] for u in usage.values())
        doomed = {p for p, (total, kept) in usage.items()
                  if total and (kept == 0 or (total - kept) * 100 > self.max_unused * total)}
        while True:
            present, outside = rows.copies(doomed)
            protected = self._protect(outside)
            self._outlive_targets(self._delete_claims(present), protected, outside)
            keep = live.union(protected)
            idle = doomed - rows.freeing(doomed, keep)
            if not idle:
                break
            doomed -= idle  # rewriting it would free nothing: leave it, and think again
        condemned = RefSet.from_sorted(map(table.key, present.minus(outside).minus(keep).ones()))
        usage = rows.usage(self.p0, keep)
        planned = _Planned(doomed, condemned)
        planned.empty = {p for p in doomed if usage[p][1] == 0}
        planned.removable = sum(usage[p][0] - usage[p][1] for p in doomed)
        left_garbage = sum(t - k for p, (t, k) in usage.items() if p not in doomed)
        kept_garbage = rows.usage(doomed, protected.minus(live))
        planned.unreachable_after = left_garbage + sum(k for _, k in kept_garbage.values())
        return planned

    def _protect(self, outside: Bits) -> Bits:
        """Garbage that stays stored keeps what it references (check follows it)."""
        table, live, kinds = self.table, self.live, self.table.kinds
        protected = Bits(table.n)
        garbage: list[bytes] = []
        for o in range(table.n):
            if kinds[o] != KIND_DATA and outside[o] and not live[o] and not protected[o]:
                garbage.append(table.key(o))
            if len(garbage) == MARK_BATCH or (o == table.n - 1 and garbage):
                self.mark(self.refs_of(garbage), protected, stop=live)
                garbage = []
        return protected

    def _delete_claims(self, present: Bits) -> list[tuple[int, bytes]]:
        """(ordinal, target key) of every stored delete claim that is not live."""
        table, kinds = self.table, self.table.kinds
        signed = [BlobRef.from_key(table.key(o)) for o in range(table.n)
                  if kinds[o] == KIND_SIGNED and present[o] and not self.live[o]]
        found = []
        for ref, data in self.repo.get_many(signed):
            try:
                parsed = parse_blob(data)
            except (SchemaError, ValueError, TypeError):
                continue
            if isinstance(parsed, DeleteClaim):
                found.append((table.ordinal(ref.to_key()), parsed.target.to_key()))
        return found

    def _outlive_targets(self, deletes: list[tuple[int, bytes]], protected: Bits,
                         outside: Bits) -> None:
        """A delete claim in force stays while its target stays stored, or the
        target would come back to life; one that is itself deleted may go.
        Chains (a delete of a delete of ...) settle in a few rounds."""
        deleters: dict[bytes, list[int]] = {}
        for o, target in deletes:
            deleters.setdefault(target, []).append(o)
        in_force: dict[int, bool] = {}

        def force(o: int, depth: int = 0) -> bool:
            if o not in in_force:
                in_force[o] = True  # (a cycle cannot happen with hashes; never loop on one)
                key = self.table.key(o)
                in_force[o] = depth > 64 or not any(force(d, depth + 1)
                                                    for d in deleters.get(key, ()))
            return in_force[o]

        changed = True
        while changed:
            changed = False
            for o, target in deletes:
                if outside[o] or protected[o] or not force(o):
                    continue
                t = self.table.ordinal(target)
                stays = (self.repo.contains(BlobRef.from_key(target)) if t < 0
                         else self.live[t] or protected[t] or outside[t])
                if stays:
                    self.mark([self.table.key(o)], protected, stop=self.live)
                    changed = True

    # -- executing a plan --------------------------------------------------------------------------

    def execute(self, plan: Plan) -> None:
        """Copy what stays out of the plan's packs, store the tombstone, delete
        the packs, then the tombstones, then the plan: see docs/gc.md for why
        every prefix of this sequence leaves a sound repository."""
        repo, summary, table, live = self.repo, self.summary, self.table, self.live
        rows = self.rows()
        present_bits, outside = rows.copies(plan.touched)
        protected = self._protect(outside)  # what stays references it, or a delete claim
        self._outlive_targets(self._delete_claims(present_bits), protected, outside)
        del rows, present_bits
        condemned = Bits(table.n)
        for key in plan.condemned.keys():
            o = table.ordinal(key)
            if o >= 0:
                condemned.set(o)
        present = repo.list_packs()
        packs = [p for p in sorted(plan.packs) if p in present]
        tombstones = [t for t in plan.tombstones if t in present]
        repacker, copied = repo.repacker(), Bits(table.n)
        copied_from: set[str] = set()
        doomed_claims: dict[BlobRef, bytes] = {}  # removed delete claims, for the tombstone
        self.progress.start("sweep", len(packs) + len(tombstones), "packs")
        for pack_id in packs + tombstones:
            data = repo.load_pack(pack_id)
            for e in repo.pack_entries(pack_id, data):
                o = table.ordinal(e.ref.to_key())
                if o >= 0 and condemned[o] and not live[o] and not protected[o]:
                    summary.blobs_removed += pack_id not in tombstones
                    if e.kind == KIND_SIGNED and e.ref not in doomed_claims:
                        raw = repo.open_pack_blob(e, data[e.offset:e.offset + e.length])
                        if _is_delete_claim(raw):
                            doomed_claims[e.ref] = raw
                    continue
                if o >= 0 and (outside[o] or copied[o]) or e.ref in repacker:
                    continue  # a copy stays elsewhere
                raw = repo.open_pack_blob(e, data[e.offset:e.offset + e.length])
                copied_from.add(pack_id)
                if o >= 0:
                    copied.set(o)
                if repacker.add(e.ref, raw, e.kind):
                    self.fault("copied-pack")
            self.progress.advance()
            self.tick()
        if repacker.flush():
            self.fault("copied-pack")
        self.progress.finish()
        self.fault("copied")
        summary.packs_written += len(repacker.written)
        summary.bytes_freed -= repacker.bytes_written
        tombstones = self._store_tombstone(plan, tombstones, doomed_claims, present)
        self.fault("tombstone")
        self.primaries_read = False  # (a copy may be promoted now)
        deleted = _Deleted(self.repo)
        for pack_id in packs:
            self.tick()
            deleted.delete(pack_id, present[pack_id])
            summary.bytes_freed += present[pack_id]
            summary.packs_rewritten += pack_id in copied_from
            summary.packs_deleted += pack_id not in copied_from
            self.fault("deleted-pack")
        self.fault("deleted")
        for pack_id in tombstones:  # the last one holds every delete claim: it goes last
            deleted.delete(pack_id, present[pack_id])
            summary.bytes_freed += present[pack_id]
        deleted.forget()
        self.fault("tombstone-deleted")
        repo.plans.remove(plan.id)
        self.fault("plan-removed")
        self.p0 = {p: s for p, s in self.p0.items() if p not in plan.touched}

    def _store_tombstone(self, plan: Plan, tombstones: list[str], claims: dict[BlobRef, bytes],
                         present: dict[str, int]) -> list[str]:
        """Make sure the last tombstone holds every delete claim this plan removes
        (a new one if not), named in the plan before it is stored."""
        if not claims:
            return tombstones
        if tombstones:
            last = tombstones[-1]
            held = {e.ref for e in self.repo.read_pack_header(last, present[last])}
            if held >= set(claims):
                return tombstones
        pack = self.repo.seal_pack((ref, raw, KIND_SIGNED) for ref, raw in sorted(claims.items()))
        plan.tombstones = tuple(plan.tombstones) + (pack.pack_id,)
        self.repo.plans.publish(plan)  # named before it exists: no writer ever relies on it
        self.repo.store_pack(pack)
        present[pack.pack_id] = pack.size
        self.summary.bytes_freed -= pack.size
        return tombstones + [pack.pack_id]

    # -- waiting for writers -------------------------------------------------------------------------

    def active_leases(self, ids: Iterable[str] | None) -> list[str]:
        own = {self.lease.id} if self.lease else set()
        out = []
        for s in self.repo.sessions.active(ids):
            lease_id = s if isinstance(s, str) else s.id
            if lease_id not in own and (isinstance(s, str) or s.kind != KIND_GC):
                out.append(lease_id)
        return out

    def remove_stale_uploads(self) -> None:
        """Delete the half-written packs of killed writers. Only while no writer
        holds a lease (a live one may keep a pack's temp file open, untouched,
        through a long run of unchanged files), and only files older than
        STALE_UPLOAD_AGE (a writer starting now makes new ones)."""
        if self.active_leases(None):
            return
        count, size = self.repo.backend.remove_stale_uploads("packs", STALE_UPLOAD_AGE)
        self.summary.stale_uploads, self.summary.stale_upload_bytes = count, size

    def record_waiting(self, plan: Plan) -> Plan:
        """List the leases that may have seen the plan's blobs as present (after
        the plan is published: a writer we miss here has seen the plan)."""
        if plan.waiting is None:
            plan.waiting = tuple(self.active_leases(None))
            self.repo.plans.publish(plan)
        return plan

    def wait_for(self, plan: Plan) -> tuple[bool, int]:
        """Until every lease the plan waits for has ended, or the wait is over:
        (whether they all ended, how many were still active at first)."""
        deadline = time.monotonic() + self.wait
        pending = self.active_leases(plan.waiting)
        waited = len(pending)
        self.summary.waited_for += waited
        while pending:
            if time.monotonic() >= deadline:
                return False, waited
            self.sleep(self.poll)
            self.tick()
            pending = self.active_leases(pending)
        return True, waited

    # -- the whole run --------------------------------------------------------------------------------

    def finish_old_plans(self) -> bool:
        """Complete the plans dead gcs left; False if one must wait for next time."""
        for plan in self.repo.plans.load_all():
            self.record_waiting(plan)
            ended, _ = self.wait_for(plan)
            if not ended:
                self.summary.deferred = True
                return False
            self.remark(set(self.p0) | plan.touched)  # they may have written since we marked
            self.fault("resume-waited")
            self.execute(plan)
            self.summary.plans_finished += 1
        return True

    def publish(self, planned: _Planned) -> Plan:
        plan = Plan(secrets.token_hex(16), self.lease.id, self.repo.sessions.clock(),
                    frozenset(planned.packs), None, (), planned.condemned)
        self.repo.plans.publish(plan)
        self.summary.plan = plan.id
        self.fault("planned")
        self.record_waiting(plan)
        self.fault("waiting")
        return plan


class _Deleted:
    """Deletes packs, then drops them from the index in batches: each index
    write opens the database for writing (tens of ms), so not one per pack.
    The keys from each pack's header spare a scan of the index; a crash
    before the index hears of a deletion is healed by the next open, and
    `get` meanwhile falls back to another copy."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.packs: set[str] = set()
        self.keys: list[bytes] = []

    def delete(self, pack_id: str, size: int) -> None:
        entries = self.repo.read_pack_header(pack_id, size)
        self.repo.delete_pack(pack_id)
        self.packs.add(pack_id)
        self.keys += [e.ref.to_key() for e in entries]
        if len(self.keys) >= FORGET_BATCH:
            self.forget()

    def forget(self) -> None:
        self.repo.forget_packs(self.packs, self.keys)
        self.packs, self.keys = set(), []


def _is_delete_claim(raw: bytes) -> bool:
    try:
        return isinstance(parse_blob(raw), DeleteClaim)
    except (SchemaError, ValueError, TypeError):
        return False


def gc(repo: Repository, roots: "Iterable[BlobRef] | RootProvider | None" = None, *,
       max_unused: float = DEFAULT_MAX_UNUSED, dry_run: bool = False,
       progress: Progress = NO_PROGRESS, wait: float = DEFAULT_WAIT, poll: float = 1.0,
       fault: Callable[[str], None] | None = None,
       sleep: Callable[[float], None] = time.sleep) -> GcSummary:
    """Collect what the roots do not reach; see the module docstring.

    `roots`: an iterable of refs, or a callable giving them (called twice:
    before and after waiting for writers); None: `claim_roots`. `max_unused`:
    a pack whose unreachable share exceeds this percentage is rewritten (0:
    every pack with dead bytes). `wait`: seconds to wait for writers that
    may rely on condemned blobs; when they outlast it the plan is left for
    the next gc (`deferred`), never an error. `fault(step)` is called at
    each step boundary (see STEPS) for tests to crash the gc there.
    """
    if max_unused < 0:
        raise ValueError("max_unused is a percentage >= 0")
    started = time.monotonic()
    summary = GcSummary(dry_run=dry_run)
    run = _Run(repo, _provider(roots, repo), max_unused, progress, fault or _no_fault, wait,
               poll, sleep, summary)
    with repo.without_lease():
        if dry_run:
            _dry_run(run)
        elif not run.acquire():
            summary.skipped = "another gc is running on this repository"
        else:
            try:
                _full_run(run)
                run.fault("done")
            finally:
                run.release()
        present = repo.list_packs()
        summary.packs_after = len(present)
        summary.bytes_after = sum(present.values())
    summary.duration = round(time.monotonic() - started, 3)
    return summary


def _dry_run(run: _Run) -> None:
    run.prepare()
    run.mark_roots()
    pending = run.repo.refresh_plans()
    if pending:  # an unfinished plan: the next gc completes it first
        run.summary.deferred = True
        run.p0 = {p: s for p, s in run.p0.items() if p not in pending.touched}
    planned = run.compute_plan()
    run.summary.plan = None
    run.summary.packs_deleted = len(planned.empty)
    run.summary.packs_rewritten = len(planned.packs - planned.empty)
    run.summary.blobs_removed = len(planned.condemned)
    run.summary.bytes_freed = planned.removable
    run.summary.bytes_unreachable = planned.unreachable_after


def _full_run(run: _Run) -> None:
    repo, summary = run.repo, run.summary
    run.fault("locked")
    repo.sessions.sweep_ended(keep=[run.lease.id])
    run.remove_stale_uploads()
    run.prepare()
    run.mark_roots()
    run.fault("marked")
    if not run.finish_old_plans():
        return
    planned = run.compute_plan()
    summary.bytes_unreachable = planned.unreachable_after
    if not planned.packs:
        return
    known = set(run.p0)
    plan = run.publish(planned)
    ended, _ = run.wait_for(plan)
    if not ended:
        summary.deferred = True
        return
    run.fault("waited")
    summary.blobs_rescued = run.remark(known)
    run.fault("remarked")
    run.execute(plan)
    summary.live_blobs = run.live.count()
