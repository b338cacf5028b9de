"""Real file trees for tests: build a tree with every kind of entry, and
capture everything restore promises to bring back."""

import os
import pwd
import stat
from pathlib import Path

KiB = 1024
NOBODY = 65534


def has_user(uid):
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def tree_state(root: Path) -> dict:
    """Everything restore promises to bring back, keyed by relative path."""
    out, inodes = {}, {}
    top = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames + ([b"."] if dirpath == top else []):
            path = os.path.normpath(os.path.join(dirpath, name))
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                body = Path(os.fsdecode(path)).read_bytes()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            else:
                body = None
            perm = None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode)
            out[rel] = (kind, perm, st.st_mtime_ns, st.st_uid, st.st_gid, body)
    links = sorted(sorted(paths) for paths in inodes.values() if len(paths) > 1)
    return {"entries": out, "links": links}


def make_rich_tree(root: Path) -> Path:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "ro-dir").mkdir()
    (root / "ro-dir" / "inside").write_bytes(b"in a read-only dir")
    (root / "sticky").mkdir()
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "empty").write_bytes(b"")
    (root / "big").write_bytes(os.urandom(200 * KiB))
    (root / "exec").write_bytes(b"#!/bin/sh\n")
    (root / "secret").write_bytes(b"mode 000")
    (root / os.fsdecode(b"caf\xe9 \xff")).write_bytes(b"latin-1 name")
    (root / "sub" / "deep" / "h1").write_bytes(b"hard linked")
    os.link(root / "sub" / "deep" / "h1", root / "h2")
    os.link(root / "sub" / "deep" / "h1", root / "sub" / "h3")
    os.symlink("a.txt", root / "rel-link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("../nowhere/at/all", root / "sub" / "dangling")
    os.mkfifo(root / "pipe")
    (root / "owned").write_bytes(b"by nobody")
    if has_user(NOBODY):
        os.chown(root / "owned", NOBODY, NOBODY)
    os.chmod(root / "exec", 0o4755)
    os.chmod(root / "secret", 0o000)
    os.chmod(root / "sticky", 0o1777)
    t = 1_600_000_000_000_000_000
    for i, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(root), reverse=True)):
        for j, name in enumerate(dirnames + filenames):
            os.utime(os.path.join(dirpath, name), ns=(t, t + i * 1000 + j * 7 + 123),
                     follow_symlinks=False)
    os.chmod(root / "ro-dir", 0o555)
    os.utime(root / "ro-dir", ns=(t, t + 555))
    os.utime(root, ns=(t, t + 1))
    return root
