"""Perkeep's JSON signing: a detached OpenPGP signature spliced into the JSON.

Terms (Perkeep's doc/json-signing): `J` is the unsigned JSON; `T` is J without
trailing whitespace and its final `}`, the exact bytes signed; `BP` is what a
verifier finds before the LAST `,"camliSig":"` and equals T; camliSig holds
the armored signature squeezed onto one line. The signer is the blobref of
an armored public key blob (camliSigner), of which only the first packet
counts. Verification is pure Python (`pkvc.openpgp`) because GnuPG will not
import Perkeep's user-ID-less key blobs. Rules in docs/signing.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Protocol

from pkvc import openpgp
from pkvc.blobref import BlobRef
from pkvc.errors import BlobNotFoundError, SchemaError, SignatureError
from pkvc.schema.canonical import parse_schema

SIG_SEPARATOR = b',"camliSig":"'
ACCEPTED_HASHES = {2: "SHA1", 8: "SHA256"}  # Perkeep refuses every other hash
# Go's unicode.IsSpace, UTF-8 encoded: what Sign trims from the end of J.
_GO_SPACES = tuple(
    ch.encode() for ch in "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
    "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

KeyFetcher = Callable[[BlobRef], "bytes | None"]


class MissingSignerKeyError(SignatureError):
    """The camliSigner key blob is not available (yet): Perkeep's ErrMissingKeyBlob.

    Unlike a bad signature this can change: the claim verifies once the key
    blob arrives, so callers may keep the claim aside and retry.
    """


@dataclass(frozen=True)
class VerifiedSignature:
    """Who signed a blob and when, known only after the signature checked out."""

    signer: BlobRef  # the camliSigner key blob
    key_id: str  # e.g. 2931A67C26F5ABDA
    fingerprint: str  # 40 upper-case hex digits
    signed_at: datetime  # signature creation time, UTC (not the claimDate)
    hash_name: str  # "SHA1" or "SHA256"


class Signer(Protocol):
    """What `sign` needs; `pkvc.gpg.GpgSigner` is the real one."""

    fingerprint: str
    public_key: bytes  # the armored public key blob that camliSigner names

    def sign(self, data: bytes) -> bytes:
        """An armored, detached, binary (not text mode) SHA-256 signature."""


# --- splitting -------------------------------------------------------------


def split_signed(blob: bytes) -> tuple[bytes, str]:
    """(BP, camliSig) of a signed blob; SchemaError if it is not shaped as one."""
    bp, _, camli_sig = _split(blob)
    return bp, camli_sig


def _split(blob: bytes) -> tuple[bytes, BlobRef, str]:
    blob = bytes(blob)
    index = blob.rfind(SIG_SEPARATOR)
    if index < 0:
        raise SchemaError('not a signed blob: no ,"camliSig":" separator')
    bp = blob[:index]
    signer = _payload_signer(bp)
    return bp, signer, _camli_sig(b"{" + blob[index + 1 :])


def _payload_signer(bp: bytes) -> BlobRef:
    """BP + "}" must be a schema object whose camliSigner is a blobref."""
    payload = parse_schema(bp + b"}")
    signer = payload.get("camliSigner")
    if not isinstance(signer, str):
        raise SchemaError("signed blob has no string camliSigner")
    ref = BlobRef.parse_or_none(signer)
    if ref is None:
        raise SchemaError(f"signed blob has a malformed camliSigner {signer[:80]!r}")
    return ref


def _camli_sig(bs: bytes) -> str:
    """`{` + the rest must be a JSON object with exactly one key, camliSig."""
    try:
        obj = json.loads(bs.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        raise SchemaError("signed blob: invalid JSON after the camliSig separator") from None
    if not isinstance(obj, dict) or list(obj) != ["camliSig"]:
        raise SchemaError("signed blob: the signature part must hold exactly one key, camliSig")
    if not isinstance(obj["camliSig"], str):
        raise SchemaError("signed blob: camliSig is not a string")
    return obj["camliSig"]


# --- verifying -------------------------------------------------------------


def verify(blob: bytes, fetch_key: KeyFetcher, now: datetime | None = None) -> VerifiedSignature:
    """Check a signed blob the way Perkeep does; return who signed it.

    `fetch_key(ref)` returns the key blob's bytes, or None (or raises
    BlobNotFoundError) when it is absent. With `now`, a signature whose
    expiration subpacket has passed is refused; Perkeep never checks this,
    and without `now` neither does pkvc. Raises SchemaError if `blob` is not
    a signed schema blob at all, MissingSignerKeyError if the key blob is
    absent, SignatureError for every other failure.
    """
    bp, signer, camli_sig = _split(blob)
    key = _signer_key(signer, fetch_key)
    sig = _signature(camli_sig)
    try:
        openpgp.verify(key, sig, bp)
    except openpgp.PacketError as e:
        raise SignatureError(f"signature by {signer} (key {key.key_id}) does not verify: {e}") from None
    _check_expiry(sig, now)
    return VerifiedSignature(signer, key.key_id, key.fingerprint, sig.created_at, sig.hash_name)


def _signer_key(ref: BlobRef, fetch_key: KeyFetcher) -> openpgp.PublicKey:
    try:
        data = fetch_key(ref)
    except BlobNotFoundError:
        data = None
    if data is None:
        raise MissingSignerKeyError(f"signer key {ref} missing: its public key blob is not available")
    if not ref.matches(data):
        raise SignatureError(f"signer key blob does not hash to {ref}")
    try:
        return openpgp.read_public_key(bytes(data))
    except openpgp.PacketError as e:
        raise SignatureError(f"signer key {ref} is not a usable public key: {e}") from None


def _signature(camli_sig: str) -> openpgp.Signature:
    """Parse camliSig and apply Perkeep's policy: SHA-1/SHA-256, binary only."""
    try:
        sig = openpgp.read_signature(openpgp.rearmor(camli_sig))
    except openpgp.PacketError as e:
        raise SignatureError(f"malformed camliSig armor: {e}") from None
    if sig.hash_algorithm not in ACCEPTED_HASHES:
        raise SignatureError(
            f"unsupported hash {sig.hash_name}: Perkeep only verifies SHA1 or SHA256 signatures"
        )
    if sig.sig_type != openpgp.SIG_BINARY:
        raise SignatureError(f"signature type 0x{sig.sig_type:02x} is not binary (0x00)")
    return sig


