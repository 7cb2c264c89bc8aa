"""Revenue recognition and its reports (``/v1/revenue/...``), and the tenant's revenue settings.

The settings are one item per tenant (:mod:`meter.catalog.revenue`), replaced whole by ``PUT``; ``GET`` answers the
defaults until they are set. Reports are read on the thread pool: each reads the ledger, the invoices or the export.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast
from zoneinfo import ZoneInfo

from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog
from meter.catalog.revenue import RevenueSettings
from meter.money.revenue import aging
from meter.money.revenue.days import report_day
from meter.server.context import Context, opened
from meter.server.errors import ApiError
from meter.server.http import Answer, Request
from meter.server.table import TEXT, Body, Param, Route, enum

__all__ = ["ROUTES"]


async def put_revenue_settings(ctx: Context, request: Request, body: RevenueSettings) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).put_revenue_settings, request.tenant, body), {}


async def get_revenue_settings(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).get_revenue_settings, request.tenant), {}


def _format(fmt: str | None, accept: str, formats: dict[str, str], default: str) -> str:
    """``format`` when given, else the first of ``formats`` but ``default`` that ``Accept`` names, else ``default``."""
    if fmt is not None:
        if fmt not in formats:
            raise ApiError(400, "invalid_query", f"'format' must be one of {', '.join(formats)}; got {fmt!r}")
        return fmt
    for name, media in formats.items():
        if name != default and media in accept:
            return name
    return default


def _stores(ctx: Context) -> tuple[BillingCatalog, InvoiceStore]:
    # A store a degraded start could not open is an `Unavailable`: its first use answers 503 store_unavailable.
    return cast("BillingCatalog", opened(ctx.billing)), cast("InvoiceStore", opened(ctx.invoices))


#: The formats of the AR aging, by their ``format`` value and media type.
AGING_FORMATS = {"json": "application/json", "csv": "text/csv"}


def _aging_answer(billing: BillingCatalog, store: InvoiceStore, tenant: str, as_of: str | None, fmt: str) -> Answer:
    settings = billing.get_revenue_settings(tenant)
    at = report_day(as_of, "as_of", ZoneInfo(settings.timezone), datetime.now(UTC))
    report = aging.aging(store, tenant, settings, at)
    if fmt == "csv":
        return 200, aging.csv_bytes(report), {"content-type": "text/csv"}
    return 200, report, {}


async def get_ar_aging(ctx: Context, request: Request, as_of: str | None, fmt: str | None, accept: str) -> Answer:
    fmt = _format(fmt, accept, AGING_FORMATS, "json")
    return await ctx.call(_aging_answer, *_stores(ctx), request.tenant, as_of, fmt)


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
    Route(
        "GET",
        "/v1/revenue/ar-aging",
        "read",
        get_ar_aging,
        "Accounts-receivable aging: what each customer owes at a date, by days past due (current, 1-30 ... 90+)",
        returns=aging.Aging,
        media={"text/csv": {"type": "string"}},
        params=(
            Param(
                "as_of",
                TEXT,
                "A date YYYY-MM-DD (through the end of that day in the reporting time zone) or an RFC 3339 instant; "
                "now when absent",
            ),
            Param(
                "format",
                enum(*AGING_FORMATS),
                "json (the default) or csv (a row per customer and currency, then each currency's total with an "
                "empty customer)",
                arg="fmt",
            ),
            Param(
                "accept", enum(*AGING_FORMATS.values()), "The answer's format when `format` is absent", where="header"
            ),
        ),
        description=(
            "What is owed is read from the journal (receivable debits minus credits of each invoice's entries created "
            "before `as_of`), so a past date is exact. Invoices carry no payment terms: an invoice is due when it is "
            "finalized, and its days past due are the report's day minus that day, in the reporting time zone."
        ),
    ),
]
