"""Keys, key derivation and authenticated encryption.

Terms: the *master key* is 32 random bytes made once per repository and
never stored in the clear; every password wraps it in a key slot through
Argon2id. Working keys (the *data key* for packs, and others) are derived
from the master key with keyed BLAKE2b, one per purpose, so no key is used
for two things. All sealing is XChaCha20-Poly1305 (libsodium via PyNaCl):
its 24-byte random nonces are safe to pick at random for any number of
messages, and the associated data binds a ciphertext to its meaning (a
blob's ref, a pack header) so ciphertexts cannot be swapped unnoticed.
"""

from __future__ import annotations

import os

import nacl.bindings as sodium
import nacl.hash
import nacl.encoding
from nacl._sodium import ffi as _ffi, lib as _lib
from nacl.pwhash import argon2id

from pkvc.errors import IntegrityError

KEY_SIZE = 32
NONCE_SIZE = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_SIZE = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE
SALT_SIZE = argon2id.SALTBYTES

# Argon2id cost for new key slots: about 0.1 s and 64 MiB here, above
# libsodium's "interactive" level. Stored per slot, so it can be raised later.
KDF_OPSLIMIT = 3
KDF_MEMLIMIT = 64 * 1024 * 1024


def random_key() -> bytes:
    return os.urandom(KEY_SIZE)


def derive_subkey(master: bytes, purpose: str) -> bytes:
    """A working key for one purpose; BLAKE2b's `person` field separates purposes."""
    person = purpose.encode()
    if len(person) > 16:
        raise ValueError("purpose names are at most 16 bytes")
    return nacl.hash.blake2b(
        b"", digest_size=KEY_SIZE, key=master, person=person.ljust(16, b"\0"),
        encoder=nacl.encoding.RawEncoder,
    )


def password_key(password: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    """Stretch a password with Argon2id so guessing it is expensive."""
    return argon2id.kdf(KEY_SIZE, password, salt, opslimit=opslimit, memlimit=memlimit)


def seal(key: bytes, plaintext, ad: bytes) -> bytes:
    """Encrypt and authenticate: nonce || ciphertext || tag. Calls libsodium
    directly, like `unseal_view`: PyNaCl's wrapper copied the plaintext and
    the ciphertext under the GIL (sealing 8 MiB: 330 -> 430-550 MB/s)."""
    _check_key(key)
    size = len(plaintext)
    out = _uncleared("unsigned char[]", NONCE_SIZE + size + TAG_SIZE)
    _ffi.memmove(out, os.urandom(NONCE_SIZE), NONCE_SIZE)
    with _ffi.from_buffer(plaintext) as src:
        _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
            out + NONCE_SIZE, _ffi.NULL, src, size, ad, len(ad), _ffi.NULL, out, key)
    return _ffi.buffer(out)[:]


def unseal(key: bytes, sealed, ad: bytes, what: str = "data") -> bytes:
    """Decrypt what `seal` made; any tampering raises IntegrityError naming `what`."""
    return unseal_view(key, sealed, ad, what).tobytes()


# Plaintext buffers need no zeroing: libsodium writes every byte of them.
_uncleared = _ffi.new_allocator(should_clear_after_alloc=False)


def unseal_view(key: bytes, sealed, ad: bytes, what: str = "data") -> memoryview:
    """`unseal` without copies, for pack blobs (megabytes each): `sealed` (any
    buffer) is read in place and the plaintext comes back as a read-only view
    of fresh memory. Calls libsodium directly: PyNaCl's wrapper copies the
    input twice and zero-fills then copies the output, all holding the GIL
    (a third of `check --read-data`'s GIL time); the decryption itself
    releases it."""
    _check_key(key)
    size = len(sealed) - SEAL_OVERHEAD
    if size < 0:
        raise IntegrityError(f"{what} is truncated")
    out = _uncleared("unsigned char[]", max(size, 1))
    # The view on `sealed` is released here, not by the collector: left to a
    # traceback that kept this frame alive, it was freed after the buffer it
    # viewed and crashed the interpreter (a damaged blob met on a thread).
    with _ffi.from_buffer(sealed) as src:
        failed = _lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
            out, _ffi.NULL, _ffi.NULL, src + NONCE_SIZE, size + TAG_SIZE, ad, len(ad), src, key)
    if failed:
        raise IntegrityError(f"{what} failed authentication (damaged or tampered)")
    return memoryview(_ffi.buffer(out, size)).toreadonly()


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:  # (libsodium reads KEY_SIZE bytes, whatever it is given)
        raise ValueError(f"a key is {KEY_SIZE} bytes")


def try_unseal(key: bytes, sealed, ad: bytes) -> bytes | None:
    """Like unseal, but None when the key is wrong: the key-slot probe."""
    try:
        return unseal(key, sealed, ad)
    except IntegrityError:
        return None
