"""Revenue recognition and its reports (``/v1/revenue/...``), and the tenant's revenue settings.

The settings are one item per tenant (:mod:`meter.catalog.revenue`), replaced whole by ``PUT``; ``GET`` answers the
defaults until they are set. Reports are read on the thread pool: each reads the ledger, the invoices or the export.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, cast
from zoneinfo import ZoneInfo

import msgspec

from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog
from meter.catalog.revenue import RevenueSettings
from meter.money.revenue import aging, gl, mrr, reports, retention
from meter.money.revenue.days import report_day
from meter.money.revenue.recognize import Close
from meter.money.revenue.reports import DeferredMonth, UnbilledReport, Waterfall
from meter.server.context import Context, opened
from meter.server.errors import ApiError
from meter.server.formats import FORMATS, MEDIA, TEXT_FORMATS, TEXT_MEDIA, choose, rows_answer
from meter.server.http import Answer, Request
from meter.server.routes.ledger import AFTER, MAX_LIMIT, PAGE
from meter.server.table import BOOL, DAY, MONTH, REQUIRED_DAY, TEXT, Body, Kind, Param, Route, enum

__all__ = ["ROUTES"]


async def put_revenue_settings(ctx: Context, request: Request, body: RevenueSettings) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).put_revenue_settings, request.tenant, body), {}


async def get_revenue_settings(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).get_revenue_settings, request.tenant), {}


def _stores(ctx: Context) -> tuple[BillingCatalog, InvoiceStore]:
    # A store a degraded start could not open is an `Unavailable`: its first use answers 503 store_unavailable.
    return cast("BillingCatalog", opened(ctx.billing)), cast("InvoiceStore", opened(ctx.invoices))


def _top(request: Request, name: str) -> int | None:
    value = request.param(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 1000):
        raise ApiError(400, "invalid_query", f"'{name}' must be a whole number 1-1000; got {value!r}")
    return int(value)


TOP = Kind(Annotated[int, msgspec.Meta(ge=1, le=1000)], _top)


async def get_waterfall(
    ctx: Context,
    request: Request,
    from_: str | None,
    to: str | None,
    by: str | None,
    top: int | None,
    fmt: str | None,
    accept: str,
) -> Answer:
    answer = await ctx.call(reports.waterfall, _stores(ctx)[1], request.tenant, from_, to, by, top)
    return rows_answer(answer, answer.rows, choose(fmt, accept))


async def get_deferred(
    ctx: Context, request: Request, from_: str | None, to: str | None, fmt: str | None, accept: str
) -> Answer:
    billing, store = _stores(ctx)
    settings = await ctx.call(billing.get_revenue_settings, request.tenant)
    months = await ctx.call(reports.deferred_rollforward, store, request.tenant, settings.timezone, from_, to)
    return rows_answer(months, months, choose(fmt, accept))


async def get_unbilled(ctx: Context, request: Request, as_of: date | None, fmt: str | None, accept: str) -> Answer:
    billing, store = _stores(ctx)
    settings = await ctx.call(billing.get_revenue_settings, request.tenant)
    day = as_of or datetime.now(UTC).astimezone(ZoneInfo(settings.timezone)).date() - timedelta(days=1)
    answer = await ctx.call(reports.unbilled, store, request.tenant, settings.timezone, day)
    return rows_answer(answer, answer.customers, choose(fmt, accept))


def _formats(what: str, formats: dict[str, str] = FORMATS, default: str = "json") -> tuple[Param, Param]:
    """The ``format`` and ``Accept`` parameters of a report answered in ``formats`` (``default`` without either)."""
    others = [name for name in formats if name != default]
    return (
        Param(
            "format",
            enum(*formats),
            f"The answer's format, over `Accept`: {default} (the default) or {' or '.join(others)} ({what})",
            arg="fmt",
        ),
        Param("accept", enum(*formats.values()), "The answer's format when `format` is absent", where="header"),
    )


_FROM = Param("from", MONTH, "The first month, YYYY-MM in the reporting time zone")
_TO = Param("to", MONTH, "The month after the last: months are [from, to)")
#: MRR and retention: the 12 months up to this one (in the reporting zone) when absent.
_MRR_FROM = Param("from", MONTH, "The first month, YYYY-MM in the reporting zone (default: 11 months before this one)")
_MRR_TO = Param("to", MONTH, "The month after the last: months are [from, to) (default: the next month)")


async def recognize(ctx: Context, request: Request, through: date) -> Answer:
    return 200, await ctx.call(opened(ctx.invoicer).recognize, request.tenant, through), {}


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
    ctx: Context,
    request: Request,
    from_: str | None,
    to: str | None,
    by_customer: bool,
    fmt: str | None,
    accept: str,
) -> Answer:
    fmt = choose(fmt, accept, TEXT_FORMATS)
    return await ctx.call(_mrr_answer, *_stores(ctx), request.tenant, from_, to, by_customer, fmt)


async def get_retention(
    ctx: Context, request: Request, from_: str | None, to: str | None, fmt: str | None, accept: str
) -> Answer:
    fmt = choose(fmt, accept, TEXT_FORMATS)
    return await ctx.call(_retention_answer, *_stores(ctx), request.tenant, from_, to, fmt)


def _aging_answer(billing: BillingCatalog, store: InvoiceStore, tenant: str, as_of: str | None, fmt: str) -> Answer:
    settings = billing.get_revenue_settings(tenant)
    at = report_day(as_of, "as_of", ZoneInfo(settings.timezone), datetime.now(UTC))
    report = aging.aging(store, tenant, settings, at)
    if fmt == "csv":
        return 200, aging.csv_bytes(report), {"content-type": "text/csv"}
    return 200, report, {}


async def get_ar_aging(ctx: Context, request: Request, as_of: str | None, fmt: str | None, accept: str) -> Answer:
    fmt = choose(fmt, accept, TEXT_FORMATS)
    return await ctx.call(_aging_answer, *_stores(ctx), request.tenant, as_of, fmt)


def _gl_answer(
    billing: BillingCatalog,
    store: InvoiceStore,
    tenant: str,
    start: date | None,
    end: date | None,
    after: int,
    limit: int,
    fmt: str,
) -> Answer:
    found = gl.page(store, tenant, billing.get_revenue_settings(tenant), start, end, after, limit)
    if fmt == "json":
        return 200, found, {}
    headers = {"content-type": "text/csv"}
    if found.next is not None:
        headers["meter-next"] = str(found.next)
    return 200, gl.csv_bytes(found.data), headers


async def get_gl(
    ctx: Context,
    request: Request,
    from_: date | None,
    to: date | None,
    after: int,
    limit: int,
    fmt: str | None,
    accept: str,
) -> Answer:
    fmt = choose(fmt, accept, TEXT_FORMATS, default="csv")
    return await ctx.call(_gl_answer, *_stores(ctx), request.tenant, from_, to, after, limit, fmt)


ROUTES = [
    Route(
        "GET",
        "/v1/revenue/waterfall",
        "read",
        get_waterfall,
        "Recognized revenue per month, in total or by customer, product, plan, meter, price, invoice month or kind",
        returns=Waterfall,
        media=MEDIA,
        params=(
            _FROM,
            _TO,
            Param("by", enum(*reports.DIMENSIONS), "Group each month's revenue by this"),
            Param("top", TOP, "With `by`: only the groups with the most revenue over the range (per currency)"),
            *_formats("one row per month, currency and group"),
        ),
        description=(
            "Read from the closes (`POST /v1/revenue/recognize`): `recognized_through` says how far they went. Kinds: "
            "fee (earned by day), usage (consumed), breakage, promotional_credit and credit_note (negative)."
        ),
    ),
    Route(
        "GET",
        "/v1/revenue/deferred",
        "read",
        get_deferred,
        "Deferred revenue rolled forward per month: opening, additions, drawn, recognized, breakage, reversed, closing",
        returns=list[DeferredMonth],
        media=MEDIA,
        params=(_FROM, _TO, *_formats("one row per month and currency")),
    ),
    Route(
        "GET",
        "/v1/revenue/unbilled",
        "read",
        get_unbilled,
        "Revenue earned and not yet invoiced at the end of a day, per currency and per customer",
        returns=UnbilledReport,
        media=MEDIA,
        params=(
            Param("as_of", DAY, "The day, YYYY-MM-DD in the reporting time zone (yesterday when absent)"),
            *_formats("one row per customer and currency"),
        ),
    ),
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
    Route(
        "GET",
        "/v1/revenue/mrr",
        "read",
        get_mrr,
        "MRR and ARR by month with their movements (new, expansion, contraction, churn, reactivation), and usage "
        "revenue as its own run-rate, from finalized invoices",
        returns=mrr.MrrReport,
        media=TEXT_MEDIA,
        params=(
            _MRR_FROM,
            _MRR_TO,
            Param("by_customer", BOOL, "Also each customer's MRR, usage and movement per month (`customers`)"),
            *_formats("CSV: the months, or the customers' rows with `by_customer`", TEXT_FORMATS),
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
        media=TEXT_MEDIA,
        params=(_MRR_FROM, _MRR_TO, *_formats("CSV: one row per cohort and month", TEXT_FORMATS)),
        description=(
            "For each cohort whose month is in [from, to) and each month from it until `to`: the cohort's revenue "
            "(MRR + usage) that month over its revenue in the cohort month, four decimals rounded half to even."
        ),
    ),
    Route(
        "GET",
        "/v1/revenue/ar-aging",
        "read",
        get_ar_aging,
        "Accounts-receivable aging: what each customer owes at a date, by days past due (current, 1-30 ... 90+)",
        returns=aging.Aging,
        media=TEXT_MEDIA,
        params=(
            Param(
                "as_of",
                TEXT,
                "A date YYYY-MM-DD (through the end of that day in the reporting time zone) or an RFC 3339 instant; "
                "now when absent",
            ),
            *_formats(
                "CSV: a row per customer and currency, then each currency's total with an empty customer", TEXT_FORMATS
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
        media=TEXT_MEDIA,
        params=(
            Param("from", DAY, "Only lines booked on or after this day, YYYY-MM-DD in the reporting time zone"),
            Param("to", DAY, "Only lines booked before this day, YYYY-MM-DD: [from, to)"),
            Param("after", AFTER, "The `next` of the previous page (0, the default: from the first entry)"),
            Param("limit", PAGE, f"Entries per page (their lines are the rows), 1-{MAX_LIMIT} (100 when absent)"),
            *_formats(
                "CSV: date, account, account_name, debit, credit, memo, customer, entry, currency; the next page's "
                "`after` in the `Meter-Next` header",
                TEXT_FORMATS,
                default="csv",
            ),
        ),
        description=(
            "One row per journal line, in posting order: `date` is the entry's day in the reporting time zone, "
            "`account` the general ledger's code of its ledger account (`accounts` in `/v1/revenue/settings`, over "
            "the defaults), `memo` what the entry is. A page reads at most 100,000 entries: with a range that matches "
            "rarely it may hold fewer than `limit` entries (even none) and a `next` to carry on from."
        ),
    ),
]
