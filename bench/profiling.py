"""`--profile`: run pkvc's commands under py-spy and summarise where time goes.

py-spy samples the process from outside (`record --format raw --idle
--native --threads`), so waiting on I/O and time inside C extensions
(hashlib, zstandard, PyNaCl, rocksdict) are both seen. The raw output is
one line per distinct stack, ``frame;frame;...;frame COUNT``.

The summary gives, as shares of all samples of all threads:

- `python_leaf`: the innermost *Python* function of each sample, i.e. the
  Python function that is running or that called the C code that runs
  ("self time" in Python terms, C callees included);
- `native_leaf`: the innermost frame, native functions grouped by library;
- `inclusive`: every Python function on the stack (counted once a sample);
- `threads`: samples per thread, how many of them were idle (waiting for
  work, a lock, a child) and how many waited for the GIL (ready to run).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE = 97  # samples per second, prime so as not to beat with periodic work
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<where>[^()]*)\)$")


def ensure_py_spy(log=print) -> str:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    if found := shutil.which("py-spy"):
        return found
    log("installing py-spy into this interpreter's environment ...")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
    return str(beside) if beside.exists() else "py-spy"


def wrap(py_spy: str, argv: list[str], output: Path, native: bool = True) -> list[str]:
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [py_spy, "record", "--format", "raw", "--output", str(output), "--rate", str(RATE),
           "--idle", "--threads", "--subprocesses"]
    if native:
        cmd.append("--native")
    return cmd + ["--", *argv]


def _short(where: str) -> str:
    """`/…/pkvc/repo.py:123` -> `pkvc/repo.py`; stdlib and site-packages paths
    lose their prefix."""
    path = where.rsplit(":", 1)[0]
    if "/pkvc/" in path:
        return "pkvc/" + path.split("/pkvc/", 1)[1]
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1]
    m = re.search(r"/lib/python3\.\d+/(.*)", path)
    return m.group(1) if m else path


def _is_python(where: str) -> bool:
    return ".py:" in where or where.endswith(".py")


def _parse(line: str) -> tuple[list[str], int] | None:
    line = line.rstrip("\n")
    if not line or " " not in line:
        return None
    stack, _, count = line.rpartition(" ")
    try:
        return stack.split(";"), int(count)
    except ValueError:
        return None


def _name(frame: str) -> tuple[str, bool]:
    """A frame as `func (pkvc/file.py)` (Python) or `symbol [library]` (native)."""
    m = _FRAME.match(frame)
    if not m:
        return frame, False
    func, where = m.group("func"), m.group("where")
    if _is_python(where):
        return f"{func} ({_short(where)})", True
    lib = where.split(":")[0]
    if func.startswith("0x"):
        return f"[{lib}]", False
    return f"{func} [{lib}]", False


WAITING = "waiting (subprocess, lock, sleep)"

# What the innermost frame is doing, by library or system call.
_CATEGORIES = [
    ("file I/O system calls", ("pread", "pwrite", "read (libc", "write (libc", "__libc_read",
                               "__libc_write", "open64", "openat", "__open", "fstatat", "stat64",
                               "__xstat", "lstat", "getdents", "close (libc", "__close", "fsync",
                               "fdatasync", "rename", "unlink", "mkdir", "utimensat", "fchmod",
                               "fchown", "lseek", "ftruncate", "fallocate", "readlink", "symlink",
                               "link (libc", "statx", "copy_file_range", "sendfile")),
    (WAITING, ("wait4", "waitpid", "poll", "select", "epoll",
                                           "nanosleep", "futex", "pthread_cond", "sem_wait")),
    ("memory (malloc, memcpy, page faults)", ("memcpy", "memmove", "memset", "malloc", "free",
                                              "realloc", "calloc", "mmap", "munmap", "brk",
                                              "madvise", "__memcpy", "__memmove", "__memset")),
    ("zstd", ("zstd.c", "ZSTD_", "compressor.c", "decompressor.c", "zstd")),
    ("SHA-2 (OpenSSL libcrypto)", ("libcrypto", "_hashopenssl", "EVP_", "SHA256", "sha256")),
    ("Argon2id key derivation (libsodium)", ("pwhash", "argon2")),
    ("XChaCha20-Poly1305 (libsodium)", ("sodium", "crypto_aead", "chacha", "poly1305")),
    ("Python's cyclic garbage collector", ("gc_collect",)),
    ("RocksDB (rocksdict)", ("rocksdict", "rocksdb")),
    ("FastCDC", ("fastcdc",)),
    ("Python interpreter and Python code", ("libpython", ".py:", "<frozen", "<string>", "python3")),
]


_LEAF_ONLY = ("file I/O system calls", WAITING)
# Native frames that block the thread on a lock: where libc's own frames
# have no symbols (as on the Intel host of 2026-12-05), the futex call under
# them is an unnamed libc frame, which would otherwise count as memory work.
# (matched at the start of the function's name: `lock_PyThread_acquire_lock`
# waiting in `pthread_cond_timedwait` has its lock and waits for the GIL)
_BLOCKING = ("PyThread_acquire_lock", "pthread_mutex_lock", "sem_wait", "sem_timedwait",
             "sem_clockwait", "__new_sem_wait", "do_futex_wait")
# A thread back from a system call (or from C code that released the GIL)
# that waits to take the GIL again: ready to run, held up by another thread.
GIL_WAIT = "GIL: waiting to run Python again"
_GIL = ("take_gil", "pthread_cond_timedwait", "pthread_cond_wait")
_LIBRARIES = ("zstd", "SHA-2 (OpenSSL libcrypto)", "Argon2id key derivation (libsodium)",
              "XChaCha20-Poly1305 (libsodium)", "RocksDB (rocksdict)", "FastCDC",
              "Python's cyclic garbage collector")


def _match(frame: str, label: str) -> bool:
    return any(n in frame for n in dict(_CATEGORIES)[label])


def category(frames: list[str]) -> str:
    """What a sample is doing: a wait on a lock, or for the GIL, by the
    native code below the innermost Python frame (CPython's locks wait on
    semaphores, so a condition variable there is the GIL's); else a system
    call or wait by its innermost frame; otherwise the library of the
    innermost native code below the innermost Python frame (inlined SIMD
    helpers have no library of their own); otherwise memory work (unnamed
    libc frames are memcpy/memset) or the interpreter."""
    leaf = frames[-1]
    native = []
    for frame in reversed(frames):
        if _name(frame)[1]:
            break
        native.append(frame)
    if any(frame.startswith(_BLOCKING) for frame in native):
        return WAITING
    if any(g in frame for frame in native for g in _GIL):
        return GIL_WAIT
    for label in _LEAF_ONLY:
        if _match(leaf, label):
            return label
    for frame in native:
        for label in _LIBRARIES:
            if _match(frame, label):
                return label
    if _match(leaf, "memory (malloc, memcpy, page faults)") or \
            (leaf.startswith("0x") and "(libc.so" in leaf):
        return "memory (malloc, memcpy, page faults)"
    if _name(leaf)[1] or _match(leaf, "Python interpreter and Python code"):
        return "Python interpreter and Python code"
    return "other native code"


def summarise(raw: Path, top: int = 15) -> dict:
    """Shares of samples per function, per thread; see the module docstring."""
    py_leaf, native_leaf, inclusive, threads, idle = Counter(), Counter(), Counter(), Counter(), Counter()
    gil = Counter()
    cats, py_cats = Counter(), Counter()
    total = 0
    if not raw.exists():
        return {"samples": 0, "error": f"{raw} not written"}
    for line in raw.read_text(errors="replace").splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, n = parsed
        total += n
        thread = next((f for f in frames[:2] if f.startswith("thread")), None) or \
            next((f for f in frames[:2] if f.startswith("process")), "?")
        threads[thread] += n
        names = [_name(f) for f in frames]
        py = [nm for nm, is_py in names if is_py]
        leaf_py = py[-1] if py else "(no Python frame)"
        py_leaf[leaf_py] += n
        leaf = names[-1][0] if names else "?"
        native_leaf[leaf] += n
        cat = category(frames) if frames else "?"
        cats[cat] += n
        py_cats[(leaf_py, cat)] += n
        if cat == WAITING:
            idle[thread] += n
        elif cat == GIL_WAIT:
            gil[thread] += n
        for nm in set(py):
            if nm.split(" (")[1].startswith("pkvc/") and not nm.endswith(("(pkvc/cli.py)", "(pkvc/api.py)")):
                inclusive[nm] += n

    def shares(c: Counter, k: int = top) -> list[list]:
        return [[name, n, round(100.0 * n / total, 1)] for name, n in c.most_common(k)] if total else []

    breakdown = {}
    for name, _n, _share in shares(py_leaf):
        parts = [(cat, n) for (fn, cat), n in py_cats.items() if fn == name]
        breakdown[name] = [[cat, round(100.0 * n / total, 1)]
                           for cat, n in sorted(parts, key=lambda x: -x[1])[:3]]
    return {"samples": total, "rate": RATE, "seconds_sampled": round(total / RATE, 1),
            "categories": shares(cats, 20), "python_leaf": shares(py_leaf),
            "python_leaf_breakdown": breakdown, "native_leaf": shares(native_leaf),
            "inclusive": shares(inclusive),
            "threads": [[t, n, idle.get(t, 0), gil.get(t, 0)] for t, n in threads.most_common()]}


def render(summary: dict, title: str, top: int = 10) -> str:
    if not summary.get("samples"):
        return f"{title}: no samples ({summary.get('error', '')})"
    lines = [f"{title}", f"  {summary['samples']} samples at {summary['rate']} Hz "
             f"({summary['seconds_sampled']} s) over {len(summary['threads'])} thread(s)"]
    for t, n, idle, gil in summary["threads"]:
        lines.append(f"    {t[:70]}: {n} samples, {idle} waiting, {gil} for the GIL")
    lines.append("  where the time goes (innermost frame):")
    for name, _n, share in summary["categories"][:top]:
        lines.append(f"    {share:5.1f}%  {name}")
    lines.append("  innermost Python function (with the C code it called):")
    breakdown = summary.get("python_leaf_breakdown", {})
    for name, _n, share in summary["python_leaf"][:top]:
        parts = ", ".join(f"{cat} {pct}%" for cat, pct in breakdown.get(name, []))
        lines.append(f"    {share:5.1f}%  {name}  [{parts}]")
    lines.append("  pkvc functions on the stack (inclusive):")
    for name, _n, share in summary["inclusive"][:top]:
        lines.append(f"    {share:5.1f}%  {name}")
    lines.append("  innermost frame:")
    for name, _n, share in summary["native_leaf"][:top]:
        lines.append(f"    {share:5.1f}%  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.profiling RAW...`: summarise py-spy raw files again."""
    paths = sys.argv[1:] if argv is None else argv
    for p in paths:
        print(render(summarise(Path(p)), p))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
