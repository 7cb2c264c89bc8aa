"""Stripe meter events (``stripe``): ``StripeClient(key, base_addresses={"api": ..., "meter_events": ...})``.

- **v1**: ``client.v1.billing.meter_events.create({...})`` posts ``/v1/billing/meter_events``, form-encoded:
  ``event_name``, ``payload[...]`` (``payload[stripe_customer_id]`` names the customer; the other entries are the
  event's data, such as ``payload[value]``), ``identifier`` (the key; without one, the request's
  ``Idempotency-Key``, which the SDK sends with every POST and keeps across its retries) and ``timestamp`` (Unix
  seconds). Success: 200 with the ``billing.meter_event`` object.
- **v2 stream**: ``client.v2.billing.meter_event_session.create()`` posts ``/v2/billing/meter_event_session`` with the
  meter key and answers a session whose ``authentication_token`` stands for that key for 15 minutes; then
  ``StripeClient(token).v2.billing.meter_event_stream.create({"events": [...]})`` posts
  ``/v2/billing/meter_event_stream`` (at most 100 events: ``event_name``, ``payload``, ``identifier``, ``timestamp``
  in RFC 3339). Success: 200 ``{}``. An expired token is a 401 ``billing_meter_event_session_expired``.

Cancels (meter event adjustments): ``client.v1.billing.meter_event_adjustments.create({"event_name", "type": "cancel",
"cancel": {"identifier"}})`` posts ``/v1/billing/meter_event_adjustments`` (form-encoded) and the v2 client posts
``/v2/billing/meter_event_adjustments`` (JSON): meter's cancel (``Engine.correct``), with every aggregate restated,
for as long as the event is retained (Stripe: 24 hours). Success: 200 with the adjustment, ``status`` ``complete``.

Errors are Stripe's ``{"error": {"type", "code", "message", "param"}}``, with ``Stripe-Should-Retry``. Unlike
Stripe, an identifier is kept for meter's whole dedup window (Stripe: 24 hours), and sending it again with the same
content is a success.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from meter.schemas import CancelEvent
from meter.server.context import Context, opened
from meter.server.dropin import events
from meter.server.errors import ApiError
from meter.server.http import Answer, Request

__all__ = ["LIMIT", "SESSION", "adjustment_v1", "adjustment_v2", "error", "meter_event", "session", "stream"]

#: Events per stream request, as Stripe's API allows.
LIMIT = 100
#: How long a meter event session's token stands for its key.
SESSION = timedelta(minutes=15)
#: The payload entry naming the customer (Stripe's default ``customer_mapping``).
CUSTOMER = "stripe_customer_id"


async def meter_event(ctx: Context, request: Request, idempotency_key: str) -> Answer:
    form = dict(parse_qsl(request.body.decode(errors="replace"), keep_blank_values=True))
    payload = {k[len("payload[") : -1]: v for k, v in form.items() if k.startswith("payload[") and k.endswith("]")}
    name, identifier = form.get("event_name"), form.get("identifier") or idempotency_key or uuid.uuid4().hex
    stamp = form.get("timestamp")
    if not name:
        raise events.refuse([events.Issue(0, identifier, "event_name", "required: the event's name")], 1)
    if not payload.get(CUSTOMER):
        raise events.refuse([events.Issue(0, identifier, f"payload[{CUSTOMER}]", "required: the customer")], 1)
    if stamp is not None and not stamp.isdigit():
        raise events.refuse(
            [events.Issue(0, identifier, "timestamp", f"Unix seconds, such as 1796152693; got {stamp!r}")], 1
        )
    time = None if stamp is None else events.from_unix(int(stamp))
    customer = (await events.subjects(ctx, request.tenant, [payload[CUSTOMER]]))[payload[CUSTOMER]]
    await events.count(ctx, request, [events.event("stripe", identifier, name, customer, time, payload)])
    now = int(datetime.now(UTC).timestamp())
    return (
        200,
        {
            "object": "billing.meter_event",
            "created": now,
            "event_name": name,
            "identifier": identifier,
            "livemode": False,
            "payload": payload,
            "timestamp": int(stamp) if stamp is not None else now,
        },
        {},
    )


async def adjustment_v1(ctx: Context, request: Request) -> Answer:
    form = dict(parse_qsl(request.body.decode(errors="replace"), keep_blank_values=True))
    return await _cancel(ctx, request, form.get("event_name"), form.get("type"), form.get("cancel[identifier]"), 1)


class _Adjustment(msgspec.Struct):
    event_name: str | None = None
    type: str | None = None
    cancel: dict[str, str] = {}


async def adjustment_v2(ctx: Context, request: Request) -> Answer:
    sent = events.read(request.body, _Adjustment, '{"event_name", "type": "cancel", "cancel": {"identifier"}}')
    return await _cancel(ctx, request, sent.event_name, sent.type, sent.cancel.get("identifier"), 2)


async def _cancel(
    ctx: Context, request: Request, name: str | None, kind: str | None, identifier: str | None, version: int
) -> Answer:
    """A meter event adjustment: cancels the event of ``identifier`` (Stripe's only adjustment type)."""
    if kind != "cancel":
        raise events.refuse([events.Issue(0, identifier, "type", f'"cancel" is the only type; got {kind!r}')], 1)
    if not name:
        raise events.refuse([events.Issue(0, identifier, "event_name", "required: the event's name")], 1)
    if not identifier:
        raise events.refuse([events.Issue(0, None, "cancel[identifier]", "required: the event to cancel")], 1)
    await events.correct(
        ctx, request, [CancelEvent(source="stripe", id=identifier)], f"cancelled through Stripe ({name})"
    )
    made = {
        "id": f"mtr_adj_{uuid.uuid4().hex}",
        "object": "billing.meter_event_adjustment" if version == 1 else "v2.billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "event_name": name,
        "livemode": False,
        "status": "complete",
        "type": "cancel",
    }
    if version == 2:
        made["created"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return 200, made, {}


async def session(ctx: Context, request: Request) -> Answer:
    created = datetime.now(UTC).replace(microsecond=0)
    expires = created + SESSION
    assert request.key is not None
    token = opened(ctx.keys).session_token(request.key, int(expires.timestamp()))
    return (
        200,
        {
            "id": "mes_" + uuid.uuid4().hex,
            "object": "v2.billing.meter_event_session",
            "authentication_token": token,
            "created": created.isoformat().replace("+00:00", "Z"),
            "expires_at": expires.isoformat().replace("+00:00", "Z"),
            "livemode": False,
        },
        {},
    )


class _Streamed(msgspec.Struct):
    event_name: str
    payload: dict[str, str]
    identifier: str | None = None
    timestamp: str | None = None


class _Stream(msgspec.Struct):
    events: list[Any]


async def stream(ctx: Context, request: Request, authorization: str, idempotency_key: str) -> Answer:
    token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    key = opened(ctx.keys).session_key(token, datetime.now(UTC).timestamp())
    if key == "expired":
        raise ApiError(401, "billing_meter_event_session_expired", "the meter event session expired: create another")
    if key is None or key.tenant is None or "ingest" not in key.scopes:
        raise ApiError(
            401, "unauthorized", "send a meter event session's authentication_token as 'Authorization: Bearer ...'"
        )
    request.key = key
    sent = events.each(events.read(request.body, _Stream, '{"events": [...]}').events, _Streamed, "identifier", LIMIT)
    missing = [
        events.Issue(n, e.identifier, f"payload.{CUSTOMER}", "required: the customer")
        for n, e in enumerate(sent)
        if not e.payload.get(CUSTOMER)
    ]
    if missing:
        raise events.refuse(missing, len(sent))
    names = await events.subjects(ctx, request.tenant, (e.payload[CUSTOMER] for e in sent))
    base = idempotency_key or uuid.uuid4().hex
    made = [
        events.event(
            "stripe",
            e.identifier or f"{base}:{n}",
            e.event_name,
            names[e.payload[CUSTOMER]],
            e.timestamp,
            dict(e.payload),
        )
        for n, e in enumerate(sent)
    ]
    await events.count(ctx, request, made)
    return 200, {}, {}


_TYPES = {401: "invalid_request_error", 429: "invalid_request_error"}


def error(answer: Answer) -> Answer:
    """Stripe's error object; ``Stripe-Should-Retry`` says whether the same request can succeed later."""
    status, body, headers = answer
    headers, param = dict(headers), None
    status = 400 if status == 422 or body.get("code") == "too_many_events" else status
    issues = body.get("issues") or []
    message = body.get("message", "")
    if issues:
        first = issues[0]
        param = first.get("field")
        message = "; ".join(f"event {i['index']} ({i.get('id')}): {i['code']}: {i['message']}" for i in issues)
    code = issues[0]["code"] if len(issues) == 1 else body.get("code")  # one event: why it was refused
    if status == 429:
        code = "rate_limit"
    shaped = {
        "error": {
            "type": "api_error" if status >= 500 else _TYPES.get(status, "invalid_request_error"),
            "code": code,
            "message": message,
            "param": param,
        }
    }
    headers["stripe-should-retry"] = "true" if status in (429, 503) else "false"
    return status, shaped, headers
