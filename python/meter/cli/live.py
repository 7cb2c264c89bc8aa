"""``meter balance`` and ``meter entitlements``: a customer's live credit balance and access, over HTTP.

Both read the server's live state (``/v1/customers/{id}/balance``, ``/entitlements``) through ``meter.Client``: every
event acknowledged before the answer's ``as_of`` is in it.
"""

from __future__ import annotations

import click

from meter.cli.options import connect, key_option, url_option
from meter.cli.output import table

__all__ = ["balance", "entitlements"]


@click.command()
@click.argument("customer")
@url_option
@key_option
def balance(customer: str, url: str, api_key: str) -> None:
    """CUSTOMER's credit balance now: each grant, what this cycle's usage drew from it, and what consumed it."""
    with connect(url, api_key) as client:
        found = client.balance(customer)
    currency = found["currency"]
    click.echo(
        f"{customer}: balance {found['balance']} {currency} of {found['granted']} granted "
        f"({found['reserved']} reserved); this cycle's usage {found['spend']} {currency}"
        + (f" of a {found['spend_ceiling']} ceiling" if found.get("spend_ceiling") else "")
        + f"; as of {found['as_of']} ({found['lag_ms']} ms ago)"
    )
    table(
        "grants",
        found["grants"],
        [
            "subscription",
            "grant",
            "kind",
            "priority",
            "amount",
            "drawn_invoiced",
            "drawn_current",
            "reserved",
            "remaining",
            "end",
        ],
    )
    table("consumed this cycle", found["consumed"], ["subscription", "price", "meter", "quantity", "amount", "drawn"])


@click.command()
@click.argument("customer")
@click.argument("feature", required=False)
@url_option
@key_option
def entitlements(customer: str, feature: str | None, url: str, api_key: str) -> None:
    """CUSTOMER's entitlements now (or one FEATURE): access, usage, limit, remaining, and when it resets."""
    with connect(url, api_key) as client:
        rows = [client.check(customer, feature)] if feature else client.entitlements(customer)
    table(
        f"entitlements of {customer}",
        rows,
        ["feature", "kind", "has_access", "reason", "value", "usage", "limit", "reserved", "remaining", "resets_at"],
    )
