"""The same steps, spelled for pkvc, restic and borg.

All three run with encryption and zstd compression:

- pkvc: its only mode (zstd level 3 + XChaCha20-Poly1305 packs);
- restic: a version 2 repository, whose default compression is zstd
  "auto"; AES-256-CTR + Poly1305-AES;
- borg: `repokey` encryption (AES-256-CTR + HMAC-SHA256), `--compression zstd,3`.

Each tool gets its own repository, cache directory and environment; the
password is read from one file. Snapshots are taken from the parent of the
data directory with the relative name `data`, so each tool's restore holds
`data/` (or the tree itself, for pkvc's checkout) and is compared with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SERIES = "bench"


@dataclass
class Step:
    """One benchmark step for one tool: one or more commands run in order."""

    commands: list[list[str]]
    cwd: Path
    available: bool = True
    why_not: str = ""


@dataclass
class Tool:
    name: str
    home: Path              # everything of this tool for this run
    password_file: Path
    binary: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def repo(self) -> Path:
        return self.home / "repo"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    def restore_dir(self) -> Path:
        return self.home / "restore"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PKVC_", "RESTIC_", "BORG_"))}
        env.update(self.extra_env)
        return env

    # overridden below
    def version(self) -> str: ...
    def step(self, name: str, data: Path, snapshot_no: int = 0) -> Step: ...
    def restored_root(self, data: Path) -> Path: ...

    def prepare(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        self.cache.mkdir()


def _output(argv: list[str], env=None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else ""


class Pkvc(Tool):
    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(PKVC_REPOSITORY=str(self.repo), PKVC_PASSWORD_FILE=str(self.password_file),
                   PKVC_CACHE_DIR=str(self.cache))
        return env

    def version(self) -> str:
        try:
            from importlib.metadata import version
            v = version("pkvc")
        except Exception:  # not installed in this interpreter
            v = "?"
        commit = ""
        git = ["git", "-C", str(Path(__file__).resolve().parent)]
        try:  # read-only git: which commit, and whether pkvc/ has local changes
            head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
            dirty = subprocess.run(git + ["--no-optional-locks", "status", "--porcelain", "--", "../pkvc"],
                                   capture_output=True, text=True)
            if head.returncode == 0:
                commit = (f" (commit {head.stdout.strip()}"
                          f"{', pkvc/ modified' if dirty.stdout.strip() else ''})")
        except OSError:
            pass
        return f"pkvc {v}{commit}"

    def has_gc(self) -> tuple[bool, str]:
        for sub in (["forget", "--help"], ["gc", "--help"]):
            done = subprocess.run([self.binary, *sub], capture_output=True, text=True, env=self.env())
            if done.returncode != 0:
                return False, f"`pkvc {' '.join(sub)}` failed (exit {done.returncode}): not available"
        return True, ""

    def step(self, name: str, data: Path, snapshot_no: int = 0) -> Step:
        p, cwd = self.binary, data.parent
        if name == "init":
            return Step([[p, "--quiet", "init"]], cwd)
        if name.startswith("snapshot"):
            return Step([[p, "--json", "snapshot", data.name, "--series", SERIES]], cwd)
        if name == "restore":
            return Step([[p, "--json", "checkout", SERIES, "--output", str(self.restore_dir())]], cwd)
        if name == "forget_gc":
            ok, why = self.has_gc()
            return Step([[p, "--json", "forget", SERIES, "--keep-last", str(snapshot_no - 1)],
                         [p, "--json", "gc"]], cwd, ok, why)
        if name == "check":
            return Step([[p, "--json", "check", "--read-data"]], cwd)
        raise KeyError(name)

    def restored_root(self, data: Path) -> Path:
        return self.restore_dir()


class Restic(Tool):
    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(RESTIC_REPOSITORY=str(self.repo), RESTIC_PASSWORD_FILE=str(self.password_file),
                   RESTIC_CACHE_DIR=str(self.cache), RESTIC_PROGRESS_FPS="0.0167")
        return env

    def version(self) -> str:
        return _output([self.binary, "version"])

    def step(self, name: str, data: Path, snapshot_no: int = 0) -> Step:
        r, cwd = self.binary, data.parent
        if name == "init":
            return Step([[r, "init", "--repository-version", "2"]], cwd)
        if name.startswith("snapshot"):
            # compression: the v2 default, "auto" (zstd)
            return Step([[r, "backup", "--json", "--host", "bench", data.name]], cwd)
        if name == "restore":
            return Step([[r, "restore", "latest", "--target", str(self.restore_dir())]], cwd)
        if name == "forget_gc":
            return Step([[r, "forget", "--keep-last", str(snapshot_no - 1), "--prune"]], cwd)
        if name == "check":
            return Step([[r, "check", "--read-data"]], cwd)
        raise KeyError(name)

    def restored_root(self, data: Path) -> Path:
        return self.restore_dir() / data.name


class Borg(Tool):
    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(BORG_REPO=str(self.repo),
                   BORG_PASSPHRASE=self.password_file.read_text().rstrip("\n"),
                   BORG_BASE_DIR=str(self.cache), BORG_DISPLAY_PASSPHRASE="no",
                   BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
        return env

    def version(self) -> str:
        return _output([self.binary, "--version"])

    def step(self, name: str, data: Path, snapshot_no: int = 0) -> Step:
        b, cwd = self.binary, data.parent
        if name == "init":
            return Step([[b, "init", "--encryption", "repokey"]], cwd)
        if name.startswith("snapshot"):
            return Step([[b, "create", "--compression", "zstd,3", f"::snap{snapshot_no}",
                          data.name]], cwd)
        if name == "restore":
            return Step([[b, "extract", f"::snap{snapshot_no}"]], self.restore_dir())
        if name == "forget_gc":
            return Step([[b, "prune", "--keep-last", str(snapshot_no - 1)], [b, "compact"]], cwd)
        if name == "check":
            return Step([[b, "check", "--verify-data"]], cwd)
        raise KeyError(name)

    def restored_root(self, data: Path) -> Path:
        return self.restore_dir() / data.name


def default_pkvc() -> str:
    beside = Path(sys.executable).parent / "pkvc"
    if beside.exists():
        return str(beside)
    return shutil.which("pkvc") or "pkvc"


def make(name: str, home: Path, password_file: Path, pkvc_binary: str | None = None) -> Tool:
    if name == "pkvc":
        return Pkvc(name, home, password_file, pkvc_binary or default_pkvc())
    if name == "restic":
        return Restic(name, home, password_file, shutil.which("restic") or "restic")
    if name == "borg":
        return Borg(name, home, password_file, shutil.which("borg") or "borg")
    raise ValueError(f"unknown tool {name!r} (pkvc, restic, borg)")


# -- installing the others -----------------------------------------------------

APT_PACKAGES = {"restic": "restic", "borg": "borgbackup"}


def ensure_installed(names: list[str], log=print) -> dict[str, str]:
    """apt-get install restic / borgbackup when missing; returns problems by tool."""
    missing = [n for n in names if n in APT_PACKAGES and shutil.which(n) is None]
    if not missing:
        return {}
    packages = [APT_PACKAGES[n] for n in missing]
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing {' '.join(packages)} from Debian's packages ...")
    install = prefix + ["apt-get", "install", "-y", "-qq", *packages]
    done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(prefix + ["apt-get", "update", "-qq"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
    problems = {}
    for n in missing:
        if shutil.which(n) is None:
            problems[n] = f"could not install {APT_PACKAGES[n]}: {done.stderr.strip()[-300:]}"
    return problems
