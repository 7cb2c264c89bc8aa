"""The key layout of outgoing webhooks in the invoices store, and the reads that walk it.

Every key is tenant-scoped (``<prefix>/<tenant>/...``; a tenant id is ASCII letters, digits, ``-`` and ``_``, so
``<prefix>/<tenant>/`` never prefixes another tenant's keys):

- ``endpoint/<tenant>/<endpoint id>``: an :class:`~meter.money.webhooks.endpoints.Endpoint` (its secret included);
- ``delivery/<tenant>/event/<seq:012d>/<endpoint id>``: a :class:`~meter.money.webhooks.deliveries.Delivery`, the
  state of one event's delivery to one endpoint (one prefix per event: an event's deliveries are one scan);
- ``delivery/<tenant>/endpoint/<endpoint id>/<seq:012d>``: empty, the index of an endpoint's deliveries;
- ``delivery/<tenant>/due/<due µs:016d>/<seq:012d>/<endpoint id>``: empty, one per pending delivery, in the order
  they are due (the worker reads the head of this queue);
- ``delivery/<tenant>/cursor``: the seq of the last outbox event fanned out (decimal text).

The outbox itself (``outbox/<tenant>/<seq:012d>``, a :class:`meter.money.events.Event`) is the lead's: this package
only reads it. Writes go through ``InvoiceStore.transaction`` (one synced batch, the tenant's lock held); reads
here are plain point reads and prefix scans.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Protocol

from meter.billing.store import InvoiceStore

__all__ = [
    "Writes",
    "by_endpoint_key",
    "cursor_key",
    "delivery_key",
    "due_key",
    "endpoint_key",
    "from_micros",
    "last_key",
    "micros",
    "outbox_key",
    "read",
    "scan",
    "seq_of",
    "tenants_under",
]


class Writes(Protocol):
    """What this package writes through: the ``Change`` of ``InvoiceStore.transaction``."""

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...


def endpoint_key(tenant: str, endpoint_id: str = "") -> str:
    return f"endpoint/{tenant}/{endpoint_id}"


def delivery_key(tenant: str, seq: int, endpoint_id: str = "") -> str:
    return f"delivery/{tenant}/event/{seq:012d}/{endpoint_id}"


def by_endpoint_key(tenant: str, endpoint_id: str, seq: int | None = None) -> str:
    return f"delivery/{tenant}/endpoint/{endpoint_id}/" + ("" if seq is None else f"{seq:012d}")


def due_key(tenant: str, due: datetime | None = None, seq: int = 0, endpoint_id: str = "") -> str:
    if due is None:
        return f"delivery/{tenant}/due/"
    return f"delivery/{tenant}/due/{micros(due):016d}/{seq:012d}/{endpoint_id}"


def cursor_key(tenant: str) -> str:
    return f"delivery/{tenant}/cursor"


def outbox_key(tenant: str, seq: int | None = None) -> str:
    return f"outbox/{tenant}/" + ("" if seq is None else f"{seq:012d}")


def seq_of(key: str) -> int:
    """The seq at the end of an outbox or index key."""
    return int(key.rsplit("/", 1)[1])


def micros(t: datetime) -> int:
    """Whole microseconds since the epoch (a due key sorts by it)."""
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(n: int) -> datetime:
    return datetime.fromtimestamp(n // 1_000_000, UTC).replace(microsecond=n % 1_000_000)


def read(store: InvoiceStore, key: str) -> bytes | None:
    """The value under ``key``, or None."""
    return store.raw(key)


def scan(
    store: InvoiceStore, prefix: str, *, start: str | None = None, backwards: bool = False
) -> Iterator[tuple[str, bytes]]:
    """``(key, value)`` under ``prefix`` in key order (or reverse), from ``start`` (inclusive) when given."""
    return store.raw_items(prefix, start=start, backwards=backwards)


def tenants_under(store: InvoiceStore, prefix: str) -> Iterator[str]:
    """The tenants with keys under ``prefix`` (``endpoint/``...), one seek each."""
    start: str | None = None
    while True:
        first = next(scan(store, prefix, start=start), None)
        if first is None:
            return
        tenant = first[0][len(prefix) :].split("/", 1)[0]
        yield tenant
        start = f"{prefix}{tenant}0"  # '0' sorts right after '/': the next tenant's first key


def last_key(store: InvoiceStore, prefix: str) -> str | None:
    """The greatest key under ``prefix``, or None."""
    for key, _ in scan(store, prefix, backwards=True):
        return key
    return None
