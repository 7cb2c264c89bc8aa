"""How long outgoing events are kept: the outbox and its delivery log are bounded by age, not by history.

An event emitted more than the retention (default 30 days, as Stripe keeps its events; ``METER_EVENT_RETENTION_DAYS``)
ago is deleted with its deliveries once none of them is pending: a delivery still retrying (within its 3-day window)
keeps its event, and so does an event not yet fanned out to the tenant's endpoints. Journal entries, invoices and
payments are never pruned: they are the books; an event is only the news of a change they keep.

Pruning walks each tenant's outbox from its oldest event and stops at the first one it must keep, deleting at most
``batch`` events per synced write, so the cost of a pass is proportional to what it deletes.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import msgspec

from meter.billing.store import InvoiceStore
from meter.money.webhooks import records

__all__ = ["DEFAULT_RETENTION", "prune", "prune_all", "retention_from_env"]

DEFAULT_RETENTION = timedelta(days=30)


class _Head(msgspec.Struct):
    seq: int
    created_at: datetime


class _Status(msgspec.Struct):
    status: str


def retention_from_env() -> timedelta:
    """``METER_EVENT_RETENTION_DAYS`` (a positive number of days), else 30 days."""
    days = os.environ.get("METER_EVENT_RETENTION_DAYS")
    if not days:
        return DEFAULT_RETENTION
    try:
        value = float(days)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"METER_EVENT_RETENTION_DAYS must be a positive number of days; got {days!r}")
    return timedelta(days=value)


def prune(store: InvoiceStore, tenant: str, before: datetime, batch: int = 1_000) -> int:
    """Deletes the tenant's events emitted before ``before`` whose deliveries are all done; returns how many."""
    fanned_out = records.read(store, records.cursor_key(tenant))
    # Without a cursor the tenant never had an endpoint: no event of its is waiting to be fanned out.
    cursor = int(fanned_out) if fanned_out is not None else None
    pruned = 0
    while True:
        with store.transaction(tenant) as change:
            deleted = 0
            for key, raw in records.scan(store, records.outbox_key(tenant)):
                head = msgspec.json.decode(raw, type=_Head)
                if head.created_at >= before or (cursor is not None and head.seq > cursor):
                    break
                deliveries = list(records.scan(store, records.delivery_key(tenant, head.seq)))
                if any(msgspec.json.decode(value, type=_Status).status == "pending" for _, value in deliveries):
                    break
                for delivery, _ in deliveries:
                    endpoint = delivery.rsplit("/", 1)[1]
                    change.delete(delivery)
                    change.delete(records.by_endpoint_key(tenant, endpoint, head.seq))
                change.delete(key)
                deleted += 1
                if deleted == batch:
                    break
        pruned += deleted
        if deleted < batch:
            return pruned


def prune_all(store: InvoiceStore, now: datetime, retention: timedelta) -> int:
    """:func:`prune` of every tenant with events, keeping ``retention`` of them."""
    return sum(prune(store, tenant, now - retention) for tenant in records.tenants_under(store, "outbox/"))
