"""kill -9 of gc at every step boundary and at random times: the repository
stays sound (`check --read-data`), every kept snapshot restores byte for
byte, forgotten ones stay forgotten, and the next gc finishes the job."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gc_support import (PASSWORD, assert_checks, assert_restores, digest_files, open_reader,
                        reachable_refs, stored_refs, tick, write_tree)
from pkvc.backends.local import LocalBackend
from pkvc.claims import add_delete_claim
from pkvc.gc import claim_roots, gc
from pkvc.identity import store_identity
from pkvc.repo import Repository
from pkvc.series import create_series, list_series, record_snapshot, snapshots
from pkvc.tree import put_path


# Runs gc; the fault hook kills the process with SIGKILL at the given
# occurrence of the given step ("trace" records the steps instead, "slow"
# sleeps a little at each so that a random kill can land anywhere).
GC_SCRIPT = r"""
import json, os, signal, sys, time
from pathlib import Path
from pkvc.backends.local import LocalBackend
from pkvc.gc import gc
from pkvc.repo import Repository
repo_path, cache, mode, step, nth = sys.argv[1:6]
seen = []
def fault(name):
    seen.append(name)
    if mode == "slow":
        time.sleep(0.03)
    elif mode == "kill" and name == step and seen.count(name) == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)
