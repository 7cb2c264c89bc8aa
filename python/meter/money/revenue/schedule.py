"""The ratable rule: an amount billed for a service period is earned evenly by day, in a reporting time zone.

ASC 606 / IFRS 15 straight-line recognition of a fee for a period of service (a subscription fee billed in advance):

- **Days.** The service period ``[start, end)`` is measured in calendar days of the reporting zone. Each local day
  counts as one, whatever its length (the day a clock moves for daylight saving time too); a day the period covers
  only in part counts the share of that day it covers.
- **Months.** A calendar month's share is ``amount × its days / all days``, rounded half to even to the currency's
  minor unit; the last month takes what the others leave, so a line's months add up to exactly its amount.
- **Within a month.** What is earned through an instant is the whole share of every month ended by then, plus the
  current month's share times the part of its days elapsed, rounded half to even. It never decreases as time passes
  and is exactly the month's share at the month's end, so a recognition run through any day and another through a
  later day post between them exactly the difference, and the months still add up.

Exact: days are fractions (``fractions.Fraction``), never floats, and amounts ``Decimal``; rounding happens once per
figure. This is the rule's reference, in plain Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

from meter.exceptions import InvalidInput
from meter.money.revenue.days import midnight
from meter.pricing.money import minor_units

__all__ = ["MonthShare", "earned_by_days", "earned_through", "monthly", "round_fraction"]

_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class MonthShare:
    """One calendar month's part of a service period: ``[start, end)`` in UTC, its days and its rounded amount."""

    #: The month, as its first day in the reporting zone.
    month: date
    start: datetime
    end: datetime
    days: Fraction
    amount: Decimal


def monthly(amount: Decimal, start: datetime, end: datetime, tz: str, currency: str) -> list[MonthShare]:
    """``amount`` spread over ``[start, end)`` by day in ``tz``, one share per calendar month (see the module)."""
    if not (start.tzinfo and end.tzinfo):
        raise InvalidInput("a service period's start and end need a UTC offset", code="invalid_period")
    if end <= start:
        raise InvalidInput(f"a service period must end after it starts; got [{start}, {end})", code="invalid_period")
    if not amount.is_finite():
        raise InvalidInput(f"an amount must be a finite decimal; got {amount}", code="invalid_amount")
    zone = ZoneInfo(tz)
    total = _position(end, zone) - _position(start, zone)
    digits = minor_units(currency)
    shares, left, at = [], amount, start
    while at < end:
        first = at.astimezone(zone).date().replace(day=1)
        until = min(end, midnight(_next_month(first), zone))
        days = _position(until, zone) - _position(at, zone)
        share = left if until == end else round_fraction(Fraction(amount) * days / total, digits)
        shares.append(MonthShare(first, at, until, days, share))
        left -= share
        at = until
    return shares


def earned_through(shares: Sequence[MonthShare], at: datetime, tz: str, currency: str) -> Decimal:
    """What :func:`monthly`'s ``shares`` have earned before ``at``: ended months whole, the current one by its days."""
    zone = ZoneInfo(tz)
    earned = Decimal(0)
    for share in shares:
        if share.end <= at:
            earned += share.amount
        elif share.start < at:
            elapsed = _position(at, zone) - _position(share.start, zone)
            earned += round_fraction(Fraction(share.amount) * elapsed / share.days, minor_units(currency))
    return earned


def _position(t: datetime, zone: ZoneInfo) -> Fraction:
    """Days from 1970-01-01 to ``t`` in ``zone``: whole local days, plus the share of ``t``'s own local day elapsed."""
    day = t.astimezone(zone).date()
    begins, ends = midnight(day, zone), midnight(day + timedelta(days=1), zone)
    elapsed = Fraction(_microseconds(t - begins), _microseconds(ends - begins))
    return (day - _EPOCH).days + elapsed


def _next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _microseconds(d: timedelta) -> int:
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def round_fraction(value: Fraction, digits: int) -> Decimal:
    """``value`` rounded half to even to ``digits`` decimals, never ``-0.00``.

    ``round`` of a Fraction rounds ties to even.
    """
    return Decimal(round(value * 10**digits)).scaleb(-digits) + 0


def earned_by_days(amount: int, start: date, end: date, through: date) -> int:
    """:func:`earned_through` in integers, for a period of whole days: ``[start, end)`` and ``through`` local midnights.

    ``amount`` in minor units. The same figure as ``earned_through(monthly(...))`` (the same shares, rounded the
    same way), without fractions or time zones: what a close computes for every fee that is earning.
    """
    total = (end - start).days
    earned, left, at = 0, amount, start
    while at < end and at < through:
        until = min(end, _next_month(at.replace(day=1)))
        days = (until - at).days
        share = left if until == end else _half_even(amount * days, total)
        earned += share if until <= through else _half_even(share * (through - at).days, days)
        left -= share
        at = until
    return earned


def _half_even(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` (``denominator`` > 0) rounded half to even."""
    quotient, remainder = divmod(numerator, denominator)
    if 2 * remainder > denominator or (2 * remainder == denominator and quotient % 2):
        quotient += 1
    return quotient
