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

from pkvc.errors import BackendError, BlobNotFoundError, IntegrityError
from pkvc.pack import KIND_DATA, PackEntry
from pkvc.progress import NO_PROGRESS, Progress
from pkvc.claims import invalid_claims
from pkvc.blobref import BlobRef
from pkvc.packscan import PackScan, entries_digest, references
from pkvc.repo import READ_THREADS, Repository
from pkvc.sessions import RefSet


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
    `follow`: its primary schema blobs."""

    lines: list[str] = field(default_factory=list)
    bytes_read: int = 0
    entries: list[PackEntry] | None = None
    follow: set | None = None


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
    """Each pack's report in name order."""
    if read_data:
        yield from _each_pack_read(repo, present, index, report, followed)
        return
    yield from _each_pack_header(repo, present, index, report)


def _each_pack_read(repo: Repository, present: dict[str, int], index: _IndexFacts,
                    report: CheckReport, followed: set[str]) -> Iterator[_PackReport]:
    """Every pack read whole on worker processes (`packscan`), ahead of this
    thread, which meanwhile passes over the index (`_count_index`), then
    weighs what each scan found against the index."""
    with repo.pack_scanner() as scanner:
        scans = scanner.scan(sorted(present.items()))
        _fill_index_facts(repo, present, report, index)
        for scan in scans:
            yield _finish_scan(repo, index, followed, present[scan.pack_id], scan)


def _each_pack_header(repo: Repository, present: dict[str, int], index: _IndexFacts,
                      report: CheckReport) -> Iterator[_PackReport]:
    """A worker thread reads a pack's header and compares its digest with the
    index's (`_header_task`), a few packs ahead of this thread, which only
    looks up in the index the entries of headers that disagree with it (one
    thread: the index). The first headers are read while this thread passes
    over the index (`_count_index`)."""
    pending: deque = deque()
    pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="pkvc-check")
    try:
        for n, (pack_id, size) in enumerate(sorted(present.items())):
            if n == HEADERS_AHEAD:
                _fill_index_facts(repo, present, report, index)
            pending.append((pack_id, pool.submit(_header_task, repo, pack_id, size, index)))
            while len(pending) > HEADERS_AHEAD:
                yield _finish_header(repo, index, *pending.popleft())
        if not index.ready.is_set():
            _fill_index_facts(repo, present, report, index)
        while pending:
            yield _finish_header(repo, index, *pending.popleft())
    finally:
        index.ready.set()  # (tasks waiting for facts that never came end at once)
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def _fill_index_facts(repo: Repository, present: dict[str, int], report: CheckReport,
                      index: _IndexFacts) -> None:
    index.stored = _count_index(repo, present, report, index)
    index.ready.set()


def _header_task(repo: Repository, pack_id: str, size: int, index: _IndexFacts) -> _PackReport:
    """In a worker thread (no index): the header, and whether the index holds
    exactly it (`_count_index`'s digest)."""
    found = _PackReport()
    try:
        entries = repo.read_pack_header(pack_id, size)
    except (IntegrityError, BackendError) as e:
        found.lines.append(f"pack {pack_id}: {e}")
        return found
    digest = entries_digest(entries)
    index.ready.wait()
    if index.stored is not None and not _agrees(index, pack_id, len(entries), digest):
        found.entries = entries
    return found


def _agrees(index: _IndexFacts, pack_id: str, count: int, digest: bytes) -> bool:
    return count == index.per_pack.get(pack_id, 0) and digest == index.digests.get(pack_id)


def _finish_header(repo: Repository, index: _IndexFacts, pack_id: str,
                   future: Future) -> _PackReport:
    found = future.result()
    if found.entries is not None:
        entries, found.entries = found.entries, None
        _compare_with_index(repo, pack_id, entries, index.per_pack.get(pack_id, 0), found)
    return found


def _finish_scan(repo: Repository, index: _IndexFacts, followed: set[str], size: int,
                 scan: PackScan) -> _PackReport:
    """A pack's `PackScan` as a report: its damaged blobs, and the references
    of its schema blobs (those the index holds as they are in the header, or
    all but hidden ones when the index holds the header exactly) that point
    to blobs not stored."""
    pack_id, hidden = scan.pack_id, repo.index.hidden
    found = _PackReport(bytes_read=scan.bytes_read)
    if scan.error is not None:
        found.lines.append(scan.error)
    if not scan.entries_digest:
        return found  # (its header could not be read: its schema blobs are followed by ref)
    followed.add(pack_id)
    follow = None
    if not _agrees(index, pack_id, scan.entries, scan.entries_digest):
        try:
            entries = repo.read_pack_header(pack_id, size)
        except (IntegrityError, BackendError) as e:
            found.lines.append(f"pack {pack_id}: {e}")
            entries = []
        _compare_with_index(repo, pack_id, entries, index.per_pack.get(pack_id, 0), found)
        follow = {ref.to_key() for ref in found.follow}

    def followed_schema(key: bytes) -> bool:
        return not (hidden and key in hidden) if follow is None else key in follow

    for key, kind, problem in scan.bad:
        found.lines.append(problem)
        if kind != KIND_DATA and followed_schema(key):
            found.lines.append(f"schema blob {BlobRef.from_key(key)}: {problem}")
    stored = index.stored
    for key, targets in scan.refs:
        unstored = [BlobRef.from_key(t) for t in targets if t not in stored]
        if unstored and followed_schema(key):
            _check_targets(repo, stored, BlobRef.from_key(key), unstored, found.lines)
    if scan.digest and scan.digest != pack_id:
        found.lines.append(f"pack {pack_id}: content does not match its name (damaged)")
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
    records: dict[str, list[bytes]] = {}  # pack -> entries as `entry_bytes` not hashed yet
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
            group.append(width[len(key)] + key + place)  # (`entry_bytes`, in key order)

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
            _check_targets(repo, stored, ref, references(data), report.problems)
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
            _check_targets(repo, stored, ref, references(data), report.problems)
            progress.advance()
