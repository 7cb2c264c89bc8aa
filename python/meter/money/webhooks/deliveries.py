"""Deliveries: the state of each (event, endpoint) pair, from the outbox to a 2xx or a give-up, and the log of it.

The worker (:mod:`~meter.money.webhooks.delivery`) calls these, on a thread, never on an event loop:

- ``fan_out`` reads the tenant's outbox after its cursor and, in one synced batch, writes a pending ``Delivery``
  per event and endpoint that wants it, its queue entry and the advanced cursor: an event is
  fanned out exactly once, and a crash before the batch loses nothing (the cursor did not move).
- ``due`` reads the head of the queue; ``record`` writes an attempt's outcome: delivered (a 2xx), pending again at
  the next time the backoff gives, or failed once that time would fall outside the retry window (the endpoint then
  becomes ``failing``). An attempt whose outcome was not recorded (a crash while it was in flight) is made again:
  delivery is at least once, and receivers dedupe on ``webhook-id``, the event's id.
- ``park`` fails a due delivery whose endpoint was deleted, disabled or is failing (``replay`` sends it later).

The API reads the log (``of_endpoint``, ``of_event``, ``events``) and replays (``replay_event``,
``replay_endpoint``): a replayed delivery is pending again with a fresh retry window.

Invariants: every write is one ``InvoiceStore.transaction`` of the tenant (its lock held, one synced batch), and
re-reads what it changes inside it, so the worker and a replay never overwrite each other's state; a pending
delivery has exactly one queue entry (``due_key`` of its ``next_attempt_at``), others none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import msgspec

from meter.billing.store import InvoiceStore
from meter.exceptions import InvalidInput, NotFound
from meter.money.events import Event, event_seq
from meter.money.webhooks import records
from meter.money.webhooks.endpoints import Endpoint, of_tenant

__all__ = [
    "FAN_OUT_BATCH",
    "HISTORY",
    "Attempt",
    "Delivery",
    "DeliveryPage",
    "DeliveryStatus",
    "EventPage",
    "EventReplayBody",
    "ReplayBody",
    "Replayed",
    "due",
    "events",
    "fan_out",
    "find_event",
    "of_endpoint",
    "of_event",
    "park",
    "prepare",
    "record",
    "replay_endpoint",
    "replay_event",
]

#: Events fanned out per batch (one synced write).
FAN_OUT_BATCH = 500
#: Attempts kept in a delivery's history (the latest).
HISTORY = 10
#: Deliveries one replay request re-queues at most (``more`` says when there are others: call again).
REPLAY_BATCH = 1000

DeliveryStatus = Literal["pending", "delivered", "failed"]


class Attempt(msgspec.Struct, kw_only=True):
    """One attempt: the answer's status (null when none came), or what went wrong, and the answer's first bytes."""

    at: datetime
    status: int | None = None
    error: str | None = None
    duration_ms: int = 0
    #: The first KiB of the answer's body, as text.
    response: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


class Delivery(msgspec.Struct, kw_only=True):
    """One event's delivery to one endpoint."""

    event: str
    seq: int
    type: str
    endpoint: str
    status: DeliveryStatus
    #: When the event was emitted.
    event_created_at: datetime
    #: The start of its retry window: when it was fanned out, or last replayed.
    started_at: datetime
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    #: The latest attempts, oldest first (at most 10).
    history: list[Attempt] = []


class DeliveryPage(msgspec.Struct):
    """Deliveries, newest event first; ``next`` (pass it as ``after``) is null on the last page."""

    data: list[Delivery]
    next: str | None


class EventPage(msgspec.Struct):
    """Outbox events, newest first; ``next`` (pass it as ``after``) is null on the last page."""

    data: list[Event]
    next: str | None


class Replayed(msgspec.Struct):
    """How many deliveries were queued again; ``more``: others remain (call again with the same body)."""

    replayed: int
    more: bool = False


class ReplayBody(msgspec.Struct, forbid_unknown_fields=True):
    """Re-send the endpoint's failed deliveries of the events emitted at or after ``since``."""

    since: Annotated[datetime, msgspec.Meta(tz=True)]


class EventReplayBody(msgspec.Struct, forbid_unknown_fields=True):
    """Re-send an event to every endpoint it was delivered (or failed) to, or to ``endpoint`` only."""

    endpoint: str | None = None


class _Head(msgspec.Struct):
    """What fanning out needs of an outbox event (its data is not decoded)."""

    id: str
    seq: int
    type: str
    created_at: datetime


