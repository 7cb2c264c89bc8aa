"""``meter ledger``: the double-entry ledger over HTTP: entries, the trial balance, customers' balances, a CSV export.

Everything is read from the server's journal (``/v1/ledger/...``) through ``meter.Client``. ``entries`` prints one
page (one row per journal line) and, on stderr, the ``--after`` of the next one; ``export`` follows the pages to the
end and writes one CSV file (one header line) for finance tools. ``trial-balance`` exits 1 should the debits and
credits of a currency ever differ (a corrupt journal), after printing them.
"""

from __future__ import annotations

from typing import Any

import click

from meter.cli.options import connect, key_option, url_option
from meter.cli.output import table, write_pages

__all__ = ["ledger"]


def _filters(f: Any) -> Any:
    """The filter options ``entries`` and ``export`` share."""
    for option in reversed(
        [
            click.option("--account", default=None, help="entries with a line on this account (revenue, cash...)"),
            click.option("--customer", default=None, help="entries about this customer"),
            click.option("--invoice", default=None, help="entries of this invoice (its id)"),
            click.option("--kind", default=None, help="entries of this kind (invoice_finalized, payment...)"),
            click.option("--from", "start", default=None, help="created at or after, RFC 3339"),
            click.option("--to", "end", default=None, help="created before, RFC 3339: [from, to)"),
        ]
    ):
        f = option(f)
    return f


@click.group()
def ledger() -> None:
    """The ledger: journal entries, the trial balance, customers' balances, and a CSV export."""


@ledger.command("entries")
@_filters
@click.option("--after", type=int, default=0, help="the `next` of the previous page")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, help="entries per page")
@url_option
@key_option
def ledger_entries(after: int, limit: int, url: str, api_key: str, **filters: Any) -> None:
    """A page of journal entries, one row per line."""
    with connect(url, api_key) as client:
        page = client.ledger_entries(after=after, limit=limit, **filters)
    rows = [
        {"seq": e["seq"], "created_at": e["created_at"], "kind": e["kind"], "invoice": e.get("invoice"), **line}
        for e in page["data"]
        for line in e["lines"]
    ]
    table("journal", rows, ["seq", "created_at", "kind", "invoice", "account", "customer", "debit", "credit"])
    if page["next"] is not None:
        click.echo(f"more: --after {page['next']}", err=True)


@ledger.command("trial-balance")
@click.option("--as-of", default=None, help="only entries created before this instant, RFC 3339 (default: all)")
@click.option("--by-customer", is_flag=True, help="also each customer's receivable and credit balance")
@url_option
@key_option
def ledger_trial_balance(as_of: str | None, by_customer: bool, url: str, api_key: str) -> None:
    """Each account's debits, credits and balance per currency; the totals, which must be equal."""
    with connect(url, api_key) as client:
        balance = client.trial_balance(as_of, by_customer)
    columns = ["account", "currency", "debit", "credit", "balance"]
    table(f"trial balance ({balance['entries']} entries)", balance["accounts"], columns)
    table("totals", balance["totals"], ["currency", "debit", "credit"])
    if by_customer:
        table("per customer", balance["customers"] or [], ["customer", *columns])
    if not balance["balanced"]:
        raise click.ClickException("the debits and credits differ: the journal is corrupt; report it")


@ledger.command("balances")
@click.argument("customer", required=False)
@click.option("--as-of", default=None, help="only entries created before this instant, RFC 3339 (default: all)")
@url_option
@key_option
def ledger_balances(customer: str | None, as_of: str | None, url: str, api_key: str) -> None:
    """What customers owe (receivable) and hold as credit balance, per currency, from the ledger."""
    with connect(url, api_key) as client:
        rows = client.ledger_balances(customer, as_of)
    table("balances", rows, ["customer", "currency", "owed", "credit"])


@ledger.command("export")
@_filters
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, allow_dash=True), help="the CSV file (- : stdout)"
)
@click.option("--page-size", type=click.IntRange(1, 10_000), default=10_000, help="entries per request")
@url_option
@key_option
def ledger_export(out: str, page_size: int, url: str, api_key: str, **filters: Any) -> None:
    """Every journal line (of the entries the filters keep) as one CSV file, page after page."""
    with connect(url, api_key) as client:
        pages = write_pages(out, client.ledger_export("csv", limit=page_size, **filters))
    if out != "-":
        click.echo(f"the journal's lines written to {out} ({pages} pages)")
