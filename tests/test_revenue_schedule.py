"""The ratable rule (meter.money.revenue.schedule), worked by hand.

Days in the reporting zone, months rounded half to even, the last month taking the remainder, and what is earned
through any instant.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meter.billing.keys import charge_cycle
from meter.exceptions import InvalidInput
from meter.money.revenue.days import midnight
from meter.money.revenue.schedule import MonthShare, earned_by_days, earned_through, monthly

D = Decimal


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def amounts(shares: list[MonthShare]) -> list[tuple[str, Decimal]]:
    return [(f"{s.month:%Y-%m}", s.amount) for s in shares]


def test_an_annual_fee_is_earned_by_day_and_its_months_sum_exactly() -> None:
    """1200.00 for 2026 (365 days).

    A 31-day month 1200 x 31/365 = 101.9178 -> 101.92, February (28) 92.0548 -> 92.05, a 30-day month 98.6301 -> 98.63.
    Eleven months make 6 x 101.92 + 4 x 98.63 + 92.05 = 1098.09, so December takes 1200.00 - 1098.09 = 101.91 (its own
    share would have rounded to 101.92).
    """
    shares = monthly(D("1200.00"), utc(2026, 1, 1), utc(2027, 1, 1), "UTC", "USD")
    assert amounts(shares) == [
        ("2026-01", D("101.92")),
        ("2026-02", D("92.05")),
        ("2026-03", D("101.92")),
        ("2026-04", D("98.63")),
        ("2026-05", D("101.92")),
        ("2026-06", D("98.63")),
        ("2026-07", D("101.92")),
        ("2026-08", D("101.92")),
        ("2026-09", D("98.63")),
        ("2026-10", D("101.92")),
        ("2026-11", D("98.63")),
        ("2026-12", D("101.91")),
    ]
    assert sum(s.amount for s in shares) == D("1200.00")
    assert [s.days for s in shares][:2] == [31, 28]


def test_what_is_earned_through_an_instant() -> None:
    """Through 16 January: 15 of January's 31 days of its 101.92, 49.3161 -> 49.32; on 1 February: January whole."""
    shares = monthly(D("1200.00"), utc(2026, 1, 1), utc(2027, 1, 1), "UTC", "USD")
    assert earned_through(shares, utc(2025, 12, 31), "UTC", "USD") == D(0)
    assert earned_through(shares, utc(2026, 1, 16), "UTC", "USD") == D("49.32")
    assert earned_through(shares, utc(2026, 2, 1), "UTC", "USD") == D("101.92")
    # 14 of February's 28 days of its 92.05: 46.025, a tie, to the even 46.02.
    assert earned_through(shares, utc(2026, 2, 15), "UTC", "USD") == D("101.92") + D("46.02")
    assert earned_through(shares, utc(2027, 1, 1), "UTC", "USD") == D("1200.00")


def test_days_are_local_days_and_a_daylight_saving_day_counts_one() -> None:
    """31.00 for 15 October to 15 November 2026 in New York: 17.00 and 14.00.

    17 days of October, 14 of November (1 November, when the clock goes back, has 25 hours and still counts one day).
    By the hour it would not be whole.
    """
    start = datetime(2026, 10, 15, 4, tzinfo=UTC)  # midnight EDT
    end = datetime(2026, 11, 15, 5, tzinfo=UTC)  # midnight EST
    shares = monthly(D("31.00"), start, end, "America/New_York", "USD")
    assert amounts(shares) == [("2026-10", D("17.00")), ("2026-11", D("14.00"))]
    assert [s.end for s in shares] == [datetime(2026, 11, 1, 4, tzinfo=UTC), end]


def test_a_day_covered_in_part_counts_its_share() -> None:
    """3.00 from noon on 31 January to 2 February (UTC): half a day in January, a whole one in February: 1.00, 2.00."""
    shares = monthly(D("3.00"), utc(2026, 1, 31, 12), utc(2026, 2, 2), "UTC", "USD")
    assert amounts(shares) == [("2026-01", D("1.00")), ("2026-02", D("2.00"))]
    assert [s.days for s in shares] == [Fraction(1, 2), 1]


