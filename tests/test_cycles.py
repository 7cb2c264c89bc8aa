"""Billing cycles and proration (meter.billing.cycles): worked examples computed by hand, and properties.

Examples: calendar and anniversary cycles in UTC, Paris and New York (cycles that span a DST change still start at
local midnight), short months, leap years, local midnights that do not exist; proration and segments for starts, ends
and plan changes. Properties: cycles tile time, each starts where its rule says; proration equals a day-by-day
reference; segments tile what the subscription covered and their prorations add up exactly.
"""

from __future__ import annotations

from calendar import monthrange
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meter.billing.cycles import (
    Period,
    Segment,
    cycle_containing,
    cycles_between,
    next_cycle,
    previous_cycle,
    proration,
    segments,
    subscription_cycles,
)
from meter.catalog.billing import Migration, Subscription
from meter.catalog.types import trusted
from meter.exceptions import InvalidInput

D = Decimal
US = timedelta(microseconds=1)
#: Zones with DST both ways, none, half-hour offsets, and local midnights that do not exist (Santiago, Sao Paulo
#: until 2019, Cairo, Beirut, Havana).
ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
    "America/Sao_Paulo",
    "Africa/Cairo",
    "Asia/Beirut",
    "America/Havana",
    "Pacific/Chatham",
]