def _decode(raw: bytes | None) -> Delivery | None:
    return None if raw is None else msgspec.json.decode(raw, type=Delivery)


def _cursor(store: InvoiceStore, tenant: str) -> int:
    raw = records.read(store, records.cursor_key(tenant))
    return int(raw) if raw is not None else 0


def _pending_after(store: InvoiceStore, tenant: str, cursor: int) -> Iterator[tuple[str, bytes]]:
    return records.scan(store, records.outbox_key(tenant), start=records.outbox_key(tenant, cursor + 1))


def fan_out(store: InvoiceStore, tenant: str, now: datetime, limit: int = FAN_OUT_BATCH) -> int:
    """Fans the next outbox events out to the endpoints that want them, in one batch; how many events it read."""
    if next(_pending_after(store, tenant, _cursor(store, tenant)), None) is None:
        return 0  # the common case, without the tenant's lock
    with store.transaction(tenant, now) as change:
        cursor = _cursor(store, tenant)  # again, under the lock
        endpoints = [e for e in of_tenant(store, tenant) if e.enabled]
        n = 0
        for _, raw in _pending_after(store, tenant, cursor):
            event = msgspec.json.decode(raw, type=_Head)
            for endpoint in endpoints:
                if endpoint.wants(event.type, event.seq):
                    _open(change, tenant, event, endpoint, now)
            cursor, n = event.seq, n + 1
            if n >= limit:
                break
        change.put(records.cursor_key(tenant), str(cursor).encode())
    return n


def _open(change: records.Writes, tenant: str, event: _Head, endpoint: Endpoint, now: datetime) -> None:
    delivery = Delivery(
        event=event.id,
        seq=event.seq,
        type=event.type,
        endpoint=endpoint.id,
        status="pending",
        event_created_at=event.created_at,
        started_at=now,
        next_attempt_at=now,
    )
    if endpoint.failing_since is not None:  # no automatic delivery: recorded failed, for a replay to re-send
        delivery.status, delivery.next_attempt_at, delivery.failed_at = "failed", None, now
        delivery.last_error = "not sent: the endpoint is failing; enable it, then replay"
    else:
        change.put(records.due_key(tenant, now, event.seq, endpoint.id), b"")
    change.put(records.delivery_key(tenant, event.seq, endpoint.id), msgspec.json.encode(delivery))
    change.put(records.by_endpoint_key(tenant, endpoint.id, event.seq), b"")


def due(store: InvoiceStore, tenant: str, now: datetime, limit: int) -> list[tuple[int, str]]:
    """``(seq, endpoint id)`` of the pending deliveries due at ``now``, the most overdue first."""
    found: list[tuple[int, str]] = []
    horizon = records.micros(now)
    for key, _ in records.scan(store, records.due_key(tenant)):
        when, seq, endpoint_id = key.rsplit("/", 3)[1:]
        if int(when) > horizon or len(found) >= limit:
            break
        found.append((int(seq), endpoint_id))
    return found


def prepare(store: InvoiceStore, tenant: str, seq: int, endpoint_id: str) -> tuple[Delivery, Endpoint | None, bytes]:
    """A due delivery, its endpoint (None once deleted) and the event's bytes (the body sent)."""
    delivery = _decode(records.read(store, records.delivery_key(tenant, seq, endpoint_id)))
    body = records.read(store, records.outbox_key(tenant, seq))
    if delivery is None or body is None:
        raise NotFound(f"no delivery of event {seq} to {endpoint_id}")
    raw = records.read(store, records.endpoint_key(tenant, endpoint_id))
    return delivery, (None if raw is None else msgspec.json.decode(raw, type=Endpoint)), body


def record(
    store: InvoiceStore,
    tenant: str,
    seq: int,
    endpoint_id: str,
    attempt: Attempt,
    delay: Callable[[int], timedelta],
    window: timedelta,
) -> Delivery | None:
    """Records an attempt: delivered, pending again after ``delay(attempts)``, or failed past the retry window.

    A delivery given up on marks its endpoint ``failing``. Returns the delivery as stored (None if it is gone).
    """
    with store.transaction(tenant, attempt.at) as change:
        delivery = _decode(records.read(store, records.delivery_key(tenant, seq, endpoint_id)))
        if delivery is None or delivery.status != "pending":
            return delivery  # replayed into another state, or recorded already
        _unqueue(change, tenant, delivery)
        delivery.attempts += 1
        delivery.history = [*delivery.history, attempt][-HISTORY:]
        delivery.last_attempt_at, delivery.last_status, delivery.last_error = attempt.at, attempt.status, attempt.error
        if attempt.ok:
            delivery.status, delivery.delivered_at, delivery.next_attempt_at = "delivered", attempt.at, None
        else:
            after = attempt.at + delay(delivery.attempts)
            if after <= delivery.started_at + window:
                delivery.next_attempt_at = after
                change.put(records.due_key(tenant, after, seq, endpoint_id), b"")
            else:
                delivery.status, delivery.failed_at, delivery.next_attempt_at = "failed", attempt.at, None
                _mark_failing(change, store, tenant, endpoint_id, attempt.at)
        change.put(records.delivery_key(tenant, seq, endpoint_id), msgspec.json.encode(delivery))
        return delivery


