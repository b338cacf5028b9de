"""A snapshot's added size: the `added` cache row that `snapshot` fills and
`log` reads always equals the walk of the two trees (`added_bytes`)."""

import os
import shutil

import pytest

from fstree import make_rich_tree
from pkvc import api
from pkvc.snapshot import added_bytes, known_added_size, take_snapshot
from pkvc.series import find_series, snapshots


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


def logged(repo, name):
    return [(e.claim, e.added_bytes) for e in api.log(repo, name)]


def test_first_unchanged_and_mutated_snapshots_remember_what_the_walk_gives(
        signing_repo, repo_signer, src):
    repo = signing_repo
    take_snapshot(repo, repo_signer, src, "s")
    [(none, first)] = roots(repo, "s")
    assert none is None
    assert known_added_size(repo, None, first) == added_bytes(repo, None, first) == file_sizes(src)

    take_snapshot(repo, repo_signer, src, "s")  # unchanged: the same root, nothing added
    (old, same), _ = roots(repo, "s")
    assert old == same == first
    assert known_added_size(repo, first, first) == added_bytes(repo, first, first) == 0

    (src / "a.txt").write_bytes(b"changed, and longer\n")
    (src / "sub" / "new").mkdir()
    (src / "sub" / "new" / "n.bin").write_bytes(os.urandom(3000))
    shutil.rmtree(src / "dup")
    (src / "dup").write_bytes(b"a file where a directory was")
    (src / "big").unlink()
    take_snapshot(repo, repo_signer, src, "s")
    (before, after), *_ = roots(repo, "s")
    walked = added_bytes(repo, before, after)
    assert walked == len(b"changed, and longer\n") + 3000 + len(b"a file where a directory was")
    assert known_added_size(repo, before, after) == walked


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
