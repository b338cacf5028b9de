"""The benchmark's data: a realistic tree, its mutations, and the scale tree.

Everything is built from files already on the machine and from a seeded
PRNG, so two runs with the same seed on the same machine see the same
bytes. Nothing here is committed: trees live under the scratch directory.

The main tree (`build`) has two parts:

- ``small/``: many small source and documentation files (man pages, C
  headers, Python's standard library and site-packages, /usr/share/doc,
  ...), chosen at random (seeded) from the candidates found, copied with
  their relative paths so the directory shapes are real;
- ``large/``: a few large binary files, each a sequence of segments: runs
  of existing binaries and libraries (compressible ~2-3x by zstd), seeded
  random bytes (incompressible, like media or encrypted data), zero runs,
  and repeats of an earlier segment of the same file (like a VM image).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# Where small files come from: globs, tried in this order; missing ones are skipped.
SMALL_SOURCES = [
    "/usr/share/doc", "/usr/share/man", "/usr/include", "/usr/lib/python3",
    "/usr/lib/python3.*", "/usr/share/perl", "/usr/share/perl5", "/usr/share/i18n",
    "/usr/share/zoneinfo", "/usr/share/locale", "/usr/share/vim", "/usr/share/X11",
]
# Where large files take their binary segments from.
BINARY_SOURCES = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/bin",
                  "/usr/sbin", "/usr/lib/gcc", "/usr/libexec", "/usr/lib/jvm"]
SMALL_MAX = 1 * MiB          # a "small" file is at most this big
BINARY_MIN = 256 * KiB       # binary segment sources are at least this big


@dataclass(frozen=True)
class Spec:
    """What to build; the key names the cached pristine copy."""

    total_bytes: int
    small_fraction: float
    max_small_files: int
    large_files: int
    seed: int

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _python_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    found = [paths.get("stdlib"), paths.get("purelib"), paths.get("platlib")]
    # the interpreter the venv was made from, whose stdlib is the real one
    found.append(os.path.join(sys.base_prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}"))
    return [p for p in found if p]


def _expand(patterns: list[str]) -> list[str]:
    seen, out = set(), []
    for pattern in patterns:
        for p in sorted(glob.glob(pattern)):
            real = os.path.realpath(p)
            if os.path.isdir(real) and real not in seen:
                seen.add(real)
                out.append(real)
    return out


def _walk_files(root: str, exclude: list[str]):
    """(path, size) of regular files below root, in sorted order, skipping
    anything below an excluded directory."""
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs
                         if not any(os.path.join(top, d).startswith(x) for x in exclude))
        for name in sorted(files):
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if os.path.isfile(path) and not os.path.islink(path):
                yield path, st.st_size


def _label(root: str) -> str:
    return root.strip("/").replace("/", "_")


def small_candidates(exclude: list[str]) -> list[tuple[str, str, int]]:
    """(source root, path, size) of every small-file candidate."""
    roots = _expand(SMALL_SOURCES + _python_dirs())
    # a root inside another root would give its files twice: keep the outer one
    roots = [r for r in roots if not any(r != o and r.startswith(o + "/") for o in roots)]
    out = []
    for root in roots:
        for path, size in _walk_files(root, exclude):
            if size <= SMALL_MAX and os.access(path, os.R_OK):
                out.append((root, path, size))
    return out


def binary_candidates(exclude: list[str]) -> list[tuple[str, int]]:
    out = []
    for root in _expand(BINARY_SOURCES):
        for path, size in _walk_files(root, exclude):
            if size >= BINARY_MIN and os.access(path, os.R_OK):
                out.append((path, size))
    return out


def _write_large(path: Path, size: int, rng: random.Random, binaries: list[tuple[str, int]]) -> dict:
    """One large file of `size` bytes made of segments; returns its composition."""
    made = {"binary": 0, "random": 0, "zeros": 0, "repeat": 0}
    segments: list[tuple[int, int]] = []  # (offset, length) of earlier segments, for repeats
    written = 0
    with open(path, "wb") as out:
        while written < size:
            want = min(size - written, rng.randint(256 * KiB, 8 * MiB))
            kind = rng.choices(["binary", "random", "zeros", "repeat"], [50, 35, 5, 10])[0]
            if kind == "repeat" and not segments:
                kind = "binary"
            if kind == "binary" and binaries:
                src, src_size = binaries[rng.randrange(len(binaries))]
                length = min(want, src_size)
                offset = rng.randrange(src_size - length + 1)
                with open(src, "rb") as f:
                    f.seek(offset)
                    data = f.read(length)
            elif kind == "repeat":
                off, length = segments[rng.randrange(len(segments))]
                out.flush()
                with open(path, "rb") as f:
                    f.seek(off)
                    data = f.read(min(length, want))
            elif kind == "zeros":
                data = bytes(want)
            else:
                kind = "random"
                data = rng.randbytes(want)
            if not data:
                continue
            segments.append((written, len(data)))
            out.write(data)
            written += len(data)
            made[kind] += len(data)
    return made


def build(spec: Spec, dest: Path, exclude: list[str], log=print) -> dict:
    """Build the main tree at `dest` (which must not exist); return a summary."""
    rng = random.Random(spec.seed)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "small").mkdir(parents=True)
    (tmp / "large").mkdir()

    log("dataset: listing small-file candidates ...")
    candidates = small_candidates(exclude)
    rng.shuffle(candidates)
    small_budget = int(spec.total_bytes * spec.small_fraction)
    chosen, small_bytes = [], 0
    for root, path, size in candidates:
        if small_bytes >= small_budget or len(chosen) >= spec.max_small_files:
            break
        chosen.append((root, path, size))
        small_bytes += size
    log(f"dataset: copying {len(chosen)} small files ({small_bytes / MiB:.0f} MiB) "
        f"of {len(candidates)} candidates ...")
    copied = copied_bytes = 0
    for root, path, size in sorted(chosen, key=lambda c: c[1]):
        target = tmp / "small" / _label(root) / os.path.relpath(path, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(path, target, follow_symlinks=False)
            st = os.stat(path)
            os.chmod(target, 0o644)
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError:
            continue
        copied += 1
        copied_bytes += size

    large_total = max(0, spec.total_bytes - copied_bytes)
    binaries = binary_candidates(exclude)
    # shares 40/30/20/10 for four files; equal-ish otherwise
    weights = [4, 3, 2, 1][:spec.large_files] if spec.large_files <= 4 else [1] * spec.large_files
    large = []
    for i, w in enumerate(weights):
        size = large_total * w // sum(weights)
        name = f"image-{i}.bin"
        log(f"dataset: writing large/{name} ({size / MiB:.0f} MiB) ...")
        made = _write_large(tmp / "large" / name, size, rng, binaries)
        large.append({"name": name, "size": size, **made})
    os.replace(tmp, dest)
    summary = {"spec": asdict(spec), "small_files": copied, "small_bytes": copied_bytes,
               "small_candidates": len(candidates), "binary_sources": len(binaries),
               "large": large, "total_bytes": copied_bytes + sum(x["size"] for x in large)}
    _meta_path(dest).write_text(json.dumps(summary, indent=2))
    return summary


def pristine(spec: Spec, scratch: Path, exclude: list[str], log=print) -> tuple[Path, dict]:
    """The cached, never-mutated tree for `spec` (built on first use)."""
    dest = scratch / f"dataset-{spec.key()}"
    cached = _reuse(dest, "dataset", log)
    return dest, cached if cached is not None else build(spec, dest, exclude, log)


def _meta_path(dest: Path) -> Path:
    """Where a built tree's metadata goes: written last, so it marks a tree
    that was built whole."""
    return dest.with_name(dest.name + ".json")


def _reuse(dest: Path, what: str, log) -> dict | None:
    """The metadata of a tree already built at `dest` (None: not there, and
    whatever half of it a killed run left is removed)."""
    meta = _meta_path(dest)
    if dest.is_dir() and meta.is_file():
        log(f"{what}: reusing {dest}")
        return json.loads(meta.read_text())
    shutil.rmtree(dest, ignore_errors=True)
    return None


def copy_tree(src: Path, dest: Path) -> None:
    """A working copy of the pristine tree (cp -a: metadata kept, new inodes)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dest)], check=True)


