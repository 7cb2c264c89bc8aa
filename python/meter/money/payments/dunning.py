"""Automatic collection and dunning: charge an invoice through its provider, and retry on a schedule when that fails.

An invoice finalized with ``collection: automatic`` is put up for collection (``collect/<tenant>/<invoice>``) in
one write after its finalization committed, then charged at once (a single finalization) or by the next run of the
job (an invoicing run's many invoices). Each attempt is written ``pending`` with its idempotency key before the
provider is called (never under the store's lock), and its outcome recorded after
(:mod:`meter.money.payments.collect`). A pending attempt, whatever left it pending (a crash between the call and the
record, a network error, a payment still processing), is completed by replaying the same request with the same key:
the provider answers with its first outcome, so the customer is charged once.

Dunning, per tenant (``GET/PUT /v1/dunning``): after the first failure, retries ``retry_days`` days after it
(3, 5 and 7 by default); after the last failure the invoice is marked uncollectible (``after_last``) or left open.
The next attempt's time is stored on the invoice's collection record, so a restart continues the schedule. The job
(:class:`DunningJob`) runs on the server's scheduler with an injectable clock; its first run after a start also puts
up for collection any automatic invoice a crash left between its finalization and that write.

Provider credentials: the tenant's (``PUT /v1/payments/settings``), else the server's (``METER_STRIPE_API_KEY``,
``METER_STRIPE_WEBHOOK_SECRET``: one tenant per installation); ``METER_STRIPE_API_BASE`` points the SDK at another
address (a fake Stripe, stripe-mock).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import msgspec

from meter.billing.invoices import Invoice
from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog
from meter.catalog.keys import KeyStore
from meter.exceptions import NotFound
from meter.money.payments.collect import (
    Conflict,
    finish_attempt,
    finish_refund,
    get_payment,
    payment_settings,
    schedule,
    start_attempt,
    start_refund,
)
from meter.money.payments.provider import (
    KEY_LIFETIME,
    ChargeRequest,
    ChargeResult,
    OutcomeUnknown,
    PaymentProvider,
)
from meter.money.payments.records import Attempt, Collection, Payment, RefundBody, to_minor

__all__ = ["DunningJob", "Payments"]

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


class _Head(msgspec.Struct):
    status: str = "draft"
    collection: str | None = None


class Payments:
    """Collection through the tenants' providers: charges, retries and refunds (the stores are given per call)."""

    def __init__(
        self,
        secret_key: str | None = None,
        webhook_secret: str | None = None,
        api_base: str | None = None,
        provider: Callable[[str], PaymentProvider] | None = None,
    ) -> None:
        #: The server's Stripe credentials, for tenants that set none of their own (a single-tenant installation).
        self.secret_key, self.webhook_secret, self.api_base = secret_key, webhook_secret, api_base
        self._make = provider or self._stripe
        self._providers: dict[str, PaymentProvider] = {}

    @classmethod
    def from_env(cls) -> Payments:
        return cls(
            os.environ.get("METER_STRIPE_API_KEY") or None,
            os.environ.get("METER_STRIPE_WEBHOOK_SECRET") or None,
            os.environ.get("METER_STRIPE_API_BASE") or None,
        )

    def _stripe(self, secret_key: str) -> PaymentProvider:
        from meter.money.payments.stripe import StripeProvider  # the SDK is imported only when payments are used

        return StripeProvider(secret_key, self.api_base)

    def provider(self, store: InvoiceStore, tenant: str) -> PaymentProvider | None:
        """The tenant's provider: its own Stripe key, else the server's; None when neither is set."""
        key = payment_settings(store, tenant).stripe_secret_key or self.secret_key
        if key is None:
            return None
        if key not in self._providers:
            self._providers[key] = self._make(key)
        return self._providers[key]

    def endpoint_secret(self, store: InvoiceStore, tenant: str) -> str | None:
        return payment_settings(store, tenant).stripe_webhook_secret or self.webhook_secret

    # Charges

    def collect(
        self,
        store: InvoiceStore,
        catalog: BillingCatalog,
        tenant: str,
        invoice_id: str,
        trigger: str,
        now: datetime | None = None,
    ) -> Attempt | None:
        """One attempt to collect the invoice (or the completion of its pending one); None when nothing is owed.

        ``trigger`` ``manual`` (``POST /v1/invoices/{id}/pay``) refuses (409) what cannot be charged; otherwise an
        invoice whose customer has no Stripe customer, or a tenant with no provider, is a failed attempt (dunning
        goes on: the customer may add a card before the next one). A pending attempt older than the provider
        keeps its key (:data:`KEY_LIFETIME`, by ``now``) is looked up before it is replayed.
        """
        invoice = store.get(tenant, invoice_id)
        provider = self.provider(store, tenant)
        try:
            customer = catalog.get_customer(tenant, invoice.customer)
            stripe_customer, method = customer.stripe_customer, customer.default_payment_method
        except NotFound:
            stripe_customer = method = None
        if trigger == "manual":
            if provider is None:
                raise Conflict(
                    "no payment provider is configured: set the Stripe secret key with PUT /v1/payments/settings",
                    "payments_not_configured",
                )
            if stripe_customer is None:
                raise Conflict(
                    f"customer {invoice.customer!r} has no stripe_customer: set it (and default_payment_method) on "
                    "the customer, or record a manual payment",
                    "no_payment_method",
                )
        started = _now()
        attempt = start_attempt(store, tenant, invoice_id, trigger, stripe_customer, method)
        if attempt is None:
            return None
        if provider is None and attempt.customer is not None and attempt.created_at < started:
            # A pending attempt that may have reached Stripe, whose key is gone since: never failed blind (a new
            # attempt would charge again); it waits for a key to replay it with.
            return attempt
        if provider is None or attempt.customer is None:
            why = (
                ("payments_not_configured", "no payment provider is configured for the tenant")
                if provider is None
                else ("no_payment_method", f"customer {invoice.customer!r} has no stripe_customer")
            )
            result = ChargeResult("failed", error_code=why[0], error_message=why[1])
        else:
            request = ChargeRequest(
                tenant=tenant,
                invoice=invoice_id,
                attempt=attempt.n,
                amount_minor=attempt.amount_minor,
                currency=attempt.currency.lower(),
                customer=attempt.customer,
                payment_method=attempt.payment_method,
                idempotency_key=attempt.idempotency_key,
            )
            try:
                found = None
                if (now or _now()) - attempt.created_at >= KEY_LIFETIME:
                    found = provider.find(request)
                result = found or provider.charge(request)
            except OutcomeUnknown as e:
                print(
                    f"meter: tenant {tenant!r}: attempt {attempt.n} on {invoice_id}: {e}", file=sys.stderr, flush=True
                )
                return attempt
        return finish_attempt(store, tenant, attempt, result)

    def after_finalize(
        self, store: InvoiceStore, catalog: BillingCatalog, tenant: str, invoices: Sequence[Invoice]
    ) -> None:
        """Puts the automatic ones up for collection (one write), and charges a single one at once.

        Called after the finalization committed, outside every lock. Many invoices (an invoicing run) are left to
        the dunning job, so that a run never waits for a provider a million times.
        """
        due = [i.id for i in invoices if i.collection == "automatic" and i.status == "open"]
        if not due:
            return
        schedule(store, tenant, due, _now())
        if len(due) == 1:
            self.collect(store, catalog, tenant, due[0], "finalize")

    def run_due(self, store: InvoiceStore, catalog: BillingCatalog, tenant: str, now: datetime) -> list[Attempt]:
        """Every attempt due at ``now`` (and every pending one, replayed), in invoice order."""
        done = []
        for _, raw in store.raw_items(f"collect/{tenant}/"):
            state = msgspec.json.decode(raw, type=Collection)
            due = state.pending is not None or (state.next_attempt_at is not None and state.next_attempt_at <= now)
            if not due:
                continue
            try:
                trigger = "finalize" if state.attempts == 0 else "dunning"
                attempt = self.collect(store, catalog, tenant, state.invoice, trigger, now)
            except NotFound:  # the invoice is gone (a test's data dir reused...): nothing to collect
                continue
            if attempt is not None:
                done.append(attempt)
        return done

    def sweep(self, store: InvoiceStore, tenant: str, at: datetime) -> int:
        """Puts up for collection at ``at`` the open automatic invoices with no collection record and no attempt.

        Those a crash left between their finalization and its collection record. Only the invoices finalized since
        the last sweep are looked at: the journal's finalizations after the tenant's sweep cursor
        (``collect_swept/<tenant>``, written once they are put up), so a sweep costs what was finalized since, not the
        tenant's history.
        """
        cursor = f"collect_swept/{tenant}"
        after = int(store.raw(cursor) or b"0")
        missing, last = [], after
        for entry in store.journal(tenant, after):
            last = entry.seq
            if entry.kind != "invoice_finalized" or entry.invoice is None:
                continue
            head = msgspec.json.decode(store.raw(f"invoice/{tenant}/{entry.invoice}") or b"{}", type=_Head)
            if head.status != "open" or head.collection != "automatic":
                continue
            if store.raw(f"collect/{tenant}/{entry.invoice}") is None and not any(
                True for _ in store.raw_items(f"attempt/{tenant}/{entry.invoice}/")
            ):
                missing.append(entry.invoice)
        if missing:
            schedule(store, tenant, missing, at)
        if last != after:
            with store.transaction(tenant) as change:
                change.put(cursor, str(last).encode())
        return len(missing)

    # Refunds

    def refund(self, store: InvoiceStore, tenant: str, payment_id: str, body: RefundBody) -> Payment:
        """Refunds a payment: through its provider (with its own idempotency key) or, for a manual one, recorded.

        A refund the provider refuses is recorded ``failed`` on the payment and answered 409 ``refund_failed``.
        """
        provider = self.provider(store, tenant)
        before = get_payment(store, tenant, payment_id)
        if before.method == "stripe" and (provider is None or before.payment_intent is None):
            raise Conflict(
                f"payment {payment_id!r} was collected by Stripe, and no Stripe key is configured to refund it: "
                "set it with PUT /v1/payments/settings, then repeat the request",
                "payments_not_configured",
            )
        payment, refund = start_refund(store, tenant, payment_id, body)
        if refund.status != "pending":
            return payment
        assert provider is not None and payment.payment_intent is not None and refund.idempotency_key is not None
        metadata = {"tenant": tenant, "payment": payment_id, "refund": refund.id, "invoice": payment.invoice}
        amount = to_minor(refund.amount, payment.currency)
        result = provider.refund(payment.payment_intent, amount, refund.idempotency_key, metadata)
        payment = finish_refund(store, tenant, payment_id, refund.id, result)
        if result.outcome == "failed":
            raise Conflict(
                f"Stripe refused refund {refund.id} of payment {payment_id!r} ({result.error_code}: "
                f"{result.error_message}); it is recorded as failed, and nothing was refunded",
                "refund_failed",
            )
        return payment


class DunningJob:
    """The scheduled job: every tenant's due attempts, at the clock's time (injectable: tests never sleep)."""

    def __init__(
        self,
        payments: Payments,
        keys: KeyStore,
        store: InvoiceStore,
        catalog: BillingCatalog,
        clock: Clock = _now,
    ) -> None:
        self.payments, self.keys, self.store, self.catalog, self.clock = payments, keys, store, catalog, clock
        self.swept = False

    def run_once(self) -> int:
        """One pass over every tenant; returns the attempts made. One tenant's failure never stops another's."""
        now, made = self.clock(), 0
        for tenant in [t.id for t in self.keys.list_tenants()]:
            try:
                if not self.swept:
                    self.payments.sweep(self.store, tenant, now)
                made += len(self.payments.run_due(self.store, self.catalog, tenant, now))
            except Exception as e:  # noqa: BLE001 - reported; the next run tries again
                print(f"meter: dunning of tenant {tenant!r} failed: {e!r}", file=sys.stderr, flush=True)
        self.swept = True
        return made
