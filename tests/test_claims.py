"""Signed claims in a real repository: order, folding, deletes, invalid blobs, the cache."""

from __future__ import annotations

import shutil

import pytest

from pkvc import claims
from pkvc.blobref import BlobRef
from pkvc.claims import (
    BAD_SIGNATURE, MISSING_KEY, ClaimsIndex, add_claim, add_delete_claim, add_multi_claim,
    claims_on, invalid_claims, is_deleted, new_permanode, permanode_state,
)
from pkvc.pack import KIND_SIGNED
from pkvc.schema import jsonsign
from pkvc.schema.claims import AttributeChange, new_attribute_claim
from pkvc.schema.timefmt import SchemaTime
from tests.vectors import vectors_dir
from gc_support import remove_blobs

T0 = 1_700_000_000 * 10**9
SEC = 10**9


def at(n: int):
    """A clock fixed at T0 + n seconds."""
    return lambda: T0 + n * SEC


@pytest.fixture
def pn(repo, repo_signer):
    return new_permanode(repo, repo_signer, at(0))


def values(repo, pn, name, when=None):
    return permanode_state(repo, pn, when).attributes.get(name, ())


# -- order ---------------------------------------------------------------------

def test_claims_are_ordered_by_claim_date_then_by_blobref(repo, repo_signer, pn):
    late = add_claim(repo, repo_signer, "add-attribute", pn, "tag", "late", at(5))
    tied = [add_claim(repo, repo_signer, "add-attribute", pn, "tag", v, at(2)) for v in "abcd"]
    early = add_claim(repo, repo_signer, "add-attribute", pn, "tag", "early", at(1))
    got = [c.ref for c in claims_on(repo, pn)]
    assert got == [early] + sorted(tied, key=str) + [late]
    assert [c.date.ns for c in claims_on(repo, pn)] == [T0 + SEC] + [T0 + 2 * SEC] * 4 + [T0 + 5 * SEC]


def test_tie_on_claim_date_is_decided_by_the_larger_blobref(repo, repo_signer, pn):
    refs = {v: add_claim(repo, repo_signer, "set-attribute", pn, "title", v, at(3)) for v in ("x", "y")}
    winner = max(refs, key=lambda v: str(refs[v]))
    assert values(repo, pn, "title") == (winner,)


# -- folding -------------------------------------------------------------------

def test_set_add_del_fold_as_perkeep(repo, repo_signer, pn):
    steps = [("set-attribute", "a"), ("add-attribute", "b"), ("add-attribute", "b"),
             ("add-attribute", "c"), ("del-attribute", "b")]
    for i, (ctype, value) in enumerate(steps, 1):
        add_claim(repo, repo_signer, ctype, pn, "tag", value, at(i))
    assert values(repo, pn, "tag") == ("a", "c")  # del with a value removes every copy
    add_claim(repo, repo_signer, "set-attribute", pn, "tag", "z", at(10))
    assert values(repo, pn, "tag") == ("z",)  # set replaces all
    add_claim(repo, repo_signer, "add-attribute", pn, "tag", "z", at(11))
    assert values(repo, pn, "tag") == ("z", "z")  # add keeps duplicates, as Perkeep
    add_claim(repo, repo_signer, "del-attribute", pn, "tag", None, at(12))
    state = permanode_state(repo, pn)
    assert "tag" not in state.attributes  # del without value removes them all
    assert state.valid is True and not state.deleted


def test_states_at_a_time(repo, repo_signer, pn):
    add_claim(repo, repo_signer, "set-attribute", pn, "title", "one", at(1))
    add_claim(repo, repo_signer, "set-attribute", pn, "title", "two", at(2))
    add_claim(repo, repo_signer, "del-attribute", pn, "title", None, at(3))
    assert values(repo, pn, "title", T0) == ()
    assert values(repo, pn, "title", T0 + SEC) == ("one",)  # at includes claims dated exactly then
    assert values(repo, pn, "title", SchemaTime(T0 + 2 * SEC)) == ("two",)
    assert values(repo, pn, "title", "2023-11-14T22:13:22Z") == ("two",)
    assert values(repo, pn, "title") == ()


def test_multi_claim_edits_several_permanodes_in_order(repo, repo_signer, pn):
    other = new_permanode(repo, repo_signer, at(0))
    add_multi_claim(repo, repo_signer, [
        AttributeChange("set-attribute", pn, "tag", "a"),
        AttributeChange("add-attribute", pn, "tag", "b"),
        AttributeChange("del-attribute", pn, "tag", "a"),
        AttributeChange("set-attribute", other, "title", "other"),
    ], at(1))
    assert values(repo, pn, "tag") == ("b",)
    assert values(repo, other, "title") == ("other",)
    (claim,) = claims_on(repo, other)
    assert claim.claim_type == "multi" and len(claim.changes) == 1  # only the edits on `other`


# -- delete ----------------------------------------------------------------------

