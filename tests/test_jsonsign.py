"""Perkeep JSON signing: every Perkeep vector verifies, pkvc's own blobs too.

Uses the real gpg binary; one RSA-3072 key is generated per test session.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from vectors import vectors_dir
from hypothesis import given
from hypothesis import strategies as st

from pkvc import openpgp
from pkvc.blobref import BlobRef
from pkvc.errors import BlobNotFoundError, SchemaError, SignatureError
from pkvc.gpg import GnupgHome
from pkvc.schema import jsonsign
from pkvc.schema.jsonsign import MissingSignerKeyError

USER_TWO = "sha1-f019d17dd308eebbd49fd94536eb67214c2f0587"
CAMLI_TESTER = "sha1-f2b0b7da718b97ce8c31591d8ed4645c777f3ef4"
PERKEEP_SIGNER = "sha224-a794846212ff67acdd00c6b90eee492baf674d41da8a621d2e8042dd"
SEP = jsonsign.SIG_SEPARATOR

# README section 2: signer key id, hash, signature time (unix seconds).
EXPECTED = {
    "signed/doc-example.signed.json": ("2931A67C26F5ABDA", "SHA1", 1323299021),
    "signed/share-expiring.sha1-64ffa72f.json": ("2931A67C26F5ABDA", "SHA256", 1378684733),
    "signed/share-noexpiry.sha1-931875ec.json": ("2931A67C26F5ABDA", "SHA256", 1378688469),
    "signed/share-user2.sha1-91c66602.json": ("851E08B24BEC5AB5", "SHA1", 1296076902),
    "signed/share-user2-talk.sha1-071fda36.json": ("851E08B24BEC5AB5", "SHA1", 1296077230),
    "signed/permanode-brad.sha1-648357ea.json": ("68F378337FEAFB7C", "SHA1", 1296681923),
    "signed/permanode-brad-terms.json": ("68F378337FEAFB7C", "SHA1", 1296248946),
    "signed-sha224/planned-permanode-picpn-1234.sha224-fbc46cf3.json": ("2931A67C26F5ABDA", "SHA256", 1322443956),
    "signed-sha224/planned-permanode-gal-1234.sha224-ee98f500.json": ("2931A67C26F5ABDA", "SHA256", 1322443956),
    "signed-sha224/planned-permanode-root-abcd.sha224-bc11ed94.json": ("2931A67C26F5ABDA", "SHA256", 1322443956),
    "signed-sha224/planned-permanode-picpn-9876543210.sha224-58bbb7bf.json": ("2931A67C26F5ABDA", "SHA256", 1322443956),
    "signed-sha224/planned-permanode-picpn-9876543211.sha224-11c2cf95.json": ("2931A67C26F5ABDA", "SHA256", 1322443956),
    "signed-sha224/planned-permanode-pn1.sha224-e42e49e0.json": ("2931A67C26F5ABDA", "SHA256", 1322443956),
    "signed-sha224/planned-permanode-member.sha224-4dc5db78.json": ("2931A67C26F5ABDA", "SHA256", 1322443956),
    "signed-sha224/planned-permanode-pn2.sha224-5a04f1cc.json": ("2931A67C26F5ABDA", "SHA256", 1322443957),
    "signed-sha224/claim-set-attribute-tag-37.sha224-60c6ad71.json": ("2931A67C26F5ABDA", "SHA256", 1322443957),
    "signed-sha224/claim-set-attribute-tag-38.sha224-9ca71b6f.json": ("2931A67C26F5ABDA", "SHA256", 1322443958),
    "signed-sha224/claim-set-attribute-camliRoot-39.sha224-79aca6e3.json": ("2931A67C26F5ABDA", "SHA256", 1322443959),
    "signed-sha224/claim-add-attribute-camliMember-42.sha224-755a6cb3.json": ("2931A67C26F5ABDA", "SHA256", 1322443962),
    "signed-sha224/claim-del-attribute-title-43.sha224-00331f51.json": ("2931A67C26F5ABDA", "SHA256", 1322443963),
    "signed-sha224/claim-set-attribute-tag-37.sha224-dd2b8122.json": ("2931A67C26F5ABDA", "SHA256", 1322443957),
    "signed-sha224/claim-delete-38.sha224-ac330e06.json": ("2931A67C26F5ABDA", "SHA256", 1322443958),
    "signed-sha224/claim-delete-39.sha224-d52d4a25.json": ("2931A67C26F5ABDA", "SHA256", 1322443959),
}
UNVERIFIABLE = "signed/share-unverifiable.sha1-102758fb.json"


@pytest.fixture(scope="module")
def key_blobs() -> dict[BlobRef, bytes]:
    """Every armored key blob, under its sha1 and its sha224 ref."""
    blobs = {}
    for path in (vectors_dir() / "keys").iterdir():
        if path.suffix != ".gpg":
            data = path.read_bytes()
            blobs[BlobRef.of(data, "sha1")] = data
            blobs[BlobRef.of(data)] = data
    return blobs


@pytest.fixture(scope="module")
def blobs() -> dict[str, bytes]:
    """Every verifiable signed vector by its path under the vector directory."""
    vectors = vectors_dir()
    found = {str(p.relative_to(vectors)) for p in vectors.glob("signed*/*.json")}
    found -= {"signed/doc-example.J.json", UNVERIFIABLE}
    assert found == set(EXPECTED)
    return {name: (vectors / name).read_bytes() for name in EXPECTED}


def _bp(blob: bytes) -> bytes:
    return blob[: blob.rfind(SEP)]


def _unsigned(signer_ref, **fields) -> bytes:
    body = "".join(f',\n  "{k}": "{v}"' for k, v in sorted({"camliSigner": str(signer_ref), **fields}.items()))
    return ('{"camliVersion": 1' + body + "\n}").encode()


# --- (a) every Perkeep vector verifies ---------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_perkeep_vector_verifies(blobs, key_blobs, name):
    key_id, hash_name, created = EXPECTED[name]
    verified = jsonsign.verify(blobs[name], key_blobs.get)
    assert verified.key_id == key_id
    assert verified.fingerprint.endswith(key_id)
    assert verified.hash_name == hash_name
    assert verified.signed_at == datetime.fromtimestamp(created, timezone.utc)
    assert verified.signer in key_blobs


def test_sha224_era_signer_is_perkeeps_bare_key_blob(blobs, key_blobs):
    verified = jsonsign.verify(blobs["signed-sha224/planned-permanode-pn1.sha224-e42e49e0.json"], key_blobs.get)
    assert str(verified.signer) == PERKEEP_SIGNER
    assert b"PUBLIC KEY BLOCK" in key_blobs[verified.signer]


def test_unverifiable_share_has_its_signer_key_missing(key_blobs):
    blob = (vectors_dir() / UNVERIFIABLE).read_bytes()
    with pytest.raises(MissingSignerKeyError, match=r"signer key sha1-3bee195d\S* missing"):
        jsonsign.verify(blob, key_blobs.get)


def test_a_fetcher_may_raise_blob_not_found(blobs):
    def fetch(ref):
        raise BlobNotFoundError(str(ref))
    with pytest.raises(MissingSignerKeyError):
        jsonsign.verify(blobs["signed/share-expiring.sha1-64ffa72f.json"], fetch)


def test_key_blob_must_hash_to_camli_signer(blobs, key_blobs):
    user_two = key_blobs[BlobRef.parse(USER_TWO)]
    with pytest.raises(SignatureError, match="does not hash"):
        jsonsign.verify(blobs["signed/share-expiring.sha1-64ffa72f.json"], lambda ref: user_two)


# --- (b) what the signature covers --------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_whitespace_after_the_signature_is_not_signed(blobs, key_blobs, name):
    blob = blobs[name]
    assert blob.endswith(b'"}\n')
    for variant in (blob[:-1], blob + b" \t\r\n\n"):
        assert jsonsign.verify(variant, key_blobs.get).key_id == EXPECTED[name][0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_other_bytes_after_the_signature_are_refused(blobs, key_blobs, name):
    with pytest.raises(SchemaError):
        jsonsign.verify(blobs[name] + b"x", key_blobs.get)


@given(st.data())
def test_any_byte_change_in_bp_fails(blobs, key_blobs, data):
    name = data.draw(st.sampled_from(sorted(EXPECTED)))
    blob = bytearray(blobs[name])
    at = data.draw(st.integers(0, len(_bp(blobs[name])) - 1))
    blob[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises((SignatureError, SchemaError)):
        jsonsign.verify(bytes(blob), key_blobs.get)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_swapping_camli_signer_to_another_key_fails(blobs, key_blobs, name):
    """Perkeep's TestSigning swap: user 2's key (user 1's for user 2's blobs)."""
    other = CAMLI_TESTER if USER_TWO.encode() in blobs[name] else USER_TWO
    blob = re.sub(rb'"camliSigner": "[^"]*"', f'"camliSigner": "{other}"'.encode(), blobs[name])
    assert blob != blobs[name]
    with pytest.raises(SignatureError, match="does not verify"):
        jsonsign.verify(blob, key_blobs.get)


# --- splitting ------------------------------------------------------------------


def test_split_uses_the_last_separator(blobs):
    blob = blobs["signed/permanode-brad.sha1-648357ea.json"]
    assert b'"random": "}6{' in blob
    bp, camli_sig = jsonsign.split_signed(blob)
    assert bp == _bp(blob) and camli_sig.endswith("==iqHS")


def test_doc_example_bp_is_t(blobs):
    bp, _ = jsonsign.split_signed(blobs["signed/doc-example.signed.json"])
    assert bp == (vectors_dir() / "signed/doc-example.T.txt").read_bytes()


@pytest.mark.parametrize("blob,match", [
    (b'{"camliVersion": 1}', "no ,\"camliSig\""),
    (b'{"camliVersion": 1, "camliSigner": "sha1-0000"\n,"camliSig":"abc"}', "malformed camliSigner"),
    (b'{"camliVersion": 1, "camliSigner": 5\n,"camliSig":"abc"}', "no string camliSigner"),
    (b'{"camliSigner": "' + USER_TWO.encode() + b'"\n,"camliSig":"abc"}', "camliVersion"),
    (b'{"camliVersion": 1, "camliSigner": "' + USER_TWO.encode() + b'"\n,"camliSig":"abc", "x": 1}', "exactly one key"),
    (b'{"camliVersion": 1, "camliSigner": "' + USER_TWO.encode() + b'"\n,"camliSig":5}', "camliSig"),
    (b'{"camliVersion": 1, "camliSigner": "' + USER_TWO.encode() + b'"\n,"camliSig":"abc"}}', "invalid JSON"),
    (b'{"camliVersion": 1, "camliSigner": "' + USER_TWO.encode() + b'",\n,"camliSig":"abc"}', "schema"),
])
def test_malformed_signed_blobs_are_schema_errors(blob, match):
    with pytest.raises(SchemaError, match=match):
        jsonsign.split_signed(blob)


def test_malformed_camli_sig_is_a_signature_error(key_blobs):
    blob = _unsigned(USER_TWO)[:-1] + b',"camliSig":"not armor"}\n'
    with pytest.raises(SignatureError, match="malformed camliSig armor"):
        jsonsign.verify(blob, key_blobs.get)


def test_doc_example_t_is_j_trimmed():
    vectors = vectors_dir()
    j = (vectors / "signed/doc-example.J.json").read_bytes()
    assert jsonsign.signed_payload(j) == (vectors / "signed/doc-example.T.txt").read_bytes()


def test_signed_payload_trims_go_whitespace_only():
    trailing = "\n \t\r\n\v\f\u0085\u00a0\u2028\u3000".encode()
    assert jsonsign.signed_payload(b'{"a": 1}' + trailing) == b'{"a": 1'
    assert jsonsign.signed_payload(b'{"a": 1\n}') == b'{"a": 1\n'
    with pytest.raises(SchemaError):
        jsonsign.signed_payload(b'{"a": 1}\x1f')  # not a space to Go
    with pytest.raises(SchemaError):
        jsonsign.signed_payload(b'["a"]')


# --- (e) the doc example's detached signature --------------------------------


def test_doc_example_detached_signature_verifies(key_blobs):
    vectors = vectors_dir()
    key = openpgp.read_public_key((vectors / "keys/camli-tester-2931A67C26F5ABDA.doc-public-key.txt").read_bytes())
    sig = openpgp.read_signature((vectors / "signed/doc-example.detachsig.asc").read_bytes())
    t = (vectors / "signed/doc-example.T.txt").read_bytes()
    openpgp.verify(key, sig, t)
    assert (key.key_id, sig.hash_name, sig.created) == EXPECTED["signed/doc-example.signed.json"]
    with pytest.raises(openpgp.PacketError):
        openpgp.verify(key, sig, t + b"\n")


# --- (d) blobs pkvc signs ------------------------------------------------------


def _gpg_verifies(public_key: bytes, blob: bytes, tmp_path: Path) -> str:
    """gpg --verify of rebuilt armor over BP, in a fresh home; the signer's fingerprint."""
    bp, camli_sig = jsonsign.split_signed(blob)
    sig_path = tmp_path / "sig.asc"
    sig_path.write_text(openpgp.rearmor(camli_sig))
    with GnupgHome() as verifier:
        verifier.import_public_key(public_key)
        result = verifier.gpg.verify_data(str(sig_path), bp)
    assert result.valid, result.stderr
    return result.fingerprint


