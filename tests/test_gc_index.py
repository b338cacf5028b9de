"""What gc needs from the index and the repository: copies, promotion, catch-up, leases."""

from __future__ import annotations

import os

import pytest

from gc_support import PASSWORD
from pkvc.backends.local import LocalBackend
from pkvc.blobref import BlobRef
from pkvc.errors import UsageError
from pkvc import index as index_mod
from pkvc.index import Index
from pkvc.pack import KIND_SCHEMA, KIND_SIGNED, PackEntry
from pkvc.repo import Repository
from pkvc.sessions import Plan, PlanView, RefSet, SortedKeys


def entry(ref: BlobRef, kind: int = KIND_SCHEMA) -> PackEntry:
    return PackEntry(ref, kind, 0, 0, 10, 10)


@pytest.mark.parametrize("with_keys", [True, False])
def test_a_second_copy_is_promoted_when_the_first_pack_goes(tmp_path, with_keys):
    a, b = Index(tmp_path), Index(tmp_path)  # two processes sharing one cache
    ref, other = BlobRef.of(b"r"), BlobRef.of(b"o")
    p, q = "aa" * 32, "bb" * 32
    a.add_pack(p, 100, [entry(ref), entry(other)])
    a.flush()
    b.add_pack(q, 100, [entry(ref)])
    b.flush()
    assert a.lookup(ref).pack_id == p
    assert [loc.pack_id for loc in b.locations(ref)] == [p, q]
    a.forget_packs({p}, [ref.to_key(), other.to_key()] if with_keys else None)
    b.refresh(latest=True)
    assert b.lookup(ref).pack_id == q and [loc.pack_id for loc in b.locations(ref)] == [q]
    assert b.lookup(other) is None and set(b.packs()) == {q}
    a.close()
    b.close()


def test_every_process_sees_its_own_writes_and_catches_up_on_demand(tmp_path):
    a, b = Index(tmp_path), Index(tmp_path)
    refs = []
    for i in range(30):
        ref = BlobRef.of(os.urandom(8))
        refs.append(ref)
        a.add_pack(f"{i:02x}" * 32, 10, [entry(ref)])
        a.flush()
        assert a.lookup(ref) is not None  # a reader that fell behind is reopened
    b.refresh(latest=True)
    assert all(b.lookup(r) is not None for r in refs)
    a.close()
    b.close()


def test_writers_treat_condemned_blobs_as_absent_readers_do_not(repo_path, cache_dir):
    repo = Repository.create(LocalBackend(repo_path), PASSWORD, cache_dir)
    data_ref = repo.put(b"condemned data")
    signed = repo.put(b'{"camliVersion": 1,\n  "camliSigner": "x"\n,"camliSig":"abc"}\n')
    repo.flush()
    pack = repo.locate(data_ref).pack_id
    assert repo.locate(signed).kind == KIND_SIGNED
    plan = Plan("11" * 16, "gc", 1, frozenset({pack}), (),
                condemned=RefSet.build([data_ref.to_key(), signed.to_key()]))
    repo.plans.publish(plan)
    repo.close()

    writer = Repository.open(LocalBackend(repo_path), PASSWORD, cache_dir)
    assert not writer.has(data_ref)  # would be stored again
    assert writer.has(signed)  # signed blobs: what is stored (the claims index relies on it)
    assert data_ref not in {r for r, _ in writer.enumerate()}  # garbage in transit
    writer.put(b"condemned data")
    writer.flush()
    assert writer.has(data_ref) and len(writer.locations(data_ref)) == 2
    writer.close()

    reader = Repository.open(LocalBackend(repo_path), PASSWORD, cache_dir, lease=False)
    assert reader.has(data_ref) and reader.lease is None
    with pytest.raises(UsageError):
        reader.put(b"no lease, no writing")
    assert reader.sessions.ids() == []  # every writer gave its lease back
    reader.close()


def test_get_reads_another_copy_when_a_pack_vanishes(repo_path, cache_dir):
    repo = Repository.create(LocalBackend(repo_path), PASSWORD, cache_dir)
    ref = repo.put(b"moved by a gc")
    repo.flush()
    first = repo.locate(ref).pack_id
    copier = repo.repacker()
    copier.add(ref, b"moved by a gc", KIND_SCHEMA)
    copier.flush()
    repo.delete_pack(first)  # the index still names the first pack
    assert repo.get(ref) == b"moved by a gc"
    assert repo.locate(ref).pack_id == copier.written[0]
    repo.close()