def z(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


def local(tz: str, y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """A local wall-clock time (one that exists and happens once) as a UTC instant."""
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def sub(
    start: datetime,
    *,
    cycle: str = "monthly",
    anchor: str = "calendar",
    end: datetime | None = None,
    migrations: list[tuple[int, datetime]] | None = None,
) -> Subscription:
    """A subscription on version 1 of a plan, migrated to ``(version, at)`` in turn."""
    moves, version = [], 1
    for to, at in migrations or []:
        moves.append(Migration(from_version=version, to_version=to, at=at))
        version = to
    fields: dict[str, Any] = {"cycle": cycle, "anchor": anchor}
    return Subscription(
        id="s1", customer="c1", plan="p1", version=version, start=start, end=end, migrations=moves, **fields
    )


def wall(t: datetime, tz: str) -> datetime:
    return t.astimezone(ZoneInfo(tz)).replace(tzinfo=None)


def starts(periods: list[Period], tz: str) -> list[datetime]:
    return [wall(p.start, tz) for p in periods]


# Calendar cycles


def test_calendar_monthly_utc() -> None:
    s = sub(z(2026, 11, 10))
    p = cycle_containing(s, "UTC", z(2026, 11, 23, 10))
    assert p == Period(z(2026, 11, 1), z(2026, 12, 1))
    assert p.start.tzinfo is UTC and p.end.tzinfo is UTC
    assert cycle_containing(s, "UTC", z(2026, 11, 1)) == p  # the start belongs to the cycle, the end does not
    assert cycle_containing(s, "UTC", z(2026, 12, 1)) == Period(z(2026, 12, 1), z(2027, 1, 1))
    assert cycle_containing(s, "UTC", z(2026, 12, 1) - US) == p


def test_calendar_quarterly_and_annual_utc() -> None:
    q = sub(z(2026, 2, 10), cycle="quarterly")
    assert cycle_containing(q, "UTC", z(2026, 2, 10)) == Period(z(2026, 1, 1), z(2026, 4, 1))
    assert cycle_containing(q, "UTC", z(2026, 12, 31, 23, 59)) == Period(z(2026, 10, 1), z(2027, 1, 1))
    assert [p.start for p in cycles_between(q, "UTC", z(2026, 1, 1), z(2027, 1, 1))] == [
        z(2026, 1, 1),
        z(2026, 4, 1),
        z(2026, 7, 1),
        z(2026, 10, 1),
    ]
    a = sub(z(2026, 2, 10), cycle="annual")
    assert cycle_containing(a, "UTC", z(2026, 7, 4)) == Period(z(2026, 1, 1), z(2027, 1, 1))


def test_calendar_cycles_start_at_local_midnight_across_dst() -> None:
    # Paris: summer time ends on 2026-10-25; October starts at 00:00 CEST (UTC+2), November at 00:00 CET (UTC+1).
    paris = sub(z(2026, 1, 1))
    october = Period(z(2026, 9, 30, 22), z(2026, 10, 31, 23))
    assert cycle_containing(paris, "Europe/Paris", z(2026, 10, 25, 12)) == october
    # New York: DST starts on 2026-03-08; March starts at 00:00 EST (UTC-5), April at 00:00 EDT (UTC-4).
    ny = sub(z(2026, 1, 1))
    assert cycle_containing(ny, "America/New_York", z(2026, 3, 8, 12)) == Period(z(2026, 3, 1, 5), z(2026, 4, 1, 4))
    # Quarterly in Paris: Q4 starts in summer time and ends in winter time.
    q = sub(z(2026, 1, 1), cycle="quarterly")
    assert cycle_containing(q, "Europe/Paris", z(2026, 11, 23)) == Period(z(2026, 9, 30, 22), z(2026, 12, 31, 23))
    # Annual in New York, and an instant that is already 2027 in UTC but still 2026 in New York.
    a = sub(z(2026, 1, 1), cycle="annual")
    assert cycle_containing(a, "America/New_York", z(2027, 1, 1, 3)) == Period(z(2026, 1, 1, 5), z(2027, 1, 1, 5))
    assert cycle_containing(a, "America/New_York", z(2027, 1, 1, 5)).start == z(2027, 1, 1, 5)
    for tz in ("Europe/Paris", "America/New_York"):
        for p in cycles_between(ny, tz, z(2026, 1, 1), z(2028, 1, 1)):
            assert wall(p.start, tz).time() == time(0) and wall(p.start, tz).day == 1


@pytest.mark.parametrize(
    ("tz", "day", "expected", "cycles"),
    [
        # Tripoli, 1982-04-01: clocks jumped from 00:00 (UTC+1) to 01:00 (UTC+2); the month and quarter start at the
        # jump.
        ("Africa/Tripoli", date(1982, 4, 1), z(1982, 3, 31, 23), ["monthly", "quarterly"]),
        # Buenos Aires, 1988-12-01: clocks jumped from 00:00 (UTC-3) to 01:00 (UTC-2).
        ("America/Argentina/Buenos_Aires", date(1988, 12, 1), z(1988, 12, 1, 3), ["monthly"]),
    ],
)
def test_local_midnight_that_does_not_exist_is_the_first_instant_that_does(
    tz: str, day: date, expected: datetime, cycles: list[str]
) -> None:
    midnight = datetime.combine(day, time(0))
    assert wall(expected, tz) > midnight > wall(expected - US, tz)  # it is a gap, and ``expected`` ends it
    for cycle in cycles:
        p = cycle_containing(sub(z(1980, 1, 1), cycle=cycle), tz, expected)
        assert p.start == expected
        assert previous_cycle(sub(z(1980, 1, 1), cycle=cycle), tz, p).end == expected


def test_first_cycle_contains_the_start() -> None:
    s = sub(local("Europe/Paris", 2026, 11, 10, 15), end=local("Europe/Paris", 2027, 2, 3))
    assert subscription_cycles(s, "Europe/Paris") == [
        Period(z(2026, 10, 31, 23), z(2026, 11, 30, 23)),
        Period(z(2026, 11, 30, 23), z(2026, 12, 31, 23)),
        Period(z(2026, 12, 31, 23), z(2027, 1, 31, 23)),
        Period(z(2027, 1, 31, 23), z(2027, 2, 28, 23)),
    ]
    assert subscription_cycles(s, "Europe/Paris", until=local("Europe/Paris", 2026, 12, 1)) == [
        Period(z(2026, 10, 31, 23), z(2026, 11, 30, 23))
    ]
    assert subscription_cycles(s, "Europe/Paris", until=s.start) == []


def test_next_and_previous_cycle() -> None:
    s = sub(z(2026, 1, 15), cycle="quarterly")
    p = cycle_containing(s, "UTC", z(2026, 5, 5))
    assert next_cycle(s, "UTC", p) == Period(z(2026, 7, 1), z(2026, 10, 1))
    assert previous_cycle(s, "UTC", p) == Period(z(2026, 1, 1), z(2026, 4, 1))
    assert previous_cycle(s, "UTC", next_cycle(s, "UTC", p)) == p


def test_cycles_between_is_half_open() -> None:
    s = sub(z(2026, 1, 1))
    assert [p.start for p in cycles_between(s, "UTC", z(2026, 3, 1), z(2026, 5, 1))] == [z(2026, 3, 1), z(2026, 4, 1)]
    assert [p.start for p in cycles_between(s, "UTC", z(2026, 3, 1, 0, 1), z(2026, 5, 1, 0, 1))] == [
        z(2026, 4, 1),
        z(2026, 5, 1),
    ]
    assert cycles_between(s, "UTC", z(2026, 3, 2), z(2026, 3, 30)) == []


# Anniversary cycles


def test_anniversary_end_of_month_keeps_its_day() -> None:
    s = sub(z(2026, 1, 31, 9, 30), anchor="anniversary")
    got = [p.start for p in cycles_between(s, "UTC", s.start, z(2026, 7, 1))]
    assert got == [
        z(2026, 1, 31, 9, 30),
        z(2026, 2, 28, 9, 30),
        z(2026, 3, 31, 9, 30),
        z(2026, 4, 30, 9, 30),
        z(2026, 5, 31, 9, 30),
        z(2026, 6, 30, 9, 30),
    ]
    leap = sub(z(2024, 1, 31), anchor="anniversary")
    assert cycle_containing(leap, "UTC", z(2024, 3, 1)) == Period(z(2024, 2, 29), z(2024, 3, 31))
    assert cycle_containing(leap, "UTC", z(2024, 2, 29) - US) == Period(z(2024, 1, 31), z(2024, 2, 29))


def test_anniversary_quarterly_and_annual() -> None:
    q = sub(z(2025, 11, 30), cycle="quarterly", anchor="anniversary")
    assert [p.start for p in cycles_between(q, "UTC", q.start, z(2027, 1, 1))] == [
        z(2025, 11, 30),
        z(2026, 2, 28),
        z(2026, 5, 30),
        z(2026, 8, 30),
        z(2026, 11, 30),
    ]
    a = sub(z(2024, 2, 29, 12), cycle="annual", anchor="anniversary")
    assert [p.start for p in cycles_between(a, "UTC", a.start, z(2029, 1, 1))] == [
        z(2024, 2, 29, 12),
        z(2025, 2, 28, 12),
        z(2026, 2, 28, 12),
        z(2027, 2, 28, 12),
        z(2028, 2, 29, 12),
    ]


def test_anniversary_keeps_local_time_across_dst() -> None:
    tz = "Europe/Paris"
    s = sub(local(tz, 2026, 1, 31, 10), anchor="anniversary")
    got = cycles_between(s, tz, s.start, local(tz, 2026, 12, 1))
    assert [w.date() for w in starts(got, tz)] == [date(2026, m, monthrange(2026, m)[1]) for m in range(1, 12)]
    assert all(w.time() == time(10) for w in starts(got, tz))
    assert got[1].end - got[1].start == timedelta(days=31, hours=-1)  # Feb 28 -> Mar 31 loses the hour of Mar 29


def test_anniversary_time_that_does_not_exist_that_month() -> None:
    # 02:30 on the 8th exists in February 2026 in New York, but not on March 8 (clocks jump from 02:00 to 03:00).
    tz = "America/New_York"
    s = sub(local(tz, 2026, 2, 8, 2, 30), anchor="anniversary")
    march, april = cycles_between(s, tz, local(tz, 2026, 3, 1), local(tz, 2026, 5, 1))
    assert march.start == z(2026, 3, 8, 7)  # 03:00 EDT, the end of the jump
    assert wall(march.start, tz) == datetime(2026, 3, 8, 3)
    assert wall(april.start, tz) == datetime(2026, 4, 8, 2, 30)  # and the anchor time comes back


def test_anniversary_instant_before_the_renewal_in_its_month() -> None:
    s = sub(z(2026, 1, 20, 12), anchor="anniversary")
    assert cycle_containing(s, "UTC", z(2026, 3, 20, 11, 59)) == Period(z(2026, 2, 20, 12), z(2026, 3, 20, 12))
    assert cycle_containing(s, "UTC", z(2026, 3, 20, 12)) == Period(z(2026, 3, 20, 12), z(2026, 4, 20, 12))
    # Before the start, cycles extend backwards on the same grid.
    assert cycle_containing(s, "UTC", z(2025, 12, 31)) == Period(z(2025, 12, 20, 12), z(2026, 1, 20, 12))


# Proration


def nov(d: int, h: int = 0) -> datetime:
    return z(2026, 11, d, h)


NOVEMBER = Period(nov(1), z(2026, 12, 1))


def test_proration_worked_examples() -> None:
    assert proration(NOVEMBER, nov(10), z(2026, 12, 1), "UTC") == D("0.7")  # Nov 10..30: 21 of 30 days
    assert proration(NOVEMBER, nov(10, 15), z(2027, 3, 1), "UTC") == D("0.7")  # the start day counts whenever it starts
    assert proration(NOVEMBER, nov(1), nov(15), "UTC") == D("0.466666667")  # 14/30, half-even at 9 decimals
    assert proration(NOVEMBER, nov(15), z(2026, 12, 1), "UTC") == D("0.533333333")  # 16/30
    assert proration(NOVEMBER, nov(1), nov(15, 23), "UTC") == D("0.466666667")  # the end day does not count
    assert proration(NOVEMBER, nov(1), nov(11), "UTC") == D("0.333333333")
    assert proration(NOVEMBER, nov(1), nov(21), "UTC") == D("0.666666667")
    assert proration(NOVEMBER, z(2026, 1, 1), z(2027, 1, 1), "UTC") == 1
    assert proration(NOVEMBER, nov(10, 8), nov(10, 20), "UTC") == 0  # no day's end inside
    assert proration(NOVEMBER, z(2026, 12, 1), z(2026, 12, 20), "UTC") == 0  # outside the period
    assert proration(NOVEMBER, nov(3), nov(3), "UTC") == 0
    for share in (proration(NOVEMBER, nov(10), z(2026, 12, 1), "UTC"), proration(NOVEMBER, nov(3), nov(3), "UTC")):
        assert share.as_tuple().exponent == -9


def test_proration_counts_local_days() -> None:
    tz = "Europe/Paris"
    october = cycle_containing(sub(z(2026, 1, 1)), tz, local(tz, 2026, 10, 15))
    # Oct 25 has 25 hours; it is still one of 31 days.
    assert proration(october, local(tz, 2026, 10, 25), october.end, tz) == D("0.225806452")  # 7/31
    # 23:30 UTC on Oct 9 is already Oct 10 in Paris.
    assert proration(october, z(2026, 10, 9, 23, 30), october.end, tz) == D("0.709677419")  # Oct 10..31: 22/31
    assert proration(october, z(2026, 10, 9, 21, 30), october.end, tz) == D("0.741935484")  # Oct 9..31: 23/31


def test_proration_rounds_half_to_even() -> None:
    # 1/1024 = 0.0009765625 is a tie at the 10th decimal: half-even keeps 0.000976562 (half-up would give ...563).
    long = Period(z(2026, 1, 1), z(2026, 1, 1) + timedelta(days=1024))
    assert proration(long, long.start, long.start + timedelta(days=1), "UTC") == D("0.000976562")
    assert proration(long, long.start, long.start + timedelta(days=3), "UTC") == D("0.002929688")  # ...6875


def test_skipped_date_counts_with_the_day_before() -> None:
    # Samoa skipped 2011-12-30 (from Dec 29 24:00 at UTC-10 to Dec 31 00:00 at UTC+14): December still has 31
    # local dates, and the span over the jump covers two of them.
    tz = "Pacific/Apia"
    december = cycle_containing(sub(z(2011, 1, 1)), tz, z(2011, 12, 15))
    assert proration(december, local(tz, 2011, 12, 29), local(tz, 2011, 12, 31), tz) == D("0.064516129")  # 2/31


# Segments


def test_segments_whole_period() -> None:
    s = sub(z(2026, 1, 1))
    assert segments(s, "UTC", NOVEMBER) == [Segment(1, nov(1), z(2026, 12, 1), D(1), "")]
    # A calendar subscription that started on the first day of the period, after midnight, pays the whole period.
    assert segments(sub(nov(1, 9)), "UTC", NOVEMBER) == [Segment(1, nov(1, 9), z(2026, 12, 1), D(1), "")]


def test_segments_start_mid_period() -> None:
    assert segments(sub(nov(10)), "UTC", NOVEMBER) == [
        Segment(1, nov(10), z(2026, 12, 1), D("0.7"), "prorated: started 2026-11-10")
    ]


def test_segments_plan_change() -> None:
    s = sub(z(2026, 1, 1), migrations=[(2, nov(15, 9))])
    assert segments(s, "UTC", NOVEMBER) == [
        Segment(1, nov(1), nov(15, 9), D("0.466666667"), "prorated: until the change to version 2 on 2026-11-15"),
        Segment(2, nov(15, 9), z(2026, 12, 1), D("0.533333333"), "prorated: plan changed to version 2 on 2026-11-15"),
    ]
    assert sum(x.proration for x in segments(s, "UTC", NOVEMBER)) == 1
    # Outside the period of the change, one whole segment on the version in force.
    assert segments(s, "UTC", Period(z(2026, 12, 1), z(2027, 1, 1))) == [
        Segment(2, z(2026, 12, 1), z(2027, 1, 1), D(1), "")
    ]


def test_segments_start_change_and_end_in_one_period() -> None:
    s = sub(nov(10), end=nov(25, 12), migrations=[(2, nov(15)), (3, nov(20))])
    assert segments(s, "UTC", NOVEMBER) == [
        Segment(
            1,
            nov(10),
            nov(15),
            D("0.166666667"),
            "prorated: started 2026-11-10, until the change to version 2 on 2026-11-15",
        ),
        Segment(
            2,
            nov(15),
            nov(20),
            D("0.166666666"),  # 0.333333333 - 0.166666667: the running total stays exact
            "prorated: plan changed to version 2 on 2026-11-15, until the change to version 3 on 2026-11-20",
        ),
        Segment(
            3,
            nov(20),
            nov(25, 12),
            D("0.166666667"),
            "prorated: plan changed to version 3 on 2026-11-20, ended 2026-11-25",
        ),
    ]
    assert sum(x.proration for x in segments(s, "UTC", NOVEMBER)) == proration(NOVEMBER, nov(10), nov(25, 12), "UTC")


def test_segments_of_a_period_not_covered() -> None:
    s = sub(nov(10), end=z(2027, 1, 1))
    assert segments(s, "UTC", Period(z(2026, 10, 1), nov(1))) == []
    assert segments(s, "UTC", Period(z(2027, 1, 1), z(2027, 2, 1))) == []


def test_segments_are_in_utc_and_keep_days_local() -> None:
    tz = "America/New_York"
    s = sub(datetime(2026, 11, 10, 22, tzinfo=ZoneInfo(tz)))  # Nov 11 03:00 UTC, still Nov 10 in New York
    period = cycle_containing(s, tz, s.start)
    [seg] = segments(s, tz, period)
    assert seg.start == z(2026, 11, 11, 3) and seg.start.tzinfo is UTC and seg.end == z(2026, 12, 1, 5)
    assert seg.proration == D("0.7") and seg.reason == "prorated: started 2026-11-10"


# Errors


def test_errors_say_what_to_fix() -> None:
    s = sub(z(2026, 1, 1))
    with pytest.raises(InvalidInput, match="must carry a time zone"):
        cycle_containing(s, "UTC", datetime(2026, 11, 1))
    with pytest.raises(InvalidInput, match="is not an IANA name"):
        cycle_containing(s, "Mars/Olympus_Mons", z(2026, 11, 1))
    with pytest.raises(InvalidInput, match="IANA"):
        proration(NOVEMBER, nov(1), nov(2), "")
    with trusted(), pytest.raises(InvalidInput, match="start must carry a time zone"):  # the catalog refuses it first
        cycle_containing(sub(datetime(2026, 1, 1), anchor="anniversary"), "UTC", z(2026, 11, 1))
    with pytest.raises(InvalidInput, match="covered_from must carry a time zone"):
        proration(NOVEMBER, datetime(2026, 11, 1), nov(2), "UTC")
    with pytest.raises(InvalidInput, match="must not be after covered_to"):
        proration(NOVEMBER, nov(2), nov(1), "UTC")
    with pytest.raises(InvalidInput, match="period start must carry a time zone"):
        proration(Period(datetime(2026, 11, 1), z(2026, 12, 1)), nov(1), nov(2), "UTC")
    with pytest.raises(InvalidInput, match="at least one local day"):
        proration(Period(nov(1), nov(1, 12)), nov(1), nov(2), "UTC")
    with trusted(), pytest.raises(InvalidInput, match="end must carry a time zone"):
        segments(sub(z(2026, 1, 1), end=datetime(2027, 1, 1)), "UTC", NOVEMBER)
    with pytest.raises(InvalidInput, match="pass until="):
        subscription_cycles(s, "UTC")
    with pytest.raises(InvalidInput, match="cycle must be one of monthly, quarterly, annual; got 'weekly'"):
        cycle_containing(sub(z(2026, 1, 1), cycle="weekly"), "UTC", z(2026, 11, 1))
    with pytest.raises(InvalidInput, match="anchor must be calendar or anniversary"):
        cycle_containing(sub(z(2026, 1, 1), anchor="signup"), "UTC", z(2026, 11, 1))
    with pytest.raises(ValueError):  # InvalidInput is a ValueError, for callers that catch those
        cycle_containing(s, "Nowhere", z(2026, 11, 1))


# Properties, against references written differently from the implementation


def first_instant_at_or_after(target: datetime, tz: str) -> datetime:
    """Reference: the first instant whose wall clock reads ``target`` (or, in a gap, the first after it).

    Found by trying both folds and otherwise walking minute by minute (tzdata transitions since 1970 fall on whole
    minutes).
    """
    zone = ZoneInfo(tz)
    exact = [c for c in (target.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1)) if wall(c, tz) == target]
    if exact:
        return min(exact)
    t = min(target.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1)).replace(second=0, microsecond=0)
    while wall(t, tz) < target:
        t += timedelta(minutes=1)
    return t


