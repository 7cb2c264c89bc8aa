"""Stripe's events (``POST /v1/webhooks/stripe``): verified with the tenant's endpoint secret, applied once each.

The tenant is named by the object's ``metadata.tenant`` (meter sets it on every PaymentIntent, and Stripe copies it
onto the charge); its endpoint secret (or the server's) verifies the ``Stripe-Signature`` header with
``stripe.Webhook.construct_event`` and a 300-second tolerance. A payload that does not verify is refused (400
``invalid_signature``) before anything is read from the store beyond that secret, and nothing is applied.

Each event id is applied once: its marker (``stripe_event/<tenant>/<evt>``) is written in the same transaction as
its effects, so Stripe's redelivery (or a replay by an attacker holding an old signed payload) changes nothing.
Applied: ``payment_intent.succeeded`` (the attempt's payment, unless the synchronous answer recorded it already),
``payment_intent.payment_failed`` (the attempt fails, dunning goes on), ``charge.refunded`` (what Stripe refunded
beyond the refunds meter made, such as one made in the dashboard). Other types are acknowledged and ignored.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

import msgspec
import stripe

from meter.billing.store import InvoiceStore
from meter.exceptions import InvalidInput
from meter.money.payments.collect import apply_outcome, attempt_key, external_refund
from meter.money.payments.dunning import Payments
from meter.money.payments.provider import ChargeResult
from meter.money.payments.records import from_minor

__all__ = ["HANDLED", "Received", "receive"]

HANDLED = frozenset({"payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded"})
TOLERANCE = 300


class Received(msgspec.Struct):
    """What became of a Stripe event: applied, a duplicate of one applied before, or a type meter ignores."""

    id: str
    type: str
    status: Literal["applied", "duplicate", "ignored"]


class _Object(msgspec.Struct):
    metadata: dict[str, str] = {}


class _Data(msgspec.Struct):
    object: _Object


class _Envelope(msgspec.Struct):
    id: str
    type: str
    data: _Data


def _refuse() -> InvalidInput:
    return InvalidInput(
        "the Stripe-Signature header does not verify with the endpoint secret of the event's tenant (its "
        "stripe_webhook_secret, set with PUT /v1/payments/settings), or is older than 300 seconds",
        code="invalid_signature",
    )


def receive(payments: Payments, store: InvoiceStore, payload: bytes, signature: str) -> Received:
    """Verifies ``payload`` and applies it once (see the module doc); ``invalid_signature`` when it does not verify."""
    try:
        envelope = msgspec.json.decode(payload, type=_Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise InvalidInput(
            "the body is not a Stripe event (JSON with id, type and data.object)", code="invalid_webhook"
        ) from None
    tenant = envelope.data.object.metadata.get("tenant")
    secret = payments.endpoint_secret(store, tenant) if tenant else payments.webhook_secret
    if secret is None:  # answered as a bad signature: whether a tenant set a secret is told to nobody
        raise _refuse()
    try:
        event = stripe.Webhook.construct_event(payload, signature, secret, tolerance=TOLERANCE)
    except stripe.SignatureVerificationError:
        raise _refuse() from None
    except ValueError:
        raise InvalidInput("the body is not valid JSON", code="invalid_webhook") from None
    whole: dict[str, Any] = event.to_dict()
    if tenant is None or whole["type"] not in HANDLED:
        return Received(whole["id"], whole["type"], "ignored")
    obj: dict[str, Any] = whole["data"]["object"]
    return _apply(store, tenant, whole["id"], whole["type"], whole.get("created"), obj)


def _apply(store: InvoiceStore, tenant: str, event_id: str, type_: str, created: Any, obj: dict[str, Any]) -> Received:
    """Applies a verified event of ``tenant`` once."""
    with store.transaction(tenant) as change:
        marker = f"stripe_event/{tenant}/{event_id}"
        if change.get(marker) is not None:
            return Received(event_id, type_, "duplicate")
        change.put(marker, msgspec.json.encode({"type": type_, "created": created}))
        metadata = obj.get("metadata") or {}
        if type_.startswith("payment_intent."):
            invoice, n = metadata.get("invoice"), metadata.get("attempt", "")
            if invoice is None or not n.isdigit() or change.get(attempt_key(tenant, invoice, int(n))) is None:
                return Received(event_id, type_, "ignored")
            charge = obj.get("latest_charge")
            if type_ == "payment_intent.succeeded":
                result = ChargeResult("succeeded", payment_intent=obj.get("id"), charge=_id(charge))
            else:
                last = obj.get("last_payment_error") or {}
                result = ChargeResult(
                    "failed",
                    payment_intent=obj.get("id"),
                    charge=_id(charge) or _id(last.get("charge")),
                    error_code=last.get("code") or "payment_failed",
                    decline_code=last.get("decline_code"),
                    error_message=last.get("message") or "the payment failed",
                )
            apply_outcome(change, invoice, int(n), result)
        else:  # charge.refunded
            intent = _id(obj.get("payment_intent"))
            payment = change.get(f"payment_intent/{tenant}/{intent}") if intent else None
            if payment is None:
                return Received(event_id, type_, "ignored")
            refunded = from_minor(int(obj.get("amount_refunded") or 0), str(obj.get("currency", "")).upper())
            external_refund(change, payment.decode(), Decimal(refunded), None)
        return Received(event_id, type_, "applied")


def _id(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value.get("id")) if value.get("id") else None
    return str(value) if value else None