def park(store: InvoiceStore, tenant: str, seq: int, endpoint_id: str, why: str, now: datetime) -> None:
    """Fails a due delivery without an attempt (its endpoint is deleted, disabled or failing): replay re-sends it."""
    with store.transaction(tenant, now) as change:
        delivery = _decode(records.read(store, records.delivery_key(tenant, seq, endpoint_id)))
        if delivery is None or delivery.status != "pending":
            return
        _unqueue(change, tenant, delivery)
        delivery.status, delivery.failed_at, delivery.next_attempt_at = "failed", now, None
        delivery.last_error = why
        change.put(records.delivery_key(tenant, seq, endpoint_id), msgspec.json.encode(delivery))


def _unqueue(change: records.Writes, tenant: str, delivery: Delivery) -> None:
    if delivery.status == "pending" and delivery.next_attempt_at is not None:
        change.delete(records.due_key(tenant, delivery.next_attempt_at, delivery.seq, delivery.endpoint))


def _mark_failing(change: records.Writes, store: InvoiceStore, tenant: str, endpoint_id: str, now: datetime) -> None:
    raw = records.read(store, records.endpoint_key(tenant, endpoint_id))
    if raw is None:
        return
    endpoint = msgspec.json.decode(raw, type=Endpoint)
    if endpoint.failing_since is None:
        endpoint.failing_since = endpoint.updated_at = now
        change.put(records.endpoint_key(tenant, endpoint_id), msgspec.json.encode(endpoint))


def _requeue(change: records.Writes, tenant: str, delivery: Delivery, now: datetime) -> None:
    _unqueue(change, tenant, delivery)
    delivery.status, delivery.started_at, delivery.next_attempt_at = "pending", now, now
    delivery.failed_at = None
    change.put(records.due_key(tenant, now, delivery.seq, delivery.endpoint), b"")
    change.put(records.delivery_key(tenant, delivery.seq, delivery.endpoint), msgspec.json.encode(delivery))


def _enabled(store: InvoiceStore, tenant: str, endpoint_id: str) -> Endpoint:
    raw = records.read(store, records.endpoint_key(tenant, endpoint_id))
    if raw is None:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}; GET /v1/webhook-endpoints lists them")
    endpoint = msgspec.json.decode(raw, type=Endpoint)
    if endpoint.status != "enabled":
        raise InvalidInput(
            f"webhook endpoint {endpoint_id!r} is {endpoint.status}; enable it first "
            f'(POST /v1/webhook-endpoints/{endpoint_id} {{"enabled": true}}), then replay',
            code="endpoint_not_enabled",
        )
    return endpoint


def find_event(store: InvoiceStore, tenant: str, event_id: str) -> tuple[int, bytes]:
    """The seq and bytes of the tenant's outbox event ``event_id`` (404 when it has none such)."""
    if (seq := event_seq(event_id)) is not None:
        body = records.read(store, records.outbox_key(tenant, seq))
        if body is not None and msgspec.json.decode(body, type=_Head).id == event_id:
            return seq, body
    raise NotFound(f"no event {event_id!r}; GET /v1/webhook-events lists them")


