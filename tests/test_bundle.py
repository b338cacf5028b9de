"""Offline bundles and the sharing key: round trip, wrong recipient, tampering, streaming."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from pkvc import bundle, pull, restore, sharekey, tree
from pkvc.backends.local import LocalBackend
from pkvc.bundle import BundleError, NotForUsError
from pkvc.errors import UsageError
from pkvc.identity import store_identity
from pkvc.repo import Repository
from pkvc.series import find_series, latest_snapshot
from pkvc.share import create_share
from pkvc.staging import StagingArea
from tests.conftest import PASSWORD

MiB = 1 << 20


@pytest.fixture
def other(tmp_path, cache_dir, repo_signer):
    """A second repository (the recipient) with its own identity."""
    made = []

    def make(name: str) -> Repository:
        r = Repository.create(LocalBackend(tmp_path / name), PASSWORD, cache_dir)
        store_identity(r, repo_signer.fingerprint, repo_signer.public_key,
                       repo_signer.home.export_secret_key(repo_signer.fingerprint))
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


@pytest.fixture
def shared_tree(tmp_path, signing_repo, repo_signer):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello\n")
    (src / "sub" / "big").write_bytes(os.urandom(2 * MiB))
    os.symlink("a.txt", src / "link")
    root = tree.put_path(src, signing_repo).ref
    signing_repo.flush()
    share = create_share(signing_repo, repo_signer, root)
    return src, root, share


def snapshot_of(path):
    return sorted((p.relative_to(path).as_posix(), p.is_symlink(),
                   os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None)
                  for p in path.rglob("*"))


def packs(repo: Repository) -> dict:
    return repo.list_packs()


def test_sharing_key_is_made_once_and_kept_sealed(repo):
    first = sharekey.sharing_key(repo)
    assert sharekey.sharing_key(repo) == first
    assert first.text.startswith("x25519-") and len(first.text) == 7 + 64
    assert sharekey.parse_public_key(first.text) == first.public
    names = [i.name for i in repo.backend.list("sharing-keys/")]
    assert names == [f"sharing-keys/{first.id}"]
    assert first.secret not in repo.backend.load(names[0])
    with pytest.raises(UsageError):
        sharekey.parse_public_key("x25519-abc")


def test_round_trip(tmp_path, signing_repo, other, shared_tree, cache_dir):
    src, root, share = shared_tree
    recipient = other("recipient")
    key = sharekey.sharing_key(recipient)
    path = tmp_path / "out.pkb"
    summary = bundle.write_bundle(signing_repo, share, key.public, path)
    assert summary.blobs >= 6 and summary.size == path.stat().st_size
    incoming = bundle.read_bundle(recipient, path, cache_dir)
    assert incoming.share.ref == share and incoming.share.target == root
    with recipient_signer(recipient) as signer:
        result = pull.commit(recipient, signer, incoming, "from-a-friend")
    assert result.snapshot and result.source.startswith("bundle:")
    series = find_series(recipient, "from-a-friend")
    assert latest_snapshot(recipient, series).root == root
    restore.restore(root, tmp_path / "out", recipient)
    assert snapshot_of(tmp_path / "out") == snapshot_of(src)
    assert not incoming.stage.exists()


def recipient_signer(repo):
    from pkvc.identity import open_identity
    return open_identity(repo)


def test_wrong_recipient_cannot_open_it(tmp_path, signing_repo, other, shared_tree, cache_dir):
    _, _, share = shared_tree
    meant, stranger = other("meant"), other("stranger")
    sharekey.sharing_key(stranger)
    path = tmp_path / "out.pkb"
    bundle.write_bundle(signing_repo, share, sharekey.sharing_key(meant).public, path)
    before = packs(stranger)
    with pytest.raises(NotForUsError):
        bundle.read_bundle(stranger, path, cache_dir)
    assert packs(stranger) == before


@pytest.mark.parametrize("where", ["magic", "sealed-key", "stream-header", "first-frame",
                                   "middle", "last-byte", "truncated", "appended",
                                   "frame-length"])
def test_tampered_bundle_is_refused_with_nothing_stored(tmp_path, signing_repo, other,
                                                        shared_tree, cache_dir, where):
    _, _, share = shared_tree
    recipient = other("recipient")
    path = tmp_path / "out.pkb"
    bundle.write_bundle(signing_repo, share, sharekey.sharing_key(recipient).public, path)
    data = bytearray(path.read_bytes())
    head = len(bundle.MAGIC) + 2 + 80
    flips = {"magic": 0, "sealed-key": len(bundle.MAGIC) + 10, "stream-header": head + 3,
             "first-frame": head + 24 + 4 + 5, "middle": len(data) // 2, "last-byte": len(data) - 1,
             "frame-length": head + 24 + 1}
    if where == "truncated":
        data = data[:len(data) - 100]
    elif where == "appended":
        data += b"\0" * 64
    else:
        data[flips[where]] ^= 0x01
    path.write_bytes(bytes(data))
    before = packs(recipient)
    with pytest.raises((BundleError, NotForUsError)):
        bundle.read_bundle(recipient, path, cache_dir)
    assert packs(recipient) == before
    assert find_series(recipient, f"shared-{share.hexdigest[:12]}") is None
    stage = StagingArea(recipient, cache_dir, f"bundle-sha224-{share.hexdigest}")
    assert not stage.exists()


def test_bundles_stream_one_blob_at_a_time(tmp_path, signing_repo, other, repo_signer, cache_dir):
    src = tmp_path / "big"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(24 * MiB))
    root = tree.put_path(src, signing_repo).ref
    signing_repo.flush()
    share = create_share(signing_repo, repo_signer, root)
    recipient = other("recipient")
    key = sharekey.sharing_key(recipient)
    path = tmp_path / "big.pkb"
    tracemalloc.start()
    try:
        bundle.write_bundle(signing_repo, share, key.public, path)
        _, written_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        incoming = bundle.read_bundle(recipient, path, cache_dir)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written_peak < 16 * MiB and read_peak < 16 * MiB, (written_peak, read_peak)
    assert incoming.fetched_bytes > 24 * MiB
    incoming.stage.discard()


def test_commit_refuses_an_incomplete_graph_or_an_own_series(tmp_path, signing_repo, other,
                                                              shared_tree, cache_dir, repo_signer):
    src, root, share = shared_tree
    recipient = other("recipient")
    path = tmp_path / "out.pkb"
    bundle.write_bundle(signing_repo, share, sharekey.sharing_key(recipient).public, path)
    incoming = bundle.read_bundle(recipient, path, cache_dir)
    own = tmp_path / "own"
    own.mkdir()
    (own / "x").write_text("mine")
    from pkvc.snapshot import take_snapshot
    with recipient_signer(recipient) as signer:
        take_snapshot(recipient, signer, own, "mine")
        before = packs(recipient)
        with pytest.raises(UsageError, match="your own snapshots"):
            pull.commit(recipient, signer, incoming, "mine")
        victim = next(p for p in incoming.stage.path.iterdir())
        victim.unlink()  # one blob of the graph is gone
        with pytest.raises(pull.PullError, match="missing"):
            pull.commit(recipient, signer, incoming, "theirs")
    assert packs(recipient) == before and find_series(recipient, "theirs") is None
    assert not incoming.stage.exists()
