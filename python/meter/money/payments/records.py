"""The payment records the invoices store keeps, the bodies the API takes, and the checks of a payment's amount.

Amounts are ``Decimal`` in the invoice's currency, with at most its minor unit's digits (``10.005`` USD is refused,
never rounded); a provider is sent them in minor units (an integer: cents, or yen for JPY).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Context, Decimal
from typing import Annotated, Literal

import msgspec

from meter.exceptions import InvalidInput
from meter.pricing.exact import DECIMAL_BOUND
from meter.pricing.money import minor_units

__all__ = [
    "MANUAL_METHODS",
    "AfterLast",
    "Attempt",
    "AttemptStatus",
    "Collection",
    "DunningSettings",
    "Method",
    "Payment",
    "PaymentBody",
    "PaymentSettings",
    "PaymentSettingsBody",
    "PaymentSettingsView",
    "PaymentStatus",
    "Refund",
    "RefundBody",
    "check_amount",
    "from_minor",
    "to_minor",
]

#: How a payment was made: collected by Stripe, or recorded by hand (bank transfer, check, cash, other).
Method = Literal["stripe", "bank_transfer", "check", "cash", "other"]
MANUAL_METHODS: tuple[str, ...] = ("bank_transfer", "check", "cash", "other")
PaymentStatus = Literal["succeeded", "failed", "refunded", "partially_refunded"]
#: ``pending``: written before the provider is called; its outcome is not known yet (replayed with the same key).
AttemptStatus = Literal["pending", "succeeded", "failed"]
#: What dunning does after the last attempt failed: write the invoice off, or leave it open.
AfterLast = Literal["uncollectible", "open"]

_Reference = Annotated[str, msgspec.Meta(max_length=255)]
_Reason = Annotated[str, msgspec.Meta(max_length=1000)]
_Time = Annotated[datetime, msgspec.Meta(tz=True)]
_EXACT = Context(prec=80)


class Refund(msgspec.Struct):
    """Money returned on a payment: ``pending`` while the provider is asked (with ``idempotency_key``), then done."""

    id: str
    n: int
    amount: Decimal
    reason: str
    status: Literal["pending", "succeeded", "failed"]
    created_at: datetime
    idempotency_key: str | None = None
    provider_refund: str | None = None
    error_code: str | None = None
    error_message: str | None = None


class Payment(msgspec.Struct):
    """Money received (or a charge that failed) for an invoice; refunds are recorded on it."""

    id: str
    invoice: str
    customer: str
    amount: Decimal
    currency: str
    method: Method
    status: PaymentStatus
    #: When the money was received (a manual payment's own date), and when the payment was recorded.
    date: datetime
    created_at: datetime
    reference: str | None = None
    amount_refunded: Decimal = Decimal(0)
    #: The part of the amount that settled the invoice; the rest (an overpayment) became credit balance.
    applied: Decimal | None = None
    to_credit: Decimal | None = None
    #: What refunds took back of ``to_credit`` (the overpayment) out of the customer's credit balance.
    credit_refunded: Decimal = Decimal(0)
    #: The invoice had been written off: the settled part recovered bad debt.
    recovered: bool = False
    attempt: int | None = None
    payment_intent: str | None = None
    charge: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    refunds: list[Refund] = []


class Attempt(msgspec.Struct):
    """One attempt to collect an invoice through its provider, written ``pending`` before the provider is called."""

    invoice: str
    n: int
    status: AttemptStatus
    amount: Decimal
    #: The amount in the currency's minor unit, as sent to the provider (a replay sends exactly the same).
    amount_minor: int
    currency: str
    idempotency_key: str
    created_at: datetime
    #: What started it: the invoice's finalization, the dunning schedule, or ``POST /v1/invoices/{id}/pay``.
    trigger: Literal["finalize", "dunning", "manual"]
    completed_at: datetime | None = None
    provider: str = "stripe"
    customer: str | None = None
    payment_method: str | None = None
    payment_intent: str | None = None
    charge: str | None = None
    payment: str | None = None
    error_code: str | None = None
    decline_code: str | None = None
    error_message: str | None = None
    #: After a failure: when dunning tries again (None: no retry left).
    next_attempt_at: datetime | None = None


class Collection(msgspec.Struct, omit_defaults=True):
    """An invoice being collected automatically: where its dunning stands (restarts continue from here)."""

    invoice: str
    attempts: int = 0
    #: An attempt written but whose outcome is not recorded (completed by replaying its idempotency key).
    pending: int | None = None
    first_failure_at: datetime | None = None
    #: When the next attempt is due; None while one is pending or when none is left.
    next_attempt_at: datetime | None = None


class DunningSettings(msgspec.Struct, forbid_unknown_fields=True):
    """When failed automatic payments are retried: days after the first failure, then what happens."""

    retry_days: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=365)]], msgspec.Meta(max_length=20)] = (
        msgspec.field(default_factory=lambda: [3, 5, 7])
    )
    after_last: AfterLast = "uncollectible"


class PaymentSettings(msgspec.Struct, omit_defaults=True):
    """A tenant's provider credentials (stored; never answered in full)."""

    stripe_secret_key: str | None = None
    stripe_webhook_secret: str | None = None


