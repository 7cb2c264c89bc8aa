"""Orb (``orb-billing``): ``Orb(api_key=..., base_url="<meter>/compat/orb/v1")``.

``client.events.ingest(events=[...])`` posts ``/v1/ingest`` with ``{"events": [...]}`` (at most 500): each
``event_name``, ``idempotency_key`` (the key), ``properties``, ``timestamp`` (ISO 8601; the SDK sends
``isoformat()``, with or without an offset) and exactly one of ``customer_id`` and ``external_customer_id``.
Success is 200 ``{"validation_failed": []}`` (Orb's deprecated ``debug`` is not answered). An error's
``type`` is one of Orb's, which the SDK maps to its exception classes; a refused batch is a 400
``request-validation-errors`` naming each event that failed in ``validation_failed``.

Corrections: ``client.events.update(event_id, ...)`` puts ``/v1/events/{event_id}`` (the event's new name,
properties, timestamp and customer; 200 ``{"amended": event_id}``) and ``client.events.deprecate(event_id)`` puts
``/v1/events/{event_id}/deprecate`` (200 ``{"deprecated": event_id}``): meter's amend and cancel (``Engine.correct``),
with every aggregate restated. Unlike Orb, an amendment may move the event to another customer or time.

Backfills: ``client.events.backfills.create(timeframe_start=..., timeframe_end=..., customer_id=...)`` posts
``/v1/events/backfills``; ``client.events.ingest(events=..., backfill_id=...)`` stages events into it;
``.close(id)``, ``.revert(id)`` and ``.fetch(id)`` are meter's backfills (:mod:`meter.backfills`), ``reflected`` once
closed. Orb's ``close_time`` (closing later on its own) and ``deprecation_filter`` are refused with a message.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from meter.backfills import Backfill, BackfillBody
from meter.exceptions import InvalidInput
from meter.schemas import AmendEvent, CancelEvent
from meter.server.context import Context, opened
from meter.server.dropin import events
from meter.server.http import Answer, Request

__all__ = [
    "LIMIT",
    "amend",
    "backfill",
    "close_backfill",
    "deprecate",
    "error",
    "fetch_backfill",
    "ingest",
    "revert_backfill",
]

#: Events per request, as Orb's API allows.
LIMIT = 500


class _Event(msgspec.Struct):
    event_name: str
    idempotency_key: str
    timestamp: str
    properties: dict[str, Any] = {}
    customer_id: str | None = None
    external_customer_id: str | None = None


class _Amendment(msgspec.Struct):
    event_name: str
    timestamp: str
    properties: dict[str, Any] = {}
    customer_id: str | None = None
    external_customer_id: str | None = None


class _Body(msgspec.Struct):
    events: list[Any]


async def ingest(ctx: Context, request: Request, backfill_id: str | None) -> Answer:
    sent = events.each(events.read(request.body, _Body, '{"events": [...]}').events, _Event, "idempotency_key", LIMIT)
    issues = [
        events.Issue(n, e.idempotency_key, "customer_id", "send exactly one of customer_id and external_customer_id")
        for n, e in enumerate(sent)
        if (e.customer_id is None) == (e.external_customer_id is None)
    ]
    if issues:
        raise events.refuse(issues, len(sent))
    customers = [e.customer_id or e.external_customer_id or "" for e in sent]
    names = await events.subjects(ctx, request.tenant, customers)
    made = [
        events.event("orb", e.idempotency_key, e.event_name, names[c], e.timestamp, _data(e.properties))
        for e, c in zip(sent, customers, strict=True)
    ]
    if backfill_id is not None:  # staged into the backfill, counted when it closes
        await ctx.call(opened(ctx.backfills).stage, request.tenant, backfill_id, msgspec.json.encode(made))
    else:
        await events.count(ctx, request, made)
    return 200, {"validation_failed": []}, {}


async def amend(ctx: Context, request: Request, event_id: str) -> Answer:
    sent = events.read(request.body, _Amendment, '{"event_name", "timestamp", "properties", "customer_id"}')
    if (sent.customer_id is None) == (sent.external_customer_id is None):
        issue = events.Issue(0, event_id, "customer_id", "send exactly one of customer_id and external_customer_id")
        raise events.refuse([issue], 1)
    customer = sent.customer_id or sent.external_customer_id or ""
    subject = (await events.subjects(ctx, request.tenant, [customer]))[customer]
    made = events.event("orb", event_id, sent.event_name, subject, sent.timestamp, _data(sent.properties))
    await events.correct(ctx, request, [AmendEvent(event=made)], "amended through Orb's event amendment API")
    return 200, {"amended": event_id}, {}


async def deprecate(ctx: Context, request: Request, event_id: str) -> Answer:
    await events.correct(ctx, request, [CancelEvent(source="orb", id=event_id)], "deprecated through Orb's API")
    return 200, {"deprecated": event_id}, {}


class _Backfill(msgspec.Struct):
    timeframe_start: datetime
    timeframe_end: datetime
    customer_id: str | None = None
    external_customer_id: str | None = None
    replace_existing_events: bool = True
    close_time: datetime | None = None
    deprecation_filter: str | None = None


async def backfill(ctx: Context, request: Request) -> Answer:
    sent = events.read(request.body, _Backfill, '{"timeframe_start", "timeframe_end", "customer_id"}')
    if sent.close_time is not None or sent.deprecation_filter is not None:
        raise InvalidInput("close_time and deprecation_filter are not supported: close the backfill with /close")
    customer = sent.customer_id or sent.external_customer_id
    subject = None if customer is None else (await events.subjects(ctx, request.tenant, [customer]))[customer]
    body = BackfillBody(
        start=sent.timeframe_start,
        end=sent.timeframe_end,
        reason="a backfill through Orb's API",
        customer=subject,
        replace=sent.replace_existing_events,
    )
    return 200, _shown(await ctx.call(opened(ctx.backfills).open, request.tenant, body)), {}


async def close_backfill(ctx: Context, request: Request, backfill_id: str) -> Answer:
    closed = await ctx.call(opened(ctx.backfills).close, request.tenant, backfill_id, request.actor)
    return 200, _shown(closed), {}


async def revert_backfill(ctx: Context, request: Request, backfill_id: str) -> Answer:
    reverted = await ctx.call(opened(ctx.backfills).revert, request.tenant, backfill_id, request.actor)
    return 200, _shown(reverted), {}


async def fetch_backfill(ctx: Context, request: Request, backfill_id: str) -> Answer:
    return 200, _shown(await ctx.call(opened(ctx.backfills).get, request.tenant, backfill_id)), {}


#: Orb's name for each state of a backfill.
_STATUS = {"pending": "pending", "closed": "reflected", "reverted": "reverted"}


def _shown(b: Backfill) -> dict[str, Any]:
    """A backfill as Orb's SDK reads it."""
    return {
        "id": b.id,
        "status": _STATUS[b.status],
        "created_at": b.created_at.isoformat(),
        "timeframe_start": b.start.isoformat(),
        "timeframe_end": b.end.isoformat(),
        "customer_id": b.customer,
        "events_ingested": b.events,
        "replace_existing_events": b.replace,
        "close_time": b.closed_at and b.closed_at.isoformat(),
        "reverted_at": b.reverted_at and b.reverted_at.isoformat(),
        "deprecation_filter": None,
    }


