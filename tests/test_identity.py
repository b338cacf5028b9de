"""The repository's signing identity: stored sealed, opened in a private GnuPG home."""

from __future__ import annotations

import base64

import pytest

from pkvc import openpgp
from pkvc.backends.local import LocalBackend
from pkvc.claims import ClaimsIndex, add_claim, new_permanode, permanode_state
from pkvc.errors import IntegrityError, UsageError
from pkvc.gpg import GnupgHome
from pkvc.identity import (
    NoIdentityError, create_identity, current_identity, list_identities, make_current,
    open_identity, store_identity,
)
from pkvc.repo import Repository
from tests.conftest import PASSWORD
from tests.vectors import vectors_dir
from gc_support import remove_blobs

CAMLI_TESTER_FPR = "FBB89AA320A2806FE497C0492931A67C26F5ABDA"


def _clock(seconds: int):
    return lambda: seconds * 10**9


@pytest.fixture
def session_secret(repo_signer):
    return repo_signer.home.export_secret_key(repo_signer.fingerprint)


def test_identity_is_sealed_in_the_repository(repo, repo_signer, session_secret):
    info = store_identity(repo, repo_signer.fingerprint, repo_signer.public_key, session_secret,
                          clock=_clock(1_700_000_000))
    assert info.current and info.key_id == repo_signer.key_id
    assert info.public_key_ref == repo_signer.public_key_ref
    assert repo.get(info.public_key_ref) == repo_signer.public_key  # the camliSigner blob
    stored = repo.backend.load(f"identity/{repo_signer.fingerprint}")
    assert session_secret not in stored and b"PGP" not in stored
    assert base64.b64encode(session_secret)[:40] not in stored
    assert str(info.created) == "2023-11-14T22:13:20Z"


def test_open_identity_signs_claims_that_verify(signing_repo, reopen):
    signing_repo.close()
    repo = reopen()  # another process: only the password is needed
    with open_identity(repo) as signer:
        pn = new_permanode(repo, signer)
        add_claim(repo, signer, "set-attribute", pn, "title", "hello")
        home = signer.home.path
    assert not home.exists()  # the private GnuPG home is gone after the block
    state = permanode_state(repo, pn)
    assert state.attributes == {"title": ("hello",)}
    assert {c.key_id for c in state.claims} == {current_identity(repo).key_id}
    assert ClaimsIndex.open(repo).permanode(pn).signer == current_identity(repo).public_key_ref


def test_no_identity_is_a_clear_error(repo):
    with pytest.raises(NoIdentityError, match="no signing key"):
        with open_identity(repo):
            pass
    assert list_identities(repo) == []


def test_tampered_identity_is_refused(signing_repo, repo_signer):
    name = f"identity/{repo_signer.fingerprint}"
    data = bytearray(signing_repo.backend.load(name))
    data[-1] ^= 1
    signing_repo.backend.store(name, bytes(data))
    with pytest.raises(IntegrityError, match="identity"):
        with open_identity(signing_repo):
            pass


def test_identity_object_cannot_be_moved_to_another_repository(signing_repo, repo_signer, tmp_path):
    other = Repository.create(LocalBackend(tmp_path / "other"), PASSWORD, tmp_path / "c2")
    try:
        name = f"identity/{repo_signer.fingerprint}"
        other.backend.store(name, signing_repo.backend.load(name))
        with pytest.raises(IntegrityError):
            current_identity(other)
    finally:
        other.close()


def test_missing_key_blob_is_put_back(signing_repo):
    ref = current_identity(signing_repo).public_key_ref
    remove_blobs(signing_repo, {ref})
    assert not signing_repo.has(ref)
    with open_identity(signing_repo) as signer:
        assert signer.public_key_ref == ref
    assert signing_repo.has(ref)


def test_init_generates_a_key_in_a_private_home(repo, repo_signer, session_secret, monkeypatch):
    """The generation path, with the session key standing in for keygen (one key per session)."""
    asked = []

    def fake_generate(home, user_id):
        asked.append(user_id)
        return home.import_secret_key(session_secret)
    monkeypatch.setattr(GnupgHome, "generate_key", fake_generate)
    info = create_identity(repo)
    assert asked == [f"pkvc repository {repo.config.id}"]
    assert info.fingerprint == repo_signer.fingerprint and info.source == "generated"
    with open_identity(repo) as signer:
        assert signer.fingerprint == repo_signer.fingerprint


def test_gpg_key_needs_the_users_home(repo):
    with pytest.raises(UsageError, match="GnuPG home"):
        create_identity(repo, gpg_key="2931A67C26F5ABDA")


@pytest.fixture
def user_home():
    """Stands in for the user's GNUPGHOME, holding Perkeep's unprotected test key."""
    with GnupgHome() as home:
        secring = (vectors_dir() / "keys" / "test-secring.gpg").read_bytes()
        assert home.gpg.import_keys(secring).sec_imported == 1
        yield home


def _keyring_of(home):
    """The user's keys and public keyring. Not the private key files' bytes:
    the user's own gpg-agent rewrites an unprotected key file into its current
    format on any use, a signature as much as an export."""
    keys = sorted((k["fingerprint"], k["uids"][0]) for k in home.gpg.list_keys(secret=True))
    files = sorted(p.name for p in (home.path / "private-keys-v1.d").iterdir())
    return keys, files, (home.path / "pubring.kbx").read_bytes()


def test_import_users_key_and_rotate(signing_repo, user_home, repo_signer):
    first = current_identity(signing_repo)
    before = _keyring_of(user_home)
    imported = create_identity(signing_repo, gpg_key="2931A67C26F5ABDA", user_gnupghome=user_home.path,
                               clock=_clock(2_000_000_000))
    assert _keyring_of(user_home) == before  # the user's keyring is only read
    assert imported.fingerprint == CAMLI_TESTER_FPR and imported.source == "imported"
    assert [i.fingerprint for i in list_identities(signing_repo)] == [first.fingerprint, CAMLI_TESTER_FPR]
    assert current_identity(signing_repo).fingerprint == CAMLI_TESTER_FPR
    with open_identity(signing_repo) as signer:
        pn = new_permanode(signing_repo, signer)
        assert signer.key_id == "2931A67C26F5ABDA"
    with open_identity(signing_repo, first.fingerprint) as old:
        add_claim(signing_repo, old, "set-attribute", pn, "title", "by the old key")
    # claims from every identity count
    assert {c.key_id for c in permanode_state(signing_repo, pn).claims} == {repo_signer.key_id}
    assert ClaimsIndex.open(signing_repo).permanode(pn).key_id == "2931A67C26F5ABDA"
    make_current(signing_repo, first.fingerprint, clock=_clock(2_100_000_000))
    assert current_identity(signing_repo).fingerprint == first.fingerprint
    key_blob = signing_repo.get(imported.public_key_ref)
    assert openpgp.read_public_key(key_blob).fingerprint == CAMLI_TESTER_FPR
