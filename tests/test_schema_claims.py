"""Permanode and claim bodies, built to Perkeep's exact bytes."""

import json

import pytest
from hypothesis import given, strategies as st

from pkvc.blobref import BlobRef
from pkvc.errors import SchemaError
from pkvc.schema.canonical import parse_schema
from pkvc.schema.claims import (
    AttributeChange, AttributeClaim, DeleteClaim, MultiClaim, PermanodeBlob, ShareClaim,
    new_attribute_claim, new_delete_claim, new_multi_claim, new_permanode, new_planned_permanode,
    new_share_claim, parse_claim,
)
from pkvc.schema.timefmt import SchemaTime
from vectors import vector_files, vectors_dir

PN = BlobRef.parse("xxx-1234")
CLOCK = lambda: 123 * 10**9 + 456  # noqa: E731  (Perkeep's TestAttribute clock)
SIGNER = BlobRef.parse("sha224-a794846212ff67acdd00c6b90eee492baf674d41da8a621d2e8042dd")


def _canonical(name):
    return (vectors_dir() / "canonical" / name).read_bytes()


@pytest.mark.parametrize("name, claim_type, attr, value", [
    ("claim-set-attribute.json", "set-attribute", "attr1", "val1"),
    ("claim-add-attribute.json", "add-attribute", "tag", "funny"),
    ("claim-del-attribute-with-value.json", "del-attribute", "attr1", "val1"),
    ("claim-del-attribute-no-value.json", "del-attribute", "attr2", None),
])
def test_attribute_claims_match_perkeep(name, claim_type, attr, value):
    claim = new_attribute_claim(claim_type, PN, attr, value, signer=None, clock=CLOCK)
    assert claim.to_json() == _canonical(name)
    assert parse_claim(_canonical(name)) == claim


def test_multi_claim_matches_perkeep():
    changes = [AttributeChange("set-attribute", PN, "foo", "bar"),
               AttributeChange("del-attribute", PN, "foo", "specific-del"),
               AttributeChange("del-attribute", PN, "foo")]
    claim = new_multi_claim(changes, signer=None, clock=CLOCK)
    assert claim.to_json() == _canonical("claim-multi.json")
    assert parse_claim(_canonical("claim-multi.json")) == claim
    assert claim.refs() == [PN, PN, PN]


def test_delete_claim_matches_perkeep():
    claim = new_delete_claim(PN, signer=None, clock=CLOCK)
    assert claim.to_json() == _canonical("claim-delete.json")
    assert claim.refs() == [PN]


def test_share_search_keeps_struct_order():
    search = {"expression": "is:image", "limit": 42, "around": None}
    claim = new_share_claim(search=search, transitive=True, signer=BlobRef.parse("yyy-5678"),
                            clock=lambda: 1257894000 * 10**9)
    assert claim.to_json() == _canonical("share-search.json")
    assert parse_claim(_canonical("share-search.json")).to_json() == claim.to_json()


def test_share_with_target_and_expiry_matches_a_perkeep_signed_share():
    (path,) = vector_files("signed/share-expiring*.json")
    data = path.read_bytes()
    body = data[:data.rindex(b',"camliSig":"')] + b"}"
    m = parse_schema(body)
    claim = new_share_claim(target=BlobRef.parse(m["target"]), transitive=False,
                            expires=SchemaTime.parse(m["expires"]),
                            signer=BlobRef.parse(m["camliSigner"]),
                            clock=lambda: SchemaTime.parse(m["claimDate"]).ns)
    assert claim.to_json() == body
    assert claim.refs() == [BlobRef.parse(m["target"]), BlobRef.parse(m["camliSigner"])]


def _signed_bodies(pattern):
    for path in vector_files(f"signed-sha224/{pattern}"):
        data = path.read_bytes()
        yield path, data[:data.rindex(b',"camliSig":"')] + b"}"


def test_planned_permanodes_match_perkeep():
    bodies = list(_signed_bodies("planned-permanode-*.json"))
    assert bodies
    for _, body in bodies:
        key = json.loads(body)["key"]
        assert new_planned_permanode(key, SIGNER).to_json() == body


