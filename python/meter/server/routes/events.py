"""Events: ingest, search, one event, and corrections.

The routes: `POST /v1/events`, `GET /v1/events`, `GET /v1/events/{source}/{id}`, `POST /v1/events/corrections`.

Ingest hands a batch of CloudEvents to the engine as the raw (decompressed) body.

The engine parses, validates, deduplicates and commits the batch in one call, on the thread pool (it releases the
GIL in Rust), so concurrent requests share commits. Invariants: the answer is 200 when at least one event was
accepted or was a duplicate (the others are in `issues`); when none was, a 400 `no_events_accepted` error body that
still carries every per-event issue; an atomic batch applies all or nothing (422 `batch_rejected`).

Search and lookup read the raw events export and, for the commits it has not written yet, the engine's retained
events (`meter.lake.events.search`): an event is found as soon as it is acknowledged. A lookup without time bounds
reads every exported day of the tenant. One event's status and history come from its corrections
(`Engine.event_history`); a cancelled one shows no version.

Corrections hand the request to the engine (`Engine.correct`: one synced commit, all or nothing) with the key as the
actor its history keeps.

`POST /bench/discard` (only with METER_BENCH_ENDPOINTS=1, never documented) is `make bench-http`'s ceiling: the
same reading, auth and answer, no engine.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import polars as pl
import pyarrow as pa

from meter.billing import trace
from meter.billing.invoices import Invoice
from meter.encoding import plain
from meter.engine import event_values
from meter.lake import events as lake_events
from meter.schemas import (
    Correction,
    CorrectionRequest,
    CorrectionResult,
    EventPage,
    EventRecord,
    FoundEvent,
    IngestResult,
    LineEvent,
    LineEvents,
    MeterCount,
    QueuedIngest,
)
from meter.server.context import Context, opened
from meter.server.errors import ApiError
from meter.server.examples import EXAMPLES
from meter.server.formats import TABLE_MEDIA, table_answer
from meter.server.http import Answer, Request
from meter.server.table import BOOL, LIMIT, TEXT, TEXTS, TIME, Body, Param, PathParam, Route

__all__ = ["BENCH_ROUTES", "ROUTES"]

_EVENT = {"$ref": "#/components/schemas/CloudEvent"}
_EVENTS = {"type": "array", "items": _EVENT}


async def post_events(ctx: Context, request: Request, atomic: bool) -> Answer:
    result = await ctx.call(opened(ctx.engine).ingest, request.tenant, request.body, atomic=atomic)
    if isinstance(result, QueuedIngest) and result.pending:
        # Cluster mode: durable in the log, some outcomes not known yet (meter.cluster.edge).
        return 202, result, {"location": f"/v1/events/batches/{result.batch}"}
    if result.accepted or result.duplicates or not result.issues:
        return 200, result, {}
    # Nothing accepted: an error body like every other (code, message), with the per-event issues.
    first = result.issues[0]
    message = (
        f"none of the {len(result.issues)} events was accepted; see issues (the first, #{first.index} "
        f"{first.id!r}: {first.code}: {first.message})"
    )
    return 400, {"code": "no_events_accepted", "message": message, **msgspec.structs.asdict(result)}, {}


async def search(
    ctx: Context,
    request: Request,
    subject: list[str],
    type_: list[str],
    from_: datetime,
    to: datetime,
    after: str | None,
    limit: int,
    accept: str,
) -> Answer:
    what = lake_events.Search(subjects=tuple(subject), types=tuple(type_), start=from_, end=to)
    events, last = await ctx.call(_search, ctx, request.tenant, what, _cursor(after), limit)
    following = None if last is None else f"{last[0]}.{last[1]}"
    if (table := _table(events.drop("ordinal").rename({"seq": "commit"}), accept, following)) is not None:
        return table
    return 200, EventPage([_found(row) for row in events.iter_rows(named=True)], following), {}


async def get_event(ctx: Context, request: Request, source: str, event: str) -> Answer:
    engine = opened(ctx.engine)
    corrections = await ctx.call(engine.event_history, request.tenant, source, event)
    cancelled = bool(corrections) and corrections[-1].action == "cancel"
    events, received = pl.DataFrame(), None
    if not cancelled:
        out = opened(ctx.invoicer).out
        events, received = await ctx.call(lake_events.find, engine, out, request.tenant, source, event)  # type: ignore[arg-type]
    if not events.height and not corrections:
        raise ApiError(
            404,
            "not_found",
            f"no event {event!r} of source {source!r} was accepted (or it is past retention and not exported)",
        )
    row = events.row(0, named=True) if events.height else None
    counts = []
    if row is not None:
        meters = [m for m in await ctx.call(engine.list_meters, request.tenant) if m.event_type == row["type"]]
        for meter in sorted(meters, key=lambda m: m.slug):
            value = event_values(meter.spec(), pa.array([row["data"]], pa.string()))[0].as_py()
            counts.append(MeterCount(meter.slug, None if value is None else plain(value.normalize())))
    # How it came: accepted by ingest (its first correction says the commit), or added by a backfill's close.
    first = corrections[0] if corrections else None
    history: list[dict[str, Any]] = []
    if first is None or first.action != "add":
        commit = first.replaced.seq if first is not None and first.replaced is not None else row and row["seq"]
        history.append({"change": "accepted", "commit": commit})
        if received is not None and first is None:  # known while the identity is in the dedup window
            history[0]["at"] = received.isoformat()
    history += [_corrected(c) for c in corrections]
    amended = any(c.action in ("amend", "restore") for c in corrections)
    status: Literal["counted", "amended", "cancelled"] = (
        "cancelled" if cancelled else "amended" if amended else "counted"
    )
    return 200, EventRecord(None if row is None else _found(row), status, history, counts), {}


#: How an event's history names each correction.
_CHANGES = {"cancel": "cancelled", "amend": "amended", "add": "added", "restore": "restored"}


def _corrected(c: Correction) -> dict[str, Any]:
    """One correction as an event's history shows it."""
    at = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=c.at_us)).isoformat()
    change = {"change": _CHANGES[c.action], "commit": c.seq, "at": at, "reason": c.reason, "actor": c.actor}
    return change | {"replaced": msgspec.to_builtins(c.replaced), "replacement": msgspec.to_builtins(c.replacement)}


