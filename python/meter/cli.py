"""The ``meter`` command line."""

from __future__ import annotations

import json
import os
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

from typing import Any

import click
import httpx
import msgspec
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from meter.client import Client
from meter.engine import Engine
from meter.exceptions import AlreadyExists
from meter.schemas import EventIssue

__all__ = ["main"]


@click.group()
def main() -> None:
    """meter: exact, durable usage metering."""


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".meter-data"), show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--admin-key", envvar="METER_ADMIN_KEY", default=None,
              help="the operator key (or METER_ADMIN_KEY); `meter admin-key new` makes one")
@click.option("--export-every", type=float, default=None, help="seconds between Parquet exports (none by default)")
@click.option("--export-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where scheduled exports go (default: <data-dir>/export)")
def serve(data_dir: Path, host: str, port: int, admin_key: str | None, export_every: float | None,
          export_dir: Path | None) -> None:
    """Run the HTTP API on one data directory (one process owns it)."""
    from granian import Granian
    from granian.constants import Interfaces

    from meter.catalog.keys import valid_checksum
    from meter.server.app import admin_key_message

    if admin_key and not valid_checksum(admin_key):
        raise click.ClickException(admin_key_message())
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["METER_DATA_DIR"] = str(data_dir.resolve())
    if export_every is not None:
        if export_every <= 0:
            raise click.BadParameter("must be above 0 seconds", param_hint="--export-every")
        os.environ["METER_EXPORT_EVERY"] = str(export_every)
        os.environ["METER_EXPORT_DIR"] = str((export_dir or data_dir / "export").resolve())
    if admin_key:
        os.environ["METER_ADMIN_KEY"] = admin_key
    Granian(
        "meter.server.app:create_app", factory=True, interface=Interfaces.ASGI, address=host, port=port, workers=1,
        log_access=False,
    ).serve()


@main.group("admin-key")
def admin_key_group() -> None:
    """The operator key: make one for METER_ADMIN_KEY, or reset a data directory's operator keys."""


@admin_key_group.command("new")
def admin_key_new() -> None:
    """Prints a freshly generated, well-formed key: `METER_ADMIN_KEY=$(meter admin-key new) meter serve`."""
    from meter.catalog.keys import new_key

    click.echo(new_key())


@admin_key_group.command("reset")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".meter-data"),
              show_default=True)
def admin_key_reset(data_dir: Path) -> None:
    """Revokes every operator key of the data directory and prints a new one (shown once).

    Run it with the server stopped, on the machine that owns the data directory; tenants' keys are untouched.
    """
    from meter.catalog.keys import KeyStore

    catalog = data_dir / "catalog"
    if not catalog.is_dir():
        raise click.ClickException(f"{data_dir} is not a meter data directory (no {catalog}); give --data-dir")
    try:
        store = KeyStore(catalog)
    except Exception as e:  # noqa: BLE001 - rocksdict reports a held lock as a plain exception
        if "lock" in str(e).lower():
            raise click.ClickException(f"{data_dir} is in use by a running server: stop `meter serve` first, then "
                                       "run this again") from None
        raise click.ClickException(f"cannot open {catalog}: {e}") from None
    try:
        revoked = sum(1 for k in store.list_keys(operators=True) if not k.revoked)
        secret, _ = store.reset_operator_keys()
    finally:
        store.close()
    click.echo(secret)
    click.echo(f"revoked {revoked} operator key(s); the key above is the operator key now (shown once: store it). "
               "If METER_ADMIN_KEY is set, set it to this key or unset it.", err=True)


# Commands that talk to a running server. The URL and key come from options or METER_URL / METER_API_KEY.
url_option = click.option("--url", envvar="METER_URL", default="http://127.0.0.1:8080", show_default=True)
key_option = click.option("--api-key", envvar="METER_API_KEY", required=True, help="or METER_API_KEY")