def reference_share(period: Period, lo: datetime, hi: datetime, tz: str) -> Fraction:
    """Reference day count: day d counts when the span contains its last instant (the next local midnight, excluded)."""
    day, last = wall(period.start, tz).date() - timedelta(days=1), wall(period.end, tz).date() + timedelta(days=1)
    days = total = 0
    while day <= last:
        end_of_day = first_instant_at_or_after(datetime.combine(day + timedelta(days=1), time(0)), tz)
        total += period.start < end_of_day <= period.end
        days += max(lo, period.start) < end_of_day <= min(hi, period.end)
        day += timedelta(days=1)
    return Fraction(days, total)


def half_even_9(x: Fraction) -> Decimal:
    q, r = divmod(x.numerator * 10**9, x.denominator)
    if 2 * r > x.denominator or (2 * r == x.denominator and q % 2):
        q += 1
    return Decimal(q).scaleb(-9)


instants = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2045, 12, 31)).map(
    lambda t: t.replace(tzinfo=UTC)
)
subscriptions = st.builds(
    lambda start, cycle, anchor: sub(start, cycle=cycle, anchor=anchor),
    instants,
    st.sampled_from(["monthly", "quarterly", "annual"]),
    st.sampled_from(["calendar", "anniversary"]),
)
MONTHS = {"monthly": 1, "quarterly": 3, "annual": 12}


