"""The general-ledger export: journal lines as accounting tools import them, with the tenant's account codes.

One row per journal line (:data:`COLUMNS`): ``date`` (the entry's day in the reporting time zone, see
:func:`~meter.money.revenue.days.accounting_day`), ``account`` (the general ledger's code of the line's ledger account,
:meth:`meter.catalog.revenue.RevenueSettings.code`: the tenant's mapping over :data:`DEFAULT_CODES`),
``account_name``, ``debit`` and ``credit`` (one of them zero), ``memo`` (what the entry is: "invoice INV-000003
finalized"), ``customer``, ``entry`` (the journal entry's id, its cause: the line's reference back to meter) and
``currency``.

Invariants:

- Days, not instants: ``[from, to)`` are local days of the reporting zone and keep the lines whose ``date`` is in
  them, so a month's export is exactly the lines an accounting tool books in that month.
- Bounded memory, like :func:`meter.money.reports.entries`: entries stream from the store in posting order (``seq``),
  a page holds the lines of at most ``limit`` entries and reads at most ``scan`` of them, and says with ``next``
  where to carry on; rows come in posting order, an entry's lines together.
- Amounts are the journal's decimals as plain text at the currency's minor unit (``30.00``, ``0.00``: never a float,
  never ``3E+1``); over whole entries, debits equal credits.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgspec

from meter.billing.store import InvoiceStore
from meter.catalog.revenue import DEFAULT_CODES, RevenueSettings
from meter.encoding import plain
from meter.exceptions import InvalidInput, NotFound
from meter.money.ledger import ACCOUNTS, JournalEntry
from meter.money.reports import SCAN
from meter.money.revenue.days import accounting_day
from meter.pricing.money import minor_units

__all__ = ["ACCOUNT_NAMES", "COLUMNS", "GLLine", "GLPage", "csv_bytes", "memo", "page"]

#: The CSV's columns, in order.
COLUMNS = ("date", "account", "account_name", "debit", "credit", "memo", "customer", "entry", "currency")
#: Each ledger account's name, beside its code.
ACCOUNT_NAMES: dict[str, str] = {
    "accounts_receivable": "Accounts receivable",
    "cash": "Cash",
    "payments_clearing": "Payments clearing",
    "unbilled_revenue": "Unbilled revenue",
    "revenue": "Revenue",
    "deferred_revenue": "Deferred revenue",
    "tax_payable": "Tax payable",
    "customer_credit": "Customer credit balances",
    "refunds": "Refunds",
    "bad_debt": "Bad debt",
}
assert set(ACCOUNT_NAMES) == set(ACCOUNTS) == set(DEFAULT_CODES), "every ledger account has a name and a code"


class GLLine(msgspec.Struct):
    """One journal line as the general ledger books it (see the module doc for each column)."""

    date: date
    account: str
    account_name: str
    debit: Decimal
    credit: Decimal
    memo: str
    customer: str | None
    entry: str
    currency: str


class GLPage(msgspec.Struct):
    """The lines of a page of entries, in posting order."""

    data: list[GLLine]
    #: The ``after`` of the next page; null when the journal was read to its end.
    next: int | None
    #: How many entries were read to fill this page (at most ``SCAN``).
    scanned: int


def memo(entry: JournalEntry, invoice_number: str | None) -> str:
    """What the entry is, in words an accountant reads ("invoice INV-000003 finalized"), then its own memo if any."""
    invoice = f"invoice {invoice_number or entry.invoice}"
    cause = entry.id.split(":", 1)[-1]
    described = {
        "invoice_finalized": f"{invoice} finalized",
        "invoice_voided": f"{invoice} voided",
        "credit_note": f"credit note {entry.credit_note or cause} on {invoice}",
        "credit_applied": f"credit balance applied to {invoice}",
        "payment": f"payment {entry.payment or cause} on {invoice}",
        "refund": f"refund {cause} of payment {entry.payment} on {invoice}",
        "write_off": f"{invoice} written off",
    }.get(entry.kind)
    if described is None:  # a kind this module does not know yet: its id says what it is
        described = f"{entry.kind.replace('_', ' ')} {cause}"
    return f"{described}: {entry.memo}" if entry.memo else described


def _money(amount: Decimal, currency: str) -> Decimal:
    """A zero at the currency's minor unit (``0.00``), like the amounts it sits beside."""
    return amount if amount else Decimal(0).scaleb(-minor_units(currency))


class _Numbers:
    """Invoices' numbers, read once each per page (a page's entries are about at most ``limit`` invoices)."""

    def __init__(self, store: InvoiceStore, tenant: str) -> None:
        self._store, self._tenant = store, tenant
        self._known: dict[str, str | None] = {}

    def of(self, invoice: str | None) -> str | None:
        if invoice is None:
            return None
        if invoice not in self._known:
            try:
                self._known[invoice] = self._store.get(self._tenant, invoice).number
            except NotFound:
                self._known[invoice] = None
        return self._known[invoice]


def _lines(entry: JournalEntry, booked: date, settings: RevenueSettings, number: str | None) -> list[GLLine]:
    text = memo(entry, number)
    return [
        GLLine(
            date=booked,
            account=settings.code(line.account),
            account_name=ACCOUNT_NAMES[line.account],
            debit=_money(line.debit, entry.currency),
            credit=_money(line.credit, entry.currency),
            memo=text,
            customer=line.customer or entry.customer,
            entry=entry.id,
            currency=entry.currency,
        )
        for line in entry.lines
    ]


def page(
    store: InvoiceStore,
    tenant: str,
    settings: RevenueSettings,
    start: date | None = None,
    end: date | None = None,
    after: int = 0,
    limit: int = 1000,
    scan: int = SCAN,
) -> GLPage:
    """The lines of up to ``limit`` entries after ``after`` booked in ``[start, end)``, reading at most ``scan``."""
    if limit < 1:
        raise InvalidInput(f"'limit' must be at least 1; got {limit}", code="invalid_query")
    if start is not None and end is not None and start >= end:
        raise InvalidInput(
            f"'from' ({start}) must be before 'to' ({end}): the range is [from, to), days of the reporting time zone",
            code="invalid_query",
        )
    zone, numbers = ZoneInfo(settings.timezone), _Numbers(store, tenant)
    data: list[GLLine] = []
    entries, scanned, last = 0, 0, after
    for entry in store.journal(tenant, after):
        scanned, last = scanned + 1, entry.seq
        booked = accounting_day(entry, zone)
        if (start is None or booked >= start) and (end is None or booked < end):
            data += _lines(entry, booked, settings, numbers.of(entry.invoice))
            entries += 1
            if entries == limit:
                return GLPage(data=data, next=last, scanned=scanned)
        if scanned == scan:
            return GLPage(data=data, next=last, scanned=scanned)
    return GLPage(data=data, next=None, scanned=scanned)


def csv_bytes(lines: Iterable[GLLine]) -> bytes:
    """The lines as CSV (UTF-8, a header line, CRLF line ends as RFC 4180 says), amounts as plain decimal text."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    for line in lines:
        writer.writerow(
            [
                line.date.isoformat(),
                line.account,
                line.account_name,
                plain(line.debit),
                plain(line.credit),
                line.memo,
                line.customer or "",
                line.entry,
                line.currency,
            ]
        )
    return text.getvalue().encode()
