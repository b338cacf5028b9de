"""pkvc.openpgp against Perkeep's vectors and against hostile bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pkvc import openpgp
from pkvc.openpgp import PacketError

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "perkeep-vectors"
CAMLI_TESTER_FPR = "FBB89AA320A2806FE497C0492931A67C26F5ABDA"
SEPARATOR = b',"camliSig":"'


@pytest.fixture(scope="module")
def vectors() -> Path:
    if not VECTORS.is_dir():
        pytest.skip(f"perkeep vectors not found at {VECTORS}")
    return VECTORS


def _camli_sig(path: Path) -> str:
    return _camli_sig_bytes(path.read_bytes())


def _camli_sig_bytes(blob: bytes) -> str:
    return json.loads(b"{" + blob[blob.rfind(SEPARATOR) + 1 :])["camliSig"]


def _signed_files(vectors: Path) -> list[Path]:
    return sorted(vectors.glob("signed/*.sha*.json")) + sorted(vectors.glob("signed-sha224/*.json"))


def _sig_body(hashed: bytes, *, version=4, sig_type=0, algo=1, hash_algo=8,
              unhashed=b"", mpi=b"\x00\x08\xff") -> bytes:
    return (bytes([version, sig_type, algo, hash_algo]) + len(hashed).to_bytes(2, "big") + hashed
            + len(unhashed).to_bytes(2, "big") + unhashed + b"\xab\xcd" + mpi)


CREATED = b"\x05\x02" + (1322443956).to_bytes(4, "big")


# --- armor -----------------------------------------------------------------


def test_rearmor_matches_perkeep(vectors):
    one_line = (vectors / "canonical/rearmor-input.txt").read_text()
    assert openpgp.rearmor(one_line) == (vectors / "canonical/rearmor-expected.asc").read_text()


def test_one_line_armor_round_trips_every_camli_sig(vectors):
    for path in _signed_files(vectors) + [vectors / "signed/doc-example.signed.json"]:
        camli_sig = _camli_sig(path)
        packet = openpgp.dearmor(openpgp.rearmor(camli_sig), openpgp.SIGNATURE_BLOCK)
        assert openpgp.one_line_armor(packet) == camli_sig, path.name


def test_crc24_of_nothing_is_the_initial_value():
    assert openpgp.crc24(b"") == 0xB704CE


def test_dearmor_skips_headers_and_leading_text(vectors):
    detached = (vectors / "signed/doc-example.detachsig.asc").read_bytes()
    assert b"Version: GnuPG" in detached
    packet = openpgp.dearmor(b"leading text\r\n" + detached, openpgp.SIGNATURE_BLOCK)
    assert openpgp.one_line_armor(packet) == _camli_sig(vectors / "signed/doc-example.signed.json")


def _key_armor(vectors: Path) -> str:
    return (vectors / "keys/camli-tester-2931A67C26F5ABDA.perkeep-armor.asc").read_text()


def test_dearmor_refuses_a_bad_checksum(vectors):
    text = _key_armor(vectors).replace("=28/7", "=28/8")
    with pytest.raises(PacketError, match="CRC-24"):
        openpgp.dearmor(text, openpgp.PUBLIC_KEY_BLOCK)


def test_dearmor_refuses_a_changed_body(vectors):
    text = _key_armor(vectors).replace("xsBNBEzgoVsB", "xsBNBEzgoVsC")
    with pytest.raises(PacketError, match="CRC-24"):
        openpgp.dearmor(text, openpgp.PUBLIC_KEY_BLOCK)


def test_dearmor_requires_the_checksum_line(vectors):
    text = _key_armor(vectors).replace("=28/7\n", "")
    with pytest.raises(PacketError, match="no CRC-24"):
        openpgp.dearmor(text, openpgp.PUBLIC_KEY_BLOCK)


def test_dearmor_requires_the_block_type(vectors):
    with pytest.raises(PacketError, match="expected 'PGP SIGNATURE'"):
        openpgp.dearmor(_key_armor(vectors), openpgp.SIGNATURE_BLOCK)


def test_dearmor_requires_the_end_line(vectors):
    text = _key_armor(vectors).replace("-----END PGP PUBLIC KEY BLOCK-----", "")
    with pytest.raises(PacketError, match="END line"):
        openpgp.dearmor(text, openpgp.PUBLIC_KEY_BLOCK)


def test_dearmor_refuses_more_than_256_kib(vectors):
    text = _key_armor(vectors) + "\n" + " " * openpgp.MAX_ARMOR_SIZE
    with pytest.raises(PacketError, match="over 262144 bytes"):
        openpgp.dearmor(text, openpgp.PUBLIC_KEY_BLOCK)


def test_dearmor_refuses_text_that_is_not_armor():
    with pytest.raises(PacketError, match="no armored block"):
        openpgp.dearmor(b"hello", openpgp.PUBLIC_KEY_BLOCK)


def test_rearmor_needs_a_checksum_marker():
    with pytest.raises(PacketError):
        openpgp.rearmor("abcd")


# --- keys --------------------------------------------------------------------


@pytest.mark.parametrize("name,key_id", [
    ("camli-tester-2931A67C26F5ABDA.perkeep-armor.asc", "2931A67C26F5ABDA"),
    ("camli-tester-2931A67C26F5ABDA.perkeep-armor-nl.asc", "2931A67C26F5ABDA"),
    ("camli-tester-2931A67C26F5ABDA.gnupg-export.asc", "2931A67C26F5ABDA"),
    ("camli-tester-2931A67C26F5ABDA.doc-public-key.txt", "2931A67C26F5ABDA"),
    ("camli-testuser-two-851E08B24BEC5AB5.asc", "851E08B24BEC5AB5"),
    ("brad-fitzpatrick-68F378337FEAFB7C.asc", "68F378337FEAFB7C"),
])
def test_key_blobs_give_their_key_id(vectors, name, key_id):
    key = openpgp.read_public_key((vectors / "keys" / name).read_bytes())
    assert key.key_id == key_id
    assert key.fingerprint.endswith(key_id) and len(key.fingerprint) == 40
    assert key.n.bit_length() == 2048 and key.e == 65537


def test_bare_and_full_exports_are_the_same_key(vectors):
    bare = openpgp.read_public_key(_key_armor(vectors))
    full = openpgp.read_public_key((vectors / "keys/camli-tester-2931A67C26F5ABDA.gnupg-export.asc").read_bytes())
    assert bare == full
    assert bare.fingerprint == CAMLI_TESTER_FPR


def test_public_key_must_be_version_4(vectors):
    body = bytearray(openpgp.dearmor(_key_armor(vectors), openpgp.PUBLIC_KEY_BLOCK)[3:])
    body[0] = 3
    with pytest.raises(PacketError, match="version 3"):
        openpgp.parse_public_key(bytes(body))


def test_public_key_refuses_trailing_bytes(vectors):
    body = openpgp.dearmor(_key_armor(vectors), openpgp.PUBLIC_KEY_BLOCK)[3:]
    with pytest.raises(PacketError, match="trailing"):
        openpgp.parse_public_key(body + b"\x00")


def test_first_packet_must_be_a_public_key(vectors):
    detached = (vectors / "signed/doc-example.detachsig.asc").read_text()
    packet = openpgp.dearmor(detached, openpgp.SIGNATURE_BLOCK)
    armored = detached.replace("PGP SIGNATURE", "PGP PUBLIC KEY BLOCK")
    assert openpgp.dearmor(armored, openpgp.PUBLIC_KEY_BLOCK) == packet
    with pytest.raises(PacketError, match="expected a public key"):
        openpgp.read_public_key(armored)


# --- signatures ----------------------------------------------------------------


def test_signatures_parse_with_perkeeps_fields(vectors):
    sig = openpgp.read_signature(openpgp.rearmor(_camli_sig(
        vectors / "signed-sha224/planned-permanode-pn1.sha224-e42e49e0.json")))
    assert (sig.sig_type, sig.hash_name, sig.created) == (0, "SHA256", 1322443956)
    assert sig.issuer == "2931A67C26F5ABDA"
    assert sig.expires is None


def test_go_mpi_bit_count_quirk_is_accepted(vectors):
    """pn1's value has 2043 bits, but Go wrote the count as 2048 (8 * bytes)."""
    camli_sig = _camli_sig(vectors / "signed-sha224/planned-permanode-pn1.sha224-e42e49e0.json")
    packet = openpgp.dearmor(openpgp.rearmor(camli_sig), openpgp.SIGNATURE_BLOCK)
    _, body, _ = openpgp.read_packet(packet)
    assert int.from_bytes(body[-258:-256], "big") == 2048
    assert openpgp.parse_signature(body).value.bit_length() == 2043