@settings(deadline=None, max_examples=200)
@given(subscriptions, st.sampled_from(ZONES), instants, st.integers(1, 40))
def test_cycles_tile_time_and_start_where_the_rule_says(s: Subscription, tz: str, t: datetime, n: int) -> None:
    months = MONTHS[s.cycle]
    here = cycle_containing(s, tz, t)
    assert here.start <= t < here.end
    cycles = cycles_between(s, tz, here.start, here.start + timedelta(days=31 * months * n))
    assert cycles[0] == here and len(cycles) >= n
    anchor = wall(s.start, tz)
    for p, following in pairwise(cycles):
        assert p.end == following.start  # no gap, no overlap
        assert next_cycle(s, tz, p) == following and previous_cycle(s, tz, following) == p
    for p in cycles:
        assert p.start < p.end and p.start.utcoffset() == timedelta(0)
        assert cycle_containing(s, tz, p.start) == p and cycle_containing(s, tz, p.end - US) == p
        # The first instant whose wall clock reaches the local start the rule gives, in the start's month or (when
        # a jump forward carried the start into the next month) the one before.
        w = wall(p.start, tz)
        expected = []
        for month in (w.year * 12 + w.month - 1, w.year * 12 + w.month - 2):
            year, month0 = divmod(month, 12)
            if s.anchor == "calendar" and month % months == 0:
                expected.append(first_instant_at_or_after(datetime(year, month0 + 1, 1), tz))
            elif s.anchor == "anniversary" and (month - (anchor.year * 12 + anchor.month - 1)) % months == 0:
                day = min(anchor.day, monthrange(year, month0 + 1)[1])
                target = datetime.combine(date(year, month0 + 1, day), anchor.time())
                expected.append(first_instant_at_or_after(target, tz))
        assert p.start in expected


