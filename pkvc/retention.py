"""Retention policies: which snapshots `forget` keeps, and why (restic's rules).

Terms, as in restic's `forget` (docs/retention.md has a worked example):

- A *policy* is a set of keep rules; a snapshot is kept when any rule keeps
  it (the rules are ORed) and forgotten otherwise.
- Count rules — `last`, `hourly`, `daily`, `weekly`, `monthly`, `yearly` —
  walk the snapshots newest first. Each calendar rule cuts time into
  *buckets* (an hour, a day, an ISO week Monday to Sunday, a month, a year,
  on the local calendar of `tz`) and keeps the newest snapshot of each
  bucket that holds one, until N buckets were kept; `last` keeps the N
  newest snapshots. N = -1 means unlimited. When a count rule still has
  counts left at the oldest snapshot, that snapshot is kept too ("oldest
  daily snapshot"), which keeps the history as long as the rule allows.
- `within` keeps every snapshot newer than the newest snapshot minus a
  duration (`2y5m7d3h`: years, months, days, hours, calendar arithmetic as
  Go's `AddDate`); `within_hourly` … `within_yearly` keep the newest
  snapshot of each bucket inside such a window. "The newest snapshot" is
  the newest one not in the future (the clock is injectable), so snapshots
  dated in the future are always kept by these rules.
- `tags` keeps every snapshot carrying all tags of one of the tag lists;
  an empty tag list (`--keep-tag ''`) matches untagged snapshots.
- A policy with no rule keeps everything ("policy is empty"): forgetting
  every snapshot of a series is `series delete`, never an accident.

Pure: no repository, no clock unless given, no I/O.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo

from pkvc.errors import UsageError

UNLIMITED = -1
_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DURATION_PART = re.compile(r"(-?\d+)([ymdh])")


# -- durations -----------------------------------------------------------------

@dataclass(frozen=True)
class Duration:
    """Years, months, days and hours, applied with calendar arithmetic."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> "Duration":
        """`2y5m7d3h`, any subset in any order (restic's form); a unit given
        twice keeps its last value, as in restic."""
        s = text.strip()
        if not s:
            raise UsageError("empty duration: expected e.g. 7d, 1y6m or 2y5m7d3h")
        values = {"y": 0, "m": 0, "d": 0, "h": 0}
        pos = 0
        while pos < len(s):
            match = _DURATION_PART.match(s, pos)
            if match is None:
                raise UsageError(f"invalid duration {text!r}: expected numbers with units "
                                 "y (years), m (months), d (days), h (hours), e.g. 2y5m7d3h")
            values[match.group(2)] = int(match.group(1))
            pos = match.end()
        return cls(values["y"], values["m"], values["d"], values["h"])

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def before(self, t: datetime) -> datetime:
        """`t` minus this duration: calendar fields first (Go's AddDate, which
        normalises 31 March - 1 month to 3 March), then hours as real time."""
        return add_date(t, -self.years, -self.months, -self.days) - timedelta(hours=self.hours)

    def __str__(self) -> str:
        out = "".join(f"{n}{unit}" for n, unit in ((self.years, "y"), (self.months, "m"),
                                                    (self.days, "d"), (self.hours, "h")) if n)
        return out or "0h"


def add_date(t: datetime, years: int, months: int, days: int) -> datetime:
    """Go's `Time.AddDate` on an aware datetime: the wall clock in t's zone is
    kept, an overflowing day rolls into the next month."""
    month_index = t.year * 12 + (t.month - 1) + years * 12 + months
    year, month = divmod(month_index, 12)
    first = date(year, month + 1, 1)
    day = first + timedelta(days=t.day - 1 + days)
    wall = datetime(day.year, day.month, day.day, t.hour, t.minute, t.second, t.microsecond)
    return _localize(wall, t.tzinfo)


def _localize(wall: datetime, tz) -> datetime:
    """A wall-clock time in zone `tz` (earliest reading when ambiguous)."""
    return wall.replace(tzinfo=tz, fold=0)


