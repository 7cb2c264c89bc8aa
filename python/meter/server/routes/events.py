"""Ingest: `POST /v1/events`, a batch of CloudEvents handed to the engine as the raw (decompressed) body.

The engine parses, validates, deduplicates and commits the batch in one call, on the thread pool (it releases the
GIL in Rust), so concurrent requests share commits. Invariants: the answer is 200 when at least one event was
accepted or was a duplicate (the others are in `issues`); when none was, a 400 `no_events_accepted` error body that
still carries every per-event issue; an atomic batch applies all or nothing (422 `batch_rejected`).

`POST /bench/discard` (only with METER_BENCH_ENDPOINTS=1, never documented) is `make bench-http`'s ceiling: the
same reading, auth and answer, no engine.
"""

from __future__ import annotations

import msgspec

from meter.schemas import IngestResult
from meter.server.context import Context, opened
from meter.server.examples import EXAMPLES
from meter.server.http import Answer, Request
from meter.server.table import BOOL, Body, Param, Route

__all__ = ["BENCH_ROUTES", "ROUTES"]

_EVENT = {"$ref": "#/components/schemas/CloudEvent"}
_EVENTS = {"type": "array", "items": _EVENT}


async def post_events(ctx: Context, request: Request, atomic: bool) -> Answer:
    result = await ctx.call(opened(ctx.engine).ingest, request.tenant, request.body, atomic=atomic)
    if result.accepted or result.duplicates or not result.issues:
        return 200, result, {}
    # Nothing accepted: an error body like every other (code, message), with the per-event issues.
    first = result.issues[0]
    message = (
        f"none of the {len(result.issues)} events was accepted; see issues (the first, #{first.index} "
        f"{first.id!r}: {first.code}: {first.message})"
    )
    return 400, {"code": "no_events_accepted", "message": message, **msgspec.structs.asdict(result)}, {}


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

#: Served only with METER_BENCH_ENDPOINTS=1.
BENCH_ROUTES = [
    Route("POST", "/bench/discard", "ingest", discard, "Receive and discard (benchmark ceiling)", documented=False)
]