def warm(path: Path) -> int:
    """Read every file once so all tools start from a warm page cache."""
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(top, name)
            try:
                with open(p, "rb", buffering=0) as f:
                    while chunk := f.read(4 * MiB):
                        total += len(chunk)
            except OSError:
                pass
    return total


# -- mutations -------------------------------------------------------------------

@dataclass(frozen=True)
class Mutations:
    insert_bytes: int = 4096      # inserted near the start of the largest file
    edits: int = 200              # small files edited in place
    adds: int = 1000              # new small files
    deletes: int = 300            # small files deleted


def _small_files(root: Path) -> list[Path]:
    out = []
    for top, dirs, files in os.walk(root / "small"):
        dirs.sort()
        for name in sorted(files):
            out.append(Path(top) / name)
    return out


def mutate(root: Path, m: Mutations, seed: int) -> dict:
    """Apply the mutations to the tree at `root`; return what was done."""
    rng = random.Random(seed * 7919 + 1)
    done = {"inserted": None, "edited": 0, "added": 0, "deleted": 0, "added_bytes": 0}

    larges = sorted((root / "large").iterdir(), key=lambda p: (-p.stat().st_size, p.name))
    if larges and m.insert_bytes:
        big = larges[0]
        offset = min(big.stat().st_size, 10_000 + rng.randrange(64 * KiB))
        tmp = big.with_name(big.name + ".mut")
        with open(big, "rb") as src, open(tmp, "wb") as dst:
            dst.write(src.read(offset))
            dst.write(rng.randbytes(m.insert_bytes))
            shutil.copyfileobj(src, dst, 8 * MiB)
        st = big.stat()
        os.chmod(tmp, st.st_mode & 0o7777)
        os.replace(tmp, big)
        done["inserted"] = {"file": str(big.relative_to(root)), "offset": offset,
                            "bytes": m.insert_bytes}

    files = _small_files(root)
    picked = rng.sample(range(len(files)), min(len(files), m.edits + m.deletes))
    edit_ix, delete_ix = picked[:m.edits], picked[m.edits:]
    for i in edit_ix:
        p = files[i]
        size = p.stat().st_size
        with open(p, "r+b") as f:
            if size > 32:
                f.seek(rng.randrange(size - 32))
                f.write(rng.randbytes(16).hex().encode())
            f.seek(0, os.SEEK_END)
            f.write(f"\n# edited by the pkvc benchmark, seed {seed}\n".encode())
        done["edited"] += 1

    for n in range(m.adds):
        src = files[rng.randrange(len(files))] if files else None
        body = src.read_bytes() if src is not None and src.exists() else b""
        target = root / "small" / "added" / f"d{n // 100:03d}" / f"new-{n:05d}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        data = f"new file {n} (seed {seed})\n".encode() + rng.randbytes(64).hex().encode() + body
        target.write_bytes(data)
        done["added"] += 1
        done["added_bytes"] += len(data)

    for i in delete_ix:
        try:
            files[i].unlink()
            done["deleted"] += 1
        except FileNotFoundError:
            pass
    return done


