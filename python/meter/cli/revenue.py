"""``meter revenue``: revenue recognition and its reports over HTTP (``/v1/revenue/...``), through ``meter.Client``."""

from __future__ import annotations

import click

from meter.catalog.revenue import DEFAULT_CODES
from meter.cli.options import connect, key_option, url_option
from meter.cli.output import table

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
