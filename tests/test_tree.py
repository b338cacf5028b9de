"""put_path: files and trees to schema blobs (deterministic, deduplicated, bounded)."""

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from memstore import MemStore
from pkvc.blobref import BlobRef
from pkvc.chunker import KiB, ChunkerParams
from pkvc.errors import PkvcError
from pkvc.restore import read_file_bytes
from pkvc.schema.anyblob import parse_blob
from pkvc.schema.canonical import MAX_SCHEMA_BLOB_SIZE, looks_like_schema
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob, SpecialBlob, SymlinkBlob
from pkvc.schema.parts import BytesBlob, Part
from pkvc.schema.staticset import StaticSetBlob
from pkvc.tree import (
    BytesRead, EntrySkipped, FileStored, MAX_PARTS, fit_parts, put_path, put_stream,
    stat_cache_key,
)

SMALL = ChunkerParams(min_size=1 * KiB, avg_size=4 * KiB, max_size=16 * KiB)


def _blob(store, ref):
    return parse_blob(store.get(ref))


def _children(store, dir_ref):
    d = _blob(store, dir_ref)
    return {c.name: c for c in (_blob(store, r) for r in _blob(store, d.entries).members)}


def _tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(50 * KiB))
    (root / "sub" / "deeper" / "c").write_bytes(b"")
    os.symlink("a.txt", root / "link")
    return root


def test_a_single_file(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"content")
    os.chmod(path, 0o640)
    os.utime(path, ns=(1, 1_600_000_000_123_456_789))
    store = MemStore()
    result = put_path(path, store)
    blob = _blob(store, result.ref)
    assert isinstance(blob, FileBlob) and blob.name == b"x.txt"
    assert blob.meta.permission == 0o640 and blob.meta.uid == os.getuid()
    assert blob.meta.owner and blob.meta.mtime.ns == 1_600_000_000_123_456_789
    assert blob.parts == (Part(7, blob_ref=BlobRef.of(b"content")),)
    assert (result.files, result.bytes_read, result.errors) == (1, 7, [])


def test_same_tree_same_ref_and_nothing_new_the_second_time(tmp_path):
    root = _tree(tmp_path / "src")
    store = MemStore()
    first = put_path(root, store, chunker=SMALL)
    count = len(store.blobs)
    second = put_path(root, store, chunker=SMALL)
    assert first.ref == second.ref and len(store.blobs) == count
    assert put_path(root, MemStore(), chunker=SMALL).ref == first.ref
    assert (first.files, first.dirs, first.symlinks) == (3, 4, 1)


def test_directory_blob_shape(tmp_path):
    root = _tree(tmp_path / "src")
    store = MemStore()
    top = _blob(store, put_path(root, store).ref)
    assert isinstance(top, DirectoryBlob) and top.name == b"src"
    members = _blob(store, top.entries)
    assert isinstance(members, StaticSetBlob)
    names = [_blob(store, r).name for r in members.members]
    assert names == sorted(names) == [b"a.txt", b"empty-dir", b"link", b"sub"]
    kids = _children(store, put_path(root, store).ref)
    assert isinstance(kids[b"link"], SymlinkBlob) and kids[b"link"].target == b"a.txt"
    empty = _blob(store, kids[b"empty-dir"].entries)
    assert empty.members == () and empty.merge_sets == ()


def test_every_schema_blob_is_canonical_and_small(tmp_path):
    store = MemStore()
    put_path(_tree(tmp_path / "src"), store)
    for ref, data in store.blobs.items():
        if looks_like_schema(data):
            assert parse_blob(data).to_json() == data and len(data) <= MAX_SCHEMA_BLOB_SIZE


