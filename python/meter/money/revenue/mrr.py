"""MRR and ARR with their movements, and usage revenue as its own run-rate, from finalized invoices.

Read from the invoice store: every finalized invoice that was not voided (:data:`meter.billing.invoices.BILLED`); a
void takes its invoice out, a draft is not counted yet. Per customer and currency, per calendar month of the
tenant's reporting zone (:class:`meter.catalog.revenue.RevenueSettings`):

- **Which lines.** Subscription MRR comes from fee lines: ``recurring`` lines and ``adjustment`` lines without a
  ``meter`` (a plan change or a cancellation after the fee was finalized). Usage revenue comes from lines with a
  ``meter`` (``usage``, and ``adjustment`` for late usage); it is never mixed into MRR. A ``discount`` line is shared
  among the lines it was taken from (those of its ``price``, or all the invoice's lines before it for an invoice
  discount, as :func:`meter.billing.terms.discount_lines` takes them), in proportion to their amounts, and each share
  reduces what its line counts for. Commits bought, shortfalls and the ``credit`` lines that draw prepaid grants down
  count for neither: a grant is deferred revenue paid in advance, and drawing it down is how the usage is paid, not
  a lower price.
- **Which month.** A line counts in the calendar months its service period ``[period_start, period_end)`` covers,
  each month weighted by the share of the month covered (its covered days over its days, local days counted as the
  ratable rule counts them: :mod:`meter.money.revenue.schedule`), so a line's months add up to its amount. A monthly
  fee counts its amount in its month; an annual fee a twelfth in each month (whatever the months' lengths); a fee
  prorated for the second half of March (a start or a plan change on the 16th) its amount in March, the next
  cycle's full fee in April. So a plan change shows as part expansion in its own month and the rest the month after,
  and a cancellation on the 16th as a contraction that month and churn the next.
- **Exact.** Shares are fractions (:class:`fractions.Fraction`); a customer's MRR and usage for a month are each
  rounded half to even to the currency's minor unit once, and every total is a sum of those rounded figures, so a
  month's figures add up to its customers' exactly. ARR is 12 x MRR (and usage ARR 12 x the month's usage).

Movements of a month, per customer, from its MRR the month before (``previous``) to this month's (``mrr``); the
amount of a movement is always ``mrr - previous``, so ``opening + new + expansion + contraction + churn +
reactivation = closing`` exactly (contraction and churn are negative):

- ``new``: from zero (or less) to more than zero, the first time the customer has MRR in the currency;
- ``reactivation``: the same, for a customer who had MRR in an earlier month;
- ``churn``: from more than zero to zero (or less);
- ``expansion`` / ``contraction``: up / down otherwise.

The months before ``from`` are read too: they give the first month's opening and tell new from reactivation.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec

from meter.billing.invoices import BILLED, Invoice, InvoiceLine
from meter.billing.invoicing import parse_month
from meter.billing.store import InvoiceStore
from meter.exceptions import InvalidInput
from meter.money.revenue.schedule import monthly, round_fraction
from meter.pricing.money import minor_units

__all__ = [
    "MAX_MONTHS",
    "CustomerMonth",
    "Figures",
    "Movement",
    "MrrMonth",
    "MrrReport",
    "billed_invoices",
    "csv_bytes",
    "figures",
    "month_range",
    "mrr_report",
]

#: At most this many months in one report (ten years): a bound on the answer, not on the history read.
MAX_MONTHS = 120
Movement = Literal["new", "expansion", "contraction", "churn", "reactivation"]
_Class = Literal["fee", "usage", "other"]
_ZERO = Fraction(0)


class MrrMonth(msgspec.Struct):
    """One month's subscription MRR in one currency, its movements from the month before, and its usage run-rate."""

    month: str
    currency: str
    #: The MRR of the month before; ``opening`` plus the five movements is ``closing``, exactly.
    opening: Decimal
    new: Decimal
    expansion: Decimal
    #: Negative, as churn: what the customers who pay less now stopped paying.
    contraction: Decimal
    churn: Decimal
    reactivation: Decimal
    #: The month's MRR.
    closing: Decimal
    arr: Decimal
    #: Customers with MRR (more than zero) this month.
    customers: int
    #: Usage revenue of the month (its usage lines, less the discounts on them): its own run-rate, never in MRR.
    usage: Decimal
    usage_arr: Decimal


class CustomerMonth(msgspec.Struct, omit_defaults=True):
    """A customer's MRR and usage revenue in one month, and its movement (none when the MRR did not change)."""

    month: str
    customer: str
    currency: str
    previous: Decimal
    mrr: Decimal
    change: Decimal
    usage: Decimal
    movement: Movement | None = None