def test_signature_verifies_and_the_wrong_key_fails(vectors):
    key = openpgp.read_public_key(_key_armor(vectors))
    other = openpgp.read_public_key((vectors / "keys/camli-testuser-two-851E08B24BEC5AB5.asc").read_bytes())
    blob = (vectors / "signed-sha224/planned-permanode-pn1.sha224-e42e49e0.json").read_bytes()
    bp = blob[: blob.rfind(SEPARATOR)]
    sig = openpgp.read_signature(openpgp.rearmor(_camli_sig_bytes(blob)))
    openpgp.verify(key, sig, bp)
    with pytest.raises(PacketError, match="bad signature"):
        openpgp.verify(other, sig, bp)
    with pytest.raises(PacketError, match="hash tag"):
        openpgp.verify(key, sig, bp + b" ")


def test_signature_must_be_version_4():
    with pytest.raises(PacketError, match="version 3"):
        openpgp.parse_signature(_sig_body(CREATED, version=3))


def test_signature_must_be_rsa():
    with pytest.raises(PacketError, match="not RSA"):
        openpgp.parse_signature(_sig_body(CREATED, algo=17))


def test_signature_needs_a_creation_time():
    with pytest.raises(PacketError, match="no creation time"):
        openpgp.parse_signature(_sig_body(b""))


