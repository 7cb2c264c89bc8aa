"""Payments: manual payments, automatic collection and its attempts, refunds, write-offs, dunning, Stripe's webhook.

Every store call runs on the pool (a provider call too: it waits for the network). Invariants: the tenant is the
key's, except on ``POST /v1/webhooks/stripe``, which takes no key: its tenant is the one the event's metadata names,
and the event must verify with that tenant's Stripe endpoint secret (a 400 ``invalid_signature`` applies nothing).
A refusal because of an invoice's or payment's state is a 409 (``invalid_state``, ``payments_not_configured``,
``no_payment_method``); a provider that cannot be reached is a 503 ``provider_unavailable`` whose retry completes
what was started (the same idempotency key), never starts it again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, cast

import msgspec

from meter.billing.invoices import Invoice
from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog
from meter.money.payments import collect
from meter.money.payments.dunning import Payments
from meter.money.payments.records import (
    Attempt,
    DunningSettings,
    Payment,
    PaymentBody,
    PaymentSettings,
    PaymentSettingsBody,
    PaymentSettingsView,
    RefundBody,
)
from meter.money.payments.webhook import Received, receive
from meter.server.context import Context, opened
from meter.server.errors import ApiError
from meter.server.http import Answer, Request
from meter.server.table import TEXT, Body, Param, PathParam, Route, enum

__all__ = ["ROUTES", "Collected", "DunningRunBody"]


class Collected(msgspec.Struct):
    """The invoice after a collection attempt, and the attempt (None when nothing was left to collect)."""

    invoice: Invoice
    attempt: Attempt | None


class DunningRunBody(msgspec.Struct, forbid_unknown_fields=True):
    #: The time the schedule is run at (RFC 3339): now when absent. A later time makes later retries due now.
    as_of: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


def _payments(ctx: Context) -> Payments:
    payments = getattr(ctx, "payments", None)
    if not isinstance(payments, Payments):
        raise ApiError(503, "store_unavailable", "payments are unavailable: the server is starting or read-only")
    return payments


def _invoices(ctx: Context) -> InvoiceStore:
    """The invoice store, or its Unavailable stand-in (whose every call is a 503), typed as the store."""
    return cast(InvoiceStore, opened(ctx.invoices))


def _catalog(ctx: Context) -> BillingCatalog:
    return cast(BillingCatalog, opened(ctx.billing))


async def record_payment(ctx: Context, request: Request, invoice_id: str, body: PaymentBody) -> Answer:
    payment = await ctx.call(collect.record_manual, _invoices(ctx), request.tenant, invoice_id, body)
    return 201, payment, {}


async def invoice_payments(ctx: Context, request: Request, invoice_id: str) -> Answer:
    return 200, await ctx.call(collect.list_payments, _invoices(ctx), request.tenant, invoice_id), {}


async def invoice_attempts(ctx: Context, request: Request, invoice_id: str) -> Answer:
    return 200, await ctx.call(collect.attempts_of, _invoices(ctx), request.tenant, invoice_id), {}


def _pay(payments: Payments, store: Any, catalog: Any, tenant: str, invoice_id: str) -> Collected:
    attempt = payments.collect(store, catalog, tenant, invoice_id, "manual")
    return Collected(invoice=store.get(tenant, invoice_id), attempt=attempt)


async def pay_invoice(ctx: Context, request: Request, invoice_id: str) -> Answer:
    payments = _payments(ctx)
    done = await ctx.call(_pay, payments, _invoices(ctx), _catalog(ctx), request.tenant, invoice_id)
    return 200, done, {}


async def mark_uncollectible(ctx: Context, request: Request, invoice_id: str) -> Answer:
    invoice = await ctx.call(collect.mark_uncollectible, _invoices(ctx), request.tenant, invoice_id)
    return 200, invoice, {}


async def list_payments(
    ctx: Context, request: Request, invoice: str | None, customer: str | None, status: str | None, method: str | None
) -> Answer:
    found = await ctx.call(collect.list_payments, _invoices(ctx), request.tenant, invoice, customer, status, method)
    return 200, found, {}


async def get_payment(ctx: Context, request: Request, payment_id: str) -> Answer:
    return 200, await ctx.call(collect.get_payment, _invoices(ctx), request.tenant, payment_id), {}


async def refund_payment(ctx: Context, request: Request, payment_id: str, body: RefundBody) -> Answer:
    payments = _payments(ctx)
    done = await ctx.call(payments.refund, _invoices(ctx), request.tenant, payment_id, body)
    return 201, done, {}


def _settings_view(store: Any, tenant: str) -> PaymentSettingsView:
    return PaymentSettingsView.of(collect.payment_settings(store, tenant))


def _put_settings(store: InvoiceStore, tenant: str, body: PaymentSettingsBody) -> PaymentSettingsView:
    with store.transaction(tenant) as change:
        raw = change.get(f"payment_settings/{tenant}")
        settings = PaymentSettings() if raw is None else msgspec.json.decode(raw, type=PaymentSettings)
        for name in ("stripe_secret_key", "stripe_webhook_secret"):
            if (value := getattr(body, name)) is not msgspec.UNSET:
                settings = msgspec.structs.replace(settings, **{name: value})
        change.put(f"payment_settings/{tenant}", settings)
    return PaymentSettingsView.of(settings)


async def get_payment_settings(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(_settings_view, _invoices(ctx), request.tenant), {}


async def put_payment_settings(ctx: Context, request: Request, body: PaymentSettingsBody) -> Answer:
    return 200, await ctx.call(_put_settings, _invoices(ctx), request.tenant, body), {}


def _put_dunning(store: Any, tenant: str, body: DunningSettings) -> DunningSettings:
    if body.retry_days != sorted(set(body.retry_days)):
        raise ApiError(
            400,
            "invalid_dunning",
            f"retry_days must be increasing days after the first failure, each once (such as [3, 5, 7]); got "
            f"{body.retry_days}",
        )
    with store.transaction(tenant) as change:
        change.put(f"dunning/{tenant}", body)
    return body


async def get_dunning(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(collect.dunning_settings, _invoices(ctx), request.tenant), {}


async def put_dunning(ctx: Context, request: Request, body: DunningSettings) -> Answer:
    return 200, await ctx.call(_put_dunning, _invoices(ctx), request.tenant, body), {}


async def run_dunning(ctx: Context, request: Request, body: DunningRunBody) -> Answer:
    payments, now = _payments(ctx), body.as_of or datetime.now(UTC)
    done = await ctx.call(payments.run_due, _invoices(ctx), _catalog(ctx), request.tenant, now)
    return 200, done, {}


async def stripe_webhook(ctx: Context, request: Request, stripe_signature: str) -> Answer:
    payments = _payments(ctx)
    return 200, await ctx.call(receive, payments, _invoices(ctx), request.body, stripe_signature), {}


INVOICE_ID = PathParam("invoice_id", description="The invoice's id")
PAYMENT_ID = PathParam("payment_id", "pay_000001", "The payment's id")
_EVENT_EXAMPLE = {
    "id": "evt_1",
    "object": "event",
    "type": "payment_intent.succeeded",
    "data": {"object": {"id": "pi_1", "object": "payment_intent", "metadata": {"tenant": "acme"}}},
}

ROUTES = [
    Route(
        "POST",
        "/v1/invoices/{invoice_id}/payments",
        "admin",
        record_payment,
        "Record a payment received outside a provider (bank transfer, check, cash): partial, whole, or more "
        "(the rest becomes the customer's credit balance)",
        status=201,
        returns=Payment,
        body=Body(PaymentBody, code="invalid_payment"),
        path_params=(INVOICE_ID,),
        errors=(409,),
    ),
    Route(
        "GET",
        "/v1/invoices/{invoice_id}/payments",
        "read",
        invoice_payments,
        "List an invoice's payments (failed charges included), with their refunds",
        returns=list[Payment],
        path_params=(INVOICE_ID,),
    ),
    Route(
        "GET",
        "/v1/invoices/{invoice_id}/attempts",
        "read",
        invoice_attempts,
        "List the attempts to collect an invoice automatically, with their outcomes and next retry",
        returns=list[Attempt],
        path_params=(INVOICE_ID,),
    ),
    Route(
        "POST",
        "/v1/invoices/{invoice_id}/pay",
        "admin",
        pay_invoice,
        "Charge the customer's payment method now (or complete the pending attempt, with its idempotency key)",
        returns=Collected,
        path_params=(INVOICE_ID,),
        errors=(409, 413, 415),
    ),
    Route(
        "POST",
        "/v1/invoices/{invoice_id}/mark-uncollectible",
        "admin",
        mark_uncollectible,
        "Write an open invoice off (what remains becomes bad debt; a later payment still settles it)",
        returns=Invoice,
        path_params=(INVOICE_ID,),
        errors=(409, 413, 415),
    ),
    Route(
        "GET",
        "/v1/payments/settings",
        "admin",
        get_payment_settings,
        "The tenant's payment provider settings (secrets shown by their last four characters)",
        returns=PaymentSettingsView,
    ),
    Route(
        "PUT",
        "/v1/payments/settings",
        "admin",
        put_payment_settings,
        "Set the tenant's Stripe secret key and webhook endpoint secret",
        returns=PaymentSettingsView,
        body=Body(PaymentSettingsBody, code="invalid_settings"),
    ),
    Route(
        "GET",
        "/v1/payments",
        "read",
        list_payments,
        "List payments",
        returns=list[Payment],
        params=(
            Param("invoice", TEXT, "Only this invoice's payments"),
            Param("customer", TEXT, "Only this customer's payments"),
            Param("status", enum("succeeded", "failed", "refunded", "partially_refunded"), "Only in this state"),
            Param("method", enum("stripe", "bank_transfer", "check", "cash", "other"), "Only made this way"),
        ),
        errors=(404,),  # `invoice` names one that does not exist
    ),
    Route(
        "GET",
        "/v1/payments/{payment_id}",
        "read",
        get_payment,
        "Get a payment with its refunds",
        returns=Payment,
        path_params=(PAYMENT_ID,),
    ),
    Route(
        "POST",
        "/v1/payments/{payment_id}/refunds",
        "admin",
        refund_payment,
        "Refund part or all of a payment (through Stripe for a Stripe payment; recorded for a manual one)",
        status=201,
        returns=Payment,
        body=Body(RefundBody, code="invalid_refund"),
        path_params=(PAYMENT_ID,),
        errors=(409,),
    ),
    Route("GET", "/v1/dunning", "read", get_dunning, "The tenant's dunning schedule", returns=DunningSettings),
    Route(
        "PUT",
        "/v1/dunning",
        "admin",
        put_dunning,
        "Set the dunning schedule: retries (days after the first failure) and what follows the last failure",
        returns=DunningSettings,
        body=Body(DunningSettings, code="invalid_dunning"),
    ),
    Route(
        "POST",
        "/v1/dunning/run",
        "admin",
        run_dunning,
        "Make the collection attempts due now (or at `as_of`), as the scheduled job does",
        returns=list[Attempt],
        body=Body(DunningRunBody, code="invalid_dunning"),
    ),
    Route(
        "POST",
        "/v1/webhooks/stripe",
        "public",
        stripe_webhook,
        "Receive Stripe's events (signed with the tenant's endpoint secret; each applied once)",
        returns=Received,
        body=Body(
            content={"application/json": ({"type": "object"}, _EVENT_EXAMPLE)},
            accept=("application/json",),
            accept_message="a Stripe event is JSON: Content-Type application/json",
        ),
        params=(Param("stripe-signature", TEXT, "Stripe's signature: t=<time>,v1=<HMAC-SHA256>", where="header"),),
        errors=(400,),
    ),
]
