"""The write pipeline: blobs sealed on a pool of threads, packed in order.

Real repositories and real files; small packs so that many fill, and are
stored, while blobs are still in flight.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fstree import make_rich_tree
from memstore import MemStore
from pkvc.backends.base import Backend
from pkvc.backends.local import LocalBackend
from pkvc.blobref import BlobRef
from pkvc.check import check_repository
from pkvc.chunker import KiB, ChunkerParams
from pkvc.errors import BackendError
from pkvc.pack import KIND_DATA, pack_name
from pkvc import packer as packer_mod
from pkvc.repo import Repository
from pkvc.restore import read_file_bytes
from pkvc.tree import put_path

PASSWORD = b"correct horse battery staple"  # as in conftest.py
SMALL_CHUNKS = ChunkerParams(min_size=4 * KiB, avg_size=16 * KiB, max_size=64 * KiB)


def _create(path: Path, backend=None, pack_size: int = 64 * KiB) -> Repository:
    return Repository.create(backend or LocalBackend(path / "repo"), PASSWORD, path / "cache",
                             chunker=SMALL_CHUNKS, pack_size=pack_size)


def _pack_entries(repo: Repository) -> list:
    """Every entry of every pack header, as stored (not the index)."""
    return [e for pid, size in repo.list_packs().items() for e in repo.read_pack_header(pid, size)]


def _rich_tree_with_data(root: Path) -> Path:
    make_rich_tree(root)
    os.chmod(root / "ro-dir", 0o755)
    block = os.urandom(300 * KiB)
    for i in range(6):  # duplicates of one another and of themselves
        (root / f"copy-{i}.bin").write_bytes(block + block + os.urandom(40 * KiB))
    (root / "text.txt").write_bytes(b"compressible line\n" * 20000)
    return root


@pytest.mark.parametrize("sealers", [1, 3])
def test_same_refs_as_a_single_threaded_store_and_every_blob_once(tmp_path, monkeypatch, sealers):
    monkeypatch.setattr(packer_mod, "SEAL_THREADS", sealers)
    src = _rich_tree_with_data(tmp_path / "src")
    expected = put_path(src, MemStore(), chunker=SMALL_CHUNKS)
    with _create(tmp_path) as repo:
        got = put_path(src, repo, chunker=SMALL_CHUNKS)
        assert got.ref == expected.ref and got.errors == expected.errors
        repo.flush()
        entries = _pack_entries(repo)
        refs = [e.ref for e in entries]
        assert len(refs) == len(set(refs))  # dedup saw the blobs in flight
        assert len(repo.list_packs()) > 10  # many packs filled while putting
        store = MemStore()
        put_path(src, store, chunker=SMALL_CHUNKS)
        assert set(store.blobs) <= set(refs)
        for ref, data in store.blobs.items():
            assert repo.get(ref) == data
        assert read_file_bytes(_child_ref(repo, got.ref, b"text.txt"), repo) == \
            (src / "text.txt").read_bytes()
        assert check_repository(repo, read_data=True).ok


def _child_ref(repo, dir_ref: BlobRef, name: bytes) -> BlobRef:
    from pkvc.series import list_dir
    return next(ref for n, ref, _ in list_dir(repo, dir_ref) if n == name)


def test_schema_blobs_and_file_data_go_to_separate_packs(tmp_path):
    src = _rich_tree_with_data(tmp_path / "src")
    with _create(tmp_path, pack_size=16 * 1024 * 1024) as repo:
        put_path(src, repo, chunker=SMALL_CHUNKS)
        repo.flush()
        kinds_per_pack = {}
        for pid, size in repo.list_packs().items():
            kinds = {e.kind == KIND_DATA for e in repo.read_pack_header(pid, size)}
            kinds_per_pack[pid] = kinds
        assert all(len(k) == 1 for k in kinds_per_pack.values())
        assert sorted(len(k) for k in kinds_per_pack.values()) == [1, 1]


def test_a_blob_put_twice_in_flight_is_stored_once(tmp_path):
    with _create(tmp_path) as repo:
        data = os.urandom(100 * KiB)
        refs = [repo.put(data) for _ in range(3)] + [repo.put(bytearray(data))]
        assert len(set(refs)) == 1 and repo.has(refs[0])
        assert repo.get(refs[0]) == data  # read back before any explicit flush
        repo.flush()
        assert [e.ref for e in _pack_entries(repo)].count(refs[0]) == 1
        assert repo.stats.blobs == 1 and repo.stats.raw_bytes == len(data)


def test_a_mutable_buffer_changed_after_put_is_stored_as_it_was(tmp_path):
    with _create(tmp_path) as repo:
        buf = bytearray(os.urandom(200 * KiB))
        ref = repo.put(buf)
        buf[:] = bytes(len(buf))
        repo.flush()
        assert ref.matches(repo.get(ref))


class _FullDisk(LocalBackend):
    """A real local backend whose disk fills after `room` packs."""

    def __init__(self, root, room: int):
        super().__init__(root)
        self.room = room

    def store(self, name, data):
        if name.startswith("packs/"):
            self._use_room(name)
        super().store(name, data)

    def upload(self, folder):
        upload, backend = super().upload(folder), self

        class Filling:
            write, abort = upload.write, upload.abort

            def commit(self, name):
                try:
                    backend._use_room(name)
                except BackendError:
                    upload.abort()
                    raise
                upload.commit(name)
        return Filling()

    def _use_room(self, name):
        if self.room <= 0:
            raise BackendError(f"cannot write {name}: No space left on device")
        self.room -= 1


def test_a_store_error_stops_the_walk_clearly_and_leaves_a_checkable_repository(tmp_path):
    src = _rich_tree_with_data(tmp_path / "src")
    backend = _FullDisk(tmp_path / "repo", room=10**9)
    repo = _create(tmp_path, backend)
    backend.room = 3
    with pytest.raises(BackendError, match="No space left on device"):
        put_path(src, repo, chunker=SMALL_CHUNKS)
        repo.flush()
    stored = [e.ref for e in _pack_entries(repo)]
    assert stored and all(repo.has(ref) for ref in stored)  # the packs stored are indexed
    repo.close()  # nothing more is written, nothing raised again
    stored = list((tmp_path / "repo" / "packs").rglob("*"))
    assert not [p for p in stored if p.name.startswith(".tmp-")]
    with Repository.open(LocalBackend(tmp_path / "repo"), PASSWORD, tmp_path / "cache2") as again:
        assert len(again.list_packs()) == 3
        report = check_repository(again, read_data=True)
        assert report.ok, report.problems
        again_ref = put_path(src, again, chunker=SMALL_CHUNKS).ref  # room again: all of it
        again.flush()
        assert again_ref == put_path(src, MemStore(), chunker=SMALL_CHUNKS).ref
        assert check_repository(again, read_data=True).ok


_UNPRIVILEGED = """
import json, os, sys
sys.path.insert(0, sys.argv[3])
from pkvc.backends.local import LocalBackend
from pkvc.chunker import ChunkerParams
from pkvc.repo import Repository
from pkvc.tree import put_path
import pickle  # rocksdict imports it lazily; nobody cannot read this venv's stdlib
os.setgroups([]); os.setgid(65534); os.setuid(65534)
top = sys.argv[2]
params = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536)
with Repository.create(LocalBackend(top + "/repo"), b"pw", top + "/cache", chunker=params,
                       pack_size=65536) as repo:
    r = put_path(sys.argv[1], repo, chunker=params)
    print(json.dumps({"ref": str(r.ref), "files": r.files, "errors": r.errors}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_an_unreadable_file_among_many_is_reported_and_the_rest_stored():
    top = Path(tempfile.mkdtemp(prefix="pkvc-pipeline-"))
    try:
        os.chmod(top, 0o777)
        src = top / "src"
        src.mkdir()
        contents = {f"f{i:02}": os.urandom(50 * KiB) for i in range(20)}
        for name, data in contents.items():
            (src / name).write_bytes(data)
        os.chmod(src / "f07", 0o000)
        done = subprocess.run([sys.executable, "-c", _UNPRIVILEGED, str(src), str(top),
                               str(Path(__file__).parent)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["files"] == 19
        assert result["errors"] == [[str(src / "f07"), "Permission denied"]]
        with Repository.open(LocalBackend(top / "repo"), b"pw", top / "cache2") as repo:
            from pkvc.series import list_dir
            listed = {name.decode(): ref
                      for name, ref, _ in list_dir(repo, BlobRef.parse(result["ref"]))}
            assert sorted(listed) == sorted(n for n in contents if n != "f07")
            for name, ref in listed.items():
                assert read_file_bytes(ref, repo) == contents[name]
            assert check_repository(repo, read_data=True).ok
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=True)


class _WholeObjectsOnly(LocalBackend):
    """A backend that can only store whole objects (the base class's uploads)."""

    upload = Backend.upload


def test_packs_stream_to_the_backend_or_go_whole_to_one_without_uploads(tmp_path):
    src = _rich_tree_with_data(tmp_path / "src")
    expected = put_path(src, MemStore(), chunker=SMALL_CHUNKS).ref
    for name, backend in (("local", LocalBackend(tmp_path / "local")),
                          ("whole", _WholeObjectsOnly(tmp_path / "whole"))):
        repo = Repository.create(backend, PASSWORD, tmp_path / f"cache-{name}",
                                 chunker=SMALL_CHUNKS, pack_size=64 * KiB)
        with repo:
            assert put_path(src, repo, chunker=SMALL_CHUNKS).ref == expected
            repo.flush()
            sizes = repo.list_packs()
            assert len(sizes) > 10
            for pid, size in sizes.items():  # named by their bytes' hash, sizes as indexed
                data = backend.load(pack_name(pid))
                assert hashlib.sha256(data).hexdigest() == pid and len(data) == size
            assert check_repository(repo, read_data=True).ok
        assert not list((tmp_path / name / "packs").rglob(".tmp-*"))


class _FailingWrites(LocalBackend):
    """A real local backend where one pack write fails, once: the first write
    into a pack's temp file once `room` bytes were written (`where="write"`:
    counted in bytes, not calls, which the packer's batching varies), or the
    making of a pack temp file after `room` were made (`where="open"`);
    later calls would succeed again."""

    def __init__(self, root, room: int, where: str = "write"):
        super().__init__(root)
        self.room, self.where, self.failed = room, where, False

    def _fail(self) -> None:
        self.failed = True
        raise BackendError("cannot write a pack: No space left on device")

    def upload(self, folder):
        if self.where == "open" and not self.failed:
            self.room -= 1
            if self.room < 0:
                self._fail()
        upload, backend = super().upload(folder), self

        class Filling:
            commit, abort = upload.commit, upload.abort

            def write(self, data):
                if backend.where == "write" and not backend.failed:
                    if backend.room <= 0:
                        upload.abort()
                        backend._fail()
                    backend.room -= len(data)
                upload.write(data)
        return Filling()


@pytest.mark.parametrize("where", ["write", "open"])
def test_a_write_failing_inside_a_pack_stores_no_damaged_pack(tmp_path, where):
    src = _rich_tree_with_data(tmp_path / "src")
    backend = _FailingWrites(tmp_path / "repo", room=10**9, where=where)
    repo = _create(tmp_path, backend)
    backend.room = 256 * KiB if where == "write" else 3  # (the tree makes > 10 packs of 64 KiB)
    with pytest.raises(BackendError, match="No space left on device"):
        put_path(src, repo, chunker=SMALL_CHUNKS)
        repo.flush()
    repo.close()
    assert not list((tmp_path / "repo" / "packs").rglob(".tmp-*"))
    with Repository.open(LocalBackend(tmp_path / "repo"), PASSWORD, tmp_path / "cache2") as again:
        assert again.list_packs()  # some were stored before the disk filled
        report = check_repository(again, read_data=True)
        assert report.ok, report.problems
