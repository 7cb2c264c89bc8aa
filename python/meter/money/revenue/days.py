"""Days of the reporting time zone, as the revenue reports read them from a query.

A report's day is a calendar day of the tenant's reporting zone
(:attr:`meter.catalog.revenue.RevenueSettings.timezone`), and an instant belongs to the local day it falls in. A date
given as a query parameter (``2026-11-30``) is that day; "as of" a day means through its end, the instant the next
local day begins. Errors are ``InvalidInput`` (``invalid_query``): a 400 that names the parameter and the form
expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from meter.exceptions import InvalidInput
from meter.money.ledger import JournalEntry

__all__ = ["ReportDay", "accounting_day", "local_date", "midnight", "parse_day", "report_day"]


@dataclass(frozen=True)
class ReportDay:
    """What "as of" means in a report: the entries created before ``instant``, and the local ``day`` it closes."""

    instant: datetime
    day: date


def local_date(t: datetime, zone: ZoneInfo) -> date:
    return t.astimezone(zone).date()


def accounting_day(entry: JournalEntry, zone: ZoneInfo) -> date:
    """The day an entry counts in: the one place that decides it.

    Its ``effective`` day (a close of November posted in December is November's), else the day it was posted, in the
    reporting zone.
    """
    return entry.effective or local_date(entry.created_at, zone)


def midnight(day: date, zone: ZoneInfo) -> datetime:
    """The instant (UTC) a local day begins; a midnight a clock change skips is the instant of the jump (PEP 495)."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def parse_day(value: str, name: str) -> date:
    """``YYYY-MM-DD``, a calendar day (of the reporting zone: the caller knows which)."""
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"'{name}' must be a date YYYY-MM-DD (a day of the reporting time zone); got {value!r}",
            code="invalid_query",
        ) from None


def report_day(value: str | None, name: str, zone: ZoneInfo, now: datetime) -> ReportDay:
    """``as_of`` as given: a date (through its end), an RFC 3339 instant (its local day), or now when absent."""
    if value is None:
        return ReportDay(now, local_date(now, zone))
    try:
        if len(value) == 10:
            day = parse_day(value, name)
            return ReportDay(midnight(day + timedelta(days=1), zone), day)
        instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if instant.tzinfo is not None:
            return ReportDay(instant, local_date(instant, zone))
    except (ValueError, OverflowError):  # not a time, or one at the ends of the calendar (a zone shifts it past)
        pass
    raise InvalidInput(
        f"'{name}' must be a date YYYY-MM-DD (through the end of that day in the reporting time zone) or an "
        f"RFC 3339 instant with an offset such as 2026-11-30T12:00:00Z, within years 1-9998; got {value!r}",
        code="invalid_query",
    )
