"""Share claims, typed links, and the share gate against Perkeep's handler tests.

The cases mirror share-handler-tests.md (A-E) with really signed shares, plus
pkvc's stricter rules: forged signatures, typed links, the signer key hop,
assemble, and revocation seen across processes without a restart.
"""

from __future__ import annotations

import time

import pytest

from pkvc import share as share_mod
from pkvc.access import Refused, ShareGate
from pkvc.blobref import BlobRef
from pkvc.claims import ClaimsIndex, add_delete_claim, sign_and_put
from pkvc.errors import UsageError
from pkvc.pack import KIND_DATA
from pkvc.schema.claims import new_share_claim
from pkvc.schema.fsnodes import DirectoryBlob, FileBlob, SymlinkBlob
from pkvc.schema.parts import Part
from pkvc.schema.staticset import StaticSetBlob
from pkvc.schema.timefmt import SchemaTime
from pkvc.share import BYTES, NODE, RAW, SET, TARGET, links_of
from tests.vectors import vectors_dir

MIN = 60 * 10**9
MONKEY, BANANA = b"monkey", b"banana"


def ref(data: bytes) -> BlobRef:
    return BlobRef.of(data)


def handwritten(name: str) -> bytes:
    return (vectors_dir() / "handwritten" / name).read_bytes()


def make_share(repo, signer, target, transitive=False, expires=None, clock=time.time_ns):
    claim = new_share_claim(target=target, transitive=transitive, expires=expires,
                            signer=BlobRef.of(signer.public_key), clock=clock)
    made = sign_and_put(repo, signer, claim)
    repo.flush()
    return made


def allowed(gate: ShareGate, *chain, assemble=False) -> bool:
    try:
        gate.authorize(list(chain), assemble)
        return True
    except Refused:
        return False


def reason(gate: ShareGate, *chain, assemble=False) -> str | None:
    try:
        gate.authorize(list(chain), assemble)
    except Refused as e:
        return e.reason
    return None


# -- typed links -----------------------------------------------------------------

def test_links_are_typed_schema_references_only():
    file_blob = handwritten("share-link-file-with-bytesref.json")
    assert links_of(file_blob, TARGET) == {
        ref(b"irrelevant content"): RAW,
        BlobRef.parse("sha224-1f6ca22f4a03f2ebd0d1242305e324a3d6d8d2f2a69940abffd456b2"): BYTES}
    assert links_of(file_blob, RAW) is None  # a part's bytes are never parsed
    assert links_of(file_blob, SET) is None  # reached as entries, a file links nowhere
    bytes_blob = handwritten("share-link-bytes.json")
    assert links_of(bytes_blob, BYTES) == {ref(MONKEY): RAW, ref(BANANA): RAW}
    text = f"Some payload containing the ref: {ref(b'the secret')}".encode()
    assert links_of(text, TARGET) is None

    members = StaticSetBlob((ref(b"a"), ref(b"b"))).to_json()
    merged = StaticSetBlob(merge_sets=(ref(members),)).to_json()
    directory = DirectoryBlob(b"d", ref(merged)).to_json()
    assert links_of(directory, NODE) == {ref(merged): SET}
    assert links_of(merged, SET) == {ref(members): SET}
    assert links_of(members, SET) == {ref(b"a"): NODE, ref(b"b"): NODE}
    assert links_of(members, BYTES) is None


def test_the_2011_contentparts_field_is_not_followed():
    old = (vectors_dir() / "unsigned" / "file-oldformat.sha1-0e5e60f3.json").read_bytes()
    assert links_of(old, TARGET) == {}


