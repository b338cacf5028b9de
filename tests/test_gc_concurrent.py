"""A snapshot writer and a gc run side by side, as separate processes, for
many rounds with varied timings: nothing a snapshot references is lost.

The writer toggles files in and out of its snapshots (with excludes, so the
file cache offers the old file blobs again) and forgets all but its two
newest snapshots every round: the blobs of a forgotten snapshot become
garbage and then, a round later, are needed again — the classic race where
a writer deduplicates against a blob that gc judged unreachable.
"""

from __future__ import annotations

import json
import subprocess
import sys

from gc_support import PASSWORD, assert_checks, assert_restores, open_reader, stored_refs
from pkvc.backends.local import LocalBackend
from pkvc.blobref import BlobRef
from pkvc.gc import gc
from pkvc.identity import store_identity
from pkvc.repo import Repository
from pkvc.series import find_series, snapshots

ROUNDS = 24

WRITER = r"""
import hashlib, json, os, random, sys, time
from pathlib import Path
from pkvc.backends.local import LocalBackend
from pkvc.claims import add_delete_claim
from pkvc.identity import open_identity
from pkvc.repo import Repository
from pkvc.restore import restore
from pkvc.series import find_series, snapshots
from pkvc.snapshot import take_snapshot
repo_path, cache, src, manifest_path, rounds, seed = sys.argv[1:7]
rnd = random.Random(int(seed))
src = Path(src)
names = [f"f{i:02d}.bin" for i in range(12)]
contents = {n: rnd.randbytes(rnd.randint(20_000, 90_000)) for n in names}
for n in names:
    (src / n).write_bytes(contents[n])
def open_repo():
    return Repository.open(LocalBackend(repo_path), PASSWORD, Path(cache))
manifest, errors = {}, []
first = open_repo()
with open_identity(first) as signer:
    first.close()
    for i in range(int(rounds)):
        if i % 5 == 4:  # now and then new content, or an old content back under a new name
            n = rnd.choice(names)
            contents[n] = rnd.randbytes(50_000) if rnd.random() < 0.5 else contents[rnd.choice(names)]
            (src / n).write_bytes(contents[n])
        excluded = [n for j, n in enumerate(names) if (i + j) % 3 == 0]
        repo = open_repo()
        summary = take_snapshot(repo, signer, src, "work", excludes=excluded)
        expected = {n: hashlib.sha256(contents[n]).hexdigest() for n in names if n not in excluded}
        manifest[summary.claim] = {"root": summary.root, "files": expected}
        series = find_series(repo, "work")
        for old in snapshots(repo, series)[2:]:
            out = Path(manifest_path + f".check-{i}-{old.claim.hexdigest[:8]}")
            try:  # it must still restore whole, right up to the moment it is forgotten
                result = restore(old.root, out, repo)  # a lost blob is reported, not raised
                if result.errors:
                    errors.append(f"{old.claim}: not restored: {result.errors[:3]}")
                got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
                if got != manifest[str(old.claim)]["files"]:
                    errors.append(f"{old.claim}: restored files differ")
            except Exception as e:
                errors.append(f"{old.claim}: {type(e).__name__}: {e}")
            add_delete_claim(repo, signer, old.claim)
        repo.close()
        tmp = Path(manifest_path + ".tmp")
        tmp.write_text(json.dumps({"snapshots": manifest, "errors": errors}))
        os.replace(tmp, manifest_path)
        time.sleep(rnd.uniform(0, 0.15))
Path(manifest_path + ".done").write_text("done")
""".replace("PASSWORD", repr(PASSWORD))

GC_LOOP = r"""
import json, os, random, sys, time
from pathlib import Path
from pkvc.backends.local import LocalBackend
from pkvc.gc import gc
from pkvc.repo import Repository
repo_path, cache, done_path, log_path, min_rounds, seed = sys.argv[1:7]
rnd = random.Random(int(seed))
rounds = 0
with open(log_path, "w") as log:
    while rounds < int(min_rounds) or not os.path.exists(done_path):
        repo = Repository.open(LocalBackend(repo_path), PASSWORD, Path(cache))
        s = gc(repo, max_unused=rnd.choice([0, 0, 5, 30]), wait=rnd.choice([0.05, 5, 20]), poll=0.02)
        repo.close()
        log.write(json.dumps(s.__dict__) + "\n")
        log.flush()
        rounds += 1
        time.sleep(rnd.choice([0, 0.01, 0.05, 0.2]))
        if rounds > 400:
            break
""".replace("PASSWORD", repr(PASSWORD))


def test_snapshots_and_gc_side_by_side_lose_nothing(repo_path, cache_dir, repo_signer, tmp_path):
    repo = Repository.create(LocalBackend(repo_path), PASSWORD, cache_dir, pack_size=96 * 1024)
    store_identity(repo, repo_signer.fingerprint, repo_signer.public_key,
                   repo_signer.home.export_secret_key(repo_signer.fingerprint))
    repo.close()
    src = tmp_path / "src"
    src.mkdir()
    manifest, log = tmp_path / "manifest.json", tmp_path / "gc.log"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(repo_path), str(cache_dir),
                               str(src), str(manifest), str(ROUNDS), "11"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    collector = subprocess.Popen([sys.executable, "-c", GC_LOOP, str(repo_path), str(cache_dir),
                                  str(manifest) + ".done", str(log), "20", "12"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, werr = writer.communicate(timeout=600)
    _, gerr = collector.communicate(timeout=600)
    assert writer.returncode == 0, werr.decode()
    assert collector.returncode == 0, gerr.decode()

    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(runs) >= 20
    assert sum(r["packs_deleted"] + r["packs_rewritten"] for r in runs) > 0  # gc did collect
    assert any(r["waited_for"] for r in runs)  # and had to wait for the writer at times
    written = json.loads(manifest.read_text())
    assert written["errors"] == []
    recorded = written["snapshots"]
    assert len(recorded) == ROUNDS

    with Repository.open(LocalBackend(repo_path), PASSWORD, cache_dir) as r:
        final = gc(r, max_unused=0, wait=20, poll=0.02)
    assert not final.deferred and not final.skipped
    assert_checks(repo_path, cache_dir)
    with open_reader(repo_path, cache_dir) as r:
        kept = snapshots(r, find_series(r, "work"))
        assert len(kept) == 2  # the writer forgot all but its two newest
        for i, snap in enumerate(kept):
            entry = recorded[str(snap.claim)]
            assert str(snap.root) == entry["root"]
            assert_restores(r, snap.root, entry["files"], tmp_path / f"out-{i}")
        stored = stored_refs(r)
        forgotten = [BlobRef.parse(c) for c in recorded if c not in {str(s.claim) for s in kept}]
        assert not stored & set(forgotten)
