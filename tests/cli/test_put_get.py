"""put / get / describe / check / reindex on a real repository, as a user runs them."""

import os
import shutil
from pathlib import Path

from fstree import make_rich_tree, tree_state
from pkvc.backends.local import LocalBackend
from pkvc.blobref import BlobRef
from pkvc.repo import Repository
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob
from pkvc.schema.staticset import StaticSetBlob
from pkvc.schema.parts import Part

from conftest import PASSWORD

MiB = 1024 * 1024


def _packs(repo: Path):
    return sorted(p for p in (repo / "packs").rglob("*") if p.is_file())


def _repo(pkvc) -> Repository:
    return Repository.open(LocalBackend(pkvc.repo), PASSWORD.encode(), pkvc.cache)


def test_rich_tree_round_trip(initialized, tmp_path):
    src = make_rich_tree(tmp_path / "src")
    ref = initialized.ok("put", src).out.strip()
    assert BlobRef.parse(ref)
    initialized.ok("get", ref, "--output", tmp_path / "dst")
    assert tree_state(tmp_path / "dst") == tree_state(src)
    initialized.ok("check", "--read-data")


def test_same_tree_again_writes_no_pack_data(initialized, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(300_000))
    first = initialized.ok("put", src).out
    packs = _packs(initialized.repo)
    again = initialized.ok("put", src, "--json").json()
    assert again["results"][0]["ref"] == first.strip()
    assert again["added"]["blobs"] == 0
    assert _packs(initialized.repo) == packs


def test_raw_blob_and_file_contents_to_stdout(initialized, tmp_path):
    f = tmp_path / "file.bin"
    f.write_bytes(os.urandom(5000))
    ref = initialized.ok("put", f).out.strip()
    raw = initialized.ok("get", ref, binary=True).out
    assert raw.startswith(b'{"camliVersion": 1,') and BlobRef.of(raw) == BlobRef.parse(ref)
    assert initialized.ok("get", ref, "--contents", binary=True).out == f.read_bytes()
    described = initialized.ok("describe", ref[:20], "--json").json()
    assert described["camli_type"] == "file" and described["json"]["fileName"] == "file.bin"


def test_flipped_byte_found_by_check_and_reported_by_get(initialized, tmp_path):
    f = tmp_path / "precious"
    f.write_bytes(os.urandom(100_000))
    ref = initialized.ok("put", f).out.strip()
    initialized.ok("check", "--read-data")
    with _repo(initialized) as repo:  # the file's one chunk (schema blobs have packs of their own)
        (part,) = FileBlob.from_json(repo.get(BlobRef.parse(ref))).parts
        pack_id = repo.locate(part.blob_ref).pack_id
    (pack,) = [p for p in _packs(initialized.repo) if p.name == pack_id]
    data = bytearray(pack.read_bytes())
    data[50_000] ^= 0x10
    pack.write_bytes(bytes(data))
    before = sorted(p.name for p in initialized.repo.rglob("*"))
    result = initialized("check", "--read-data")
    assert result.code == 1
    assert pack.name in result.err and "damaged" in result.err
    got = initialized("get", ref, "--output", tmp_path / "out")  # the file is named, not written
    assert got.code == 3 and "Traceback" not in got.err
    assert got.err.startswith(f"pkvc: not restored {tmp_path / 'out' / 'precious'}: blob sha224-")
    assert "failed authentication" in got.err or "does not match" in got.err
    assert os.listdir(tmp_path / "out") == []
    streamed = initialized("get", ref, "--contents", binary=True)  # a stream cannot skip: it stops
    assert streamed.code == 1 and b"failed authentication" in streamed.err.encode()
    assert sorted(p.name for p in initialized.repo.rglob("*")) == before
    assert initialized("check").code == 0  # headers intact: only --read-data sees it


def test_deleted_index_rebuilds_and_everything_comes_back(initialized, tmp_path):
    src = make_rich_tree(tmp_path / "src")
    ref = initialized.ok("put", src).out.strip()
    shutil.rmtree(initialized.cache)
    initialized.ok("get", ref, "--output", tmp_path / "dst")
    assert tree_state(tmp_path / "dst") == tree_state(src)
    report = initialized.ok("reindex", "--json").json()
    # the signer key; the tree: its file data, its schema blobs (packs of their own)
    assert report["packs_added"] == 3 and report["blobs_added"] > 10


def test_directory_of_10001_entries(initialized, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10_001):
        (src / f"f{i:05d}").write_bytes(b"%d" % (i % 7))
    ref = initialized.ok("put", src).out.strip()
    with _repo(initialized) as repo:
        top = DirectoryBlob.from_json(repo.get(BlobRef.parse(ref)))
        entries = StaticSetBlob.from_json(repo.get(top.entries))
        assert len(entries.merge_sets) == 2
    initialized.ok("get", ref, "--output", tmp_path / "dst")
    assert sorted(os.listdir(tmp_path / "dst")) == sorted(os.listdir(src))


def test_insertion_in_a_50_mib_file_adds_only_a_few_chunks(initialized, tmp_path):
    big = tmp_path / "big.bin"
    data = os.urandom(50 * MiB)
    big.write_bytes(data)
    initialized.ok("put", big)
    big.write_bytes(data[:20 * MiB] + os.urandom(100) + data[20 * MiB:])
    added = initialized.ok("put", big, "--json").json()["added"]
    # one or two new chunks of ~1 MiB plus the new file blob
    assert 2 <= added["blobs"] <= 4
    assert added["raw_bytes"] < 9 * MiB


def test_unreadable_file_exit_3_and_the_rest_is_stored(initialized, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "fine").write_bytes(b"ok")
    os.mkfifo(src / "pipe")
    os.mknod(src / "dev", 0o600 | 0o020000, os.makedev(1, 3))  # a char device is reported
    result = initialized("put", src)
    assert result.code == 3
    assert "dev" in result.err
    ref = result.out.strip()
    initialized.ok("get", ref, "--output", tmp_path / "dst")
    assert (tmp_path / "dst" / "fine").read_bytes() == b"ok"


def test_hostile_names_in_crafted_blobs_refused(initialized, tmp_path):
    with _repo(initialized) as repo:
        payload = repo.put_data(b"pwned")
        refs = {}
        for label, name in (("dotdot", b".."), ("slash", b"../../escape"), ("abs", b"/tmp/abs")):
            f = repo.put(FileBlob(name, (Part(5, blob_ref=payload),)).to_json())
            members = repo.put(StaticSetBlob(members=(f,)).to_json())
            refs[label] = repo.put(DirectoryBlob(b"top", members).to_json())
    arena = tmp_path / "arena"
    for label, ref in refs.items():
        out = arena / label / "out"
        out.parent.mkdir(parents=True)
        result = initialized("get", str(ref), "--output", out)
        assert result.code == 1, result.err
        assert "Traceback" not in result.err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() == b"pwned"]
    assert written == []
    assert not Path("/tmp/abs").exists()


def test_non_empty_output_refused_without_force(initialized, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    ref = initialized.ok("put", f).out.strip()
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine").write_bytes(b"keep me")
    result = initialized("get", ref, "--output", out)
    assert result.code == 2 and "--force" in result.err
    initialized.ok("get", ref, "--output", out, "--force")
    assert (out / "mine").read_bytes() == b"keep me" and (out / "f").read_bytes() == b"x"
