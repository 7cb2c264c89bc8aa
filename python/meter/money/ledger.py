"""The double-entry ledger: the accounts, the journal entry every money event posts, and the balances read from it.

Every money event (an invoice finalized, a credit note, a void, a payment, a refund, a write-off, a customer's credit
balance applied) posts one :class:`JournalEntry` whose debits equal its credits, in the same synced write batch as
the state change that causes it (:meth:`meter.billing.store.InvoiceStore.transaction`). Entries are immutable; a void
posts the reversal of what the invoice posted. An entry's ``id`` names its cause (``invoice.finalized:<invoice>``,
``payment:<payment>``...), and the store refuses a second entry of the same id, so each is written exactly once.

This module builds entries and reads balances; it stores nothing. Amounts are ``Decimal``, already rounded to the
currency's minor unit by whoever computed them (invoicing, tax, a payment's amount): the ledger never rounds, so
every figure traces back to an invoice line, a tax amount or a payment. A line's amount is never negative: a
negative amount (a discount line, a credit drawn) is posted to the other side.

The accounts (one chart for every tenant; per currency, and per customer where ``PER_CUSTOMER`` says so):

=====================  =========  ===================================================================
account                normally   holds
=====================  =========  ===================================================================
accounts_receivable    debit      what customers owe on open invoices
cash                   debit      manual payments received (bank transfer, check...)
payments_clearing      debit      payments collected by a provider (Stripe) and not yet paid out
unbilled_revenue       debit      usage consumed (earned) and not yet invoiced; an invoice moves it to receivables
revenue                credit     earned revenue, posted by recognition (:mod:`meter.money.revenue`); credit notes
                                  and promotional credits reduce it
deferred_revenue       credit     billed but not yet earned: fees in advance, prepaid commits
tax_payable            credit     tax collected for the authorities
customer_credit        credit     customers' credit balances (overpayments, credit notes past what was owed)
refunds                debit      money returned to customers (a contra-revenue account)
bad_debt               debit      receivables written off (an invoice marked uncollectible)
=====================  =========  ===================================================================
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Literal, Protocol, get_args

import msgspec

from meter.billing.invoices import CreditNote, Invoice, LineKind, LineTax

__all__ = [
    "ACCOUNTS",
    "NORMAL_DEBIT",
    "PER_CUSTOMER",
    "Account",
    "AccountBalance",
    "EntryKind",
    "FINALIZED_TO",
    "JournalEntry",
    "JournalLine",
    "Treatment",
    "Unbalanced",
    "balances",
    "credit_applied",
    "credit_note_issued",
    "invoice_finalized",
    "invoice_voided",
    "net_line_amounts",
    "payment_received",
    "payment_refunded",
    "revenue_recognized",
    "treatment",
    "written_off",
]

Account = Literal[
    "accounts_receivable",
    "cash",
    "payments_clearing",
    "unbilled_revenue",
    "revenue",
    "deferred_revenue",
    "tax_payable",
    "customer_credit",
    "refunds",
    "bad_debt",
]
ACCOUNTS: tuple[Account, ...] = get_args(Account)
#: Accounts whose balance is normally a debit (assets, expenses, contra-revenue); the others are normally credits.
NORMAL_DEBIT: frozenset[Account] = frozenset(
    {"accounts_receivable", "cash", "payments_clearing", "unbilled_revenue", "refunds", "bad_debt"}
)
#: Accounts kept per customer (the others are the tenant's, per currency).
PER_CUSTOMER: frozenset[Account] = frozenset({"accounts_receivable", "customer_credit"})
#: Where a payment lands: with a provider (collected automatically) or in the tenant's own hands (recorded by hand).
PaymentAccount = Literal["cash", "payments_clearing"]
EntryKind = Literal[
    "invoice_finalized",
    "invoice_voided",
    "credit_note",
    "credit_applied",
    "payment",
    "refund",
    "write_off",
    "revenue_recognized",
    "breakage",
]
#: How a finalized line reaches revenue (see :func:`treatment`).
Treatment = Literal["ratable", "usage", "commit", "drawdown", "immediate"]

_ZERO = Decimal(0)


class JournalLine(msgspec.Struct, omit_defaults=True):
    """One side of an entry: exactly one of ``debit`` and ``credit`` is positive, the other zero."""

    account: Account
    debit: Decimal = _ZERO
    credit: Decimal = _ZERO
    #: The customer, for the accounts kept per customer.
    customer: str | None = None


class JournalEntry(msgspec.Struct, omit_defaults=True):
    """A balanced, immutable journal entry; ``seq`` orders a tenant's entries (given by the store when posted)."""

    #: The cause, unique per tenant: ``<kind>:<object>`` (an invoice id, a credit note or payment number...).
    id: str
    tenant: str
    kind: EntryKind
    currency: str
    #: When the money event happened (a manual payment's own date, when it is given).
    created_at: datetime
    lines: list[JournalLine]
    customer: str | None = None
    invoice: str | None = None
    credit_note: str | None = None
    payment: str | None = None
    memo: str | None = None
    #: The accounting date, when it is not the day of ``created_at``: the last day a recognition entry covers, in
    #: the tenant's reporting time zone (a close of November posted on 3 December is November's).
    effective: date | None = None
    seq: int = 0