class MrrReport(msgspec.Struct, omit_defaults=True):
    """MRR per month and currency (per customer when asked).

    For the months asked for, ``[from, to)``: ``start`` and ``end`` are the first and the last shown (``YYYY-MM`` in
    ``timezone``).
    """

    start: str
    end: str
    timezone: str
    months: list[MrrMonth]
    customers: list[CustomerMonth] | None = None


_AMOUNTS = [f.name for f in msgspec.structs.fields(MrrMonth) if f.type is Decimal]


@dataclass(frozen=True)
class _Piece:
    """A line's amount, or a discount's share of it, over the line's service period."""

    kind: _Class
    start: datetime
    end: datetime
    amount: Fraction


@dataclass
class Figures:
    """Each customer's MRR and usage revenue per month and currency, rounded once, for every month with revenue.

    ``mrr[(currency, customer)][month]`` and ``usage[...]`` (months as ``YYYY-MM``); months with neither are absent.
    """

    mrr: dict[tuple[str, str], dict[str, Decimal]]
    usage: dict[tuple[str, str], dict[str, Decimal]]

    def months(self) -> list[str]:
        """Every month with a figure, in order."""
        return sorted({m for by in (self.mrr, self.usage) for months in by.values() for m in months})


def _class(line: InvoiceLine) -> _Class:
    if line.kind in ("recurring", "usage", "adjustment"):
        return "usage" if line.meter is not None else "fee"
    return "other"


def _pieces(invoice: Invoice) -> Iterator[_Piece]:
    """The invoice's fee and usage pieces, discounts shared among the lines they were taken from (see the module)."""
    by_line: list[list[_Piece]] = []
    lines = invoice.lines
    for i, line in enumerate(lines):
        if line.kind != "discount":
            by_line.append([_Piece(_class(line), line.period_start, line.period_end, Fraction(line.amount))])
            continue
        # As terms.discount_lines took it: a price's lines (not discounts), or every line before it but credits.
        targets = [
            j
            for j in range(i)
            if lines[j].kind != "credit"
            and (line.price is None or (lines[j].price == line.price and lines[j].kind != "discount"))
        ]
        base = sum((Fraction(lines[j].amount) for j in targets), _ZERO)
        if base == 0:  # nothing it could have been taken from: it stays out, like a commit
            by_line.append([_Piece("other", line.period_start, line.period_end, Fraction(line.amount))])
            continue
        share = Fraction(line.amount) / base
        by_line.append([_Piece(p.kind, p.start, p.end, p.amount * share) for j in targets for p in by_line[j]])
    for pieces in by_line:
        yield from (p for p in pieces if p.kind != "other" and p.amount != 0)


def _by_month(piece: _Piece, tz: str, currency: str) -> Iterator[tuple[str, Fraction]]:
    """``piece``'s amount over the months it covers, each weighted by the share of the month covered."""
    if piece.end <= piece.start:
        return
    # The ratable rule's day count (amount zero: only its months and days are wanted).
    shares = monthly(Decimal(0), piece.start, piece.end, tz, currency)
    weights = [share.days / _days_in(share.month.year, share.month.month) for share in shares]
    total = sum(weights, _ZERO)
    for share, weight in zip(shares, weights, strict=True):
        yield f"{share.month:%Y-%m}", piece.amount * weight / total


