"""A private, throw-away GnuPG home, so pkvc never signs in the user's keyring.

The repository keeps its own secret key (encrypted under the master key). To
sign, a process makes a fresh 0700 home, imports that key, makes detached
binary SHA-256 signatures (GnuPG's default SHA-512 is refused by Perkeep),
and on close stops the home's gpg-agent and deletes the directory. Every gpg
call runs in batch mode with loopback pinentry, so gpg fails, never prompts.
Only RSA keys whose primary key can sign are accepted: Perkeep (and
`pkvc.openpgp`) verify against the first packet of the key blob.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gnupg

from pkvc import openpgp
from pkvc.blobref import BlobRef
from pkvc.errors import PkvcError

KEY_LENGTH = 3072
DIGEST_ALGO = "SHA256"
_DIGEST_ID = "8"  # OpenPGP's number for SHA-256, as gpg reports it
_RSA_ALGOS = {"1", "3"}
# On top of python-gnupg's --batch --no-tty --status-fd: no config file,
# no network, no prompts.
_COMMON_OPTIONS = ["--pinentry-mode", "loopback", "--no-auto-key-retrieve", "--no-auto-check-trustdb"]
PRIVATE_OPTIONS = ["--no-options", *_COMMON_OPTIONS]
_SIGN_OPTIONS = ["--digest-algo", DIGEST_ALGO, "--no-textmode"]
_TIMEOUT = 120


class GnupgError(PkvcError):
    """GnuPG could not make, import, export or use a key."""


@dataclass(frozen=True)
class GpgSigner:
    """A signing key alive in a GnupgHome: what `jsonsign.sign` takes."""

    home: "GnupgHome"
    fingerprint: str
    public_key: bytes  # armored; the blob that camliSigner names

    @property
    def key_id(self) -> str:
        return self.fingerprint[-16:]

    @property
    def public_key_ref(self) -> BlobRef:
        """The camliSigner value for blobs this key signs."""
        return BlobRef.of(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self.home.detach_sign(data, self.fingerprint)


class GnupgHome:
    """A temporary GNUPGHOME (mode 0700); use as a context manager."""

    def __init__(self, gpg_binary: str = "gpg", gpgconf_binary: str = "gpgconf",
                 parent: Path | None = None):
        self.path = Path(tempfile.mkdtemp(prefix="pkvc-gpg-", dir=parent))
        self.path.chmod(0o700)
        self._gpg_binary, self._gpgconf_binary = gpg_binary, gpgconf_binary
        self._closed = False
        try:
            self.gpg = gnupg.GPG(gpgbinary=gpg_binary, gnupghome=str(self.path),
                                 options=list(PRIVATE_OPTIONS))
        except (OSError, ValueError) as e:
            self.close()
            raise GnupgError(f"cannot run GnuPG ({gpg_binary}): {e}") from None

    def __enter__(self) -> "GnupgHome":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop this home's gpg-agent, then delete the home, keys and all."""
        if self._closed:
            return
        self._closed = True
        for action in (["--kill", "all"], ["--remove-socketdir"]):
            _run_quietly([self._gpgconf_binary, "--homedir", str(self.path), *action])
        shutil.rmtree(self.path, ignore_errors=True)

    # --- keys --------------------------------------------------------------

    def generate_key(self, user_id: str) -> str:
        """A new unprotected RSA-3072 sign-only key; returns its fingerprint.

        No passphrase: the key never leaves this home except through
        `export_secret_key`, and the repository encrypts what it stores.
        """
        _check_user_id(user_id)
        params = (f"Key-Type: RSA\nKey-Length: {KEY_LENGTH}\nKey-Usage: sign\n"
                  f"Name-Real: {user_id}\nExpire-Date: 0\n%no-protection\n%commit\n")
        result = self.gpg.gen_key(params)
        if not result.fingerprint:
            raise GnupgError(f"gpg could not generate a key: {_gpg_said(result)}")
        return result.fingerprint

    def export_public_key(self, fingerprint: str) -> bytes:
        """The armored public key (key, user id, self-signature), Perkeep's key blob.

        Unlike Perkeep's bare key packet, GnuPG can import this one too.
        """
        text = self.gpg.export_keys(fingerprint, armor=True, minimal=True)
        if not text:
            raise GnupgError(f"no public key {fingerprint} to export")
        return text.encode("latin-1")  # python-gnupg decoded it as latin-1

    def export_secret_key(self, fingerprint: str) -> bytes:
        """The secret key as binary OpenPGP packets (unprotected in this home)."""
        data = self.gpg.export_keys(fingerprint, secret=True, armor=False, expect_passphrase=False)
        if not data:
            raise GnupgError(f"could not export secret key {fingerprint}")
        return data

    def import_secret_key(self, data: bytes) -> str:
        """Import one secret key (as `export_secret_key` made it); return its fingerprint."""
        result = self.gpg.import_keys(data)
        fingerprints = sorted(set(result.fingerprints))
        if not result.sec_read or len(fingerprints) != 1:
            raise GnupgError(f"expected exactly one secret key to import: {_gpg_said(result)}")
        self._check_signing_key(fingerprints[0])
        return fingerprints[0]

    def import_public_key(self, data: bytes) -> list[str]:
        """Import public keys (e.g. to let gpg check a signature); their fingerprints.

        GnuPG skips a key without a user ID, such as Perkeep's own key blobs.
        """
        result = self.gpg.import_keys(data)
        if not result.fingerprints:
            raise GnupgError(f"gpg imported no public key: {_gpg_said(result)}")
        return sorted(set(result.fingerprints))

    def import_from_home(self, keyid: str, other_home: Path, passphrase: str | None = None) -> str:
        """Copy a user's existing key (for `init --gpg-key KEYID`); its fingerprint.

        Only reads `other_home` (the user's GNUPGHOME): exports the primary
        key alone (`FPR!`, no subkeys) through the user's own gpg-agent in
        loopback mode. A protected key needs `passphrase` (unless that agent
        has it cached); the copy here is then stripped of its passphrase so
        the repository's master key alone protects it. The agent must allow
        loopback pinentry (GnuPG >= 2.1.12 does by default).
        """
        user = _open_home(other_home, self._gpg_binary)
        fingerprint = _primary_fingerprint(user, keyid, other_home)
        _check_passphrase(passphrase)
        data = user.export_keys(f"{fingerprint}!", secret=True, armor=False,
                                passphrase=passphrase or "", expect_passphrase=False)
        if not data:
            raise GnupgError(f"could not export secret key {keyid} from {other_home}: "
                             "wrong or missing passphrase?")
        if self.import_secret_key(data) != fingerprint:
            raise GnupgError(f"key exported for {keyid} is not {fingerprint}")
        self._make_usable(fingerprint, passphrase)
        return fingerprint

    def signer(self, fingerprint: str, public_key: bytes | None = None) -> GpgSigner:
        """A signer for a key in this home.

        `public_key` is the key blob the repository already stores (so
        camliSigner keeps naming the same bytes); by default it is exported.
        """
        if public_key is None:
            public_key = self.export_public_key(fingerprint)
        try:
            found = openpgp.read_public_key(public_key).fingerprint
        except openpgp.PacketError as e:
            raise GnupgError(f"public key blob is unusable: {e}") from None
        if found != fingerprint.upper():
            raise GnupgError(f"public key blob is for {found}, not {fingerprint}")
        return GpgSigner(self, fingerprint.upper(), bytes(public_key))

    # --- signing -----------------------------------------------------------

    def detach_sign(self, data: bytes, fingerprint: str) -> bytes:
        """An armored detached binary SHA-256 signature by the primary key."""
        result = self.gpg.sign(bytes(data), detach=True, clearsign=False,
                               extra_args=["--local-user", f"{fingerprint}!", *_SIGN_OPTIONS])
        if not result.data or result.type != "D" or result.hash_algo != _DIGEST_ID:
            raise GnupgError(f"gpg could not sign with {fingerprint}: {result.status or _gpg_said(result)}")
        return result.data

    def _check_signing_key(self, fingerprint: str) -> None:
        keys = self.gpg.list_keys(secret=True, keys=[fingerprint])
        if len(keys) != 1:
            raise GnupgError(f"secret key {fingerprint} is not in the private GnuPG home")
        _check_rsa_signing(keys[0], fingerprint)

    def _make_usable(self, fingerprint: str, passphrase: str | None) -> None:
        """Strip a passphrase from a key copied here; fail if it stays locked."""
        if self._can_sign(fingerprint):
            return
        if passphrase:
            self._remove_passphrase(fingerprint, passphrase)
            if self._can_sign(fingerprint):
                return
        raise GnupgError(f"secret key {fingerprint} is passphrase-protected: "
                         "give its passphrase (wrong or missing)")

    def _can_sign(self, fingerprint: str) -> bool:
        try:
            self.detach_sign(b"pkvc key check", fingerprint)
        except GnupgError:
            return False
        return True

    def _remove_passphrase(self, fingerprint: str, passphrase: str) -> None:
        """`gpg --passwd` answering old = passphrase, new = empty on the command fd.

        python-gnupg cannot hold this dialogue, hence the direct call.
        """
        cmd = [self._gpg_binary, "--homedir", str(self.path), *PRIVATE_OPTIONS, "--batch",
               "--no-tty", "--status-fd", "2", "--command-fd", "0", "--passwd", fingerprint]
        _run_quietly(cmd, input=f"{passphrase}\n\n".encode())


