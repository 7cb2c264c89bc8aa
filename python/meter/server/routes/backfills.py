"""Backfills (:mod:`meter.backfills`): open one for a range, stage its events, then close it or revert it.

Closing replaces the range's usage whole, in one correction.

Invariants: the tenant is the key's (another tenant's backfill is a 404); opening, staging, closing and reverting need
``ingest`` (the scope that reports usage), reading ``read``; every call runs on the thread pool.
"""

from __future__ import annotations

from meter.backfills import Backfill, BackfillBody, Staged
from meter.server.context import Context, opened
from meter.server.examples import EXAMPLES
from meter.server.http import Answer, Request
from meter.server.table import Body, PathParam, Route

__all__ = ["ROUTES"]

_ID = PathParam("backfill_id", "bf-november", "The backfill's id")
_EVENTS = {"type": "array", "items": {"$ref": "#/components/schemas/CloudEvent"}}


async def open_backfill(ctx: Context, request: Request, body: BackfillBody) -> Answer:
    return 201, await ctx.call(opened(ctx.backfills).open, request.tenant, body), {}


async def list_backfills(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.backfills).list, request.tenant), {}


async def get_backfill(ctx: Context, request: Request, backfill_id: str) -> Answer:
    return 200, await ctx.call(opened(ctx.backfills).get, request.tenant, backfill_id), {}


async def stage(ctx: Context, request: Request, backfill_id: str) -> Answer:
    return 200, await ctx.call(opened(ctx.backfills).stage, request.tenant, backfill_id, request.body), {}


async def close(ctx: Context, request: Request, backfill_id: str) -> Answer:
    return 200, await ctx.call(opened(ctx.backfills).close, request.tenant, backfill_id, request.actor), {}


async def revert(ctx: Context, request: Request, backfill_id: str) -> Answer:
    return 200, await ctx.call(opened(ctx.backfills).revert, request.tenant, backfill_id, request.actor), {}


ROUTES = [
    Route(
        "POST",
        "/v1/backfills",
        "ingest",
        open_backfill,
        "Open a backfill",
        returns=Backfill,
        status=201,
        body=Body(BackfillBody),
        errors=(409,),
        description="For `[start, end)`, of one `customer` and one `event_type` when given. The same `id` opened "
        "again with the same range answers the backfill that exists (409 `already_exists` with another).",
    ),
    Route("GET", "/v1/backfills", "read", list_backfills, "List backfills", returns=list[Backfill]),
    Route(
        "GET",
        "/v1/backfills/{backfill_id}",
        "read",
        get_backfill,
        "Get a backfill",
        returns=Backfill,
        path_params=(_ID,),
        errors=(404,),
    ),
    Route(
        "POST",
        "/v1/backfills/{backfill_id}/events",
        "ingest",
        stage,
        "Stage events into a backfill",
        returns=Staged,
        path_params=(_ID,),
        body=Body(
            content={"application/json": (_EVENTS, [EXAMPLES["CloudEvent"]])},
            accept=("application/json",),
            accept_message="send application/json",
        ),
        errors=(404, 409, 422),
        description="A JSON array of CloudEvents, each with a `time` in the backfill's range (and its customer and "
        "type, when it has them); they count nowhere until the backfill is closed. All or none (422 with the "
        "issues by index); an event staged again replaces itself.",
    ),
    Route(
        "POST",
        "/v1/backfills/{backfill_id}/close",
        "ingest",
        close,
        "Close a backfill",
        returns=Backfill,
        path_params=(_ID,),
        errors=(404, 409, 422),
        description="In one correction: every event counted in the range that the backfill does not carry is "
        "cancelled (unless `replace` is false), those it carries are amended, the new ones added; every aggregate "
        "is restated. Closing a closed backfill answers it as it is.",
    ),
    Route(
        "POST",
        "/v1/backfills/{backfill_id}/revert",
        "ingest",
        revert,
        "Revert a backfill",
        returns=Backfill,
        path_params=(_ID,),
        errors=(404, 422),
        description="A pending backfill's staged events are dropped; a closed one's correction is undone (the events "
        "it cancelled or amended restored, those it added cancelled).",
    ),
]
