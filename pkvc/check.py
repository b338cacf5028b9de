"""`check`: does the repository hold what it claims to, and nothing broken?

Levels: every pack is listed and its header opens; the index and the pack
headers agree; every blob that a schema blob references exists; every
signed blob verifies (claims that do not are ignored everywhere else, and
named here); and with `read_data`, every pack's bytes hash to its name and
every blob decrypts and hashes to its ref. It reports; it never repairs or modifies anything.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from pkvc.errors import BackendError, BlobNotFoundError, IntegrityError, SchemaError
from pkvc.index import PLACE
from pkvc.pack import KIND_DATA, PackEntry
from pkvc.progress import NO_PROGRESS, Progress
from pkvc.claims import invalid_claims
from pkvc.blobref import BlobRef
from pkvc.repo import READ_AHEAD, READ_THREADS, Repository
from pkvc.sessions import RefSet
from pkvc.schema.anyblob import walk_refs


REFERENCE_BATCH = 4096  # schema blobs read together when following references
HEADERS_AHEAD = 8  # pack headers read ahead of the thread that checks them
HASH_BATCH = 32768  # index entries held before the pass over the index hashes them


@dataclass
class CheckReport:
    packs: int = 0
    blobs: int = 0
    schema_blobs: int = 0
    bytes_read: int = 0
    read_data: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_repository(repo: Repository, read_data: bool = False,
                     progress: Progress = NO_PROGRESS) -> CheckReport:
    report = CheckReport(read_data=read_data)
    repo.flush()
    present = repo.list_packs()
    index = _IndexFacts()
    followed: set[str] = set()  # packs whose schema blobs' references the pack pass checked
    progress.start("check packs", len(present), "packs")
    for problems in _each_pack(repo, present, index, report, read_data, followed):
        report.problems += problems.lines
        report.bytes_read += problems.bytes_read
        report.packs += 1
        progress.advance()
    progress.finish()
    if not (read_data and followed == set(present) and not index.missing):
        _check_references(repo, report, followed, index.stored, progress)
    for bad in invalid_claims(repo):
        report.problems.append(f"signed blob {bad.ref} is ignored: {bad.reason}")
    return report


@dataclass
class _PackReport:
    """What checking one pack found. `entries`: its header, when the index
    holds something else (the main thread then names the differences);
    `follow`: its primary schema blobs (None: every schema blob the index
    does not hide); `unstored` (filled by the data pass): what they
    reference that was not stored when the check began, as (referencing
    blob, target); `read`: whether the data pass ran."""

    lines: list[str] = field(default_factory=list)
    bytes_read: int = 0
    entries: list[PackEntry] | None = None
    follow: set | None = None
    unstored: list[tuple[BlobRef, BlobRef]] = field(default_factory=list)
    read: bool = False


@dataclass
class _IndexFacts:
    """What `_count_index` learns, for the pack tasks: blobs per pack, the
    digest of each pack's entries, the stored keys, how many entries point
    into missing packs. `ready` once it is filled, or once filling it failed
    (`stored` then stays None)."""

    ready: threading.Event = field(default_factory=threading.Event)
    per_pack: Counter = field(default_factory=Counter)
    digests: dict = field(default_factory=dict)
    stored: RefSet | None = None
    missing: int = 0


def _each_pack(repo: Repository, present: dict[str, int], index: _IndexFacts,
               report: CheckReport, read_data: bool,
               followed: set[str]) -> Iterator[_PackReport]:
    """Each pack's report in name order. A worker thread reads a pack's
    header, compares its digest with the index's and, with `read_data`, reads
    the pack (`_pack_task`), a few packs ahead of this thread, which only
    looks up in the index the entries of headers that disagree with it (one
    thread: the index). A header lives only while its pack is read. The
    first packs are read while this thread passes over the index
    (`_count_index`)."""
    ahead = READ_AHEAD if read_data else HEADERS_AHEAD
    hidden = repo.index.hidden
    pending: deque = deque()
    pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="pkvc-check")
    try:
        for n, (pack_id, size) in enumerate(sorted(present.items())):
            if n == ahead:
                _fill_index_facts(repo, present, report, index)
            pending.append((pack_id, pool.submit(_pack_task, repo, pack_id, size, index,
                                                 read_data, hidden)))
            while len(pending) > ahead:
                yield _finish(repo, index, read_data, followed, *pending.popleft())
        if not index.ready.is_set():
            _fill_index_facts(repo, present, report, index)
        while pending:
            yield _finish(repo, index, read_data, followed, *pending.popleft())
    finally:
        index.ready.set()  # (tasks waiting for facts that never came end at once)
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def _fill_index_facts(repo: Repository, present: dict[str, int], report: CheckReport,
                      index: _IndexFacts) -> None:
    index.stored = _count_index(repo, present, report, index)
    index.ready.set()


def _pack_task(repo: Repository, pack_id: str, size: int, index: _IndexFacts, read_data: bool,
               hidden) -> _PackReport:
    """In a worker thread (no index): the header, and if the index holds
    exactly it (`_count_index`'s digest), with `read_data` the pack's data.
    A pack of data blobs only is read before the index facts are needed
    (its result depends on them only for naming a disagreement)."""
    found = _PackReport()
    try:
        entries = repo.read_pack_header(pack_id, size)
    except (IntegrityError, BackendError) as e:
        found.lines.append(f"pack {pack_id}: {e}")
        return found
    digest = _entries_digest(entries)
    if read_data and all(e.kind == KIND_DATA for e in entries):
        _read_pack(repo, pack_id, entries, found, None, hidden)
    index.ready.wait()
    if index.stored is None:
        return found  # (the pass over the index failed: the main thread raised)
    if len(entries) != index.per_pack.get(pack_id, 0) or digest != index.digests.get(pack_id):
        found.entries = entries
        return found
    if read_data and not found.read:
        _read_pack(repo, pack_id, entries, found, index.stored, hidden)
    return found


def _entries_digest(entries: list[PackEntry]) -> bytes:
    """What `_count_index` makes of the index's entries of a pack: the SHA-256
    of their `_entry_bytes` in ref-key order."""
    records = [_entry_bytes(e.ref.to_key(), e.offset, e.length) for e in entries]
    if len({r[0] for r in records}) == 1:
        records.sort()  # (keys of one width: in key order)
    else:
        records.sort(key=lambda r: r[1:1 + r[0]])
    return hashlib.sha256(b"".join(records)).digest()


def _finish(repo: Repository, index: _IndexFacts, read_data: bool, followed: set[str],
            pack_id: str, future: Future) -> _PackReport:
    found = future.result()
    if found.entries is not None:
        entries, found.entries = found.entries, None
        _compare_with_index(repo, pack_id, entries, index.per_pack.get(pack_id, 0), found)
        if read_data and not found.read:  # (here: rare, a damaged index)
            _read_pack(repo, pack_id, entries, found, index.stored, repo.index.hidden)
    if found.read:
        followed.add(pack_id)
    for ref, target in found.unstored:
        if not repo.has(target):  # (written since the check began)
            found.lines.append(_missing(target, ref))
    found.unstored = []
    return found


def _count_index(repo: Repository, present: dict[str, int], report: CheckReport,
                 index: _IndexFacts) -> RefSet:
    """One pass over the index: blobs per pack, entries into missing packs, the
    keys of every stored blob (~29 bytes each: testing a reference costs no
    index lookup), and per pack a digest of its indexed entries in key order
    (a header that gives the same needs no lookup per entry): into `index`;
    returns the stored keys."""
    hidden = repo.index.hidden
    by_raw = {bytes.fromhex(pack_id): pack_id for pack_id in present}
    width = [bytes((n,)) for n in range(256)]
    records: dict[str, list[bytes]] = {}  # pack -> entries as `_entry_bytes` not hashed yet
    hashes: dict = {}

    def hash_records() -> None:
        for pack_id, group in records.items():
            index.per_pack[pack_id] += len(group)
            hashes[pack_id].update(b"".join(group))
            group.clear()

    def keys() -> Iterator[bytes]:
        for n, (key, raw_pack, kind, place) in enumerate(repo.index.all_blob_places(), 1):
            if n % HASH_BATCH == 0:  # (hashed a batch at a time: memory stays small)
                hash_records()
            yield key
            if hidden and key in hidden:
                continue  # condemned by a pending gc plan: garbage in transit
            report.blobs += 1
            if kind != KIND_DATA:
                report.schema_blobs += 1
            pack_id = by_raw.get(raw_pack)
            if pack_id is None:
                report.problems.append(f"blob {BlobRef.from_key(key)}: indexed in pack "
                                       f"{raw_pack.hex()}, which is missing")
                index.missing += 1
                continue
            group = records.get(pack_id)
            if group is None:
                group = records[pack_id] = []
                hashes[pack_id] = hashlib.sha256()
            group.append(width[len(key)] + key + place)  # (`_entry_bytes`, in key order)

    stored = RefSet.from_sorted(keys())
    hash_records()
    index.digests.update((pack_id, h.digest()) for pack_id, h in hashes.items())
    return stored


def _compare_with_index(repo: Repository, pack_id: str, entries: list[PackEntry], indexed: int,
                        found: _PackReport) -> None:
    """A header the index does not hold exactly (`indexed`: how many blobs it
    lists in the pack): one lookup per entry, to name what differs;
    `found.follow` gets the schema blobs both agree on."""
    hidden = repo.index.hidden
    found.follow = set()
    agreeing = 0
    for key, e in sorted((e.ref.to_key(), e) for e in entries):
        loc = repo.locate(e.ref)
        if loc is None:
            found.lines.append(f"blob {e.ref} in pack {pack_id} is not in the index (run reindex)")
        elif loc.pack_id == pack_id:
            if (loc.offset, loc.length) == (e.offset, e.length):
                agreeing += 1
                if e.kind != KIND_DATA and not (hidden and key in hidden):
                    found.follow.add(e.ref)
            else:
                found.lines.append(f"blob {e.ref}: index and header of pack {pack_id} disagree")
    if agreeing < indexed:
        found.lines.append(f"pack {pack_id}: the index lists {indexed - agreeing} blobs "
                           "its header does not hold (run reindex)")


def _entry_bytes(key: bytes, offset: int, length: int) -> bytes:
    """An entry as the index and a header must agree on: its ref key, offset and length."""
    return bytes([len(key)]) + key + PLACE.pack(offset, length)


def _read_pack(repo: Repository, pack_id: str, entries: list[PackEntry], found: _PackReport,
               stored: RefSet, hidden) -> None:
    """Every byte of the pack against its name, every blob against its ref, and
    the references of its schema blobs followed (`found.follow`; None: all but
    `hidden` ones) tested against `stored` (in a worker thread: no index;
    `_finish` asks it about the few not stored)."""
    follow = found.follow

    def followed(e: PackEntry) -> bool:
        if e.kind == KIND_DATA:
            return False
        if follow is None:
            return not (hidden and e.ref in hidden)
        return e.ref in follow

    def on_blob(e: PackEntry, raw) -> None:
        if isinstance(raw, IntegrityError):
            problem = f"blob {e.ref} in pack {pack_id}: {raw}"
        elif not e.ref.matches(raw):
            problem = f"blob {e.ref} in pack {pack_id} does not match its ref"
        else:
            if followed(e):
                found.unstored += [(e.ref, t) for t in _targets(raw) if t not in stored]
            return
        found.lines.append(problem)
        if followed(e):
            found.lines.append(f"schema blob {e.ref}: {problem}")

    found.read = True
    try:
        digest, found.bytes_read = repo.scan_pack(pack_id, entries, on_blob)
    except BackendError as e:
        found.lines.append(f"pack {pack_id}: {e}")
        return
    if digest != pack_id:
        found.lines.append(f"pack {pack_id}: content does not match its name (damaged)")


def _targets(data: bytes) -> list[BlobRef]:
    try:
        return walk_refs(data)
    except (SchemaError, ValueError, TypeError):
        return []  # JSON that only looks like schema is data, not damage


def _check_targets(repo: Repository, stored: RefSet, ref: BlobRef, targets: list[BlobRef],
                   lines: list[str]) -> None:
    for target in targets:
        if target not in stored and not repo.has(target):  # (has: written since)
            lines.append(_missing(target, ref))


def _missing(target: BlobRef, ref: BlobRef) -> str:
    return f"blob {target}, referenced by {ref}, is missing"


def _check_references(repo: Repository, report: CheckReport, followed: set[str],
                      stored: RefSet, progress: Progress) -> None:
    """Schema blobs the pack pass did not follow (no --read-data, or a pack
    it could not read), read in batches in pack order."""
    progress.start("check references", None if followed else report.schema_blobs, "blobs")
    batch: list[BlobRef] = []
    for ref, loc in repo.index.blobs():
        if loc.kind != KIND_DATA and loc.pack_id not in followed:
            batch.append(ref)
            if len(batch) == REFERENCE_BATCH:
                _follow(repo, stored, batch, report, progress)
                batch = []
    _follow(repo, stored, batch, report, progress)
    progress.finish()


def _follow(repo: Repository, stored: RefSet, refs: list[BlobRef], report: CheckReport,
            progress: Progress) -> None:
    done: set[BlobRef] = set()
    try:
        for ref, data in repo.get_many(refs):
            _check_targets(repo, stored, ref, _targets(data), report.problems)
            done.add(ref)
            progress.advance()
    except (IntegrityError, BackendError, BlobNotFoundError):
        for ref in refs:  # one at a time, to name each blob that cannot be read
            if ref in done:
                continue
            try:
                data = repo.get(ref)
            except (IntegrityError, BackendError, BlobNotFoundError) as e:
                report.problems.append(f"schema blob {ref}: {e}")
                continue
            _check_targets(repo, stored, ref, _targets(data), report.problems)
            progress.advance()
