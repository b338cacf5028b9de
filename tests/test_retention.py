"""Retention policies over fabricated dated histories (restic's documented rules)."""

from datetime import datetime, timedelta, timezone

import pytest

from pkvc.errors import UsageError
from pkvc.retention import (UNLIMITED, Candidate, Duration, Policy, add_date, apply_policy,
                            forgotten, kept)
from pkvc.schema.timefmt import SchemaTime

UTC = timezone.utc
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def clock(at: datetime = NOW):
    return lambda: SchemaTime.from_datetime(at).ns


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def history(times, tags=None) -> list[Candidate]:
    tags = tags or {}
    return [Candidate(f"s{i:03d}", t, tuple(tags.get(i, ()))) for i, t in enumerate(times)]


def run(snaps, now=NOW, tz=UTC, **rules):
    return apply_policy(snaps, Policy(**rules), now=clock(now), tz=tz)


def ids(decisions) -> list[str]:
    return [d.id for d in decisions]


def reasons(decisions) -> dict[str, tuple[str, ...]]:
    return {d.id: d.reasons for d in decisions if d.keep}


# -- restic's documented example: a backup every Sunday for 12 weeks -------------

SUNDAYS = history([at(2019, 9, 1, 11) + timedelta(weeks=i) for i in range(12)])


def test_keep_daily_4_keeps_the_last_four_sundays():
    out = run(SUNDAYS, daily=4)
    assert ids(kept(out)) == ["s011", "s010", "s009", "s008"]
    assert all(r == ("daily snapshot",) for r in reasons(out).values())
    assert len(forgotten(out)) == 8


def test_decisions_come_newest_first_with_every_snapshot_once():
    out = run(list(reversed(SUNDAYS)), last=1)
    assert ids(out) == [f"s{i:03d}" for i in range(11, -1, -1)]


# -- each count rule --------------------------------------------------------------

def test_keep_last():
    out = run(SUNDAYS, last=3)
    assert ids(kept(out)) == ["s011", "s010", "s009"]
    assert reasons(out)["s011"] == ("last snapshot",)


def test_keep_hourly_keeps_the_newest_of_each_hour():
    snaps = history([at(2029, 6, 1, 10, 5), at(2029, 6, 1, 10, 50), at(2029, 6, 1, 11, 0),
                     at(2029, 6, 1, 11, 59), at(2029, 6, 1, 13, 30)])
    out = run(snaps, hourly=3)
    assert ids(kept(out)) == ["s004", "s003", "s001"]


def test_keep_daily_counts_only_days_with_snapshots():
    snaps = history([at(2029, 6, 1, 8), at(2029, 6, 1, 20), at(2029, 6, 5, 9), at(2029, 6, 9, 1),
                     at(2029, 6, 9, 23, 59)])
    out = run(snaps, daily=2)
    assert ids(kept(out)) == ["s004", "s002"]


def test_keep_weekly_uses_iso_weeks_monday_to_sunday():
    # 2029-06-03 is a Sunday, 2029-06-04 a Monday: two different weeks
    snaps = history([at(2029, 5, 28, 9), at(2029, 6, 3, 23), at(2029, 6, 4, 0, 30),
                     at(2029, 6, 10, 12)])
    out = run(snaps, weekly=2)
    assert ids(kept(out)) == ["s003", "s001"]  # newest of this week, newest (Sunday) of the last


def test_keep_weekly_across_new_year_follows_iso_week_years():
    # 2029-12-31 (Monday) is in ISO week 1 of 2030, with 2030-01-01
    snaps = history([at(2029, 12, 30, 12), at(2029, 12, 31, 12), at(2030, 1, 1, 12)])
    out = run(snaps, now=at(2030, 2, 1), weekly=5)
    assert ids(kept(out)) == ["s002", "s000"]


