"""The console's pages: customers, invoices, usage and revenue, read as the API reads them for the signed-in tenant.

Every page calls the stores on the app's thread pool (``ctx.call``), as the API's handlers do; actions go through the
same invoicer as ``POST /v1/invoices/{id}/finalize`` and the others, then redirect back to the page (303), which
says what was done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, cast, get_args
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meter.billing.invoices import STATUSES, Invoice
from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog
from meter.console import charts
from meter.console.app import ROOT, Console, Handler, Page, redirect, signed_out
from meter.engine import Usage, WindowSize
from meter.exceptions import InvalidInput, NotFound
from meter.money.revenue import mrr, reports
from meter.money.revenue.mrr import MrrReport
from meter.money.revenue.reports import DeferredMonth, Waterfall
from meter.schemas import Meter
from meter.server.context import opened
from meter.server.http import Answer
from meter.server.routes.events import line_events
from meter.server.routes.invoices import invoice_pdf as api_invoice_pdf
from meter.server.routes.meters import encode_usage

__all__ = ["ROUTES"]

#: Rows per page of a list.
PAGE_ROWS = 50
#: The usage explorer's table shows at most this many rows (a page stays light); its CSV has them all.
MAX_USAGE_ROWS = 1000
#: A line's events CSV holds at most this many pages of 1,000 (the API pages through any number).
MAX_EVENT_PAGES = 1000


async def customers(console: Console, page: Page) -> Answer:
    """Customers, searched by id, name or email (case-insensitive), a page of :data:`PAGE_ROWS` at a time."""
    query = (page.request.param("q") or "").strip()
    everyone = await console.ctx.call(opened(console.ctx.billing).list_customers, page.session.tenant)
    needle = query.casefold()
    found = [c for c in everyone if not needle or any(needle in (v or "").casefold() for v in (c.id, c.name, c.email))]
    number, rows = _page_of(page, found)
    return console.page(
        "customers.html", page.session, query=query, customers=rows, total=len(found), everyone=len(everyone),
        pages=_pages(page, len(found), number, q=query),
    )  # fmt: skip


async def customer(console: Console, page: Page) -> Answer:
    tenant, customer_id = page.session.tenant, page.args["customer"]
    ctx = console.ctx
    found = await ctx.call(opened(ctx.billing).get_customer, tenant, customer_id)
    subscriptions = [
        s for s in await ctx.call(opened(ctx.billing).list_subscriptions, tenant) if s.customer == customer_id
    ]
    store = opened(ctx.invoices)

    def of_customer() -> list[Invoice]:
        # By its subscriptions' prefixes: the customer's invoices only are read, however many the tenant has.
        return [i for s in subscriptions for i in store.of_subscription(tenant, s.id) if i.customer == customer_id]

    invoices = await ctx.call(of_customer)
    balance = ctx.live.balance(tenant, customer_id) if ctx.live is not None else None
    standing = ctx.live.standing(tenant, customer_id) if ctx.live is not None else None
    return console.page(
        "customer.html", page.session, customer=found, subscriptions=subscriptions, invoices=_newest(invoices),
        balance=balance, standing=standing,
    )  # fmt: skip


async def invoices(console: Console, page: Page) -> Answer:
    status = page.request.param("status") or ""
    if status and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}; got {status!r}", code="invalid_query")
    listed = await console.ctx.call(opened(console.ctx.invoices).list, page.session.tenant)
    chosen = _newest([i for i in listed if not status or i.status == status])
    number, rows = _page_of(page, chosen)
    return console.page(
        "invoices.html", page.session, invoices=rows, status=status, statuses=STATUSES, total=len(chosen),
        pages=_pages(page, len(chosen), number, status=status),
    )  # fmt: skip


async def invoice(console: Console, page: Page) -> Answer:
    tenant, invoice_id = page.session.tenant, page.args["invoice_id"]
    ctx = console.ctx
    found = await ctx.call(opened(ctx.invoices).get, tenant, invoice_id)
    notes = [n for n in await ctx.call(opened(ctx.invoices).credit_notes, tenant) if n.invoice == invoice_id]
    return console.page(
        "invoice.html", page.session, invoice=found, credit_notes=notes, done=page.request.param("done"),
    )  # fmt: skip


async def invoice_pdf(console: Console, page: Page) -> Answer:
    return await api_invoice_pdf(console.ctx, page.request, page.args["invoice_id"])


async def line_events_csv(console: Console, page: Page) -> Answer:
    """The events behind a usage line, as one CSV: the pages of ``GET /v1/invoices/{id}/lines/{line}/events``."""
    invoice_id, line = page.args["invoice_id"], page.args["line"]
    parts: list[bytes] = []
    after: str | None = None
    for _ in range(MAX_EVENT_PAGES):
        _, body, headers = await line_events(console.ctx, page.request, invoice_id, line, after, 1000, "text/csv")
        parts.append(body if not parts else body.partition(b"\n")[2])  # one header line
        after = headers.get("meter-next")
        if after is None:
            break
    name = f"{invoice_id}-line-{line}-events.csv"
    return (
        200,
        b"".join(parts),
        {"content-type": "text/csv; charset=utf-8", "content-disposition": f'attachment; filename="{name}"'},
    )


async def finalize(console: Console, page: Page) -> Answer:
    await console.ctx.call(opened(console.ctx.invoicer).finalize, page.session.tenant, page.args["invoice_id"])
    return _back(page, "finalized")


async def void(console: Console, page: Page) -> Answer:
    await console.ctx.call(opened(console.ctx.invoicer).void, page.session.tenant, page.args["invoice_id"])
    return _back(page, "voided")


async def credit(console: Console, page: Page) -> Answer:
    try:
        amount = Decimal(page.form.get("amount", ""))
    except InvalidOperation:
        raise InvalidInput("the amount must be a decimal number, such as 12.50", code="invalid_credit_note") from None
    reason = page.form.get("reason", "").strip()
    if not reason:
        raise InvalidInput("say why the invoice is credited", code="invalid_credit_note")
    invoicer = opened(console.ctx.invoicer)
    await console.ctx.call(invoicer.credit, page.session.tenant, page.args["invoice_id"], amount, reason)
    return _back(page, "credited")


@dataclass(frozen=True)
class UsageQuery:
    """The usage explorer's form: what ``GET /v1/meters/{slug}/usage`` takes, with a day range in a time zone."""

    meter: str
    start: date
    end: date
    window: WindowSize
    group_by: str
    filter: str
    tz: str
    #: One customer's usage only (a subject), or everyone's.
    customer: str

    @classmethod
    def of(cls, page: Page, meters: list[str]) -> UsageQuery:
        param = page.request.param
        tz = (param("tz") or "UTC").strip()
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(f'time zone {tz!r} is not an IANA name such as "Europe/Paris"', "invalid_tz") from None
        today = datetime.now(zone).date()
        window = param("window") or "day"
        if window not in get_args(WindowSize):
            raise InvalidInput(
                f"window must be one of {', '.join(get_args(WindowSize))}; got {window!r}", "invalid_query"
            )
        try:
            start = date.fromisoformat(param("from") or (today - timedelta(days=13)).isoformat())
            end = date.fromisoformat(param("to") or today.isoformat())
        except ValueError:
            raise InvalidInput("from and to must be days, YYYY-MM-DD", "invalid_query") from None
        if end < start:
            raise InvalidInput(f"the last day ({end}) is before the first ({start})", "invalid_query")
        meter = param("meter") or (meters[0] if meters else "")
        filter_ = (param("filter") or "").strip()
        if filter_ and "=" not in filter_:
            raise InvalidInput(f"a filter is dimension=value; got {filter_!r}", "invalid_query")
        customer = (param("customer") or "").strip()
        return cls(meter, start, end, cast(WindowSize, window), param("group_by") or "", filter_, tz, customer)

    @property
    def bounds(self) -> tuple[datetime, datetime]:
        """``[first day's midnight, the day after the last)`` in the time zone."""
        zone = ZoneInfo(self.tz)
        start = datetime.combine(self.start, time(), zone)
        return start, datetime.combine(self.end + timedelta(days=1), time(), zone)

    def ask(self, console: Console, tenant: str) -> Usage:
        start, end = self.bounds
        name, _, value = self.filter.partition("=")
        return opened(console.ctx.engine).usage(
            tenant, self.meter, start=start, end=end, window_size=self.window,
            subjects=[self.customer] if self.customer else [], group_by=[self.group_by] if self.group_by else [],
            filters={name.strip(): value.strip()} if name else None, tz=self.tz,
        )  # fmt: skip

    def link(self, path: str) -> str:
        values = {"meter": self.meter, "from": self.start.isoformat(), "to": self.end.isoformat(),
                  "window": self.window, "group_by": self.group_by, "filter": self.filter, "tz": self.tz,
                  "customer": self.customer}  # fmt: skip
        return f"{path}?{urlencode({k: v for k, v in values.items() if v})}"