def test_unknown_critical_subpacket_is_refused():
    with pytest.raises(PacketError, match="unknown critical"):
        openpgp.parse_signature(_sig_body(CREATED + b"\x02\xe4\x00"))
    openpgp.parse_signature(_sig_body(CREATED + b"\x02\x64\x00"))  # not critical: ignored


def test_duplicate_creation_time_is_refused():
    with pytest.raises(PacketError, match="twice"):
        openpgp.parse_signature(_sig_body(CREATED + CREATED))


def test_issuer_may_sit_in_the_unhashed_area():
    issuer = bytes.fromhex("2931A67C26F5ABDA")
    sig = openpgp.parse_signature(_sig_body(CREATED, unhashed=b"\x09\x10" + issuer))
    assert sig.issuer == "2931A67C26F5ABDA"


def test_mpi_longer_than_its_bit_count_is_refused():
    with pytest.raises(PacketError, match="MPI longer"):
        openpgp.parse_signature(_sig_body(CREATED, mpi=b"\x00\x07\xff"))


def test_text_signatures_are_refused(vectors):
    key = openpgp.read_public_key(_key_armor(vectors))
    sig = openpgp.parse_signature(_sig_body(CREATED, sig_type=1))
    with pytest.raises(PacketError, match="not binary"):
        openpgp.verify(key, sig, b"data")


@pytest.mark.parametrize("header,length", [
    (b"\xc2\x05", 5),                      # new format, one-octet length
    (b"\xc2\xc0\x5c", 284),                # new format, two-octet length (Go)
    (b"\xc2\xff\x00\x00\x01\x00", 256),    # new format, five-octet length
    (b"\x88\x05", 5),                      # old format, one-octet length
    (b"\x89\x01\x1c", 284),                # old format, two-octet length (GnuPG)
    (b"\x8a\x00\x00\x01\x00", 256),        # old format, four-octet length
])
def test_packet_lengths(header, length):
    tag, body, end = openpgp.read_packet(header + bytes(length) + b"rest")
    assert (tag, len(body), end) == (2, length, len(header) + length)


@pytest.mark.parametrize("data,match", [
    (b"\x42", "not an OpenPGP packet"),
    (b"\xc2\xe0", "partial"),
    (b"\x8b", "indeterminate"),
    (b"\xc2\x05abc", "truncated"),
])
def test_bad_packet_headers(data, match):
    with pytest.raises(PacketError, match=match):
        openpgp.read_packet(data)


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_packet_errors(data):
    for parse in (openpgp.parse_signature, openpgp.parse_public_key, openpgp.read_packet):
        try:
            parse(data)
        except PacketError:
            pass


@given(st.binary(max_size=300))
def test_random_packets_behind_good_armor_raise_only_packet_errors(data):
    text = openpgp.rearmor(openpgp.one_line_armor(data))
    assert openpgp.dearmor(text, openpgp.SIGNATURE_BLOCK) == data
    try:
        openpgp.read_signature(text)
    except PacketError:
        pass


@given(st.text(max_size=300))
def test_random_camli_sig_raises_only_packet_errors(text):
    try:
        openpgp.read_signature(openpgp.rearmor(text))
    except PacketError:
        pass


def test_commands_load_cryptography_only_to_check_a_signature():
    """cryptography's Rust core costs every process ~6 MiB; only `verify` needs it."""
    import subprocess
    import sys

    probe = ("import sys, pkvc.cli, pkvc.snapshot, pkvc.check, pkvc.restore, pkvc.gc, pkvc.share\n"
             "print('cryptography' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
