"""Excludes: gitignore patterns, nested .pkvcignore files, CACHEDIR.TAG."""

from pkvc.excludes import CACHEDIR_SIGNATURE, Excluder


def _tree(root):
    for d in ("src/build", "src/keep", "logs", "cache", "fake-cache", "docs/drafts"):
        (root / d).mkdir(parents=True)
    (root / "cache" / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE + b"\n# made by a tool\n")
    (root / "fake-cache" / "CACHEDIR.TAG").write_bytes(b"not the signature")
    (root / "docs" / ".pkvcignore").write_text("drafts/\n*.tmp\n# comment\n")
    return root


def test_patterns_from_the_command_line(tmp_path):
    ex = Excluder(_tree(tmp_path), ["*.log", "src/build/", "/top-only"])
    assert ex(b"logs/a.log", False) and ex(b"a.log", False)
    assert ex(b"src/build", True)
    assert not ex(b"src/build", False)  # a file named build is not the directory pattern
    assert ex(b"top-only", False) and not ex(b"src/top-only", False)
    assert not ex(b"src/keep", True)


def test_pkvcignore_applies_to_its_subtree_only(tmp_path):
    ex = Excluder(_tree(tmp_path))
    assert ex(b"docs/drafts", True)
    assert ex(b"docs/x.tmp", False)
    assert not ex(b"x.tmp", False)  # outside docs/
    assert not ex(b"src/drafts", True)


def test_cachedir_tag_needs_the_signature(tmp_path):
    ex = Excluder(_tree(tmp_path))
    assert ex(b"cache", True)
    assert not ex(b"fake-cache", True)
    assert ex.excluded == 1
    assert not Excluder(tmp_path, exclude_caches=False)(b"cache", True)


def test_non_utf8_names(tmp_path):
    ex = Excluder(tmp_path, ["caf*"])
    assert ex(b"caf\xe9", False)


def test_nested_pkvcignore_files_both_apply_below_them(tmp_path):
    ex = Excluder(_tree(tmp_path))
    (tmp_path / "docs" / "sub").mkdir()
    (tmp_path / "docs" / "sub" / ".pkvcignore").write_text("*.bak\n/only-here\n")
    assert not ex(b"docs/sub", True)
    assert ex(b"docs/sub/a.bak", False) and ex(b"docs/sub/a.tmp", False)  # both files
    assert ex(b"docs/sub/only-here", False) and not ex(b"docs/sub/x/only-here", False)
    assert not ex(b"docs/a.bak", False)  # the deeper file does not apply above it


def test_the_tops_own_pkvcignore_applies_to_the_whole_snapshot(tmp_path):
    (_tree(tmp_path) / ".pkvcignore").write_text("*.iso\n/scratch/\n")
    ex = Excluder(tmp_path)
    assert ex(b"big.iso", False) and ex(b"src/keep/big.iso", False)
    assert ex(b"scratch", True) and not ex(b"src/scratch", True)
    assert ex(b"docs/x.tmp", False)  # the nested file still applies too
    assert not Excluder(tmp_path, ignore_files=False)(b"big.iso", False)
