"""Reading the ledger: pages of journal entries, the trial balance as of a time, and customers' balances.

Everything here is read from the journal (:meth:`meter.billing.store.InvoiceStore.journal`), the source of truth for
what is owed, paid and credited (design.md §8); nothing is kept beside it. The HTTP routes (``/v1/ledger/...``), the
CLI (``meter ledger``) and the export (:mod:`meter.lake.ledger`) all read through this module.

Invariants:

- Bounded memory: entries stream from the store, never the whole journal in a list. A page holds at most ``limit``
  entries and reads at most ``scan`` of them (:data:`SCAN`): a filter that matches rarely answers a short (even
  empty) page with ``next``, the cursor to carry on from, rather than reading the whole journal in one request.
  Balances hold one sum per (account, currency[, customer]).
- Times are half-open and compared as instants: an entry is in ``[start, end)`` when ``start <= created_at < end``;
  the trial balance ``as_of`` a time holds the entries created strictly before it.
- Amounts are the entries' own decimals, summed: never rounded, never a float.
- Filters are checked against the ledger's vocabulary (accounts, kinds) and an unknown value is a 400 that lists the
  allowed ones, never an empty answer that looks like "nothing happened".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import get_args

import msgspec

from meter.billing.store import InvoiceStore
from meter.exceptions import InvalidInput
from meter.money.ledger import (
    ACCOUNTS,
    NORMAL_DEBIT,
    PER_CUSTOMER,
    Account,
    AccountBalance,
    EntryKind,
    JournalEntry,
    balances,
)
from meter.pricing.money import minor_units

__all__ = [
    "KINDS",
    "SCAN",
    "CurrencyTotal",
    "CustomerBalance",
    "EntryFilter",
    "EntryPage",
    "TrialBalance",
    "customer_balances",
    "entries",
    "trial_balance",
]

#: The kinds of entries (what money event posted them), for filters and the OpenAPI document.
KINDS: tuple[str, ...] = get_args(EntryKind)
#: At most this many entries are read for one page, whatever the filters (see the module doc).
SCAN = 100_000
_ZERO = Decimal(0)


@dataclass(frozen=True)
class EntryFilter:
    """Which entries a page or an export holds: each given field must match (``None``: any)."""

    #: Entries with a line on this account.
    account: str | None = None
    #: Entries about this customer (the customer of their invoice).
    customer: str | None = None
    invoice: str | None = None
    kind: str | None = None
    #: ``[start, end)`` on ``created_at``.
    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        if self.account is not None and self.account not in ACCOUNTS:
            raise InvalidInput(
                f"'account' must be one of {', '.join(ACCOUNTS)}; got {self.account!r}", code="invalid_query"
            )
        if self.kind is not None and self.kind not in KINDS:
            raise InvalidInput(f"'kind' must be one of {', '.join(KINDS)}; got {self.kind!r}", code="invalid_query")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise InvalidInput(
                f"'from' ({self.start.isoformat()}) must be before 'to' ({self.end.isoformat()}): the range is "
                "[from, to)",
                code="invalid_query",
            )

    def matches(self, entry: JournalEntry) -> bool:
        return (
            (self.customer is None or entry.customer == self.customer)
            and (self.invoice is None or entry.invoice == self.invoice)
            and (self.kind is None or entry.kind == self.kind)
            and (self.start is None or entry.created_at >= self.start)
            and (self.end is None or entry.created_at < self.end)
            and (self.account is None or any(line.account == self.account for line in entry.lines))
        )


class EntryPage(msgspec.Struct):
    """A page of journal entries in the order they were posted (by ``seq``)."""

    data: list[JournalEntry]
    #: The ``after`` of the next page; null when the journal was read to its end.
    next: int | None
    #: How many entries were read to fill this page (at most ``SCAN``).
    scanned: int


class CurrencyTotal(msgspec.Struct):
    """A currency's debits and credits over every account: equal, in a ledger whose every entry balances."""

    currency: str
    debit: Decimal
    credit: Decimal


class TrialBalance(msgspec.Struct):
    """Each account's debits, credits and balance per currency, over the entries created before ``as_of``."""

    #: Null: every entry posted so far.
    as_of: datetime | None
    accounts: list[AccountBalance]
    totals: list[CurrencyTotal]
    #: True when every currency's debits equal its credits (always, unless the journal is corrupt).
    balanced: bool
    #: How many entries it sums.
    entries: int
    #: With ``by_customer``: the accounts kept per customer (receivable, credit balance), customer by customer.
    customers: list[AccountBalance] | None = None


class CustomerBalance(msgspec.Struct):
    """What a customer owes (open receivables) and holds as credit balance, in one currency, from the ledger."""

    customer: str
    currency: str
    #: The balance of ``accounts_receivable``: what its open invoices still ask for.
    owed: Decimal
    #: The balance of ``customer_credit``: overpayments and credit notes not yet applied to an invoice.
    credit: Decimal


