"""What every vendor's ingest shares: its events made into meter events, counted all or nothing.

A vendor's event becomes a CloudEvent (see the README's "Events"): its event name or code becomes ``type``, its
idempotency key ``id``, the vendor ``source`` (so that two vendors' keys never meet), its properties ``data``, and the
customer it names ``subject``: the meter customer that id names (its own id, one of its ``aliases``, or its
``stripe_customer``), else the id as sent. A timestamp left out is left out (the receive time counts, and a retry
is still a duplicate: a payload's time is compared only when sent).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import msgspec

from meter.exceptions import BatchRejected, InvalidInput, NotFound
from meter.schemas import AmendEvent, CancelEvent, CorrectionRequest, IngestResult
from meter.server.context import Context, opened
from meter.server.http import Request

__all__ = ["Issue", "count", "each", "event", "from_unix", "read", "refuse", "subjects"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Issue:
    """The vendor's event at ``index`` cannot be made a meter event: ``field`` and what to fix."""

    index: int
    id: str | None
    field: str
    message: str


T = TypeVar("T")


def read(body: bytes, type_: type[T], what: str) -> T:
    """The request's JSON body as ``type_`` (``what`` it should be, for the message), else a 400 ``invalid_json``."""
    try:
        return msgspec.json.decode(body, type=type_)
    except (msgspec.DecodeError, RecursionError) as e:  # msgspec raises RecursionError for deep nesting
        raise InvalidInput(f"the body must be {what}: {e}", code="invalid_json") from None
    except msgspec.ValidationError as e:
        raise InvalidInput(f"the body must be {what}: {e}", code="invalid_body") from None


def each(items: Sequence[object], type_: type[T], key: str, limit: int) -> list[T]:
    """Every item as ``type_``, or a refusal naming each item that is not one (by index, with the ``key`` it has)."""
    if len(items) > limit:
        raise InvalidInput(f"{len(items)} events in one request; the limit is {limit}", code="too_many_events")
    made: list[T] = []
    issues: list[Issue] = []
    for index, item in enumerate(items):
        try:
            made.append(msgspec.convert(item, type_, str_keys=True))
        except msgspec.ValidationError as e:
            id_ = item.get(key) if isinstance(item, dict) else None
            issues.append(Issue(index, id_ if isinstance(id_, str) else None, _field(str(e)), str(e)))
    if issues:
        raise refuse(issues, len(items))
    return made


def _field(message: str) -> str:
    """The field a msgspec validation message names (``$.properties.x``, a missing field), else ``event``."""
    if found := re.search(r"at `\$(?:\[\d+\])?\.([^`]+)`", message):
        return found.group(1)
    if found := re.search(r"missing required field `([^`]+)`", message):
        return found.group(1)
    return "event"


def refuse(issues: Sequence[Issue], of: int) -> BatchRejected:
    """The error refusing a request whose events ``issues`` name (``of``: how many it has): nothing was counted."""
    first = issues[0]
    rows = [
        {"index": i.index, "id": i.id, "code": "invalid_field", "message": f"{i.field}: {i.message}", "field": i.field}
        for i in issues
    ]
    message = (
        f"{len(issues)} of the {of} events cannot be counted (the first, #{first.index}: {first.field}: "
        f"{first.message}); nothing was counted"
    )
    return BatchRejected(message, details=json.dumps(rows))


def event(
    source: str, id_: str, type_: str, subject: str, time: str | None, data: dict[str, Any] | None
) -> dict[str, Any]:
    """A meter event (a CloudEvent) from a vendor's."""
    made: dict[str, Any] = {"specversion": "1.0", "id": id_, "source": source, "type": type_, "subject": subject}
    if time is not None:
        made["time"] = time
    if data:
        made["data"] = data
    return made


def from_unix(value: object) -> str:
    """A Unix time in seconds (an integer, or a decimal such as ``"1796152693.250"``) as RFC 3339 in UTC."""
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise ValueError(f"a Unix time in seconds is a number; got {value!r}")
    try:
        seconds = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(
            f'a Unix time in seconds is a number such as 1796152693 or "1796152693.25"; got {value!r}'
        ) from None
    if not seconds.is_finite() or not 0 <= seconds < 253402300800:  # before year 10000
        raise ValueError(f"{value!r} is not a Unix time in seconds")
    micros = int((seconds * 1_000_000).to_integral_value())
    return (_EPOCH + timedelta(microseconds=micros)).isoformat().replace("+00:00", "Z")


async def subjects(ctx: Context, tenant: str, names: Iterable[str], subscriptions: bool = False) -> dict[str, str]:
    """The subject each id names: the meter customer it names (its id, an alias, its ``stripe_customer``), else itself.

    With ``subscriptions``, an id that is a meter subscription's names that subscription's customer first (Lago's
    events name subscriptions). Read on the thread pool, as every catalog read.
    """
    catalog = opened(ctx.billing)

    def named(name: str) -> str:
        if subscriptions:
            try:
                customer: str = catalog.get_subscription(tenant, name).customer
                return customer
            except NotFound:
                pass
        return catalog.customer_named(tenant, name) or name

    wanted = sorted(set(names))
    return dict(zip(wanted, await ctx.call(lambda: [named(n) for n in wanted]), strict=True))


async def count(ctx: Context, request: Request, events: list[dict[str, Any]]) -> IngestResult:
    """Counts ``events`` all or nothing (``BatchRejected`` names those that cannot be counted): durable on return."""
    if not events:
        raise InvalidInput("the request has no events: send at least one", code="empty_batch")
    body = msgspec.json.encode(events)
    return await ctx.call(opened(ctx.engine).ingest, request.tenant, body, atomic=True)


async def correct(ctx: Context, request: Request, items: list[CancelEvent | AmendEvent], reason: str) -> None:
    """Applies a vendor's correction (an amend, a deprecation, a cancel) all or nothing: durable on return."""
    await ctx.call(
        opened(ctx.engine).correct, request.tenant, CorrectionRequest(reason=reason, items=items), actor=request.actor
    )
