"""Series, snapshots and revisions over real repositories, trees and signatures."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone

import pytest

from pkvc import claims
from pkvc.blobref import BlobRef
from pkvc.claims import add_delete_claim, invalid_claims
from pkvc.errors import BlobNotFoundError, UsageError
from pkvc.schema import jsonsign
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob, SymlinkBlob
from pkvc.schema.timefmt import SchemaTime
from pkvc.series import (
    NODE_TYPE, create_series, describe_permanode, diff_trees, ensure_series, find_series,
    get_series, list_series, lookup_path, parse_date, record_snapshot, resolve, set_attribute,
    snapshots, walk,
)
from pkvc.tree import put_path

DAY = 86_400 * 10**9
MTIME = 1_600_000_000 * 10**9
# 2026-01-30T12:00:00Z, then one snapshot a day at noon
T0 = int(datetime(2026, 1, 30, 12, tzinfo=timezone.utc).timestamp()) * 10**9


def at(ns: int):
    return lambda: ns


def store_tree(repo, root, files: dict) -> BlobRef:
    """Write `files` (path -> bytes, or ("link", target)) under root; store it."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):
            os.symlink(content[1], path)
        else:
            path.write_bytes(content)
    for path in [root, *root.rglob("*")]:  # fixed mtimes: unchanged files give the same blob
        os.utime(path, ns=(MTIME, MTIME), follow_symlinks=False)
    return put_path(root, repo).ref


V1 = {"a.txt": b"one", "dir/b.txt": b"bee", "dir/sub/c.txt": b"sea", "old.txt": b"old"}
V2 = {"a.txt": b"one", "dir/b.txt": b"BEE", "dir/sub/c.txt": b"sea", "new/n.txt": b"n",
      "link": ("link", "a.txt")}
V3 = {"a.txt": b"three"}


@pytest.fixture
def history(repo, repo_signer, tmp_path):
    """A series `docs` with three daily snapshots: V1, V2, V3 (newest)."""
    series = create_series(repo, repo_signer, "docs", ["work", "daily"], at(T0 - DAY))
    roots, refs = [], []
    for i, files in enumerate((V1, V2, V3)):
        roots.append(store_tree(repo, tmp_path / "src", files))
        refs.append(record_snapshot(repo, repo_signer, series, roots[-1], at(T0 + i * DAY)))
    return series, roots, refs


# -- series ----------------------------------------------------------------------

def test_series_is_a_titled_tagged_permanode(repo, repo_signer):
    series = create_series(repo, repo_signer, "/home/me/docs", ["a", "b", "a"], at(T0))
    assert (series.name, series.tags, series.created) == ("/home/me/docs", ("a", "b"), SchemaTime(T0))
    assert series.key_id == repo_signer.key_id
    state = claims.permanode_state(repo, series.permanode)
    assert state.attributes == {"camliNodeType": (NODE_TYPE,), "title": ("/home/me/docs",),
                                "tag": ("a", "b")}
    assert find_series(repo, "/home/me/docs") == series
    assert find_series(repo, "nope") is None
    with pytest.raises(UsageError, match="already exists"):
        create_series(repo, repo_signer, "/home/me/docs")
    with pytest.raises(UsageError):
        create_series(repo, repo_signer, "")


def test_ensure_series_creates_once_and_adds_tags(repo, repo_signer):
    first, created = ensure_series(repo, repo_signer, "s", ["x"])
    again, created_again = ensure_series(repo, repo_signer, "s", ["x", "y"])
    assert created and not created_again
    assert again.permanode == first.permanode and again.tags == ("x", "y")
    other, _ = ensure_series(repo, repo_signer, "t")
    assert [s.name for s in list_series(repo)] == ["s", "t"]
    add_delete_claim(repo, repo_signer, other.permanode)
    assert [s.name for s in list_series(repo)] == ["s"]
    with pytest.raises(UsageError, match="no series named 't'"):
        get_series(repo, "t")
    assert get_series(repo, str(first.permanode)).name == "s"


