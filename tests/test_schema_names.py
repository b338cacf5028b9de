"""Byte names: Perkeep's mixed arrays, utf8StrLen, and hostile-name flags."""

import codecs
import json

import pytest
from hypothesis import given, strategies as st

from pkvc.errors import SchemaError
from pkvc.schema.names import (
    bytes_from_mixed_array, decode_name, encode_name, mixed_array_from_bytes, name_problem,
    utf8_prefix_len,
)
from vectors import vectors_dir


def _raw(shown: str) -> bytes:
    """The vectors show bytes with \\xNN escapes inside UTF-8 text."""
    return codecs.escape_decode(shown.encode("utf-8"))[0]


def _misc():
    return json.loads((vectors_dir() / "canonical" / "misc-vectors.json").read_text())


def test_utf8_str_len_vectors():
    for shown, n in _misc()["utf8StrLen"]["cases"]:
        assert utf8_prefix_len(_raw(shown)) == n


def test_mixed_array_from_string_vectors():
    for shown, expected in _misc()["mixedArrayFromString"]["cases"]:
        assert mixed_array_from_bytes(_raw(shown)) == expected
        assert bytes_from_mixed_array(expected) == _raw(shown)


def test_string_from_mixed_array_vectors():
    for array_json, shown in _misc()["stringFromMixedArray"]["cases"]:
        assert bytes_from_mixed_array(json.loads(array_json)) == _raw(shown)


def test_truncated_and_surrogate_sequences_are_bytes():
    assert mixed_array_from_bytes(b"ab\xe2\x82") == ["ab", 0xE2, 0x82]
    assert mixed_array_from_bytes(b"\xed\xa0\x80") == [0xED, 0xA0, 0x80]
    assert utf8_prefix_len("\ufffd".encode()) == 3


@pytest.mark.parametrize("bad", [[256], [-1], [True], [None], [1.5], "abc", [["a"]]])
def test_bad_mixed_arrays_are_schema_errors(bad):
    with pytest.raises(SchemaError):
        bytes_from_mixed_array(bad)


def test_encode_and_decode_fields():
    assert encode_name(b"caf\xc3\xa9", "fileName") == {"fileName": "café"}
    assert encode_name(b"Am\xe9lie", "fileName") == {"fileNameBytes": ["Am", 233, "lie"]}
    assert decode_name({"fileNameBytes": ["Am", 233, "lie"]}, "fileName") == b"Am\xe9lie"
    assert decode_name({}, "fileName") is None
    with pytest.raises(SchemaError):
        decode_name({"fileName": "a", "fileNameBytes": ["a"]}, "fileName")
    with pytest.raises(SchemaError):
        decode_name({"fileName": 3}, "fileName")


@pytest.mark.parametrize("name", [None, b"", b".", b"..", b"a/b", b"/", b"/etc", b"a\0b"])
def test_hostile_names_are_flagged(name):
    assert name_problem(name)


@pytest.mark.parametrize("name", [b"a", b"...", b".hidden", b"a\\b", b"\xff", b" "])
def test_ordinary_names_pass(name):
    assert name_problem(name) is None


@given(st.binary(max_size=40))
def test_bytes_round_trip_through_json(raw):
    fields = json.loads(json.dumps(encode_name(raw, "fileName")))
    assert decode_name(fields, "fileName") == raw