# -- the scale tree ----------------------------------------------------------------

def scale_tree(scratch: Path, count: int, seed: int, log=print) -> tuple[Path, dict]:
    """`count` small files (64 B to 4 KiB of text) in directories of 1,000;
    reused when already built for the same count and seed (it is never mutated)."""
    dest = scratch / f"scale-{count}-{seed}"
    cached = _reuse(dest, "scale", log)
    if cached is not None:
        return dest, cached
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 6)).hex() for _ in range(2000)]
    pool = " ".join(rng.choice(words) for _ in range(200_000)).encode()
    log(f"scale: writing {count:,} files under {dest} ...")
    total = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    current = None
    for i in range(count):
        d = tmp / f"d{i // 100_000:02d}" / f"d{(i // 1000) % 100:02d}"
        if d != current:
            d.mkdir(parents=True, exist_ok=True)
            current = d
        n = min(4096, max(64, int(rng.lognormvariate(6.5, 0.8))))
        off = rng.randrange(len(pool) - n)
        data = b"%d\n" % i + pool[off:off + n]
        fd = os.open(d / f"f{i:07d}.txt", flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        total += len(data)
        if i and i % 200_000 == 0:
            log(f"scale: {i:,} files")
    os.replace(tmp, dest)
    summary = {"files": count, "bytes": total, "seed": seed}
    _meta_path(dest).write_text(json.dumps(summary))
    return dest, summary


# -- verification ----------------------------------------------------------------

def compare_trees(a: Path, b: Path, limit: int = 10) -> dict:
    """Byte-compare two trees: same names, same types, same symlink targets,
    same file contents. Returns counts and the first differences."""
    diffs: list[str] = []
    files = nbytes = 0

    def differ(msg: str) -> None:
        if len(diffs) < limit * 100:
            diffs.append(msg)

    stack = [""]
    while stack:
        rel = stack.pop()
        pa, pb = a / rel, b / rel
        try:
            ea = {e.name: e for e in os.scandir(pa)}
            eb = {e.name: e for e in os.scandir(pb)}
        except OSError as e:
            differ(f"{rel or '.'}: {e}")
            continue
        for name in sorted(set(ea) | set(eb)):
            r = os.path.join(rel, name)
            if name not in eb:
                differ(f"missing in restore: {r}")
                continue
            if name not in ea:
                differ(f"extra in restore: {r}")
                continue
            x, y = ea[name], eb[name]
            if x.is_symlink() or y.is_symlink():
                if not (x.is_symlink() and y.is_symlink()) or os.readlink(x.path) != os.readlink(y.path):
                    differ(f"symlink differs: {r}")
            elif x.is_dir():
                if not y.is_dir():
                    differ(f"type differs: {r}")
                else:
                    stack.append(r)
            elif x.is_file():
                if not y.is_file():
                    differ(f"type differs: {r}")
                    continue
                files += 1
                if x.stat().st_size != y.stat().st_size:
                    differ(f"size differs: {r}")
                    continue
                with open(x.path, "rb", buffering=0) as fa, open(y.path, "rb", buffering=0) as fb:
                    while True:
                        ca, cb = fa.read(4 * MiB), fb.read(4 * MiB)
                        if ca != cb:
                            differ(f"content differs: {r}")
                            break
                        if not ca:
                            break
                        nbytes += len(ca)
    return {"identical": not diffs, "files": files, "bytes": nbytes,
            "differences": len(diffs), "first": diffs[:limit]}
