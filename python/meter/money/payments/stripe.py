"""The Stripe payment provider, through the official ``stripe`` SDK (a ``StripeClient`` per tenant's secret key).

A charge is one ``POST /v1/payment_intents`` with ``confirm=true`` and ``off_session=true`` on the customer's
default payment method, carrying the caller's idempotency key (Stripe answers a replayed key with the first response
for 24 hours) and ``metadata`` naming the tenant, invoice and attempt, which Stripe copies onto the charge, so that a
webhook finds what it is about. A refund is ``POST /v1/refunds`` on the PaymentIntent, with its own key. ``find``
searches PaymentIntents by that metadata (``GET /v1/payment_intents/search``), for an attempt older than its key.

Outcomes: a ``succeeded`` intent is paid; a card error (402: declined, authentication required off-session...) or an
intent left ``requires_payment_method`` is a failure, as is any other 4xx (a customer or payment method Stripe does
not know); a network error, a 429 or a 5xx (after the SDK's own retries, which reuse the key) and an intent still
``processing`` are :class:`~meter.money.payments.provider.OutcomeUnknown`: the attempt stays pending and is replayed.

``api_base`` points the SDK elsewhere than ``https://api.stripe.com`` (the tests' fake Stripe, or stripe-mock):
``METER_STRIPE_API_BASE``.
"""

from __future__ import annotations

from typing import Any

import stripe

from meter.money.payments.provider import ChargeRequest, ChargeResult, OutcomeUnknown, RefundResult

__all__ = ["StripeProvider"]


class StripeProvider:
    name = "stripe"

    def __init__(self, secret_key: str, api_base: str | None = None, max_network_retries: int = 2) -> None:
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=max_network_retries,
        )

    def charge(self, request: ChargeRequest) -> ChargeResult:
        params: dict[str, Any] = {
            "amount": request.amount_minor,
            "currency": request.currency.lower(),
            "customer": request.customer,
            "off_session": True,
            "confirm": True,
            "metadata": _metadata(request),
        }
        if request.payment_method is not None:
            params["payment_method"] = request.payment_method
        try:
            intent = self._client.v1.payment_intents.create(
                params,  # type: ignore[arg-type]  # a plain dict for the SDK's TypedDict
                {"idempotency_key": request.idempotency_key},
            )
        except stripe.CardError as e:
            return _failed(e, _error(e).get("payment_intent"))
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as e:
            raise _unknown(e) from e
        except stripe.StripeError as e:
            return _failed(e, _error(e).get("payment_intent"))
        return _outcome(intent.to_dict())  # StripeObject is not a dict in this SDK: no .get()

    def find(self, request: ChargeRequest) -> ChargeResult | None:
        query = " AND ".join(f"metadata['{name}']:'{_quoted(value)}'" for name, value in _metadata(request).items())
        try:
            found = self._client.v1.payment_intents.search({"query": query})
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as e:
            raise _unknown(e) from e
        intents = found.to_dict().get("data") or []
        return _outcome(intents[0]) if intents else None

    def refund(
        self, payment_intent: str, amount_minor: int, idempotency_key: str, metadata: dict[str, str]
    ) -> RefundResult:
        try:
            refund = self._client.v1.refunds.create(
                {"payment_intent": payment_intent, "amount": amount_minor, "metadata": metadata},
                {"idempotency_key": idempotency_key},
            )
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as e:
            raise _unknown(e) from e
        except stripe.StripeError as e:
            return RefundResult("failed", error_code=e.code or type(e).__name__, error_message=_message(e))
        data = refund.to_dict()
        if data.get("status") in ("failed", "canceled"):
            return RefundResult("failed", refund=data["id"], error_code=data["status"], error_message="refund failed")
        return RefundResult("succeeded", refund=data["id"])


def _metadata(request: ChargeRequest) -> dict[str, str]:
    return {"tenant": request.tenant, "invoice": request.invoice, "attempt": str(request.attempt)}


def _unknown(e: stripe.StripeError) -> OutcomeUnknown:
    return OutcomeUnknown(f"Stripe could not be reached or failed ({type(e).__name__}: {e}); replayed later")


def _quoted(value: str) -> str:
    """A value inside a Stripe search query's single quotes."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _outcome(data: dict[str, Any]) -> ChargeResult:
    """What a PaymentIntent (as a dict) says of its charge; :class:`OutcomeUnknown` while it is undecided."""
    charge = data.get("latest_charge")
    charge_id = charge.get("id") if isinstance(charge, dict) else charge
    status = data.get("status")
    if status == "succeeded":
        return ChargeResult("succeeded", payment_intent=data["id"], charge=charge_id)
    if status in ("requires_payment_method", "canceled", "requires_action"):
        last = data.get("last_payment_error") or {}
        return ChargeResult(
            "failed",
            payment_intent=data["id"],
            charge=charge_id,
            error_code=last.get("code") or status,
            decline_code=last.get("decline_code"),
            error_message=last.get("message") or f"the PaymentIntent is {status}",
        )
    raise OutcomeUnknown(f"PaymentIntent {data['id']} is {status}; its webhook will tell")


def _error(e: stripe.StripeError) -> dict[str, Any]:
    body = e.json_body if isinstance(e.json_body, dict) else {}
    error = body.get("error")
    return error if isinstance(error, dict) else {}


def _message(e: stripe.StripeError) -> str:
    return str(e.user_message or _error(e).get("message") or type(e).__name__)


def _failed(e: stripe.StripeError, intent: Any) -> ChargeResult:
    error = _error(e)
    return ChargeResult(
        "failed",
        payment_intent=intent.get("id") if isinstance(intent, dict) else None,
        charge=error.get("charge"),
        error_code=e.code or error.get("type") or type(e).__name__,
        decline_code=error.get("decline_code"),
        error_message=_message(e),
    )
