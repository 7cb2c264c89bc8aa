"""Money in and out of an invoice, each in one :meth:`~meter.billing.store.InvoiceStore.transaction`.

A payment writes its record, the invoice's new amounts (and status: ``paid`` once nothing remains), its balanced
journal entry (cash for a manual payment, payments clearing for Stripe; an overpayment goes to the customer's credit
balance, which the next finalized invoice draws on; a payment on an uncollectible invoice recovers bad debt) and its
events (``payment.succeeded``, and ``invoice.paid`` when it settles the invoice) in one synced batch. A failed
attempt writes the attempt, a failed payment record, the next step of the dunning schedule and its events
(``payment.failed``, ``invoice.payment_failed``) together. A refund is written ``pending`` before a provider is asked
and completed after, with its entry and ``payment.refunded``; a manual payment's refund is recorded at once.

Nothing here calls a provider: :mod:`meter.money.payments.dunning` does, between the transactions.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from meter.billing.invoices import Invoice
from meter.billing.store import Change, InvoiceStore, invoice_summary, settle
from meter.exceptions import Conflict, InvalidInput, NotFound
from meter.money import ledger
from meter.money.payments.provider import ChargeResult, RefundResult
from meter.money.payments.records import (
    Attempt,
    Collection,
    DunningSettings,
    Method,
    Payment,
    PaymentBody,
    PaymentSettings,
    Refund,
    RefundBody,
    check_amount,
    to_minor,
)

__all__ = [
    "Conflict",
    "apply_outcome",
    "attempt_key",
    "attempts_of",
    "dunning_settings",
    "external_refund",
    "finish_attempt",
    "finish_refund",
    "get_payment",
    "list_payments",
    "mark_uncollectible",
    "payment_settings",
    "record_manual",
    "schedule",
    "start_attempt",
    "start_refund",
]

_ZERO = Decimal(0)
_T = TypeVar("_T", bound=msgspec.Struct)


def attempt_key(tenant: str, invoice: str, n: int) -> str:
    return f"attempt/{tenant}/{invoice}/{n:04d}"


def _read(change: Change, key: str, type_: type[_T]) -> _T | None:
    raw = change.get(key)
    return None if raw is None else msgspec.json.decode(raw, type=type_)


def _invoice(change: Change, invoice_id: str) -> Invoice:
    invoice = _read(change, f"invoice/{change.tenant}/{invoice_id}", Invoice)
    if invoice is None:
        raise NotFound(f"no invoice {invoice_id!r}")
    return invoice


def _payment(change: Change, payment_id: str) -> Payment:
    payment = _read(change, f"payment/{change.tenant}/{payment_id}", Payment)
    if payment is None:
        raise NotFound(f"no payment {payment_id!r}")
    return payment


def _scan(store: InvoiceStore, prefix: str, type_: type[_T]) -> Iterator[_T]:
    for _, raw in store.raw_items(prefix):
        yield msgspec.json.decode(raw, type=type_)


def get_payment(store: InvoiceStore, tenant: str, payment_id: str) -> Payment:
    raw = store.raw(f"payment/{tenant}/{payment_id}")
    if raw is None:
        raise NotFound(f"no payment {payment_id!r}")
    return msgspec.json.decode(raw, type=Payment)


def list_payments(
    store: InvoiceStore,
    tenant: str,
    invoice: str | None = None,
    customer: str | None = None,
    status: str | None = None,
    method: str | None = None,
) -> list[Payment]:
    """The tenant's payments in the order they were recorded, filtered; an invoice's are read from its index."""
    if invoice is not None:
        store.get(tenant, invoice)  # 404 for an invoice that does not exist
        ids = [key.rsplit("/", 1)[1] for key, _ in store.raw_items(f"payment_invoice/{tenant}/{invoice}/")]
        payments = [get_payment(store, tenant, i) for i in ids]
    else:
        payments = list(_scan(store, f"payment/{tenant}/", Payment))
    wanted = {"customer": customer, "status": status, "method": method}
    for name, value in wanted.items():
        if value is not None:
            payments = [p for p in payments if getattr(p, name) == value]
    return payments


def attempts_of(store: InvoiceStore, tenant: str, invoice: str) -> list[Attempt]:
    store.get(tenant, invoice)  # 404 for an invoice that does not exist
    return list(_scan(store, f"attempt/{tenant}/{invoice}/", Attempt))


def dunning_settings(store: InvoiceStore, tenant: str) -> DunningSettings:
    raw = store.raw(f"dunning/{tenant}")
    return DunningSettings() if raw is None else msgspec.json.decode(raw, type=DunningSettings)


def payment_settings(store: InvoiceStore, tenant: str) -> PaymentSettings:
    raw = store.raw(f"payment_settings/{tenant}")
    return PaymentSettings() if raw is None else msgspec.json.decode(raw, type=PaymentSettings)


def _apply(
    change: Change,
    invoice: Invoice,
    amount: Decimal,
    method: Method,
    date: datetime,
    reference: str | None = None,
    attempt: int | None = None,
    payment_intent: str | None = None,
    charge: str | None = None,
) -> Payment:
    """Records a payment of ``amount`` on ``invoice`` with its entry and events (see the module doc)."""
    tenant = change.tenant
    recovered = invoice.status == "uncollectible"
    if invoice.status == "void":  # voided while a charge was in flight: it owes nothing, the money is credit
        settled, applied = msgspec.structs.replace(invoice, amount_paid=(invoice.amount_paid or _ZERO) + amount), _ZERO
    else:
        settled, applied = settle(invoice, amount, "payment", change.now)
    if recovered and settled.amount_remaining == 0:
        settled = msgspec.structs.replace(settled, status="paid", paid_at=change.now)
    payment = Payment(
        id=f"pay_{change.number('payment'):06d}",
        invoice=invoice.id,
        customer=invoice.customer,
        amount=amount,
        currency=invoice.currency,
        method=method,
        status="succeeded",
        date=date,
        created_at=change.now,
        reference=reference,
        amount_refunded=_zero_like(amount),
        applied=applied,
        to_credit=amount - applied,
        recovered=recovered,
        attempt=attempt,
        payment_intent=payment_intent,
        charge=charge,
    )
    account: ledger.PaymentAccount = "payments_clearing" if method == "stripe" else "cash"
    change.post(ledger.payment_received(invoice, payment.id, amount, applied, account, date, recovered=recovered))
    change.put(f"payment/{tenant}/{payment.id}", payment)
    change.put(f"payment_invoice/{tenant}/{invoice.id}/{payment.id}", b"")
    if payment_intent is not None:
        change.put(f"payment_intent/{tenant}/{payment_intent}", payment.id.encode())
    change.put(f"invoice/{tenant}/{invoice.id}", settled)
    change.emit("payment.succeeded", _data(payment))
    if settled.status == "paid" and invoice.status != "paid":
        change.emit("invoice.paid", invoice_summary(settled))
        change.delete(f"collect/{tenant}/{invoice.id}")
    return payment


def _zero_like(amount: Decimal) -> Decimal:
    """Zero with ``amount``'s digits (``0.00`` for ``5.00``)."""
    return amount - amount