def entries(
    store: InvoiceStore, tenant: str, where: EntryFilter, after: int = 0, limit: int = 100, scan: int = SCAN
) -> EntryPage:
    """Up to ``limit`` entries after ``after`` that ``where`` keeps, reading at most ``scan`` entries."""
    if limit < 1:
        raise InvalidInput(f"'limit' must be at least 1; got {limit}", code="invalid_query")
    # An invoice's or a customer's entries through the store's index of them; anything else reads the journal.
    if where.invoice is not None or where.customer is not None:
        source = store.posted_for(tenant, where.invoice, where.customer, after)
    else:
        source = store.journal(tenant, after)
    data: list[JournalEntry] = []
    scanned, last = 0, after
    for entry in source:
        if entry.seq <= after:
            continue
        scanned, last = scanned + 1, entry.seq
        if where.matches(entry):
            data.append(entry)
            if len(data) == limit:
                return EntryPage(data=data, next=last, scanned=scanned)
        if scanned == scan:
            return EntryPage(data=data, next=last, scanned=scanned)
    return EntryPage(data=data, next=None, scanned=scanned)


def _before(journal: Iterable[JournalEntry], as_of: datetime | None, counted: list[int]) -> Iterator[JournalEntry]:
    for entry in journal:
        if as_of is None or entry.created_at < as_of:
            counted[0] += 1
            yield entry


def _sorted(rows: Iterable[AccountBalance]) -> list[AccountBalance]:
    """In chart order, as :func:`meter.money.ledger.balances` gives them."""
    return sorted(rows, key=lambda r: (ACCOUNTS.index(r.account), r.currency, r.customer or ""))


def trial_balance(
    store: InvoiceStore, tenant: str, as_of: datetime | None = None, by_customer: bool = False
) -> TrialBalance:
    """The trial balance over the entries created before ``as_of`` (all of them when None), read in one pass."""
    counted = [0]
    if as_of is None:  # the running totals posting keeps: as many rows as accounts, whatever the history
        rows = _sorted(store.totals(tenant))
        counted[0] = store.posted(tenant)
    else:
        rows = balances(_before(store.journal(tenant), as_of, counted), by_customer=True)
    # One pass: per-customer rows are summed into their account's row.
    sums: dict[tuple[Account, str], list[Decimal]] = defaultdict(lambda: [_ZERO, _ZERO])
    totals: dict[str, list[Decimal]] = defaultdict(lambda: [_ZERO, _ZERO])
    for row in rows:
        pair = sums[(row.account, row.currency)]
        pair[0] += row.debit
        pair[1] += row.credit
        total = totals[row.currency]
        total[0] += row.debit
        total[1] += row.credit
    accounts = []
    for (account, currency), (debit, credit) in sums.items():  # in chart order: the rows come sorted so
        balance = debit - credit if account in NORMAL_DEBIT else credit - debit
        accounts.append(
            AccountBalance(
                account=account,
                currency=currency,
                debit=debit,
                credit=credit,
                balance=balance,
            )
        )
    currency_totals = [CurrencyTotal(currency=c, debit=d, credit=k) for c, (d, k) in sorted(totals.items())]
    return TrialBalance(
        as_of=as_of,
        accounts=accounts,
        totals=currency_totals,
        balanced=all(t.debit == t.credit for t in currency_totals),
        entries=counted[0],
        customers=[r for r in rows if r.customer is not None] if by_customer else None,
    )


def customer_balances(
    store: InvoiceStore, tenant: str, customer: str | None = None, as_of: datetime | None = None
) -> list[CustomerBalance]:
    """Each customer's (or one customer's) receivable and credit balance per currency, by customer and currency.

    Only customers the ledger has a line for; a customer whose both balances are zero is still listed (it had some).
    """
    if as_of is None:
        rows = _sorted(store.totals(tenant, customer))
    else:
        journal = store.posted_for(tenant, customer=customer) if customer is not None else store.journal(tenant)
        rows = balances(_before(journal, as_of, [0]), by_customer=True)
    found: dict[tuple[str, str], CustomerBalance] = {}
    for row in rows:
        if row.customer is None or row.account not in PER_CUSTOMER:
            continue
        key = (row.customer, row.currency)
        zero = Decimal(0).scaleb(-minor_units(row.currency))  # "0.00", like the amounts beside it
        current = found.get(key) or CustomerBalance(
            customer=row.customer, currency=row.currency, owed=zero, credit=zero
        )
        if row.account == "accounts_receivable":
            current = msgspec.structs.replace(current, owed=row.balance)
        else:
            current = msgspec.structs.replace(current, credit=row.balance)
        found[key] = current
    return [found[key] for key in sorted(found)]