def test_pkvc_signed_blob_verifies_here_and_in_gnupg(repo_signer, tmp_path):
    unsigned = _unsigned(repo_signer.public_key_ref, camliType="permanode", random="x&<y>")
    blob = jsonsign.sign(unsigned, repo_signer)
    assert blob.startswith(unsigned[:-1]) and blob.endswith(b'"}\n')
    assert _bp(blob) == jsonsign.signed_payload(unsigned)
    fetch = {repo_signer.public_key_ref: repo_signer.public_key}.get
    verified = jsonsign.verify(blob, fetch)
    assert (verified.signer, verified.key_id, verified.hash_name) == \
        (repo_signer.public_key_ref, repo_signer.key_id, "SHA256")
    assert abs(verified.signed_at - datetime.now(timezone.utc)) < timedelta(minutes=5)
    assert _gpg_verifies(repo_signer.public_key, blob, tmp_path) == repo_signer.fingerprint


def test_pkvc_signature_is_binary_sha256_by_the_primary_key(repo_signer):
    blob = jsonsign.sign(_unsigned(repo_signer.public_key_ref, camliType="permanode"), repo_signer)
    sig = openpgp.read_signature(openpgp.rearmor(jsonsign.split_signed(blob)[1]))
    assert (sig.sig_type, sig.hash_name, sig.issuer) == (0, "SHA256", repo_signer.key_id)


