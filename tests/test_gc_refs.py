"""The refs cache: what each schema blob references, kept by the writer and by gc.

Rows are only ever a faster way to learn what parsing the blob would give, so
they must agree with `walk_refs` everywhere, and gc must decide the same with
or without them.
"""

import shutil

from fstree import make_rich_tree
from gc_support import PASSWORD, stored_refs, tick, write_tree
from pkvc.backends.local import LocalBackend
from pkvc.blobref import BlobRef
from pkvc.check import check_repository
from pkvc.chunker import KiB, ChunkerParams
from pkvc.errors import SchemaError
from pkvc.gc import gc
from pkvc.identity import store_identity
from pkvc.pack import KIND_DATA, pack_name
from pkvc.repo import REFS_TABLE, Repository
from pkvc.schema.anyblob import parse_blob, walk_refs
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob, SpecialBlob, SymlinkBlob
from pkvc.schema.parts import BytesBlob
from pkvc.schema.staticset import StaticSetBlob
from pkvc.claims import add_delete_claim
from pkvc.series import create_series, record_snapshot
from pkvc.tree import put_path
from vectors import vector_files

SMALL = ChunkerParams(1 * KiB, 4 * KiB, 16 * KiB)


def _parsed(repo: Repository, key: bytes) -> list[bytes]:
    try:
        return [r.to_key() for r in walk_refs(repo.get(BlobRef.from_key(key)))]
    except (SchemaError, ValueError, TypeError):
        return []


def _rows(repo: Repository) -> dict[bytes, list[bytes]]:
    keys = [key for key, _ in repo.cache_table(REFS_TABLE).scan()]
    return dict(zip(keys, repo.known_refs(keys)))


def _empty_rows(repo: Repository) -> None:
    table = repo.cache_table(REFS_TABLE)
    for key, _ in list(table.scan()):
        table.delete(key)
    table.flush()


def test_the_refs_a_writer_declares_are_what_parsing_gives_on_every_vector():
    """tree.py hands `blob.refs()` with `blob.to_json()`: the two must agree."""
    checked = 0
    for path in vector_files("**/*.json"):
        try:
            blob = parse_blob(path.read_bytes())
        except (SchemaError, ValueError, TypeError):
            continue
        if isinstance(blob, (FileBlob, BytesBlob, DirectoryBlob, SymlinkBlob, SpecialBlob,
                             StaticSetBlob)):
            assert walk_refs(blob.to_json()) == blob.refs(), path
            checked += 1
    if vector_files("**/*.json"):
        assert checked > 0


def test_rows_of_a_stored_rich_tree_agree_with_parsing(repo, tmp_path):
    put_path(make_rich_tree(tmp_path / "src"), repo, chunker=SMALL, max_parts=3,
             max_set_members=4)
    repo.flush()
    rows = _rows(repo)
    assert len(rows) > 20  # files, bytes, directories, symlinks...
    schema = [key for key, loc in repo.index.all_blobs() if loc.kind != KIND_DATA]
    assert set(schema) <= set(rows)  # every one, static-sets and their sub-sets too
    for key in schema:
        assert rows[key] == _parsed(repo, key)
    assert any(rows[k] for k in rows)  # and some of them do reference something


def test_a_ref_too_long_for_a_row_gets_none(repo):
    repo.record_refs(b"\x01" * 29, [b"\x02" * 300])
    assert repo.known_refs([b"\x01" * 29]) == [None]
    repo.record_refs(b"\x01" * 29, [])
    assert repo.known_refs([b"\x01" * 29]) == [[]]


def test_known_refs_answers_many_keys_from_stored_and_buffered_rows(repo):
    """In the order asked, whatever the key order, rows written or not."""
    stored = {bytes([i]) * 29: [bytes([i + 1]) * 29, b"\x07" * 33] for i in range(9, 0, -1)}
    for key, held in stored.items():
        repo.record_refs(key, held)
    repo.index.flush()
    repo.record_refs(b"\x05" * 29, [b"\x06" * 29])  # buffered over a stored row
    asked = [b"\x03" * 29, b"\xee" * 29, b"\x05" * 29, b"\x01" * 29]
    assert repo.known_refs(asked) == [stored[b"\x03" * 29], None, [b"\x06" * 29],
                                      stored[b"\x01" * 29]]


def _history(repo, signer, src):
    """Two snapshots sharing some files, the first forgotten."""
    clock = tick()
    series = create_series(repo, signer, "data", (), clock)
    shared = {f"keep/{i}.txt": b"kept %d " % i * 300 for i in range(12)}
    roots = []
    for n, extra in enumerate(({f"old/{i}": b"old %d " % i * 500 for i in range(10)},
                               {f"new/{i}": b"new %d " % i * 500 for i in range(10)})):
        shutil.rmtree(src, ignore_errors=True)
        write_tree(src, {**shared, **extra})
        root = put_path(src, repo, chunker=SMALL, max_parts=3, max_set_members=4).ref
        repo.flush()
        roots.append(record_snapshot(repo, signer, series, root, clock))
    add_delete_claim(repo, signer, roots[0], clock)
    repo.flush()


def test_gc_decides_the_same_without_rows_and_fills_them(repo_path, cache_dir, repo_signer,
                                                         tmp_path):
    repo = Repository.create(LocalBackend(repo_path), PASSWORD, cache_dir, pack_size=16 * 1024)
    store_identity(repo, repo_signer.fingerprint, repo_signer.public_key,
                   repo_signer.home.export_secret_key(repo_signer.fingerprint), source="generated")
    _history(repo, repo_signer, tmp_path / "src")
    repo.close()
    shutil.copytree(repo_path, tmp_path / "twin")
    shutil.copytree(cache_dir, tmp_path / "twin-cache")

    with_rows = Repository.open(LocalBackend(repo_path), PASSWORD, cache_dir)
    without = Repository.open(LocalBackend(tmp_path / "twin"), PASSWORD, tmp_path / "twin-cache")
    try:
        assert _rows(with_rows)
        _empty_rows(without)
        assert not _rows(without)
        a, b = gc(with_rows, max_unused=0), gc(without, max_unused=0)
        assert a.live_blobs == b.live_blobs and a.bytes_freed > 0
        assert stored_refs(with_rows) == stored_refs(without)
        refilled = _rows(without)
        assert refilled  # gc recorded what it read
        for key, held in refilled.items():
            assert held == _parsed(without, key)
    finally:
        with_rows.close()
        without.close()


def test_check_still_reads_a_damaged_schema_blob_that_has_a_row(repo, repo_path, tmp_path):
    write_tree(tmp_path / "src", {f"f{i}": b"content %d" % i * 100 for i in range(5)})
    put_path(tmp_path / "src", repo)
    repo.flush()
    rows = _rows(repo)
    files = [k for k, held in rows.items()
             if repo.locate(BlobRef.from_key(k)).kind != KIND_DATA and held
             and b'"file"' in repo.get(BlobRef.from_key(k))]
    victim = BlobRef.from_key(files[0])
    loc = repo.locate(victim)
    path = repo_path / pack_name(loc.pack_id)
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x01
    path.write_bytes(bytes(data))
    for read_data in (True, False):
        problems = check_repository(repo, read_data=read_data).problems
        assert any(p.startswith(f"schema blob {victim}:") for p in problems), problems
