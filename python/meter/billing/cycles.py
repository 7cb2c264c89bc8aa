"""Billing cycles and proration: which period an instant is billed in, and what share of it a subscription covered.

Everything here is exact and time-zone aware. Cycles follow the customer's local calendar (an invoice for
"November" in Paris starts at midnight in Paris, not in UTC), but every datetime returned is in UTC so that callers
compare and query usage without thinking about offsets. Shares of a period are ``Decimal``, computed from integer day
counts; floats never appear.

Cycles
    A subscription's cycles tile time: each cycle is ``[start, end)`` and its ``end`` is the next one's ``start``.
    ``calendar`` cycles begin at local midnight on the 1st of every month (monthly), of January, April, July and
    October (quarterly) or of January (annual). ``anniversary`` cycles begin at the local date and time of the
    subscription's start every 1, 3 or 12 months; the anchor day is remembered rather than drifting, so a subscription
    started on January 31 renews on February 28 (29 in leap years), then March 31, April 30, May 31...
    A local time that does not exist (clocks jump forward over it) maps to the first instant that exists after it,
    the end of the jump; a local time that happens twice (clocks go back) maps to its first occurrence (so an
    anniversary subscription started in the second occurrence of a repeated hour has a first cycle that starts up to
    an hour before it, and still contains it). The first cycle of a subscription is the one containing its start: a
    calendar subscription starting mid-month has a first cycle that begins before it, and :func:`segments` prorates it.

Proration by day
    A period's share is counted in whole local days: ``(local date of covered_to) - (local date of covered_from)``
    over ``(local date of period.end) - (local date of period.start)``, the span first clipped to the period. In
    words, a day counts when the covered span contains the day's last instant (the instant just before the next local
    midnight). Hence a start at 00:00 or at 15:00 on day d both count day d, and an end at 00:00 or at 15:00 on day
    e both exclude day e: a subscription pays for the day it starts, not for the day it ends, and across a plan change
    each day is billed once, under the version in force when the day ends. Spans that tile a period therefore have
    day counts that add up to the period's exactly. A span within one day covers no day's end and gets 0 (its usage
    is still billed); a day of 23 or 25 hours is one day; a date that a zone skipped entirely (Samoa, 2011-12-30)
    counts with the day before it, as date differences do.

    The share is divided in a 40-digit ``Decimal`` context and quantized to 9 decimals, half to even: the rating engine
    takes at most 9 decimals for a proration (``Decimal(38, 9)`` columns), and 40 digits leave the quotient of two
    day counts exact to far more places than the 9 kept, so the one rounding that matters is the quantization. Each
    invoice line's amount (fee × proration) is then rounded half to even to the currency's minor unit by
    :mod:`meter.pricing.money`. :func:`segments` distributes the quantization so that the shares of spans that tile
    a period add up exactly (see there).

Speed
    Cycle bounds are computed once per (time zone, cycle length, anchor day and time, first month) by a cached pure
    helper, so the million subscriptions of a tenant, which mostly share those, cost a cache look-up and a time-zone
    conversion each.
"""

from __future__ import annotations

from calendar import monthrange
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from functools import lru_cache
from typing import get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from meter.catalog.billing import Anchor, Cycle, Subscription
from meter.exceptions import InvalidInput
from meter.pricing.exact import DECIMAL_PLACES

__all__ = [
    "ANCHORS",
    "CYCLE_MONTHS",
    "PRORATION_CONTEXT",
    "PRORATION_DECIMALS",
    "Period",
    "Segment",
    "cycle_containing",
    "cycles_between",
    "next_cycle",
    "previous_cycle",
    "proration",
    "segments",
    "subscription_cycles",
]

#: Decimals kept in a proration: what the rating engine's ``Decimal(38, 9)`` columns take.
PRORATION_DECIMALS = DECIMAL_PLACES
#: Where a proration is divided; 40 digits keep a ratio of day counts exact well beyond the 9 decimals kept.
PRORATION_CONTEXT = Context(prec=40, rounding=ROUND_HALF_EVEN)
_QUANTUM = Decimal(1).scaleb(-PRORATION_DECIMALS)
_ONE = Decimal(1)
#: The months of each cycle length the catalog knows (keyed by every value of ``Cycle``, which a test could not miss:
#: building the dict below fails at import time if the two ever differ).
CYCLE_MONTHS: dict[str, int] = {"monthly": 1, "quarterly": 3, "annual": 12}
#: The anchors the catalog knows.
ANCHORS: tuple[str, ...] = get_args(Anchor)
if set(CYCLE_MONTHS) != set(get_args(Cycle)):
    raise AssertionError(f"CYCLE_MONTHS must cover the catalog's cycles {get_args(Cycle)}")
