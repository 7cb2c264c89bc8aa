"""Lago (``lago-python-client``): ``Client(api_key=..., api_url="<meter>/compat/lago/")``.

``client.events.create(Event(...))`` posts ``/api/v1/events`` with ``{"event": {...}}``;
``client.events.batch_create(BatchEvent(events=[...]))`` posts ``/api/v1/events/batch`` with ``{"events": [...]}``
(at most 100). An event: ``transaction_id`` (the key), ``external_subscription_id``, ``code``, ``timestamp`` (Unix
seconds, an integer or decimal, sent as text by the SDK; null: the receive time), ``precise_total_amount_cents`` and
``properties``. The customer is the meter subscription's of that id when there is one, else the customer the id
names. Success is 200 with the event(s) as Lago returns them (the SDK reads ``transaction_id``,
``external_subscription_id``, ``code`` and ``timestamp`` of a single one). A duplicate is a success, where Lago's
PostgreSQL mode answers 422; errors are Lago's ``{"status", "error", "code", "error_details"}``, a refused batch's
``error_details`` keyed by the index of each event refused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from meter.server.context import Context
from meter.server.dropin import events
from meter.server.http import Answer, Request

__all__ = ["LIMIT", "batch", "error", "one"]

#: Events per batch, as Lago's API allows.
LIMIT = 100


class _Event(msgspec.Struct):
    transaction_id: str
    external_subscription_id: str
    code: str
    timestamp: int | str | None = None
    precise_total_amount_cents: str | None = None
    properties: dict[str, Any] | None = None


class _One(msgspec.Struct):
    event: Any


class _Batch(msgspec.Struct):
    events: list[Any]


async def one(ctx: Context, request: Request) -> Answer:
    [made] = await _count(ctx, request, [events.read(request.body, _One, '{"event": {...}}').event])
    return 200, {"event": made}, {}


async def batch(ctx: Context, request: Request) -> Answer:
    return (
        200,
        {"events": await _count(ctx, request, events.read(request.body, _Batch, '{"events": [...]}').events)},
        {},
    )


async def _count(ctx: Context, request: Request, items: list[Any]) -> list[dict[str, Any]]:
    """Counts Lago's events; what Lago answers for each."""
    sent = events.each(items, _Event, "transaction_id", LIMIT)
    times: list[str | None] = []
    issues = []
    for n, e in enumerate(sent):
        try:
            times.append(None if e.timestamp is None else events.from_unix(e.timestamp))
        except ValueError as why:
            times.append(None)
            issues.append(events.Issue(n, e.transaction_id, "timestamp", str(why)))
    if issues:
        raise events.refuse(issues, len(sent))
    subjects = await events.subjects(ctx, request.tenant, (e.external_subscription_id for e in sent), True)
    made = [
        events.event("lago", e.transaction_id, e.code, subjects[e.external_subscription_id], t, _data(e))
        for e, t in zip(sent, times, strict=True)
    ]
    await events.count(ctx, request, made)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return [
        {
            "lago_id": None,
            "transaction_id": e.transaction_id,
            "lago_customer_id": subjects[e.external_subscription_id],
            "code": e.code,
            "timestamp": t or now,
            "precise_total_amount_cents": e.precise_total_amount_cents,
            "properties": e.properties or {},
            "lago_subscription_id": None,
            "external_subscription_id": e.external_subscription_id,
            "created_at": now,
        }
        for e, t in zip(sent, times, strict=True)
    ]


def _data(e: _Event) -> dict[str, Any]:
    data = dict(e.properties or {})
    if e.precise_total_amount_cents is not None:
        data.setdefault("precise_total_amount_cents", e.precise_total_amount_cents)
    return data


_ERRORS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
}


def error(answer: Answer) -> Answer:
    """Lago's error body; a refused batch is a 422 ``validation_errors`` keyed by event index (``too_many_events``)."""
    status, body, headers = answer
    code = body.get("code", "error")
    issues = body.get("issues") or []
    if issues or code in ("too_many_events", "invalid_body", "empty_batch"):
        status = 422
    details: dict[str, Any] = {}
    for i in issues:
        field = i.get("field") or ("transaction_id" if i.get("code") == "conflict" else "event")
        reason = "value_already_exist" if i.get("code") == "conflict" else i["message"]
        details.setdefault(str(i["index"]), {}).setdefault(field, []).append(reason)
    shaped: dict[str, Any] = {
        "status": status,
        "error": _ERRORS.get(status, "Internal Server Error" if status >= 500 else "Error"),
        "code": "validation_errors" if issues else code,
        "error_details": details or {"message": body.get("message", "")},
    }
    return status, shaped, headers
