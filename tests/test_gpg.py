"""The private GnuPG home: real gpg, one generated RSA-3072 key per session."""

from __future__ import annotations

import hashlib
import stat
import subprocess
import time
from pathlib import Path

import pytest

from vectors import vectors_dir

from pkvc import openpgp
from pkvc.blobref import BlobRef
from pkvc.gpg import GnupgError, GnupgHome, open_signer
from pkvc.schema import jsonsign

CAMLI_TESTER_FPR = "FBB89AA320A2806FE497C0492931A67C26F5ABDA"
PASSWORD_FOO_FPR = "9031130A712050EC3097D46A08FEC22AC7C3E176"


@pytest.fixture
def user_home():
    """Stands in for the user's own GNUPGHOME, holding Perkeep's test keys."""
    with GnupgHome() as home:
        for name in ("test-secring.gpg", "password-foo-secring.gpg"):
            assert home.gpg.import_keys((vectors_dir() / "keys" / name).read_bytes()).sec_imported == 1
        yield home


def _sign_and_verify(signer) -> None:
    unsigned = ('{"camliVersion": 1,\n  "camliSigner": "%s",\n  "camliType": "permanode",\n'
                '  "random": "r"\n}' % signer.public_key_ref).encode()
    blob = jsonsign.sign(unsigned, signer)
    verified = jsonsign.verify(blob, {signer.public_key_ref: signer.public_key}.get)
    assert verified.fingerprint == signer.fingerprint


# --- the home ------------------------------------------------------------------


def test_home_is_private_and_removed_with_its_agent(tmp_path):
    with GnupgHome(parent=tmp_path) as home:
        path = home.path
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        home.import_public_key((vectors_dir() / "keys/camli-testuser-two-851E08B24BEC5AB5.asc").read_bytes())
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_agent_is_stopped_on_close(repo_signer, tmp_path):
    with GnupgHome(parent=tmp_path) as home:
        fingerprint = home.import_secret_key(repo_signer.home.export_secret_key(repo_signer.fingerprint))
        home.detach_sign(b"x", fingerprint)
        pid = _agent_pid(home.path)
        assert _alive(pid)
    assert not home.path.exists()
    for _ in range(50):  # gpgconf --kill asks; the agent takes a moment to exit
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid)


def _agent_pid(home: Path) -> int:
    out = subprocess.run(["gpg-connect-agent", "--homedir", str(home), "--no-autostart",
                          "getinfo pid", "/bye"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[1])  # "D <pid>"


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for its parent."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_close_is_idempotent():
    home = GnupgHome()
    home.close()
    home.close()
    assert not home.path.exists()


# --- the generated key -------------------------------------------------------------


def test_generated_key_is_rsa_3072_with_a_user_id(repo_signer):
    key = openpgp.read_public_key(repo_signer.public_key)
    assert key.n.bit_length() == 3072
    assert key.fingerprint == repo_signer.fingerprint
    assert repo_signer.key_id == repo_signer.fingerprint[-16:]
    uids = [k["uids"] for k in repo_signer.home.gpg.list_keys(keys=[repo_signer.fingerprint])]
    assert uids == [["pkvc repository test-session"]]


def test_public_key_blob_is_an_armored_export_gnupg_imports(repo_signer):
    blob = repo_signer.public_key
    assert blob.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n") and blob.endswith(b"-----\n")
    assert repo_signer.public_key_ref == BlobRef.of(blob)
    with GnupgHome() as other:
        assert other.import_public_key(blob) == [repo_signer.fingerprint]


def test_signatures_are_binary_sha256_by_the_primary_key(repo_signer):
    sig = openpgp.read_signature(repo_signer.sign(b"data"))
    assert (sig.sig_type, sig.hash_name, sig.issuer) == (0, "SHA256", repo_signer.key_id)
    openpgp.verify(openpgp.read_public_key(repo_signer.public_key), sig, b"data")


def test_secret_key_round_trips_through_a_new_home(repo_signer):
    secret = repo_signer.home.export_secret_key(repo_signer.fingerprint)
    with open_signer(secret) as signer:
        assert signer.fingerprint == repo_signer.fingerprint
        assert signer.public_key == repo_signer.public_key  # camliSigner stays the same blob
        _sign_and_verify(signer)
    with open_signer(secret, public_key=repo_signer.public_key) as signer:
        _sign_and_verify(signer)


def test_signer_refuses_another_keys_blob(repo_signer):
    other = (vectors_dir() / "keys/camli-testuser-two-851E08B24BEC5AB5.asc").read_bytes()
    with pytest.raises(GnupgError, match="is for"):
        repo_signer.home.signer(repo_signer.fingerprint, public_key=other)


def test_import_secret_key_refuses_garbage():
    with GnupgHome() as home, pytest.raises(GnupgError, match="exactly one secret key"):
        home.import_secret_key(b"not a key")


@pytest.mark.parametrize("user_id", ["", "abc", "1pkvc repo", "pkvc\nrepo", "pkvc <x>"])
def test_generate_key_refuses_odd_user_ids(user_id):
    with GnupgHome() as home, pytest.raises(ValueError):
        home.generate_key(user_id)


def test_gnupg_will_not_import_perkeeps_bare_key_blob():
    """The trap that makes pkvc verify in Python (README section 1)."""
    bare = (vectors_dir() / "keys/camli-tester-2931A67C26F5ABDA.perkeep-armor.asc").read_bytes()
    with GnupgHome() as home, pytest.raises(GnupgError, match="no public key"):
        home.import_public_key(bare)


# --- a user's existing key (init --gpg-key) -------------------------------------------


def _files(home: Path) -> dict[str, str]:
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(home.rglob("*")) if p.is_file() and p.name != "random_seed"}


def test_import_unprotected_key_from_another_home(user_home):
    # A key's first use makes gpg-agent rewrite its file from the import
    # format into its own (the same happens in any GnuPG home); use it once
    # so that what follows shows pkvc itself writes nothing there.
    user_home.detach_sign(b"first use", CAMLI_TESTER_FPR)
    before = _files(user_home.path)
    with GnupgHome() as mine:
        fingerprint = mine.import_from_home("2931A67C26F5ABDA", user_home.path)
        assert fingerprint == CAMLI_TESTER_FPR
        _sign_and_verify(mine.signer(fingerprint))
    assert _files(user_home.path) == before  # the user's keyring is only read


def test_import_protected_key_strips_its_passphrase(user_home):
    with GnupgHome() as mine:
        fingerprint = mine.import_from_home("08FEC22AC7C3E176", user_home.path, passphrase="foo")
        assert fingerprint == PASSWORD_FOO_FPR
        secret = mine.export_secret_key(fingerprint)
    with open_signer(secret) as signer:  # no passphrase needed any more
        assert signer.fingerprint == PASSWORD_FOO_FPR
        _sign_and_verify(signer)


@pytest.mark.parametrize("passphrase", [None, "wrong"])
def test_import_protected_key_needs_the_right_passphrase(user_home, passphrase):
    with GnupgHome() as mine, pytest.raises(GnupgError, match="passphrase"):
        mine.import_from_home("08FEC22AC7C3E176", user_home.path, passphrase=passphrase)


def test_import_unknown_key_id_fails(user_home):
    with GnupgHome() as mine, pytest.raises(GnupgError, match="no secret key matches"):
        mine.import_from_home("0123456789ABCDEF", user_home.path)


def test_import_from_a_missing_home_fails(tmp_path):
    with GnupgHome() as mine, pytest.raises(GnupgError, match="cannot use the GnuPG home"):
        mine.import_from_home("2931A67C26F5ABDA", tmp_path / "nowhere")