def test_keep_monthly_and_yearly():
    snaps = history([at(2027, 3, 1), at(2027, 11, 30), at(2028, 2, 10), at(2028, 2, 20),
                     at(2028, 7, 1), at(2029, 1, 5)])
    assert ids(kept(run(snaps, monthly=3))) == ["s005", "s004", "s003"]
    assert ids(kept(run(snaps, yearly=2))) == ["s005", "s004"]


def test_unlimited_keeps_the_newest_of_every_bucket():
    snaps = history([at(2029, 1, d, h) for d in (1, 2, 3) for h in (6, 18)])
    out = run(snaps, daily=UNLIMITED)
    assert ids(kept(out)) == ["s005", "s003", "s001", "s000"]  # unlimited: the oldest too
    assert reasons(out)["s000"] == ("oldest daily snapshot",)


def test_oldest_snapshot_is_kept_while_counts_are_left():
    # three days of history, two snapshots a day; keep-daily 5 has counts left at the end
    snaps = history([at(2029, 1, d, h) for d in (1, 2, 3) for h in (6, 18)])
    out = run(snaps, daily=5)
    assert ids(kept(out)) == ["s005", "s003", "s001", "s000"]
    assert reasons(out)["s000"] == ("oldest daily snapshot",)


def test_no_oldest_bonus_when_counts_are_used_up():
    snaps = history([at(2029, 1, d, h) for d in (1, 2, 3) for h in (6, 18)])
    assert ids(kept(run(snaps, daily=3))) == ["s005", "s003", "s001"]


# -- durations and keep-within ----------------------------------------------------------

def test_duration_parse_and_print():
    assert Duration.parse("2y5m7d3h") == Duration(2, 5, 7, 3)
    assert Duration.parse(" 7d ") == Duration(days=7)
    assert Duration.parse("3h1y") == Duration(years=1, hours=3)
    assert str(Duration(1, 0, 2, 0)) == "1y2d"
    for bad in ("", "7", "7w", "d", "1y 2m", "1.5d"):
        with pytest.raises(UsageError):
            Duration.parse(bad)


def test_add_date_normalises_like_go():
    assert add_date(at(2029, 3, 31, 12), 0, -1, 0) == at(2029, 3, 3, 12)
    assert add_date(at(2028, 2, 29), -1, 0, 0) == at(2027, 3, 1)
    assert add_date(at(2029, 1, 1), 0, 0, -1) == at(2028, 12, 31)


def test_keep_within_is_relative_to_the_newest_snapshot_not_now():
    newest = at(2029, 6, 15, 12)
    snaps = history([newest - timedelta(days=d) for d in (40, 31, 29, 10, 0)])
    out = run(snaps, now=at(2035, 1, 1), within=Duration.parse("1m"))
    # one month before 2029-06-15T12:00 is 2029-05-15T12:00, exclusive
    assert ids(kept(out)) == ["s004", "s003", "s002"]
    assert reasons(out)["s002"] == ("within 1m",)


def test_keep_within_boundary_is_exclusive():
    snaps = history([at(2029, 6, 8, 12), at(2029, 6, 8, 12, 0, 1), at(2029, 6, 15, 12)])
    out = run(snaps, within=Duration(days=7))
    assert ids(kept(out)) == ["s002", "s001"]


def test_keep_within_full_duration():
    newest = at(2029, 6, 15, 12)
    cutoff = at(2027, 1, 8, 9)  # 2y5m7d3h before the newest
    snaps = history([cutoff - timedelta(seconds=1), cutoff, cutoff + timedelta(seconds=1), newest])
    out = run(snaps, within=Duration.parse("2y5m7d3h"))
    assert ids(kept(out)) == ["s003", "s002"]


def test_future_snapshots_do_not_move_the_window_and_are_kept():
    snaps = history([at(2029, 1, 1), at(2029, 12, 20), at(2031, 5, 5)])  # the last is in the future
    out = run(snaps, within=Duration(days=30))
    assert ids(kept(out)) == ["s002", "s001"]


def test_keep_within_daily_keeps_one_per_day_inside_the_window():
    snaps = history([at(2029, 6, d, h) for d in (1, 10, 11, 12) for h in (8, 20)])
    out = run(snaps, within_daily=Duration(days=3))
    assert ids(kept(out)) == ["s007", "s005", "s003"]
    assert reasons(out)["s007"] == ("daily within 3d",)


