"""Meters and their usage: create, list, get, delete a meter; query its usage; page through what it skipped.

Invariants: every engine call runs on the thread pool, and so does encoding a usage answer (88k rows take a few
hundred ms, which would stall every other request, health checks included). A meter is deleted through the
billing catalog, which refuses (409 `in_use`) while a price, an override or a product names it. Usage answers as
JSON (rows encoded by the engine from the Arrow columns, no Python object per row), CSV or Arrow IPC, as `Accept`
asks.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

import msgspec

from meter.engine import Usage, WindowSize
from meter.schemas import CreatedMeter, Meter, MeterSpec, SkippedEvents
from meter.server.context import Context, opened
from meter.server.formats import TABLE_MEDIA, table_answer
from meter.server.http import Answer, Request
from meter.server.models import Deleted, UsageResult
from meter.server.table import FILTER, LIMIT, TEXT, TEXTS, TIME, Body, Param, PathParam, Route, enum

__all__ = ["ROUTES", "encode_usage"]


async def create_meter(ctx: Context, request: Request, body: MeterSpec) -> Answer:
    return 201, await ctx.call(opened(ctx.engine).create_meter, request.tenant, body), {}


async def list_meters(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.engine).list_meters, request.tenant), {}


async def get_meter(ctx: Context, request: Request, slug: str) -> Answer:
    return 200, await ctx.call(opened(ctx.engine).get_meter, request.tenant, slug), {}


async def delete_meter(ctx: Context, request: Request, slug: str) -> Answer:
    # Through the catalog: refused (409 in_use) while a price, an override or a product names the meter.
    await ctx.call(opened(ctx.billing).delete_meter, request.tenant, slug)
    return 200, {"deleted": slug}, {}


async def usage(
    ctx: Context,
    request: Request,
    slug: str,
    from_: datetime,
    to: datetime,
    window_size: str | None,
    subject: list[str],
    group_by: list[str],
    filters: dict[str, list[str]],
    tz: str | None,
    accept: str,
) -> Answer:
    result = await ctx.call(
        opened(ctx.engine).usage,
        request.tenant,
        slug,
        start=from_,
        end=to,
        # Any text: the engine refuses what is not a WindowSize (400, naming the allowed values).
        window_size=cast("WindowSize | None", window_size),
        subjects=subject,
        group_by=group_by,
        filters=filters,
        tz=tz,
    )
    return await ctx.call(encode_usage, result, slug, from_, to, accept)


async def skipped(
    ctx: Context, request: Request, slug: str, from_: datetime, to: datetime, limit: int, after: str | None
) -> Answer:
    page = await ctx.call(
        opened(ctx.engine).skipped, request.tenant, slug, start=from_, end=to, after=after, limit=limit
    )
    return (
        200,
        SkippedEvents(
            meter=slug,
            from_=from_.isoformat(),
            to=to.isoformat(),
            data=page.events,
            next=page.next,
            scanned=page.scanned,
        ),
        {},
    )


def encode_usage(result: Usage, slug: str, start: datetime, end: datetime, accept: str) -> Answer:
    """A usage answer as CSV, Arrow IPC or JSON, whichever `accept` asks for (JSON by default)."""
    if (table := table_answer(result.table, accept)) is not None:
        return table
    # The rows are encoded by the engine from the Arrow columns (no Python object per row), then spliced into the
    # envelope: the same JSON the per-row dicts gave, as fast as CSV.
    head = msgspec.json.encode({"meter": slug, "from": start.isoformat(), "to": end.isoformat(), "data": None})
    return 200, head[: -len(b"null}")] + result.json_rows() + b"}", {}


SLUG = PathParam("slug", "tokens", "The meter's slug")
_ACCEPT_MEDIA = ["application/json", "text/csv", "application/vnd.apache.arrow.stream"]

ROUTES = [
    Route(
        "POST",
        "/v1/meters",
        "admin",
        create_meter,
        "Create a meter (backfilled from the retained events)",
        status=201,
        returns=CreatedMeter,
        body=Body(MeterSpec),
        errors=(409,),
    ),
    Route("GET", "/v1/meters", "read", list_meters, "List meters", returns=list[Meter]),
    Route("GET", "/v1/meters/{slug}", "read", get_meter, "Get a meter", returns=Meter, path_params=(SLUG,)),
    Route(
        "DELETE",
        "/v1/meters/{slug}",
        "admin",
        delete_meter,
        "Delete a meter and its usage (409 in_use while a price names it)",
        returns=Deleted,
        path_params=(SLUG,),
        errors=(409,),
    ),
    Route(
        "GET",
        "/v1/meters/{slug}/usage",
        "read",
        usage,
        "Usage over [from, to)",
        returns=UsageResult,
        media=TABLE_MEDIA,
        path_params=(SLUG,),
        params=(
            Param("from", TIME, "Start (inclusive), RFC 3339"),
            Param("to", TIME, "End (exclusive), RFC 3339"),
            Param(
                "window_size",
                enum("minute", "hour", "day", "month"),
                "Windows of this size; the whole range when absent. Usage older than 40 days is kept per hour "
                "and older than 400 days per UTC day: windows finer than that there (or bounds off its whole "
                "hours or days) are a 400 `resolution_unavailable`",
            ),
            Param("subject", TEXTS, "Only these customers"),
            Param("group_by", TEXTS, "Dimensions (or `subject`) to group by"),
            Param(
                "filter",
                FILTER,
                "`filter[DIMENSION]=VALUE`: only rows whose dimension has this value; repeat a dimension "
                "to accept several values",
                arg="filters",
            ),
            Param("tz", TEXT, "IANA time zone where day and month windows begin (default UTC)"),
            Param("accept", enum(*_ACCEPT_MEDIA), "The answer's format (JSON by default)", where="header"),
        ),
    ),
    Route(
        "GET",
        "/v1/meters/{slug}/skipped",
        "read",
        skipped,
        "Events of [from, to) the meter could not read, with why (pages: `limit` 1-1000, then `after`=`next`)",
        returns=SkippedEvents,
        path_params=(SLUG,),
        params=(
            Param("from", TIME, "Start (inclusive), RFC 3339"),
            Param("to", TIME, "End (exclusive), RFC 3339"),
            Param("limit", LIMIT, "Events per page (100 when absent)"),
            Param("after", TEXT, "The `next` of the previous page"),
        ),
    ),
]