def test_delete_claim_and_delete_of_delete(repo, repo_signer, pn):
    add_claim(repo, repo_signer, "set-attribute", pn, "title", "old", at(1))
    newer = add_claim(repo, repo_signer, "set-attribute", pn, "title", "new", at(2))
    d1 = add_delete_claim(repo, repo_signer, newer, at(3))
    assert values(repo, pn, "title") == ("old",)
    assert values(repo, pn, "title", T0 + 2 * SEC) == ("new",)  # not deleted yet then
    assert is_deleted(repo, newer)
    d2 = add_delete_claim(repo, repo_signer, d1, at(4))  # undo the delete
    assert values(repo, pn, "title") == ("new",)
    assert not is_deleted(repo, newer) and is_deleted(repo, d1)
    assert values(repo, pn, "title", T0 + 3 * SEC) == ("old",)
    add_delete_claim(repo, repo_signer, d2, at(5))  # undo the undo
    assert values(repo, pn, "title") == ("old",)
    deleted_included = claims_on(repo, pn, include_deleted=True)
    assert [c.ref for c in deleted_included][-1] == newer


def test_any_live_delete_claim_deletes(repo, repo_signer, pn):
    d1 = add_delete_claim(repo, repo_signer, pn, at(1))
    add_delete_claim(repo, repo_signer, pn, at(2))
    add_delete_claim(repo, repo_signer, d1, at(3))
    assert permanode_state(repo, pn).deleted  # the second one still stands
    assert not permanode_state(repo, pn, T0).deleted
    deletes = ClaimsIndex.open(repo).of_type("delete")
    assert {c.target for c in deletes} == {pn, d1}


# -- what never counts -------------------------------------------------------------

def test_tampered_claim_is_ignored_and_reported(repo, repo_signer, pn):
    good = add_claim(repo, repo_signer, "set-attribute", pn, "title", "real", at(1))
    blob = repo.get(good)
    tampered = blob.replace(b'"real"', b'"reaL"')  # one byte of the JSON, signature kept
    assert len(tampered) == len(blob) and sum(a != b for a, b in zip(blob, tampered)) == 1
    bad = repo.put(tampered)  # a new blob, sniffed as signed: it carries camliSig
    assert values(repo, pn, "title") == ("real",)
    assert [c.ref for c in claims_on(repo, pn)] == [good]
    (invalid,) = invalid_claims(repo)
    assert invalid.ref == bad and invalid.status == BAD_SIGNATURE
    assert invalid.permanodes == (pn,) and invalid.date == SchemaTime(T0 + SEC)
    assert permanode_state(repo, pn).valid is True


def _unknown_signer(repo_signer):
    """The session key under another key blob (one more newline): a signer the
    repository has no key blob for, without generating a second key."""
    return repo_signer.home.signer(repo_signer.fingerprint, repo_signer.public_key + b"\n")


def test_claim_by_unknown_key_is_ignored_until_its_key_arrives(repo, repo_signer, pn):
    stranger = _unknown_signer(repo_signer)
    claim = new_attribute_claim("set-attribute", pn, "title", "stranger",
                                signer=stranger.public_key_ref, clock=at(1))
    ref = repo.put(jsonsign.sign(claim.to_json(), stranger), kind=KIND_SIGNED)
    assert values(repo, pn, "title") == ()
    (invalid,) = invalid_claims(repo)
    assert (invalid.ref, invalid.status, invalid.signer) == (ref, MISSING_KEY, stranger.public_key_ref)
    repo.put(stranger.public_key)  # the key blob arrives (e.g. by sync)
    assert values(repo, pn, "title") == ("stranger",)
    assert invalid_claims(repo) == []


def test_claims_on_an_invalid_permanode_never_count(repo, repo_signer):
    pn = new_permanode(repo, repo_signer, at(0))
    blob = repo.get(pn)
    i = blob.index(b'"random": "') + len(b'"random": "')
    forged = blob[:i] + bytes([blob[i] ^ 1]) + blob[i + 1:]
    forged_pn = repo.put(forged)
    add_claim(repo, repo_signer, "set-attribute", forged_pn, "title", "x", at(1))
    state = permanode_state(repo, forged_pn)
    assert state.valid is False and state.attributes == {}


# -- the cache -------------------------------------------------------------------

@pytest.fixture
def count_verify(monkeypatch):
    calls = []
    real = jsonsign.verify

    def counting(blob, fetch_key, now=None):
        calls.append(BlobRef.of(blob))
        return real(blob, fetch_key, now)
    monkeypatch.setattr(jsonsign, "verify", counting)
    return calls


def _history(repo, pn):
    state = permanode_state(repo, pn)
    return state.attributes, [(c.ref, c.date, c.key_id) for c in state.claims]