def _data(properties: dict[str, Any]) -> dict[str, Any]:
    """Orb's properties as meter data: booleans as ``"true"`` and ``"false"`` (a meter reads numbers and text)."""
    return {k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in properties.items()}


_TYPES = {
    400: "400-request-validation-errors",
    401: "401-authentication-error",
    404: "404-url-not-found",
    413: "413-request-too-large",
    429: "429-too-many-requests",
}


def error(answer: Answer) -> Answer:
    """Orb's error body (RFC 7807-like, with Orb's ``type``), each refused event in ``validation_failed``."""
    status, body, headers = answer
    issues = body.get("issues") or []
    status = 400 if status == 422 or body.get("code") == "too_many_events" else status
    kind = (
        "400-request-validation-errors"
        if issues or body.get("code") in ("too_many_events", "invalid_json", "invalid_body", "empty_batch")
        else _TYPES.get(status)
    )
    if kind is None:
        kind = "500-internal-server-error" if status >= 500 else "400-constraint-violation"
    shaped = {
        "status": status,
        "type": f"https://docs.withorb.com/reference/error-responses#{kind}",
        "title": body.get("code", "error"),
        "detail": body.get("message", ""),
        "validation_errors": [f"event {i['index']}: {i['message']}" for i in issues] or [body.get("message", "")],
        "validation_failed": [{"idempotency_key": i.get("id"), "validation_errors": [i["message"]]} for i in issues],
    }
    return status, shaped, headers