def test_renamed_duplicate_series_are_an_error_until_renamed(repo, repo_signer):
    a = create_series(repo, repo_signer, "a")
    b = create_series(repo, repo_signer, "b")
    set_attribute(repo, repo_signer, b.permanode, "title", "a")
    with pytest.raises(UsageError, match="2 series are named 'a'"):
        find_series(repo, "a")
    set_attribute(repo, repo_signer, a.permanode, "title", "c")
    assert find_series(repo, "a").permanode == b.permanode


# -- snapshots -----------------------------------------------------------------

def test_snapshots_newest_first(repo, repo_signer, history):
    series, roots, refs = history
    log = snapshots(repo, series)
    assert [s.claim for s in log] == refs[::-1]
    assert [s.root for s in log] == roots[::-1]
    assert [s.number for s in log] == [0, 1, 2]
    assert [s.date.ns for s in log] == [T0 + 2 * DAY, T0 + DAY, T0]
    assert {(s.verified, s.key_id, s.signer) for s in log} == {
        (True, repo_signer.key_id, repo_signer.public_key_ref)}


def test_forgotten_snapshot_leaves_the_log_and_comes_back(repo, repo_signer, history):
    series, roots, refs = history
    forget = add_delete_claim(repo, repo_signer, refs[1])
    assert [s.claim for s in snapshots(repo, series)] == [refs[2], refs[0]]
    assert resolve(repo, "docs@1").snapshot.claim == refs[0]
    add_delete_claim(repo, repo_signer, forget)  # unforget
    assert [s.claim for s in snapshots(repo, series)] == refs[::-1]


def test_tampered_snapshot_claim_is_shown_unverified_only_on_request(repo, history):
    series, roots, refs = history
    blob = repo.get(refs[0])
    i = blob.index(b'"claimDate": "2026-01-30T12') + len(b'"claimDate": "2026-01-30T1')
    forged = repo.put(blob[:i] + b"3" + blob[i + 1:])  # one byte: an hour later, signature kept
    assert [s.claim for s in snapshots(repo, series)] == refs[::-1]
    shown = snapshots(repo, series, include_invalid=True)
    assert [(s.claim, s.verified, s.number) for s in shown] == [
        (refs[2], True, 0), (refs[1], True, 1), (forged, False, None), (refs[0], True, 2)]
    assert [b.ref for b in invalid_claims(repo)] == [forged]


def test_record_snapshot_needs_the_root(repo, repo_signer):
    series = create_series(repo, repo_signer, "s")
    with pytest.raises(BlobNotFoundError):
        record_snapshot(repo, repo_signer, series, BlobRef.of(b"nothing"))


# -- revisions -------------------------------------------------------------------

def test_every_rev_form(repo, history):
    series, roots, refs = history
    assert resolve(repo, "docs").snapshot.claim == refs[2]
    assert resolve(repo, "docs").ref == roots[2]
    assert [resolve(repo, f"docs@{n}").snapshot.claim for n in range(3)] == refs[::-1]
    # days end at midnight UTC: the snapshot of the 31st (noon) is the one of that day
    assert resolve(repo, "docs@{2026-01-31}").snapshot.claim == refs[1]
    assert resolve(repo, "docs@{2026-01-31T11:59:59Z}").snapshot.claim == refs[0]
    assert resolve(repo, "docs@{2026-01-31T12:00:00Z}").snapshot.claim == refs[1]
    assert resolve(repo, "docs@{2026-01-31T13:00:00+01:00}").snapshot.claim == refs[1]
    assert resolve(repo, "docs@{2026-01-31T11:00:00}").snapshot.claim == refs[0]  # naive = UTC
    assert resolve(repo, "docs@{2030-01-01}").snapshot.claim == refs[2]
    for ref in (refs[1], roots[1]):
        by_prefix = resolve(repo, str(ref)[:20])
        assert (by_prefix.snapshot.claim, by_prefix.series) == (refs[1], series)
        assert resolve(repo, ref.hexdigest[:12]).snapshot.claim == refs[1]
        assert resolve(repo, str(ref)).snapshot.claim == refs[1]


