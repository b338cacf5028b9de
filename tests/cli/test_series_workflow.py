"""The seed's workflow, as a new user runs it, plus REV forms, excludes and exit 3."""

import os
import shutil
import subprocess
import sys

import pytest

from fstree import make_rich_tree, tree_state


@pytest.fixture
def two_snapshots(initialized, tmp_path):
    """A tagged series with two snapshots; the first tree is kept aside."""
    src = make_rich_tree(tmp_path / "src")
    first_state = tree_state(src)
    first = initialized.ok("snapshot", src, "--series", "home", "--tag", "laptop").out.strip()
    (src / "a.txt").write_bytes(b"changed\n")
    (src / "added.txt").write_bytes(b"new file\n")
    (src / "empty").unlink()
    second = initialized.ok("snapshot", src, "--series", "home").out.strip()
    return initialized, src, first_state, first, second


def test_seed_workflow(two_snapshots, tmp_path):
    pkvc, src, first_state, first, second = two_snapshots
    log = pkvc.ok("log", "home", "--json").json()
    assert [e["claim"] for e in log] == [second, first]
    assert all(e["verified"] for e in log) and log[0]["number"] == 0
    series = pkvc.ok("series", "--json").json()
    assert series[0]["name"] == "home" and series[0]["tags"] == ["laptop"]

    pkvc.ok("checkout", "home@1", "--output", tmp_path / "old")
    assert tree_state(tmp_path / "old") == first_state
    pkvc.ok("checkout", "home", "--output", tmp_path / "new")
    assert tree_state(tmp_path / "new") == tree_state(src)

    diff = pkvc.ok("diff", "home@1", "home@0", "--json").json()
    assert diff == {"added": ["added.txt"], "removed": ["empty"], "changed": ["a.txt"]}

    # the index is a cache: delete it and get the same answers
    shutil.rmtree(pkvc.cache)
    assert pkvc.ok("log", "home", "--json").json() == log
    pkvc.ok("checkout", "home@1", "--output", tmp_path / "old-again")
    assert tree_state(tmp_path / "old-again") == first_state
    pkvc.ok("check", "--read-data")


def test_every_rev_form(two_snapshots, tmp_path):
    pkvc, src, first_state, first, second = two_snapshots
    log = pkvc.ok("log", "home", "--json").json()
    first_root = log[1]["root"]

    def listed(spec):
        return {e["path"] for e in pkvc.ok("ls", spec, "--json").json()}

    assert "added.txt" in listed("home") and "added.txt" in listed("home@0")
    assert "added.txt" not in listed("home@1")
    assert listed(f"home@{{{log[1]['date']}}}") == listed("home@1")
    assert listed("home@{2999-01-01}") == listed("home@0")
    assert listed(first[:20]) == listed("home@1")          # claim ref prefix
    assert listed(first_root[:20]) == listed("home@1")     # root directory prefix
    assert listed("home@1:sub") == {"deep", "deep/h1", "h3", "dangling"}
    pkvc.ok("checkout", "home@1:a.txt", "--output", tmp_path / "one")
    assert (tmp_path / "one" / "a.txt").read_bytes() == b"hello\n"

    for bad, code in (("home@7", 2), ("nosuch", 2), ("home@x", 2), ("home:no/such", 1),
                      ("home@{1990-01-01}", 2)):
        result = pkvc("ls", bad)
        assert result.code == code, (bad, result.err)
        assert "Traceback" not in result.err and result.err.count("\n") == 1


def test_checkout_refuses_non_empty_dir(two_snapshots, tmp_path):
    pkvc = two_snapshots[0]
    out = tmp_path / "busy"
    out.mkdir()
    (out / "mine").write_text("keep")
    result = pkvc("checkout", "home", "--output", out)
    assert result.code == 2 and "--force" in result.err
    assert os.listdir(out) == ["mine"]


def test_unchanged_files_are_not_read(initialized, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}").write_bytes(os.urandom(2000))
    one = initialized.ok("snapshot", src, "--json").json()
    assert one["files_new"] == 50 and one["bytes_read"] == 100_000
    (src / "f7").write_bytes(os.urandom(3000))
    two = initialized.ok("snapshot", src, "--json").json()
    assert two["files_unchanged"] == 49 and two["files_changed"] == 1 and two["files_new"] == 0
    assert two["bytes_read"] == 3000
    three = initialized.ok("snapshot", src, "--json").json()
    assert three["bytes_read"] == 0 and three["bytes_added"] < 3000  # just the new claim
    assert three["series"] == str(src)  # the default series name is the absolute path


