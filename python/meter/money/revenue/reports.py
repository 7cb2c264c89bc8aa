"""Revenue reports, read from the closes' rows and the journal: the waterfall, deferred and unbilled revenue.

- :func:`waterfall`: revenue recognized per month (reporting zone), in total or by one dimension (customer, product,
  plan, meter, price, the month the invoice was finalized, the kind of revenue), with the top groups first when asked.
  Read from the rows every close writes (:mod:`~meter.money.revenue.recognize`); each row is a source's movement, so
  the months add up to the ``revenue`` account's balance by accounting date.
- :func:`deferred_rollforward`: per month and currency, deferred revenue's opening balance, additions (fees and
  commits billed), drawdowns (prepaid commits used by usage invoices), recognized, breakage, reversals (voids), and
  closing balance. Read from the journal: each entry counts in the month of its accounting date (a recognition entry's
  ``effective`` day, else the day it was posted); a finalization's net on the account is split by its invoice's lines.
- :func:`unbilled`: revenue earned and not yet invoiced at the end of a day, per currency (from the journal) and per
  customer (usage recognized minus usage invoiced).

Invariants: money is Decimal, summed exactly (``decimal128(38, 9)`` in the rows, ``Decimal`` in the journal), and
shown at the currency's minor unit; months are ``YYYY-MM`` in the reporting zone and ranges ``[from, to)``. Memory
holds one sum per group, never the journal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Literal, get_args
from zoneinfo import ZoneInfo

import msgspec
import polars as pl

from meter.billing.store import InvoiceStore
from meter.exceptions import InvalidInput
from meter.money import ledger
from meter.money.ledger import JournalEntry
from meter.money.revenue.days import accounting_day
from meter.money.revenue.recognize import last_close, read_rows
from meter.pricing.money import round_to_minor_unit

__all__ = [
    "DIMENSIONS",
    "DeferredMonth",
    "Dimension",
    "UnbilledCustomer",
    "UnbilledReport",
    "Waterfall",
    "WaterfallRow",
    "deferred_rollforward",
    "unbilled",
    "waterfall",
]

#: What the waterfall groups by, beside the month and the currency.
Dimension = Literal["customer", "product", "plan", "meter", "price", "invoice_month", "kind"]
DIMENSIONS: tuple[str, ...] = get_args(Dimension)
_ZERO = Decimal(0)


def _month(day: date) -> str:
    return f"{day:%Y-%m}"


class WaterfallRow(msgspec.Struct, omit_defaults=True):
    month: str
    currency: str
    amount: Decimal
    #: The units of usage consumed (the usage rows' quantities; absent when there are none, such as fees alone).
    quantity: Decimal | None = None
    #: The group's value (absent without ``by``; null for rows without one, such as fees for ``meter``).
    group: str | None = None


class Waterfall(msgspec.Struct):
    """Recognized revenue per month (and group), and the day the books are closed through."""

    recognized_through: date | None
    by: str | None
    rows: list[WaterfallRow]


def waterfall(
    store: InvoiceStore,
    tenant: str,
    start: str | None = None,
    end: str | None = None,
    by: str | None = None,
    top: int | None = None,
) -> Waterfall:
    """Revenue recognized per month in ``[start, end)`` (``YYYY-MM``), by ``by`` when given, largest groups first.

    With ``top``, only the ``top`` groups of largest total over the range (per currency) are listed.
    """
    if by is not None and by not in DIMENSIONS:
        raise InvalidInput(f"'by' must be one of {', '.join(DIMENSIONS)}; got {by!r}", code="invalid_query")
    if start is not None and end is not None and start >= end:
        raise InvalidInput(f"'from' ({start}) must be before 'to' ({end}): months are [from, to)", code="invalid_query")
    rows = pl.from_arrow(read_rows(store, tenant))
    assert isinstance(rows, pl.DataFrame)
    if start is not None:
        rows = rows.filter(pl.col("month") >= start)
    if end is not None:
        rows = rows.filter(pl.col("month") < end)
    keys = ["month", "currency", *([by] if by else [])]
    sums = rows.group_by(keys).agg(
        pl.col("amount").sum(), pl.col("quantity").sum(), pl.col("quantity").count().alias("n")
    )
    if by is not None and top is not None:
        totals = sums.group_by("currency", by).agg(pl.col("amount").sum().alias("total"))
        best = totals.sort("total", descending=True).group_by("currency", maintain_order=True).head(top)
        sums = sums.join(best.select("currency", by), on=["currency", by], how="semi", nulls_equal=True)
    order = ["month", "currency", *([by] if by else [])]
    out = [
        WaterfallRow(
            month=row["month"],
            currency=row["currency"],
            amount=round_to_minor_unit(row["amount"], row["currency"]),
            quantity=row["quantity"].normalize() if row["n"] else None,
            **({"group": row[by]} if by else {}),
        )
        for row in sums.sort(order, nulls_last=True).iter_rows(named=True)
    ]
    return Waterfall(recognized_through=last_close(store, tenant), by=by, rows=out)


class DeferredMonth(msgspec.Struct):
    """Deferred revenue's movements in one month and currency.

    ``closing = opening + additions - drawn - recognized - breakage - reversed``, the account's balance at the
    month's end.
    """

    month: str
    currency: str
    opening: Decimal
    additions: Decimal
    drawn: Decimal
    recognized: Decimal
    breakage: Decimal
    reversed: Decimal
    closing: Decimal


_COLUMNS = ("additions", "drawn", "recognized", "breakage", "reversed")


def deferred_rollforward(
    store: InvoiceStore, tenant: str, tz: str, start: str | None = None, end: str | None = None
) -> list[DeferredMonth]:
    """Deferred revenue per month in ``[start, end)`` (every month with a movement when not given)."""
    moves: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(_COLUMNS, _ZERO))
    for entry in store.journal(tenant):
        net = sum((line.credit - line.debit for line in entry.lines if line.account == "deferred_revenue"), _ZERO)
        if net == 0 and entry.kind != "invoice_finalized":
            continue
        sums = moves[(_month(accounting_day(entry, ZoneInfo(tz))), entry.currency)]
        if entry.kind == "invoice_finalized":
            added, drawn = _finalized_split(store, tenant, entry)
            if added - drawn != net:
                raise AssertionError(f"{entry.id}: its lines split deferred revenue {added} - {drawn}, posted {net}")
            sums["additions"] += added
            sums["drawn"] += drawn
        elif entry.kind == "revenue_recognized":
            sums["recognized"] -= net
        elif entry.kind == "breakage":
            sums["breakage"] -= net
        else:  # a void's reversal of its invoice's finalization
            sums["reversed"] -= net
    out, balance = [], dict[str, Decimal]()
    for month, currency in sorted(moves):
        sums = moves[(month, currency)]
        opening = balance.get(currency, _ZERO)
        closing = opening + sums["additions"] - sums["drawn"] - sums["recognized"] - sums["breakage"]
        closing -= sums["reversed"]
        balance[currency] = closing
        if (start is None or month >= start) and (end is None or month < end):
            shown = {name: round_to_minor_unit(value, currency) for name, value in sums.items()}
            out.append(
                DeferredMonth(
                    month=month,
                    currency=currency,
                    opening=round_to_minor_unit(opening, currency),
                    closing=round_to_minor_unit(closing, currency),
                    **shown,
                )
            )
    return out


def _finalized_split(store: InvoiceStore, tenant: str, entry: JournalEntry) -> tuple[Decimal, Decimal]:
    """A finalization's deferred revenue: what its fee and commit lines added, what its drawdown lines drew."""
    if entry.invoice is None:
        return _ZERO, _ZERO
    invoice = store.get(tenant, entry.invoice)
    prepaid = (
        store.prepaid_grants(tenant, invoice.subscription)
        if any(line.kind == "credit" for line in invoice.lines)
        else frozenset()
    )
    added = drawn = _ZERO
    for line, net in zip(invoice.lines, ledger.net_line_amounts(invoice), strict=True):
        how = ledger.treatment(line, prepaid)
        if how in ("ratable", "commit"):
            added += net
        elif how == "drawdown":
            drawn -= net
    return added, drawn