def test_big_files_nest_parts_in_bytes_blobs(tmp_path):
    data = os.urandom(300 * KiB)
    (tmp_path / "big").write_bytes(data)
    store = MemStore()
    ref = put_path(tmp_path / "big", store, chunker=SMALL, max_parts=3).ref
    top = _blob(store, ref)
    assert len(top.parts) <= 3 and any(p.bytes_ref for p in top.parts)
    depth, level = 0, [top]
    while any(p.bytes_ref for b in level for p in b.parts):
        level = [_blob(store, p.bytes_ref) for b in level for p in b.parts if p.bytes_ref]
        assert all(isinstance(b, BytesBlob) and len(b.parts) <= 3 for b in level)
        depth += 1
    assert depth >= 2
    assert read_file_bytes(ref, store) == data


def test_fit_parts_keeps_every_blob_under_1_mib():
    store = MemStore()
    parts = [Part(4 * 1024 * 1024, blob_ref=BlobRef.of(str(i).encode())) for i in range(12_001)]
    top = fit_parts(parts, store)
    assert len(top) == 3 and all(p.bytes_ref for p in top)
    assert sum(p.size for p in top) == sum(p.size for p in parts)
    assert max(len(d) for d in store.blobs.values()) < MAX_SCHEMA_BLOB_SIZE
    assert len(FileBlob(b"f", tuple(parts[:MAX_PARTS])).to_json()) < MAX_SCHEMA_BLOB_SIZE


def test_large_directories_split_into_merge_sets(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(25):
        (root / f"f{i:02d}").write_bytes(b"%d" % i)
    store = MemStore()
    top = _blob(store, put_path(root, store, max_set_members=10).ref)
    entries = _blob(store, top.entries)
    assert len(entries.merge_sets) == 3 and not entries.members


def test_non_utf8_names_use_file_name_bytes(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / os.fsdecode(b"caf\xe9")).write_bytes(b"x")
    store = MemStore()
    ref = put_path(root, store).ref
    (child,) = _children(store, ref).values()
    assert child.name == b"caf\xe9"
    (member,) = _blob(store, _blob(store, ref).entries).members
    assert json.loads(store.get(member))["fileNameBytes"] == ["caf", 233]


def test_symlinks_are_stored_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"never read")
    root = tmp_path / "src"
    root.mkdir()
    os.symlink(outside, root / "to-dir")
    os.symlink("nowhere", root / "dangling")
    os.symlink(root / "to-dir", tmp_path / "top-link")
    store = MemStore()
    result = put_path(root, store)
    assert (result.files, result.symlinks, result.bytes_read) == (0, 2, 0)
    assert BlobRef.of(b"never read") not in store.blobs
    top = _blob(store, put_path(tmp_path / "top-link", store).ref)
    assert isinstance(top, SymlinkBlob) and top.name == b"top-link"


def test_hard_links_share_a_link_group(tmp_path):
    root = tmp_path / "src"
    (root / "d").mkdir(parents=True)
    (root / "one").write_bytes(b"same inode")
    os.link(root / "one", root / "d" / "two")
    (root / "lonely").write_bytes(b"one link")
    store = MemStore()
    ref = put_path(root, store).ref
    kids = _children(store, ref)
    two = _children(store, BlobRef.of(kids[b"d"].to_json()))[b"two"]
    assert kids[b"one"].link_group and kids[b"one"].link_group == two.link_group
    assert kids[b"lonely"].link_group is None


