"""The ``PaymentProvider`` interface: charge a customer's saved payment method, refund a charge.

A provider is given everything it sends, idempotency key included (the caller derives it from tenant, invoice and
attempt, and writes it down before the call): the same request replayed with the same key must return the first
outcome and never move money twice. A provider tells three outcomes apart: the charge succeeded, it failed (a
decline, a missing payment method: the attempt counts as failed), or nothing is known (a network error, a 5xx, a
payment still processing: :class:`OutcomeUnknown`, and the attempt stays pending, to be replayed).

A provider forgets idempotency keys after a while (Stripe: 24 hours). A pending attempt older than
:data:`KEY_LIFETIME` is therefore first looked up by what it carries besides its key (``find``: tenant, invoice and
attempt in the charge's metadata), and replayed only when the provider has no such charge.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, Protocol

import msgspec

from meter.exceptions import MeterError

__all__ = ["KEY_LIFETIME", "ChargeRequest", "ChargeResult", "OutcomeUnknown", "PaymentProvider", "RefundResult"]

#: How long a replayed idempotency key is trusted to return the first outcome (Stripe keeps keys 24 hours at least).
KEY_LIFETIME = timedelta(hours=23)


class ChargeRequest(msgspec.Struct, frozen=True):
    tenant: str
    invoice: str
    attempt: int
    #: In the currency's minor unit (an integer); ``currency`` in lower case, as Stripe takes it.
    amount_minor: int
    currency: str
    customer: str
    payment_method: str | None
    idempotency_key: str


class ChargeResult(msgspec.Struct, frozen=True):
    outcome: Literal["succeeded", "failed"]
    payment_intent: str | None = None
    charge: str | None = None
    error_code: str | None = None
    decline_code: str | None = None
    error_message: str | None = None


class RefundResult(msgspec.Struct, frozen=True):
    outcome: Literal["succeeded", "failed"]
    refund: str | None = None
    error_code: str | None = None
    error_message: str | None = None


class OutcomeUnknown(MeterError):
    """The provider could not be reached or did not say (a network error, a 5xx, a payment processing).

    What was asked may or may not have happened: replay it with the same idempotency key (an HTTP 503: repeating the
    request, or the dunning job, does; never twice).
    """

    code = "provider_unavailable"


class PaymentProvider(Protocol):
    name: str

    def charge(self, request: ChargeRequest) -> ChargeResult:
        """Charges the customer's payment method off-session, confirmed at once; raises :class:`OutcomeUnknown`."""
        ...

    def find(self, request: ChargeRequest) -> ChargeResult | None:
        """The outcome of the charge made for ``request`` before (found by its metadata), or None if there is none.

        Raises :class:`OutcomeUnknown` (also for a charge found still processing).
        """
        ...

    def refund(
        self, payment_intent: str, amount_minor: int, idempotency_key: str, metadata: dict[str, str]
    ) -> RefundResult:
        """Refunds part or all of what ``payment_intent`` collected; raises :class:`OutcomeUnknown`."""
        ...
