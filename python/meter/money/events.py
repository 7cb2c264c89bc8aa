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

__all__ = ["EVENT_TYPES", "Event", "EventType"]

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
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)


class Event(msgspec.Struct):
    """An outbox record: ``data`` is the object the event is about (the invoice, credit note or payment) as JSON."""

    #: ``evt_<tenant's sequence number>``: unique within the tenant, the same at every delivery attempt.
    id: str
    seq: int
    tenant: str
    type: EventType
    created_at: datetime
    data: Any