@settings(deadline=None, max_examples=200)
@given(
    subscriptions,
    st.sampled_from(ZONES),
    instants,
    st.lists(st.integers(-40 * 1440, 400 * 1440), min_size=2, max_size=2),
)
def test_proration_matches_a_day_by_day_reference(s: Subscription, tz: str, t: datetime, minutes: list[int]) -> None:
    period = cycle_containing(s, tz, t)
    # Spans in the period, across its ends, and outside it.
    a, b = sorted(period.start + timedelta(minutes=m) for m in minutes)
    share = proration(period, a, b, tz)
    assert 0 <= share <= 1 and share.as_tuple().exponent == -9
    assert share == half_even_9(reference_share(period, a, b, tz))


@st.composite
def migrated(draw: st.DrawFn) -> tuple[Subscription, str, Period]:
    """A subscription with up to 4 plan changes and perhaps an end, and one of its cycles near those."""
    start = draw(instants)
    cycle, anchor = draw(st.sampled_from(["monthly", "quarterly"])), draw(st.sampled_from(["calendar", "anniversary"]))
    offsets = sorted(draw(st.sets(st.integers(1, 200 * 24 * 60), min_size=0, max_size=5)))
    has_end = draw(st.booleans()) and offsets
    times = [start + timedelta(minutes=m) for m in offsets]
    end = times.pop() if has_end else None
    s = sub(start, cycle=cycle, anchor=anchor, end=end, migrations=[(v, at) for v, at in enumerate(times, start=2)])
    tz = draw(st.sampled_from(ZONES))
    at = start + timedelta(minutes=draw(st.integers(-40 * 24 * 60, 240 * 24 * 60)))
    return s, tz, cycle_containing(s, tz, at)


