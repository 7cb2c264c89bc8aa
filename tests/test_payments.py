"""Payments in process: the dunning job on an injected clock, restarts, and the races between a charge and its webhook.

A scripted provider stands in for Stripe (the HTTP tests drive the real SDK against a fake Stripe); its answers are
listed in advance, and it records every request it is sent. Worked by hand: November's invoice of s1 is 30.00 EUR.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from conftest import OCT, Desk
from meter.billing.invoices import Invoice
from meter.billing.store import InvoiceStore
from meter.catalog.billing import Customer, Subscription
from meter.catalog.keys import KeyStore
from meter.money import ledger
from meter.money.payments import collect
from meter.money.payments.dunning import DunningJob, Payments
from meter.money.payments.provider import ChargeRequest, ChargeResult, OutcomeUnknown, RefundResult
from meter.money.payments.records import PaymentBody, RefundBody
from meter.server.errors import answer_of
from test_invoicing import base_fee


class Scripted:
    """A provider that answers from a script: ``ok``, ``decline`` or ``unknown`` (OutcomeUnknown), in order."""

    name = "stripe"

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.charges: list[ChargeRequest] = []
        self.refunds: list[tuple[str, int, str]] = []
        self.refund_script: list[str] = []

    def charge(self, request: ChargeRequest) -> ChargeResult:
        self.charges.append(request)
        step = self.script.pop(0) if self.script else "ok"
        if step == "unknown":
            raise OutcomeUnknown("network down")
        if step == "decline":
            return ChargeResult("failed", payment_intent=f"pi_{len(self.charges)}", error_code="card_declined")
        return ChargeResult("succeeded", payment_intent=f"pi_{request.idempotency_key}", charge="ch_1")

    def find(self, request: ChargeRequest) -> ChargeResult | None:
        return None

    def refund(
        self, payment_intent: str, amount_minor: int, idempotency_key: str, metadata: dict[str, str]
    ) -> RefundResult:
        self.refunds.append((payment_intent, amount_minor, idempotency_key))
        if self.refund_script and self.refund_script.pop(0) == "unknown":
            raise OutcomeUnknown("network down")
        return RefundResult("succeeded", refund=f"re_{len(self.refunds)}")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[KeyStore]:
    store = KeyStore(tmp_path / "keys")
    store.create_tenant("acme")
    yield store
    store.close()


def automatic(desk: Desk, provider: Scripted) -> tuple[Payments, Invoice]:
    """s1's November invoice, finalized for a customer collected automatically (not charged yet)."""
    desk.catalog.put_customer(
        "acme",
        Customer(
            id="c1",
            name="One",
            currency="EUR",
            collection="automatic",
            stripe_customer="cus_1",
            default_payment_method="pm_1",
        ),
    )
    desk.plan([[base_fee("30")]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
    [draft] = desk.invoicer.run("acme", "2026-11").invoices
    final, _ = desk.invoicer.finalize("acme", draft.id)  # no collector attached yet: nothing charged
    assert (final.collection, final.status) == ("automatic", "open")
    return Payments(secret_key="sk_test_x", provider=lambda key: provider), final


def trial_balance(store: InvoiceStore) -> dict[tuple[str, str | None], Decimal]:
    rows = ledger.balances(store.journal("acme"))
    assert sum(r.debit for r in rows) == sum(r.credit for r in rows)
    return {(r.account, r.customer): r.balance for r in rows if r.balance}


def test_the_job_on_an_injected_clock_follows_the_schedule_across_a_restart(desk: Desk, keys: KeyStore) -> None:
    provider = Scripted("decline", "decline", "ok")
    payments, invoice = automatic(desk, provider)
    store, catalog = desk.invoicer.store, desk.catalog
    clock = Clock(datetime.now(UTC))
    job = DunningJob(payments, keys, store, catalog, clock)
    assert job.run_once() == 1, "the first run finds the invoice a crash left unscheduled, and charges it"
    # The sweep read the journal's finalizations up to its cursor: the next one starts there and finds nothing new.
    [finalized] = [e for e in store.journal("acme") if e.kind == "invoice_finalized"]
    assert int(store.raw("collect_swept/acme") or b"0") >= finalized.seq
    assert payments.sweep(store, "acme", clock.now) == 0
    [first] = collect.attempts_of(store, "acme", invoice.id)
    assert (first.status, first.trigger, first.idempotency_key) == ("failed", "finalize", f"meter-acme-{invoice.id}-1")
    assert first.next_attempt_at is not None
    clock.now = first.next_attempt_at - timedelta(seconds=1)
    assert job.run_once() == 0
    # A restart: a new job, with nothing in memory, reads the schedule from the store.
    job = DunningJob(Payments(secret_key="sk_test_x", provider=lambda key: provider), keys, store, catalog, clock)
    clock.now = first.next_attempt_at
    assert job.run_once() == 1
    second = collect.attempts_of(store, "acme", invoice.id)[1]
    assert second.next_attempt_at == first.completed_at + timedelta(days=5)  # type: ignore[operator]
    clock.now = second.next_attempt_at  # type: ignore[assignment]
    assert job.run_once() == 1
    assert store.get("acme", invoice.id).status == "paid"
    assert [r.idempotency_key for r in provider.charges] == [f"meter-acme-{invoice.id}-{n}" for n in (1, 2, 3)]
    assert trial_balance(store) == {
        ("deferred_revenue", None): Decimal("30.00"),
        ("payments_clearing", None): Decimal("30.00"),
    }


def test_an_unknown_outcome_stays_pending_and_is_replayed_with_the_same_key(desk: Desk) -> None:
    provider = Scripted("unknown", "ok")
    payments, invoice = automatic(desk, provider)
    store = desk.invoicer.store
    pending = payments.collect(store, desk.catalog, "acme", invoice.id, "finalize")
    assert pending is not None and pending.status == "pending"
    done = payments.collect(store, desk.catalog, "acme", invoice.id, "manual")
    assert done is not None and (done.n, done.status) == (1, "succeeded")
    assert [r.idempotency_key for r in provider.charges] == [f"meter-acme-{invoice.id}-1"] * 2
    assert [r.amount_minor for r in provider.charges] == [3000, 3000]


def test_a_webhook_that_records_the_outcome_first_leaves_one_payment(desk: Desk) -> None:
    provider = Scripted()
    payments, invoice = automatic(desk, provider)
    store = desk.invoicer.store
    attempt = collect.start_attempt(store, "acme", invoice.id, "finalize", "cus_1", "pm_1")
    assert attempt is not None
    result = ChargeResult("succeeded", payment_intent="pi_x", charge="ch_x")
    with store.transaction("acme") as change:  # the webhook, before the synchronous answer is recorded
        collect.apply_outcome(change, invoice.id, 1, result)
    again = collect.finish_attempt(store, "acme", attempt, result)
    assert again.status == "succeeded"
    assert len(collect.list_payments(store, "acme", invoice.id)) == 1
    assert [e.type for e in store.outbox("acme")].count("payment.succeeded") == 1


def test_a_charge_that_lands_on_a_voided_invoice_becomes_credit_balance(desk: Desk) -> None:
    provider = Scripted()
    payments, invoice = automatic(desk, provider)
    store = desk.invoicer.store
    attempt = collect.start_attempt(store, "acme", invoice.id, "finalize", "cus_1", "pm_1")
    assert attempt is not None
    desk.invoicer.void("acme", invoice.id)  # while the charge is in flight
    collect.finish_attempt(store, "acme", attempt, ChargeResult("succeeded", payment_intent="pi_v"))
    assert store.balance("acme", "c1", "EUR") == Decimal("30.00")
    assert trial_balance(store) == {
        ("payments_clearing", None): Decimal("30.00"),
        ("customer_credit", "c1"): Decimal("30.00"),
    }


def test_a_refund_whose_outcome_was_lost_is_completed_not_made_twice(desk: Desk) -> None:
    provider = Scripted()
    payments, invoice = automatic(desk, provider)
    store = desk.invoicer.store
    payments.collect(store, desk.catalog, "acme", invoice.id, "finalize")
    [payment] = collect.list_payments(store, "acme", invoice.id)
    provider.refund_script = ["unknown"]
    with pytest.raises(OutcomeUnknown):
        payments.refund(store, "acme", payment.id, RefundBody(amount=Decimal("5"), reason="outage"))
    pending = collect.get_payment(store, "acme", payment.id)
    assert [r.status for r in pending.refunds] == ["pending"] and pending.amount_refunded == 0
    done = payments.refund(store, "acme", payment.id, RefundBody(amount=Decimal("5"), reason="outage"))
    assert (done.status, done.amount_refunded, len(done.refunds)) == ("partially_refunded", Decimal("5.00"), 1)
    assert [key for _, _, key in provider.refunds] == [f"meter-acme-{payment.id}-refund-1"] * 2
    assert trial_balance(store)[("refunds", None)] == Decimal("5.00")


def test_payment_records_round_trip_and_amounts_are_checked() -> None:
    from meter.money.payments.records import check_amount, from_minor, to_minor

    assert check_amount(Decimal("5"), "EUR") == Decimal("5.00") and str(check_amount(Decimal("5"), "JPY")) == "5"
    assert (to_minor(Decimal("12.34"), "EUR"), to_minor(Decimal("500"), "JPY")) == (1234, 500)
    assert from_minor(1234, "EUR") == Decimal("12.34")
    for bad in ("0.001", "0", "-1", "NaN", "Infinity", "1E+30"):
        with pytest.raises(ValueError):
            check_amount(Decimal(bad), "EUR")
    body = msgspec.json.decode(b'{"amount": 10.10}', type=RefundBody)
    assert body.amount == Decimal("10.10"), "a JSON number is read as its decimal text, never through a float"


def test_a_retry_after_the_schedule_ended_takes_the_next_number_and_key(desk: Desk) -> None:
    """The attempt numbers (and so the idempotency keys) never repeat, even once the collection record is gone."""
    provider = Scripted("decline", "ok")
    payments, invoice = automatic(desk, provider)
    store = desk.invoicer.store
    with store.transaction("acme") as change:
        change.put("dunning/acme", msgspec.json.encode({"retry_days": [], "after_last": "open"}))
    first = payments.collect(store, desk.catalog, "acme", invoice.id, "finalize")
    assert first is not None and (first.status, first.next_attempt_at) == ("failed", None)
    assert store.raw(f"collect/acme/{invoice.id}") is None, "no retry left: the invoice left the schedule, open"
    second = payments.collect(store, desk.catalog, "acme", invoice.id, "manual")
    assert second is not None and (second.n, second.status) == (2, "succeeded")
    assert [r.idempotency_key for r in provider.charges] == [f"meter-acme-{invoice.id}-{n}" for n in (1, 2)]


def test_a_refund_the_provider_refuses_is_recorded_failed_and_refused(desk: Desk) -> None:
    provider = Scripted()
    payments, invoice = automatic(desk, provider)
    store = desk.invoicer.store
    payments.collect(store, desk.catalog, "acme", invoice.id, "finalize")
    [payment] = collect.list_payments(store, "acme", invoice.id)
    provider.refund = lambda *args: RefundResult("failed", error_code="charge_disputed", error_message="disputed")  # type: ignore[method-assign]
    with pytest.raises(collect.Conflict) as refused:
        payments.refund(store, "acme", payment.id, RefundBody(amount=Decimal("5")))
    assert refused.value.code == "refund_failed" and "charge_disputed" in refused.value.message
    after = collect.get_payment(store, "acme", payment.id)
    assert ([r.status for r in after.refunds], after.amount_refunded, after.status) == (["failed"], 0, "succeeded")
    assert ("refunds", None) not in trial_balance(store)


def test_a_pending_attempt_is_never_failed_blind_when_the_stripe_key_is_gone(desk: Desk) -> None:
    provider = Scripted("unknown")
    payments, invoice = automatic(desk, provider)
    store = desk.invoicer.store
    pending = payments.collect(store, desk.catalog, "acme", invoice.id, "finalize")
    assert pending is not None and pending.status == "pending"
    keyless = Payments()  # the key was removed meanwhile
    still = keyless.collect(store, desk.catalog, "acme", invoice.id, "finalize")
    assert still is not None and (still.n, still.status) == (1, "pending"), "it may have reached Stripe: it waits"
    done = payments.collect(store, desk.catalog, "acme", invoice.id, "manual")
    assert done is not None and (done.n, done.status) == (1, "succeeded")


def test_refunding_an_overpayment_takes_back_the_credit_balance_it_left(desk: Desk) -> None:
    """30.00 owed, 50.00 paid by transfer: 20.00 credit balance; a 25.00 refund returns those 20.00, then 5.00."""
    provider = Scripted()
    payments, invoice = automatic(desk, provider)
    store = desk.invoicer.store
    paid = collect.record_manual(store, "acme", invoice.id, PaymentBody(amount=Decimal("50")))
    assert (paid.applied, paid.to_credit) == (Decimal("30.00"), Decimal("20.00"))
    assert store.balance("acme", "c1", "EUR") == Decimal("20.00")
    done = payments.refund(store, "acme", paid.id, RefundBody(amount=Decimal("25"), reason="overpaid"))
    assert (done.amount_refunded, done.credit_refunded) == (Decimal("25.00"), Decimal("20.00"))
    assert store.balance("acme", "c1", "EUR") == 0
    assert trial_balance(store)[("refunds", None)] == Decimal("5.00"), "only what went beyond the credit balance"
    assert trial_balance(store)[("cash", None)] == Decimal("25.00")


def test_a_provider_that_cannot_be_reached_is_a_503_to_retry() -> None:
    status, body, headers = answer_of(OutcomeUnknown("Stripe could not be reached (timeout); replayed later"))
    assert (status, body["code"], headers) == (503, "provider_unavailable", {"retry-after": "1"})
