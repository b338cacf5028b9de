"""The repository's signing identity: the GnuPG key that signs its claims.

An *identity* is one RSA signing key. Its armored public key is an
ordinary blob (KIND_DATA), the `camliSigner` of everything it signs; its
secret key lives in the repository as the backend object
`identity/<40-hex fingerprint>`, sealed under the master key, so any
machine with a password can sign and nothing else can. Several identities
may exist (after a rotation); the *current* one, which signs, is the one
activated last. Each process that signs imports the secret key into a
private, temporary GnuPG home (`pkvc.gpg.open_signer`); the user's own
keyring is only ever read, by `create_identity(gpg_key=...)`.

The object (see docs/signing.md, "Where the secret key lives"):

    identity/<FPR> = seal(subkey("pkvc-identity"), JSON, ad)
    ad   = "pkvc identity " + config.id + " " + FPR      (ASCII)
    JSON = {"fingerprint": FPR, "public_key_ref": "sha224-…",
            "public_key": "<armored public key, the blob's exact text>",
            "secret_key": "<base64 of the binary OpenPGP secret key>",
            "created": "<RFC 3339>", "activated": "<RFC 3339>",
            "source": "generated" | "imported"}
"""

from __future__ import annotations

import base64
import json
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pkvc import crypto
from pkvc.blobref import BlobRef
from pkvc.errors import IntegrityError, PkvcError, UsageError
from pkvc.pack import KIND_DATA
from pkvc.repo import Repository
from pkvc.schema.claims import Clock
from pkvc.schema.timefmt import SchemaTime, format_time

if TYPE_CHECKING:  # GnuPG is loaded only by the commands that sign
    from pkvc.gpg import GpgSigner

PREFIX = "identity/"
SUBKEY_PURPOSE = "pkvc-identity"
_FPR = re.compile(r"^[0-9A-F]{40}$")


class NoIdentityError(PkvcError):
    """The repository holds no signing key, so it cannot sign claims."""


@dataclass(frozen=True)
class Identity:
    """What `list_identities` shows; the secret key stays inside the object."""

    fingerprint: str
    public_key_ref: BlobRef
    created: SchemaTime
    activated: SchemaTime
    source: str
    current: bool = False

    @property
    def key_id(self) -> str:
        return self.fingerprint[-16:]


def create_identity(repo: Repository, gpg_key: str | None = None,
                    user_gnupghome: Path | None = None, passphrase: str | None = None,
                    *, clock: Clock = time.time_ns, **home_options) -> Identity:
    """Make (or, with `gpg_key`, copy from `user_gnupghome`) a signing key and
    store it as the repository's current identity. `init` calls this; calling
    it again rotates the key (older identities stay, for verification only
    their public key blobs matter)."""
    if gpg_key is not None and user_gnupghome is None:
        raise UsageError("--gpg-key needs the GnuPG home that holds the key")
    from pkvc.gpg import GnupgHome
    with GnupgHome(**home_options) as home:
        if gpg_key is None:
            fingerprint = home.generate_key(f"pkvc repository {repo.config.id}")
            source = "generated"
        else:
            fingerprint = home.import_from_home(gpg_key, Path(user_gnupghome), passphrase)
            source = "imported"
        public = home.export_public_key(fingerprint)
        secret = home.export_secret_key(fingerprint)
    return store_identity(repo, fingerprint, public, secret, source=source, clock=clock)


def store_identity(repo: Repository, fingerprint: str, public_key: bytes, secret_key: bytes,
                   *, source: str = "imported", clock: Clock = time.time_ns) -> Identity:
    """Store a key pair as the current identity: key blob first, then the sealed secret."""
    fingerprint = fingerprint.upper()
    if not _FPR.match(fingerprint):
        raise UsageError(f"not an OpenPGP v4 fingerprint: {fingerprint!r}")
    ref = repo.put(bytes(public_key), kind=KIND_DATA)
    repo.flush()  # the key blob is durable before anything names it
    now = format_time(clock())
    existing = _load_raw(repo, fingerprint) if repo.backend.exists(_name(fingerprint)) else None
    payload = {
        "fingerprint": fingerprint,
        "public_key_ref": str(ref),
        "public_key": bytes(public_key).decode("latin-1"),
        "secret_key": base64.b64encode(bytes(secret_key)).decode(),
        "created": existing["created"] if existing else now,
        "activated": now,
        "source": existing["source"] if existing else source,
    }
    repo.backend.store(_name(fingerprint), _seal(repo, fingerprint, payload))
    return _identity(payload, current=True)


