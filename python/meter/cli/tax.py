"""``meter tax``: tax rates and the seller's tax settings, over HTTP.

``meter tax rates`` lists the rates; ``meter tax create`` adds one (a rate is never edited: ``meter tax end`` ends it,
and a new rate takes over); ``meter tax settings`` shows the seller's settings, or sets them when given options.
"""

from __future__ import annotations

from typing import Any

import click

from meter.catalog.tax import PROVIDERS
from meter.cli.options import connect, key_option, url_option
from meter.cli.output import table
from meter.client import ServerError

__all__ = ["tax"]

_COLUMNS = ["id", "name", "country", "region", "percentage", "inclusive", "tax_code", "effective_from", "effective_to"]


@click.group()
def tax() -> None:
    """Tax rates (per country or region, for a product tax code or every line) and the seller's tax settings."""


@tax.command("rates")
@url_option
@key_option
def tax_rates(url: str, api_key: str) -> None:
    """Every tax rate, ended ones included."""
    with connect(url, api_key) as client:
        table("tax rates", client.list_tax_rates(), _COLUMNS)


@tax.command("show")
@click.argument("rate_id")
@url_option
@key_option
def tax_show(rate_id: str, url: str, api_key: str) -> None:
    with connect(url, api_key) as client:
        table(f"tax rate {rate_id}", [client.get_tax_rate(rate_id)], _COLUMNS)


@tax.command("create")
@click.argument("rate_id")
@click.option("--name", required=True, help='what invoices call it, e.g. "VAT" or "NY sales tax"')
@click.option("--country", required=True, help="ISO 3166-1 alpha-2, e.g. DE, GB, US")
@click.option("--region", default=None, help="a region of the country (e.g. NY), matched with the address's region")
@click.option("--percentage", required=True, help='a decimal percentage, e.g. "19" or "8.875"')
@click.option("--inclusive", is_flag=True, help="prices include this tax (VAT for consumers); exclusive otherwise")
@click.option("--tax-code", default=None, help="only lines of this product tax code (default: every other line)")
@click.option("--from", "effective_from", required=True, help="RFC 3339, e.g. 2026-01-01T00:00:00Z")
@click.option("--to", "effective_to", default=None, help="RFC 3339; open-ended when absent")
@url_option
@key_option
def tax_create(
    rate_id: str,
    name: str,
    country: str,
    region: str | None,
    percentage: str,
    inclusive: bool,
    tax_code: str | None,
    effective_from: str,
    effective_to: str | None,
    url: str,
    api_key: str,
) -> None:
    """Creates tax rate RATE_ID."""
    rate: dict[str, Any] = {
        "id": rate_id,
        "name": name,
        "country": country,
        "percentage": percentage,
        "inclusive": inclusive,
        "effective_from": effective_from,
    }
    optional = {"region": region, "tax_code": tax_code, "effective_to": effective_to}
    rate |= {k: v for k, v in optional.items() if v is not None}
    with connect(url, api_key) as client:
        created = client.create_tax_rate(rate)
    kind = "inclusive" if created["inclusive"] else "exclusive"
    click.echo(f"tax rate {created['id']}: {created['percentage']} % {kind} in {created['country']}")


@tax.command("end")
@click.argument("rate_id")
@click.option("--at", default=None, help="RFC 3339; now when absent")
@url_option
@key_option
def tax_end(rate_id: str, at: str | None, url: str, api_key: str) -> None:
    """Ends tax rate RATE_ID: invoices finalized from then on are not taxed at it."""
    with connect(url, api_key) as client:
        ended = client.end_tax_rate(rate_id, at)
    click.echo(f"tax rate {rate_id}: ends at {ended['effective_to']}")


@tax.command("settings")
@click.option("--country", default=None, help="the seller's country (ISO 3166-1 alpha-2): sets the settings")
@click.option("--region", default=None)
@click.option("--provider", type=click.Choice(PROVIDERS), default="catalog", show_default=True)
@click.option("--prices-include-tax", is_flag=True, help="with --provider stripe: prices include tax")
@url_option
@key_option
def tax_settings(
    country: str | None, region: str | None, provider: str, prices_include_tax: bool, url: str, api_key: str
) -> None:
    """Shows the seller's tax settings; with --country, sets them (replacing the stored ones whole)."""
    with connect(url, api_key) as client:
        if country is None:
            try:
                settings = client.get_tax_settings()
            except ServerError as e:
                if e.status != 404:
                    raise
                raise click.ClickException(
                    "no tax settings yet: set them with `meter tax settings --country XX`"
                ) from None
        else:
            body: dict[str, Any] = {"country": country, "provider": provider}
            body |= {"prices_include_tax": True} if prices_include_tax else {}
            body |= {"region": region} if region else {}
            settings = client.put_tax_settings(body)
    where = settings["country"] + (f"-{settings['region']}" if settings.get("region") else "")
    click.echo(f"seller in {where}; tax by {settings['provider']}")
