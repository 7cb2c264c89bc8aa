"""Revenue recognition and its reports (``/v1/revenue/...``), and the tenant's revenue settings.

The settings are one item per tenant (:mod:`meter.catalog.revenue`), replaced whole by ``PUT``; ``GET`` answers the
defaults until they are set. Reports are read on the thread pool: each reads the ledger, the invoices or the export.
"""

from __future__ import annotations

from meter.catalog.revenue import RevenueSettings
from meter.server.context import Context, opened
from meter.server.http import Answer, Request
from meter.server.table import Body, Route

__all__ = ["ROUTES"]


async def put_revenue_settings(ctx: Context, request: Request, body: RevenueSettings) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).put_revenue_settings, request.tenant, body), {}


async def get_revenue_settings(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).get_revenue_settings, request.tenant), {}


ROUTES = [
    Route(
        "PUT",
        "/v1/revenue/settings",
        "admin",
        put_revenue_settings,
        "Set the revenue settings: the reporting time zone, the breakage policy, the general ledger's account codes",
        returns=RevenueSettings,
        body=Body(RevenueSettings, "invalid_catalog"),
    ),
    Route(
        "GET",
        "/v1/revenue/settings",
        "read",
        get_revenue_settings,
        "Get the revenue settings (the defaults until set: UTC, breakage at expiry, the default account codes)",
        returns=RevenueSettings,
    ),
]
