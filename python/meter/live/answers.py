"""What the live account state answers: a customer's standing, its balance per grant, and an entitlement check.

Amounts are ``Decimal`` in the customer's currency (JSON strings), quantities ``Decimal`` in the meter's units;
times are UTC. ``as_of`` says how fresh an answer is: every event acknowledged before it is reflected.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

import msgspec

__all__ = ["Access", "Balance", "Consumption", "GrantBalance", "NoAccess", "Standing", "UnitGrantBalance"]

#: Why a check answers ``has_access: false``.
NoAccess = Literal["not_entitled", "disabled", "limit_reached", "spend_ceiling", "balance_depleted"]


class GrantBalance(msgspec.Struct, kw_only=True):
    """One credit or prepaid commit of a subscription: what it granted and what is left of it."""

    subscription: str
    grant: str
    kind: Literal["credit", "commit"]
    priority: int
    start: datetime
    end: datetime
    amount: Decimal
    #: Drawn by finalized invoices (earlier cycles), and by the current cycle's usage so far.
    drawn_invoiced: Decimal
    drawn_current: Decimal
    #: Held by open reservations against the balance (assigned to grants in the order usage draws them).
    reserved: Decimal
    #: amount - drawn_invoiced - drawn_current - reserved, never below 0.
    remaining: Decimal


class Consumption(msgspec.Struct, kw_only=True):
    """One usage charge of the current cycle so far: what consumed the grants."""

    subscription: str
    price: str
    meter: str
    quantity: Decimal
    amount: Decimal
    #: What the grants pay of it (the rest is billed).
    drawn: Decimal


class Balance(msgspec.Struct, kw_only=True):
    customer: str
    currency: str
    #: Every event acknowledged before this instant is reflected; ``lag_ms`` is how long ago that was.
    as_of: datetime
    lag_ms: int
    #: The current billing cycle, ``[period_start, period_end)``.
    period_start: datetime | None
    period_end: datetime | None
    granted: Decimal
    reserved: Decimal
    #: What is left of every grant in force, after reservations.
    balance: Decimal
    #: The current cycle's usage charges so far, before grants pay them.
    spend: Decimal
    spend_ceiling: Decimal | None
    grants: list[GrantBalance]
    consumed: list[Consumption]

    @classmethod
    def none(cls, customer: str, now: datetime) -> Balance:
        """The balance of a customer without a subscription in force: nothing granted, nothing used."""
        zero = Decimal(0)
        return cls(
            customer=customer,
            currency="",
            as_of=now,
            lag_ms=0,
            period_start=None,
            period_end=None,
            granted=zero,
            reserved=zero,
            balance=zero,
            spend=zero,
            spend_ceiling=None,
            grants=[],
            consumed=[],
        )


class UnitGrantBalance(msgspec.Struct, kw_only=True):
    """A grant of units of a metered feature in force: what it granted and what is left of it after overage drew."""

    grant: str
    amount: Decimal
    remaining: Decimal
    priority: int
    start: datetime
    end: datetime


class Access(msgspec.Struct, kw_only=True):
    """The answer to "may this customer use this feature now?"."""

    customer: str
    feature: str
    has_access: bool
    kind: Literal["boolean", "static", "metered"] | None
    #: Why access is refused (None when it is granted).
    reason: NoAccess | None = None
    #: static: the configured value.
    value: str | None = None
    #: metered: the period's usage, its allowance, what is reserved, and what is left (never below 0).
    usage: Decimal | None = None
    limit: Decimal | None = None
    reserved: Decimal | None = None
    remaining: Decimal | None = None
    #: metered with a soft limit: the usage past the limit.
    overage: Decimal | None = None
    resets_at: datetime | None = None
    #: metered: the unit grants in force; what they have left is part of ``remaining``.
    grants: list[UnitGrantBalance] = []
    as_of: datetime

    @classmethod
    def not_entitled(cls, customer: str, feature: str, as_of: datetime) -> Access:
        """The answer for a feature the customer has no entitlement to (or a customer with no subscription)."""
        return cls(customer=customer, feature=feature, has_access=False, kind=None, reason="not_entitled", as_of=as_of)


class Standing(msgspec.Struct, kw_only=True):
    """A customer's live state: what alerts compare from one refresh to the next, and what checks read."""

    tenant: str
    customer: str
    currency: str
    as_of: datetime
    period_start: datetime | None
    period_end: datetime | None
    #: The current cycle's usage per meter (every dimension combination), and its rated charges (before grants).
    usage: dict[str, Decimal]
    spend: Decimal
    spend_ceiling: Decimal | None
    #: What is left of the money grants (None when the customer has none), and the grants granted.
    balance: Decimal | None
    granted: Decimal
    entitlements: dict[str, Access]