def test_fifo_socket_and_device(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    os.mkfifo(root / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    try:
        os.mknod(root / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        has_device = True
    except PermissionError:
        has_device = False
    try:
        store = MemStore()
        result = put_path(root, store)  # must not block on the FIFO
    finally:
        sock.close()
    kids = _children(store, result.ref)
    assert isinstance(kids[b"pipe"], SpecialBlob) and kids[b"pipe"].kind == "fifo"
    assert kids[b"sock"].kind == "socket"
    if has_device:
        assert b"null" not in kids
        assert result.errors == [(str(root / "null"), "device files are not backed up")]


_UNPRIVILEGED = """
import json, os, sys
sys.path.insert(0, sys.argv[2])
from memstore import MemStore
from pkvc.tree import put_path
os.setgroups([]); os.setgid(65534); os.setuid(65534)
store = MemStore()
r = put_path(sys.argv[1], store)
print(json.dumps({"files": r.files, "dirs": r.dirs, "errors": r.errors}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_unreadable_files_are_skipped_not_fatal():
    """Real EACCES: root drops to `nobody` in a child process (root reads anything)."""
    top = Path(tempfile.mkdtemp(prefix="pkvc-unreadable-"))
    try:
        os.chmod(top, 0o755)
        (top / "ok.txt").write_bytes(b"readable")
        (top / "secret").write_bytes(b"no")
        os.chmod(top / "secret", 0o000)
        (top / "closed").mkdir()
        (top / "closed" / "inside").write_bytes(b"x")
        os.chmod(top / "closed", 0o000)
        done = subprocess.run([sys.executable, "-c", _UNPRIVILEGED, str(top),
                               str(Path(__file__).parent)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
    finally:
        os.chmod(top / "closed", 0o700)
        subprocess.run(["rm", "-rf", str(top)], check=True)
    assert result["files"] == 1 and result["dirs"] == 1
    assert sorted(result["errors"]) == [[str(top / "closed"), "Permission denied"],
                                        [str(top / "secret"), "Permission denied"]]


class DictStatCache:
    """A `tree.StatCache` over dicts, for one store (it answers only with refs the store has)."""

    def __init__(self, store):
        self.store = store
        self.refs, self.dirs, self.lookups, self.dir_hits = {}, {}, 0, 0

    def lookup(self, path, st):
        self.lookups += 1
        ref = self.refs.get((path, stat_cache_key(st)))
        return ref if ref is not None and self.store.has(ref) else None

    def record(self, path, st, ref):
        self.refs[(path, stat_cache_key(st))] = ref

    def lookup_dir(self, path, key):
        ref = self.dirs.get(path, (None, None))
        if ref[0] == key and self.store.has(ref[1]):
            self.dir_hits += 1
            return ref[1]
        return None

    def record_dir(self, path, key, ref):
        self.dirs[path] = (key, ref)

    def previous_chunks(self, path):
        return None  # a changed file is chunked without following its previous chunks


def test_stat_cache_makes_unchanged_files_cost_a_stat(tmp_path):
    root = _tree(tmp_path / "src")
    store = MemStore()
    cache = DictStatCache(store)
    first = put_path(root, store, stat_cache=cache)
    second = put_path(root, store, stat_cache=cache)
    assert second.ref == first.ref and second.bytes_read == 0 and second.cached_files == 3
    (root / "a.txt").write_bytes(b"changed\n")
    third = put_path(root, store, stat_cache=cache)
    assert third.ref != first.ref and third.bytes_read == 8 and third.cached_files == 2
    cache.store = MemStore()
    assert put_path(root, cache.store, stat_cache=cache).cached_files == 0  # blobs missing


def _dir_refs(cache):
    return {path: ref for path, (_, ref) in cache.dirs.items()}


def test_unchanged_directories_come_from_the_cache_and_equal_a_fresh_build(tmp_path):
    root = _tree(tmp_path / "src")
    store = MemStore()
    cache = DictStatCache(store)
    first = put_path(root, store, stat_cache=cache)
    puts = store.puts
    second = put_path(root, store, stat_cache=cache)
    assert second.ref == first.ref == put_path(root, MemStore()).ref
    assert cache.dir_hits == 4 and second.dirs == 4
    assert store.puts == puts + 1  # only the symlink's blob was built again


def test_one_changed_file_deep_down_changes_exactly_the_refs_on_its_path(tmp_path):
    root = _tree(tmp_path / "src")
    (root / "sub" / "deeper" / "side").mkdir()
    (root / "sub" / "deeper" / "side" / "d").write_bytes(b"d")
    store = MemStore()
    cache = DictStatCache(store)
    put_path(root, store, stat_cache=cache)
    before = _dir_refs(cache)
    target = root / "sub" / "deeper" / "c"
    mtime = os.stat(root / "sub" / "deeper").st_mtime_ns
    target.write_bytes(b"new content")
    os.utime(root / "sub" / "deeper", ns=(mtime, mtime))  # the listing did not change
    after_ref = put_path(root, store, stat_cache=cache).ref
    after = _dir_refs(cache)
    changed = {os.fsdecode(p) for p in before if before[p] != after[p]}
    assert changed == {str(root), str(root / "sub"), str(root / "sub" / "deeper")}
    assert after_ref == put_path(root, MemStore()).ref


@pytest.mark.parametrize("change", [
    "add", "remove", "rename", "chmod", "utime", "replace-file-with-dir"])
def test_a_changed_directory_is_never_served_from_the_cache(tmp_path, change):
    root = _tree(tmp_path / "src")
    store = MemStore()
    cache = DictStatCache(store)
    first = put_path(root, store, stat_cache=cache).ref
    sub = root / "sub"
    st = os.stat(sub)
    if change == "add":
        (sub / "new").write_bytes(b"")
    elif change == "remove":
        (sub / "b.bin").unlink()
    elif change == "rename":
        (sub / "b.bin").rename(sub / "b2.bin")
    elif change == "chmod":
        os.chmod(sub, 0o701)
    elif change == "utime":
        os.utime(sub, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    else:
        (sub / "b.bin").unlink()
        (sub / "b.bin").mkdir()
    if change in ("add", "remove", "rename", "replace-file-with-dir"):
        os.utime(sub, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide it from the mtime
    again = put_path(root, store, stat_cache=cache).ref
    assert again != first
    assert again == put_path(root, MemStore()).ref


def test_the_directory_cache_is_keyed_by_the_set_size_limit(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}").write_bytes(b"x")
    store = MemStore()
    cache = DictStatCache(store)
    one = put_path(root, store, stat_cache=cache, max_set_members=3).ref
    two = put_path(root, store, stat_cache=cache).ref
    assert one != two and two == put_path(root, MemStore()).ref


def test_exclude_and_progress(tmp_path):
    root = _tree(tmp_path / "src")
    events = []
    store = MemStore()
    result = put_path(root, store, progress=events.append,
                      exclude=lambda rel, is_dir: rel == b"sub" or rel.endswith(b".txt"))
    assert set(_children(store, result.ref)) == {b"empty-dir", b"link"}
    assert events == [] and result.files == 0
    put_path(root, store, progress=events.append)
    assert {type(e) for e in events} == {BytesRead, FileStored}
    assert sum(e.n for e in events if isinstance(e, BytesRead)) == 6 + 50 * KiB


def test_missing_top_is_an_error(tmp_path):
    with pytest.raises(PkvcError, match="cannot read"):
        put_path(tmp_path / "absent", MemStore())


def test_skipped_entries_are_reported(tmp_path, monkeypatch):
    root = _tree(tmp_path / "src")
    events = []
    real_open = os.open

    def failing_open(path, flags, *a, **kw):
        if path == b"a.txt":
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *a, **kw)
    monkeypatch.setattr(os, "open", failing_open)
    result = put_path(root, MemStore(), progress=events.append)
    assert result.errors == [(str(root / "a.txt"), "Permission denied")]
    assert EntrySkipped(str(root / "a.txt"), "Permission denied") in events


def test_put_stream(tmp_path):
    data = os.urandom(100 * KiB)
    chunks = iter([data[:70000], data[70000:], b""])
    store = MemStore()
    ref = put_stream(lambda n: next(chunks), store, b"stdin", chunker=SMALL, max_parts=4)
    assert read_file_bytes(ref, store) == data and _blob(store, ref).name == b"stdin"


def test_files_read_ahead_give_the_refs_of_files_read_alone(tmp_path):
    """Many files per directory (several read-ahead blocks and jobs), many
    subdirectories, and files big enough to be chunked, mixed: each file's
    ref is the one a walk of that file alone gives (no read-ahead there)."""
    root = tmp_path / "src"
    for d in range(12):
        sub = root / f"d{d:02}" / "deeper" if d % 3 == 0 else root / f"d{d:02}"
        sub.mkdir(parents=True)
        for i in range(75 if d == 5 else 4):
            size = 3 * KiB if i % 7 == 3 else i * 37
            (sub / f"f{i:03}").write_bytes(os.urandom(size))
    store, alone = MemStore(), MemStore()
    result = put_path(root, store, chunker=SMALL)
    assert result.errors == [] and result.files == 11 * 4 + 75
    found = 0
    for dirpath, _, names in os.walk(root):
        listing = _children(store, _find_dir(store, result.ref, Path(dirpath).relative_to(root)))
        for name in names:
            ref = put_path(Path(dirpath) / name, alone, chunker=SMALL).ref
            assert store.get(ref) == alone.get(ref)
            assert listing[name.encode()] == _blob(alone, ref)
            found += 1
    assert found == result.files


def _find_dir(store, ref, rel: Path):
    for part in rel.parts:
        d = _blob(store, ref)
        ref = next(r for r in _blob(store, d.entries).members
                   if _blob(store, r).name == part.encode())
    return ref


def test_a_read_ahead_job_reports_each_file_it_cannot_read(tmp_path):
    from pkvc.tree import _read_block
    (tmp_path / "small").write_bytes(b"abc")
    (tmp_path / "big").write_bytes(b"x" * (2 * KiB))
    os.mkfifo(tmp_path / "fifo")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        small, big, missing, fifo, gone_dir = _read_block(
            fd, [b"small", b"big", b"gone", b"fifo"], [b"gone-dir"], SMALL)
    finally:
        os.close(fd)
    assert small[1] == b"abc" and small[0].st_size == 3
    assert big[1] is None  # not one chunk: the walker chunks it itself
    assert isinstance(missing, FileNotFoundError)
    assert isinstance(fifo, OSError) and "replaced by a non-file" in str(fifo)
    assert gone_dir == {}  # the walker meets and reports the error itself


def test_a_prefetch_reads_a_subdirectorys_small_files_within_its_budget(tmp_path, monkeypatch):
    from pkvc import tree
    from pkvc.tree import _prefetch_dir
    sub = tmp_path / "sub"
    sub.mkdir()
    for i in range(6):
        (sub / f"f{i}").write_bytes(bytes([i]) * 300)
    (sub / "big").write_bytes(os.urandom(2 * KiB))  # not one chunk: left to the walker
    os.mkfifo(sub / "fifo")
    (sub / "dir").mkdir()
    os.symlink("f0", sub / "link")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = _prefetch_dir(fd, b"sub", SMALL)
        monkeypatch.setattr(tree, "PREFETCH_BYTES", 3 * 300)
        few = _prefetch_dir(fd, b"sub", SMALL)
    finally:
        os.close(fd)
    assert sorted(got) == [f"f{i}".encode() for i in range(6)]
    assert got[b"f3"][1] == b"\3" * 300 and got[b"f3"][0].st_ino == (sub / "f3").stat().st_ino
    assert len(few) == 3


def test_a_file_changed_after_its_prefetch_is_read_again(tmp_path, monkeypatch):
    from pkvc import tree
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a").write_bytes(b"before")
    (root / "sub" / "b").write_bytes(b"unchanged")
    real = tree._prefetch_dir

    def prefetch_then_change(dir_fd, name, params):
        out = real(dir_fd, name, params)
        (root / "sub" / "a").write_bytes(b"after, and longer")  # between prefetch and walk
        return out

    monkeypatch.setattr(tree, "_prefetch_dir", prefetch_then_change)
    store = MemStore()
    result = put_path(root, store, chunker=SMALL)
    assert read_file_bytes(_find_dir(store, result.ref, Path("sub/a")), store) == \
        b"after, and longer"
    assert read_file_bytes(_find_dir(store, result.ref, Path("sub/b")), store) == b"unchanged"