def _data(payment: Payment) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(payment)
    return data


def record_manual(store: InvoiceStore, tenant: str, invoice_id: str, body: PaymentBody) -> Payment:
    """A payment received outside a provider (a bank transfer, a check...): partial, whole, or more (credit)."""
    with store.transaction(tenant) as change:
        invoice = _invoice(change, invoice_id)
        if invoice.status in ("draft", "void"):
            raise Conflict(
                f"invoice {invoice_id!r} is {invoice.status}; payments are recorded on open, paid (the payment "
                "becomes credit balance) or uncollectible invoices: finalize the draft first",
                "invalid_state",
            )
        if body.currency is not None and body.currency != invoice.currency:
            raise InvalidInput(
                f"invoice {invoice_id!r} is in {invoice.currency}; a payment on it must be in {invoice.currency} too "
                f"(got {body.currency}): convert it first",
                code="invalid_currency",
            )
        amount = check_amount(body.amount, invoice.currency)
        return _apply(change, invoice, amount, body.method, body.date or change.now, body.reference)


def mark_uncollectible(store: InvoiceStore, tenant: str, invoice_id: str) -> Invoice:
    """Writes an open invoice off: what remains owed becomes bad debt; a later payment still settles it."""
    with store.transaction(tenant) as change:
        return _write_off(change, _invoice(change, invoice_id))


