"""Backfills (Orb's model): the usage of a time range, for one customer or event type or all, replaced whole.

Open a backfill for ``[start, end)``, stage its events (they count nowhere yet), then **close** it: one correction
(``Engine.correct_items``) cancels every event counted in the range that the backfill does not carry again, amends
those it does, and adds the new ones, restating every aggregate at once (or, with ``replace`` false, only amends and
adds). Or **revert** it: a pending backfill's staged events are dropped; a closed one's correction is undone by
another, which restores the versions it cancelled or amended and cancels the events it added.

Stored in the invoice store's synced transactions: ``backfill/<tenant>/<id>`` the backfill and
``backfill_event/<tenant>/<id>/<[source, id]>`` each staged event, so that an event staged again (a retried upload)
replaces itself. A close's correction carries the reason ``backfill <id>: <reason>``: a revert finds what the close
did by it, even when the close's answer was lost (a retried close changes nothing and answers ``unchanged``).
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from meter.billing.store import InvoiceStore
from meter.engine import Engine, to_micros
from meter.exceptions import BatchRejected, Conflict, InvalidInput, NotFound

__all__ = ["MAX_EVENTS", "Backfill", "BackfillBody", "Backfills", "Staged"]

#: Events one backfill stages, at most: its close is one correction.
MAX_EVENTS = 100_000
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class BackfillBody(msgspec.Struct, forbid_unknown_fields=True):
    """A backfill to open: ``[start, end)``, of one ``customer`` and one ``event_type`` when given (all otherwise)."""

    start: datetime
    end: datetime
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    id: str | None = None
    customer: str | None = None
    event_type: str | None = None
    #: Whether closing cancels the range's events the backfill does not carry (Orb's ``replace_existing_events``).
    replace: bool = True


class Backfill(msgspec.Struct):
    """A backfill, and what its close did: ``cancelled`` events of the range, ``amended`` and ``added`` its own."""

    id: str
    status: Literal["pending", "closed", "reverted"]
    start: datetime
    end: datetime
    reason: str
    customer: str | None
    event_type: str | None
    replace: bool
    created_at: datetime
    #: Events staged.
    events: int = 0
    closed_at: datetime | None = None
    reverted_at: datetime | None = None
    #: The close's correction (its commit), and what it did.
    seq: int | None = None
    cancelled: int = 0
    amended: int = 0
    added: int = 0


class Staged(msgspec.Struct):
    """What an upload staged: ``staged`` events of the request, ``events`` in the backfill now."""

    staged: int
    events: int


class Backfills:
    """The tenants' backfills, over the engine and the store that keeps them."""

    def __init__(self, engine: Engine, store: InvoiceStore) -> None:
        self.engine, self.store = engine, store

    def open(self, tenant: str, body: BackfillBody, now: datetime | None = None) -> Backfill:
        """Opens a backfill; the same ``id`` opened again with the same range answers the one that exists."""
        for name, t in (("start", body.start), ("end", body.end)):
            if t.tzinfo is None or t.utcoffset() is None:
                message = f"{name} must carry its offset from UTC, such as 2026-11-01T00:00:00Z; got {t.isoformat()}"
                raise InvalidInput(message, code="invalid_time")
        if body.end <= body.start:
            raise InvalidInput("a backfill's end must be after its start: [start, end)", code="invalid_range")
        backfill_id = body.id or f"bf_{secrets.token_hex(8)}"
        if _ID.fullmatch(backfill_id) is None:
            raise InvalidInput("a backfill id is 1-64 letters, digits, '_', '.' or '-'", code="invalid_id")
        with self.store.transaction(tenant, now) as change:
            if (raw := change.get(_key(tenant, backfill_id))) is not None:
                existing = msgspec.json.decode(raw, type=Backfill)
                asked = (body.start, body.end, body.customer, body.event_type, body.replace)
                if (existing.start, existing.end, existing.customer, existing.event_type, existing.replace) != asked:
                    message = f"backfill {backfill_id!r} exists with another range: use another id"
                    raise Conflict(message, code="already_exists")
                return existing
            made = Backfill(
                id=backfill_id,
                status="pending",
                start=body.start,
                end=body.end,
                reason=body.reason,
                customer=body.customer,
                event_type=body.event_type,
                replace=body.replace,
                created_at=change.now,
            )
            change.put(_key(tenant, backfill_id), made)
        return made

    def get(self, tenant: str, backfill_id: str) -> Backfill:
        return _loaded(self.store.raw(_key(tenant, backfill_id)), backfill_id)

    def list(self, tenant: str) -> list[Backfill]:
        return [msgspec.json.decode(raw, type=Backfill) for raw in self.store.raw_values(f"backfill/{tenant}/")]

    def stage(self, tenant: str, backfill_id: str, body: bytes) -> Staged:
        """Stages a batch of CloudEvents into a pending backfill, all or none (issues by index)."""
        try:
            events = msgspec.json.decode(body, type=list[dict[str, Any]])
        except msgspec.DecodeError as e:
            raise InvalidInput(f"the body must be a JSON array of CloudEvents: {e}", code="invalid_json") from None
        except msgspec.ValidationError as e:
            raise InvalidInput(f"the body must be a JSON array of CloudEvents: {e}", code="invalid_body") from None
        if not events:
            raise InvalidInput("the batch holds no events; send at least one", code="empty_batch")
        with self.store.transaction(tenant) as change:
            backfill = _pending(_loaded(change.get(_key(tenant, backfill_id)), backfill_id))
            issues = [issue for n, e in enumerate(events) if (issue := _check(backfill, n, e)) is not None]
            if issues:
                message = f"{len(issues)} of the {len(events)} events cannot be staged; nothing was"
                raise BatchRejected(message, details=msgspec.json.encode(issues).decode())
            new = 0
            for event in events:
                key = _event_key(tenant, backfill_id, event["source"], event["id"])
                new += change.get(key) is None
                change.put(key, msgspec.json.encode(event))
            if backfill.events + new > MAX_EVENTS:
                raise InvalidInput(f"a backfill holds at most {MAX_EVENTS} events: split the range", code="too_many")
            backfill.events += new
            change.put(_key(tenant, backfill_id), backfill)
        return Staged(len(events), backfill.events)

    def close(self, tenant: str, backfill_id: str, actor: str, now: datetime | None = None) -> Backfill:
        """Applies a pending backfill in one correction; a closed one is answered as it is."""
        backfill = self.get(tenant, backfill_id)
        if backfill.status == "closed":
            return backfill
        _pending(backfill)
        items: list[dict[str, Any]] = []
        if backfill.replace:
            scope = {"subject": backfill.customer, "event_type": backfill.event_type}
            items.append({"replace": scope | {"from_us": to_micros(backfill.start), "to_us": to_micros(backfill.end)}})
        prefix = f"backfill_event/{tenant}/{backfill_id}/"
        items += [{"put": msgspec.json.decode(raw)} for raw in self.store.raw_values(prefix)]
        result = self.engine.correct_items(tenant, items, reason=_reason(backfill), actor=actor, now=now)
        done = {status: 0 for status in ("cancelled", "amended", "added")}
        for outcome in result.corrections:
            if outcome.status == "replaced":
                done["cancelled"] += outcome.events
            elif outcome.status in done:
                done[outcome.status] += 1
        with self.store.transaction(tenant, now) as change:
            if (raced := _loaded(change.get(_key(tenant, backfill_id)), backfill_id)).status != "pending":
                return raced  # a close at the same time did it first (this one found everything done)
            closed = msgspec.structs.replace(backfill, status="closed", closed_at=change.now, seq=result.seq, **done)
            change.put(_key(tenant, backfill_id), closed)
            change.clear(prefix)
        return closed

    def revert(self, tenant: str, backfill_id: str, actor: str, now: datetime | None = None) -> Backfill:
        """Drops a pending backfill's events, or undoes a closed one's correction; a reverted one is answered as is."""
        backfill = self.get(tenant, backfill_id)
        if backfill.status == "reverted":
            return backfill
        if backfill.status == "closed":
            tag = _reason(backfill)
            made = [c for c in self.engine.corrections(tenant, 0, 2**64 - 1) if c.reason == tag]
            items: list[dict[str, Any]] = []
            for c in made:
                if c.action == "add":
                    items.append({"cancel": {"source": c.source, "id": c.id}})
                elif c.replaced is not None:
                    version = {"seq": c.replaced.seq, "ordinal": c.replaced.ordinal}
                    items.append({"restore": {"source": c.source, "id": c.id} | version})
            if items:
                reason = f"revert of backfill {backfill.id}: {backfill.reason}"
                self.engine.correct_items(tenant, items, reason=reason, actor=actor, now=now)
        with self.store.transaction(tenant, now) as change:
            if (raced := _loaded(change.get(_key(tenant, backfill_id)), backfill_id)).status == "reverted":
                return raced
            reverted = msgspec.structs.replace(backfill, status="reverted", reverted_at=change.now)
            change.put(_key(tenant, backfill_id), reverted)
            change.clear(f"backfill_event/{tenant}/{backfill_id}/")
        return reverted