def _http(url: str, api_key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
            message = f"{body.get('code')}: {body.get('message')}"
        except ValueError:
            message = response.text
        raise click.ClickException(f"HTTP {response.status_code} {message}")
    return response.json()


def _definitions(file: Path) -> list[Any]:
    """The item or list of items in FILE: YAML if it ends in .yaml or .yml, else JSON."""
    yaml = file.suffix.lower() in (".yaml", ".yml")
    try:
        data = (msgspec.yaml if yaml else msgspec.json).decode(file.read_bytes())
    except msgspec.DecodeError as e:
        raise click.ClickException(f"{file} is not valid {'YAML' if yaml else 'JSON'}: {e}") from None
    return data if isinstance(data, list) else [data]


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if c in ("value", "events") else "left")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console().print(table)


@main.group()
def tenants() -> None:
    """Create and list tenants (admin key)."""


@tenants.command("create")
@click.argument("tenant_id")
@click.option("--name", default="")
@url_option
@key_option
def tenants_create(tenant_id: str, name: str, url: str, api_key: str) -> None:
    with _http(url, api_key) as http:
        click.echo(json.dumps(_check(http.post("/v1/admin/tenants", json={"id": tenant_id, "name": name}))))


@tenants.command("list")
@url_option
@key_option
def tenants_list(url: str, api_key: str) -> None:
    with _http(url, api_key) as http:
        _table("tenants", _check(http.get("/v1/admin/tenants")), ["id", "name"])


@main.group()
def keys() -> None:
    """Create, list and revoke API keys (admin key)."""


@keys.command("create")
@click.argument("tenant")
@click.option("--scope", "scopes", multiple=True, default=["ingest"], show_default=True,
              type=click.Choice(["ingest", "read", "export", "admin"]))
@url_option
@key_option
def keys_create(tenant: str, scopes: tuple[str, ...], url: str, api_key: str) -> None:
    """Prints the new key once: store it now."""
    with _http(url, api_key) as http:
        created = _check(http.post("/v1/admin/keys", json={"tenant": tenant, "scopes": list(scopes)}))
    click.echo(created["key"])
    click.echo(f"id {created['id']}, scopes {', '.join(created['scopes'])}", err=True)


@keys.command("list")
@click.option("--tenant", default=None)
@url_option
@key_option
def keys_list(tenant: str | None, url: str, api_key: str) -> None:
    with _http(url, api_key) as http:
        rows = _check(http.get("/v1/admin/keys", params={"tenant": tenant} if tenant else {}))
    _table("keys", [{**r, "scopes": ",".join(r["scopes"])} for r in rows], ["id", "tenant", "display", "scopes", "revoked"])


@keys.command("revoke")
@click.argument("key_id")
@url_option
@key_option
def keys_revoke(key_id: str, url: str, api_key: str) -> None:
    with _http(url, api_key) as http:
        _check(http.delete(f"/v1/admin/keys/{key_id}"))
    click.echo(f"revoked {key_id}")


@main.group()
def meters() -> None:
    """Create and list meters."""


@meters.command("create")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@url_option
@key_option
def meters_create(file: Path, url: str, api_key: str) -> None:
    """Creates the meter (or the list of meters) defined in FILE: YAML if it ends in .yaml or .yml, else JSON."""
    with _http(url, api_key) as http:
        for spec in _definitions(file):
            created = _check(http.post("/v1/meters", json=spec))
            b = created["backfill"]
            click.echo(f"created {created['meter']['slug']} (backfilled {b['events']} events, {b['filtered']} filtered, "
                       f"{b['unreadable']} unreadable)")


@meters.command("list")
@url_option
@key_option
def meters_list(url: str, api_key: str) -> None:
    with _http(url, api_key) as http:
        rows = _check(http.get("/v1/meters"))
    _table("meters", rows, ["slug", "event_type", "aggregation", "value_property"])


CATALOG_KINDS = ("customers", "products", "plans", "subscriptions")


@main.group()
def catalog() -> None:
    """The billing catalog: customers, products, plans (with versions) and subscriptions."""


@catalog.command("put")
@click.argument("kind", type=click.Choice(CATALOG_KINDS))
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@url_option
@key_option
def catalog_put(kind: str, file: Path, url: str, api_key: str) -> None:
    """Creates or replaces the items in FILE (YAML or JSON, one or a list). A plan item may carry `versions`
    ({effective_from, prices}), added in order after the plan is created."""
    with _http(url, api_key) as http:
        for item in _definitions(file):
            versions = item.pop("versions", []) if kind == "plans" and isinstance(item, dict) else []
            _check(http.post(f"/v1/{kind}", json=item))
            for version in versions:
                _check(http.post(f"/v1/plans/{item['id']}/versions", json=version))
            click.echo(f"{kind[:-1]} {item.get('id')}: saved" + (f" with {len(versions)} versions" if versions else ""))