def _write_off(change: Change, invoice: Invoice) -> Invoice:
    if invoice.status != "open":
        raise Conflict(
            f"invoice {invoice.id!r} is {invoice.status}; only an open invoice can be marked uncollectible",
            "invalid_state",
        )
    written = msgspec.structs.replace(invoice, status="uncollectible", uncollectible_at=change.now)
    if invoice.amount_remaining:
        change.post(ledger.written_off(invoice, invoice.amount_remaining, change.now))
    change.put(f"invoice/{change.tenant}/{invoice.id}", written)
    change.delete(f"collect/{change.tenant}/{invoice.id}")
    change.emit("invoice.uncollectible", invoice_summary(written))
    return written


# Automatic collection: an attempt is written pending, the provider called, then its outcome recorded.


def start_attempt(
    store: InvoiceStore,
    tenant: str,
    invoice_id: str,
    trigger: str,
    customer: str | None,
    payment_method: str | None,
) -> Attempt | None:
    """The attempt to send to the provider: the pending one if there is one (replayed), else a new one, written.

    None when there is nothing to collect (the invoice was paid, voided or written off since it was scheduled).
    """
    with store.transaction(tenant) as change:
        invoice = _invoice(change, invoice_id)
        state_key = f"collect/{tenant}/{invoice_id}"
        state = _read(change, state_key, Collection) or Collection(invoice=invoice_id)
        if state.pending is not None:
            pending = _read(change, attempt_key(tenant, invoice_id, state.pending), Attempt)
            if pending is not None and pending.status == "pending":
                return pending
        remaining = invoice.amount_remaining or _ZERO
        collectible = invoice.status == "open" or (invoice.status == "uncollectible" and trigger == "manual")
        if not collectible or remaining <= 0:
            change.delete(state_key)
            if trigger == "manual":
                raise Conflict(
                    f"invoice {invoice_id!r} is {invoice.status} with {remaining} {invoice.currency} remaining; "
                    "only an open or uncollectible invoice with something left to pay can be collected",
                    "invalid_state",
                )
            return None
        n = state.attempts + 1
        while change.get(attempt_key(tenant, invoice_id, n)) is not None:  # a schedule that ended left attempts
            n += 1
        attempt = Attempt(
            invoice=invoice_id,
            n=n,
            status="pending",
            amount=remaining,
            amount_minor=to_minor(remaining, invoice.currency),
            currency=invoice.currency,
            idempotency_key=f"meter-{tenant}-{invoice_id}-{n}",
            created_at=change.now,
            trigger=trigger,  # type: ignore[arg-type]  # checked by the callers: finalize, dunning, manual
            customer=customer,
            payment_method=payment_method,
        )
        change.put(attempt_key(tenant, invoice_id, n), attempt)
        change.put(state_key, msgspec.structs.replace(state, attempts=n, pending=n, next_attempt_at=None))
        return attempt


def finish_attempt(store: InvoiceStore, tenant: str, attempt: Attempt, result: ChargeResult) -> Attempt:
    """Records a pending attempt's outcome (once: an outcome recorded already, by a webhook, stands)."""
    with store.transaction(tenant) as change:
        return apply_outcome(change, attempt.invoice, attempt.n, result)


