"""``meter revenue``: revenue recognition and its reports over HTTP (``/v1/revenue/...``), through ``meter.Client``."""

from __future__ import annotations

import click

from meter.catalog.revenue import DEFAULT_CODES
from meter.cli.options import connect, key_option, url_option
from meter.cli.output import table, write_pages
from meter.money.revenue.aging import BUCKETS

__all__ = ["revenue"]


@click.group()
def revenue() -> None:
    """Revenue recognition: the month-end close, the waterfall, deferred and unbilled revenue, MRR, the GL export."""


@revenue.command("settings")
@url_option
@key_option
def revenue_settings(url: str, api_key: str) -> None:
    """The revenue settings: the reporting time zone, the breakage policy, the GL account codes."""
    with connect(url, api_key) as client:
        settings = client.get_revenue_settings()
    click.echo(f"timezone {settings['timezone']}, breakage {settings['breakage']}")
    codes = {**DEFAULT_CODES, **settings.get("accounts", {})}
    table("accounts", [{"account": k, "code": v} for k, v in codes.items()], ["account", "code"])


_MONTH_COLUMNS = ["month", "currency", "opening", "new", "expansion", "contraction", "churn", "reactivation"]


@revenue.command("mrr")
@click.option("--from", "start", default=None, help="the first month, YYYY-MM (default: 12 months before --to)")
@click.option("--to", "end", default=None, help="the month after the last, YYYY-MM: [from, to) (default: next month)")
@click.option("--by-customer", is_flag=True, help="also each customer's MRR, usage and movement per month")
@click.option("--csv", "as_csv", is_flag=True, help="print the report as CSV (the customers' rows with --by-customer)")
@url_option
@key_option
def revenue_mrr(start: str | None, end: str | None, by_customer: bool, as_csv: bool, url: str, api_key: str) -> None:
    """MRR and ARR by month with their movements, and usage revenue as its own run-rate (never in MRR)."""
    with connect(url, api_key) as client:
        if as_csv:
            params = {"by_customer": "true" if by_customer else "false", **_months(start, end)}
            click.echo(client.revenue_report_csv("mrr", **params), nl=False)
            return
        report = client.revenue_mrr(start, end, by_customer)
    title = f"MRR {report['start']} to {report['end']} ({report['timezone']})"
    columns = [*_MONTH_COLUMNS, "closing", "arr", "customers", "usage", "usage_arr"]
    table(title, report["months"], columns)
    if by_customer:
        columns = ["month", "customer", "currency", "previous", "mrr", "movement", "usage"]
        table("per customer", report["customers"] or [], columns)


@revenue.command("retention")
@click.option("--from", "start", default=None, help="the first cohort month, YYYY-MM (default: 12 months before --to)")
@click.option("--to", "end", default=None, help="the month after the last, YYYY-MM: [from, to) (default: next month)")
@click.option("--csv", "as_csv", is_flag=True, help="print the report as CSV, one row per cohort and month")
@url_option
@key_option
def revenue_retention(start: str | None, end: str | None, as_csv: bool, url: str, api_key: str) -> None:
    """Net revenue retention by cohort month: each cohort's revenue month by month over its first month's."""
    with connect(url, api_key) as client:
        if as_csv:
            click.echo(client.revenue_report_csv("retention", **_months(start, end)), nl=False)
            return
        report = client.revenue_retention(start, end)
    rows = [
        {**m, "cohort": c["cohort"], "currency": c["currency"], "cohort_size": c["customers"], "base": c["base"]}
        for c in report["cohorts"]
        for m in c["months"]
    ]
    # `customers` of a month: those of the cohort with revenue that month; `cohort_size`: all of them.
    columns = ["cohort", "currency", "cohort_size", "base", "month", "revenue", "customers", "retention"]
    table(f"net revenue retention {report['start']} to {report['end']} ({report['timezone']})", rows, columns)


def _months(start: str | None, end: str | None) -> dict[str, str]:
    return {name: value for name, value in (("from", start), ("to", end)) if value is not None}


@revenue.command("aging")
@click.option(
    "--as-of",
    default=None,
    help="a date YYYY-MM-DD (through its end in the reporting time zone) or an RFC 3339 instant (default: now)",
)
@click.option("--invoices", "show_invoices", is_flag=True, help="also every invoice owed something, with its age")
@url_option
@key_option
def revenue_aging(as_of: str | None, show_invoices: bool, url: str, api_key: str) -> None:
    """Accounts-receivable aging: what each customer owes, by days past due (invoices are due when finalized)."""
    with connect(url, api_key) as client:
        report = client.ar_aging(as_of)
    columns = ["customer", "currency", *BUCKETS, "total", "invoices"]
    title = f"receivables as of {report['date']} ({report['timezone']})"
    table(title, [*report["customers"], *({**t, "customer": "(total)"} for t in report["totals"])], columns)
    if show_invoices:
        table(
            "invoices",
            report["invoices"],
            ["customer", "number", "currency", "due", "days_past_due", "bucket", "owed"],
        )