def _check(backfill: Backfill, index: int, event: dict[str, Any]) -> dict[str, Any] | None:
    """Why ``event`` cannot be staged into ``backfill`` (an issue by index), or None."""

    def issue(code: str, message: str) -> dict[str, Any]:
        return {"index": index, "id": event.get("id") if isinstance(event.get("id"), str) else None} | {
            "code": code,
            "message": message,
        }

    for field in ("id", "source", "type", "subject", "time"):
        if not isinstance(event.get(field), str) or not event[field]:
            return issue("missing_field", f'"{field}" is required (a non-empty string) in a backfill\'s event')
    try:
        at = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    except ValueError:
        return issue("invalid_time", f'"time" must be RFC 3339, such as 2026-11-23T10:00:00Z; got {event["time"]!r}')
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    if not backfill.start <= at < backfill.end:
        return issue("out_of_range", f"the event's time is outside the backfill's [{backfill.start}, {backfill.end})")
    if backfill.customer is not None and event["subject"] != backfill.customer:
        return issue("invalid_field", f'"subject" must be the backfill\'s customer, {backfill.customer!r}')
    if backfill.event_type is not None and event["type"] != backfill.event_type:
        return issue("invalid_field", f'"type" must be the backfill\'s event type, {backfill.event_type!r}')
    return None


def _loaded(raw: bytes | None, backfill_id: str) -> Backfill:
    if raw is None:
        raise NotFound(f"no backfill {backfill_id!r}")
    return msgspec.json.decode(raw, type=Backfill)


def _pending(backfill: Backfill) -> Backfill:
    """The backfill, if it still takes events and a close; else a 409."""
    if backfill.status != "pending":
        raise Conflict(f"backfill {backfill.id!r} is {backfill.status}: open another one", code="invalid_state")
    return backfill


def _reason(backfill: Backfill) -> str:
    return f"backfill {backfill.id}: {backfill.reason}"


def _key(tenant: str, backfill_id: str) -> str:
    return f"backfill/{tenant}/{backfill_id}"


def _event_key(tenant: str, backfill_id: str, source: str, event_id: str) -> str:
    return f"backfill_event/{tenant}/{backfill_id}/" + msgspec.json.encode([source, event_id]).decode()
