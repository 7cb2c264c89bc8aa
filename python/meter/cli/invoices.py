"""``meter invoice``: invoice runs, previews, an invoice's life (finalize, void, credit notes) and its PDF, over HTTP.

``meter invoice --period YYYY-MM`` computes (or recomputes) the drafts of the cycles starting in that month: their
fees in advance and the usage of the cycles before them in arrears. A run reports per subscription: the others are
invoiced even when one fails, and the command then exits 1 naming how many failed. Warnings (an export refresh that
failed after a write that stands) go to stderr and never change the exit code.
"""

from __future__ import annotations

from typing import Any

import click

from meter.cli.options import connect, key_option, url_option
from meter.cli.output import table, warn, write_pages

__all__ = ["invoice"]


@click.group(invoke_without_command=True)
@click.option(
    "--period",
    default=None,
    help="invoice the cycles starting in this month, YYYY-MM (e.g. 2026-11): their fees in advance, and the "
    "usage of the cycles before them (October's, for monthly cycles) in arrears",
)
@click.option("--finalize", is_flag=True, help="finalize (number) the invoices at once")
@url_option
@key_option
@click.pass_context
def invoice(ctx: click.Context, period: str | None, finalize: bool, url: str, api_key: str) -> None:
    """Invoices: `meter invoice --period 2026-11` computes (or recomputes) the drafts of a month's cycles.

    They bill November's fees in advance and October's usage in arrears. The invoices that bill November's usage:
    `meter invoice list --usage-period 2026-11`.
    """
    if ctx.invoked_subcommand is not None:
        return
    if period is None:
        raise click.UsageError(
            "give --period YYYY-MM, or a subcommand (preview, list, show, finalize, void, credit-note)"
        )
    with connect(url, api_key) as client:
        run = client.run_invoices(period, finalize)
    _invoices_table(f"invoices of cycles starting in {period}", run["invoices"])
    click.echo(_covers(run))
    warn(run)
    for error in run.get("errors", []):
        click.echo(f"error: subscription {error['subscription']}: {error['code']}: {error['message']}", err=True)
    if run.get("errors"):
        raise click.ClickException(
            f"{len(run['errors'])} subscriptions could not be invoiced (listed above); the others were"
        )


def _covers(run: dict[str, Any]) -> str:
    """What service periods a run bills, in words."""

    def span(p: dict[str, str] | None) -> str:
        return "none" if p is None else f"{p['start']} .. {p['end']}"

    return (
        f"fees in advance for {span(run.get('fees_in_advance'))}; usage in arrears for "
        f"{span(run.get('usage_in_arrears'))}"
    )


def _invoices_table(title: str, rows: list[dict[str, Any]]) -> None:
    table(title, rows, ["id", "number", "status", "customer", "period", "usage_period", "currency", "total"])


def _show_invoice(invoice: dict[str, Any]) -> None:
    title = (
        f"{invoice['number'] or invoice['id']} ({invoice['status']}) for {invoice['customer']}, "
        f"{invoice['period_start']} .. {invoice['period_end']}"
    )
    table(title, invoice["lines"], ["kind", "description", "quantity", "rated", "billed", "amount"])
    if invoice.get("usage_start"):
        click.echo(f"usage billed in arrears: {invoice['usage_start']} .. {invoice['usage_end']}")
    currency = invoice["currency"]
    for tax in invoice.get("taxes", []):
        where = tax["country"] + (f"-{tax['region']}" if tax.get("region") else "")
        kind = "included" if tax["inclusive"] else "added"
        click.echo(
            f"{tax['name']} {tax['percentage']} % ({where}, {kind}) on {tax['taxable']}: {tax['amount']} {currency}"
        )
    if invoice.get("tax_note"):
        click.echo(invoice["tax_note"])
    tax = f", tax {invoice['tax']} {currency}" if invoice.get("tax") is not None else ""
    click.echo(f"subtotal {invoice['subtotal']} {currency}{tax}, total {invoice['total']} {currency}")