# -- the policy ------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """The keep rules; counts are N buckets (0: rule off, -1: unlimited)."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    within_hourly: Duration | None = None
    within_daily: Duration | None = None
    within_weekly: Duration | None = None
    within_monthly: Duration | None = None
    within_yearly: Duration | None = None
    tags: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self):
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            n = getattr(self, name)
            if not isinstance(n, int) or n < UNLIMITED:
                raise UsageError(f"--keep-{name} must be a count, or -1 (unlimited), not {n!r}")
        object.__setattr__(self, "tags", tuple(tuple(t) for t in self.tags))

    def is_empty(self) -> bool:
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        durations = (self.within, self.within_hourly, self.within_daily, self.within_weekly,
                     self.within_monthly, self.within_yearly)
        return (not any(counts) and all(d is None or d.is_zero() for d in durations)
                and not self.tags)

    def __str__(self) -> str:
        parts = []
        for name, label in (("last", "latest"), ("hourly", "hourly"), ("daily", "daily"),
                            ("weekly", "weekly"), ("monthly", "monthly"), ("yearly", "yearly")):
            n = getattr(self, name)
            if n:
                parts.append(f"all {label}" if n == UNLIMITED else f"{n} {label}")
        text = f"{', '.join(parts)} snapshots" if parts else ""
        for unit in ("hourly", "daily", "weekly", "monthly", "yearly"):
            d = getattr(self, f"within_{unit}")
            if d is not None and not d.is_zero():
                text += (", " if text else "") + f"{unit} snapshots within {d}"
        if self.tags:
            shown = ", ".join(",".join(t) or "''" for t in self.tags)
            text += (" and " if text else "") + f"all snapshots with tags {shown}"
        if self.within is not None and not self.within.is_zero():
            text += (" and " if text else "") + f"all snapshots within {self.within} of the newest"
        return f"keep {text}" if text else "keep everything (empty policy)"


# -- input and output ----------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """A snapshot as the policy sees it: an id, an instant, tags."""

    id: str
    time: datetime  # aware
    tags: tuple[str, ...] = ()

    def has_tags(self, wanted: tuple[str, ...]) -> bool:
        """All of `wanted`; the empty tag matches a snapshot without tags."""
        for tag in wanted:
            if tag == "" and not self.tags:
                return True
            if tag not in self.tags:
                return False
        return True


@dataclass(frozen=True)
class Decision:
    """What the policy says of one snapshot; `reasons` name the rules that kept it."""

    id: str
    time: datetime
    tags: tuple[str, ...]
    keep: bool
    reasons: tuple[str, ...] = ()