@contextmanager
def open_signer(secret_key: bytes, public_key: bytes | None = None, **home_options) -> Iterator[GpgSigner]:
    """A signer for a stored secret key, alive for the with-block only."""
    with GnupgHome(**home_options) as home:
        yield home.signer(home.import_secret_key(secret_key), public_key)


def _open_home(path: Path, gpg_binary: str) -> gnupg.GPG:
    try:
        return gnupg.GPG(gpgbinary=gpg_binary, gnupghome=str(path), options=list(_COMMON_OPTIONS))
    except (OSError, ValueError) as e:
        raise GnupgError(f"cannot use the GnuPG home {path}: {e}") from None


def _primary_fingerprint(user: gnupg.GPG, keyid: str, home: Path) -> str:
    keys = user.list_keys(secret=True, keys=[keyid])
    if len(keys) != 1:
        found = "no" if not keys else "more than one"
        raise GnupgError(f"{found} secret key matches {keyid!r} in {home}")
    _check_rsa_signing(keys[0], keyid)
    return keys[0]["fingerprint"]


def _check_rsa_signing(key: dict, name: str) -> None:
    if key.get("algo") not in _RSA_ALGOS:
        raise GnupgError(f"key {name} is not RSA; Perkeep signatures need an RSA key")
    if "s" not in key.get("cap", ""):
        raise GnupgError(f"the primary key of {name} cannot sign; Perkeep verifies with the primary key")


def _check_user_id(user_id: str) -> None:
    if len(user_id) < 5 or user_id[0].isdigit() or any(c in user_id for c in "\r\n\0<>"):
        raise ValueError(f"unusable GnuPG user id {user_id!r}")


def _check_passphrase(passphrase: str | None) -> None:
    if passphrase and any(c in passphrase for c in "\r\n\0"):
        raise GnupgError("a GnuPG passphrase cannot contain a line break or NUL")


def _gpg_said(result) -> str:
    """The last thing gpg complained about, for an error message."""
    lines = [line for line in (result.stderr or "").splitlines()
             if line.strip() and not line.startswith("[GNUPG:]")]
    return lines[-1].strip() if lines else "no details"


def _run_quietly(cmd: list[str], input: bytes = b"") -> None:
    """Best effort (cleanup, passphrase removal); callers check the outcome."""
    try:
        subprocess.run(cmd, input=input, capture_output=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass
