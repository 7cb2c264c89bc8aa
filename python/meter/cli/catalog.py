"""``meter catalog``: the billing catalog (customers, products, plans with versions, subscriptions) over HTTP.

``put`` and ``load`` read a catalog file (YAML or JSON; see the README's "Catalog files") and check every item
before anything is written; then they write the items in order, each created or replaced, so that a rerun after a
failure picks up where it stopped. Plans are versioned: a plan that exists gets the file's versions it does not
have yet, and a file whose first versions differ from the stored ones is refused (versions never change).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import click
import msgspec

from meter.cli.options import connect, key_option, url_option
from meter.cli.output import table
from meter.client import CatalogKind, Client, ServerError

__all__ = ["catalog"]

CATALOG_KINDS = ("customers", "products", "plans", "subscriptions")

# The columns `catalog list` shows, per kind.
_COLUMNS = {
    "customers": ["id", "name", "currency", "timezone"],
    "products": ["id", "name", "parent"],
    "plans": ["id", "name"],
    "subscriptions": ["id", "customer", "plan", "version", "start", "end"],
}


@click.group()
def catalog() -> None:
    """The billing catalog: customers, products, plans (with versions) and subscriptions."""


def _kind(kind: str) -> CatalogKind:
    """A kind click has checked against CATALOG_KINDS."""
    return cast(CatalogKind, kind)


def _catalog_file(file: Path, kind: str | None) -> dict[str, list[Any]]:
    """FILE's items, every one decoded and checked before anything is sent; one line per problem otherwise."""
    from meter.catalog.files import CatalogFileError, load_catalog, load_items

    yaml_format = file.suffix.lower() in (".yaml", ".yml")
    try:
        data = file.read_bytes()
        if kind is None:
            return load_catalog(data, str(file), yaml_format)
        return {kind: load_items(data, kind, str(file), yaml_format)}
    except CatalogFileError as e:
        raise click.ClickException("nothing was written; fix these first:\n" + "\n".join(e.problems)) from None


def _put_catalog(client: Client, sections: dict[str, list[Any]]) -> None:
    """Writes the items in order, each created or replaced, so that a rerun after a failure picks up where it stopped.

    A plan that exists gets the versions of the file it does not have yet.
    """
    for kind, items in sections.items():
        for item in items:
            try:
                click.echo(f"{kind[:-1]} {item.id}: {_put_item(client, _kind(kind), item)}")
            except (click.ClickException, ServerError) as e:
                what = f"HTTP {e.status} {e.code}: {e.server_message}" if isinstance(e, ServerError) else e.message
                raise click.ClickException(f"{kind[:-1]} {item.id}: {what} (the items above it were saved)") from None


def _put_item(client: Client, kind: CatalogKind, item: Any) -> str:
    try:
        client.put_catalog_item(kind, item)
    except ServerError as e:
        if kind != "plans" or e.status != 409:
            raise
    else:
        versions = len(getattr(item, "versions", []))
        return "saved" + (f" with {versions} versions" if versions else "")
    # The plan exists: plans are versioned, so the file may only add versions after the stored ones.
    from meter.catalog.billing import Plan, PlanVersionBody
    from meter.catalog.types import trusted

    with trusted():
        stored = msgspec.convert(client.get_catalog_item("plans", item.id), type=Plan)
    kept = [PlanVersionBody(v.effective_from, v.prices) for v in stored.versions]
    if item.versions[: len(kept)] != kept:
        raise click.ClickException(
            f"plan {item.id} exists with other versions than the file's first {len(kept)}: "
            "versions cannot change; add a version after them instead"
        )
    for version in item.versions[len(kept) :]:
        client.add_plan_version(item.id, version)
    added = len(item.versions) - len(kept)
    said = f"{added} versions added" if added else f"unchanged ({len(kept)} versions)"
    # Entitlements are the plan's, whatever its version: the file's replace the stored ones.
    if item.entitlements != stored.entitlements:
        client.put_plan_entitlements(item.id, item.entitlements)
        said += f", entitlements replaced ({len(item.entitlements)})"
    return said


@catalog.command("put")
@click.argument("kind", type=click.Choice(CATALOG_KINDS))
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@url_option
@key_option
def catalog_put(kind: str, file: Path, url: str, api_key: str) -> None:
    """Creates or replaces the items of one KIND in FILE (YAML or JSON, one item or a list).

    A plan carries its `versions` ({effective_from, prices}) and is created whole; for a plan that exists, the
    versions of the file it does not have yet are added. Every item is checked before anything is written.
    """
    sections = _catalog_file(file, kind)
    with connect(url, api_key) as client:
        _put_catalog(client, sections)