class AccountBalance(msgspec.Struct, omit_defaults=True):
    """An account's debits and credits for a currency (and customer), and its balance on its normal side."""

    account: Account
    currency: str
    debit: Decimal
    credit: Decimal
    #: ``debit - credit`` for a normally-debit account, ``credit - debit`` otherwise.
    balance: Decimal
    customer: str | None = None


class Unbalanced(AssertionError):
    """An entry whose debits and credits differ, or with a negative side: a bug, never written."""


def check_balanced(entry: JournalEntry) -> None:
    debit = sum((line.debit for line in entry.lines), _ZERO)
    credit = sum((line.credit for line in entry.lines), _ZERO)
    if debit != credit or any(line.debit < 0 or line.credit < 0 for line in entry.lines):
        raise Unbalanced(f"journal entry {entry.id} does not balance: debits {debit}, credits {credit}")


class _Lines:
    """Lines under construction: amounts summed per (account, customer, side); a negative amount changes side."""

    def __init__(self) -> None:
        self._sums: dict[tuple[Account, str | None], Decimal] = defaultdict(Decimal)

    def debit(self, account: Account, amount: Decimal, customer: str | None = None) -> None:
        self._sums[(account, customer if account in PER_CUSTOMER else None)] += amount

    def credit(self, account: Account, amount: Decimal, customer: str | None = None) -> None:
        self.debit(account, -amount, customer)

    def lines(self) -> list[JournalLine]:
        out = []
        for (account, customer), net in self._sums.items():
            if net > 0:
                out.append(JournalLine(account=account, debit=net, customer=customer))
            elif net < 0:
                out.append(JournalLine(account=account, credit=-net, customer=customer))
        return out


def _entry(
    kind: EntryKind, cause: str, invoice: Invoice, at: datetime, lines: _Lines, **refs: str | None
) -> JournalEntry:
    entry = JournalEntry(
        id=f"{kind}:{cause}",
        tenant=invoice.tenant,
        kind=kind,
        currency=invoice.currency,
        created_at=at,
        lines=lines.lines(),
        customer=invoice.customer,
        invoice=invoice.id,
        **refs,  # type: ignore[arg-type]  # credit_note, payment, memo: all str | None
    )
    check_balanced(entry)
    return entry


class BilledLine(Protocol):
    """What :func:`treatment` and :func:`net_line_amounts` read of an invoice line (recognition decodes only that)."""

    @property
    def kind(self) -> LineKind: ...
    @property
    def amount(self) -> Decimal: ...
    @property
    def meter(self) -> str | None: ...
    @property
    def grant(self) -> str | None: ...


class BilledInvoice(Protocol):
    @property
    def lines(self) -> Sequence[BilledLine]: ...
    @property
    def line_taxes(self) -> Sequence[LineTax]: ...


def net_line_amounts(invoice: BilledInvoice) -> list[Decimal]:
    """Each line's amount without the tax included in it (a line's amount includes tax only under inclusive rates)."""
    net = [line.amount for line in invoice.lines]
    for tax in invoice.line_taxes:
        if tax.inclusive:
            net[tax.line] -= tax.amount
    return net


