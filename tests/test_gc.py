"""Garbage collection over real repositories: space, sharing, deletes, plans and leases."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gc_support import (PASSWORD, T0, assert_checks, assert_restores, digest_files, open_reader,
                        pack_bytes, reachable_refs, stored_refs, tick, write_tree)
from pkvc.backends.local import LocalBackend
from pkvc.blobref import BlobRef
from pkvc.claims import add_claim, add_delete_claim
from pkvc.errors import BlobNotFoundError, UsageError
from pkvc.gc import STEPS, BlobTable, claim_roots, gc
from pkvc.identity import store_identity
from pkvc.pack import KIND_SIGNED
from pkvc.repo import Repository
from pkvc.schema.canonical import canonical_json
from pkvc.series import create_series, list_series, record_snapshot, resolve, snapshots
from pkvc.sessions import KIND_GC, LeaseExpiredError, RefSet
from pkvc.tree import put_path

MIB = 1 << 20


@pytest.fixture
def small_repo(repo_path, cache_dir, repo_signer):
    """Packs of 64 KiB (many packs from little data) and the test identity."""
    r = Repository.create(LocalBackend(repo_path), PASSWORD, cache_dir, pack_size=64 * 1024)
    store_identity(r, repo_signer.fingerprint, repo_signer.public_key,
                   repo_signer.home.export_secret_key(repo_signer.fingerprint), source="generated")
    yield r
    r.close()


def snap(repo, signer, series, src: Path, files: dict, clock) -> tuple[BlobRef, BlobRef]:
    write_tree(src, files)
    root = put_path(src, repo).ref
    repo.flush()
    return record_snapshot(repo, signer, series, root, clock), root


def forget(repo, signer, claim, clock) -> BlobRef:
    ref = add_delete_claim(repo, signer, claim, clock)
    repo.flush()
    return ref


def rand(n: int) -> bytes:
    return os.urandom(n)


# -- space comes back ------------------------------------------------------------------

def test_space_comes_back_and_max_unused_0_leaves_no_unreachable_byte(
        signing_repo, repo_signer, repo_path, cache_dir, tmp_path):
    repo, clock = signing_repo, tick()
    series = create_series(repo, repo_signer, "data", (), clock)
    common = {f"docs/{i}.txt": rand(3000) + b"x" * 5000 for i in range(20)}
    src = tmp_path / "src"
    write_tree(src, {**common, "big.bin": b""})
    with open(src / "big.bin", "wb") as f:
        for _ in range(200):
            f.write(rand(MIB))  # 200 MiB that zstd cannot shrink
    before_big = repo.stats.stored_bytes
    root_a = put_path(src, repo).ref
    repo.flush()
    claim_a = record_snapshot(repo, repo_signer, series, root_a, clock)
    stored_for_a = repo.stats.stored_bytes - before_big
    claim_b, root_b = snap(repo, repo_signer, series, src, common, clock)
    forget(repo, repo_signer, claim_a, clock)
    size_before = pack_bytes(repo_path)

    summary = gc(repo)
    size_after = pack_bytes(repo_path)
    assert summary.bytes_freed == size_before - size_after
    assert abs(summary.bytes_freed - stored_for_a) < 0.01 * stored_for_a  # about the file
    assert summary.bytes_freed > 200 * MIB
    assert not summary.deferred and summary.plan is not None

    gc(repo, max_unused=0)
    stored = stored_refs(repo)
    assert stored == reachable_refs(repo, claim_roots(repo))  # no unreachable byte left
    assert claim_a not in stored and root_a not in stored
    assert_restores(repo, root_b, digest_files(common), tmp_path / "out")
    repo.close()
    assert_checks(repo_path, cache_dir)

    # a fresh repository holding only B stores the same tree blobs, and as many signed ones
    fresh = Repository.create(LocalBackend(tmp_path / "fresh"), PASSWORD, tmp_path / "fcache")
    store_identity(fresh, repo_signer.fingerprint, repo_signer.public_key,
                   repo_signer.home.export_secret_key(repo_signer.fingerprint))
    other = create_series(fresh, repo_signer, "data", (), tick())
    snap(fresh, repo_signer, other, src, common, tick(T0 + 10**12))
    fresh.flush()
    fresh_stored = stored_refs(fresh)
    with open_reader(repo_path, cache_dir) as r:
        kinds = {ref: r.locate(ref).kind for ref in stored}
        fresh_kinds = {ref: fresh.locate(ref).kind for ref in fresh_stored}
    unsigned = {ref for ref, k in kinds.items() if k != KIND_SIGNED}
    assert unsigned == {ref for ref, k in fresh_kinds.items() if k != KIND_SIGNED}
    assert len(kinds) == len(fresh_kinds)
    fresh.close()


# -- shared and deleted things ----------------------------------------------------------------

def test_blob_referenced_from_two_series_survives_forgetting_one(small_repo, repo_signer,
                                                                   repo_path, cache_dir, tmp_path):
    repo, clock = small_repo, tick()
    shared = {"shared.bin": rand(150_000)}
    one = {**shared, "only-one.bin": rand(100_000)}
    two = {**shared, "only-two.bin": rand(100_000)}
    s1 = create_series(repo, repo_signer, "one", (), clock)
    s2 = create_series(repo, repo_signer, "two", (), clock)
    claim1, root1 = snap(repo, repo_signer, s1, tmp_path / "a", one, clock)
    claim2, root2 = snap(repo, repo_signer, s2, tmp_path / "b", two, clock)
    forget(repo, repo_signer, claim1, clock)
    gc(repo, max_unused=0)
    assert_restores(repo, root2, digest_files(two), tmp_path / "out")
    assert root1 not in stored_refs(repo)
    assert not repo.contains(BlobRef.of(one["only-one.bin"]))
    repo.close()
    assert_checks(repo_path, cache_dir)


def test_deleted_series_is_collected_with_its_delete_claim(small_repo, repo_signer, repo_path,
                                                           cache_dir, tmp_path):
    repo, clock = small_repo, tick()
    gone = create_series(repo, repo_signer, "gone", ("t",), clock)
    kept = create_series(repo, repo_signer, "kept", (), clock)
    claim_g, root_g = snap(repo, repo_signer, gone, tmp_path / "g", {"g.bin": rand(80_000)}, clock)
    claim_k, root_k = snap(repo, repo_signer, kept, tmp_path / "k", {"k.bin": rand(80_000)}, clock)
    deleter = forget(repo, repo_signer, gone.permanode, clock)
    gc(repo, max_unused=0)
    stored = stored_refs(repo)
    for ref in (gone.permanode, claim_g, root_g, deleter):
        assert ref not in stored
    assert [s.name for s in list_series(repo)] == ["kept"]
    assert_restores(repo, root_k, digest_files({"k.bin": (tmp_path / "k" / "k.bin").read_bytes()}),
                    tmp_path / "out")
    assert stored == reachable_refs(repo, claim_roots(repo))
    repo.close()
    assert_checks(repo_path, cache_dir)


def test_unforget_before_gc_keeps_the_snapshot_and_after_gc_it_is_gone(
        small_repo, repo_signer, repo_path, cache_dir, tmp_path):
    repo, clock = small_repo, tick()
    series = create_series(repo, repo_signer, "docs", (), clock)
    files = {"a.txt": rand(40_000), "b.txt": rand(40_000)}
    claim1, root1 = snap(repo, repo_signer, series, tmp_path / "s", files, clock)
    claim2, root2 = snap(repo, repo_signer, series, tmp_path / "s", {"c.txt": rand(9000)}, clock)
    first = forget(repo, repo_signer, claim1, clock)
    undo = forget(repo, repo_signer, first, clock)  # unforget: delete the delete claim
    gc(repo, max_unused=0)
    assert [s.claim for s in snapshots(repo, series)] == [claim2, claim1]
    assert_restores(repo, root1, digest_files(files), tmp_path / "out")
    stored = stored_refs(repo)
    assert first not in stored and undo not in stored  # both collected, the snapshot stays

    forget(repo, repo_signer, claim1, clock)
    gc(repo, max_unused=0)
    assert [s.claim for s in snapshots(repo, series)] == [claim2]
    with pytest.raises(BlobNotFoundError):
        repo.get(claim1)
    with pytest.raises((BlobNotFoundError, UsageError)):
        resolve(repo, str(claim1)[:20])
    repo.close()
    assert_checks(repo_path, cache_dir)


def test_dry_run_changes_nothing(small_repo, repo_signer, repo_path, tmp_path):
    repo, clock = small_repo, tick()
    series = create_series(repo, repo_signer, "d", (), clock)
    claim, _ = snap(repo, repo_signer, series, tmp_path / "s", {"x": rand(200_000)}, clock)
    snap(repo, repo_signer, series, tmp_path / "s", {"y": rand(1000)}, clock)
    forget(repo, repo_signer, claim, clock)
    repo.end_lease()

    def listing():
        return sorted((str(p.relative_to(repo_path)), p.stat().st_size, p.stat().st_mtime_ns)
                      for p in repo_path.rglob("*") if p.is_file())
    before = listing()
    summary = gc(repo, dry_run=True)
    assert listing() == before
    assert summary.dry_run and summary.bytes_freed > 200_000 and summary.blobs_removed > 0
    assert gc(repo).bytes_freed >= summary.bytes_freed - 1000


def test_max_unused_leaves_a_little_garbage_and_0_takes_it_all(small_repo, repo_signer,
                                                               repo_path, cache_dir, tmp_path):
    repo, clock = small_repo, tick()
    series = create_series(repo, repo_signer, "m", (), clock)
    live = {f"f{i}": rand(6000) for i in range(60)}  # many packs of live data
    old = {**live, "dead-small": rand(700)}
    claim_old, _ = snap(repo, repo_signer, series, tmp_path / "s", old, clock)
    claim_new, root_new = snap(repo, repo_signer, series, tmp_path / "s", live, clock)
    forget(repo, repo_signer, claim_old, clock)
    first = gc(repo, max_unused=50)
    assert first.bytes_unreachable > 0  # small dead shares stay below 50 %
    repo.end_lease()
    assert_checks(repo_path, cache_dir)  # what the kept garbage references is kept too
    second = gc(repo, max_unused=0)
    assert second.bytes_unreachable == 0 and second.bytes_freed > 0
    assert stored_refs(repo) == reachable_refs(repo, claim_roots(repo))
    assert_restores(repo, root_new, digest_files(live), tmp_path / "out")
    repo.close()
    assert_checks(repo_path, cache_dir)


def test_explicit_roots_and_missing_references(repo, tmp_path):
    a = repo.put(b"kept data")
    b = repo.put(b"garbage data" * 100)
    repo.flush()
    summary = gc(repo, [a, BlobRef.of(b"never stored")], max_unused=0)
    assert repo.contains(a) and not repo.contains(b)
    assert summary.missing_refs == 1 and summary.live_blobs == 1


# -- the table gc marks with ------------------------------------------------------------------

def test_blob_table_finds_every_key_and_nothing_else():
    refs = sorted({BlobRef.of(os.urandom(8)) for _ in range(6000)} | {BlobRef("sha1", "ab" * 20)},
                  key=lambda r: r.to_key())
    table = BlobTable.build((r.to_key(), i % 3) for i, r in enumerate(refs))
    assert table.n == len(refs)
    ordinals = {table.ordinal(r.to_key()) for r in refs}
    assert ordinals == set(range(len(refs)))
    for r in refs[:50]:
        o = table.ordinal(r.to_key())
        assert table.key(o) == r.to_key()
    assert table.ordinal(BlobRef.of(b"absent").to_key()) == -1
    assert table.nbytes() < len(refs) * 40 + 300_000
    s = RefSet.from_sorted(r.to_key() for r in refs[::2])
    assert all(r in s for r in refs[::2]) and not any(r in s for r in refs[1::2])
    assert RefSet.from_bytes(s.to_bytes()).keys().__next__() == next(s.keys())


def test_gc_reads_an_index_of_two_key_widths(tmp_path):
    """Ordinals go by key width, then key: the places gc reads schema blobs
    from (here a sha1 one, with no refs-cache row) follow the same order."""
    repo = Repository.create(LocalBackend(tmp_path / "repo"), PASSWORD, tmp_path / "cache")
    data, garbage = repo.put(b"data in a file" * 50), repo.put(b"garbage" * 50)
    schema = canonical_json({"camliVersion": 1, "camliType": "bytes",
                             "parts": [{"blobRef": str(data), "size": 700}]})
    root = repo.put(schema, BlobRef("sha1", hashlib.sha1(schema).hexdigest()))
    repo.flush()
    summary = gc(repo, [root], max_unused=0)
    assert repo.contains(root) and repo.contains(data) and not repo.contains(garbage)
    assert summary.live_blobs == 2
    repo.close()


def test_the_ordinal_finder_agrees_with_ordinal_in_any_order():
    refs = sorted({BlobRef.of(os.urandom(8)) for _ in range(5000)} | {BlobRef("sha1", "ab" * 20)},
                  key=lambda r: r.to_key())
    table = BlobTable.build((r.to_key(), 0) for r in refs[::2])
    absent = BlobRef.of(b"absent").to_key()
    keys = [r.to_key() for r in refs] + [absent] + [r.to_key() for r in refs[::-7]]
    find = table.ordinal_finder()  # in order, with gaps; then out of order
    assert [find(k) for k in keys] == [table.ordinal(k) for k in keys]


# -- plans, leases and writers ------------------------------------------------------------------

def _garbage_world(repo):
    """A live blob, and a garbage blob in a pack of its own."""
    live = repo.put(b"live " * 1000)
    repo.flush()
    garbage = repo.put(os.urandom(5000))
    repo.flush()
    repo.end_lease()
    return live, garbage


class Stop(Exception):
    pass


def stop_at(step):
    def fault(name):
        if name == step:
            raise Stop(name)
    return fault


def test_writer_that_starts_after_the_plan_stores_condemned_blobs_again(repo, repo_path,
                                                                         cache_dir):
    live, garbage = _garbage_world(repo)
    data = repo.get(garbage)
    with pytest.raises(Stop):
        gc(repo, [live], max_unused=0, fault=stop_at("waiting"))
    writer = Repository.open(LocalBackend(repo_path), PASSWORD, cache_dir)
    assert not writer.has(garbage)  # condemned by the pending plan: counts as absent
    writer.put(data)  # so it is stored again, in a pack the plan does not touch
    writer.flush()
    assert writer.has(garbage)
    writer.close()
    with pytest.raises(Stop):  # finishes the old plan, then plans anew and stops
        gc(repo, [live], max_unused=0, fault=stop_at("planned"))
    assert repo.get(garbage) == data  # the new copy survived the old plan
    assert gc(repo, [live], max_unused=0).plans_finished == 1
    assert not repo.contains(garbage)  # now garbage again, and collected
    repo.close()
    assert_checks(repo_path, cache_dir)


def test_gc_waits_for_older_writers_defers_and_rescues_what_they_used(repo, repo_path, cache_dir):
    live, garbage = _garbage_world(repo)
    writer = Repository.open(LocalBackend(repo_path), PASSWORD, cache_dir)
    assert writer.has(garbage)  # lease taken before any plan: it may dedup against it
    summary = gc(repo, [live], max_unused=0, wait=0.3, poll=0.05)
    assert summary.deferred and summary.waited_for == 1 and summary.packs_deleted == 0
    assert repo.contains(garbage)
    # the writer now references the garbage blob from a new root, then finishes
    new_root = writer.put(b'{"camliVersion": 1,\n  "camliType": "static-set",\n  "members": [\n'
                          b'    "' + str(garbage).encode() + b'"\n  ]\n}')
    writer.close()
    summary = gc(repo, [live, new_root], max_unused=0, wait=5, poll=0.05)
    assert summary.plans_finished == 1 and not summary.deferred
    assert repo.get(garbage)  # rescued: a writer older than the plan used it
    repo.close()
    assert_checks(repo_path, cache_dir)


def test_gc_does_not_wait_for_a_dead_or_expired_writer(repo, repo_path, cache_dir):
    live, garbage = _garbage_world(repo)
    code = ("import sys, os; from pathlib import Path; from pkvc.backends.local import LocalBackend;"
            "from pkvc.repo import Repository;"
            f"r = Repository.open(LocalBackend(sys.argv[1]), {PASSWORD!r}, Path(sys.argv[2]));"
            "r.has(r.put(b'x')); os._exit(9)")
    subprocess.run([sys.executable, "-c", code, str(repo_path), str(cache_dir)], check=False)
    stale = Repository.open(LocalBackend(repo_path), PASSWORD, cache_dir, lease_ttl=0.4)
    stale.has(live)  # an expired lease from this (living) process
    time.sleep(0.5)
    assert len(repo.sessions.ids()) == 2
    started = time.monotonic()
    summary = gc(repo, [live], max_unused=0, wait=30, poll=0.05)
    assert time.monotonic() - started < 10 and not summary.deferred
    assert not repo.contains(garbage)
    with pytest.raises(LeaseExpiredError):
        stale.put(b"too late")  # idle past half its lease: it writes nothing more
    stale.close()
    assert repo.sessions.ids() == []  # the dead writer's lease was swept by gc
    repo.close()
    assert_checks(repo_path, cache_dir)


def test_a_second_gc_stands_aside(repo):
    live, garbage = _garbage_world(repo)
    other = repo.sessions.begin(KIND_GC)
    summary = gc(repo, [live], max_unused=0)
    assert summary.skipped and repo.contains(garbage)
    repo.sessions.end(other)
    assert not gc(repo, [live], max_unused=0).skipped
    assert not repo.contains(garbage)


def test_leases_and_plans_hold_no_plaintext(repo, repo_path, cache_dir):
    live, garbage = _garbage_world(repo)
    writer = Repository.open(LocalBackend(repo_path), PASSWORD, cache_dir)
    writer.has(live)  # a write lease
    with pytest.raises(Stop):
        gc(repo, [live], max_unused=0, fault=stop_at("waiting"), wait=0)
    blobs = [p.read_bytes() for p in repo_path.rglob("*")
             if p.is_file() and p.parts[-2] in ("sessions", "plans")]
    writer.close()
    assert len(blobs) == 2
    # host and pid as a lease's JSON holds them: the bare host name of this
    # machine ("vm") is two bytes, which random ciphertext holds by chance
    secrets = [str(garbage).encode(), garbage.digest, bytes.fromhex(garbage.hexdigest)[:8],
               json.dumps({"host": socket.gethostname()})[1:-1].encode(),
               json.dumps({"pid": os.getpid()})[1:-1].encode()]
    for raw in blobs:
        assert not any(s in raw for s in secrets)


def test_fault_steps_are_named_in_order():
    assert STEPS[0] == "locked" and STEPS[-1] == "done" and len(set(STEPS)) == len(STEPS)


def test_a_claim_on_a_permanode_a_running_gc_collects_is_refused(
        signing_repo, repo_signer, repo_path, cache_dir, tmp_path):
    """`pkvc attr` on a deleted series while a gc collects it: the claim would
    name a blob that is going (or, stored again, bring the series back without
    its delete claim), so it is refused with a clear error."""
    repo, clock = signing_repo, tick()
    kept = create_series(repo, repo_signer, "kept", (), clock)
    snap(repo, repo_signer, kept, tmp_path / "src", {"a.txt": rand(5000)}, clock)
    doomed = create_series(repo, repo_signer, "doomed", (), clock).permanode
    forget(repo, repo_signer, doomed, clock)  # `series delete`
    refused = []

    def attr_meanwhile(step):  # a writer that starts after the plan: never waited for
        if step == "remarked":
            writer = Repository.open(LocalBackend(repo_path), PASSWORD, cache_dir)
            with pytest.raises(BlobNotFoundError, match="a gc is collecting it") as e:
                add_claim(writer, repo_signer, "set-attribute", doomed, "note", "x", clock)
            refused.append(e.value)
            writer.close()

    assert gc(repo, max_unused=0, fault=attr_meanwhile).blobs_removed and refused
    assert not repo.contains(doomed)
    assert [s.name for s in list_series(repo)] == ["kept"]
    repo.close()
    assert_checks(repo_path, cache_dir)


def test_gc_removes_old_unfinished_pack_writes_only_while_no_writer_runs(repo, repo_path,
                                                                            cache_dir):
    live, _ = _garbage_world(repo)
    folder = repo_path / "packs" / "ab"
    folder.mkdir(parents=True, exist_ok=True)
    old, fresh = folder / ".tmp-killed", folder / ".tmp-running"
    old.write_bytes(b"x" * 1000)
    fresh.write_bytes(b"y" * 10)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    writer = Repository.open(LocalBackend(repo_path), PASSWORD, cache_dir)
    writer.put(b"a writer holds a lease")  # (it may hold a temp file, untouched for long)
    assert gc(repo, [live], wait=0).stale_uploads == 0 and old.exists()
    writer.close()
    summary = gc(repo, [live])
    assert (summary.stale_uploads, summary.stale_upload_bytes) == (1, 1000)
    assert not old.exists() and fresh.exists()  # a writer starting now makes fresh ones
    repo.close()
    assert_checks(repo_path, cache_dir)