@catalog.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@url_option
@key_option
def catalog_load(file: Path, url: str, api_key: str) -> None:
    """Writes a catalog FILE (YAML or JSON): customers, products, plans and subscriptions, in that order.

    Every item is checked before anything is written; see the README's "Catalog files".
    """
    sections = _catalog_file(file, None)
    with connect(url, api_key) as client:
        _put_catalog(client, sections)


@catalog.command("list")
@click.argument("kind", type=click.Choice(CATALOG_KINDS))
@url_option
@key_option
def catalog_list(kind: str, url: str, api_key: str) -> None:
    with connect(url, api_key) as client:
        rows = client.list_catalog(_kind(kind))
    table(kind, rows, _COLUMNS[kind])


@catalog.command("delete")
@click.argument("kind", type=click.Choice(CATALOG_KINDS))
@click.argument("item_id")
@url_option
@key_option
def catalog_delete(kind: str, item_id: str, url: str, api_key: str) -> None:
    """Deletes one item; refused (in_use) while a subscription or a child product still refers to it."""
    with connect(url, api_key) as client:
        client.delete_catalog_item(_kind(kind), item_id)
    click.echo(f"{kind[:-1]} {item_id}: deleted")


@catalog.command("entitlements")
@click.argument("plan_id")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@url_option
@key_option
def catalog_entitlements(plan_id: str, file: Path, url: str, api_key: str) -> None:
    """Replaces the entitlements of plan PLAN_ID with those of FILE (YAML or JSON: a list of entitlements).

    Each is {feature, kind: boolean|static|metered, ...}; see the README's "Entitlements". A subscription's own
    entitlements are part of the subscription (`meter catalog put subscriptions`).
    """
    from meter.catalog.files import CatalogFileError, load_entitlements

    try:
        entitlements = load_entitlements(file.read_bytes(), str(file), file.suffix.lower() in (".yaml", ".yml"))
    except CatalogFileError as e:
        raise click.ClickException("nothing was written; fix these first:\n" + "\n".join(e.problems)) from None
    with connect(url, api_key) as client:
        plan = client.put_plan_entitlements(plan_id, entitlements)
    features = ", ".join(str(e["feature"]) for e in plan.get("entitlements", [])) or "none"
    click.echo(f"plan {plan_id}: entitlements {features}")


@catalog.command("top-up")
@click.argument("customer")
@click.argument("top_up_id")
@click.argument("amount")
@click.option("--expires-at", help="RFC 3339: when the credit expires (default: with the subscription)")
@click.option("--priority", type=int, default=0, show_default=True, help="lower numbers are drawn down first")
@click.option("--subscription", help="the subscription it goes to, when the customer has several running")
@url_option
@key_option
def catalog_top_up(
    customer: str,
    top_up_id: str,
    amount: str,
    expires_at: str | None,
    priority: int,
    subscription: str | None,
    url: str,
    api_key: str,
) -> None:
    """Buys AMOUNT of prepaid credit for CUSTOMER now, invoiced at once; exactly once by TOP_UP_ID (rerun safely)."""
    with connect(url, api_key) as client:
        done = client.top_up(
            customer, top_up_id, amount, expires_at=expires_at, priority=priority, subscription=subscription
        )
    invoice = done["invoice"]
    click.echo(
        f"top-up {top_up_id}: {amount} {invoice['currency']} on subscription {done['top_up']['subscription']}, "
        f"invoice {invoice['number']} ({invoice['status']}, total {invoice['total']})"
    )


@catalog.command("migrate")
@click.argument("subscription_id")
@click.option("--version", "version", type=int, required=True, help="the plan version to move to")
@click.option("--at", required=True, help="RFC 3339: when the new version takes over, e.g. 2026-11-15T00:00:00Z")
@url_option
@key_option
def catalog_migrate(subscription_id: str, version: int, at: str, url: str, api_key: str) -> None:
    """Moves a subscription to another version of its plan; pricing prorates the cycle across the change."""
    with connect(url, api_key) as client:
        client.migrate_subscription(subscription_id, version, at)
    click.echo(f"subscription {subscription_id}: on version {version} from {at}")
