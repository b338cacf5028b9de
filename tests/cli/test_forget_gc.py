"""forget, unforget, series delete, log --all and gc, as a user runs them."""

import os

from fstree import tree_state

MiB = 1024 * 1024


def _repo_size(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _snap(pkvc, src, series):
    return pkvc.ok("snapshot", src, "--series", series).out.strip()


def test_forget_unforget_gc_and_the_space_comes_back(initialized, tmp_path):
    pkvc = initialized
    src = tmp_path / "src"
    src.mkdir()
    (src / "small").write_text("stays")
    (src / "big").write_bytes(os.urandom(20 * MiB))
    a = _snap(pkvc, src, "home")
    (src / "big").unlink()
    b = _snap(pkvc, src, "home")
    kept = tree_state(src)

    pkvc.ok("forget", a)
    listed = pkvc.ok("log", "home", "--all", "--json").json()
    assert [(e["claim"], e["forgotten"]) for e in listed] == [(b, False), (a, True)]
    assert [e["claim"] for e in pkvc.ok("log", "home", "--json").json()] == [b]
    pkvc.ok("unforget", a)
    assert [e["claim"] for e in pkvc.ok("log", "home", "--json").json()] == [b, a]

    dry = pkvc.ok("forget", "home", "--keep-last", "1", "--dry-run", "--json").json()
    assert [d["keep"] for d in dry["decisions"]] == [True, False]
    assert dry["decisions"][0]["reasons"] == ["last snapshot"] and dry["delete_claims"] == []
    pkvc.ok("forget", "home", "--keep-last", "1")

    before = _repo_size(pkvc.repo)
    summary = pkvc.ok("gc", "--max-unused", "0", "--json").json()
    after = _repo_size(pkvc.repo)
    assert before - after > 19 * MiB and summary["bytes_unreachable"] == 0
    gone = pkvc("unforget", a)
    assert gone.code == 1 and "collected" in gone.err
    pkvc.ok("checkout", "home", "--output", tmp_path / "out")
    assert tree_state(tmp_path / "out") == kept
    pkvc.ok("check", "--read-data")


def test_blob_shared_by_two_series_survives_deleting_one(initialized, tmp_path):
    pkvc = initialized
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    shared = os.urandom(3 * MiB)
    (one / "shared.bin").write_bytes(shared)
    (two / "shared.bin").write_bytes(shared)
    (one / "only-one").write_bytes(os.urandom(MiB))
    _snap(pkvc, one, "one")
    _snap(pkvc, two, "two")
    pkvc.ok("series", "delete", "one")
    assert [s["name"] for s in pkvc.ok("series", "--json").json()] == ["two"]
    pkvc.ok("gc", "--max-unused", "0")
    pkvc.ok("checkout", "two", "--output", tmp_path / "out")
    assert (tmp_path / "out" / "shared.bin").read_bytes() == shared
    pkvc.ok("check", "--read-data")


def test_forget_needs_a_rule_or_a_snapshot(initialized, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _snap(initialized, src, "s")
    result = initialized("forget", "s")
    assert result.code in (1, 2) and "Traceback" not in result.err
    bad = initialized("forget", "s", "--keep-within", "soon")
    assert bad.code == 2 and "duration" in bad.err