def test_rev_with_path(repo, history):
    series, roots, refs = history
    found = resolve(repo, "docs@1:dir/b.txt")
    assert found.path == b"dir/b.txt"
    blob = FileBlob.from_json(repo.get(found.ref))
    assert blob.name == b"b.txt"
    sub = resolve(repo, "docs@2:/dir/sub/")
    assert sub.path == b"dir/sub" and isinstance(DirectoryBlob.from_json(repo.get(sub.ref)), DirectoryBlob)
    assert resolve(repo, "docs:").ref == roots[2]
    assert resolve(repo, f"{refs[1].hexdigest[:10]}:link").ref == lookup_path(repo, roots[1], b"link")
    link = SymlinkBlob.from_json(repo.get(resolve(repo, "docs@1:link").ref))
    assert link.target == b"a.txt"


@pytest.mark.parametrize("spec,error,message", [
    ("nope", UsageError, "no series named 'nope'"),
    ("docs@3", UsageError, "out of range"),
    ("docs@-1", UsageError, "revision is @N"),
    ("docs@x", UsageError, "revision is @N"),
    ("docs@{2026-01-29}", UsageError, "no snapshot at or before"),
    ("docs@{yesterday}", UsageError, "not a date"),
    ("docs@{2026-01-31", UsageError, "missing '}'"),
    ("docs@0:missing/file", BlobNotFoundError, "no missing"),
    ("docs@1:a.txt/deeper", BlobNotFoundError, "a.txt is not a directory"),
    ("docs@1:../etc", UsageError, "'..'"),
    ("sha224-", UsageError, "ambiguous"),
    ("sha224-ffffffffffff", BlobNotFoundError, "no snapshot claim or root"),
])
def test_rev_errors(repo, history, spec, error, message):
    with pytest.raises(error, match=message):
        resolve(repo, spec)


def test_series_names_with_at_and_colon(repo, repo_signer, tmp_path):
    root = store_tree(repo, tmp_path / "src", {"f": b"x"})
    for name in ("/srv/a@b", "/srv/a@b:c", "/srv/a"):
        record_snapshot(repo, repo_signer, create_series(repo, repo_signer, name), root)
    assert resolve(repo, "/srv/a@b").series.name == "/srv/a@b"
    assert resolve(repo, "/srv/a@b:c").series.name == "/srv/a@b:c"  # longest name wins
    assert resolve(repo, "/srv/a@b:c@0:f").path == b"f"
    assert resolve(repo, "/srv/a@0:f").series.name == "/srv/a"


def test_ambiguous_prefix(repo, repo_signer, tmp_path):
    series = create_series(repo, repo_signer, "s")
    root = store_tree(repo, tmp_path / "src", {"f": b"x"})
    refs = {record_snapshot(repo, repo_signer, series, root, at(T0 + i)) for i in range(40)}
    hexes = sorted(r.hexdigest for r in refs | {root})
    shared = next(a[:1] for a, b in zip(hexes, hexes[1:]) if a[0] == b[0])
    with pytest.raises(UsageError, match="ambiguous"):
        resolve(repo, f"sha224-{shared}")
    # one root shared by many snapshots is not ambiguous: the newest wins
    assert resolve(repo, str(root)).snapshot.claim == snapshots(repo, series)[0].claim


def test_parse_date_forms():
    end_of_day = int(datetime(2026, 2, 1, tzinfo=timezone.utc).timestamp()) * 10**9 - 1
    assert parse_date("2026-01-31").ns == end_of_day
    assert parse_date("2026-01-31T10:00:00.5Z").ns == int(datetime(
        2026, 1, 31, 10, tzinfo=timezone.utc).timestamp()) * 10**9 + 500_000_000
    with pytest.raises(UsageError):
        parse_date("2026-02-30")


# -- the cache can go ----------------------------------------------------------------