_Secret = Annotated[str, msgspec.Meta(min_length=8, max_length=255)]


class PaymentSettingsBody(msgspec.Struct, forbid_unknown_fields=True):
    """What to change: a secret given is set, null removes it, absent leaves it as it is."""

    #: The Stripe secret key (``sk_live_...``, ``sk_test_...`` or a restricted ``rk_...``).
    stripe_secret_key: _Secret | None | msgspec.UnsetType = msgspec.UNSET
    #: The signing secret of the Stripe webhook endpoint that sends to ``/v1/webhooks/stripe`` (``whsec_...``).
    stripe_webhook_secret: _Secret | None | msgspec.UnsetType = msgspec.UNSET


class PaymentSettingsView(msgspec.Struct):
    """The settings as answered: whether each secret is set, and its last four characters."""

    stripe_secret_key: str | None
    stripe_webhook_secret: str | None

    @classmethod
    def of(cls, settings: PaymentSettings) -> PaymentSettingsView:
        return cls(_masked(settings.stripe_secret_key), _masked(settings.stripe_webhook_secret))


def _masked(secret: str | None) -> str | None:
    return None if secret is None else f"...{secret[-4:]}"


class PaymentBody(msgspec.Struct, forbid_unknown_fields=True):
    """A payment received outside a provider (a bank transfer, a check...)."""

    amount: Decimal
    method: Literal["bank_transfer", "check", "cash", "other"] = "bank_transfer"
    #: The bank's or check's reference, for reconciliation.
    reference: _Reference | None = None
    #: When it was received (RFC 3339); now when absent.
    date: _Time | None = None
    #: The invoice's currency, if given (checked).
    currency: str | None = None


class RefundBody(msgspec.Struct, forbid_unknown_fields=True):
    #: What to refund; what is left of the payment when absent.
    amount: Decimal | None = None
    reason: _Reason = ""


def check_amount(
    amount: Decimal, currency: str, what: str = "a payment's amount", code: str = "invalid_amount"
) -> Decimal:
    """``amount``: positive, finite, at most ``currency``'s minor-unit digits; returned at exactly that many digits."""
    digits = minor_units(currency)
    quantum = Decimal(1).scaleb(-digits)
    if not amount.is_finite() or amount <= 0 or amount >= DECIMAL_BOUND:
        raise InvalidInput(f"{what} must be a positive decimal amount of {currency}; got {amount}", code=code)
    if amount != amount.quantize(quantum, context=_EXACT):
        raise InvalidInput(
            f"{what} must have at most {digits} decimals, {currency}'s minor unit ({quantum} {currency}); got {amount}",
            code=code,
        )
    return amount.quantize(quantum, context=_EXACT)


def to_minor(amount: Decimal, currency: str) -> int:
    """``amount`` in ``currency``'s minor unit (``12.34`` USD is 1234; ``500`` JPY is 500): exact, or a bug."""
    minor = amount.scaleb(minor_units(currency), context=_EXACT)
    if minor != minor.to_integral_value():
        raise AssertionError(f"{amount} {currency} is not a whole number of its minor unit")
    return int(minor)


def from_minor(amount: int, currency: str) -> Decimal:
    """An amount in minor units back to a decimal amount of ``currency`` (``1234`` USD is ``12.34``)."""
    return Decimal(amount).scaleb(-minor_units(currency), context=_EXACT)
