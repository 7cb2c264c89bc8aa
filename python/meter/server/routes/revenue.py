"""Revenue recognition and its reports (``/v1/revenue/...``), and the tenant's revenue settings.

The settings are one item per tenant (:mod:`meter.catalog.revenue`), replaced whole by ``PUT``; ``GET`` answers the
defaults until they are set. Reports are read on the thread pool: each reads the ledger, the invoices or the export.
"""

from __future__ import annotations

from datetime import date

from meter.catalog.revenue import RevenueSettings
from meter.money.revenue.recognize import Close
from meter.server.context import Context, opened
from meter.server.http import Answer, Request
from meter.server.table import REQUIRED_DAY, Body, Param, Route

__all__ = ["ROUTES"]


async def put_revenue_settings(ctx: Context, request: Request, body: RevenueSettings) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).put_revenue_settings, request.tenant, body), {}


async def get_revenue_settings(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).get_revenue_settings, request.tenant), {}


async def recognize(ctx: Context, request: Request, through: date) -> Answer:
    return 200, await ctx.call(opened(ctx.invoicer).recognize, request.tenant, through), {}


ROUTES = [
    Route(
        "POST",
        "/v1/revenue/recognize",
        "admin",
        recognize,
        "Close the books through a day: post the revenue earned by its end, once (running it again posts nothing)",
        returns=Close,
        params=(
            Param(
                "through",
                REQUIRED_DAY,
                "The last day to recognize, YYYY-MM-DD in the reporting time zone; a day that has ended",
            ),
        ),
        description=(
            "Fees billed in advance are earned by day over their service period, usage as it was consumed (invoiced "
            "or not: unbilled revenue), prepaid commits as usage draws them down, and what an expired commit left "
            "is breakage. A close through a later month steps through each month end in between. Each step posts "
            "one `revenue_recognized` (and `breakage`) journal entry per currency, dated that day."
        ),
    ),
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