def apply_outcome(change: Change, invoice_id: str, n: int, result: ChargeResult) -> Attempt:
    """The outcome of attempt ``n`` applied in ``change``: a payment, or a failure and the next dunning step.

    A success whose PaymentIntent was applied before is not applied again; a failure recorded after a success (or a
    second failure) changes nothing.
    """
    tenant = change.tenant
    key = attempt_key(tenant, invoice_id, n)
    attempt = _read(change, key, Attempt)
    if attempt is None:
        raise NotFound(f"no attempt {n} to collect invoice {invoice_id!r}")
    if attempt.status == "succeeded" or (attempt.status == "failed" and result.outcome == "failed"):
        return attempt
    invoice = _invoice(change, invoice_id)
    state_key = f"collect/{tenant}/{invoice_id}"
    state = _read(change, state_key, Collection) or Collection(invoice=invoice_id, attempts=n)
    done = msgspec.structs.replace(
        attempt,
        status=result.outcome,
        completed_at=change.now,
        payment_intent=result.payment_intent or attempt.payment_intent,
        charge=result.charge or attempt.charge,
        error_code=result.error_code,
        decline_code=result.decline_code,
        error_message=result.error_message,
    )
    if result.outcome == "succeeded":
        known = change.get(f"payment_intent/{tenant}/{result.payment_intent}") if result.payment_intent else None
        if known is None:
            payment = _apply(
                change,
                invoice,
                attempt.amount,
                "stripe",
                change.now,
                attempt=n,
                payment_intent=result.payment_intent,
                charge=result.charge,
            )
            done = msgspec.structs.replace(done, payment=payment.id)
        else:
            done = msgspec.structs.replace(done, payment=known.decode())
        if state.pending in (None, n) or _invoice(change, invoice_id).status != "open":
            change.delete(state_key)  # (a late success of an older attempt leaves a newer pending one be)
        change.put(key, done)
        return done
    failures = (
        sum(
            1
            for i in range(1, state.attempts + 1)
            if i != n and (a := _read(change, attempt_key(tenant, invoice_id, i), Attempt)) and a.status == "failed"
        )
        + 1
    )
    first = state.first_failure_at or change.now
    settings = _read(change, f"dunning/{tenant}", DunningSettings) or DunningSettings()
    retry = settings.retry_days[failures - 1] if failures - 1 < len(settings.retry_days) else None
    next_at = None if retry is None else max(first + timedelta(days=retry), change.now)
    done = msgspec.structs.replace(done, next_attempt_at=next_at)
    change.put(key, done)
    failed = Payment(
        id=f"pay_{change.number('payment'):06d}",
        invoice=invoice_id,
        customer=invoice.customer,
        amount=attempt.amount,
        currency=attempt.currency,
        method="stripe",
        status="failed",
        date=change.now,
        created_at=change.now,
        amount_refunded=_zero_like(attempt.amount),
        attempt=n,
        payment_intent=done.payment_intent,
        charge=done.charge,
        error_code=done.error_code,
        error_message=done.error_message,
    )
    change.put(f"payment/{tenant}/{failed.id}", failed)
    change.put(f"payment_invoice/{tenant}/{invoice_id}/{failed.id}", b"")
    change.emit("payment.failed", _data(failed))
    if invoice.status == "open":  # not for an invoice paid or voided while the charge was in flight
        change.emit(
            "invoice.payment_failed",
            {
                **msgspec.json.decode(msgspec.json.encode(invoice_summary(invoice))),
                "attempt": n,
                "next_attempt_at": next_at,
                "error_code": done.error_code,
            },
        )
    if next_at is not None and invoice.status == "open":
        change.put(
            state_key,
            Collection(invoice=invoice_id, attempts=state.attempts, first_failure_at=first, next_attempt_at=next_at),
        )
    else:
        change.delete(state_key)
        if next_at is None and settings.after_last == "uncollectible" and invoice.status == "open":
            _write_off(change, invoice)
    return done


def schedule(store: InvoiceStore, tenant: str, invoice_ids: list[str], at: datetime) -> None:
    """Puts invoices up for collection at ``at`` (the dunning job makes their first attempt), in one write."""
    with store.transaction(tenant) as change:
        for invoice_id in invoice_ids:
            key = f"collect/{tenant}/{invoice_id}"
            if change.get(key) is None and change.get(attempt_key(tenant, invoice_id, 1)) is None:
                change.put(key, Collection(invoice=invoice_id, next_attempt_at=at))


# Refunds


