"""Metronome (``metronome-sdk``): ``Metronome(bearer_token=..., base_url="<meter>/compat/metronome")``.

``client.v1.usage.ingest(usage=[...])`` posts ``/v1/ingest``: a bare JSON array of 1-100 usage events, each
``transaction_id`` (the key, kept for Metronome's 34 days and for meter's whole dedup window), ``customer_id``,
``event_type``, ``timestamp`` (RFC 3339) and ``properties``. The SDK ignores the success body (200, ``{}``) and
raises on any 4xx; it retries 408, 409, 429 and 5xx, so a refusal is never one of those.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meter.server.context import Context
from meter.server.dropin import events
from meter.server.http import Answer, Request

__all__ = ["LIMIT", "error", "ingest"]

#: Events per request, as Metronome's API allows.
LIMIT = 100


class _Usage(msgspec.Struct):
    transaction_id: str
    customer_id: str
    event_type: str
    timestamp: str
    properties: dict[str, Any] | None = None


async def ingest(ctx: Context, request: Request) -> Answer:
    usage = events.each(
        events.read(request.body, list[Any], "a JSON array of usage events"), _Usage, "transaction_id", LIMIT
    )
    names = await events.subjects(ctx, request.tenant, (u.customer_id for u in usage))
    made = [
        events.event("metronome", u.transaction_id, u.event_type, names[u.customer_id], u.timestamp, u.properties)
        for u in usage
    ]
    await events.count(ctx, request, made)
    return 200, {}, {}


def error(answer: Answer) -> Answer:
    """Metronome's error: a JSON body with ``message`` (the SDK reads no more), 400 for a refused batch."""
    status, body, headers = answer
    refused = status == 422 or body.get("code") == "too_many_events"  # meter's 413 for too many; Metronome's 400
    return (400 if refused else status), body, headers
