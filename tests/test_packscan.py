"""packscan: packs read whole on worker processes find what reading them here finds."""

import os

import pytest

from pkvc import packscan
from pkvc.backends.local import LocalBackend
from pkvc.blobref import BlobRef
from pkvc.check import check_repository
from pkvc.pack import KIND_DATA, pack_name
from pkvc.repo import Repository
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob
from pkvc.schema.parts import Part
from pkvc.schema.staticset import StaticSetBlob

PASSWORD = b"correct horse battery staple"  # as in conftest.py


@pytest.fixture
def two_cores(monkeypatch):
    """Workers are processes on any machine the suite runs on."""
    monkeypatch.setattr(packscan, "_cores", lambda: 2)


@pytest.fixture
def damaged(tmp_path):
    """Twelve packs of files (schema blobs apart from data), one data blob
    flipped, one pack cut short, one reference to a blob never stored."""
    r = Repository.create(LocalBackend(tmp_path / "repo"), PASSWORD, tmp_path / "cache",
                          pack_size=16 * 1024)
    files = []
    for i in range(40):
        data = os.urandom(3000 + i)
        files.append(r.put(FileBlob(b"f%d" % i, (Part(len(data), blob_ref=r.put_data(data)),)
                                    ).to_json()))
        if i % 8 == 7:
            r.flush()
    ghost = BlobRef.of(b"never stored")
    files.append(r.put(FileBlob(b"dangling", (Part(5, blob_ref=ghost),)).to_json()))
    r.put(DirectoryBlob(b"top", r.put(StaticSetBlob(tuple(files)).to_json())).to_json())
    r.flush()
    data_ref, loc = next((ref, loc) for ref, loc in r.enumerate() if loc.kind == KIND_DATA)
    path = tmp_path / "repo" / pack_name(loc.pack_id)
    raw = bytearray(path.read_bytes())
    raw[loc.offset + 1] ^= 0x01
    path.write_bytes(bytes(raw))
    cut = r.locate(files[30])
    path = tmp_path / "repo" / pack_name(cut.pack_id)
    path.write_bytes(path.read_bytes()[:cut.offset + cut.length + 10])  # header gone
    yield r
    r.close()


def _here(r: Repository) -> list:
    return [packscan.scan_pack(r.backend, r._data_key, pack_id, size)
            for pack_id, size in sorted(r.list_packs().items())]


def test_worker_processes_find_what_this_process_finds(damaged, two_cores):
    r = damaged
    with r.pack_scanner() as scanner:
        assert scanner.in_processes and scanner.workers == 2
        scans = list(scanner.scan(sorted(r.list_packs().items())))
    assert scans == _here(r)
    assert len(scans) >= 6
    assert sum(bool(s.bad) for s in scans) == 1
    assert sum(s.error is not None for s in scans) == 1
    assert any(s.refs for s in scans) and all(s.digest or s.error for s in scans)


class _DiesInWorkers(LocalBackend):
    """A worker that reads a pack dies, as under the OOM killer."""

    def __init__(self, root, parent: int):
        super().__init__(root)
        self.parent = parent

    def load(self, name, offset=0, length=None):
        if os.getpid() != self.parent:
            os._exit(9)
        return super().load(name, offset, length)


class _Connected(LocalBackend):
    """A backend whose copy in a forked process must not be used (a connection)."""

    reads_after_fork = False


@pytest.mark.parametrize("backend", [_DiesInWorkers, _Connected])
def test_without_workers_threads_do_the_same_check(damaged, tmp_path, two_cores, backend):
    expected = check_repository(damaged, read_data=True)
    damaged.close()
    made = (backend(tmp_path / "repo", os.getpid()) if backend is _DiesInWorkers
            else backend(tmp_path / "repo"))
    r = Repository.open(made, PASSWORD, tmp_path / "cache", lease=False)
    try:
        with r.pack_scanner() as scanner:
            assert scanner.in_processes == (backend is _DiesInWorkers)
            assert list(scanner.scan(sorted(r.list_packs().items()))) == _here(r)
            assert not scanner.in_processes  # (the dying workers left it to threads)
        report = check_repository(r, read_data=True)
    finally:
        r.close()
    assert report.problems == expected.problems and len(report.problems) >= 4
    assert report.bytes_read == expected.bytes_read


def test_one_core_scans_on_threads(damaged, monkeypatch):
    monkeypatch.setattr(packscan, "_cores", lambda: 1)
    with damaged.pack_scanner() as scanner:
        assert not scanner.in_processes
        assert list(scanner.scan(sorted(damaged.list_packs().items()))) == _here(damaged)