@settings(deadline=None, max_examples=300)
@given(migrated())
def test_segments_tile_what_was_covered_and_add_up_exactly(case: tuple[Subscription, str, Period]) -> None:
    s, tz, period = case
    found = segments(s, tz, period)
    lo, hi = max(s.start, period.start), period.end if s.end is None else min(s.end, period.end)
    if lo >= hi:
        assert found == []
        return
    assert found[0].start == lo and found[-1].end == hi
    for x, following in pairwise(found):
        assert x.end == following.start and x.version + 1 == following.version
    in_period = [v for v, a, b in s.phases() if a < period.end and (b is None or b > period.start)]
    assert [x.version for x in found] == in_period
    total = sum((x.proration for x in found), Decimal(0))
    # Exactly what one span over the whole covered part gets; exactly 1 when the period is covered throughout.
    assert total == proration(period, lo, hi, tz)
    if lo == period.start and hi == period.end:
        assert total == 1
    for x in found:
        assert 0 <= x.proration <= 1 and x.start.utcoffset() == timedelta(0)
        assert abs(x.proration - half_even_9(reference_share(period, x.start, x.end, tz))) <= D("1e-9")
        assert (x.reason == "") == (x.proration == 1)
    if len(found) == 1:
        assert found[0].proration == proration(period, found[0].start, found[0].end, tz)