@catalog.command("list")
@click.argument("kind", type=click.Choice(CATALOG_KINDS))
@url_option
@key_option
def catalog_list(kind: str, url: str, api_key: str) -> None:
    with _http(url, api_key) as http:
        rows = _check(http.get(f"/v1/{kind}"))
    columns = {"customers": ["id", "name", "currency", "timezone"], "products": ["id", "name", "parent"],
               "plans": ["id", "name"], "subscriptions": ["id", "customer", "plan", "version", "start", "end"]}[kind]
    _table(kind, rows, columns)


@catalog.command("delete")
@click.argument("kind", type=click.Choice(CATALOG_KINDS))
@click.argument("item_id")
@url_option
@key_option
def catalog_delete(kind: str, item_id: str, url: str, api_key: str) -> None:
    """Deletes one item; refused (in_use) while a subscription or a child product still refers to it."""
    with _http(url, api_key) as http:
        _check(http.delete(f"/v1/{kind}/{item_id}"))
    click.echo(f"{kind[:-1]} {item_id}: deleted")


@catalog.command("migrate")
@click.argument("subscription_id")
@click.option("--version", "version", type=int, required=True, help="the plan version to move to")
@click.option("--at", required=True, help="RFC 3339: when the new version takes over, e.g. 2026-11-15T00:00:00Z")
@url_option
@key_option
def catalog_migrate(subscription_id: str, version: int, at: str, url: str, api_key: str) -> None:
    """Moves a subscription to another version of its plan; pricing prorates the cycle across the change."""
    with _http(url, api_key) as http:
        _check(http.post(f"/v1/subscriptions/{subscription_id}/migrate", json={"version": version, "at": at}))
    click.echo(f"subscription {subscription_id}: on version {version} from {at}")


@main.group(invoke_without_command=True)
@click.option("--period", default=None, help="invoice the cycles starting in this month, YYYY-MM (e.g. 2026-11)")
@click.option("--finalize", is_flag=True, help="finalize (number) the invoices at once")
@url_option
@key_option
@click.pass_context
def invoice(ctx: click.Context, period: str | None, finalize: bool, url: str, api_key: str) -> None:
    """Invoices: `meter invoice --period 2026-11` computes (or recomputes) the drafts of a month's cycles."""
    if ctx.invoked_subcommand is not None:
        return
    if period is None:
        raise click.UsageError("give --period YYYY-MM, or a subcommand (preview, list, show, finalize, void, "
                               "credit-note)")
    with _http(url, api_key) as http:
        rows = _check(http.post("/v1/invoices/run", json={"period": period, "finalize": finalize}))
    _invoices_table(f"invoices of cycles starting in {period}", rows)


def _invoices_table(title: str, rows: list[dict[str, Any]]) -> None:
    _table(title, rows, ["id", "number", "status", "customer", "period_start", "period_end", "currency", "total"])


def _show_invoice(invoice: dict[str, Any]) -> None:
    title = (f"{invoice['number'] or invoice['id']} ({invoice['status']}) for {invoice['customer']}, "
             f"{invoice['period_start']} .. {invoice['period_end']}")
    _table(title, invoice["lines"], ["kind", "description", "quantity", "amount"])
    click.echo(f"subtotal {invoice['subtotal']} {invoice['currency']}, total {invoice['total']} {invoice['currency']}")


@invoice.command("preview")
@click.argument("customer")
@url_option
@key_option
def invoice_preview(customer: str, url: str, api_key: str) -> None:
    """The customer's upcoming invoice: the next cycle, with the usage of the current one so far."""
    with _http(url, api_key) as http:
        for upcoming in _check(http.get(f"/v1/customers/{customer}/upcoming-invoice")):
            _show_invoice(upcoming)