def test_each_signed_blob_is_verified_once_per_cache(repo, repo_signer, pn, reopen, cache_dir,
                                                      count_verify):
    for i in range(5):
        add_claim(repo, repo_signer, "add-attribute", pn, "tag", str(i), at(i))
    count_verify.clear()
    before = _history(repo, pn)
    assert count_verify == []  # the writer indexed its claims as it wrote them
    for _ in range(3):
        assert _history(repo, pn) == before
    assert count_verify == []
    repo.close()
    again = reopen()
    assert _history(again, pn) == before and count_verify == []  # same cache, other process
    again.close()
    shutil.rmtree(cache_dir)
    rebuilt = reopen()
    assert _history(rebuilt, pn) == before  # rebuilt from the packs
    assert len(count_verify) == 6
    count_verify.clear()
    rebuilt.reindex()  # empties every cache table
    assert _history(rebuilt, pn) == before and len(count_verify) == 6


@pytest.mark.parametrize("way", ["one index pass", "pack headers"])
def test_rebuilding_the_claims_table_either_way_gives_the_same_answers(
        repo, repo_signer, pn, reopen, cache_dir, monkeypatch, way):
    for i in range(3):
        add_claim(repo, repo_signer, "set-attribute", pn, "title", str(i), at(i))
        repo.flush()  # one pack each
    before = _history(repo, pn)
    repo.close()
    shutil.rmtree(cache_dir)
    if way == "one index pass":
        monkeypatch.setattr(claims, "HEADER_READ_LIMIT", 0)
    else:
        monkeypatch.setattr(claims, "INDEX_PASS_SHARE", 0)
        monkeypatch.setattr(claims, "HEADER_READ_LIMIT", 1000)
    rebuilt = reopen()
    if way == "pack headers":
        monkeypatch.setattr(rebuilt.index, "blobs_of_kind", lambda kind: pytest.fail("index pass"))
    assert _history(rebuilt, pn) == before


def test_up_to_date_sync_reads_no_blob(repo, repo_signer, pn, monkeypatch):
    add_claim(repo, repo_signer, "set-attribute", pn, "title", "t", at(1))
    claims.sync_claims(repo)
    monkeypatch.setattr(repo, "get", lambda ref: pytest.fail("read a blob"))
    monkeypatch.setattr(repo, "read_pack_header", lambda *a: pytest.fail("read a pack header"))
    stats = claims.sync_claims(repo)
    assert stats.packs_read == 0 and stats.blobs_verified == 0


def test_removed_claims_leave_the_index(repo, repo_signer, pn):
    keep = add_claim(repo, repo_signer, "add-attribute", pn, "tag", "keep", at(1))
    gone = add_claim(repo, repo_signer, "add-attribute", pn, "tag", "gone", at(2))
    assert values(repo, pn, "tag") == ("keep", "gone")
    remove_blobs(repo, {gone})  # what gc does: rewrite the pack without it
    assert values(repo, pn, "tag") == ("keep",)
    assert [c.ref for c in claims_on(repo, pn)] == [keep]


# -- Perkeep's own claims ------------------------------------------------------------

PK_PN = BlobRef.parse("sha224-eaf72715d32f498a4a3fe9f372495962d7298ebf018536a4f1f88221")
PK_DELETED_PN = BlobRef.parse("sha224-56d600f010ef4c88ab6f3828f7b2e990fa12d5b76ad20b252ddcac91")
PK_MEMBER = "sha224-ebc479bcb179797980b20e7bc7946b0c74cec7c0aec253632f009d3a"


def test_perkeep_vectors_fold_to_perkeeps_state(repo):
    vectors = vectors_dir()
    repo.put((vectors / "keys/camli-tester-2931A67C26F5ABDA.perkeep-armor.asc").read_bytes())
    stored = [repo.put(p.read_bytes()) for p in sorted((vectors / "signed-sha224").glob("*.json"))]
    assert len(stored) == 16
    state = permanode_state(repo, PK_PN)
    # tag foo1 then foo2 (set), camliRoot, add camliMember, del title=pony (no title to remove)
    assert state.attributes == {"tag": ("foo2",), "camliRoot": ("rootval",), "camliMember": (PK_MEMBER,)}
    assert {c.key_id for c in state.claims} == {"2931A67C26F5ABDA"}
    assert state.valid is None  # Perkeep's test never stored that permanode; its claims count
    before = permanode_state(repo, PK_PN, "2011-11-28T01:32:38.000123456Z")
    assert before.attributes == {"tag": ("foo2",)}
    deleted = permanode_state(repo, PK_DELETED_PN)
    assert deleted.deleted and deleted.attributes == {"tag": ("foo1",)}
    assert not permanode_state(repo, PK_DELETED_PN, "2011-11-28T01:32:37.5Z").deleted
    index = ClaimsIndex.open(repo)
    pn1 = index.permanode(BlobRef.parse(
        "sha224-e42e49e034a0c34d959fe6d9a5b7074822bca4ce660792727c6a90a0"))
    assert pn1 is not None and pn1.key_id == "2931A67C26F5ABDA"
    assert invalid_claims(repo) == []


def test_perkeep_blob_without_its_key_is_reported_missing(repo):
    vectors = vectors_dir()
    ref = repo.put((vectors / "signed/share-unverifiable.sha1-102758fb.json").read_bytes())
    (invalid,) = invalid_claims(repo)
    assert invalid.ref == ref and invalid.status == MISSING_KEY