_MIDNIGHT = time(0)
_MICROSECOND = timedelta(microseconds=1)


class Period(msgspec.Struct, frozen=True):
    """A billing period ``[start, end)`` in UTC. Frozen, so the cached ones can be shared between callers."""

    start: datetime
    end: datetime


class Segment(msgspec.Struct, frozen=True):
    """The part ``[start, end)`` (UTC) of a billing period that a subscription spent on one plan version.

    Flat fees are billed in advance per segment (fee × ``proration``); usage is billed in arrears, its quantity measured
    over ``[start, end)``. ``reason`` is the invoice line's note: empty when the whole period is billed.
    """

    version: int
    start: datetime
    end: datetime
    proration: Decimal
    reason: str


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_period")


@lru_cache(maxsize=1024)
def _zone(tz: str) -> ZoneInfo:
    """The zone named ``tz``; cached because every call names one and looking it up validates the name again."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError, TypeError):
        raise _invalid(
            f'time zone {tz!r} is not an IANA name such as "Europe/Paris" or "UTC" (the customer\'s timezone)'
        ) from None


def _aware(t: datetime, what: str) -> None:
    if t.utcoffset() is None:  # naive, or a tzinfo that does not know its offset
        raise _invalid(
            f"{what} must carry a time zone (RFC 3339 with Z or an offset, or tzinfo=UTC); "
            f"got the naive {t.isoformat()}"
        )


def _months(sub: Subscription) -> int:
    try:
        return CYCLE_MONTHS[sub.cycle]
    except KeyError:
        raise _invalid(
            f"subscription {sub.id!r}: cycle must be one of {', '.join(CYCLE_MONTHS)}; got {sub.cycle!r}"
        ) from None


def _wall(t: datetime, zone: ZoneInfo) -> datetime:
    """The local wall-clock reading of ``t``, naive."""
    return t.astimezone(zone).replace(tzinfo=None)


def _localize(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall-clock time.

    Its first occurrence when clocks went back over it; when it does not exist (clocks jumped over it), the first
    instant after it, which is the end of the jump.
    """
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _wall(instant, zone) == wall:
        return instant  # fold=0 is the earlier of two occurrences
    # In a gap: the two folds map the wall time with the offsets before and after the jump, on either side of it.
    other = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    lo, hi = min(instant, other), max(instant, other)
    # The first instant whose wall time reaches ``wall``: the clock is monotone across a single jump forward.
    while hi - lo > _MICROSECOND:
        mid = lo + (hi - lo) // 2
        if _wall(mid, zone) >= wall:
            hi = mid
        else:
            lo = mid
    return hi


def _month_start(zone: ZoneInfo, month: int, day: int, at: time) -> datetime:
    """The UTC instant of ``at`` local time on ``day`` of month number ``month`` (``year * 12 + month - 1``).

    A short month uses its last day instead; the caller keeps the anchor day, so the next month goes back to it.
    """
    year, month0 = divmod(month, 12)
    if not 1 <= year <= 9999:
        raise _invalid("billing cycles are supported for years 1 to 9999; an instant is too close to either end")
    last = monthrange(year, month0 + 1)[1]
    try:
        return _localize(datetime.combine(date(year, month0 + 1, min(day, last)), at), zone)
    except OverflowError:
        raise _invalid(
            "billing cycles are supported for years 1 to 9999; an instant is too close to either end"
        ) from None


@lru_cache(maxsize=1 << 16)
def _bounds(tz: str, months: int, day: int, at: time, first_month: int) -> Period:
    """The cycle of ``months`` months that begins in month number ``first_month`` on ``day`` at ``at`` local time.

    Pure and cached: the key is all a cycle depends on, and subscriptions of one tenant mostly share it (calendar
    subscriptions of one zone and cycle length share it entirely), so a million look-ups compute few cycles.
    """
    zone = _zone(tz)
    return Period(_month_start(zone, first_month, day, at), _month_start(zone, first_month + months, day, at))