repo = Repository.open(LocalBackend(repo_path), PASSWORD, Path(cache))
summary = gc(repo, max_unused=0, fault=fault, wait=20, poll=0.05)
repo.close()
print(json.dumps({"steps": seen, "deferred": summary.deferred, "plan": summary.plan}))
""".replace("PASSWORD", repr(PASSWORD))


@pytest.fixture(scope="module")
def template(tmp_path_factory, repo_signer):
    """A repository with kept, forgotten, unforgotten and deleted snapshots."""
    base = tmp_path_factory.mktemp("gc-crash")
    repo_path, cache = base / "repo", base / "cache"
    repo = Repository.create(LocalBackend(repo_path), PASSWORD, cache, pack_size=48 * 1024)
    store_identity(repo, repo_signer.fingerprint, repo_signer.public_key,
                   repo_signer.home.export_secret_key(repo_signer.fingerprint))
    clock, rnd = tick(), random.Random(7)

    def data(n):
        return rnd.randbytes(n)
    docs = create_series(repo, repo_signer, "docs", (), clock)
    tmp = create_series(repo, repo_signer, "tmp", (), clock)
    a, b = data(30_000), data(20_000) + b"z" * 20_000
    versions = {
        "s1": {"a": a, "b": b, "gone-1": data(120_000), "dir/x": data(9000)},
        "s2": {"a": a, "b": b, "kept-2": data(60_000), "dir/x": data(9000)},
        "s3": {"a": a, "new-3": data(40_000), "dir/y": data(5000)},
    }
    src = base / "src"
    claims, roots = {}, {}
    for name, files in versions.items():
        write_tree(src, files)
        roots[name] = put_path(src, repo).ref
        repo.flush()
        claims[name] = record_snapshot(repo, repo_signer, docs, roots[name], clock)
    write_tree(src, {"t": data(70_000)})
    t_root = put_path(src, repo).ref
    repo.flush()
    t_claim = record_snapshot(repo, repo_signer, tmp, t_root, clock)
    deletes = [add_delete_claim(repo, repo_signer, claims["s1"], clock)]  # forget s1
    deletes.append(add_delete_claim(repo, repo_signer, claims["s2"], clock))  # forget s2 ...
    deletes.append(add_delete_claim(repo, repo_signer, deletes[-1], clock))  # ... unforget it
    deletes.append(add_delete_claim(repo, repo_signer, tmp.permanode, clock))  # delete tmp
    repo.close()
    return {
        "base": base, "docs": docs.permanode,
        "kept": {claims[n]: (roots[n], digest_files(versions[n])) for n in ("s2", "s3")},
        "gone": [claims["s1"], roots["s1"], t_claim, t_root, tmp.permanode, *deletes],
    }


def _copy(template, tmp_path) -> tuple[Path, Path]:
    shutil.copytree(template["base"] / "repo", tmp_path / "repo")
    shutil.copytree(template["base"] / "cache", tmp_path / "cache")
    return tmp_path / "repo", tmp_path / "cache"


def _gc_process(repo_path, cache, mode="none", step="", nth=1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", GC_SCRIPT, str(repo_path), str(cache), mode,
                             step, str(nth)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _verify(template, repo_path, cache, out: Path, finished: bool) -> None:
    """Sound, every kept snapshot restores; once finished, forgotten ones are gone."""
    assert_checks(repo_path, cache)
    with open_reader(repo_path, cache) as r:
        assert {s.claim for s in snapshots(r, template["docs"])} == set(template["kept"])
        assert [s.name for s in list_series(r)] == ["docs"]
        for i, (root, files) in enumerate(template["kept"].values()):
            assert_restores(r, root, files, out / str(i))
        if finished:
            stored = stored_refs(r)
            assert not stored & set(template["gone"])
            assert stored == reachable_refs(r, claim_roots(r))
            assert list((repo_path / "plans").glob("*")) == []


def _finish(template, repo_path, cache, out: Path) -> None:
    """The next gc completes whatever the killed one left, cleanly."""
    with Repository.open(LocalBackend(repo_path), PASSWORD, cache) as repo:
        summary = gc(repo, max_unused=0, wait=20, poll=0.05)
    assert not summary.deferred and not summary.skipped
    _verify(template, repo_path, cache, out, finished=True)


def _trace(template, tmp_path) -> list[str]:
    repo_path, cache = _copy(template, tmp_path / "trace")
    proc = _gc_process(repo_path, cache, "trace")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)["steps"]


def _kill_points(steps: list[str]) -> list[tuple[str, int]]:
    """Each step once, the repeated ones (per pack) at their first, middle and last time."""
    points = []
    for step in dict.fromkeys(steps):
        n = steps.count(step)
        points += [(step, k) for k in sorted({1, (n + 1) // 2, n})]
    return points


def test_kill_at_every_step_boundary(template, tmp_path):
    steps = _trace(template, tmp_path)
    assert steps[0] == "locked" and steps[-1] == "done"
    assert steps.count("deleted-pack") >= 3  # a real sweep
    for n, (step, nth) in enumerate(_kill_points(steps)):
        case = tmp_path / f"{n}-{step}-{nth}"
        repo_path, cache = _copy(template, case)
        proc = _gc_process(repo_path, cache, "kill", step, nth)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, f"{step}#{nth}: {err.decode()}"
        _verify(template, repo_path, cache, case / "out-killed", finished=False)
        _finish(template, repo_path, cache, case / "out-finished")


def test_kill_while_finishing_a_dead_gcs_plan(template, tmp_path):
    repo_path, cache = _copy(template, tmp_path)
    for step, nth in (("waiting", 1), ("resume-waited", 1), ("deleted-pack", 2)):
        proc = _gc_process(repo_path, cache, "kill", step, nth)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, f"{step}: {err.decode()}"
        _verify(template, repo_path, cache, tmp_path / f"out-{step}", finished=False)
    _finish(template, repo_path, cache, tmp_path / "out")


def test_kill_at_random_times(template, tmp_path):
    rnd = random.Random(20261123)
    repo_path, cache = _copy(template, tmp_path / "timing")
    started = time.monotonic()
    proc = _gc_process(repo_path, cache, "slow")
    proc.communicate(timeout=120)
    full = time.monotonic() - started
    for n in range(8):
        case = tmp_path / f"random-{n}"
        repo_path, cache = _copy(template, case)
        proc = _gc_process(repo_path, cache, "slow")
        time.sleep(rnd.uniform(0.1, full))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=120)
        _verify(template, repo_path, cache, case / "out-killed", finished=False)
        _finish(template, repo_path, cache, case / "out-finished")