def replay_event(
    store: InvoiceStore, tenant: str, event_id: str, endpoint_id: str | None, now: datetime | None = None
) -> Replayed:
    """Sends the event again: to every endpoint it has a delivery to (enabled ones), or to ``endpoint_id``."""
    now = now or datetime.now(UTC)
    seq, body = find_event(store, tenant, event_id)
    if endpoint_id is not None:
        _enabled(store, tenant, endpoint_id)
    with store.transaction(tenant, now) as change:
        if seq > _cursor(store, tenant):
            return Replayed(0)  # not fanned out yet: its first deliveries are about to be made
        prefix = records.delivery_key(tenant, seq)
        deliveries = [msgspec.json.decode(v, type=Delivery) for _, v in records.scan(store, prefix)]
        if endpoint_id is not None:
            deliveries = [d for d in deliveries if d.endpoint == endpoint_id]
            if not deliveries:  # never sent there (the endpoint is newer, or wants other types): send it now
                endpoint = _enabled(store, tenant, endpoint_id)
                _open(change, tenant, msgspec.json.decode(body, type=_Head), endpoint, now)
                return Replayed(1)
        n = 0
        for delivery in deliveries:
            raw = records.read(store, records.endpoint_key(tenant, delivery.endpoint))
            if raw is None or msgspec.json.decode(raw, type=Endpoint).status != "enabled":
                continue
            _requeue(change, tenant, delivery, now)
            n += 1
        return Replayed(n)


def replay_endpoint(
    store: InvoiceStore, tenant: str, endpoint_id: str, since: datetime, now: datetime | None = None
) -> Replayed:
    """Sends the endpoint's failed deliveries of events emitted at or after ``since`` again."""
    now = now or datetime.now(UTC)
    with store.transaction(tenant, now) as change:
        _enabled(store, tenant, endpoint_id)
        n = 0
        for key, _ in records.scan(store, records.by_endpoint_key(tenant, endpoint_id), backwards=True):
            delivery = _decode(records.read(store, records.delivery_key(tenant, records.seq_of(key), endpoint_id)))
            if delivery is None:
                continue
            if delivery.event_created_at < since:
                break  # newest first: the rest are older still
            if delivery.status != "failed":
                continue
            if n == REPLAY_BATCH:
                return Replayed(n, more=True)
            _requeue(change, tenant, delivery, now)
            n += 1
        return Replayed(n)


def _page(limit: int, after: str | None) -> int | None:
    """The seq a page starts before (None: from the newest), once ``limit`` and ``after`` are checked."""
    if not 1 <= limit <= 1000:
        raise InvalidInput(f"'limit' must be a whole number 1-1000; got {limit}", "invalid_query")
    if after is None:
        return None
    if not (len(after) == 12 and after.isascii() and after.isdigit()):
        raise InvalidInput(f"'after' must be the `next` of a previous page (12 digits); got {after!r}", "invalid_query")
    return int(after)


def of_endpoint(
    store: InvoiceStore,
    tenant: str,
    endpoint_id: str,
    status: str | None = None,
    limit: int = 100,
    after: str | None = None,
) -> DeliveryPage:
    """The endpoint's deliveries, newest event first, optionally of one status."""
    if records.read(store, records.endpoint_key(tenant, endpoint_id)) is None:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}; GET /v1/webhook-endpoints lists them")
    before = _page(limit, after)
    prefix = records.by_endpoint_key(tenant, endpoint_id)
    start = None if before is None else records.by_endpoint_key(tenant, endpoint_id, before - 1)
    found: list[Delivery] = []
    for key, _ in records.scan(store, prefix, start=start, backwards=True):
        delivery = _decode(records.read(store, records.delivery_key(tenant, records.seq_of(key), endpoint_id)))
        if delivery is None or (status is not None and delivery.status != status):
            continue
        if len(found) == limit:
            return DeliveryPage(found, f"{found[-1].seq:012d}")
        found.append(delivery)
    return DeliveryPage(found, None)


def of_event(store: InvoiceStore, tenant: str, event_id: str) -> list[Delivery]:
    """The event's deliveries, one per endpoint it went (or goes) to."""
    seq, _ = find_event(store, tenant, event_id)
    return [msgspec.json.decode(v, type=Delivery) for _, v in records.scan(store, records.delivery_key(tenant, seq))]


def events(
    store: InvoiceStore, tenant: str, type_: str | None = None, limit: int = 100, after: str | None = None
) -> EventPage:
    """The tenant's outbox events, newest first, optionally of one type."""
    before = _page(limit, after)
    prefix = records.outbox_key(tenant)
    start = None if before is None else records.outbox_key(tenant, before - 1)
    found: list[Event] = []
    for _, raw in records.scan(store, prefix, start=start, backwards=True):
        event = msgspec.json.decode(raw, type=Event)
        if type_ is not None and event.type != type_:
            continue
        if len(found) == limit:
            return EventPage(found, f"{found[-1].seq:012d}")
        found.append(event)
    return EventPage(found, None)


def get_event(store: InvoiceStore, tenant: str, event_id: str) -> Event:
    return msgspec.json.decode(find_event(store, tenant, event_id)[1], type=Event)
