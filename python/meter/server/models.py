"""The bodies of answers the HTTP layer makes itself (the rest are the stores' own msgspec Structs).

They are the types the route table names as `returns`, so `/openapi.json` shows the fields these encode to; the
handlers build them (or dicts of exactly these fields) and nothing else.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meter.catalog.keys import Scope

__all__ = ["CLOUD_EVENT", "CreatedKey", "Deleted", "ErrorBody", "Health", "Revoked", "UsageResult"]


class ErrorBody(msgspec.Struct):
    """Every 4xx and 5xx answer: a machine-readable ``code`` and a message that says what to fix."""

    code: str
    message: str
    #: Per-event problems (`POST /v1/events`) or per-item problems, when there are any.
    issues: list[dict[str, Any]] | None = None
    #: Ingest: events accepted with a meter that could not read them.
    warnings: list[dict[str, Any]] | None = None


class Deleted(msgspec.Struct):
    deleted: str


class Revoked(msgspec.Struct):
    revoked: str


class CreatedKey(msgspec.Struct):
    """A new key: the secret (shown once, never stored) and the stored record."""

    key: str
    id: str
    tenant: str | None
    scopes: list[Scope]
    display: str
    created_at: float
    revoked: bool = False


class UsageResult(msgspec.Struct):
    """Usage as JSON: one row per window and group.

    A row has ``window_start``, ``window_end``, ``value`` (a decimal string), ``events``, and one member per
    ``group_by`` dimension.
    """

    meter: str
    start: str = msgspec.field(name="from")
    end: str = msgspec.field(name="to")
    data: list[dict[str, Any]] = []


class Health(msgspec.Struct):
    status: str
    reason: str | None = None


_DATE_TIME = {"type": "string", "format": "date-time"}
#: The JSON Schema of one event: the engine reads events itself (no Struct), event by event, with its own time rules.
CLOUD_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "A CloudEvent (structured JSON). Each event is checked on its own: one that cannot be read is "
    "listed in `issues` by index and the others are accepted (unless `atomic`).",
    "properties": {
        "specversion": {"type": "string", "const": "1.0"},
        "id": {"type": "string", "description": "Idempotency key, unique per tenant and source"},
        "source": {"type": "string"},
        "type": {"type": "string"},
        "subject": {"type": "string", "description": "The customer"},
        "time": {**_DATE_TIME, "description": "When it happened; the server's receive time when absent"},
        "data": {"type": "object"},
    },
    "required": ["specversion", "id", "source", "type", "subject"],
}
