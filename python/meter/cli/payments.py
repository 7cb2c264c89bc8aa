"""``meter payments``: payments recorded by hand, automatic collection and its attempts, refunds, dunning, over HTTP.

Amounts are given and shown as decimal strings in the invoice's currency (never floats). A refusal (a draft, an
amount with too many decimals, a refund larger than what is left) is one line on stderr with the server's code.
"""

from __future__ import annotations

from typing import Any

import click

from meter.cli.options import connect, key_option, url_option
from meter.cli.output import table

__all__ = ["payments"]

_COLUMNS = ["id", "invoice", "customer", "method", "status", "amount", "amount_refunded", "currency", "reference"]


@click.group()
def payments() -> None:
    """Payments: `meter payments record INV 30.00` records a bank transfer; `meter payments list` lists them."""


def _show(payment: dict[str, Any]) -> None:
    table(f"payment {payment['id']}", [payment], _COLUMNS)
    if payment.get("refunds"):
        table("refunds", payment["refunds"], ["id", "amount", "status", "reason", "created_at", "provider_refund"])


@payments.command("list")
@click.option("--invoice", default=None, help="only this invoice's payments")
@click.option("--customer", default=None, help="only this customer's payments")
@click.option("--status", type=click.Choice(["succeeded", "failed", "refunded", "partially_refunded"]), default=None)
@click.option("--method", type=click.Choice(["stripe", "bank_transfer", "check", "cash", "other"]), default=None)
@url_option
@key_option
def payments_list(
    invoice: str | None, customer: str | None, status: str | None, method: str | None, url: str, api_key: str
) -> None:
    """Payments, failed charges included."""
    with connect(url, api_key) as client:
        found = client.list_payments(invoice=invoice, customer=customer, status=status, method=method)
    table("payments", found, _COLUMNS)


@payments.command("show")
@click.argument("payment_id")
@url_option
@key_option
def payments_show(payment_id: str, url: str, api_key: str) -> None:
    """A payment and its refunds."""
    with connect(url, api_key) as client:
        _show(client.get_payment(payment_id))


@payments.command("record")
@click.argument("invoice_id")
@click.argument("amount")
@click.option(
    "--method",
    type=click.Choice(["bank_transfer", "check", "cash", "other"]),
    default="bank_transfer",
    show_default=True,
)
@click.option("--reference", default=None, help="the bank's or the check's reference")
@click.option("--date", default=None, help="when it was received, RFC 3339 (default: now)")
@url_option
@key_option
def payments_record(
    invoice_id: str, amount: str, method: str, reference: str | None, date: str | None, url: str, api_key: str
) -> None:
    """Records AMOUNT received for INVOICE_ID; more than it asks for becomes the customer's credit balance."""
    with connect(url, api_key) as client:
        payment = client.record_payment(invoice_id, amount, method, reference, date)
        invoice = client.get_invoice(invoice_id)
    click.echo(
        f"{payment['id']}: {payment['amount']} {payment['currency']} on {invoice_id} ({payment['applied']} applied, "
        f"{payment['to_credit']} to credit balance); the invoice is {invoice['status']}, "
        f"{invoice['amount_remaining']} {invoice['currency']} remaining"
    )


@payments.command("refund")
@click.argument("payment_id")
@click.option("--amount", default=None, help="what to refund (default: all that is left)")
@click.option("--reason", default="", help="why, for the record")
@url_option
@key_option
def payments_refund(payment_id: str, amount: str | None, reason: str, url: str, api_key: str) -> None:
    """Refunds a payment: through Stripe for a Stripe payment, recorded for a manual one."""
    with connect(url, api_key) as client:
        _show(client.refund_payment(payment_id, amount, reason))


@payments.command("attempts")
@click.argument("invoice_id")
@url_option
@key_option
def payments_attempts(invoice_id: str, url: str, api_key: str) -> None:
    """The attempts to collect INVOICE_ID automatically, with their outcomes and the next retry."""
    with connect(url, api_key) as client:
        attempts = client.invoice_attempts(invoice_id)
    columns = ["n", "status", "trigger", "amount", "currency", "created_at", "error_code", "next_attempt_at"]
    table(f"attempts to collect {invoice_id}", attempts, columns)


@payments.command("collect")
@click.argument("invoice_id")
@url_option
@key_option
def payments_collect(invoice_id: str, url: str, api_key: str) -> None:
    """Charges the customer's payment method for INVOICE_ID now (or completes its pending attempt)."""
    with connect(url, api_key) as client:
        done = client.pay_invoice(invoice_id)
    attempt, invoice = done["attempt"], done["invoice"]
    outcome = "nothing to collect" if attempt is None else f"attempt {attempt['n']} {attempt['status']}"
    click.echo(f"{invoice_id}: {outcome}; the invoice is {invoice['status']}")


@payments.command("write-off")
@click.argument("invoice_id")
@url_option
@key_option
def payments_write_off(invoice_id: str, url: str, api_key: str) -> None:
    """Marks an open invoice uncollectible (bad debt); a later payment still settles it."""
    with connect(url, api_key) as client:
        invoice = client.mark_uncollectible(invoice_id)
    click.echo(f"{invoice_id}: {invoice['status']}, {invoice['amount_remaining']} {invoice['currency']} written off")


@payments.command("dunning")
@click.option("--retry-days", default=None, help="retries, in days after the first failure: e.g. 3,5,7")
@click.option("--after-last", type=click.Choice(["uncollectible", "open"]), default=None)
@url_option
@key_option
def payments_dunning(retry_days: str | None, after_last: str | None, url: str, api_key: str) -> None:
    """Shows the dunning schedule, or sets it with --retry-days and --after-last."""
    with connect(url, api_key) as client:
        settings = client.get_dunning()
        if retry_days is not None or after_last is not None:
            try:
                days = settings["retry_days"] if retry_days is None else [int(d) for d in retry_days.split(",") if d]
            except ValueError:
                raise click.BadParameter(
                    f"give whole days separated by commas, such as 3,5,7; got {retry_days!r}"
                ) from None
            settings = client.put_dunning(days, after_last or settings["after_last"])
    days_text = ", ".join(str(d) for d in settings["retry_days"]) or "none"
    click.echo(f"retries {days_text} days after the first failure; then {settings['after_last']}")


@payments.command("settings")
@click.option(
    "--stripe-secret-key", envvar="METER_SET_STRIPE_SECRET_KEY", default=None, help="sk_live_... or sk_test_..."
)
@click.option("--stripe-webhook-secret", envvar="METER_SET_STRIPE_WEBHOOK_SECRET", default=None, help="whsec_...")
@url_option
@key_option
def payments_settings(stripe_secret_key: str | None, stripe_webhook_secret: str | None, url: str, api_key: str) -> None:
    """Shows the tenant's Stripe settings (secrets by their last four characters), or sets them."""
    with connect(url, api_key) as client:
        if stripe_secret_key is None and stripe_webhook_secret is None:
            settings = client.payment_settings()
        else:
            settings = client.put_payment_settings(stripe_secret_key, stripe_webhook_secret)
    for name in ("stripe_secret_key", "stripe_webhook_secret"):
        click.echo(f"{name}: {settings[name] or 'not set'}")
