"""``meter tenants`` and ``meter keys``: the operator's commands over HTTP (the operator key), through ``Client``.

A new key's secret is printed once, alone on stdout (so that ``$(meter keys create ...)`` captures it), its id and
scopes on stderr; the server keeps only its hash.
"""

from __future__ import annotations

import json

import click

from meter.cli.options import connect, key_option, url_option
from meter.cli.output import table

__all__ = ["keys", "tenants"]


@click.group()
def tenants() -> None:
    """Create and list tenants (the operator key)."""


@tenants.command("create")
@click.argument("tenant_id")
@click.option("--name", default="")
@url_option
@key_option
def tenants_create(tenant_id: str, name: str, url: str, api_key: str) -> None:
    with connect(url, api_key) as client:
        click.echo(json.dumps(client.create_tenant(tenant_id, name)))


@tenants.command("list")
@url_option
@key_option
def tenants_list(url: str, api_key: str) -> None:
    with connect(url, api_key) as client:
        table("tenants", client.list_tenants(), ["id", "name"])


@click.group()
def keys() -> None:
    """Create, list and revoke the API keys of any tenant (the operator key)."""


@keys.command("create")
@click.argument("tenant")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    default=["ingest"],
    show_default=True,
    type=click.Choice(["ingest", "read", "export", "admin"]),
)
@url_option
@key_option
def keys_create(tenant: str, scopes: tuple[str, ...], url: str, api_key: str) -> None:
    """Prints the new key once: store it now."""
    with connect(url, api_key) as client:
        created = client.create_key(tenant, scopes)
    click.echo(created["key"])
    click.echo(f"id {created['id']}, scopes {', '.join(created['scopes'])}", err=True)


@keys.command("list")
@click.option("--tenant", default=None)
@url_option
@key_option
def keys_list(tenant: str | None, url: str, api_key: str) -> None:
    with connect(url, api_key) as client:
        rows = client.list_keys(tenant)
    table(
        "keys", [{**r, "scopes": ",".join(r["scopes"])} for r in rows], ["id", "tenant", "display", "scopes", "revoked"]
    )


@keys.command("revoke")
@click.argument("key_id")
@url_option
@key_option
def keys_revoke(key_id: str, url: str, api_key: str) -> None:
    with connect(url, api_key) as client:
        client.revoke_key(key_id)
    click.echo(f"revoked {key_id}")