async def _explored(console: Console, page: Page) -> tuple[list[Meter], UsageQuery]:
    """The tenant's meters, and the usage query the page's parameters ask (of the first meter by default)."""
    meters = await console.ctx.call(opened(console.ctx.engine).list_meters, page.session.tenant)
    return meters, UsageQuery.of(page, [m.slug for m in meters])


async def usage(console: Console, page: Page) -> Answer:
    """The usage explorer: a meter's usage over time as a chart, the table under it, and its CSV."""
    tenant = page.session.tenant
    meters, query = await _explored(console, page)
    rows = (await console.ctx.call(query.ask, console, tenant)).rows() if query.meter else []
    chosen = next((m for m in meters if m.slug == query.meter), None)
    dimensions = ["subject", *sorted(chosen.group_by)] if chosen is not None else ["subject"]
    return console.page(
        "usage.html", page.session, meters=meters, query=query, rows=rows[:MAX_USAGE_ROWS], total=len(rows),
        dimensions=dimensions,
        windows=get_args(WindowSize), chart=query.link(f"{ROOT}/usage.svg"), csv=query.link(f"{ROOT}/usage.csv"),
    )  # fmt: skip


async def usage_csv(console: Console, page: Page) -> Answer:
    tenant = page.session.tenant
    _, query = await _explored(console, page)
    result = await console.ctx.call(query.ask, console, tenant)
    start, end = query.bounds
    status, body, headers = await console.ctx.call(encode_usage, result, query.meter, start, end, "text/csv")
    return status, body, headers | {"content-disposition": f'attachment; filename="{query.meter}-usage.csv"'}


