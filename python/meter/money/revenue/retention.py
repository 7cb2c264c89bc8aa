"""Net revenue retention by cohort month, from the same monthly figures as MRR (:mod:`meter.money.revenue.mrr`).

- **Revenue** of a customer in a month: its subscription MRR plus its usage revenue that month, each as
  :func:`meter.money.revenue.mrr.figures` rounds it, per currency.
- **Cohort**: the month of a customer's first revenue (more than zero) in a currency. Every month of the whole
  history is read to find it, whatever ``from`` says; ``from`` and ``to`` pick the cohorts shown, and ``to`` is the
  last month shown for each.
- **Retention** of a cohort in a month: the revenue that month of all the cohort's customers (those who left count
  zero, those who grew count in full) over their revenue in the cohort month, as a decimal ratio rounded half to
  even to four decimals (``1.0500`` is 105 %). The cohort month itself is ``1.0000``. The revenues beside it are
  exact sums of the customers' rounded figures.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from decimal import Decimal
from fractions import Fraction

import msgspec

from meter.money.revenue.mrr import Figures
from meter.pricing.money import minor_units

__all__ = ["Cohort", "CohortMonth", "RetentionReport", "csv_bytes", "retention_report"]


class CohortMonth(msgspec.Struct):
    """A cohort's revenue in one month, the customers of it with revenue that month, and its retention."""

    month: str
    revenue: Decimal
    customers: int
    retention: Decimal


class Cohort(msgspec.Struct):
    """The customers whose first revenue in ``currency`` was in ``cohort``, month after month through ``to``."""

    cohort: str
    currency: str
    customers: int
    #: Their revenue in the cohort month: every retention's denominator.
    base: Decimal
    months: list[CohortMonth]


class RetentionReport(msgspec.Struct):
    """The cohorts of the months asked for (``[from, to)``; ``start`` and ``end`` are the first and the last shown)."""

    start: str
    end: str
    timezone: str
    cohorts: list[Cohort]


def retention_report(figures: Figures, months: list[str], tz: str) -> RetentionReport:
    """Each cohort of ``months``: its revenue and retention from its own month through the last of ``months``."""
    revenue: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(dict)
    for by in (figures.mrr, figures.usage):
        for key, amounts in by.items():
            for month, amount in amounts.items():
                revenue[key][month] = revenue[key].get(month, Decimal(0)) + amount
    members: dict[tuple[str, str], list[str]] = defaultdict(list)  # (currency, cohort month) -> customers
    for (currency, customer), amounts in revenue.items():
        first = min((m for m, amount in amounts.items() if amount > 0), default=None)
        if first is not None and months[0] <= first <= months[-1]:
            members[(currency, first)].append(customer)
    cohorts = []
    for (currency, cohort), customers in sorted(members.items(), key=lambda item: (item[0][1], item[0][0])):
        zero = Decimal(0).scaleb(-minor_units(currency))
        rows = []
        for month in (m for m in months if m >= cohort):
            each = [revenue[(currency, c)].get(month, zero) for c in customers]
            rows.append(CohortMonth(month, sum(each, zero), sum(1 for a in each if a > 0), Decimal(0)))
        base = rows[0].revenue
        for row in rows:
            # Exact: the ratio as a fraction, rounded once (round() of a Fraction rounds ties to even).
            row.retention = Decimal(round(Fraction(row.revenue) / Fraction(base) * 10_000)).scaleb(-4)
        cohorts.append(Cohort(cohort, currency, len(customers), base, rows))
    return RetentionReport(months[0], months[-1], tz, cohorts)


COLUMNS = ["cohort", "currency", "cohort_size", "base", "month", "revenue", "customers", "retention"]


def csv_bytes(report: RetentionReport) -> bytes:
    """One row per cohort and month: ``cohort_size`` customers in all, ``customers`` with revenue that month."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for c in report.cohorts:
        for m in c.months:
            writer.writerow([c.cohort, c.currency, c.customers, c.base, m.month, m.revenue, m.customers, m.retention])
    return out.getvalue().encode()