def cycle_containing(sub: Subscription, tz: str, instant: datetime) -> Period:
    """The cycle of ``sub`` (in the customer's time zone ``tz``) that contains ``instant``.

    Cycles extend before the subscription's start and after its end: they are the grid that the subscription is
    billed on; :func:`segments` clips a cycle to what the subscription covered.
    """
    zone = _zone(tz)
    _aware(instant, "instant")
    months = _months(sub)
    wall = instant.astimezone(zone)
    month = wall.year * 12 + wall.month - 1
    if sub.anchor == "calendar":
        day, at = 1, _MIDNIGHT
        first = month - month % months
    elif sub.anchor == "anniversary":
        _aware(sub.start, f"subscription {sub.id!r} start")
        anchor = sub.start.astimezone(zone)
        day, at = anchor.day, time(anchor.hour, anchor.minute, anchor.second, anchor.microsecond)
        first = month - (month - (anchor.year * 12 + anchor.month - 1)) % months
        if first == month and (wall.day, wall.time()) < (day, at):
            first -= months  # before this month's renewal (or a short month's: the loop below steps forward again)
    else:
        raise _invalid(f"subscription {sub.id!r}: anchor must be {' or '.join(ANCHORS)}; got {sub.anchor!r}")
    period = _bounds(tz, months, day, at, first)
    # The wall-clock guess is off only where clocks went back across a cycle start (or for a short month above).
    while instant < period.start:
        first -= months
        period = _bounds(tz, months, day, at, first)
    while instant >= period.end:
        first += months
        period = _bounds(tz, months, day, at, first)
    return period


def next_cycle(sub: Subscription, tz: str, period: Period) -> Period:
    """The cycle that follows ``period`` (the one containing its end)."""
    return cycle_containing(sub, tz, period.end)


def previous_cycle(sub: Subscription, tz: str, period: Period) -> Period:
    """The cycle that precedes ``period`` (the one containing the instant just before its start)."""
    _aware(period.start, "period start")
    return cycle_containing(sub, tz, period.start - _MICROSECOND)


def cycles_between(sub: Subscription, tz: str, start: datetime, end: datetime) -> list[Period]:
    """The cycles of ``sub`` that start in ``[start, end)``, oldest first."""
    _aware(start, "start")
    _aware(end, "end")
    period = cycle_containing(sub, tz, start)
    if period.start < start:
        period = next_cycle(sub, tz, period)
    found: list[Period] = []
    while period.start < end:
        found.append(period)
        period = next_cycle(sub, tz, period)
    return found


def subscription_cycles(sub: Subscription, tz: str, until: datetime | None = None) -> list[Period]:
    """The cycles ``sub`` is billed for, oldest first.

    From the one containing its start to the one containing its last instant before ``until`` or its end, whichever
    comes first.
    """
    _aware(sub.start, f"subscription {sub.id!r} start")
    ends = [t for t in (sub.end, until) if t is not None]
    if not ends:
        raise _invalid(f"subscription {sub.id!r} has no end: pass until= to say up to when its cycles are wanted")
    for t in ends:
        _aware(t, "until" if t is until else f"subscription {sub.id!r} end")
    stop = min(ends)
    if stop <= sub.start:
        return []
    return cycles_between(sub, tz, cycle_containing(sub, tz, sub.start).start, stop)


@lru_cache(maxsize=1 << 16)
def _midnight(tz: str, day: date) -> datetime:
    """The UTC instant at which local ``day`` begins."""
    return _localize(datetime.combine(day, _MIDNIGHT), _zone(tz))


@lru_cache(maxsize=1 << 16)
def _day(t: datetime, tz: str) -> date:
    """The local date of ``t``, made monotone.

    Where clocks go back across midnight, the instants after the first midnight belong to the new day although the
    wall clock shows the old one for a while.

    Cached: the instants asked about are mostly period bounds and subscription starts, which many share.
    """
    day = t.astimezone(_zone(tz)).date()
    if day < date.max and _midnight(tz, day + timedelta(days=1)) <= t:
        return day + timedelta(days=1)
    return day


