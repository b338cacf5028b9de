"""Run the real `pkvc` command in a subprocess, as a user or a script would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared helpers in tests/

PASSWORD = "correct horse battery staple"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


class Pkvc:
    """Calls `python -m pkvc` with a repository, a cache and a password file."""

    def __init__(self, tmp_path: Path):
        self.repo = tmp_path / "repo"
        self.cache = tmp_path / "cache"
        self.password_file = tmp_path / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PKVC_")}
        self.env.update(PKVC_REPOSITORY=str(self.repo), PKVC_CACHE_DIR=str(self.cache),
                        PKVC_PASSWORD_FILE=str(self.password_file))

    def __call__(self, *args, env: dict | None = None, input: bytes | None = None,
                 binary: bool = False) -> Result:
        full_env = dict(self.env, **(env or {}))
        full_env = {k: v for k, v in full_env.items() if v is not None}
        done = subprocess.run([sys.executable, "-m", "pkvc", *map(str, args)], env=full_env,
                              input=input, capture_output=True, timeout=600,
                              stdin=None if input is not None else subprocess.DEVNULL)
        out = done.stdout if binary else done.stdout.decode(errors="replace")
        return Result(done.returncode, out, done.stderr.decode(errors="replace"))

    def ok(self, *args, **kw) -> Result:
        result = self(*args, **kw)
        assert result.code == 0, f"pkvc {' '.join(map(str, args))} -> {result.code}\n{result.err}"
        return result


@pytest.fixture
def pkvc(tmp_path) -> Pkvc:
    return Pkvc(tmp_path)


@pytest.fixture
def initialized(pkvc) -> Pkvc:
    pkvc.ok("init")
    return pkvc
