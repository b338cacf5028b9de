"""RFC 3339 as Perkeep writes it: UTC Z, trimmed ns fraction, -00:01 = unknown zone."""

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st

from pkvc.schema.timefmt import SchemaTime, format_time, parse_time
from vectors import vectors_dir


def _misc():
    return json.loads((vectors_dir() / "canonical" / "misc-vectors.json").read_text())


def test_perkeep_round_trip_vectors():
    for text in _misc()["rfc3339_roundtrip"]["values"]:
        t = parse_time(text)
        assert format_time(t) == text
        assert t.zone_known == text.endswith("Z")


def test_perkeep_formatting_vectors():
    for case in _misc()["time_formatting"]:
        ns = case["unix_sec"] * 10**9 + case["nsec"]
        assert format_time(ns) == case["rfc3339"]
        assert parse_time(case["rfc3339"]) == SchemaTime(ns)


def test_unknown_location_vector():
    case = _misc()["rfc3339_unknown_location"]
    wall = datetime.strptime(case["input_local"], "%Y-%m-%d %H:%M:%S")
    assert str(SchemaTime.from_unknown_zone(wall)) == case["output"]


def test_known_zones_become_utc():
    assert str(parse_time("2012-05-13T17:02:47.5+02:00")) == "2012-05-13T15:02:47.5Z"
    assert str(parse_time("2012-05-13T15:02:47+00:00")) == "2012-05-13T15:02:47Z"
    aware = datetime(2012, 5, 13, 17, 2, 47, 120000, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(aware) == "2012-05-13T15:02:47.12Z"


def test_before_the_epoch_and_far_years():
    assert format_time(-1) == "1969-12-31T23:59:59.999999999Z"
    assert format_time(parse_time("0001-01-01T00:00:00Z")) == "0001-01-01T00:00:00Z"
    assert format_time(parse_time("9999-12-31T23:59:59.1Z")) == "9999-12-31T23:59:59.1Z"


@pytest.mark.parametrize("bad", [
    "2012-05-13 15:02:47Z", "2012-05-13T15:02:47", "2012-13-13T15:02:47Z",
    "2012-05-13T15:02:60Z", "2012-05-13T15:02:47.1234567891Z", "2012-05-13T15:02:47z",
    "2012-05-13T15:02:47+24:00", "", None,
])
def test_rejects_malformed(bad):
    with pytest.raises(ValueError):
        parse_time(bad)


def test_datetime_conversions():
    t = parse_time("2012-05-13T15:02:47.123456789Z")
    assert t.to_datetime() == datetime(2012, 5, 13, 15, 2, 47, 123456, tzinfo=timezone.utc)
    unknown = parse_time("2012-05-13T15:02:47-00:01")
    assert SchemaTime.from_datetime(unknown.to_datetime()) == unknown
    with pytest.raises(ValueError):
        SchemaTime.from_datetime(datetime(2012, 1, 1))


@given(st.integers(-62135596740 * 10**9, 253402300799 * 10**9 + 999999999), st.booleans())
def test_ns_round_trip(ns, known):
    t = SchemaTime(ns, known)
    text = format_time(t)
    assert parse_time(text) == t
    assert text.endswith("Z") == known
    fraction = re.search(r"\.(\d+)", text)
    if fraction:
        assert not fraction.group(1).endswith("0")
    assert ("." in text) == bool(ns % 10**9)


def test_out_of_range_is_a_value_error():
    with pytest.raises(ValueError):
        format_time(SchemaTime(-62135596800 * 10**9, False))



@given(st.integers(-62135596740 * 10**9, 253402300799 * 10**9 + 999999999), st.booleans())
def test_gmtime_and_datetime_forms_agree(ns, known):
    """format_time takes time.gmtime for years 1970-9999: same text as datetime's."""
    wall_ns = ns if known else ns - 60 * 10**9
    secs, frac = divmod(wall_ns, 10**9)
    d = datetime(1970, 1, 1) + timedelta(seconds=secs)
    expected = (f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
                + ("." + f"{frac:09d}".rstrip("0") if frac else "") + ("Z" if known else "-00:01"))
    assert format_time(SchemaTime(ns, known)) == expected
