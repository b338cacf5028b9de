"""`check`: does the repository hold what it claims to, and nothing broken?

Levels: every pack is listed and its header opens; the index and the pack
headers agree; every blob that a schema blob references exists; every
signed blob verifies (claims that do not are ignored everywhere else, and
named here); and with `read_data`, every pack's bytes hash to its name and
every blob decrypts and hashes to its ref. It reports; it never repairs or modifies anything.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from pkvc.errors import BackendError, BlobNotFoundError, IntegrityError, SchemaError
from pkvc.pack import KIND_DATA, PackEntry
from pkvc.progress import NO_PROGRESS, Progress
from pkvc.claims import invalid_claims
from pkvc.repo import Repository
from pkvc.schema.anyblob import parse_blob, schema_refs


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
    indexed_per_pack = _count_index(repo, present, report)
    progress.start("check packs", len(present), "packs")
    for pack_id, size in sorted(present.items()):
        _check_pack(repo, pack_id, size, indexed_per_pack.get(pack_id, 0), read_data, report)
        progress.advance()
    progress.finish()
    _check_references(repo, report, progress)
    for bad in invalid_claims(repo):
        report.problems.append(f"signed blob {bad.ref} is ignored: {bad.reason}")
    return report


def _count_index(repo: Repository, present: dict[str, int], report: CheckReport) -> Counter:
    """One pass over the index: blobs per pack, and entries into missing packs."""
    per_pack: Counter = Counter()
    for ref, loc in repo.index.blobs():
        report.blobs += 1
        if loc.kind != KIND_DATA:
            report.schema_blobs += 1
        if loc.pack_id in present:
            per_pack[loc.pack_id] += 1
        else:
            report.problems.append(f"blob {ref}: indexed in pack {loc.pack_id}, which is missing")
    return per_pack


def _check_pack(repo: Repository, pack_id: str, size: int, indexed: int, read_data: bool,
                report: CheckReport) -> None:
    report.packs += 1
    try:
        entries = repo.read_pack_header(pack_id, size)
    except (IntegrityError, BackendError) as e:
        report.problems.append(f"pack {pack_id}: {e}")
        return
    agreeing = 0
    for e in entries:
        loc = repo.locate(e.ref)
        if loc is None:
            report.problems.append(f"blob {e.ref} in pack {pack_id} is not in the index (run reindex)")
        elif loc.pack_id == pack_id:
            if (loc.offset, loc.length) == (e.offset, e.length):
                agreeing += 1
            else:
                report.problems.append(f"blob {e.ref}: index and header of pack {pack_id} disagree")
    if agreeing < indexed:
        report.problems.append(f"pack {pack_id}: the index lists {indexed - agreeing} blobs "
                               "its header does not hold (run reindex)")
    if read_data:
        _read_pack(repo, pack_id, entries, report)


def _read_pack(repo: Repository, pack_id: str, entries: list[PackEntry],
               report: CheckReport) -> None:
    try:
        data = repo.load_pack(pack_id)
    except BackendError as e:
        report.problems.append(f"pack {pack_id}: {e}")
        return
    report.bytes_read += len(data)
    if hashlib.sha256(data).hexdigest() != pack_id:
        report.problems.append(f"pack {pack_id}: content does not match its name (damaged)")
    for e in entries:
        try:
            raw = repo.open_pack_blob(e, data[e.offset:e.offset + e.length])
        except IntegrityError as err:
            report.problems.append(f"blob {e.ref} in pack {pack_id}: {err}")
            continue
        if not e.ref.matches(raw):
            report.problems.append(f"blob {e.ref} in pack {pack_id} does not match its ref")


def _check_references(repo: Repository, report: CheckReport, progress: Progress) -> None:
    progress.start("check references", report.schema_blobs, "blobs")
    for ref, loc in repo.index.blobs():
        if loc.kind == KIND_DATA:
            continue
        try:
            data = repo.get(ref)
            targets = schema_refs(parse_blob(data))
        except (IntegrityError, BackendError, BlobNotFoundError) as e:
            report.problems.append(f"schema blob {ref}: {e}")
            continue
        except SchemaError:
            targets = []  # JSON that only looks like schema is data, not damage
        for target in targets:
            if not repo.has(target):
                report.problems.append(f"blob {target}, referenced by {ref}, is missing")
        progress.advance()
    progress.finish()
