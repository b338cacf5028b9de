"""The repository's sharing key: an X25519 key pair that offline bundles are sealed to.

`pkvc identity` prints the public half as `x25519-<64 hex>`; a sender
passes that to `share --bundle FILE --to KEY`, and only a repository
holding the secret half can open the bundle. The key pair is made on first
use and kept in the repository as the backend object
`sharing-keys/<16 hex>` (the first 16 hex digits of SHA-256 of the public
key), sealed like the signing identity:

    sharing-keys/<ID> = seal(subkey("pkvc-sharing"), JSON, ad)
    ad   = "pkvc sharing key " + config.id + " " + ID      (ASCII)
    JSON = {"public": "<64 hex>", "secret": "<64 hex>", "created": "<RFC 3339>"}

Two processes making the first key at the same moment leave two objects;
both stay usable (bundles are opened by trying each), and the one created
first (then the smaller id) is the one `identity` shows.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass

from nacl.public import PrivateKey, PublicKey

from pkvc import crypto
from pkvc.errors import IntegrityError, UsageError
from pkvc.repo import Repository
from pkvc.schema.timefmt import SchemaTime, format_time

PREFIX = "sharing-keys/"
SUBKEY_PURPOSE = "pkvc-sharing"
TEXT_PREFIX = "x25519-"
_TEXT = re.compile(r"^(?:x25519-)?([0-9a-f]{64})$")


@dataclass(frozen=True)
class SharingKey:
    id: str
    public: bytes  # 32 bytes
    secret: bytes = b""  # 32 bytes; empty when only the public half was asked for
    created: SchemaTime | None = None

    @property
    def text(self) -> str:
        return public_key_text(self.public)


def public_key_text(public: bytes) -> str:
    return TEXT_PREFIX + bytes(public).hex()


def parse_public_key(text: str) -> bytes:
    """`x25519-<64 hex>` (or the bare hex) -> 32 bytes; UsageError otherwise."""
    m = _TEXT.match(text.strip().lower())
    if not m:
        raise UsageError(f"{text!r} is not a sharing key: expected x25519-<64 hex digits> "
                         "as `pkvc identity` prints it")
    return bytes.fromhex(m.group(1))


def sharing_key(repo: Repository, clock=time.time_ns) -> SharingKey:
    """The repository's sharing key, made and stored on first use."""
    keys = sharing_keys(repo)
    if keys:
        return keys[0]
    secret = PrivateKey.generate()
    key = SharingKey(_key_id(bytes(secret.public_key)), bytes(secret.public_key),
                     bytes(secret), SchemaTime(clock()))
    payload = {"public": key.public.hex(), "secret": key.secret.hex(),
               "created": format_time(key.created)}
    repo.backend.store(PREFIX + key.id, crypto.seal(repo.subkey(SUBKEY_PURPOSE),
                                                    json.dumps(payload, indent=1).encode(),
                                                    _ad(repo, key.id)))
    return sharing_keys(repo)[0]


def sharing_keys(repo: Repository) -> list[SharingKey]:
    """Every stored sharing key, the one `identity` shows first."""
    keys = [_load(repo, info.name[len(PREFIX):]) for info in repo.backend.list(PREFIX)]
    return sorted(keys, key=lambda k: (k.created.ns if k.created else 0, k.id))


def _load(repo: Repository, key_id: str) -> SharingKey:
    name = PREFIX + key_id
    plain = crypto.unseal(repo.subkey(SUBKEY_PURPOSE), repo.backend.load(name),
                          _ad(repo, key_id), f"sharing key {key_id}")
    try:
        payload = json.loads(plain)
        public, secret = bytes.fromhex(payload["public"]), bytes.fromhex(payload["secret"])
        created = SchemaTime.parse(payload["created"])
        if bytes(PrivateKey(secret).public_key) != public or _key_id(public) != key_id:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"sharing key {key_id} is damaged") from None
    return SharingKey(key_id, public, secret, created)


def _key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:16]


def _ad(repo: Repository, key_id: str) -> bytes:
    return f"pkvc sharing key {repo.config.id} {key_id}".encode()


def public_key(text: str) -> PublicKey:
    return PublicKey(parse_public_key(text))