def _check_expiry(sig: openpgp.Signature, now: datetime | None) -> None:
    if now is None or not sig.expires:
        return
    if now >= sig.created_at + timedelta(seconds=sig.expires):
        raise SignatureError(f"signature expired {sig.expires} s after {sig.created_at:%Y-%m-%dT%H:%M:%SZ}")


# --- signing ---------------------------------------------------------------


def signed_payload(unsigned_json: bytes) -> bytes:
    """T: J without trailing whitespace (Go's unicode.IsSpace) and its final `}`."""
    data = _trim_go_space(bytes(unsigned_json))
    if not data.endswith(b"}"):
        raise SchemaError("unsigned JSON must end with '}'")
    return data[:-1]


def _trim_go_space(data: bytes) -> bytes:
    while True:
        for space in _GO_SPACES:
            if data.endswith(space):
                data = data[: -len(space)]
                break
        else:
            return data


def sign(unsigned_json: bytes, signer: Signer) -> bytes:
    """Sign J as Perkeep does: T + `,"camliSig":"` + S + `"}` + newline.

    J must name the signer's own key blob as camliSigner. The result is
    verified before it is returned, so a signature Perkeep would refuse
    (say, GnuPG's default SHA-512) never leaves this function.
    """
    t = signed_payload(unsigned_json)
    signer_ref = _payload_signer(t)
    if not signer_ref.matches(signer.public_key):
        raise SignatureError(f"camliSigner {signer_ref} is not this signer's public key blob")
    try:
        packet = openpgp.dearmor(signer.sign(t), openpgp.SIGNATURE_BLOCK)
    except openpgp.PacketError as e:
        raise SignatureError(f"the signer returned a malformed signature: {e}") from None
    blob = t + SIG_SEPARATOR + openpgp.one_line_armor(packet).encode() + b'"}\n'
    verify(blob, lambda ref: signer.public_key if ref == signer_ref else None)
    return blob