def test_same_answers_after_the_cache_is_deleted(repo, history, reopen, cache_dir, monkeypatch):
    series, roots, refs = history
    specs = ["docs", "docs@1", "docs@{2026-01-30}", "docs@2:dir/sub/c.txt", str(roots[1])[:16]]
    before = ([s.__dict__ for s in list_series(repo)], snapshots(repo, series),
              [resolve(repo, s) for s in specs])
    repo.close()
    shutil.rmtree(cache_dir)
    calls = []
    real = jsonsign.verify
    monkeypatch.setattr(jsonsign, "verify", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = reopen()
    after = ([s.__dict__ for s in list_series(again)], snapshots(again, series),
             [resolve(again, s) for s in specs])
    assert after == before
    verified = len(calls)
    assert verified == 1 + 4 + 3  # permanode, its 4 claims, 3 snapshots: each once
    snapshots(again, series)
    resolve(again, "docs@2")
    assert len(calls) == verified


# -- attributes and describe ---------------------------------------------------------

def test_set_attribute_and_describe_at(repo, repo_signer, history):
    series, roots, refs = history
    pn = series.permanode
    set_attribute(repo, repo_signer, pn, "note", "first", "set", at(T0 + 10 * DAY))
    added = set_attribute(repo, repo_signer, pn, "note", "second", "add", at(T0 + 11 * DAY))
    set_attribute(repo, repo_signer, pn, "note", "first", "del", at(T0 + 12 * DAY))
    forget = add_delete_claim(repo, repo_signer, refs[0], at(T0 + 13 * DAY))
    now = describe_permanode(repo, pn)
    assert now.state.attributes["note"] == ("second",)
    assert now.state.get("camliContent") == str(roots[2])
    assert now.info.key_id == repo_signer.key_id
    history_refs = [(h.claim.ref, h.deleted) for h in now.history]
    assert (refs[0], True) in history_refs and (added, False) in history_refs
    assert len(now.history) == 4 + 3 + 3  # creation claims, snapshots, attr claims
    then = describe_permanode(repo, pn, "2026-02-10T11:00:00Z")
    assert then.state.attributes["note"] == ("first",)
    assert (refs[0], False) in [(h.claim.ref, h.deleted) for h in then.history]
    assert len(then.history) == 4 + 3 + 1
    assert describe_permanode(repo, pn, parse_date("2026-01-30")).state.get("camliContent") == str(roots[0])
    for not_a_permanode in (roots[0], refs[0]):
        with pytest.raises(UsageError, match="not a permanode"):
            describe_permanode(repo, not_a_permanode)
    with pytest.raises(BlobNotFoundError):
        describe_permanode(repo, BlobRef.of(b"absent"))
    with pytest.raises(UsageError, match="set, add or del"):
        set_attribute(repo, repo_signer, pn, "note", "x", "replace")
    with pytest.raises(UsageError, match="not a verified permanode"):
        set_attribute(repo, repo_signer, forget, "note", "x")


# -- trees ---------------------------------------------------------------------------

def test_walk_lists_everything_in_order(repo, history):
    series, roots, refs = history
    entries = list(walk(repo, roots[1]))
    assert [e.path for e in entries] == [
        b"a.txt", b"dir", b"dir/b.txt", b"dir/sub", b"dir/sub/c.txt", b"link", b"new", b"new/n.txt"]
    kinds = {e.path: type(e.blob).__name__ for e in entries}
    assert kinds[b"dir/sub"] == "DirectoryBlob" and kinds[b"link"] == "SymlinkBlob"
    file_ref = lookup_path(repo, roots[1], "dir/b.txt")
    assert [(e.path, e.ref) for e in walk(repo, file_ref)] == [(b"b.txt", file_ref)]


def test_diff_trees(repo, history):
    series, roots, refs = history
    d = diff_trees(repo, roots[0], roots[1])
    assert d.added == [b"link", b"new", b"new/n.txt"]
    assert d.removed == [b"old.txt"]
    assert d.changed == [b"dir/b.txt"]  # a.txt: same bytes, same metadata, same blob
    d = diff_trees(repo, roots[1], roots[2])
    assert d.removed == [b"dir", b"dir/b.txt", b"dir/sub", b"dir/sub/c.txt", b"link", b"new", b"new/n.txt"]
    assert d.changed == [b"a.txt"] and d.added == []
    assert diff_trees(repo, roots[1], roots[1]) == diff_trees(repo, roots[2], roots[2])