# -- tags --------------------------------------------------------------------------------

def test_keep_tag_needs_every_tag_of_one_list_and_lists_are_ored():
    snaps = history([at(2029, 1, d) for d in range(1, 6)],
                    {0: ["a"], 1: ["a", "b"], 2: ["b"], 3: [], 4: ["c"]})
    out = run(snaps, tags=[("a", "b"), ("c",)])
    assert ids(kept(out)) == ["s004", "s001"]
    assert reasons(out)["s001"] == ("has tags a,b",)


def test_keep_tag_empty_matches_untagged_snapshots_only():
    snaps = history([at(2029, 1, d) for d in range(1, 4)], {0: ["x"], 2: ["y"]})
    assert ids(kept(run(snaps, tags=[("",)]))) == ["s001"]


# -- combinations, zones, edge cases ----------------------------------------------------------

def test_rules_are_ored_and_every_matching_reason_is_listed():
    days = [at(2028, 1, 1, 12) + timedelta(days=i) for i in range(730)]  # to Sunday 2029-12-30
    out = run(history(days), now=at(2030, 1, 2), daily=7, weekly=5, monthly=12, yearly=75)
    keep = kept(out)
    newest = keep[0]
    assert newest.reasons == ("daily snapshot", "weekly snapshot", "monthly snapshot",
                              "yearly snapshot")
    dailies = [d for d in keep if "daily snapshot" in d.reasons]
    weeklies = [d for d in keep if "weekly snapshot" in d.reasons]
    monthlies = [d for d in keep if "monthly snapshot" in d.reasons]
    yearlies = [d for d in keep if "yearly snapshot" in d.reasons
                or "oldest yearly snapshot" in d.reasons]
    assert (len(dailies), len(weeklies), len(monthlies)) == (7, 5, 12)
    assert len(yearlies) == 3  # 2029, 2028, and the oldest snapshot (counts left)
    assert all(d.time.weekday() == 6 for d in weeklies[1:])  # earlier weeks: their Sunday
    assert all((d.time + timedelta(days=1)).day == 1 for d in monthlies[1:])  # month ends
    only_dailies_weeklies = {d.id for d in dailies} | {d.id for d in weeklies}
    assert len(only_dailies_weeklies) == 7 + 4  # the newest daily is also a weekly
    assert forgotten(out) and not set(ids(kept(out))) & set(ids(forgotten(out)))


def test_buckets_follow_the_given_zone():
    east = timezone(timedelta(hours=3))
    snaps = history([at(2029, 3, 1, 20), at(2029, 3, 1, 22)])  # 23:00 and 01:00 (next day) at +3
    assert ids(kept(run(snaps, daily=2, tz=UTC))) == ["s001", "s000"]  # oldest bonus
    assert ids(kept(run(snaps, daily=1, tz=UTC))) == ["s001"]
    assert ids(kept(run(snaps, daily=1, tz=east))) == ["s001"]
    assert len(kept(run(snaps, daily=2, tz=east))) == 2
    assert reasons(run(snaps, daily=2, tz=east))["s000"] == ("daily snapshot",)


def test_empty_policy_keeps_everything():
    out = run(SUNDAYS)
    assert len(kept(out)) == 12 and out[0].reasons == ("policy is empty",)


def test_accepts_ns_and_schema_times_and_counts_are_validated():
    t = SchemaTime.from_datetime(at(2029, 1, 1))
    out = apply_policy([("a", t, ()), ("b", t.ns + 1000, ["x"])], Policy(last=1), now=clock())
    assert ids(kept(out)) == ["b"]
    with pytest.raises(UsageError):
        Policy(daily=-2)
    assert str(Policy(daily=7, last=UNLIMITED, within=Duration(days=2))) == \
        "keep all latest, 7 daily snapshots and all snapshots within 2d of the newest"
