"""Repository: blobs by ref over packs, verified on the way in and out."""

import os
import shutil
import subprocess
import sys

import pytest

from pkvc.blobref import BlobRef
from pkvc.errors import (BlobNotFoundError, IntegrityError, NoRepositoryError,
                         RepositoryExistsError, WrongPasswordError)
from pkvc.backends.local import LocalBackend
from pkvc.pack import KIND_DATA, KIND_SCHEMA, KIND_SIGNED
from pkvc.repo import Repository, sniff_kind
from gc_support import remove_blobs

PASSWORD = b"correct horse battery staple"  # as in conftest.py


def _pack_files(repo_path):
    return sorted(p for p in (repo_path / "packs").rglob("*") if p.is_file())


def test_put_get_has_round_trip(repo):
    refs = {repo.put(os.urandom(n)): n for n in (0, 1, 100, 70000)}
    for ref, n in refs.items():
        assert repo.has(ref)
        assert len(repo.get(ref)) == n
    assert not repo.has(BlobRef.of(b"never stored"))
    with pytest.raises(BlobNotFoundError):
        repo.get(BlobRef.of(b"never stored"))


def test_put_with_wrong_ref_is_refused(repo):
    with pytest.raises(IntegrityError):
        repo.put(b"abc", ref=BlobRef.of(b"abd"))
    assert not repo.has(BlobRef.of(b"abc"))


def test_duplicate_put_writes_nothing(repo, repo_path):
    data = os.urandom(5000)
    repo.put(data)
    repo.flush()
    before = _pack_files(repo_path)
    repo.put(data)
    repo.flush()
    assert _pack_files(repo_path) == before


def test_persisted_across_open(repo, repo_path, reopen):
    ref = repo.put(b"hello")
    repo.close()
    assert reopen().get(ref) == b"hello"


def test_wrong_password_opens_nothing_and_writes_nothing(repo, repo_path, reopen):
    repo.put(b"x")
    repo.close()
    before = sorted(p.relative_to(repo_path) for p in repo_path.rglob("*"))
    with pytest.raises(WrongPasswordError):
        reopen(b"wrong")
    assert sorted(p.relative_to(repo_path) for p in repo_path.rglob("*")) == before


def test_init_twice_refused_and_missing_repo_reported(repo_path, cache_dir, repo):
    with pytest.raises(RepositoryExistsError):
        Repository.create(LocalBackend(repo_path), PASSWORD, cache_dir)
    with pytest.raises(NoRepositoryError):
        Repository.open(LocalBackend(repo_path.parent / "nothing"), PASSWORD, cache_dir)


def test_index_deleted_everything_comes_back(repo, repo_path, cache_dir, reopen):
    refs = [repo.put(os.urandom(2000)) for _ in range(50)]
    repo.close()
    shutil.rmtree(cache_dir)
    r = reopen()
    assert all(r.get(ref) for ref in refs)
    assert sum(1 for _ in r.enumerate()) == 50


def test_index_of_other_version_or_garbage_is_rebuilt(repo, repo_path, cache_dir, reopen):
    ref = repo.put(b"survivor")
    repo.close()
    db = next(cache_dir.rglob("db"))
    for f in db.iterdir():
        if f.suffix == ".sst" or f.name.startswith("MANIFEST"):
            f.write_bytes(b"garbage")
    assert reopen().get(ref) == b"survivor"


def test_stale_index_catches_up_with_packs_from_elsewhere(repo, repo_path, tmp_path, reopen):
    repo.put(b"first")
    repo.close()
    other = reopen(cache=tmp_path / "other-cache")  # another machine, another cache
    ref = other.put(b"written elsewhere")
    other.close()
    assert reopen().get(ref) == b"written elsewhere"


def test_flipped_byte_in_pack_is_refused_on_get(repo, repo_path, reopen):
    data = os.urandom(4000)
    ref = repo.put(data)
    repo.close()
    (pack,) = _pack_files(repo_path)
    raw = bytearray(pack.read_bytes())
    raw[100] ^= 0x01
    pack.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        reopen().get(ref)


def test_remove_rewrites_packs_and_frees_space(repo, repo_path):
    keep = [repo.put(os.urandom(3000)) for _ in range(10)]
    drop = [repo.put(os.urandom(3000)) for _ in range(10)]
    repo.flush()
    size_before = sum(p.stat().st_size for p in _pack_files(repo_path))
    freed = remove_blobs(repo, set(drop))
    size_after = sum(p.stat().st_size for p in _pack_files(repo_path))
    assert freed == size_before - size_after
    assert freed > 10 * 3000
    assert all(repo.get(r) for r in keep)
    assert not any(repo.has(r) for r in drop)


def test_packs_split_at_target_size(repo_path, cache_dir):
    r = Repository.create(LocalBackend(repo_path), PASSWORD, cache_dir, pack_size=64 * 1024)
    refs = [r.put(os.urandom(20000)) for _ in range(20)]
    r.close()
    assert len(_pack_files(repo_path)) >= 5
    r = Repository.open(LocalBackend(repo_path), PASSWORD, cache_dir)
    assert all(len(r.get(ref)) == 20000 for ref in refs)
    r.close()


def test_kind_sniffing():
    assert sniff_kind(b"hello") == KIND_DATA
    assert sniff_kind(b'{"camliVersion": 1,\n  "camliType": "file"}') == KIND_SCHEMA
    assert sniff_kind(b'{"camliVersion": 1,\n  "camliSigner": "x"\n,"camliSig":"abc"}\n') == KIND_SIGNED


_WRITER = """
import os, sys
from pathlib import Path
from pkvc.backends.local import LocalBackend
from pkvc.repo import Repository
r = Repository.open(LocalBackend(sys.argv[1]), b"%s", Path(sys.argv[2]))
for i in range(40):
    r.put(sys.argv[3].encode() + b"-" + str(i).encode() + os.urandom(3000))
    if i %% 10 == 9:
        r.flush()
r.close()
""" % PASSWORD.decode()


def test_concurrent_processes_share_one_index(repo, repo_path, cache_dir, reopen):
    """Two writers and this reader use one cache at once: no lock errors, nothing lost."""
    repo.put(b"seed")
    repo.flush()
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(repo_path), str(cache_dir), name],
                              stderr=subprocess.PIPE) for name in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    repo.close()
    r = reopen()
    assert sum(1 for _ in r.enumerate()) == 81


def test_cache_tables_are_separate_and_emptied_by_reindex(repo):
    a, b = repo.cache_table("a"), repo.cache_table("ab")
    a.put(b"k1", b"v1")
    a.put(b"k2", b"v2")
    b.put(b"k1", b"other")
    assert a.get(b"k1") == b"v1" and b.get(b"k1") == b"other"
    assert list(a.scan()) == [(b"k1", b"v1"), (b"k2", b"v2")]
    a.delete(b"k1")
    assert a.get(b"k1") is None and list(a.scan(b"k")) == [(b"k2", b"v2")]
    repo.reindex()
    assert list(repo.cache_table("a").scan()) == []


def test_index_of_another_format_version_is_rebuilt(repo, cache_dir, reopen):
    from rocksdict import Options, Rdict

    ref = repo.put(b"kept across versions")
    repo.close()
    db_path = next(cache_dir.rglob("db"))
    db = Rdict(str(db_path), Options(raw_mode=True))
    db[b"m:version"] = b"0"
    db[b"b" + ref.to_key()] = b"stale junk"
    db.close()
    r = reopen()
    assert r.index.was_reset
    assert r.get(ref) == b"kept across versions"
