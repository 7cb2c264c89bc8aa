"""What meter tells a tenant's systems: the outgoing event types and the outbox record each state change writes.

An event is written to the outbox (``outbox/<tenant>/<seq>`` in the invoices store) in the same synced write batch as
the state change it reports (:meth:`meter.billing.store.InvoiceStore.transaction`), so an event exists exactly when
its change does: never one without the other, even across a crash. Delivering it is the webhooks' job
(:mod:`meter.money.webhooks`), at least once; ``id`` is what a receiver deduplicates on (``webhook-id``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

import msgspec

__all__ = ["EVENT_TYPES", "Event", "EventType", "event_id", "event_seq"]

EventType = Literal[
    "invoice.created",
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "invoice.uncollectible",
    "credit_note.created",
    "payment.succeeded",
    "payment.failed",
    "payment.refunded",
    # Alerts on the live account state (meter.live.alerts, meter.live.anomaly): data is the crossing.
    "usage.threshold_crossed",
    "spend.threshold_crossed",
    "balance.low",
    "balance.depleted",
    "entitlement.exhausted",
    "usage.anomaly",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)


class Event(msgspec.Struct):
    """An outbox record: ``data`` is the object the event is about (the invoice, credit note or payment) as JSON."""

    #: ``evt_<tenant's sequence number>_<tenant>`` (:func:`event_id`): unique across tenants, as Standard Webhooks
    #: asks of a ``webhook-id`` (a receiver serving several tenants deduplicates on it), the same at every attempt.
    id: str
    seq: int
    tenant: str
    type: EventType
    created_at: datetime
    data: Any


def event_id(tenant: str, seq: int) -> str:
    """The id of the tenant's ``seq``-th event: the sequence number first, so a tenant's ids sort in order."""
    return f"evt_{seq:012d}_{tenant}"


def event_seq(event_id: str) -> int | None:
    """The sequence number an :func:`event_id` names, or None when the text is not one."""
    digits, _, tenant = event_id.removeprefix("evt_").partition("_")
    if event_id.startswith("evt_") and tenant and digits.isascii() and digits.isdigit() and len(digits) <= 18:
        return int(digits)
    return None
