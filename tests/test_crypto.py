"""crypto: the Argon2id key derivation gives libsodium's key wherever it runs."""

import os
import sys

from nacl.pwhash import argon2id

from pkvc import crypto


def test_a_large_derivation_runs_in_a_child_and_gives_libsodiums_key():
    salt = os.urandom(crypto.SALT_SIZE)
    for password in (b"pw", b"", bytes(range(256))):
        expected = argon2id.kdf(crypto.KEY_SIZE, password, salt,
                                opslimit=crypto.KDF_OPSLIMIT, memlimit=crypto.KDF_MEMLIMIT)
        assert crypto._password_key_in_child(password, salt, crypto.KDF_OPSLIMIT,
                                              crypto.KDF_MEMLIMIT) == expected
        assert crypto.password_key(password, salt, crypto.KDF_OPSLIMIT,
                                   crypto.KDF_MEMLIMIT) == expected


def test_without_a_child_the_key_is_derived_here(monkeypatch):
    salt = os.urandom(crypto.SALT_SIZE)
    expected = argon2id.kdf(crypto.KEY_SIZE, b"pw", salt, opslimit=3, memlimit=32 << 20)
    monkeypatch.setattr(sys, "executable", "")
    assert crypto._password_key_in_child(b"pw", salt, 3, 32 << 20) is None
    assert crypto.password_key(b"pw", salt, 3, 32 << 20) == expected
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    assert crypto.password_key(b"pw", salt, 3, 32 << 20) == expected