@invoice.command("preview")
@click.argument("customer")
@url_option
@key_option
def invoice_preview(customer: str, url: str, api_key: str) -> None:
    """The customer's upcoming invoice: the next cycle, with the usage of the current one so far."""
    with connect(url, api_key) as client:
        for upcoming in client.upcoming_invoices(customer):
            _show_invoice(upcoming)


@invoice.command("list")
@click.option("--status", type=click.Choice(["draft", "open", "paid", "uncollectible", "void"]), default=None)
@click.option("--period", default=None, help="only invoices of cycles starting in this month (YYYY-MM)")
@click.option("--usage-period", default=None, help="only invoices that bill this month's usage (YYYY-MM)")
@url_option
@key_option
def invoice_list(status: str | None, period: str | None, usage_period: str | None, url: str, api_key: str) -> None:
    """Invoices, filtered: `--usage-period 2026-11` lists those that bill November's usage."""
    with connect(url, api_key) as client:
        _invoices_table("invoices", client.list_invoices(status=status, period=period, usage_period=usage_period))


@invoice.command("show")
@click.argument("invoice_id")
@url_option
@key_option
def invoice_show(invoice_id: str, url: str, api_key: str) -> None:
    with connect(url, api_key) as client:
        _show_invoice(client.get_invoice(invoice_id))


@invoice.command("events")
@click.argument("invoice_id")
@click.argument("line", type=click.IntRange(1))
@click.option("-o", "--out", required=True, help="the CSV file to write (- for stdout)")
@url_option
@key_option
def invoice_events(invoice_id: str, line: int, out: str, url: str, api_key: str) -> None:
    """Save the events behind a usage line as CSV (for a customer who disputes a charge)."""
    with connect(url, api_key) as client:
        pages = write_pages(out, client.line_events(invoice_id, line))
    if out != "-":
        click.echo(f"the events behind line {line} of invoice {invoice_id} written to {out} ({pages} pages)")


@invoice.command("pdf")
@click.argument("document_id", metavar="ID")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None, help="the file to write (default: ID.pdf)")
@click.option("--credit-note", is_flag=True, help="ID is a credit note's number (CN-000001), not an invoice's id")
@url_option
@key_option
def invoice_pdf(document_id: str, out: str | None, credit_note: bool, url: str, api_key: str) -> None:
    """Save the PDF of a finalized invoice, as written at its finalization (or of a credit note)."""
    with connect(url, api_key) as client:
        pdf = client.credit_note_pdf(document_id) if credit_note else client.invoice_pdf(document_id)
    path = out or f"{document_id}.pdf"
    with open(path, "wb") as file:
        file.write(pdf)
    click.echo(f"{document_id}: {len(pdf)} bytes written to {path}")


@invoice.command("finalize")
@click.argument("invoice_id")
@url_option
@key_option
def invoice_finalize(invoice_id: str, url: str, api_key: str) -> None:
    """Numbers the draft and makes it immutable."""
    with connect(url, api_key) as client:
        final = client.finalize_invoice(invoice_id)
    click.echo(f"{invoice_id}: finalized as {final['number']}, total {final['total']} {final['currency']}")
    warn(final)


@invoice.command("void")
@click.argument("invoice_id")
@url_option
@key_option
def invoice_void(invoice_id: str, url: str, api_key: str) -> None:
    """Voids a finalized invoice: its charges become billable again (re-run its period for a new draft)."""
    with connect(url, api_key) as client:
        void = client.void_invoice(invoice_id)
    click.echo(f"{invoice_id}: void")
    warn(void)


@invoice.command("credit-note")
@click.argument("invoice_id")
@click.option("--amount", required=True, help="a decimal amount in the invoice's currency")
@click.option("--reason", required=True)
@url_option
@key_option
def invoice_credit_note(invoice_id: str, amount: str, reason: str, url: str, api_key: str) -> None:
    with connect(url, api_key) as client:
        note = client.credit_invoice(invoice_id, amount, reason)
    click.echo(f"{note['number']}: {note['amount']} credited on {invoice_id}")
    warn(note)