def _days_in(year: int, month: int) -> int:
    following = datetime(year + month // 12, month % 12 + 1, 1)
    return (following - datetime(year, month, 1)).days


def billed_invoices(store: InvoiceStore, tenant: str) -> Iterator[Invoice]:
    """The tenant's finalized invoices not voided, decoding only those."""
    for _, status, raw in store.statuses(tenant):
        if status in BILLED:
            yield msgspec.json.decode(raw, type=Invoice)


def figures(invoices: Iterable[Invoice], tz: str) -> Figures:
    """Each customer's MRR and usage revenue per month (see the module for the rules)."""
    exact: dict[tuple[str, str, _Class], dict[str, Fraction]] = defaultdict(lambda: defaultdict(Fraction))
    for invoice in invoices:
        for piece in _pieces(invoice):
            months = exact[(invoice.currency, invoice.customer, piece.kind)]
            for month, amount in _by_month(piece, tz, invoice.currency):
                months[month] += amount
    out = Figures(mrr=defaultdict(dict), usage=defaultdict(dict))
    for (currency, customer, kind), months in sorted(exact.items()):
        target = out.mrr if kind == "fee" else out.usage
        digits = minor_units(currency)
        for month, amount in sorted(months.items()):
            target[(currency, customer)][month] = round_fraction(amount, digits)
    return out


def month_range(start: str | None, end: str | None, tz: str, now: datetime | None = None) -> list[str]:
    """The months ``[start, end)`` (``YYYY-MM``).

    ``end`` defaults to the month after this one in ``tz`` (this month included), ``start`` to 12 months before it.
    """
    if end is None:
        this = (now or datetime.now(UTC)).astimezone(ZoneInfo(tz))
        end = f"{_shift(datetime(this.year, this.month, 1), 1):%Y-%m}"
    stop = parse_month(end, "'to'")
    first = parse_month(start, "'from'") if start is not None else _shift(stop, -12)
    if first >= stop:
        raise InvalidInput(
            f"'from' ({start}) must be before 'to' ({end}): months are [from, to)", code="invalid_period"
        )
    count = (stop.year - first.year) * 12 + stop.month - first.month
    if count > MAX_MONTHS:
        raise InvalidInput(
            f"at most {MAX_MONTHS} months from 'from' to 'to'; got {count} ({start} to {end})", code="invalid_period"
        )
    return [f"{_shift(first, k):%Y-%m}" for k in range(count)]


def month_after(month: str) -> str:
    """The month after ``month`` (``YYYY-MM``): the exclusive end of a range whose last month is ``month``."""
    return f"{_shift(parse_month(month), 1):%Y-%m}"


def _shift(month: datetime, by: int) -> datetime:
    index = month.year * 12 + month.month - 1 + by
    return datetime(index // 12, index % 12 + 1, 1)


def _months_through(first: str, last: str) -> list[str]:
    """Every month from ``first`` to ``last``, both included (empty when ``first`` is after ``last``)."""
    start, end = parse_month(first), parse_month(last)
    count = (end.year - start.year) * 12 + end.month - start.month + 1
    return [f"{_shift(start, k):%Y-%m}" for k in range(max(count, 0))]


def _movement(previous: Decimal, mrr: Decimal, had_mrr: bool) -> Movement | None:
    if previous <= 0 < mrr:
        return "reactivation" if had_mrr else "new"
    if mrr <= 0 < previous:
        return "churn"
    if mrr > previous:
        return "expansion"
    if mrr < previous:
        return "contraction"
    return None


def mrr_report(figures_: Figures, months: list[str], tz: str, by_customer: bool = False) -> MrrReport:
    """The months' MRR, movements and usage run-rate per currency (and per customer when ``by_customer``)."""
    wanted = set(months)
    known = figures_.months()
    # From the first month with revenue (for openings and new vs reactivation) through the last month wanted.
    walk = _months_through(known[0], months[-1]) if known and known[0] < months[0] else months
    rows: dict[tuple[str, str], MrrMonth] = {}
    customers: list[CustomerMonth] = []
    keys = sorted(set(figures_.mrr) | set(figures_.usage))
    for currency in sorted({currency for currency, _ in keys}):
        zero = Decimal(0).scaleb(-minor_units(currency))
        for month in months:
            amounts = dict.fromkeys(_AMOUNTS, zero)
            rows[(currency, month)] = MrrMonth(month=month, currency=currency, customers=0, **amounts)
    for currency, customer in keys:
        mrr, usage = figures_.mrr.get((currency, customer), {}), figures_.usage.get((currency, customer), {})
        zero = Decimal(0).scaleb(-minor_units(currency))
        previous, had_mrr = zero, False
        for month in walk:
            current = mrr.get(month, zero)
            movement = _movement(previous, current, had_mrr)
            if month in wanted:
                row = rows[(currency, month)]
                row.opening += previous
                row.closing += current
                row.customers += current > 0
                row.usage += usage.get(month, zero)
                if movement is not None:
                    setattr(row, movement, getattr(row, movement) + current - previous)
                if by_customer and (previous or current or month in usage):
                    customers.append(
                        CustomerMonth(
                            month,
                            customer,
                            currency,
                            previous,
                            current,
                            current - previous,
                            usage.get(month, zero),
                            movement,
                        )
                    )
            had_mrr = had_mrr or current > 0
            previous = current
    for row in rows.values():
        row.arr, row.usage_arr = 12 * row.closing, 12 * row.usage
    ordered = [rows[key] for key in sorted(rows, key=lambda k: (k[1], k[0]))]
    customers.sort(key=lambda c: (c.month, c.currency, c.customer))
    return MrrReport(months[0], months[-1], tz, ordered, customers if by_customer else None)


#: The CSV's columns: a month's row per currency, or with ``by_customer`` a customer's.
MONTH_COLUMNS = [f.name for f in msgspec.structs.fields(MrrMonth)]
CUSTOMER_COLUMNS = ["month", "customer", "currency", "previous", "mrr", "change", "movement", "usage"]


def csv_bytes(report: MrrReport) -> bytes:
    """The report as CSV: the months, or the customers' rows when it has them (amounts as plain decimal text)."""
    out = io.StringIO()
    rows: list[msgspec.Struct]
    if report.customers is not None:
        columns, rows = CUSTOMER_COLUMNS, list(report.customers)
    else:
        columns, rows = MONTH_COLUMNS, list(report.months)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = (getattr(row, c) for c in columns)
        writer.writerow("" if v is None else str(v) for v in values)
    return out.getvalue().encode()
