"""Accounts-receivable aging: what each customer still owes at a date, by how many days it is past due.

What is owed comes from the journal, never from the invoices' own ``amount_remaining``: an invoice's amount owed
``as_of`` an instant is the ``accounts_receivable`` debits minus credits of its entries created before that instant
(its finalization, credit balance applied, payments, credit notes, a write-off, a void). So an aging as of a past date
is exact: an invoice paid, credited or voided since is owed as it was then; one voided or written off before is not.

Due date: invoices carry none, and neither the catalog nor the payment settings (:mod:`meter.money.payments`) hold
payment terms, so **an invoice is due when it is finalized**. Days past due are counted in calendar days of the
reporting time zone (:attr:`~meter.catalog.revenue.RevenueSettings.timezone`): the report's day minus the local day
the invoice was finalized. Buckets: ``current`` (0 days: due that day, or not yet), ``1_30``, ``31_60``, ``61_90``
(each inclusive) and ``90_plus`` (91 days and more).

Which invoices: those finalized before ``as_of`` with a non-zero amount owed then, per customer and currency, with the
currency's totals. Reading is bounded by what can be owed: the invoices' statuses are read (not whole invoices), and
the journal entries only of invoices that are open now or were closed (paid, written off, voided) at or after
``as_of``; an invoice closed before then owed nothing at ``as_of``, as its receivable stays zero once closed.
Amounts are the journal's decimals, summed: never rounded, never a float.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Literal, get_args
from zoneinfo import ZoneInfo

import msgspec

from meter.billing.invoices import Status
from meter.billing.store import InvoiceStore
from meter.catalog.revenue import RevenueSettings
from meter.encoding import plain
from meter.money.revenue.days import ReportDay, local_date
from meter.pricing.money import minor_units

__all__ = ["BUCKETS", "CSV_COLUMNS", "AgedInvoice", "Aging", "AgingRow", "Bucket", "aging", "bucket", "csv_bytes"]

Bucket = Literal["current", "1_30", "31_60", "61_90", "90_plus"]
BUCKETS: tuple[Bucket, ...] = get_args(Bucket)
_ZERO = Decimal(0)


def bucket(days_past_due: int) -> Bucket:
    if days_past_due <= 0:
        return "current"
    if days_past_due <= 30:
        return "1_30"
    if days_past_due <= 60:
        return "31_60"
    if days_past_due <= 90:
        return "61_90"
    return "90_plus"


class AgedInvoice(msgspec.Struct):
    """An invoice with an amount owed at ``as_of``: how much, since when it is due, and its bucket."""

    invoice: str
    number: str | None
    customer: str
    currency: str
    finalized_at: datetime
    #: The local day it is due (the day it was finalized: see the module doc).
    due: date
    days_past_due: int
    bucket: Bucket
    owed: Decimal


class AgingRow(
    msgspec.Struct,
    omit_defaults=True,
    rename={"days_1_30": "1_30", "days_31_60": "31_60", "days_61_90": "61_90", "days_90_plus": "90_plus"},
):
    """A customer's amounts owed per bucket in one currency (a currency's totals: without ``customer``)."""

    currency: str
    current: Decimal
    days_1_30: Decimal
    days_31_60: Decimal
    days_61_90: Decimal
    days_90_plus: Decimal
    total: Decimal
    #: How many invoices it sums.
    invoices: int
    customer: str | None = None


class Aging(msgspec.Struct):
    """The aging as of ``as_of`` (entries created before it), days past due counted to ``date`` in ``timezone``."""

    as_of: datetime
    date: date
    timezone: str
    customers: list[AgingRow]
    totals: list[AgingRow]
    #: Every invoice owed something, by customer, currency, then due date.
    invoices: list[AgedInvoice]


class _Head(msgspec.Struct):
    """What choosing the invoices to read needs of one; the rest of its JSON (its lines) is skipped."""

    customer: str
    currency: str
    status: Status = "draft"
    number: str | None = None
    finalized_at: datetime | None = None
    paid_at: datetime | None = None
    voided_at: datetime | None = None
    uncollectible_at: datetime | None = None


def _may_owe(head: _Head, as_of: datetime) -> bool:
    """Whether the invoice can have owed something at ``as_of`` (see the module doc: a superset, never fewer)."""
    if head.finalized_at is None or head.finalized_at >= as_of:
        return False
    if head.status == "open":
        return True
    closed = [t for t in (head.paid_at, head.voided_at, head.uncollectible_at) if t is not None]
    # Its receivable reached zero when it closed; the latest of those times is later than that, so never too early.
    return not closed or max(closed) >= as_of


def _candidates(store: InvoiceStore, tenant: str, as_of: datetime) -> Iterator[tuple[str, _Head]]:
    for invoice_id, status, raw in store.statuses(tenant):
        if status != "draft":
            head = msgspec.json.decode(raw, type=_Head)
            if _may_owe(head, as_of):
                yield invoice_id, head


def _owed(store: InvoiceStore, tenant: str, invoice_id: str, as_of: datetime) -> Decimal:
    """The invoice's receivable at ``as_of``: its entries' ``accounts_receivable`` debits minus credits before then."""
    owed = _ZERO
    for entry in store.posted_for(tenant, invoice=invoice_id):
        if entry.created_at < as_of:
            for line in entry.lines:
                if line.account == "accounts_receivable":
                    owed += line.debit - line.credit
    return owed


def _aged(store: InvoiceStore, tenant: str, at: ReportDay, zone: ZoneInfo) -> Iterator[AgedInvoice]:
    for invoice_id, head in _candidates(store, tenant, at.instant):
        owed = _owed(store, tenant, invoice_id, at.instant)
        if owed == 0:
            continue
        assert head.finalized_at is not None  # _may_owe kept only finalized invoices
        due = local_date(head.finalized_at, zone)
        days = (at.day - due).days
        yield AgedInvoice(
            invoice=invoice_id,
            number=head.number,
            customer=head.customer,
            currency=head.currency,
            finalized_at=head.finalized_at,
            due=due,
            days_past_due=days,
            bucket=bucket(days),
            owed=owed,
        )


def _row(currency: str, customer: str | None, invoices: Iterable[AgedInvoice]) -> AgingRow:
    zero = Decimal(0).scaleb(-minor_units(currency))  # "0.00", like the amounts beside it
    sums = dict.fromkeys(BUCKETS, zero)
    count = 0
    for invoice in invoices:
        sums[invoice.bucket] += invoice.owed
        count += 1
    return AgingRow(
        currency=currency,
        customer=customer,
        current=sums["current"],
        days_1_30=sums["1_30"],
        days_31_60=sums["31_60"],
        days_61_90=sums["61_90"],
        days_90_plus=sums["90_plus"],
        total=sum(sums.values(), zero),
        invoices=count,
    )


def aging(store: InvoiceStore, tenant: str, settings: RevenueSettings, at: ReportDay) -> Aging:
    """The tenant's receivables at ``at``, per invoice, per customer and currency, and each currency's totals."""
    zone = ZoneInfo(settings.timezone)
    invoices = sorted(_aged(store, tenant, at, zone), key=lambda i: (i.customer, i.currency, i.due, i.invoice))
    by_customer: dict[tuple[str, str], list[AgedInvoice]] = defaultdict(list)
    by_currency: dict[str, list[AgedInvoice]] = defaultdict(list)
    for invoice in invoices:
        by_customer[(invoice.customer, invoice.currency)].append(invoice)
        by_currency[invoice.currency].append(invoice)
    return Aging(
        as_of=at.instant,
        date=at.day,
        timezone=settings.timezone,
        customers=[_row(currency, customer, rows) for (customer, currency), rows in sorted(by_customer.items())],
        totals=[_row(currency, None, rows) for currency, rows in sorted(by_currency.items())],
        invoices=invoices,
    )


#: The CSV's columns: a row per customer and currency, then a row per currency with an empty customer (its total).
CSV_COLUMNS = ("customer", "currency", *BUCKETS, "total", "invoices")


def csv_bytes(report: Aging) -> bytes:
    """The customers' rows then the currencies' totals (customer empty) as CSV, amounts as plain decimal text."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    for row in [*report.customers, *report.totals]:
        amounts = (row.current, row.days_1_30, row.days_31_60, row.days_61_90, row.days_90_plus, row.total)
        writer.writerow([row.customer or "", row.currency, *map(plain, amounts), row.invoices])
    return text.getvalue().encode()