def test_plan_view_joins_plans():
    one = Plan("a", "g", 1, frozenset({"p1"}), (), ("t1",), RefSet.build([b"\x01" + b"a" * 28]))
    two = Plan("b", "g", 2, frozenset({"p2"}), None, (), RefSet.build([b"\x01" + b"b" * 28]))
    view = PlanView.of([one, two])
    assert view.touched == {"p1", "p2", "t1"} and len(view.condemned) == 2
    assert Plan.from_bytes(two.to_bytes()).waiting is None
    assert not PlanView.of([])


def test_table_rows_stay_buffered_and_scans_read_through_them(tmp_path):
    """A scan merges buffered table rows (new, changed, deleted) with stored
    ones; a scan of blob rows applies buffered blob rows first but leaves table
    rows buffered; another process sees them once written."""
    a, b = Index(tmp_path), Index(tmp_path)
    for key in (b"k1", b"k3", b"k5"):
        a.table_put(b"t", key, b"stored " + key)
    a.table_put(b"u", b"k2", b"other table")
    a.flush()
    a.table_put(b"t", b"k0", b"new")
    a.table_put(b"t", b"k3", b"changed")
    a.table_put(b"t", b"k5", None)
    a.table_put(b"t", b"k9", b"last")
    assert list(a.table_scan(b"t")) == [(b"k0", b"new"), (b"k1", b"stored k1"),
                                        (b"k3", b"changed"), (b"k9", b"last")]
    assert list(a.table_scan(b"t", b"k3")) == [(b"k3", b"changed")]
    assert list(a.all_blobs()) == []  # nothing of its kind buffered: nothing written
    b.refresh(latest=True)
    assert list(b.table_scan(b"t")) == [(b"k1", b"stored k1"), (b"k3", b"stored k3"),
                                        (b"k5", b"stored k5")]
    ref = BlobRef.of(b"blob")
    a.add_pack("aa" * 32, 10, [entry(ref)])
    assert [k for k, _ in a.all_blobs()] == [ref.to_key()]  # written first, with the rest
    b.refresh(latest=True)
    assert b.lookup(ref) is not None
    assert list(b.table_scan(b"t")) == list(a.table_scan(b"t"))
    assert list(b.table_scan(b"u")) == [(b"k2", b"other table")]
    a.close()
    b.close()


@pytest.mark.parametrize("chunk", [65_536, 7])
def test_primary_columns_agree_with_the_rows_in_any_key_width(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(index_mod, "PRIMARY_CHUNK", chunk)  # (read a few rows at a time)
    index = Index(tmp_path)
    refs = [BlobRef.of(os.urandom(8)) for _ in range(300)] + [BlobRef("sha1", "ab" * 20)]
    packs = ["aa" * 32, "bb" * 32, "cc" * 32]
    for n, pack in enumerate(packs):
        index.add_pack(pack, 10**6, [PackEntry(r, KIND_SCHEMA if i % 2 else KIND_SIGNED, i % 3,
                                               2**33 + i, 100 + i, 300 + i)
                                     for i, r in enumerate(refs) if i % 3 == n])
    index.flush()
    rows = sorted(index.all_blobs(), key=lambda row: (len(row[0]), row[0]))  # by width, then key
    keys, columns = index.primary_columns()
    assert list(keys) == [21, 29]
    assert b"".join(keys.values()) == b"".join(key for key, _ in rows)
    assert [columns.location(i) for i in range(len(rows))] == [loc for _, loc in rows]
    index.close()


def test_sorted_keys_never_match_across_two_keys():
    """A key found straddling two neighbours in the buffer is not one of them."""
    first = bytes.fromhex("0110200000011020")
    second = bytes.fromhex("0110200707000000")
    straddling = bytes.fromhex("0110200110200707")  # first[5:] + second[:5]; sorts between them
    fillers = {b"\x01" + os.urandom(7) for _ in range(5000)}
    keys = sorted({k for k in fillers if k[1:3] != b"\x10\x20"} | {first, second})
    table = SortedKeys(8, b"".join(keys))
    assert table.starts is not None
    assert table.index(straddling) == -1
    assert table.index(first) == keys.index(first) and table.index(second) == keys.index(second)
    assert all(table.index(k) == i for i, k in enumerate(keys))


def test_ref_set_from_sorted_keys_in_chunks_of_any_width():
    short = sorted({b"\x02" + os.urandom(20) for _ in range(5000)})
    long = sorted({b"\x01" + os.urandom(28) for _ in range(9000)})
    keys = sorted(short + long)
    with_duplicates = keys[:4096] + keys[4095:]  # one repeated across two chunks
    for given in (keys, with_duplicates, iter(keys)):
        s = RefSet.from_sorted(given)
        assert len(s) == len(keys) and list(s.keys()) == short + long  # (by width)
    with pytest.raises(ValueError):
        RefSet.from_sorted(long[:5000] + long[4000:4001])
    with pytest.raises(ValueError):
        RefSet.from_sorted(list(reversed(long)))