@lru_cache(maxsize=1 << 14)
def _share(days: int, total: int) -> Decimal:
    """``days / total`` divided in :data:`PRORATION_CONTEXT` and quantized half to even to 9 decimals."""
    ctx = PRORATION_CONTEXT
    return ctx.divide(Decimal(days), Decimal(total)).quantize(_QUANTUM, rounding=ROUND_HALF_EVEN, context=ctx)


@lru_cache(maxsize=1 << 12)
def _period_days(period: Period, tz: str) -> tuple[date, int]:
    """The period's first local date and its number of local days; cached, as every subscription asks for it."""
    _aware(period.start, "period start")
    _aware(period.end, "period end")
    first = _day(period.start, tz)
    total = (_day(period.end, tz) - first).days
    if total <= 0:
        raise _invalid(
            f"a period must span at least one local day in {tz}; got [{period.start.isoformat()}, "
            f"{period.end.isoformat()})"
        )
    return first, total


def proration(period: Period, covered_from: datetime, covered_to: datetime, tz: str) -> Decimal:
    """The share of ``period`` that ``[covered_from, covered_to)`` covers, counted in local days of ``tz``.

    ``(local date of covered_to - local date of covered_from) / (local days of the period)`` after clipping the span
    to the period; a day counts when the span contains its last instant (see the module docs). Exact division,
    quantized half to even to 9 decimals; in ``[0, 1]``.
    """
    _zone(tz)
    _aware(covered_from, "covered_from")
    _aware(covered_to, "covered_to")
    if covered_to < covered_from:
        raise _invalid(
            f"covered_from ({covered_from.isoformat()}) must not be after covered_to ({covered_to.isoformat()})"
        )
    _, total = _period_days(period, tz)
    lo, hi = max(covered_from, period.start), min(covered_to, period.end)
    if lo >= hi:
        return _share(0, total)
    return _share((_day(hi, tz) - _day(lo, tz)).days, total)


def segments(sub: Subscription, tz: str, period: Period) -> list[Segment]:
    """The parts of ``period`` that ``sub`` covered, one per plan version, clipped to ``[sub.start, sub.end)``.

    Empty when the subscription did not cover the period. The segments tile the covered part of the period, and
    their prorations add up to exactly ``proration(period, first.start, last.end, tz)`` (so exactly 1 for a period
    covered throughout): each is the difference of quantized running shares counted from the first segment's start,
    rather than its own share quantized. A lone segment's proration is therefore exactly its :func:`proration`; with
    plan changes each differs from it by at most 1e-9, and a period's flat fee is never billed at 100.000000001% or
    99.999999999% because of plan changes. A segment may cover no whole day (proration 0) and still have usage.
    """
    first_day, total = _period_days(period, tz)
    phases = sub.phases()
    found: list[Segment] = []
    base: int | None = None
    shown = 0  # the running share already given to earlier segments, in days since ``base``
    for i, (version, start, end) in enumerate(phases):
        _aware(start, f"subscription {sub.id!r} start" if i == 0 else f"subscription {sub.id!r} migration {i} at")
        if end is not None:
            _aware(
                end,
                f"subscription {sub.id!r} end"
                if i == len(phases) - 1
                else f"subscription {sub.id!r} migration {i + 1} at",
            )
        lo = max(start, period.start).astimezone(UTC)
        hi = (period.end if end is None else min(end, period.end)).astimezone(UTC)
        if lo >= hi:
            continue
        lo_day, hi_day = _day(lo, tz), _day(hi, tz)
        if base is None:
            base = (lo_day - first_day).days
        upto = (hi_day - first_day).days - base
        share = PRORATION_CONTEXT.subtract(_share(upto, total), _share(shown, total))
        shown = upto
        notes: list[str] = []
        if lo > period.start:
            notes.append(
                f"started {lo_day.isoformat()}"
                if i == 0
                else f"plan changed to version {version} on {lo_day.isoformat()}"
            )
        if hi < period.end:
            notes.append(
                f"ended {hi_day.isoformat()}"
                if i == len(phases) - 1
                else f"until the change to version {phases[i + 1][0]} on {hi_day.isoformat()}"
            )
        reason = "prorated: " + ", ".join(notes) if notes and share != _ONE else ""
        found.append(Segment(version=version, start=lo, end=hi, proration=share, reason=reason))
    return found