async def usage_svg(console: Console, page: Page) -> Answer:
    tenant = page.session.tenant
    _, query = await _explored(console, page)
    result = await console.ctx.call(query.ask, console, tenant)
    svg = await console.ctx.call(charts.usage_chart, result.rows(), query.meter, query.group_by, query.tz)
    return charts.answer(svg)


@dataclass
class RevenueReports:
    """What the revenue page shows for the months ``[start, end)`` of the tenant's reporting zone."""

    months: list[str]
    waterfall: Waterfall
    deferred: list[DeferredMonth]
    mrr: MrrReport

    @classmethod
    def read(cls, console: Console, tenant: str, start: str | None, end: str | None) -> RevenueReports:
        # A store a degraded start could not open answers its first use with store_unavailable, as in the API.
        billing = cast("BillingCatalog", opened(console.ctx.billing))
        store = cast("InvoiceStore", opened(console.ctx.invoices))
        tz = billing.get_revenue_settings(tenant).timezone
        months = mrr.month_range(start, end, tz)  # the MRR report's default: the 12 months up to this one
        after = mrr.month_after(months[-1])
        return cls(
            months,
            reports.waterfall(store, tenant, months[0], after),
            reports.deferred_rollforward(store, tenant, tz, months[0], after),
            mrr.mrr_report(mrr.figures(mrr.billed_invoices(store, tenant), tz), months, tz, False),
        )

    def series(self, chart: str) -> dict[str, dict[str, Decimal]]:
        """A chart's series (one per currency): month -> amount."""
        out: dict[str, dict[str, Decimal]] = {}
        if chart == "waterfall":
            for row in self.waterfall.rows:
                out.setdefault(row.currency, {})[row.month] = row.amount
        elif chart == "deferred":
            for month in self.deferred:
                out.setdefault(month.currency, {})[month.month] = month.closing
        else:
            for figure in self.mrr.months:
                out.setdefault(figure.currency, {})[figure.month] = figure.closing
        return out


