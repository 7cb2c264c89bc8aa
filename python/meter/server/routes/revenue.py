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
from meter.money.revenue import aging, gl
from meter.money.revenue.days import parse_day, report_day
from meter.server.context import Context, opened
from meter.server.errors import ApiError
from meter.server.http import Answer, Request
from meter.server.routes.ledger import AFTER, MAX_LIMIT, PAGE
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


#: The formats of the general-ledger export, by their ``format`` value and media type.
GL_FORMATS = {"csv": "text/csv", "json": "application/json"}


def _gl_answer(
    billing: BillingCatalog,
    store: InvoiceStore,
    tenant: str,
    start: str | None,
    end: str | None,
    after: int,
    limit: int,
    fmt: str,
) -> Answer:
    settings = billing.get_revenue_settings(tenant)
    first = None if start is None else parse_day(start, "from")
    last = None if end is None else parse_day(end, "to")
    found = gl.page(store, tenant, settings, first, last, after, limit)
    if fmt == "json":
        return 200, found, {}
    headers = {"content-type": "text/csv"}
    if found.next is not None:
        headers["meter-next"] = str(found.next)
    return 200, gl.csv_bytes(found.data), headers


async def get_gl(
    ctx: Context,
    request: Request,
    from_: str | None,
    to: str | None,
    after: int,
    limit: int,
    fmt: str | None,
    accept: str,
) -> Answer:
    fmt = _format(fmt, accept, GL_FORMATS, "csv")
    return await ctx.call(_gl_answer, *_stores(ctx), request.tenant, from_, to, after, limit, fmt)


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
    Route(
        "GET",
        "/v1/revenue/gl",
        "read",
        get_gl,
        "The general-ledger export: journal lines with the tenant's account codes, as accounting tools import them",
        returns=gl.GLPage,
        media={"text/csv": {"type": "string"}},
        params=(
            Param("from", TEXT, "Only lines booked on or after this day, YYYY-MM-DD in the reporting time zone"),
            Param("to", TEXT, "Only lines booked before this day, YYYY-MM-DD: [from, to)"),
            Param("after", AFTER, "The `next` of the previous page (0, the default: from the first entry)"),
            Param("limit", PAGE, f"Entries per page (their lines are the rows), 1-{MAX_LIMIT} (100 when absent)"),
            Param(
                "format",
                enum(*GL_FORMATS),
                "csv (the default: date, account, account_name, debit, credit, memo, customer, entry, currency; the "
                "next page's `after` in the `Meter-Next` header) or json",
                arg="fmt",
            ),
            Param("accept", enum(*GL_FORMATS.values()), "The answer's format when `format` is absent", where="header"),
        ),
        description=(
            "One row per journal line, in posting order: `date` is the entry's day in the reporting time zone, "
            "`account` the general ledger's code of its ledger account (`accounts` in `/v1/revenue/settings`, over "
            "the defaults), `memo` what the entry is. A page reads at most 100,000 entries: with a range that matches "
            "rarely it may hold fewer than `limit` entries (even none) and a `next` to carry on from."
        ),
    ),
]