def list_identities(repo: Repository) -> list[Identity]:
    """Every stored identity, the current one flagged; oldest activation first."""
    payloads = [_load_raw(repo, info.name[len(PREFIX):]) for info in repo.backend.list(PREFIX)]
    payloads.sort(key=_order)
    return [_identity(p, current=(i == len(payloads) - 1)) for i, p in enumerate(payloads)]


def current_identity(repo: Repository) -> Identity:
    found = list_identities(repo)
    if not found:
        raise NoIdentityError("this repository has no signing key, so it cannot sign "
                              "snapshots or claims (it was made before pkvc signed them)")
    return found[-1]


def make_current(repo: Repository, fingerprint: str, clock: Clock = time.time_ns) -> Identity:
    """Sign with an older identity again (re-activates it)."""
    payload = _load_raw(repo, fingerprint.upper())
    payload["activated"] = format_time(clock())
    repo.backend.store(_name(payload["fingerprint"]), _seal(repo, payload["fingerprint"], payload))
    return _identity(payload, current=True)


@contextmanager
def open_identity(repo: Repository, fingerprint: str | None = None,
                  **home_options) -> Iterator[GpgSigner]:
    """A signer for the current identity (or the one named), valid inside the block.

    Its public key blob is put back if it went missing, so what it signs
    always verifies.
    """
    fpr = fingerprint.upper() if fingerprint else current_identity(repo).fingerprint
    payload = _load_raw(repo, fpr)
    public = payload["public_key"].encode("latin-1")
    ref = BlobRef.parse(payload["public_key_ref"])
    if not ref.matches(public):
        raise IntegrityError(f"identity {fpr}: its public key does not match {ref}")
    if not repo.has(ref):
        repo.put(public, ref, kind=KIND_DATA)
    from pkvc.gpg import open_signer
    with open_signer(base64.b64decode(payload["secret_key"]), public_key=public,
                     **home_options) as signer:
        if signer.fingerprint != fpr:
            raise IntegrityError(f"identity {fpr} holds the secret key of {signer.fingerprint}")
        yield signer


# -- the sealed object ---------------------------------------------------------

def _name(fingerprint: str) -> str:
    return PREFIX + fingerprint


def _ad(repo: Repository, fingerprint: str) -> bytes:
    return f"pkvc identity {repo.config.id} {fingerprint}".encode()


def _seal(repo: Repository, fingerprint: str, payload: dict) -> bytes:
    return crypto.seal(repo.subkey(SUBKEY_PURPOSE), json.dumps(payload, indent=1).encode(),
                       _ad(repo, fingerprint))


def _load_raw(repo: Repository, fingerprint: str) -> dict:
    if not _FPR.match(fingerprint):
        raise UsageError(f"no identity {fingerprint!r}: expected a 40-hex fingerprint")
    name = _name(fingerprint)
    if not repo.backend.exists(name):
        raise NoIdentityError(f"this repository has no identity {fingerprint}")
    plain = crypto.unseal(repo.subkey(SUBKEY_PURPOSE), repo.backend.load(name),
                          _ad(repo, fingerprint), f"identity {fingerprint}")
    try:
        payload = json.loads(plain)
        if payload["fingerprint"] != fingerprint:
            raise ValueError
        return payload
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"identity {fingerprint} is damaged") from None


def _order(payload: dict) -> tuple:
    return (SchemaTime.parse(payload["activated"]).ns, payload["fingerprint"])


def _identity(payload: dict, current: bool) -> Identity:
    return Identity(payload["fingerprint"], BlobRef.parse(payload["public_key_ref"]),
                    SchemaTime.parse(payload["created"]), SchemaTime.parse(payload["activated"]),
                    payload.get("source", "generated"), current)