@invoice.command("list")
@click.option("--status", type=click.Choice(["draft", "finalized", "void"]), default=None)
@url_option
@key_option
def invoice_list(status: str | None, url: str, api_key: str) -> None:
    with _http(url, api_key) as http:
        _invoices_table("invoices", _check(http.get("/v1/invoices", params={"status": status} if status else {})))


@invoice.command("show")
@click.argument("invoice_id")
@url_option
@key_option
def invoice_show(invoice_id: str, url: str, api_key: str) -> None:
    with _http(url, api_key) as http:
        _show_invoice(_check(http.get(f"/v1/invoices/{invoice_id}")))


@invoice.command("finalize")
@click.argument("invoice_id")
@url_option
@key_option
def invoice_finalize(invoice_id: str, url: str, api_key: str) -> None:
    """Numbers the draft and makes it immutable."""
    with _http(url, api_key) as http:
        final = _check(http.post(f"/v1/invoices/{invoice_id}/finalize"))
    click.echo(f"{invoice_id}: finalized as {final['number']}, total {final['total']} {final['currency']}")


@invoice.command("void")
@click.argument("invoice_id")
@url_option
@key_option
def invoice_void(invoice_id: str, url: str, api_key: str) -> None:
    with _http(url, api_key) as http:
        _check(http.post(f"/v1/invoices/{invoice_id}/void"))
    click.echo(f"{invoice_id}: void")


@invoice.command("credit-note")
@click.argument("invoice_id")
@click.option("--amount", required=True, help="a decimal amount in the invoice's currency")
@click.option("--reason", required=True)
@url_option
@key_option
def invoice_credit_note(invoice_id: str, amount: str, reason: str, url: str, api_key: str) -> None:
    with _http(url, api_key) as http:
        note = _check(http.post(f"/v1/invoices/{invoice_id}/credit-notes", json={"amount": amount, "reason": reason}))
    click.echo(f"{note['number']}: {note['amount']} credited on {invoice_id}")


@main.command()
@click.argument("meter_slug")
@click.option("--from", "start", required=True, help="RFC 3339, e.g. 2026-11-01T00:00:00Z")
@click.option("--to", "end", required=True)
@click.option("--window-size", type=click.Choice(["minute", "hour", "day", "month"]), default=None)
@click.option("--group-by", multiple=True)
@click.option("--subject", multiple=True)
@click.option("--tz", default=None)
@url_option
@key_option
def usage(meter_slug: str, start: str, end: str, window_size: str | None, group_by: tuple[str, ...],
          subject: tuple[str, ...], tz: str | None, url: str, api_key: str) -> None:
    """Usage of a meter over [from, to), as a table."""
    params: list[tuple[str, str]] = [("from", start), ("to", end)]
    params += [("window_size", window_size)] if window_size else []
    params += [("tz", tz)] if tz else []
    params += [("group_by", g) for g in group_by] + [("subject", s) for s in subject]
    with _http(url, api_key) as http:
        rows = _check(http.get(f"/v1/meters/{meter_slug}/usage", params=params))["data"]
    _table(meter_slug, rows, ["window_start", "window_end", *group_by, "value", "events"])


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch-size", type=int, default=1000, show_default=True)
@url_option
@key_option
def ingest(file: Path, batch_size: int, url: str, api_key: str) -> None:
    """Sends the events of FILE (a JSON array or NDJSON) in batches, with retries, and prints a summary."""
    text = file.read_text()
    events = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines()
                                                                     if line.strip()]
    accepted = duplicates = 0
    issues: list[EventIssue] = []
    with Client(url, api_key) as client, Progress() as progress:
        task = progress.add_task("ingesting", total=len(events))
        for start in range(0, len(events), batch_size):
            chunk = events[start : start + batch_size]
            result = client.ingest(chunk, check=False)
            issues += [msgspec.structs.replace(i, index=i.index + start) for i in result.issues]
            accepted, duplicates = accepted + result.accepted, duplicates + result.duplicates
            progress.advance(task, len(chunk))
    click.echo(f"{len(events)} events: {accepted} accepted, {duplicates} duplicates, {len(issues)} rejected")
    for issue in issues[:20]:
        click.echo(f"  #{issue.index} {issue.id}: {issue.code}: {issue.message}", err=True)
    if issues:
        raise SystemExit(1)


