"""The ledger's invariants under any sequence of money events (hypothesis, stateful).

Invoices are built directly (one to three usage lines, in EUR or JPY, for two customers), saved as drafts and
finalized by the invoice store, untaxed or taxed by the tax module's arithmetic (an exclusive sales tax, an inclusive
VAT; credit notes carry their share back); then any sequence of payments (in full, partial, over), credit notes,
voids, refunds, write-offs, restarts (the store closed and opened again) and replays (an entry posted a second time)
is applied.
After every step:

- every entry balances, and the trial balance sums to zero per currency;
- each customer's receivable (``accounts_receivable``) equals its open invoices' ``amount_remaining``;
- each customer's ``customer_credit`` equals the credit balance the store keeps (``InvoiceStore.balance``);
- no cause is posted twice (entry ids unique, sequence numbers 1..n without a gap), and a replay writes nothing;
- the HTTP read side agrees: :func:`meter.money.reports.customer_balances` and the trial balance give the same.

Payments (manual: the provider's go through the same recording), refunds and write-offs are made by
:mod:`meter.money.payments.collect`.
Deterministic (``derandomize``): the same sequences on every run, 10-30 s as loaded as the machine is.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal

import msgspec
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from meter.billing.invoices import Invoice, InvoiceLine
from meter.billing.store import AlreadyPosted, InvoiceStore
from meter.catalog.tax import TaxRate
from meter.exceptions import Conflict
from meter.money import ledger, reports
from meter.money.payments import collect
from meter.money.payments.records import PaymentBody, RefundBody
from meter.money.tax.compute import describe, group_taxes, line_taxes, taxable_bases
from meter.money.tax.invoice import apply_tax, credit_note_tax
from meter.money.tax.provider import TaxResult
from meter.pricing.money import minor_units

T = "acme"
START = datetime(2026, 11, 1, tzinfo=UTC)
CUSTOMERS = ("c1", "c2")
CURRENCIES = ("EUR", "JPY")


#: Tax at finalization: none, an exclusive sales tax (the total grows) or an inclusive VAT (in the lines already).
RATES = {
    "untaxed": None,
    "sales tax": TaxRate(id="ny", name="NY", country="US", percentage=Decimal("8.875"), effective_from=START),
    "VAT": TaxRate(id="gb", name="VAT", country="GB", percentage=Decimal(20), effective_from=START, inclusive=True),
}


def money(minor: int, currency: str) -> Decimal:
    return Decimal(minor).scaleb(-minor_units(currency))


def taxed(rate: TaxRate) -> Callable[[Invoice], Invoice]:
    """What the tax module does at finalization with one rate for every line (its arithmetic, its rounding)."""

    def prepare(invoice: Invoice) -> Invoice:
        found = [
            t for b in taxable_bases(invoice.lines, invoice.currency) for t in line_taxes(b, [rate], invoice.currency)
        ]
        return apply_tax(invoice, TaxResult(found, group_taxes(found, {rate.id: describe(rate)}, invoice.currency)))

    return prepare


ManualMethod = Literal["bank_transfer", "check"]


class Payment(msgspec.Struct):
    id: str
    invoice: str
    amount: Decimal
    refunded: Decimal
    #: What refunds took back of the payment's overpayment, out of the credit balance.
    from_credit: Decimal = Decimal(0)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="meter-ledger-"))
        self.store = InvoiceStore(self.dir / "invoices")
        self.invoices: list[str] = []
        self.payments: list[Payment] = []
        self.clock = START

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def now(self) -> datetime:
        self.clock += timedelta(minutes=1)
        return self.clock

    def with_status(self, *statuses: str) -> list[Invoice]:
        return [i for i in (self.store.get(T, n) for n in self.invoices) if i.status in statuses]

    # Money events

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        currency=st.sampled_from(CURRENCIES),
        amounts=st.lists(st.integers(0, 5_000), min_size=1, max_size=3),
        tax=st.sampled_from(sorted(RATES)),
    )
    def finalize(self, customer: str, currency: str, amounts: list[int], tax: str) -> None:
        n = len(self.invoices) + 1
        lines = [
            InvoiceLine(
                kind="usage", description=f"line {i}", amount=money(a, currency), period_start=START, period_end=START
            )
            for i, a in enumerate(amounts)
        ]
        total = sum((line.amount for line in lines), money(0, currency))
        draft = Invoice(
            id=f"inv-{n:04d}",
            tenant=T,
            customer=customer,
            subscription=f"s{n}",
            currency=currency,
            reason="cycle",
            period_start=START,
            period_end=START,
            issued_at=START,
            lines=lines,
            subtotal=total,
            total=total,
        )
        assert self.store.save_draft(draft) is not None
        credit = self.store.balance(T, customer, currency)
        rate = RATES[tax]
        final = self.store.finalize(T, draft.id, now=self.now(), prepare=taxed(rate) if rate is not None else None)
        self.invoices.append(draft.id)
        assert final.credit_applied == min(credit, final.total), "the credit balance is applied, up to the total"
        event(f"finalize, {tax}" + (", credit balance applied" if final.credit_applied else ""))
        assert final.status == ("paid" if final.amount_remaining == 0 else "open")

    @precondition(lambda self: self.invoices)
    @rule(
        data=st.data(),
        how=st.sampled_from(["full", "partial", "over"]),
        method=st.sampled_from(["bank_transfer", "check"]),
    )
    def pay(self, data: st.DataObject, how: str, method: ManualMethod) -> None:
        payable = [i for i in self.with_status("open", "uncollectible") if i.amount_remaining]
        if not payable:
            return
        invoice = data.draw(st.sampled_from(payable))
        remaining = invoice.amount_remaining or Decimal(0)
        one = money(1, invoice.currency)
        if how == "partial" and remaining > one:
            amount = one * data.draw(st.integers(1, int(remaining / one) - 1))
        elif how == "over":
            amount = remaining + one * data.draw(st.integers(1, 3_000))
        else:
            amount = remaining
        recovered = invoice.status == "uncollectible"
        payment = collect.record_manual(self.store, T, invoice.id, PaymentBody(amount=amount, method=method))
        assert payment.recovered == recovered and payment.applied == min(amount, remaining)
        self.payments.append(Payment(payment.id, invoice.id, amount, Decimal(0)))
        event(f"pay {how}" + (" (recovers bad debt)" if recovered else ""))

    @precondition(lambda self: self.invoices)
    @rule(data=st.data())
    def credit_note(self, data: st.DataObject) -> None:
        creditable = []
        for invoice in self.with_status("open", "paid"):
            noted = sum((n.amount for n in self.store.credit_notes(T) if n.invoice == invoice.id), Decimal(0))
            if invoice.total - noted > 0:
                creditable.append((invoice, invoice.total - noted))
        if not creditable:
            return
        invoice, left = data.draw(st.sampled_from(creditable))
        one = money(1, invoice.currency)
        amount = one * data.draw(st.integers(1, int(left / one)))
        before = self.store.balance(T, invoice.customer, invoice.currency)
        self.store.credit(T, invoice.id, amount, "goodwill", now=self.now(), tax=credit_note_tax)
        to_credit = amount - min(amount, invoice.amount_remaining or Decimal(0))
        event("credit note: to credit balance" if to_credit else "credit note")
        assert self.store.balance(T, invoice.customer, invoice.currency) == before + to_credit

    @precondition(lambda self: self.invoices)
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        candidates = self.with_status("open", "uncollectible")
        if not candidates:
            return
        invoice = data.draw(st.sampled_from(candidates))
        if invoice.amount_paid:
            with pytest.raises(Conflict):
                self.store.void(T, invoice.id, now=self.now())
            event("void refused: paid on")
            return
        self.store.void(T, invoice.id, now=self.now())
        net = ledger.balances(self.store.posted_for(T, invoice.id))
        assert all(row.balance == 0 for row in net), "a void reverses everything the invoice posted"
        event(f"void {invoice.status}")

    @precondition(lambda self: self.payments)
    @rule(data=st.data(), whole=st.booleans())
    def refund(self, data: st.DataObject, whole: bool) -> None:
        refundable = [p for p in self.payments if p.amount > p.refunded]
        if not refundable:
            return
        payment = data.draw(st.sampled_from(refundable))
        left = payment.amount - payment.refunded
        invoice = self.store.get(T, payment.invoice)
        one = money(1, invoice.currency)
        amount = left if whole else one * data.draw(st.integers(1, int(left / one)))
        before = self.store.balance(T, invoice.customer, invoice.currency)
        done, _ = collect.start_refund(self.store, T, payment.id, RefundBody(amount=amount, reason="asked"))
        assert done.amount_refunded == payment.refunded + amount
        taken = done.credit_refunded - payment.from_credit
        assert self.store.balance(T, invoice.customer, invoice.currency) == before - taken
        payment.refunded, payment.from_credit = done.amount_refunded, done.credit_refunded
        event("refund" + (" (of credit balance)" if taken else ""))

    @precondition(lambda self: self.invoices)
    @rule(data=st.data())
    def write_off(self, data: st.DataObject) -> None:
        candidates = self.with_status("open")
        if not candidates:
            return
        invoice = data.draw(st.sampled_from(candidates))
        written = collect.mark_uncollectible(self.store, T, invoice.id)
        assert written.status == "uncollectible"
        event("write-off")

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = InvoiceStore(self.dir / "invoices")

    @precondition(lambda self: self.invoices)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """Posting an entry whose cause was posted already is refused, and the whole change with it."""
        journal = list(self.store.journal(T))
        if not journal:
            return
        entry = data.draw(st.sampled_from(journal))
        with pytest.raises(AlreadyPosted), self.store.transaction(T) as change:
            change.put(f"marker/{T}/x", b"1")
            change.post(msgspec.structs.replace(entry, seq=0))
        assert list(self.store.journal(T)) == journal and self.store._db.get(f"marker/{T}/x".encode()) is None

    # Invariants

    @invariant()
    def the_ledger_holds(self) -> None:
        journal = list(self.store.journal(T))
        for entry in journal:
            ledger.check_balanced(entry)
        assert [e.seq for e in journal] == list(range(1, len(journal) + 1)), "gapless sequence numbers"
        assert len({e.id for e in journal}) == len(journal), "no cause posted twice"
        rows = ledger.balances(journal)
        for currency in CURRENCIES:
            assert sum(r.debit for r in rows if r.currency == currency) == sum(
                r.credit for r in rows if r.currency == currency
            ), "the trial balance sums to zero"
        receivable: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        credit: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for r in rows:
            if r.account == "accounts_receivable":
                receivable[(r.customer or "", r.currency)] += r.balance
            elif r.account == "customer_credit":
                credit[(r.customer or "", r.currency)] += r.balance
        remaining: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for invoice in self.with_status("open"):
            remaining[(invoice.customer, invoice.currency)] += invoice.amount_remaining or Decimal(0)
        for customer in CUSTOMERS:
            for currency in CURRENCIES:
                key = (customer, currency)
                assert receivable[key] == remaining[key], f"{key}: receivable = open invoices' remaining"
                assert credit[key] == self.store.balance(T, customer, currency), f"{key}: credit = store.balance"
        # What the routes read says the same.
        read = {(b.customer, b.currency): b for b in reports.customer_balances(self.store, T)}
        for key, b in read.items():
            assert (b.owed, b.credit) == (receivable[key], credit[key]), key
        trial = reports.trial_balance(self.store, T)
        assert trial.balanced and trial.entries == len(journal)


LedgerMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_the_ledger_holds_under_any_sequence_of_money_events = LedgerMachine.TestCase


def test_a_negative_invoice_leaves_what_the_customer_is_owed_as_credit_balance(tmp_path: Path) -> None:
    store = InvoiceStore(tmp_path / "invoices")
    line = InvoiceLine(
        kind="adjustment",
        description="late usage credited",
        amount=Decimal("-10.00"),
        period_start=START,
        period_end=START,
    )
    store.save_draft(
        Invoice(
            id="inv-1",
            tenant=T,
            customer="c1",
            subscription="s1",
            currency="EUR",
            reason="cycle",
            period_start=START,
            period_end=START,
            issued_at=START,
            lines=[line],
            subtotal=line.amount,
            total=line.amount,
        )
    )
    store.finalize(T, "inv-1", now=START)
    [balance] = reports.customer_balances(store, T)
    assert (balance.owed, balance.credit) == (Decimal(0), Decimal("10.00"))
    assert store.balance(T, "c1", "EUR") == Decimal("10.00")
