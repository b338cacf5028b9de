"""RFC 3339 times exactly as Perkeep writes them.

Perkeep (`RFC3339FromTime`) writes UTC with `Z`, fractional seconds only
when non-zero, trailing zeros trimmed, up to nanoseconds. One exception:
the offset `-00:01` is Perkeep's marker for "time zone unknown" (e.g. an
EXIF date); such a time keeps its wall clock and that offset. Python's
datetime stops at microseconds, so times here are integer nanoseconds since
the epoch (`SchemaTime`), which is also what `os.stat` gives (`st_mtime_ns`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

_NS = 1_000_000_000
_UNKNOWN_OFFSET_NS = -60 * _NS  # Perkeep's UnknownLocation: one minute west
_EPOCH = datetime(1970, 1, 1)
_GMTIME_END = 253402300800  # 10000-01-01T00:00:00Z
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|[+-]\d{2}:\d{2})"
)


@dataclass(frozen=True, order=True)
class SchemaTime:
    """An instant in ns since the Unix epoch; `zone_known=False` means `-00:01`."""

    ns: int
    zone_known: bool = True

    def __str__(self) -> str:
        return format_time(self)

    @classmethod
    def parse(cls, text: str) -> "SchemaTime":
        return parse_time(text)

    @classmethod
    def from_datetime(cls, dt: datetime) -> "SchemaTime":
        """An aware datetime; offset -00:01 means zone unknown, as in Perkeep."""
        if dt.tzinfo is None or dt.utcoffset() is None:
            raise ValueError("naive datetime: say which zone (or use from_unknown_zone)")
        delta = dt.astimezone(timezone.utc).replace(tzinfo=None) - _EPOCH
        ns = (delta // timedelta(microseconds=1)) * 1000
        return cls(ns, dt.utcoffset() != timedelta(minutes=-1))

    @classmethod
    def from_unknown_zone(cls, wall: datetime) -> "SchemaTime":
        """A naive wall-clock time whose zone nobody knows (Perkeep's -00:01)."""
        delta = wall.replace(tzinfo=None) - _EPOCH
        ns = (delta // timedelta(microseconds=1)) * 1000
        return cls(ns - _UNKNOWN_OFFSET_NS, False)

    def to_datetime(self) -> datetime:
        """Aware datetime (UTC, or -00:01), truncated to microseconds."""
        tz = timezone.utc if self.zone_known else timezone(timedelta(minutes=-1))
        micros = self.ns // 1000
        return (_EPOCH + timedelta(microseconds=micros)).replace(tzinfo=timezone.utc).astimezone(tz)


def format_time(value: "int | datetime | SchemaTime") -> str:
    """Perkeep's RFC 3339 form of ns-since-epoch (UTC), a datetime, or a SchemaTime."""
    if isinstance(value, datetime):
        value = SchemaTime.from_datetime(value)
    elif not isinstance(value, SchemaTime):
        value = SchemaTime(int(value))
    wall_ns = value.ns if value.zone_known else value.ns + _UNKNOWN_OFFSET_NS
    secs, frac = divmod(wall_ns, _NS)
    if 0 <= secs < _GMTIME_END:  # time.gmtime: a third of the datetime arithmetic's cost
        text = "%04d-%02d-%02dT%02d:%02d:%02d" % time.gmtime(secs)[:6]
    else:
        try:
            wall = _EPOCH + timedelta(seconds=secs)
        except OverflowError:
            raise ValueError(f"time {value.ns} ns is outside years 1-9999") from None
        text = (f"{wall.year:04d}-{wall.month:02d}-{wall.day:02d}"
                f"T{wall.hour:02d}:{wall.minute:02d}:{wall.second:02d}")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + ("Z" if value.zone_known else "-00:01")


def parse_time(text: str) -> SchemaTime:
    """Parse RFC 3339 (as Go's time.RFC3339 does); raise ValueError if malformed."""
    m = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    wall = datetime(year, month, day, hour, minute, second)
    frac = int((m.group(7) or "").ljust(9, "0"))
    wall_ns = ((wall - _EPOCH) // timedelta(seconds=1)) * _NS + frac
    zone = m.group(8)
    if zone == "-00:01":
        return SchemaTime(wall_ns - _UNKNOWN_OFFSET_NS, False)
    if zone == "Z":
        return SchemaTime(wall_ns)
    sign = -1 if zone[0] == "-" else 1
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError(f"bad zone offset in {text!r}")
    offset_ns = sign * (hours * 3600 + minutes * 60) * _NS
    return SchemaTime(wall_ns - offset_ns)