@revenue.command("gl")
@click.option("--from", "start", default=None, help="lines booked on or after this day, YYYY-MM-DD (reporting zone)")
@click.option("--to", "end", default=None, help="lines booked before this day, YYYY-MM-DD: [from, to)")
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False, allow_dash=True), help="the CSV file (- : stdout)"
)
@click.option("--page-size", type=click.IntRange(1, 10_000), default=10_000, help="entries per request")
@url_option
@key_option
def revenue_gl(start: str | None, end: str | None, out: str, page_size: int, url: str, api_key: str) -> None:
    """The general-ledger export: journal lines with account codes as one CSV file, for an accounting tool."""
    with connect(url, api_key) as client:
        pages = write_pages(out, client.gl_export(start, end, limit=page_size))
    if out != "-":
        click.echo(f"the general ledger's lines written to {out} ({pages} pages)")


@revenue.command("recognize")
@click.option("--through", required=True, help="the last day to close, YYYY-MM-DD in the reporting time zone")
@url_option
@key_option
def revenue_recognize(through: str, url: str, api_key: str) -> None:
    """The month-end close: post the revenue earned through a day (a second close posts nothing)."""
    with connect(url, api_key) as client:
        closed = client.recognize_revenue(through)
    rows = [{"through": step["through"], **r} for step in closed["steps"] for r in step["recognized"]]
    table(f"recognized through {closed['through']} ({closed['timezone']})", rows, _RECOGNIZED)
    for error in closed.get("errors", []):
        click.echo(f"subscription {error['subscription']}: {error['message']}", err=True)


_RECOGNIZED = ["through", "currency", "fees", "usage", "breakage"]


@revenue.command("waterfall")
@click.option("--from", "start", default=None, help="the first month, YYYY-MM")
@click.option("--to", "end", default=None, help="the month after the last, YYYY-MM: [from, to)")
@click.option("--by", default=None, help="customer, product, plan, meter, price, invoice_month or kind")
@click.option("--top", type=click.IntRange(1, 1000), default=None, help="with --by: only the largest groups")
@click.option("--csv", "as_csv", is_flag=True, help="print the rows as CSV")
@url_option
@key_option
def revenue_waterfall(
    start: str | None, end: str | None, by: str | None, top: int | None, as_csv: bool, url: str, api_key: str
) -> None:
    """Recognized revenue per month, in total or by one dimension (usage rows with the units consumed)."""
    with connect(url, api_key) as client:
        if as_csv:
            extra = {k: v for k, v in (("by", by), ("top", str(top) if top else None)) if v is not None}
            click.echo(client.revenue_report_csv("waterfall", **_months(start, end), **extra), nl=False)
            return
        report = client.revenue_waterfall(start, end, by, top)
    columns = ["month", "currency", *(["group"] if by else []), "amount", "quantity"]
    table(f"revenue recognized through {report['recognized_through']}", report["rows"], columns)


@revenue.command("deferred")
@click.option("--from", "start", default=None, help="the first month, YYYY-MM")
@click.option("--to", "end", default=None, help="the month after the last, YYYY-MM: [from, to)")
@click.option("--csv", "as_csv", is_flag=True, help="print the rows as CSV")
@url_option
@key_option
def revenue_deferred(start: str | None, end: str | None, as_csv: bool, url: str, api_key: str) -> None:
    """Deferred revenue rolled forward per month: opening, additions, drawn, recognized, breakage, closing."""
    with connect(url, api_key) as client:
        if as_csv:
            click.echo(client.revenue_report_csv("deferred", **_months(start, end)), nl=False)
            return
        months = client.revenue_deferred(start, end)
    columns = ["month", "currency", "opening", "additions", "drawn", "recognized", "breakage", "reversed", "closing"]
    table("deferred revenue", months, columns)


@revenue.command("unbilled")
@click.option("--as-of", default=None, help="the day, YYYY-MM-DD in the reporting time zone (default: yesterday)")
@click.option("--csv", "as_csv", is_flag=True, help="print the customers' rows as CSV")
@url_option
@key_option
def revenue_unbilled(as_of: str | None, as_csv: bool, url: str, api_key: str) -> None:
    """Revenue earned and not invoiced at the end of a day, per customer."""
    with connect(url, api_key) as client:
        if as_csv:
            click.echo(client.revenue_report_csv("unbilled", **({"as_of": as_of} if as_of else {})), nl=False)
            return
        report = client.revenue_unbilled(as_of)
    totals = ", ".join(f"{total} {currency}" for currency, total in report["totals"].items()) or "nothing"
    table(f"unbilled at the end of {report['as_of']}: {totals}", report["customers"], _UNBILLED)


_UNBILLED = ["customer", "currency", "recognized", "invoiced", "unbilled"]
