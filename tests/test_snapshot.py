"""A snapshot's added size: the `added` cache row that `snapshot` fills and
`log` reads always equals the walk of the two trees (`added_bytes`)."""

import os
import shutil

import pytest

from fstree import make_rich_tree
from pkvc import api, snapshot as snapshot_mod
from pkvc.snapshot import added_bytes, known_added_size, take_snapshot
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob
from pkvc.series import find_series, list_dir, snapshots


@pytest.fixture
def src(tmp_path):
    root = make_rich_tree(tmp_path / "src")
    with open(root / "sparse", "wb") as f:  # holes count in a file's size
        f.truncate(1024 * 1024)
        f.write(b"data after the hole")
    (root / "dup").mkdir()
    (root / "dup" / "a.txt").write_bytes(b"hello\n")  # the same blob as /a.txt: counted twice
    return root


def roots(repo, name):
    """(previous root or None, root) of every snapshot of the series, newest first."""
    snaps = snapshots(repo, find_series(repo, name))
    return [(snaps[i + 1].root if i + 1 < len(snaps) else None, s.root)
            for i, s in enumerate(snaps)]


def file_sizes(root):
    return sum(os.lstat(os.path.join(d, f)).st_size
               for d, _, files in os.walk(root) for f in files
               if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f)))


def walked(repo, old_root, new_root):
    """The definition, by listing whole directories: for each path of the new
    tree holding a file, its size unless the old tree holds the same blob there."""
    total, pending = 0, [(old_root, new_root)]
    while pending:
        old, new = pending.pop()
        before = {name: (ref, node) for name, ref, node in list_dir(repo, old)} if old else {}
        for name, ref, node in list_dir(repo, new):
            prior = before.get(name)
            if prior is not None and prior[0] == ref:
                continue
            if isinstance(node, DirectoryBlob):
                pending.append((prior[0] if prior and isinstance(prior[1], DirectoryBlob)
                                else None, ref))
            elif isinstance(node, FileBlob):
                total += node.size
    return total


def logged(repo, name):
    return [(e.claim, e.added_bytes) for e in api.log(repo, name)]


def test_first_and_unchanged_snapshots_remember_what_the_walk_gives(
        signing_repo, repo_signer, src):
    repo = signing_repo
    take_snapshot(repo, repo_signer, src, "s")
    [(none, first)] = roots(repo, "s")
    assert none is None
    assert known_added_size(repo, None, first) == walked(repo, None, first) == file_sizes(src)
    assert added_bytes(repo, None, first) == file_sizes(src)

    take_snapshot(repo, repo_signer, src, "s")  # unchanged: the same root, nothing added
    (old, same), _ = roots(repo, "s")
    assert old == same == first
    assert known_added_size(repo, first, first) == walked(repo, first, first) == 0


def test_a_mutated_snapshot_is_measured_once_by_log(signing_repo, repo_signer, src):
    repo = signing_repo
    take_snapshot(repo, repo_signer, src, "s")
    first_total = file_sizes(src)
    (src / "a.txt").write_bytes(b"changed, and longer\n")
    (src / "sub" / "new").mkdir()
    (src / "sub" / "new" / "n.bin").write_bytes(os.urandom(3000))
    shutil.rmtree(src / "dup")
    (src / "dup").write_bytes(b"a file where a directory was")
    (src / "big").unlink()
    os.rename(src / "exec", src / "renamed")  # the same blob? no: the name is in it
    take_snapshot(repo, repo_signer, src, "s")
    (before, after), _ = roots(repo, "s")
    assert known_added_size(repo, before, after) is None  # comparing trees is left to log
    expected = (len(b"changed, and longer\n") + 3000 + len(b"a file where a directory was")
                + len(b"#!/bin/sh\n"))
    assert walked(repo, before, after) == added_bytes(repo, before, after) == expected
    assert [size for _, size in logged(repo, "s")] == [expected, first_total]
    assert known_added_size(repo, before, after) == expected
    # and back: a directory where a file was, the old file's size gone
    (src / "dup").unlink()
    (src / "dup").mkdir()
    (src / "dup" / "x").write_bytes(b"xyz")
    take_snapshot(repo, repo_signer, src, "s")
    (before, after), *_ = roots(repo, "s")
    assert walked(repo, before, after) == added_bytes(repo, before, after) == 3
    assert walked(repo, None, after) == added_bytes(repo, None, after) == file_sizes(src)


def test_comparing_a_few_directories_at_a_time_gives_the_same_size(
        signing_repo, repo_signer, src, monkeypatch):
    repo = signing_repo
    take_snapshot(repo, repo_signer, src, "s")
    (src / "sub" / "deep" / "more").write_bytes(b"12345")
    (src / "sub" / "h3").unlink()
    take_snapshot(repo, repo_signer, src, "s")
    (before, after), _ = roots(repo, "s")
    expected = [added_bytes(repo, before, after), added_bytes(repo, None, after)]
    monkeypatch.setattr(snapshot_mod, "COMPARE_AT_ONCE", 1)
    assert [added_bytes(repo, before, after), added_bytes(repo, None, after)] == expected
    assert expected == [walked(repo, before, after), walked(repo, None, after)] == [
        5, file_sizes(src)]


def test_log_shows_the_same_sizes_without_the_cache_and_refills_it(
        signing_repo, repo_signer, src, reopen, tmp_path):
    repo = signing_repo
    take_snapshot(repo, repo_signer, src, "s")
    (src / "a.txt").write_bytes(b"edited\n")
    take_snapshot(repo, repo_signer, src, "s")
    shown = logged(repo, "s")
    assert [size for _, size in shown] == [len(b"edited\n"), file_sizes(src) - 1]

    fresh = reopen(cache=tmp_path / "another-cache")  # an index rebuilt from the packs
    pairs = roots(fresh, "s")
    assert all(known_added_size(fresh, old, new) is None for old, new in pairs)
    assert logged(fresh, "s") == shown
    assert [known_added_size(fresh, old, new) for old, new in pairs] == [s for _, s in shown]
    fresh.reindex()
    assert all(known_added_size(fresh, old, new) is None for old, new in pairs)
    assert logged(fresh, "s") == shown


def test_a_first_snapshot_from_cached_files_is_measured_by_log(signing_repo, repo_signer, src):
    """A second series of the same directory takes every file from the stat
    cache: the writer did not measure them, so `log` walks once and keeps it."""
    repo = signing_repo
    take_snapshot(repo, repo_signer, src, "one")
    os.utime(src, ns=(1, 2))  # another root: series one's row does not answer for it
    summary = take_snapshot(repo, repo_signer, src, "two")
    assert summary.files_unchanged > 0 and summary.files_new == 0
    [(_, root)] = roots(repo, "two")
    assert known_added_size(repo, None, root) is None
    [entry] = [e for e in api.log(repo) if e.series == "two"]
    assert entry.added_bytes == added_bytes(repo, None, root) == file_sizes(src)
    assert known_added_size(repo, None, root) == entry.added_bytes
