"""A minimal, strict OpenPGP reader: just enough to check Perkeep signatures.

Perkeep's signer key blob is a bare public-key packet with no user ID, which
GnuPG refuses to import, so pkvc reads the packets itself (RFC 4880): ASCII
armor with its CRC-24, the first packet of a public key block (RSA, v4), one
v4 signature packet, and the RSA PKCS#1 v1.5 check. Whatever it does not
understand is a `PacketError`, never a guess. Terms: a *packet* is a tag and
a body; the *hashed prefix* is the part of a signature body that the v4
trailer covers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

MAX_ARMOR_SIZE = 256 * 1024  # Perkeep reads at most this much of a key blob
PUBLIC_KEY_BLOCK = "PGP PUBLIC KEY BLOCK"
SIGNATURE_BLOCK = "PGP SIGNATURE"

TAG_SIGNATURE = 2
TAG_PUBLIC_KEY = 6
SIG_BINARY = 0x00
RSA_SIGNING_ALGORITHMS = {1, 3}  # RSA, RSA sign-only (2 is encrypt-only)
# OpenPGP hash id -> (hashlib name, name of cryptography's hash class)
HASHES = {
    2: ("sha1", "SHA1"),
    8: ("sha256", "SHA256"),
    9: ("sha384", "SHA384"),
    10: ("sha512", "SHA512"),
    11: ("sha224", "SHA224"),
}
_SUB_CREATED, _SUB_EXPIRES, _SUB_ISSUER, _SUB_ISSUER_FPR = 2, 3, 16, 33
_UNDERSTOOD_SUBPACKETS = {_SUB_CREATED, _SUB_EXPIRES, _SUB_ISSUER, _SUB_ISSUER_FPR}


class PacketError(ValueError):
    """Bytes that are not the OpenPGP data expected, or a signature that fails."""


# --- armor -----------------------------------------------------------------


def _crc24_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 16
        for _ in range(8):
            crc = (crc << 1) ^ (0x1864CFB if crc & 0x800000 else 0)
        table.append(crc & 0xFFFFFF)
    return table


_CRC24_TABLE = _crc24_table()


def crc24(data: bytes) -> int:
    """The armor checksum of RFC 4880 section 6.1."""
    crc = 0xB704CE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ _CRC24_TABLE[(crc >> 16) ^ byte]
    return crc


def dearmor(armored: bytes | str, block_type: str) -> bytes:
    """The binary contents of the first armored block, which must be `block_type`.

    Like Go's reader, text before the BEGIN line and after the END line is
    ignored; unlike it, the CRC-24 line is required.
    """
    if isinstance(armored, str):
        armored = armored.encode("utf-8")
    if len(armored) > MAX_ARMOR_SIZE:
        raise PacketError(f"armored data is over {MAX_ARMOR_SIZE} bytes")
    lines = iter(line.strip() for line in armored.decode("latin-1").split("\n"))
    found = _find_begin(lines)
    if found != block_type:
        raise PacketError(f"armored block is {found!r}, expected {block_type!r}")
    _skip_headers(lines)
    body, crc_line = _read_body(lines, block_type)
    data = _b64decode(body, "armor body")
    if int.from_bytes(_b64decode(crc_line[1:], "armor checksum"), "big") != crc24(data):
        raise PacketError("armor CRC-24 checksum does not match")
    return data


def _find_begin(lines) -> str:
    for line in lines:
        if len(line) > 16 and line.startswith("-----BEGIN ") and line.endswith("-----"):
            return line[len("-----BEGIN ") : -len("-----")]
    raise PacketError("no armored block found")


def _skip_headers(lines) -> None:
    for line in lines:
        if not line:
            return
        if ": " not in line:
            raise PacketError(f"bad armor header line {line[:40]!r}")
    raise PacketError("armor is truncated in its headers")


def _read_body(lines, block_type: str) -> tuple[str, str]:
    body = []
    for line in lines:
        if line.startswith("-----"):
            raise PacketError("armor has no CRC-24 checksum line")
        if line.startswith("="):
            if len(line) != 5:
                raise PacketError(f"bad armor checksum line {line[:40]!r}")
            _expect_end(lines, block_type)
            return "".join(body), line
        body.append(line)
    raise PacketError("armor is truncated")


def _expect_end(lines, block_type: str) -> None:
    for line in lines:
        if line:
            if line != f"-----END {block_type}-----":
                raise PacketError(f"expected the END line, found {line[:40]!r}")
            return
    raise PacketError("armor has no END line")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise PacketError(f"{what} is not valid base64: {e}") from None


def one_line_armor(data: bytes) -> str:
    """Armor squeezed onto one line, as camliSig holds it: base64 + "=" + CRC."""
    crc = base64.b64encode(crc24(data).to_bytes(3, "big")).decode()
    return base64.b64encode(data).decode() + "=" + crc


def rearmor(one_line: str) -> str:
    """Perkeep's reArmor: rebuild multi-line armor from a camliSig value.

    The LAST "=" starts the checksum; the body before it keeps its padding.
    """
    last_eq = one_line.rfind("=")
    if last_eq < 0:
        raise PacketError("camliSig has no '=' checksum marker")
    body, crc = one_line[:last_eq], one_line[last_eq:]
    chunks = "".join(body[i : i + 60] + "\n" for i in range(0, len(body), 60))
    return f"-----BEGIN {SIGNATURE_BLOCK}-----\n\n{chunks}{crc}\n-----END {SIGNATURE_BLOCK}-----\n"


# --- packets ---------------------------------------------------------------


class _Reader:
    """Bounds-checked reading of a packet body; running short is a PacketError."""

    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise PacketError(f"{self.what} is truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def mpi(self) -> int:
        """A multiprecision integer. Go writes the bit count as 8*len(bytes)
        even when the value is shorter, so only a value longer than its bit
        count is an error."""
        bits = self.uint(2)
        value = int.from_bytes(self.take((bits + 7) // 8), "big")
        if value.bit_length() > bits:
            raise PacketError(f"{self.what} has an MPI longer than its bit count")
        return value

    def done(self) -> bool:
        return self.pos == len(self.data)

    def end(self) -> None:
        if not self.done():
            raise PacketError(f"{self.what} has {len(self.data) - self.pos} unexpected trailing bytes")


def read_packet(data: bytes, offset: int = 0) -> tuple[int, bytes, int]:
    """(tag, body, offset of the next packet) for the packet at `offset`."""
    r = _Reader(data, "packet")
    r.pos = offset
    header = r.uint(1)
    if not header & 0x80:
        raise PacketError("not an OpenPGP packet (bit 7 of the header is clear)")
    if header & 0x40:
        tag, length = header & 0x3F, _new_length(r)
    else:
        tag, length = (header >> 2) & 0x0F, _old_length(r, header & 0x03)
    body = r.take(length)
    return tag, body, r.pos


def _new_length(r: _Reader) -> int:
    first = r.uint(1)
    if first < 192:
        return first
    if first < 224:
        return ((first - 192) << 8) + r.uint(1) + 192
    if first == 255:
        return r.uint(4)
    raise PacketError("partial body lengths are not allowed here")


def _old_length(r: _Reader, length_type: int) -> int:
    if length_type == 3:
        raise PacketError("indeterminate packet lengths are not allowed here")
    return r.uint((1, 2, 4)[length_type])


def _first_packet(data: bytes, tag: int, what: str) -> bytes:
    found, body, _ = read_packet(data)
    if found != tag:
        raise PacketError(f"first packet has tag {found}, expected a {what} (tag {tag})")
    return body


# --- public keys -----------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """An RSA v4 public key packet: what a signer key blob names."""

    algorithm: int
    created: int
    n: int
    e: int
    fingerprint: str  # 40 upper-case hex digits

    @property
    def key_id(self) -> str:
        """The long key id, e.g. 2931A67C26F5ABDA (last 16 fingerprint digits)."""
        return self.fingerprint[-16:]


def parse_public_key(body: bytes) -> PublicKey:
    """Parse a public-key packet body; only v4 RSA signing keys are accepted."""
    r = _Reader(body, "public key packet")
    version = r.uint(1)
    if version != 4:
        raise PacketError(f"public key version {version} is not supported (only v4)")
    created, algorithm = r.uint(4), r.uint(1)
    if algorithm not in RSA_SIGNING_ALGORITHMS:
        raise PacketError(f"public key algorithm {algorithm} is not an RSA signing key")
    n, e = r.mpi(), r.mpi()
    r.end()
    if len(body) > 0xFFFF:
        raise PacketError("public key packet is too long")
    prefix = b"\x99" + len(body).to_bytes(2, "big")
    fingerprint = hashlib.sha1(prefix + body).hexdigest().upper()
    return PublicKey(algorithm, created, n, e, fingerprint)


def read_public_key(armored: bytes | str) -> PublicKey:
    """The key in the FIRST packet of an armored public key block.

    User IDs and self-signatures that may follow are neither read nor checked,
    exactly as Perkeep does.
    """
    data = dearmor(armored, PUBLIC_KEY_BLOCK)
    return parse_public_key(_first_packet(data, TAG_PUBLIC_KEY, "public key"))


# --- signatures ------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """A v4 RSA signature packet, parsed but not yet checked."""

    sig_type: int
    pubkey_algorithm: int
    hash_algorithm: int
    hashed_prefix: bytes  # version .. end of hashed subpackets
    created: int  # unix seconds
    expires: int | None  # seconds after `created`; None or 0 = never
    issuer: str | None  # as claimed by the signature; never trusted
    hash_tag: bytes  # left 16 bits of the digest
    value: int  # the RSA signature

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created, timezone.utc)

    @property
    def hash_name(self) -> str:
        """e.g. "SHA256"; "hash-N" for an algorithm pkvc does not know."""
        known = HASHES.get(self.hash_algorithm)
        return known[0].upper() if known else f"hash-{self.hash_algorithm}"


def parse_signature(body: bytes) -> Signature:
    """Parse a signature packet body; only v4 RSA signatures are accepted."""
    r = _Reader(body, "signature packet")
    version = r.uint(1)
    if version != 4:
        raise PacketError(f"signature version {version} is not supported (only v4)")
    sig_type, pubkey_algorithm, hash_algorithm = r.uint(1), r.uint(1), r.uint(1)
    hashed = r.take(r.uint(2))
    hashed_prefix = body[: r.pos]
    unhashed = r.take(r.uint(2))
    hash_tag = r.take(2)
    if pubkey_algorithm not in RSA_SIGNING_ALGORITHMS:
        raise PacketError(f"signature algorithm {pubkey_algorithm} is not RSA")
    value = r.mpi()
    r.end()
    fields = _hashed_fields(hashed)
    issuer = fields.get(_SUB_ISSUER) or _unhashed_issuer(unhashed)
    return Signature(
        sig_type, pubkey_algorithm, hash_algorithm, hashed_prefix,
        fields[_SUB_CREATED], fields.get(_SUB_EXPIRES), issuer, hash_tag, value,
    )


def read_signature(armored: bytes | str) -> Signature:
    """The signature in the first packet of an armored signature block."""
    data = dearmor(armored, SIGNATURE_BLOCK)
    return parse_signature(_first_packet(data, TAG_SIGNATURE, "signature"))


def _subpackets(area: bytes):
    """(type, critical, data) for each subpacket of a subpacket area."""
    r = _Reader(area, "signature subpacket area")
    while not r.done():
        first = r.uint(1)
        if first < 192:
            length = first
        elif first < 255:
            length = ((first - 192) << 8) + r.uint(1) + 192
        else:
            length = r.uint(4)
        if length == 0:
            raise PacketError("empty signature subpacket")
        kind = r.uint(1)
        yield kind & 0x7F, bool(kind & 0x80), r.take(length - 1)


def _hashed_fields(area: bytes) -> dict:
    """Creation time (required), expiry and issuer from the hashed area."""
    fields: dict = {}
    seen: set[int] = set()
    for kind, critical, data in _subpackets(area):
        if critical and kind not in _UNDERSTOOD_SUBPACKETS:
            raise PacketError(f"unknown critical signature subpacket {kind}")
        if kind in seen and kind in _UNDERSTOOD_SUBPACKETS:
            raise PacketError(f"signature subpacket {kind} appears twice")
        seen.add(kind)
        if kind in (_SUB_CREATED, _SUB_EXPIRES):
            fields[kind] = _exact(data, 4, kind)
        elif kind == _SUB_ISSUER:  # overrides the one derived from type 33
            fields[kind] = data.hex().upper() if len(data) == 8 else _bad(kind)
        elif kind == _SUB_ISSUER_FPR and len(data) == 21 and data[0] == 4:
            fields.setdefault(_SUB_ISSUER, data[-8:].hex().upper())
    if _SUB_CREATED not in fields:
        raise PacketError("signature has no creation time")
    return fields


def _unhashed_issuer(area: bytes) -> str | None:
    """GnuPG puts the issuer key id in the unhashed area; it is only a hint."""
    for kind, _, data in _subpackets(area):
        if kind == _SUB_ISSUER and len(data) == 8:
            return data.hex().upper()
    return None


def _exact(data: bytes, size: int, kind: int) -> int:
    return int.from_bytes(data, "big") if len(data) == size else _bad(kind)


def _bad(kind: int):
    raise PacketError(f"signature subpacket {kind} has the wrong length")


# --- verification ----------------------------------------------------------


def signed_digest(sig: Signature, data: bytes) -> bytes:
    """The v4 digest: data, the hashed prefix, then 0x04 0xFF and its length."""
    if sig.hash_algorithm not in HASHES:
        raise PacketError(f"hash algorithm {sig.hash_algorithm} is not supported")
    h = hashlib.new(HASHES[sig.hash_algorithm][0])
    h.update(data)
    h.update(sig.hashed_prefix)
    h.update(b"\x04\xff" + len(sig.hashed_prefix).to_bytes(4, "big"))
    return h.digest()


def verify(key: PublicKey, sig: Signature, data: bytes) -> None:
    """Raise PacketError unless `sig` is `key`'s binary signature over `data`."""
    if sig.sig_type != SIG_BINARY:
        raise PacketError(f"signature type 0x{sig.sig_type:02x} is not binary (0x00)")
    digest = signed_digest(sig, data)
    if digest[:2] != sig.hash_tag:
        raise PacketError("hash tag doesn't match")
    if sig.value >= key.n:
        raise PacketError("bad signature: value is out of range for the key")
    # Imported here: cryptography's Rust core adds ~6 MiB to every command's
    # memory, and most commands never check an RSA signature.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

    try:
        public = rsa.RSAPublicNumbers(key.e, key.n).public_key()
    except ValueError as e:
        raise PacketError(f"unusable RSA key: {e}") from None
    size = (key.n.bit_length() + 7) // 8
    algorithm = utils.Prehashed(getattr(hashes, HASHES[sig.hash_algorithm][1])())
    try:
        public.verify(sig.value.to_bytes(size, "big"), digest, padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise PacketError("bad signature: RSA check failed") from None