#: The revenue page's charts: name -> (title, kind).
REVENUE_CHARTS = {
    "waterfall": ("Revenue recognized per month", "bar"),
    "deferred": ("Deferred revenue at each month's end", "line"),
    "mrr": ("MRR", "line"),
}


async def revenue(console: Console, page: Page) -> Answer:
    """Revenue recognized (the waterfall), deferred revenue, and MRR with its movements: charts and tables."""
    start, end = page.request.param("from"), page.request.param("to")
    found = await console.ctx.call(RevenueReports.read, console, page.session.tenant, start, end)
    query = urlencode({k: v for k, v in {"from": start, "to": end}.items() if v})
    return console.page(
        "revenue.html", page.session, reports=found, charts=REVENUE_CHARTS, query=query, start=found.months[0],
        end=mrr.month_after(found.months[-1]),
    )  # fmt: skip


async def revenue_chart(console: Console, page: Page) -> Answer:
    chart = page.args["chart"]
    if chart not in REVENUE_CHARTS:
        raise NotFound(f"no revenue chart {chart!r}; there are {', '.join(REVENUE_CHARTS)}", "not_found")
    start, end = page.request.param("from"), page.request.param("to")
    found = await console.ctx.call(RevenueReports.read, console, page.session.tenant, start, end)
    title, kind = REVENUE_CHARTS[chart]
    svg = await console.ctx.call(charts.monthly_chart, title, kind, found.months, found.series(chart))
    return charts.answer(svg)


async def sign_out(console: Console, page: Page) -> Answer:
    return signed_out()


def _back(page: Page, done: str) -> Answer:
    return redirect(f"{ROOT}/invoices/{quote(page.args['invoice_id'])}?done={done}")


def _newest(invoices: list[Invoice]) -> list[Invoice]:
    return sorted(invoices, key=lambda i: (i.issued_at, i.id), reverse=True)


def _page_of(page: Page, rows: list[Any]) -> tuple[int, list[Any]]:
    raw = page.request.param("page") or "1"
    number = int(raw) if raw.isascii() and raw.isdigit() and int(raw) >= 1 else 1
    return number, rows[(number - 1) * PAGE_ROWS : number * PAGE_ROWS]


def _pages(page: Page, total: int, number: int, **query: str) -> dict[str, str | None]:
    """The links to the previous and next pages of a list, keeping its query."""
    kept = {k: v for k, v in query.items() if v}

    def link(n: int) -> str:
        return f"{page.request.path}?{urlencode(kept | {'page': str(n)})}"

    last = max(1, -(-total // PAGE_ROWS))
    return {
        "previous": link(number - 1) if number > 1 else None,
        "next": link(number + 1) if number < last else None,
        "label": f"page {min(number, last)} of {last}",
    }


ROUTES: list[tuple[str, str, Handler, str]] = [
    ("GET", f"{ROOT}/customers", customers, "read"),
    ("GET", f"{ROOT}/customers/{{customer}}", customer, "read"),
    ("GET", f"{ROOT}/invoices", invoices, "read"),
    ("GET", f"{ROOT}/invoices/{{invoice_id}}", invoice, "read"),
    ("GET", f"{ROOT}/invoices/{{invoice_id}}/pdf", invoice_pdf, "read"),
    ("GET", f"{ROOT}/invoices/{{invoice_id}}/lines/{{line}}/events.csv", line_events_csv, "read"),
    ("POST", f"{ROOT}/invoices/{{invoice_id}}/finalize", finalize, "admin"),
    ("POST", f"{ROOT}/invoices/{{invoice_id}}/void", void, "admin"),
    ("POST", f"{ROOT}/invoices/{{invoice_id}}/credit", credit, "admin"),
    ("GET", f"{ROOT}/usage", usage, "read"),
    ("GET", f"{ROOT}/usage.csv", usage_csv, "read"),
    ("GET", f"{ROOT}/usage.svg", usage_svg, "read"),
    ("GET", f"{ROOT}/revenue", revenue, "read"),
    ("GET", f"{ROOT}/revenue/{{chart}}.svg", revenue_chart, "read"),
    ("POST", f"{ROOT}/sign-out", sign_out, "read"),
]