def treatment(line: BilledLine, prepaid_grants: frozenset[str]) -> Treatment:
    """How a finalized line reaches revenue (ASC 606 / IFRS 15; :mod:`meter.money.revenue` recognizes it).

    - ``usage``: usage billed in arrears (a usage line, or an adjustment of one: a line with a meter) was earned
      as it was consumed, and recognized then as unbilled revenue; the invoice moves it to the receivable.
    - ``commit``: a prepaid commit bought is deferred revenue until usage draws it down or it expires (breakage).
    - ``drawdown``: a ``credit`` line drawing on a prepaid commit (its grant in ``prepaid_grants``) moves deferred
      revenue to the receivable: the usage it pays was recognized as usage.
    - ``immediate``: a promotional credit drawn reduces revenue when its invoice is finalized.
    - ``ratable``: everything else (fees in advance or in arrears, their adjustments, shortfalls, discounts) is
      deferred revenue, recognized by day over the line's own service period.
    """
    if line.kind == "commit":
        return "commit"
    if line.kind == "credit":
        return "drawdown" if line.grant in prepaid_grants else "immediate"
    if line.kind == "usage" or (line.kind == "adjustment" and line.meter is not None):
        return "usage"
    return "ratable"


#: The account a line of each treatment is credited to (debited, for a negative amount) when its invoice is finalized.
FINALIZED_TO: dict[Treatment, Account] = {
    "ratable": "deferred_revenue",
    "commit": "deferred_revenue",
    "drawdown": "deferred_revenue",
    "usage": "unbilled_revenue",
    "immediate": "revenue",
}


def invoice_finalized(invoice: Invoice, prepaid_grants: frozenset[str]) -> JournalEntry:
    """Receivable for the total (credit balance for a negative one); tax payable; each line as :func:`treatment` says.

    Nothing but a promotional credit reaches revenue here: fees are deferred, usage was earned (unbilled revenue),
    and recognition (:mod:`meter.money.revenue`) posts revenue by the day the service is given.
    """
    lines = _Lines()
    # A negative total (late usage credited back, say) is owed to the customer: credit balance, not a receivable.
    lines.debit("accounts_receivable", max(invoice.total, _ZERO), invoice.customer)
    lines.credit("customer_credit", max(-invoice.total, _ZERO), invoice.customer)
    lines.credit("tax_payable", invoice.tax or _ZERO)
    for line, net in zip(invoice.lines, net_line_amounts(invoice), strict=True):
        lines.credit(FINALIZED_TO[treatment(line, prepaid_grants)], net)
    return _entry("invoice_finalized", invoice.id, invoice, invoice.finalized_at or invoice.issued_at, lines)


def credit_applied(invoice: Invoice, amount: Decimal, at: datetime) -> JournalEntry:
    """The customer's credit balance applied to a newly finalized invoice: it owes that much less."""
    lines = _Lines()
    lines.debit("customer_credit", amount, invoice.customer)
    lines.credit("accounts_receivable", amount, invoice.customer)
    return _entry("credit_applied", invoice.id, invoice, at, lines)


def credit_note_issued(invoice: Invoice, note: CreditNote, to_receivable: Decimal) -> JournalEntry:
    """A credit note takes back revenue and its tax; it reduces what is owed, and the rest becomes credit balance.

    ``to_receivable`` is the part of the note that reduces the invoice's remaining amount; the rest of ``note.amount``
    (a note on a paid invoice) is credited to the customer's credit balance.
    """
    lines = _Lines()
    tax = note.tax or _ZERO
    lines.debit("revenue", note.amount - tax)
    lines.debit("tax_payable", tax)
    lines.credit("accounts_receivable", to_receivable, invoice.customer)
    lines.credit("customer_credit", note.amount - to_receivable, invoice.customer)
    return _entry("credit_note", note.number, invoice, note.created_at, lines, credit_note=note.number)


def invoice_voided(invoice: Invoice, posted: Iterable[JournalEntry], at: datetime) -> JournalEntry:
    """The exact reversal of everything ``posted`` for the invoice (its finalization, credit notes, credit applied)."""
    lines = _Lines()
    for entry in posted:
        for line in entry.lines:
            lines.credit(line.account, line.debit, line.customer)
            lines.debit(line.account, line.credit, line.customer)
    return _entry("invoice_voided", invoice.id, invoice, at, lines)