def test_walk_graph_visits_each_blob_once_with_its_via_chain():
    a = FileBlob(b"a", (Part(6, ref(MONKEY)),)).to_json()
    b = FileBlob(b"b", (Part(6, ref(MONKEY)), Part(6, ref(BANANA)))).to_json()
    members = StaticSetBlob((ref(a), ref(b))).to_json()
    top = DirectoryBlob(b"top", ref(members)).to_json()
    blobs = {ref(x): x for x in (a, b, members, top, MONKEY, BANANA)}
    vias = {}

    def obtain(r, via, kind):
        vias[r] = via
        return blobs[r]

    seen = list(share_mod.walk_graph(ref(top), obtain))
    assert sorted(seen, key=str) == sorted(blobs, key=str) and len(seen) == len(set(seen))
    assert vias[ref(BANANA)] == (ref(top), ref(members), ref(b))
    assert list(share_mod.walk_graph(ref(top), obtain, transitive=False)) == [ref(top)]


# -- Perkeep's handler cases, really signed ------------------------------------------

@pytest.fixture
def gate(signing_repo):
    return ShareGate(signing_repo)


def test_a_single_part_file_via_a_share(signing_repo, repo_signer, gate):
    repo, signer = signing_repo, repo_signer
    link = handwritten("share-link-file-monkey.json")
    share = make_share(repo, signer, ref(link))
    assert allowed(gate, share)                                     # the claim itself is public
    assert reason(gate, share, ref(MONKEY)) == "shareTargetInvalid"
    assert reason(gate, ref(link)) == "shareUnknown"                  # not stored, not a share
    repo.put(link)
    repo.flush()
    assert reason(gate, ref(link)) == "shareUnknown"                  # first element not a share
    assert allowed(gate, share, ref(link))
    assert reason(gate, share, ref(link), ref(MONKEY)) == "shareNotTransitive"
    transitive = make_share(repo, signer, ref(link), transitive=True)
    assert reason(gate, transitive, ref(link), ref(link)) == "viaChainInvalidLink"
    repo.put(MONKEY, kind=KIND_DATA)
    repo.flush()
    assert allowed(gate, transitive, ref(link), ref(MONKEY))
    expired = make_share(repo, signer, ref(link), True, SchemaTime(time.time_ns() - 10 * MIN))
    assert reason(gate, expired, ref(link), ref(MONKEY)) == "shareExpired"
    later = make_share(repo, signer, ref(link), True, SchemaTime(time.time_ns() + 10 * MIN))
    assert allowed(gate, later, ref(link), ref(MONKEY))
    assert gate.read(gate.authorize([later, ref(link), ref(MONKEY)])) == MONKEY


def test_b_transitive_shares_follow_only_schema_links(signing_repo, repo_signer, gate):
    repo, signer = signing_repo, repo_signer
    secret = b"the secret"
    text = f"Some payload containing the ref: {ref(secret)}".encode()
    for blob in (secret, text):
        repo.put(blob, kind=KIND_DATA)
    share = make_share(repo, signer, ref(text), transitive=True)
    assert allowed(gate, share)
    assert allowed(gate, share, ref(text))
    assert reason(gate, share, ref(text), ref(secret)) == "viaChainInvalidLink"


def test_c_second_part_of_a_two_part_file(signing_repo, repo_signer, gate):
    repo, signer = signing_repo, repo_signer
    link = handwritten("share-link-file-monkey-banana.json")
    for blob in (link, MONKEY, BANANA):
        repo.put(blob, kind=KIND_DATA)
    share = make_share(repo, signer, ref(link))
    assert reason(gate, share, ref(BANANA)) == "shareTargetInvalid"
    assert allowed(gate, share, ref(link))
    assert reason(gate, share, ref(link), ref(BANANA)) == "shareNotTransitive"
    transitive = make_share(repo, signer, ref(link), transitive=True)
    assert allowed(gate, transitive, ref(link), ref(BANANA))