def test_signed_claim_bodies_rebuild_exactly():
    bodies = list(_signed_bodies("claim-*.json"))
    assert len(bodies) == 8
    for _, body in bodies:
        parsed = parse_claim(body)
        clock = lambda: parsed.claim_date.ns  # noqa: E731
        if isinstance(parsed, DeleteClaim):
            rebuilt = new_delete_claim(parsed.target, signer=SIGNER, clock=clock)
        else:
            rebuilt = new_attribute_claim(parsed.claim_type, parsed.permanode, parsed.attribute,
                                          parsed.value, signer=SIGNER, clock=clock)
        assert rebuilt.to_json() == body
        assert SIGNER in parsed.refs()


def test_random_permanode():
    pn = new_permanode(SIGNER, random_bytes=lambda n: b"\x00" * n)
    assert pn.random == "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
    assert PermanodeBlob.from_json(pn.to_json()) == pn
    assert new_permanode(SIGNER).random != new_permanode(SIGNER).random


def test_value_refs_follow_known_blobrefs_only():
    content = BlobRef.of(b"dir")
    claim = new_attribute_claim("set-attribute", PN, "camliContent", str(content), signer=SIGNER)
    assert claim.refs() == [PN, content, SIGNER]
    title = new_attribute_claim("set-attribute", PN, "title", "xxx-1234", signer=SIGNER)
    assert title.refs() == [PN, SIGNER]


@pytest.mark.parametrize("m", [
    {"camliType": "claim", "claimType": "set-attribute", "permaNode": "xxx-1234", "attribute": "a"},
    {"camliType": "claim", "claimDate": "2011-01-01T00:00:00Z", "claimType": "bogus"},
    {"camliType": "claim", "claimDate": "2011-01-01T00:00:00Z", "claimType": "delete"},
    {"camliType": "claim", "claimDate": "2011-01-01T00:00:00Z", "claimType": "set-attribute",
     "permaNode": "not a ref", "attribute": "a"},
    {"camliType": "claim", "claimDate": "2011-01-01T00:00:00Z", "claimType": "share",
     "authType": "haveref"},
    {"camliType": "claim", "claimDate": "2011-01-01T00:00:00Z", "claimType": "multi",
     "claims": [{"claimType": "delete", "target": "xxx-1234"}]},
    {"camliType": "claim", "claimDate": "2011-01-01T00:00:00Z", "claimType": "delete",
     "target": "xxx-1234", "camliSigner": 7},
    {"camliType": "permanode", "claimType": "delete"},
])
def test_malformed_claims_are_schema_errors(m):
    with pytest.raises(SchemaError):
        parse_claim({"camliVersion": 1, **m})


def test_builders_refuse_nonsense():
    with pytest.raises(ValueError):
        new_attribute_claim("delete", PN, "a", signer=None)
    with pytest.raises(ValueError):
        new_share_claim(signer=None)


_value = st.none() | st.text(min_size=1, max_size=10)


@given(st.sampled_from(["set-attribute", "add-attribute", "del-attribute"]),
       st.text(max_size=10), _value, st.integers(0, 2**62))
def test_attribute_claim_round_trip(claim_type, attr, value, ns):
    claim = new_attribute_claim(claim_type, PN, attr, value, signer=SIGNER, clock=lambda: ns)
    parsed = parse_claim(claim.to_json())
    assert isinstance(parsed, AttributeClaim) and parsed.to_json() == claim.to_json()
    if claim_type == "del-attribute" or value is not None:
        assert parsed == claim


@given(st.lists(st.builds(AttributeChange, st.sampled_from(["set-attribute", "add-attribute"]),
                          st.just(PN), st.text(max_size=5), st.text(max_size=5)), max_size=4),
       st.integers(0, 2**62))
def test_multi_round_trip(changes, ns):
    claim = new_multi_claim(changes, signer=SIGNER, clock=lambda: ns)
    assert parse_claim(claim.to_json()) == claim
    assert isinstance(claim, MultiClaim)


@given(st.booleans(), st.none() | st.integers(0, 2**62))
def test_share_round_trip(transitive, expires):
    claim = new_share_claim(target=PN, transitive=transitive, expires=expires, signer=SIGNER,
                            clock=lambda: 5)
    assert parse_claim(claim.to_json()) == claim
    assert isinstance(claim, ShareClaim)
