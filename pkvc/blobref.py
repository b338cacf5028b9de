"""BlobRef: the name of a blob, `<hash>-<lowercase hex digest>`.

A small immutable value usable as a dict key, as Perkeep's `blob.Ref`.
pkvc writes `sha224-` refs and reads `sha1-` and `sha256-` ones too. Refs
with unknown hash names parse (Perkeep's `Parse` allows `foo-0b`) but cannot
be verified, so the repository refuses to store them.
"""

from __future__ import annotations

import hashlib
import re

# name -> (digest length in bytes, compact id used in binary keys)
KNOWN_HASHES = {"sha224": (28, 1), "sha1": (20, 2), "sha256": (32, 3)}
_BY_ID = {ident: name for name, (_, ident) in KNOWN_HASHES.items()}
DEFAULT_HASH = "sha224"
_HASHERS = {"sha224": hashlib.sha224, "sha1": hashlib.sha1, "sha256": hashlib.sha256}
_REF_RE = re.compile(r"^([a-z][a-z0-9]*)-([0-9a-f]+)$")
_UNKNOWN_ID = 0xFF


class BlobRef:
    """An immutable blob name; compare, hash and print it like a string."""

    __slots__ = ("hash_name", "hexdigest", "_str", "_key")

    def __init__(self, hash_name: str, digest: bytes | str):
        hexdigest = digest if isinstance(digest, str) else bytes(digest).hex()
        _fill(self, hash_name, hexdigest, f"{hash_name}-{hexdigest}", None)

    def __setattr__(self, name, value):
        raise AttributeError("BlobRef is immutable")

    @classmethod
    def parse(cls, text: str) -> "BlobRef":
        """Parse `sha224-<hex>`; raise ValueError with the offending text."""
        ref = cls.parse_or_none(text)
        if ref is None:
            raise ValueError(f"not a blobref: {text!r}")
        return ref

    @classmethod
    def parse_or_none(cls, text) -> "BlobRef | None":
        if not isinstance(text, str):
            return None
        m = _REF_RE.match(text)
        if not m:
            return None
        name, hexdigest = m.groups()
        known = KNOWN_HASHES.get(name)
        if known and len(hexdigest) != 2 * known[0]:
            return None
        return _fill(object.__new__(cls), name, hexdigest, text, None)

    @classmethod
    def of(cls, data, hash_name: str = DEFAULT_HASH) -> "BlobRef":
        """The ref of `data` (bytes-like) under `hash_name`."""
        if hash_name == DEFAULT_HASH:  # hashlib.new's lookup costs more than a small hash
            return cls(hash_name, hashlib.sha224(data).hexdigest())
        return cls(hash_name, hashlib.new(hash_name, data).digest())

    @property
    def digest(self) -> bytes:
        if self.hash_name in KNOWN_HASHES:
            return self.to_key()[1:]
        return bytes.fromhex(self.hexdigest)

    @property
    def is_known(self) -> bool:
        """Whether pkvc can compute this hash and so verify the blob."""
        return self.hash_name in KNOWN_HASHES

    def matches(self, data) -> bool:
        """Whether `data` hashes to this ref (False for unknown hashes)."""
        hasher = _HASHERS.get(self.hash_name)  # (hashlib.new costs more than a small hash)
        return hasher is not None and hasher(data).digest() == self.to_key()[1:]

    def to_key(self) -> bytes:
        """Compact binary form for index keys: one id byte + digest."""
        key = self._key
        if key is None:
            known = KNOWN_HASHES.get(self.hash_name)
            if known:
                key = bytes([known[1]]) + bytes.fromhex(self.hexdigest)
            else:
                key = bytes([_UNKNOWN_ID]) + self._str.encode()
            _set_key(self, key)
        return key

    @classmethod
    def from_key(cls, key: bytes) -> "BlobRef":
        if key[0] == _UNKNOWN_ID:
            return cls.parse(key[1:].decode())
        name, hexdigest = _BY_ID[key[0]], key[1:].hex()
        return _fill(object.__new__(cls), name, hexdigest, f"{name}-{hexdigest}",
                     key if type(key) is bytes else bytes(key))

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return f"BlobRef({self._str!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, BlobRef) and self._str == other._str

    def __lt__(self, other: "BlobRef") -> bool:
        return self._str < other._str

    def __hash__(self) -> int:
        return hash(self._str)

    def __reduce__(self):
        return (BlobRef, (self.hash_name, self.hexdigest))


# The slots' own setters: a BlobRef is filled once, past its __setattr__
# (which refuses), and faster than object.__setattr__ (headers and schema
# blobs make one per entry and per reference).
_set_hash_name = BlobRef.hash_name.__set__
_set_hexdigest = BlobRef.hexdigest.__set__
_set_str = BlobRef._str.__set__
_set_key = BlobRef._key.__set__


def _fill(ref: BlobRef, hash_name: str, hexdigest: str, text: str, key: bytes | None) -> BlobRef:
    _set_hash_name(ref, hash_name)
    _set_hexdigest(ref, hexdigest)
    _set_str(ref, text)
    _set_key(ref, key)  # to_key(), made once when first asked
    return ref