@main.command()
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path(".meter-data"),
              show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="where the Parquet goes")
@click.option("--tenant", "tenants", multiple=True, help="only these tenants (default: every tenant)")
def export(data_dir: Path, out: Path, tenants: tuple[str, ...]) -> None:
    """Export usage, raw events, the billing catalog and invoices as Parquet from a data directory that no server is
    running on."""
    from meter.catalog.billing import BillingCatalog
    from meter.catalog.keys import KeyStore
    from meter.exceptions import MeterError
    from meter.export import export_usage
    from meter.pricing.invoicer import Invoicer
    from meter.pricing.invoices import InvoiceStore

    try:
        keys = KeyStore(data_dir / "catalog")
    except Exception as e:  # noqa: BLE001 - rocksdict reports a held lock as a plain exception
        raise click.ClickException(f"cannot open {data_dir}: {e} (is `meter serve` running on it?)") from None
    try:
        names = list(tenants) or [t.id for t in keys.list_tenants()]
        with Engine(data_dir / "usage") as engine, Progress(transient=True) as progress:
            billing, invoices = BillingCatalog(data_dir / "billing"), InvoiceStore(data_dir / "invoices")
            try:
                task = progress.add_task("exporting", total=None)
                summary = export_usage(engine, names, out,  # first, for its progress
                                       progress=lambda what: progress.update(task, description=what))
                progress.update(task, description="raw events, catalog and invoices")
                raw = Invoicer(engine, billing, invoices, out).export(names)["events"].rows
            finally:
                billing.close()
                invoices.close()
    except MeterError as e:
        raise click.ClickException(f"{e} (is `meter serve` running on {data_dir}?)") from None
    finally:
        keys.close()
    click.echo(f"exported {summary.rows} usage rows in {summary.files} files to {out / 'usage'} "
               f"({summary.unchanged} days unchanged), {raw} new raw events to {out / 'events'}, "
               f"and the catalog and invoices of {len(names)} tenants to {out / 'catalog'} and {out / 'invoices'}")


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".meter-data"), show_default=True)
@click.option("--events", type=int, default=20_000, show_default=True, help="events to ingest (in 1000-event batches)")
def demo(data_dir: Path, events: int) -> None:
    """Ingest sample AI-gateway events into a local data directory, then print usage per customer and model.

    Runs on the embedded engine directly, without the HTTP server.
    """
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    rng = random.Random()
    with Engine(data_dir) as engine:
        try:
            engine.create_meter(
                "demo",
                {"slug": "tokens", "event_type": "llm.request", "aggregation": "sum",
                 "value_property": "$.tokens", "group_by": {"model": "$.model"}},
            )
        except AlreadyExists:
            pass
        accepted = duplicates = 0
        for start in range(0, events, 1000):
            batch = [
                {"specversion": "1.0", "id": f"demo-{rng.getrandbits(64):x}", "source": "demo", "type": "llm.request",
                 "subject": f"customer-{rng.randrange(5)}", "time": (now - timedelta(minutes=rng.randrange(60))).isoformat(),
                 "data": {"model": rng.choice(["gpt-4o", "claude-sonnet"]), "tokens": rng.randrange(1, 4000)}}
                for _ in range(min(1000, events - start))
            ]
            result = engine.ingest("demo", json.dumps(batch).encode())
            # Re-send the same batch: a retry is never counted twice.
            retry = engine.ingest("demo", json.dumps(batch).encode())
            accepted, duplicates = accepted + result.accepted, duplicates + retry.duplicates
        click.echo(f"ingested {accepted} events ({duplicates} retried events recognised as duplicates) into {data_dir}")
        usage = engine.usage("demo", "tokens", start=now - timedelta(hours=1), end=now + timedelta(minutes=1),
                             group_by=["subject", "model"])
        click.echo(f"{'customer':<14}{'model':<16}{'tokens':>14}{'events':>9}")
        for row in usage.rows():
            click.echo(f"{row['subject']:<14}{row['model']:<16}{format(row['value'].normalize(), 'f'):>14}{row['events']:>9}")