def start_refund(store: InvoiceStore, tenant: str, payment_id: str, body: RefundBody) -> tuple[Payment, Refund]:
    """The refund to make: written pending for a provider's payment, recorded at once for a manual one.

    A pending refund of the same amount and reason (a request retried after its outcome was lost) is returned, to be
    completed with its own idempotency key, never made twice.
    """
    with store.transaction(tenant) as change:
        payment = _payment(change, payment_id)
        if payment.status == "failed":
            raise Conflict(f"payment {payment_id!r} failed: nothing was collected to refund", "invalid_state")
        pending = [r for r in payment.refunds if r.status == "pending"]
        amount = None if body.amount is None else check_amount(body.amount, payment.currency, "a refund's amount")
        for refund in pending:
            if (amount is None or refund.amount == amount) and refund.reason == body.reason:
                return payment, refund
        left = payment.amount - payment.amount_refunded - sum((r.amount for r in pending), _ZERO)
        amount = left if amount is None else amount
        if amount <= 0 or amount > left:
            raise InvalidInput(
                f"a refund must be at most what is left to refund on payment {payment_id!r} ({left} "
                f"{payment.currency}); got {amount}",
                code="invalid_refund",
            )
        n = len(payment.refunds) + 1
        refund = Refund(
            id=f"re_{change.number('refund'):06d}",
            n=n,
            amount=amount,
            reason=body.reason,
            status="pending",
            created_at=change.now,
            idempotency_key=f"meter-{tenant}-{payment_id}-refund-{n}" if payment.method == "stripe" else None,
        )
        payment = msgspec.structs.replace(payment, refunds=[*payment.refunds, refund])
        change.put(f"payment/{tenant}/{payment_id}", payment)
        if payment.method != "stripe":
            payment = _refunded(change, payment, refund.id, RefundResult("succeeded"))
            refund = payment.refunds[-1]
        return payment, refund


def finish_refund(store: InvoiceStore, tenant: str, payment_id: str, refund_id: str, result: RefundResult) -> Payment:
    with store.transaction(tenant) as change:
        return _refunded(change, _payment(change, payment_id), refund_id, result)


def _refunded(change: Change, payment: Payment, refund_id: str, result: RefundResult) -> Payment:
    [refund] = [r for r in payment.refunds if r.id == refund_id]
    if refund.status != "pending":
        return payment
    done = msgspec.structs.replace(
        refund,
        status=result.outcome,
        provider_refund=result.refund,
        error_code=result.error_code,
        error_message=result.error_message,
    )
    refunds = [done if r.id == refund_id else r for r in payment.refunds]
    payment = msgspec.structs.replace(payment, refunds=refunds)
    if result.outcome == "succeeded":
        refunded = payment.amount_refunded + refund.amount
        # An overpayment the customer still holds as credit balance is what a refund gives back first.
        overpaid = (payment.to_credit or _ZERO) - payment.credit_refunded
        from_credit = max(_ZERO, min(refund.amount, overpaid, change.balance(payment.customer, payment.currency)))
        payment = msgspec.structs.replace(
            payment,
            amount_refunded=refunded,
            credit_refunded=payment.credit_refunded + from_credit,
            status="refunded" if refunded == payment.amount else "partially_refunded",
        )
        invoice = _invoice(change, payment.invoice)
        account: ledger.PaymentAccount = "payments_clearing" if payment.method == "stripe" else "cash"
        change.post(
            ledger.payment_refunded(invoice, refund.id, payment.id, refund.amount, account, change.now, from_credit)
        )
        change.emit("payment.refunded", {**_data(payment), "refund": msgspec.to_builtins(done)})
    change.put(f"payment/{change.tenant}/{payment.id}", payment)
    return payment


def external_refund(change: Change, payment_id: str, refunded_total: Decimal, provider_refund: str | None) -> bool:
    """Records what the provider refunded beyond what meter knows (a refund made in Stripe's dashboard)."""
    payment = _payment(change, payment_id)
    known = payment.amount_refunded + sum((r.amount for r in payment.refunds if r.status == "pending"), _ZERO)
    extra = refunded_total - known
    if extra <= 0:
        return False
    refund = Refund(
        id=f"re_{change.number('refund'):06d}",
        n=len(payment.refunds) + 1,
        amount=extra,
        reason="refunded at the provider",
        status="pending",
        created_at=change.now,
    )
    payment = msgspec.structs.replace(payment, refunds=[*payment.refunds, refund])
    _refunded(change, payment, refund.id, RefundResult("succeeded", refund=provider_refund))
    return True