def as_datetime(value) -> datetime:
    """An aware datetime from a datetime, ns since the epoch, or anything with `.ns`."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: say which zone")
        return value
    ns = getattr(value, "ns", value)
    if not isinstance(ns, int):
        raise TypeError(f"not a time: {value!r}")
    return _EPOCH + timedelta(microseconds=ns // 1000)


def candidates(items: Iterable) -> list[Candidate]:
    """(id, time, tags) triples (time: datetime, ns or SchemaTime) as Candidates."""
    out = []
    for item in items:
        if isinstance(item, Candidate):
            out.append(item)
        else:
            ident, when, tags = item
            out.append(Candidate(str(ident), as_datetime(when), tuple(tags)))
    return out


# -- applying it -------------------------------------------------------------------

def _bucket_functions(tz) -> dict[str, Callable[[datetime, int], object]]:
    def local(t: datetime) -> datetime:
        return t.astimezone(tz)

    def week(t: datetime, _nr: int):
        year, wk, _ = local(t).isocalendar()
        return (year, wk)

    return {
        "last": lambda t, nr: nr,
        "hourly": lambda t, nr: local(t).timetuple()[:4],
        "daily": lambda t, nr: local(t).timetuple()[:3],
        "weekly": week,
        "monthly": lambda t, nr: local(t).timetuple()[:2],
        "yearly": lambda t, nr: local(t).year,
    }


@dataclass
class _Bucket:
    count: int
    bucket_of: Callable
    reason: str
    last: object = field(default=None)


def apply_policy(snapshots: Iterable, policy: Policy, now: Callable[[], int] = time.time_ns,
                 tz: tzinfo | None = None) -> list[Decision]:
    """One decision per snapshot, newest first (ties keep their given order).

    `snapshots` are Candidates or (id, time, tags) triples; `now` is a clock
    in ns (only used to ignore future snapshots when finding the newest);
    `tz` is the zone whose calendar makes the buckets (None: this machine's).
    """
    items = candidates(snapshots)
    order = sorted(range(len(items)), key=lambda i: items[i].time, reverse=True)
    items = [items[i] for i in order]  # sorted() is stable: equal times keep their order
    if policy.is_empty():
        return [Decision(c.id, c.time, c.tags, True, ("policy is empty",)) for c in items]
    zone = tz if tz is not None else datetime.now().astimezone().tzinfo
    fns = _bucket_functions(zone)
    counted = [_Bucket(getattr(policy, name), fns[name], f"{label} snapshot")
               for name, label in (("last", "last"), ("hourly", "hourly"), ("daily", "daily"),
                                   ("weekly", "weekly"), ("monthly", "monthly"),
                                   ("yearly", "yearly"))]
    windows = [(getattr(policy, f"within_{unit}"), _Bucket(0, fns[unit], f"{unit} within"))
               for unit in ("hourly", "daily", "weekly", "monthly", "yearly")]
    latest = _latest(items, as_datetime(now()))
    out = []
    for nr, cur in enumerate(items):
        oldest = nr == len(items) - 1
        reasons = [f"has tags {','.join(t) or chr(39) * 2}" for t in policy.tags if cur.has_tags(t)]
        if _inside(policy.within, cur.time, latest, zone):
            reasons.append(f"within {policy.within}")
        for b in counted:
            if b.count > 0 or b.count == UNLIMITED:
                val = b.bucket_of(cur.time, nr)
                if val != b.last or oldest:
                    reasons.append(f"oldest {b.reason}" if val == b.last else b.reason)
                    b.last = val
                    if b.count > 0:
                        b.count -= 1
        for duration, b in windows:
            if _inside(duration, cur.time, latest, zone):
                val = b.bucket_of(cur.time, nr)
                if val != b.last or oldest:
                    reason = f"oldest {b.reason}" if val == b.last else b.reason
                    reasons.append(f"{reason} {duration}")
                    b.last = val
        out.append(Decision(cur.id, cur.time, cur.tags, bool(reasons), tuple(reasons)))
    return out


def _latest(items: list[Candidate], now: datetime) -> datetime | None:
    """The newest snapshot time that is not in the future (None if all are)."""
    found = None
    for c in items:
        if c.time < now and (found is None or c.time > found):
            found = c.time
    return found


def _inside(duration: Duration | None, t: datetime, latest: datetime | None, zone) -> bool:
    """Strictly after `latest - duration` (restic's `After`); with no usable
    newest snapshot the window reaches back forever."""
    if duration is None or duration.is_zero():
        return False
    if latest is None:
        return True
    try:
        start = duration.before(latest.astimezone(zone))
    except (OverflowError, ValueError):
        return True  # before year 1: everything is inside
    return t > start


def kept(decisions: Iterable[Decision]) -> list[Decision]:
    return [d for d in decisions if d.keep]


def forgotten(decisions: Iterable[Decision]) -> list[Decision]:
    return [d for d in decisions if not d.keep]


__all__ = ["UNLIMITED", "Duration", "Policy", "Candidate", "Decision", "apply_policy",
           "add_date", "as_datetime", "candidates", "kept", "forgotten"]