def payment_received(
    invoice: Invoice,
    payment: str,
    amount: Decimal,
    to_receivable: Decimal,
    account: PaymentAccount,
    at: datetime,
    recovered: bool = False,
) -> JournalEntry:
    """Money in: it settles the receivable up to ``to_receivable``; the rest (an overpayment) is credit balance.

    With ``recovered`` (the invoice had been written off), the settled part recovers bad debt instead.
    """
    lines = _Lines()
    lines.debit(account, amount)
    lines.credit("bad_debt" if recovered else "accounts_receivable", to_receivable, invoice.customer)
    lines.credit("customer_credit", amount - to_receivable, invoice.customer)
    return _entry("payment", payment, invoice, at, lines, payment=payment)


def payment_refunded(
    invoice: Invoice,
    refund: str,
    payment: str,
    amount: Decimal,
    account: PaymentAccount,
    at: datetime,
    from_credit: Decimal = _ZERO,
) -> JournalEntry:
    """Money back to the customer, out of where the payment landed.

    ``from_credit`` of it returns an overpayment the customer still holds as credit balance (which it reduces); the
    rest goes to the refunds (contra-revenue) account.
    """
    lines = _Lines()
    lines.debit("customer_credit", from_credit, invoice.customer)
    lines.debit("refunds", amount - from_credit)
    lines.credit(account, amount)
    return _entry("refund", refund, invoice, at, lines, payment=payment)


def written_off(invoice: Invoice, amount: Decimal, at: datetime) -> JournalEntry:
    """An invoice marked uncollectible: what remained owed becomes bad debt."""
    lines = _Lines()
    lines.debit("bad_debt", amount)
    lines.credit("accounts_receivable", amount, invoice.customer)
    return _entry("write_off", invoice.id, invoice, at, lines)


def revenue_recognized(
    tenant: str, currency: str, through: date, at: datetime, fees: Decimal, usage: Decimal, breakage: bool = False
) -> JournalEntry:
    """Revenue earned through the end of ``through`` (a day in the reporting zone) and not recognized before.

    ``fees``: deferred revenue earned by days of service; ``usage``: usage consumed (unbilled revenue, or the
    invoice's when it was billed first). A negative amount reverses (a voided fee). With ``breakage``, ``fees`` is
    what expired prepaid commits left unused (kind ``breakage``). One entry per day closed and currency: its id names
    them, so a close is posted once.
    """
    kind: EntryKind = "breakage" if breakage else "revenue_recognized"
    lines = _Lines()
    lines.debit("deferred_revenue", fees)
    lines.debit("unbilled_revenue", usage)
    lines.credit("revenue", fees + usage)
    entry = JournalEntry(
        id=f"{kind}:{through.isoformat()}/{currency}",
        tenant=tenant,
        kind=kind,
        currency=currency,
        created_at=at,
        lines=lines.lines(),
        effective=through,
        memo=f"{'breakage' if breakage else 'revenue recognized'} through {through.isoformat()}",
    )
    check_balanced(entry)
    return entry


def balances(entries: Iterable[JournalEntry], by_customer: bool = True) -> list[AccountBalance]:
    """Each account's debits, credits and balance per currency (and per customer for ``PER_CUSTOMER`` accounts).

    The trial balance: over any set of whole entries, the debits of all accounts equal their credits.
    """
    sums: dict[tuple[Account, str, str | None], list[Decimal]] = defaultdict(lambda: [_ZERO, _ZERO])
    for entry in entries:
        for line in entry.lines:
            customer = line.customer if by_customer else None
            pair = sums[(line.account, entry.currency, customer)]
            pair[0] += line.debit
            pair[1] += line.credit
    out = []
    for (account, currency, customer), (debit, credit) in sorted(
        sums.items(), key=lambda kv: (ACCOUNTS.index(kv[0][0]), kv[0][1], kv[0][2] or "")
    ):
        balance = debit - credit if account in NORMAL_DEBIT else credit - debit
        out.append(
            AccountBalance(
                account=account, currency=currency, debit=debit, credit=credit, balance=balance, customer=customer
            )
        )
    return out