async def post_corrections(ctx: Context, request: Request, body: CorrectionRequest) -> Answer:
    return 200, await ctx.call(opened(ctx.engine).correct, request.tenant, body, actor=request.actor), {}


async def line_events(
    ctx: Context, request: Request, invoice_id: str, line: str, after: str | None, limit: int, accept: str
) -> Answer:
    if not line.isdigit():
        raise ApiError(400, "invalid_path", f"a line is its number on the invoice, from 1; got {line!r}")
    invoice = await ctx.call(opened(ctx.invoices).get, request.tenant, invoice_id)
    billed = trace.usage_line(invoice, int(line))
    events, last = await ctx.call(_traced, ctx, request.tenant, invoice, int(line), _cursor(after), limit)
    following = None if last is None else f"{last[0]}.{last[1]}"
    if (table := _table(events.drop("ordinal").rename({"seq": "commit"}), accept, following)) is not None:
        return table
    meter = await ctx.call(opened(ctx.engine).get_meter, request.tenant, billed.meter or "")
    found = [
        LineEvent(**msgspec.structs.asdict(_found(row)), value=plain(row["value"].normalize()))
        for row in events.iter_rows(named=True)
    ]
    quantity = None if billed.quantity is None else plain(billed.quantity)
    page = LineEvents(
        invoice_id,
        int(line),
        meter.slug,
        meter.aggregation,
        quantity,
        billed.period_start,
        billed.period_end,
        found,
        following,
    )
    return 200, page, {}


def _traced(
    ctx: Context, tenant: str, invoice: Invoice, line: int, after: tuple[int, int], limit: int
) -> tuple[pl.DataFrame, tuple[int, int] | None]:
    return trace.line_events(opened(ctx.engine), opened(ctx.invoicer).out, tenant, invoice, line, after, limit)  # type: ignore[arg-type]


def _search(
    ctx: Context, tenant: str, what: lake_events.Search, after: tuple[int, int], limit: int
) -> tuple[pl.DataFrame, tuple[int, int] | None]:
    """The search over the engine and the export directory the invoicer reads."""
    return lake_events.search(opened(ctx.engine), opened(ctx.invoicer).out, tenant, what, after, limit)  # type: ignore[arg-type]


def _found(row: dict[str, object]) -> FoundEvent:
    data = msgspec.json.decode(str(row["data"])) if row["data"] else {}
    return FoundEvent(
        source=str(row["source"]),
        id=str(row["id"]),
        type=str(row["type"]),
        subject=str(row["subject"]),
        time=row["time"],  # type: ignore[arg-type]
        data=data,
        commit=int(row["seq"]),  # type: ignore[call-overload]
    )


def _cursor(after: str | None) -> tuple[int, int]:
    if after is None:
        return 0, -1
    seq, _, ordinal = after.partition(".")
    if not (seq.isdigit() and ordinal.isdigit()):
        raise ApiError(400, "invalid_query", f"'after' is the 'next' of a previous page, such as '12.3'; got {after!r}")
    return int(seq), int(ordinal)


def _table(frame: pl.DataFrame, accept: str, following: str | None) -> Answer | None:
    """A page as CSV or Arrow (``data`` as its JSON text), the next page's cursor in ``Meter-Next``; None for JSON."""
    return table_answer(frame.to_arrow(), accept, {"meter-next": following} if following else {})