def test_d_content_through_a_nested_bytes_blob(signing_repo, repo_signer, gate):
    repo, signer = signing_repo, repo_signer
    outer = handwritten("share-link-file-with-bytesref.json")
    inner = handwritten("share-link-bytes.json")
    assert ref(inner) in links_of(outer, TARGET)
    repo.put(outer)
    share = make_share(repo, signer, ref(outer))
    assert reason(gate, share, ref(BANANA)) == "shareTargetInvalid"
    assert allowed(gate, share, ref(outer))
    repo.put(inner)
    repo.flush()
    assert reason(gate, share, ref(outer), ref(inner)) == "shareNotTransitive"
    transitive = make_share(repo, signer, ref(outer), transitive=True)
    assert reason(gate, transitive, ref(outer), ref(inner), ref(inner)) == "viaChainInvalidLink"
    repo.put(BANANA, kind=KIND_DATA)
    repo.flush()
    assert allowed(gate, transitive, ref(outer), ref(inner), ref(BANANA))
    # raw bytes are never a hop, even when they are valid schema JSON
    assert reason(gate, transitive, ref(outer), ref(b"irrelevant content"),
                  ref(BANANA)) == "viaChainInvalidLink"


def test_e_a_delete_claim_revokes_and_a_running_gate_sees_it(signing_repo, repo_signer, gate,
                                                              reopen):
    repo, signer = signing_repo, repo_signer
    link = handwritten("share-link-file-monkey.json")
    repo.put(link)
    repo.put(MONKEY, kind=KIND_DATA)
    share = make_share(repo, signer, ref(link), transitive=True)
    assert allowed(gate, share, ref(link), ref(MONKEY))
    other = reopen()  # another process, e.g. `pkvc unshare`
    add_delete_claim(other, signer, share)
    other.flush()
    assert reason(gate, share, ref(link), ref(MONKEY)) == "shareDeleted"
    assert reason(gate, share) == "shareDeleted"
    assert share_mod.live_shares(repo) == []
    assert [s.revoked for s in share_mod.list_shares(repo)] == [True]


def test_a_forged_or_unverifiable_share_is_refused(signing_repo, repo_signer, gate):
    repo, signer = signing_repo, repo_signer
    link = handwritten("share-link-file-monkey.json")
    repo.put(link)
    good = make_share(repo, signer, ref(link), transitive=True)
    data = repo.get(good)
    forged = data.replace(b'"transitive": true', b'"transitive": false')
    assert forged != data
    repo.put(forged)
    repo.flush()
    assert reason(gate, ref(forged)) == "shareUnknown"
    assert reason(gate, ref(forged), ref(link)) == "shareUnknown"
    # Perkeep's unit-test share: a signer that is no key and a literal "alsounused"
    fake = (b'{"camliVersion": 1,\n  "authType": "haveref",\n  "camliSigner": "'
            + str(ref(b"irrelevant")).encode() + b'",\n  "camliType": "claim",\n'
            b'  "claimDate": "2026-01-01T00:00:00Z",\n  "claimType": "share",\n  "target": "'
            + str(ref(link)).encode() + b'",\n  "transitive": true\n,"camliSig":"alsounused"}\n')
    repo.put(fake)
    repo.flush()
    assert reason(gate, ref(fake), ref(link)) == "shareUnknown"
    assert share_mod.list_shares(repo) == [share_mod.list_shares(repo)[0]]  # only the good one


def test_a_share_signed_by_another_key_is_not_ours_to_serve(signing_repo, gate):
    """Perkeep's own signed share verifies, but this repository did not make it."""
    repo = signing_repo
    folder = vectors_dir()
    key = (folder / "keys" / "camli-tester-2931A67C26F5ABDA.perkeep-armor-nl.asc").read_bytes()
    repo.put(key, BlobRef.of(key, "sha1"), kind=KIND_DATA)
    target = (folder / "signed" / "share-expiring.sha1-64ffa72f.json").read_bytes()
    foreign = (folder / "signed" / "share-noexpiry.sha1-931875ec.json").read_bytes()
    repo.put(target, BlobRef.of(target, "sha1"))
    repo.put(foreign)
    repo.flush()
    assert any(c.ref == ref(foreign) for c in ClaimsIndex.open(repo).of_type("share"))
    assert reason(gate, ref(foreign)) == "shareUnknown"
    assert share_mod.list_shares(repo) == [] and share_mod.live_shares(repo) == []


