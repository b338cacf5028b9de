"""Run one command and measure it: wall time, CPU time, peak RSS.

`wait4` on the child returns its rusage, which on Linux covers the child
and every descendant it waited for: `ru_utime + ru_stime` is the CPU time
of that process tree and `ru_maxrss` the largest resident set any one of
them reached (KiB). Daemons that detach (gpg-agent) are not counted.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Run:
    argv: list[str]
    returncode: int
    wall: float          # seconds
    cpu: float           # seconds, user + sys
    user: float
    sys: float
    maxrss_kib: int
    stdout: str = ""     # tail, for the log and the JSON
    stderr: str = ""
    timed_out: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run(argv: list[str], *, env: dict[str, str], cwd: Path, log_prefix: Path,
        timeout: float | None = None) -> Run:
    """Run `argv`, stdout and stderr to `log_prefix`.out/.err, and measure it."""
    log_prefix.parent.mkdir(parents=True, exist_ok=True)
    out_path = log_prefix.with_name(log_prefix.name + ".out")
    err_path = log_prefix.with_name(log_prefix.name + ".err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)
        timed_out = False
        if timeout is None:
            _, status, usage = os.wait4(proc.pid, 0)
        else:
            deadline = started + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    timed_out = True
                    proc.kill()
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(argv=[str(a) for a in argv], returncode=proc.returncode, wall=wall,
               cpu=usage.ru_utime + usage.ru_stime, user=usage.ru_utime, sys=usage.ru_stime,
               maxrss_kib=usage.ru_maxrss, stdout=_tail(out_path), stderr=_tail(err_path),
               timed_out=timed_out)


def tree_size(path: Path) -> dict[str, int]:
    """Apparent bytes (sum of st_size), allocated bytes (st_blocks) and file
    count of everything under `path` (0 if it does not exist)."""
    apparent = allocated = files = 0
    stack = [str(path)]
    while stack:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    files += 1
                    apparent += st.st_size
                    allocated += st.st_blocks * 512
    return {"apparent": apparent, "allocated": allocated, "files": files}
