"""Key slots: the master key, wrapped once per password.

A slot is the backend object `keys/<id>`, JSON holding the Argon2id
parameters and salt, and the master key sealed under the password-derived
key (associated data: the repository id, so a slot cannot be moved to
another repository). Any slot opens the repository; adding or removing a
password never re-encrypts data.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass

from pkvc import crypto
from pkvc.backends import Backend
from pkvc.errors import BackendError, PkvcError, UsageError, WrongPasswordError

PREFIX = "keys/"


@dataclass(frozen=True)
class KeySlot:
    id: str
    created: str
    host: str
    opslimit: int
    memlimit: int


def _ad(repo_id: str) -> bytes:
    return b"pkvc key slot " + repo_id.encode()


def make_slot(master: bytes, password: bytes, repo_id: str,
              opslimit: int = crypto.KDF_OPSLIMIT, memlimit: int = crypto.KDF_MEMLIMIT) -> bytes:
    salt = os.urandom(crypto.SALT_SIZE)
    wrap_key = crypto.password_key(password, salt, opslimit, memlimit)
    return json.dumps({
        "kdf": "argon2id",
        "opslimit": opslimit,
        "memlimit": memlimit,
        "salt": base64.b64encode(salt).decode(),
        "master": base64.b64encode(crypto.seal(wrap_key, master, _ad(repo_id))).decode(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
    }, indent=1).encode()


def _parse(data: bytes, name: str) -> dict:
    try:
        slot = json.loads(data)
        if slot.get("kdf") != "argon2id":
            raise ValueError("unknown kdf")
        return slot
    except (ValueError, AttributeError):
        raise PkvcError(f"key slot {name} is damaged") from None


def _info(slot_id: str, slot: dict) -> KeySlot:
    return KeySlot(slot_id, slot.get("created", ""), slot.get("host", ""),
                   slot["opslimit"], slot["memlimit"])


def list_slots(backend: Backend) -> list[KeySlot]:
    out = []
    for info in backend.list(PREFIX):
        slot_id = info.name[len(PREFIX):]
        out.append(_info(slot_id, _parse(backend.load(info.name), info.name)))
    return out


def unlock(backend: Backend, password: bytes, repo_id: str) -> tuple[bytes, str]:
    """The master key and the id of the slot that opened it."""
    names = [info.name for info in backend.list(PREFIX)]
    if not names:
        raise PkvcError(f"{backend.location} has no key slots; the repository cannot be opened")
    for name in names:
        slot = _parse(backend.load(name), name)
        wrap_key = crypto.password_key(password, base64.b64decode(slot["salt"]),
                                       slot["opslimit"], slot["memlimit"])
        master = crypto.try_unseal(wrap_key, base64.b64decode(slot["master"]), _ad(repo_id))
        if master is not None:
            return master, name[len(PREFIX):]
    raise WrongPasswordError("wrong password: no key slot of this repository opens with it")


def add_slot(backend: Backend, master: bytes, password: bytes, repo_id: str) -> str:
    slot_id = secrets.token_hex(8)
    backend.store(PREFIX + slot_id, make_slot(master, password, repo_id))
    return slot_id


def remove_slot(backend: Backend, slot_id: str) -> None:
    ids = [s.id for s in list_slots(backend)]
    matches = [i for i in ids if i.startswith(slot_id)] if slot_id else []
    if len(matches) != 1:
        raise UsageError(f"no single key slot matches {slot_id!r} (slots: {', '.join(ids)})")
    if len(ids) == 1:
        raise UsageError("refusing to remove the last key slot: the repository would be lost")
    try:
        backend.delete(PREFIX + matches[0])
    except BackendError as e:
        raise PkvcError(f"cannot remove key slot {matches[0]}: {e}") from e
