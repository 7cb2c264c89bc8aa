"""Revenue recognition and its reports (``/v1/revenue/...``), and the tenant's revenue settings.

The settings are one item per tenant (:mod:`meter.catalog.revenue`), replaced whole by ``PUT``; ``GET`` answers the
defaults until they are set. Reports are read on the thread pool: each reads the ledger, the invoices or the export.
"""

from __future__ import annotations

from typing import cast

from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog
from meter.catalog.revenue import RevenueSettings
from meter.money.revenue import mrr, retention
from meter.server.context import Context, opened
from meter.server.errors import ApiError
from meter.server.http import Answer, Request
from meter.server.table import BOOL, MONTH, Body, Param, Route, enum

__all__ = ["ROUTES"]


async def put_revenue_settings(ctx: Context, request: Request, body: RevenueSettings) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).put_revenue_settings, request.tenant, body), {}


async def get_revenue_settings(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).get_revenue_settings, request.tenant), {}


#: The formats of the MRR and retention reports.
REPORT_FORMATS = {"json": "application/json", "csv": "text/csv"}


def _report_format(fmt: str | None) -> str:
    if fmt is not None and fmt not in REPORT_FORMATS:
        raise ApiError(400, "invalid_query", f"'format' must be one of {', '.join(REPORT_FORMATS)}; got {fmt!r}")
    return fmt or "json"


def _mrr_answer(
    billing: BillingCatalog,
    store: InvoiceStore,
    tenant: str,
    start: str | None,
    end: str | None,
    by_customer: bool,
    fmt: str,
) -> Answer:
    """The MRR report, computed and encoded on the thread pool (it reads every finalized invoice of the tenant)."""
    tz = billing.get_revenue_settings(tenant).timezone
    months = mrr.month_range(start, end, tz)
    report = mrr.mrr_report(mrr.figures(mrr.billed_invoices(store, tenant), tz), months, tz, by_customer)
    if fmt == "csv":
        return 200, mrr.csv_bytes(report), {"content-type": "text/csv"}
    return 200, report, {}


def _retention_answer(
    billing: BillingCatalog, store: InvoiceStore, tenant: str, start: str | None, end: str | None, fmt: str
) -> Answer:
    tz = billing.get_revenue_settings(tenant).timezone
    months = mrr.month_range(start, end, tz)
    report = retention.retention_report(mrr.figures(mrr.billed_invoices(store, tenant), tz), months, tz)
    if fmt == "csv":
        return 200, retention.csv_bytes(report), {"content-type": "text/csv"}
    return 200, report, {}


async def get_mrr(
    ctx: Context, request: Request, from_: str | None, to: str | None, by_customer: bool, fmt: str | None
) -> Answer:
    billing, store = cast("BillingCatalog", opened(ctx.billing)), cast("InvoiceStore", opened(ctx.invoices))
    return await ctx.call(_mrr_answer, billing, store, request.tenant, from_, to, by_customer, _report_format(fmt))


async def get_retention(ctx: Context, request: Request, from_: str | None, to: str | None, fmt: str | None) -> Answer:
    billing, store = cast("BillingCatalog", opened(ctx.billing)), cast("InvoiceStore", opened(ctx.invoices))
    return await ctx.call(_retention_answer, billing, store, request.tenant, from_, to, _report_format(fmt))


_FROM = Param("from", MONTH, "The first month, YYYY-MM in the reporting zone (default: 11 months before `to`)")
_TO = Param("to", MONTH, "The last month, included, YYYY-MM (default: this month in the reporting zone)")
_FORMAT = Param("format", enum(*REPORT_FORMATS), "json (the default) or csv", arg="fmt")
_CSV = {"text/csv": {"type": "string"}}

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
        "/v1/revenue/mrr",
        "read",
        get_mrr,
        "MRR and ARR by month with their movements (new, expansion, contraction, churn, reactivation), and usage "
        "revenue as its own run-rate, from finalized invoices",
        returns=mrr.MrrReport,
        media=_CSV,
        params=(
            _FROM,
            _TO,
            Param("by_customer", BOOL, "Also each customer's MRR, usage and movement per month (`customers`)"),
            _FORMAT,
        ),
        description=(
            "Per currency and calendar month of the reporting zone: `opening` + `new` + `expansion` + `contraction` "
            "+ `churn` + `reactivation` = `closing` exactly (contraction and churn negative); `arr` is 12 x `closing`. "
            "A fee counts in the months its service period covers, each weighted by the share of the month covered; "
            "usage lines (with a meter) are `usage`, never MRR. CSV: the months, or the customers' rows with "
            "`by_customer`."
        ),
    ),
    Route(
        "GET",
        "/v1/revenue/retention",
        "read",
        get_retention,
        "Net revenue retention by cohort month (the month of a customer's first revenue, subscription and usage)",
        returns=retention.RetentionReport,
        media=_CSV,
        params=(_FROM, _TO, _FORMAT),
        description=(
            "For each cohort whose month is in [from, to] and each month from it through `to`: the cohort's revenue "
            "(MRR + usage) that month over its revenue in the cohort month, four decimals rounded half to even."
        ),
    ),
]