def test_sign_accepts_a_sha1_camli_signer(repo_signer):
    sha1 = BlobRef.of(repo_signer.public_key, "sha1")
    blob = jsonsign.sign(_unsigned(sha1, camliType="permanode"), repo_signer)
    assert jsonsign.verify(blob, {sha1: repo_signer.public_key}.get).signer == sha1


def test_sign_refuses_someone_elses_camli_signer(repo_signer):
    with pytest.raises(SignatureError, match="not this signer's public key"):
        jsonsign.sign(_unsigned(USER_TWO, camliType="permanode"), repo_signer)


def test_sign_refuses_json_without_camli_version(repo_signer):
    unsigned = b'{"camliSigner": "' + str(repo_signer.public_key_ref).encode() + b'"}'
    with pytest.raises(SchemaError):
        jsonsign.sign(unsigned, repo_signer)


def _gpg_signature(signer, data: bytes, *extra: str) -> bytes:
    """A detached signature made with gpg directly, bypassing pkvc's options."""
    result = signer.home.gpg.sign(data, detach=True, clearsign=False,
                                  extra_args=["--local-user", signer.fingerprint + "!", *extra])
    assert result.data, result.stderr
    return result.data


def _splice(t: bytes, armored: bytes) -> bytes:
    packet = openpgp.dearmor(armored, openpgp.SIGNATURE_BLOCK)
    return t + SEP + openpgp.one_line_armor(packet).encode() + b'"}\n'