class UnbilledCustomer(msgspec.Struct):
    customer: str
    currency: str
    #: Usage recognized (consumed) through the day, usage invoiced by then, and the difference: unbilled.
    recognized: Decimal
    invoiced: Decimal
    unbilled: Decimal


class UnbilledReport(msgspec.Struct):
    """Revenue earned and not invoiced at the end of ``as_of``.

    Per currency (the ledger's ``unbilled_revenue`` balance) and per customer (their sum).
    """

    as_of: date
    recognized_through: date | None
    totals: dict[str, Decimal]
    customers: list[UnbilledCustomer]


def unbilled(store: InvoiceStore, tenant: str, tz: str, as_of: date) -> UnbilledReport:
    """Unbilled revenue at the end of ``as_of`` (reporting zone), from the journal and the closes' usage rows."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    invoiced: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for entry in _through(store, tenant, tz, as_of):
        net = sum((line.debit - line.credit for line in entry.lines if line.account == "unbilled_revenue"), _ZERO)
        if net == 0:
            continue
        totals[entry.currency] += net
        if entry.kind in ("invoice_finalized", "invoice_voided") and entry.customer is not None:
            invoiced[(entry.customer, entry.currency)] -= net
    rows = pl.from_arrow(read_rows(store, tenant, end=as_of + timedelta(days=1)))
    assert isinstance(rows, pl.DataFrame)
    used = rows.filter(pl.col("kind") == "usage").group_by("customer", "currency").agg(pl.col("amount").sum())
    recognized = {(r["customer"], r["currency"]): r["amount"] for r in used.iter_rows(named=True)}
    customers = []
    for customer, currency in sorted(set(recognized) | set(invoiced)):
        done, billed = recognized.get((customer, currency), _ZERO), invoiced.get((customer, currency), _ZERO)
        if done or billed:
            customers.append(
                UnbilledCustomer(
                    customer=customer,
                    currency=currency,
                    recognized=round_to_minor_unit(done, currency),
                    invoiced=round_to_minor_unit(billed, currency),
                    unbilled=round_to_minor_unit(done - billed, currency),
                )
            )
    return UnbilledReport(
        as_of=as_of,
        recognized_through=last_close(store, tenant),
        totals={currency: round_to_minor_unit(total, currency) for currency, total in sorted(totals.items())},
        customers=customers,
    )


def _through(store: InvoiceStore, tenant: str, tz: str, day: date) -> Iterator[JournalEntry]:
    """The journal entries whose accounting day is ``day`` or before."""
    for entry in store.journal(tenant):
        if accounting_day(entry, ZoneInfo(tz)) <= day:
            yield entry