async def discard(ctx: Context, request: Request) -> Answer:
    return 200, {"received": len(request.body)}, {}


_MEDIA = ("application/json", "application/cloudevents-batch+json", "application/cloudevents+json")

ROUTES = [
    Route(
        "POST",
        "/v1/events",
        "ingest",
        post_events,
        "Ingest a batch of CloudEvents (gzip or zstd Content-Encoding accepted)",
        returns=IngestResult,
        body=Body(
            content={
                "application/cloudevents-batch+json": (_EVENTS, [EXAMPLES["CloudEvent"]]),
                "application/json": (_EVENTS, [EXAMPLES["CloudEvent"]]),
                "application/cloudevents+json": (_EVENT, EXAMPLES["CloudEvent"]),
            },
            accept=_MEDIA,
            accept_message="send application/cloudevents-batch+json, application/json or application/cloudevents+json",
        ),
        params=(
            Param(
                "atomic",
                BOOL,
                "All or nothing: when one event cannot be applied, none is (422 batch_rejected). true/false, "
                "1/0 or yes/no in any case; anything else is a 400",
            ),
        ),
        errors=(413, 415, 422, 429),
        description="200 when at least one event was accepted (or was a duplicate); the others are in "
        "`issues`, and events a meter could not read are accepted with `warnings`. 400 "
        "`no_events_accepted` with `issues` when none was.",
    ),
]

ROUTES += [
    Route(
        "GET",
        "/v1/events",
        "read",
        search,
        "Search the accepted events",
        returns=EventPage,
        media=TABLE_MEDIA,
        params=(
            Param("subject", TEXTS, "Only these customers"),
            Param("type", TEXTS, "Only these event types", arg="type_"),
            Param("from", TIME, "Event time from (inclusive)"),
            Param("to", TIME, "Event time to (exclusive)"),
            Param("after", TEXT, "The `next` of the previous page"),
            Param("limit", LIMIT, "Events per page (1-1000, 100 by default)"),
            Param("accept", TEXT, "application/json, text/csv or application/vnd.apache.arrow.stream", where="header"),
        ),
        description="In the order they were accepted, JSON, CSV or Arrow (`Accept`); CSV and Arrow carry `data` as "
        "JSON text and the next page's `after` in the `Meter-Next` header.",
    ),
    Route(
        "GET",
        "/v1/events/{source}/{event}",
        "read",
        get_event,
        "Get one accepted event",
        returns=EventRecord,
        path_params=(
            PathParam("source", "gw", "The event's source"),
            PathParam("event", "req-1", "The event's id"),
        ),
        errors=(404,),
        description="The version that counts (none once cancelled), its status (counted, amended or cancelled), its "
        "history (accepted, then each correction with when, who, why and the version it replaced), and what each "
        "meter of its type counts of it.",
    ),
    Route(
        "POST",
        "/v1/events/corrections",
        "ingest",
        post_corrections,
        "Cancel or amend accepted events",
        returns=CorrectionResult,
        body=Body(CorrectionRequest),
        errors=(422,),
        description="Every aggregate the events touched is restated (usage, live balances, the next export; invoices "
        "already finalized get a prior-period adjustment on the next one), in one durable commit. All or nothing: "
        "422 `batch_rejected` lists each item that cannot be applied by its index (`not_found`, `cancelled`, "
        "`too_old`, `duplicate_item`, `past_retention`, or the event's own issue). A correction already applied is "
        "`unchanged`, so a retry applies once.",
    ),
]

ROUTES += [
    Route(
        "GET",
        "/v1/invoices/{invoice_id}/lines/{line}/events",
        "read",
        line_events,
        "List the events behind a usage line",
        returns=LineEvents,
        media=TABLE_MEDIA,
        path_params=(
            PathParam("invoice_id", "s1-20261101", "The invoice"),
            PathParam("line", "1", "The line's number on the invoice, from 1"),
        ),
        params=(
            Param("after", TEXT, "The `next` of the previous page"),
            Param("limit", LIMIT, "Events per page (1-1000, 100 by default)"),
            Param("accept", TEXT, "application/json, text/csv or application/vnd.apache.arrow.stream", where="header"),
        ),
        errors=(404,),
        description="The customer's events of the meter's type in the line's service period that the meter counts, "
        "each with the value it reads; aggregated as the meter aggregates, they give the line's quantity. CSV and "
        "Arrow carry `data` as JSON text and the next page's `after` in the `Meter-Next` header.",
    ),
]

#: Served only with METER_BENCH_ENDPOINTS=1.
BENCH_ROUTES = [
    Route("POST", "/bench/discard", "ingest", discard, "Receive and discard (benchmark ceiling)", documented=False)
]