def test_the_signer_key_is_reachable_through_its_share(signing_repo, repo_signer, gate):
    repo, signer = signing_repo, repo_signer
    link = handwritten("share-link-file-monkey.json")
    repo.put(link)
    share = make_share(repo, signer, ref(link))
    key = BlobRef.of(signer.public_key)
    assert gate.read(gate.authorize([share, key])) == signer.public_key
    assert reason(gate, share, key, ref(MONKEY)) == "shareTargetInvalid"


def test_assemble_streams_a_whole_file_only_for_transitive_shares(signing_repo, repo_signer, gate):
    repo, signer = signing_repo, repo_signer
    outer = handwritten("share-link-file-monkey-banana.json")
    for blob in (outer, MONKEY, BANANA):
        repo.put(blob, kind=KIND_DATA)
    plain = make_share(repo, signer, ref(outer))
    assert reason(gate, plain, ref(outer), assemble=True) == "assembleNonTransitive"
    transitive = make_share(repo, signer, ref(outer), transitive=True)
    grant = gate.authorize([transitive, ref(outer)], assemble=True)
    assert grant.size == 12 and b"".join(gate.iter_file(grant)) == MONKEY + BANANA
    assert reason(gate, transitive, ref(outer), ref(MONKEY), assemble=True) == "assembleNotFile"


# -- making, listing, expiry ------------------------------------------------------------

def test_create_share_wants_a_file_or_directory(signing_repo, repo_signer):
    repo, signer = signing_repo, repo_signer
    raw = repo.put(b"just bytes", kind=KIND_DATA)
    with pytest.raises(UsageError, match="file or a directory"):
        share_mod.create_share(repo, signer, raw)
    link = repo.put(SymlinkBlob(b"l", b"/etc").to_json())
    with pytest.raises(UsageError, match="symlink"):
        share_mod.create_share(repo, signer, link)
    target = repo.put(handwritten("share-link-file-monkey.json"))
    with pytest.raises(UsageError, match="past"):
        share_mod.create_share(repo, signer, target, expires=SchemaTime(time.time_ns() - MIN))
    made = share_mod.create_share(repo, signer, target)
    listed = share_mod.list_shares(repo)
    assert [(s.ref, s.target, s.transitive, s.live) for s in listed] == [(made, target, True, True)]


def test_live_shares_leave_out_expired_and_revoked(signing_repo, repo_signer):
    repo, signer = signing_repo, repo_signer
    target = repo.put(handwritten("share-link-file-monkey.json"))
    now = time.time_ns()
    live = make_share(repo, signer, target, True, SchemaTime(now + 10 * MIN))
    expired = make_share(repo, signer, target, True, SchemaTime(now - MIN))
    revoked = make_share(repo, signer, target, True)
    forever = make_share(repo, signer, target)
    share_mod.revoke_share(repo, signer, revoked)
    assert {s.ref for s in share_mod.live_shares(repo, now)} == {live, forever}
    assert {s.ref for s in share_mod.live_shares(repo, now + 20 * MIN)} == {forever}
    assert share_mod.share_is_live(repo, live, now) and not share_mod.share_is_live(repo, expired)
    index = ClaimsIndex.open(repo)
    assert {s.ref for s in share_mod.live_shares(repo, now, index)} == {live, forever}


@pytest.mark.parametrize("text,seconds", [("45s", 45), ("90m", 5400), ("12h", 43200),
                                          ("30d", 30 * 86400), ("1w2d", 9 * 86400)])
def test_expiry_durations(text, seconds):
    now = 1_700_000_000 * 10**9
    assert share_mod.parse_expiry(text, now).ns == now + seconds * 10**9


def test_expiry_dates_and_nonsense():
    assert str(share_mod.parse_expiry("2030-01-31T10:00:00Z")) == "2030-01-31T10:00:00Z"
    assert str(share_mod.parse_expiry("2030-01-31")) == "2030-01-31T23:59:59.999999999Z"
    for bad in ("soon", "0d", "3x", ""):
        with pytest.raises(UsageError):
            share_mod.parse_expiry(bad)
