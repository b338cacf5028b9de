"""Shared fixtures: real repositories in temporary directories."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from pkvc.backends.local import LocalBackend
from pkvc.repo import Repository

settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True)
settings.register_profile("deep", max_examples=1000, deadline=None)
settings.load_profile("ci")

PASSWORD = b"correct horse battery staple"
VECTORS = Path(__file__).resolve().parents[2] / "shared" / "perkeep-vectors"


@pytest.fixture
def repo_path(tmp_path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def repo(repo_path, cache_dir):
    """A freshly created repository, closed after the test."""
    r = Repository.create(LocalBackend(repo_path), PASSWORD, cache_dir)
    yield r
    r.close()


@pytest.fixture
def reopen(repo_path, cache_dir):
    """Open the test repository again, as a new process would."""
    opened = []

    def _open(password: bytes = PASSWORD, cache: Path | None = None) -> Repository:
        r = Repository.open(LocalBackend(repo_path), password, cache or cache_dir)
        opened.append(r)
        return r
    yield _open
    for r in opened:
        r.close()


# -- signing: ONE generated RSA-3072 key per test session ------------------------

@pytest.fixture(scope="session")
def repo_signer():
    """The session's one generated RSA-3072 key (key generation takes seconds)."""
    from pkvc.gpg import GnupgHome

    with GnupgHome() as home:
        yield home.signer(home.generate_key("pkvc repository test-session"))


@pytest.fixture
def signing_repo(repo, repo_signer):
    """A repository whose identity is the session key (as `init` would store it)."""
    from pkvc.identity import store_identity

    store_identity(repo, repo_signer.fingerprint, repo_signer.public_key,
                   repo_signer.home.export_secret_key(repo_signer.fingerprint), source="generated")
    return repo