def test_excludes_pkvcignore_and_cachedir_tag(initialized, tmp_path):
    src = tmp_path / "src"
    for d in ("keep", "build", "cache", "docs/drafts"):
        (src / d).mkdir(parents=True)
    (src / "keep" / "k").write_text("k")
    (src / "build" / "out.o").write_text("o")
    (src / "notes.log").write_text("log")
    (src / "cache" / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n")
    (src / "cache" / "blob").write_text("cached")
    (src / "docs" / ".pkvcignore").write_text("drafts/\n")
    (src / "docs" / "drafts" / "d").write_text("d")
    (src / "docs" / "final").write_text("f")
    summary = initialized.ok("snapshot", src, "--exclude", "*.log", "-e", "build/", "--json").json()
    assert summary["excluded"] == 4
    paths = {e["path"] for e in initialized.ok("ls", str(src), "--json").json()}
    assert paths == {"keep", "keep/k", "docs", "docs/.pkvcignore", "docs/final"}


DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search"]


def test_unreadable_file_gives_exit_3_and_a_snapshot(initialized, tmp_path):
    """A mode-000 file really fails to open: as root, setpriv drops the
    capabilities that let root read anything (util-linux, always present)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "readable").write_text("fine")
    (src / "secret").write_text("nobody may read this")
    os.chmod(src / "secret", 0o000)
    if os.geteuid() == 0:
        run = lambda *a: subprocess.run(DROP_DAC + [sys.executable, "-m", "pkvc", *map(str, a)],  # noqa: E731
                                        env=initialized.env, capture_output=True, text=True,
                                        stdin=subprocess.DEVNULL, timeout=300)
    else:
        run = lambda *a: subprocess.run([sys.executable, "-m", "pkvc", *map(str, a)],  # noqa: E731
                                        env=initialized.env, capture_output=True, text=True,
                                        stdin=subprocess.DEVNULL, timeout=300)
    result = run("snapshot", src, "--json")
    assert result.returncode == 3, result.stderr
    assert "secret" in result.stderr and "Permission denied" in result.stderr
    listed = {e["path"] for e in initialized.ok("ls", str(src), "--json").json()}
    assert listed == {"readable"}
    assert initialized.ok("log", str(src), "--json").json()[0]["verified"]


@pytest.mark.parametrize("damage", ["deleted", "flipped"])
def test_checkout_restores_all_but_the_file_whose_data_is_lost(initialized, tmp_path, damage):
    """The pack holding big's data deleted, or one byte of it changed: big
    is named on stderr and left out, small comes back whole, exit 3."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "small").write_bytes(b"hi\n")
    initialized.ok("snapshot", src, "--series", "s")  # small's data in a pack of its own
    (src / "big").write_bytes(os.urandom(3_000_000))
    initialized.ok("snapshot", src, "--series", "s")
    pack = max((p for p in (initialized.repo / "packs").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    if damage == "deleted":
        pack.unlink()
    else:
        data = bytearray(pack.read_bytes())
        data[len(data) // 2] ^= 0xFF
        os.chmod(pack, 0o600)
        pack.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = initialized("checkout", "s", "--output", out)
    assert result.code == 3, result.err
    why = "is not in the repository" if damage == "deleted" else "failed authentication"
    first, summary = result.err.splitlines()
    assert first.startswith(f"pkvc: not restored {out / 'big'}: blob sha224-") and why in first
    assert summary == "pkvc: 1 entries could not be restored; everything else was"
    assert result.out.startswith("restored 1 files, 1 directories (3 B) into")
    want = tree_state(src)["entries"]
    assert tree_state(out)["entries"] == {k: v for k, v in want.items() if k != b"big"}

    as_json = initialized("checkout", "s", "--output", tmp_path / "again", "--json")
    assert as_json.code == 3 and as_json.json()["errors"] == [[str(tmp_path / "again" / "big"),
                                                               first.split(": ", 2)[2]]]


def test_attr_and_describe_at(two_snapshots):
    pkvc = two_snapshots[0]
    pn = pkvc.ok("series", "--json").json()[0]["permanode"]
    before = pkvc.ok("describe", pn, "--json").json()
    pkvc.ok("attr", pn, "tag", "second", "--add")
    now = pkvc.ok("describe", pn, "--json").json()["permanode"]["state"]["attributes"]
    assert now["tag"] == ["laptop", "second"]
    pkvc.ok("attr", pn, "tag", "--del")
    assert "tag" not in pkvc.ok("describe", pn, "--json").json()["permanode"]["state"]["attributes"]
    claims = before["permanode"]["history"]
    at = claims[-1]["claim"]["date"]
    then = pkvc.ok("describe", pn, "--at", at, "--json").json()["permanode"]["state"]["attributes"]
    assert then["tag"] == ["laptop"]
    text = pkvc.ok("describe", pn).out
    assert "title = home" in text and "set-attribute camliContent" in text