def test_a_tie_rounds_to_even_and_the_last_month_takes_the_rest() -> None:
    """0.05 over 16 April to 16 May: 15 days each; April's 0.025 rounds to 0.02 (even), May takes 0.03."""
    shares = monthly(D("0.05"), utc(2026, 4, 16), utc(2026, 5, 16), "UTC", "USD")
    assert amounts(shares) == [("2026-04", D("0.02")), ("2026-05", D("0.03"))]


def test_the_currencys_minor_unit() -> None:
    """1000 JPY (no minor unit) over January and February 2026 (59 days): 1000 x 31/59 = 525.42 -> 525, then 475."""
    shares = monthly(D("1000"), utc(2026, 1, 1), utc(2026, 3, 1), "UTC", "JPY")
    assert amounts(shares) == [("2026-01", D("525")), ("2026-02", D("475"))]


def test_a_period_that_does_not_end_after_it_starts_is_refused() -> None:
    with pytest.raises(InvalidInput, match="must end after it starts"):
        monthly(D("1.00"), utc(2026, 1, 2), utc(2026, 1, 2), "UTC", "USD")


ZONES = ["UTC", "America/New_York", "Europe/Paris", "Asia/Kolkata", "Australia/Lord_Howe", "America/Santiago"]


@given(
    cents=st.integers(-(10**9), 10**9),
    start=st.datetimes(datetime(2025, 1, 1), datetime(2027, 1, 1), timezones=st.just(UTC)),
    length=st.timedeltas(timedelta(minutes=1), timedelta(days=800)),
    zone=st.sampled_from(ZONES),
    probe=st.floats(0, 1),
)
def test_months_sum_to_the_amount_and_what_is_earned_never_goes_back(
    cents: int, start: datetime, length: timedelta, zone: str, probe: float
) -> None:
    amount = D(cents).scaleb(-2)
    end = start + length
    shares = monthly(amount, start, end, zone, "USD")
    assert sum(s.amount for s in shares) == amount
    assert [s.start for s in shares[1:]] == [s.end for s in shares[:-1]]
    assert shares[0].start == start and shares[-1].end == end
    exact = [Fraction(amount) * s.days / sum(x.days for x in shares) for s in shares]
    for share, ideal in zip(shares[:-1], exact, strict=False):
        assert abs(Fraction(share.amount) - ideal) <= Fraction(1, 200)  # half a cent, rounded once
    at = start + length * probe
    earned = earned_through(shares, at, zone, "USD")
    later = earned_through(shares, at + timedelta(hours=7), zone, "USD")
    assert (later - earned) * (1 if amount >= 0 else -1) >= 0
    assert earned_through(shares, end, zone, "USD") == amount


@given(
    zone=st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]),
    start=st.dates(date(2025, 1, 1), date(2027, 12, 31)),
    days=st.integers(1, 800),
    through=st.integers(-5, 900),
    minor=st.integers(-(10**9), 10**9),
)
def test_the_integer_path_earns_what_the_rule_earns(
    zone: str, start: date, days: int, through: int, minor: int
) -> None:
    """The close's integer path for whole local days gives the reference rule's figure, to the cent."""
    end, until = start + timedelta(days=days), start + timedelta(days=through)
    tz = ZoneInfo(zone)
    first, last, at = midnight(start, tz), midnight(end, tz), midnight(until, tz)
    amount = Decimal(minor).scaleb(-2)
    if last <= at:
        expected = amount
    elif first >= at:
        expected = Decimal(0)
    else:
        expected = earned_through(monthly(amount, first, last, zone, "USD"), at, zone, "USD")
    assert Decimal(earned_by_days(minor, start, end, until)).scaleb(-2) == expected


def test_a_charge_key_names_its_cycle() -> None:
    key = "sub-1|monthly-api|1|2026-04-10T00:00:00+00:00|2026-05-10T00:00:00+00:00"
    assert charge_cycle(key) == (utc(2026, 4, 10), utc(2026, 5, 10))
    assert charge_cycle(key + "|2") == (utc(2026, 4, 10), utc(2026, 5, 10))
    assert charge_cycle("sub-1|commit|c1") is None
    assert charge_cycle("sub-1|p|1|not a time|2026-05-10T00:00:00+00:00") is None
