"""Tax rates and the seller's tax settings, per tenant (the catalog's; the rules are :mod:`meter.catalog.tax`'s).

A rate is created (201; an existing id is 409 ``already_exists``), listed, read, and ended (``POST .../end``: its
``effective_to``, now by default), never edited or deleted: invoices taxed at it keep naming it. The settings (the
seller's country and region, the provider) are one item, replaced whole by ``PUT``; ``GET`` answers 404 until set.

Invariants: a body that does not match its type is a 400 ``invalid_catalog``; every catalog call runs on the thread
pool.
"""

from __future__ import annotations

from datetime import UTC, datetime

from meter.catalog.tax import TaxEnd, TaxRate, TaxSettings
from meter.exceptions import NotFound
from meter.server.context import Context, opened
from meter.server.http import Answer, Request
from meter.server.table import Body, PathParam, Route

__all__ = ["ROUTES"]


async def create_tax_rate(ctx: Context, request: Request, body: TaxRate) -> Answer:
    return 201, await ctx.call(opened(ctx.billing).create_tax_rate, request.tenant, body), {}


async def list_tax_rates(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).list_tax_rates, request.tenant), {}


async def get_tax_rate(ctx: Context, request: Request, rate_id: str) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).get_tax_rate, request.tenant, rate_id), {}


async def end_tax_rate(ctx: Context, request: Request, rate_id: str, body: TaxEnd) -> Answer:
    at = body.at or datetime.now(UTC)
    return 200, await ctx.call(opened(ctx.billing).end_tax_rate, request.tenant, rate_id, at), {}


async def put_tax_settings(ctx: Context, request: Request, body: TaxSettings) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).put_tax_settings, request.tenant, body), {}


async def get_tax_settings(ctx: Context, request: Request) -> Answer:
    settings = await ctx.call(opened(ctx.billing).get_tax_settings, request.tenant)
    if settings is None:
        raise NotFound(
            "this tenant has no tax settings yet: PUT /v1/tax-settings with the seller's country (and provider)"
        )
    return 200, settings, {}


RATE_ID = PathParam("rate_id", "de-vat", "The tax rate's id")

ROUTES = [
    Route(
        "POST",
        "/v1/tax-rates",
        "admin",
        create_tax_rate,
        "Create a tax rate (a jurisdiction's percentage, for a product tax code or every line, from a date)",
        status=201,
        returns=TaxRate,
        body=Body(TaxRate, "invalid_catalog"),
        errors=(409,),
    ),
    Route("GET", "/v1/tax-rates", "read", list_tax_rates, "List tax rates, ended ones included", returns=list[TaxRate]),
    Route(
        "GET",
        "/v1/tax-rates/{rate_id}",
        "read",
        get_tax_rate,
        "Get a tax rate",
        returns=TaxRate,
        path_params=(RATE_ID,),
    ),
    Route(
        "POST",
        "/v1/tax-rates/{rate_id}/end",
        "admin",
        end_tax_rate,
        "End a tax rate at `at` (now when absent): invoices finalized from then on are not taxed at it",
        returns=TaxRate,
        body=Body(TaxEnd, "invalid_catalog"),
        path_params=(RATE_ID,),
    ),
    Route(
        "PUT",
        "/v1/tax-settings",
        "admin",
        put_tax_settings,
        "Set the seller's tax settings: its country (and region) and the tax provider (catalog or stripe)",
        returns=TaxSettings,
        body=Body(TaxSettings, "invalid_catalog"),
    ),
    Route(
        "GET",
        "/v1/tax-settings",
        "read",
        get_tax_settings,
        "Get the seller's tax settings (404 until set)",
        returns=TaxSettings,
        errors=(404,),
    ),
]
