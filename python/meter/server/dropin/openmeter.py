"""OpenMeter (``openmeter``): ``Client(endpoint="<meter>/compat/openmeter", token=...)``.

``client.events.ingest_event(event)`` and ``ingest_events([...])`` post ``/api/v1/events``: CloudEvents, which is
what meter ingests natively, one (``application/cloudevents+json``) or an array
(``application/cloudevents-batch+json``, or ``application/json``). Identity is OpenMeter's, ``(source, id)``; the
subject is mapped like every drop-in's (a customer's alias names it). The SDK expects 204 and raises on any
other status, 200 included; errors are RFC 7807 ``application/problem+json``.
"""

from __future__ import annotations

from typing import Any

from meter.server.context import Context
from meter.server.dropin import events
from meter.server.http import Answer, Request

__all__ = ["MEDIA", "error", "ingest"]

#: What OpenMeter's SDK sends (the media type's parameters, such as a charset, are ignored).
MEDIA = ("application/cloudevents+json", "application/cloudevents-batch+json", "application/json")


async def ingest(ctx: Context, request: Request) -> Answer:
    sent = events.read(request.body, Any, "a CloudEvent or a JSON array of them")
    batch: list[Any] = sent if isinstance(sent, list) else [sent]
    names = await events.subjects(
        ctx,
        request.tenant,
        (e["subject"] for e in batch if isinstance(e, dict) and isinstance(e.get("subject"), str)),
    )
    made = [
        {**e, "subject": names[e["subject"]]} if isinstance(e, dict) and isinstance(e.get("subject"), str) else e
        for e in batch
    ]
    await events.count(ctx, request, made)
    return 204, b"", {}


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def error(answer: Answer) -> Answer:
    """OpenMeter's problem details (RFC 7807): a refused batch is a 400 whose ``detail`` names each event."""
    status, body, headers = answer
    status = 400 if status == 422 else status
    issues = body.get("issues") or []
    detail = body.get("message", "")
    if issues:
        detail += "; " + "; ".join(f"#{i['index']} {i.get('id')!r}: {i['code']}: {i['message']}" for i in issues)
    shaped = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Internal Server Error"),
        "status": status,
        "detail": detail,
        "code": body.get("code"),
        "issues": issues,
    }
    return status, shaped, {**headers, "content-type": "application/problem+json"}