def test_sha512_signature_is_refused(repo_signer):
    t = jsonsign.signed_payload(_unsigned(repo_signer.public_key_ref, camliType="permanode"))
    blob = _splice(t, _gpg_signature(repo_signer, t, "--digest-algo", "SHA512"))
    with pytest.raises(SignatureError, match="unsupported hash SHA512"):
        jsonsign.verify(blob, {repo_signer.public_key_ref: repo_signer.public_key}.get)


def test_sign_never_returns_a_sha512_blob(repo_signer):
    class Sha512Signer:
        fingerprint, public_key = repo_signer.fingerprint, repo_signer.public_key

        def sign(self, data):
            return _gpg_signature(repo_signer, data, "--digest-algo", "SHA512")

    with pytest.raises(SignatureError, match="unsupported hash"):
        jsonsign.sign(_unsigned(repo_signer.public_key_ref, camliType="permanode"), Sha512Signer())


def test_text_mode_signature_is_refused(repo_signer):
    t = jsonsign.signed_payload(_unsigned(repo_signer.public_key_ref, camliType="permanode"))
    blob = _splice(t, _gpg_signature(repo_signer, t, "--digest-algo", "SHA256", "--textmode"))
    with pytest.raises(SignatureError, match="not binary"):
        jsonsign.verify(blob, {repo_signer.public_key_ref: repo_signer.public_key}.get)


def test_expired_signature_is_refused_only_when_now_is_given(repo_signer):
    t = jsonsign.signed_payload(_unsigned(repo_signer.public_key_ref, camliType="permanode"))
    blob = _splice(t, _gpg_signature(repo_signer, t, "--digest-algo", "SHA256", "--default-sig-expire", "1d"))
    fetch = {repo_signer.public_key_ref: repo_signer.public_key}.get
    signed_at = jsonsign.verify(blob, fetch).signed_at
    jsonsign.verify(blob, fetch, now=signed_at + timedelta(hours=23))
    with pytest.raises(SignatureError, match="expired"):
        jsonsign.verify(blob, fetch, now=signed_at + timedelta(days=1))


def test_perkeeps_test_key_signs_for_its_bare_key_blob(key_blobs):
    """pkvc signing with Perkeep's key names Perkeep's user-ID-less key blob."""
    vectors = vectors_dir()
    bare = key_blobs[BlobRef.parse(PERKEEP_SIGNER)]
    with GnupgHome() as home:
        fingerprint = home.gpg.import_keys((vectors / "keys/test-secring.gpg").read_bytes()).fingerprints[0]
        signer = home.signer(fingerprint, public_key=bare)
        blob = jsonsign.sign(_unsigned(PERKEEP_SIGNER, camliType="permanode", key="pkvc"), signer)
    assert jsonsign.verify(blob, key_blobs.get).key_id == "2931A67C26F5ABDA"
