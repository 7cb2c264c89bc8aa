"""The ``meter`` command line.

Every error reaches the user as one line on stderr (what happened, and what to do) with a non-zero exit code, never
a traceback: ``MeterGroup.invoke`` turns every exception a command raises into that line, in one place
(``METER_DEBUG=1`` shows the traceback of an unexpected one).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx
import msgspec
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from meter.client import Client, RetryPolicy, ServerError
from meter.engine import Engine
from meter.exceptions import AlreadyExists, MeterError
from meter.schemas import EventIssue, EventWarning

__all__ = ["main"]

# `meter serve`, `meter demo` and `meter export` default to the same data directory (or METER_DATA_DIR).
DATA_DIR = Path(".meter-data")

# `meter ingest` tries a batch that gets no definite answer (network error, 429, 5xx) 4 times, at most 2 s apart, then
# stops: a server that is down is reported within seconds (the SDK's default policy waited 17.6 s, then a traceback).
INGEST_RETRY = RetryPolicy(attempts=4, base_delay=0.25, max_delay=2.0)


# Raised for `meter keys` without a subcommand: it shows the help, it is no error (click >= 8.2).
_SHOWS_HELP: tuple[type[click.UsageError], ...] = (
    (click.exceptions.NoArgsIsHelpError,) if hasattr(click.exceptions, "NoArgsIsHelpError") else ()
)


class MeterGroup(click.Group):
    """The ``meter`` group: whatever a command raises is shown as one line, with a non-zero exit code."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:  # `meter --bogus`
            raise _usage_line(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _usage_line(e) from None
        except click.ClickException as e:
            raise OneLine(e.format_message(), e.exit_code) from None
        except (click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if os.environ.get("METER_DEBUG"):
                raise
            raise OneLine(_one_line(e)) from None


class OneLine(click.ClickException):
    """An error as one line: ``Error: <what happened>; <what to do>``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code


def _usage_line(e: click.UsageError) -> click.ClickException:
    """Missing or bad arguments, a missing or unreadable file: one line that says where the help is."""
    if isinstance(e, _SHOWS_HELP):
        return e
    where = f"; see '{e.ctx.command_path} --help'" if e.ctx is not None else ""
    return OneLine(e.format_message().rstrip(".") + where, e.exit_code)


_STATUS_HINTS = {
    401: "check the key (METER_API_KEY or --api-key): it is wrong, revoked, or not a meter key",
    403: "use a key that may do this (the operator key for tenants and keys, a tenant key with the scope otherwise)",
    404: "check the name or id (`list` shows what exists)",
    409: "it exists already, or something still refers to it",
    413: "send less at once (for `ingest`: a smaller --batch-size)",
    429: "the server is busy: try again in a moment",
    503: "the server cannot take this now: try again, and see its log or /readyz",
}


def _one_line(e: BaseException) -> str:
    """What happened and what to do, for any exception a command lets through."""
    if isinstance(e, ServerError):
        hint = _STATUS_HINTS.get(e.status) or ("the server failed: its log says why" if e.status >= 500 else "")
        text = f"{e}; {hint}" if hint else str(e)
    elif isinstance(e, httpx.ConnectError):
        text = (
            f"cannot connect to {_address(e)} ({e}): is `meter serve` running there? Set METER_URL or --url to "
            "its address"
        )
    elif isinstance(e, httpx.TimeoutException):
        text = f"{_address(e)} did not answer in time ({type(e).__name__}): try again; see the server's log if it lasts"
    elif isinstance(e, httpx.HTTPError):
        text = f"talking to {_address(e)} failed: {type(e).__name__}: {e}"
    elif isinstance(e, MeterError) and e.code == "unavailable":  # the SDK gave up retrying
        text = f"{e.message}; is the server at METER_URL (or --url) running and healthy?"
    elif isinstance(e, MeterError):
        text = f"{e.message} ({e.code})"
    elif isinstance(e, OSError) and e.filename is not None:
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = (
            f"unexpected {type(e).__name__}: {e}; this is a bug in meter: please report it "
            "(METER_DEBUG=1 shows the traceback)"
        )
    return "; ".join([text, *getattr(e, "__notes__", [])])


def _address(e: httpx.HTTPError) -> str:
    try:
        return str(e.request.url.copy_with(path="/", query=None))
    except RuntimeError:  # an error raised outside a request
        return "the server"


@click.group(cls=MeterGroup)
def main() -> None:
    """meter: exact, durable usage metering.

    Commands that talk to a server read its address from METER_URL (or --url) and the key from METER_API_KEY (or
    --api-key): the operator key for `tenants` and `keys`, a tenant key for the rest. Errors are one line on stderr,
    with exit code 1 (2 for a bad command line).
    """


def retention_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say how long the engine keeps what (`meter serve`, `meter maintain`)."""
    for option in reversed(
        [
            click.option(
                "--retention-days",
                type=click.FloatRange(min=0),
                default=None,
                help="days retained events are kept, then dropped once exported (default: back-dating window + 31 "
                "= 66)",
            ),
            click.option(
                "--minute-aggregates-days",
                type=click.FloatRange(min=0),
                default=None,
                help="days aggregates are kept per minute, then per hour (default 40; at least the back-dating "
                "window, 35)",
            ),
            click.option(
                "--hour-aggregates-days",
                type=click.FloatRange(min=0),
                default=None,
                help="days aggregates are kept per hour, then per UTC day (default 400)",
            ),
        ]
    ):
        f = option(f)
    return f


def _check_retention(minute_aggregates_days: float | None, hour_aggregates_days: float | None) -> None:
    if minute_aggregates_days is not None and minute_aggregates_days < 35:
        raise click.BadParameter(
            "must be at least 35 days, the back-dating window: an event still accepted must never "
            "land in minutes already rolled up to hours",
            param_hint="--minute-aggregates-days",
        )
    if hour_aggregates_days is not None and hour_aggregates_days < (minute_aggregates_days or 40):
        raise click.BadParameter(
            f"must be at least --minute-aggregates-days ({minute_aggregates_days or 40})",
            param_hint="--hour-aggregates-days",
        )


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="METER_DATA_DIR",
    default=DATA_DIR,
    show_default=True,
    help="or METER_DATA_DIR",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option(
    "--admin-key",
    envvar="METER_ADMIN_KEY",
    default=None,
    help="the operator key (or METER_ADMIN_KEY); `meter admin-key new` makes one",
)
@click.option("--export-every", type=float, default=None, help="seconds between Parquet exports (none by default)")
@click.option(
    "--export-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where scheduled exports go (default: <data-dir>/export)",
)
@retention_options
@click.option(
    "--maintenance-every",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="seconds between runs of retention and roll-ups (default 60)",
)
@click.option(
    "--max-combinations-per-minute",
    type=click.IntRange(1, 100_000),
    default=1_000,
    show_default=True,
    help="cardinality limit: distinct dimension combinations one customer may have in one minute of a meter "
    "(a meter's own limits override it)",
)
@click.option(
    "--max-customers-per-minute",
    type=click.IntRange(1, 10_000_000),
    default=100_000,
    show_default=True,
    help="cardinality limit: distinct customers one minute of a meter may have (a meter's own limits override it)",
)
def serve(
    data_dir: Path,
    host: str,
    port: int,
    admin_key: str | None,
    export_every: float | None,
    export_dir: Path | None,
    retention_days: float | None,
    minute_aggregates_days: float | None,
    hour_aggregates_days: float | None,
    maintenance_every: float | None,
    max_combinations_per_minute: int,
    max_customers_per_minute: int,
) -> None:
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
    _check_retention(minute_aggregates_days, hour_aggregates_days)
    for name, value in (
        ("METER_RETENTION_DAYS", retention_days),
        ("METER_MINUTE_AGGREGATES_DAYS", minute_aggregates_days),
        ("METER_HOUR_AGGREGATES_DAYS", hour_aggregates_days),
        ("METER_MAINTENANCE_EVERY", maintenance_every),
    ):
        if value is not None:
            os.environ[name] = repr(value)
    os.environ["METER_MAX_COMBINATIONS_PER_MINUTE"] = str(max_combinations_per_minute)
    os.environ["METER_MAX_CUSTOMERS_PER_MINUTE"] = str(max_customers_per_minute)
    server = Granian(
        "meter.server.app:create_app",
        factory=True,
        interface=Interfaces.ASGI,
        address=host,
        port=port,
        workers=1,
        log_access=False,
    )
    try:
        server.serve()
    except (OSError, RuntimeError) as e:  # granian binds here: a port in use; its error carries a Rust backtrace
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {reason}; stop what uses it or choose another "
            "port (--port, or make serve PORT=...)"
        ) from None


@main.group("admin-key")
def admin_key_group() -> None:
    """The operator key: make one for METER_ADMIN_KEY, or reset a data directory's operator keys."""


@admin_key_group.command("new")
def admin_key_new() -> None:
    """Prints a freshly generated, well-formed key: `METER_ADMIN_KEY=$(meter admin-key new) meter serve`."""
    from meter.catalog.keys import new_key

    click.echo(new_key())


@admin_key_group.command("reset")
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".meter-data"), show_default=True
)
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
            raise click.ClickException(
                f"{data_dir} is in use by a running server: stop `meter serve` first, then run this again"
            ) from None
        raise click.ClickException(f"cannot open {catalog}: {e}") from None
    try:
        revoked = sum(1 for k in store.list_keys(operators=True) if not k.revoked)
        secret, _ = store.reset_operator_keys()
    finally:
        store.close()
    click.echo(secret)
    click.echo(
        f"revoked {revoked} operator key(s); the key above is the operator key now (shown once: store it). "
        "If METER_ADMIN_KEY is set, set it to this key or unset it.",
        err=True,
    )


# Commands that talk to a running server. The URL and key come from options or METER_URL / METER_API_KEY.
def _require_key(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    if not value:
        raise click.UsageError(
            "no API key: set METER_API_KEY or pass --api-key (the operator key for `tenants` and "
            "`keys`, a tenant key otherwise)",
            ctx,
        )
    return value


url_option = click.option(
    "--url",
    envvar="METER_URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="the server's address (or METER_URL)",
)
key_option = click.option("--api-key", envvar="METER_API_KEY", callback=_require_key, help="or METER_API_KEY")


def _http(url: str, api_key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)


def _check(response: httpx.Response) -> Any:
    """The JSON of a successful answer; an error answer raises ServerError (its status, code and message)."""
    if response.status_code >= 400:
        raise ServerError.of(response)
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
    """Create and list tenants (the operator key)."""


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
    _table(
        "keys", [{**r, "scopes": ",".join(r["scopes"])} for r in rows], ["id", "tenant", "display", "scopes", "revoked"]
    )


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
            click.echo(
                f"created {created['meter']['slug']} (backfilled {b['events']} events, "
                f"{b['filtered']} filtered, {b['unreadable']} unreadable)"
            )


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


def _put_catalog(http: httpx.Client, sections: dict[str, list[Any]]) -> None:
    """Writes the items in order, each created or replaced, so that a rerun after a failure picks up where it stopped.

    A plan that exists gets the versions of the file it does not have yet.
    """
    for kind, items in sections.items():
        for item in items:
            try:
                click.echo(f"{kind[:-1]} {item.id}: {_put_item(http, kind, item)}")
            except (click.ClickException, ServerError) as e:
                what = f"HTTP {e.status} {e.code}: {e.server_message}" if isinstance(e, ServerError) else e.message
                raise click.ClickException(f"{kind[:-1]} {item.id}: {what} (the items above it were saved)") from None


def _put_item(http: httpx.Client, kind: str, item: Any) -> str:
    headers = {"content-type": "application/json"}
    response = http.post(f"/v1/{kind}", content=msgspec.json.encode(item), headers=headers)
    if kind != "plans" or response.status_code != 409:
        _check(response)
        versions = len(getattr(item, "versions", []))
        return "saved" + (f" with {versions} versions" if versions else "")
    # The plan exists: plans are versioned, so the file may only add versions after the stored ones.
    from meter.catalog.billing import Plan, PlanVersionBody
    from meter.catalog.types import trusted

    response = http.get(f"/v1/plans/{quote(item.id, safe='')}")
    _check(response)
    with trusted():
        stored = msgspec.json.decode(response.content, type=Plan)
    kept = [PlanVersionBody(v.effective_from, v.prices) for v in stored.versions]
    if item.versions[: len(kept)] != kept:
        raise click.ClickException(
            f"plan {item.id} exists with other versions than the file's first {len(kept)}: "
            "versions cannot change; add a version after them instead"
        )
    for version in item.versions[len(kept) :]:
        _check(
            http.post(
                f"/v1/plans/{quote(item.id, safe='')}/versions", content=msgspec.json.encode(version), headers=headers
            )
        )
    added = len(item.versions) - len(kept)
    return f"{added} versions added" if added else f"unchanged ({len(kept)} versions)"


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
    with _http(url, api_key) as http:
        _put_catalog(http, sections)


@catalog.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@url_option
@key_option
def catalog_load(file: Path, url: str, api_key: str) -> None:
    """Writes a catalog FILE (YAML or JSON): customers, products, plans and subscriptions, in that order.

    Every item is checked before anything is written; see the README's "Catalog files".
    """
    sections = _catalog_file(file, None)
    with _http(url, api_key) as http:
        _put_catalog(http, sections)


@catalog.command("list")
@click.argument("kind", type=click.Choice(CATALOG_KINDS))
@url_option
@key_option
def catalog_list(kind: str, url: str, api_key: str) -> None:
    with _http(url, api_key) as http:
        rows = _check(http.get(f"/v1/{kind}"))
    columns = {
        "customers": ["id", "name", "currency", "timezone"],
        "products": ["id", "name", "parent"],
        "plans": ["id", "name"],
        "subscriptions": ["id", "customer", "plan", "version", "start", "end"],
    }[kind]
    _table(kind, rows, columns)


@catalog.command("delete")
@click.argument("kind", type=click.Choice(CATALOG_KINDS))
@click.argument("item_id")
@url_option
@key_option
def catalog_delete(kind: str, item_id: str, url: str, api_key: str) -> None:
    """Deletes one item; refused (in_use) while a subscription or a child product still refers to it."""
    with _http(url, api_key) as http:
        _check(http.delete(f"/v1/{kind}/{quote(item_id, safe='')}"))
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
        _check(
            http.post(
                f"/v1/subscriptions/{quote(subscription_id, safe='')}/migrate", json={"version": version, "at": at}
            )
        )
    click.echo(f"subscription {subscription_id}: on version {version} from {at}")


@main.group(invoke_without_command=True)
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
    with _http(url, api_key) as http:
        run = _check(http.post("/v1/invoices/run", json={"period": period, "finalize": finalize}))
    _invoices_table(f"invoices of cycles starting in {period}", run["invoices"])
    click.echo(_covers(run))
    for warning in run.get("warnings", []):
        click.echo(f"warning: {warning['code']}: {warning['message']}", err=True)
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
    _table(title, rows, ["id", "number", "status", "customer", "period", "usage_period", "currency", "total"])


def _show_invoice(invoice: dict[str, Any]) -> None:
    title = (
        f"{invoice['number'] or invoice['id']} ({invoice['status']}) for {invoice['customer']}, "
        f"{invoice['period_start']} .. {invoice['period_end']}"
    )
    _table(title, invoice["lines"], ["kind", "description", "quantity", "rated", "billed", "amount"])
    if invoice.get("usage_start"):
        click.echo(f"usage billed in arrears: {invoice['usage_start']} .. {invoice['usage_end']}")
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
@click.option("--period", default=None, help="only invoices of cycles starting in this month (YYYY-MM)")
@click.option("--usage-period", default=None, help="only invoices that bill this month's usage (YYYY-MM)")
@url_option
@key_option
def invoice_list(status: str | None, period: str | None, usage_period: str | None, url: str, api_key: str) -> None:
    """Invoices, filtered: `--usage-period 2026-11` lists those that bill November's usage."""
    params = {k: v for k, v in (("status", status), ("period", period), ("usage_period", usage_period)) if v}
    with _http(url, api_key) as http:
        _invoices_table("invoices", _check(http.get("/v1/invoices", params=params)))


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
    _warn(final)


def _warn(answer: dict[str, Any]) -> None:
    for warning in answer.get("warnings", []):
        click.echo(f"warning: {warning['code']}: {warning['message']}", err=True)


@invoice.command("void")
@click.argument("invoice_id")
@url_option
@key_option
def invoice_void(invoice_id: str, url: str, api_key: str) -> None:
    """Voids a finalized invoice: its charges become billable again (re-run its period for a new draft)."""
    with _http(url, api_key) as http:
        void = _check(http.post(f"/v1/invoices/{invoice_id}/void"))
    click.echo(f"{invoice_id}: void")
    _warn(void)


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
    _warn(note)


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
def usage(
    meter_slug: str,
    start: str,
    end: str,
    window_size: str | None,
    group_by: tuple[str, ...],
    subject: tuple[str, ...],
    tz: str | None,
    url: str,
    api_key: str,
) -> None:
    """Usage of a meter over [from, to), as a table."""
    params: list[tuple[str, str | int | float | bool | None]] = [("from", start), ("to", end)]
    params += [("window_size", window_size)] if window_size else []
    params += [("tz", tz)] if tz else []
    params += [("group_by", g) for g in group_by] + [("subject", s) for s in subject]
    with _http(url, api_key) as http:
        rows = _check(http.get(f"/v1/meters/{meter_slug}/usage", params=params))["data"]
    _table(meter_slug, rows, ["window_start", "window_end", *group_by, "value", "events"])


def _read_events(file: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The events of FILE, and where each one is in it ("line 3", or "event 3" of a JSON array).

    An event without an ``id`` gets one derived from the file: ``<the first 32 hex digits of the SHA-256 of the
    file's bytes>-<n>``, n being the event's line in an NDJSON file or its position (from 1) in a JSON array, so
    that ingesting the same file again is all duplicates. Nothing is sent unless the whole file reads.
    """
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:32]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.ClickException(f"{file}: not UTF-8 text (byte {e.start}); nothing was sent") from None
    items: list[tuple[int, str, Any]] = []  # (n for the id, where, event)
    if text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except json.JSONDecodeError as e:
            raise click.ClickException(
                f"{file}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}); nothing was sent"
            ) from None
        items = [(n, f"event {n}", item) for n, item in enumerate(array, 1)]
    else:
        # Lines end at "\n" only: str.splitlines() would also split at characters JSON strings may hold (U+2028).
        for lineno, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    items.append((lineno, f"line {lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise click.ClickException(
                        f"{file}:{lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                        "one event per line; nothing was sent"
                    ) from None
    events, places = [], []
    for n, where, item in items:
        if not isinstance(item, dict):
            raise click.ClickException(
                f"{file}: {where}: an event is a JSON object, not {type(item).__name__}; nothing was sent"
            )
        item.setdefault("id", f"{digest}-{n}")
        events.append(item)
        places.append(where)
    return events, places


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@url_option
@key_option
def ingest(file: Path, batch_size: int, url: str, api_key: str) -> None:
    """Sends the events of FILE (a JSON array or NDJSON) in batches and prints a summary.

    An event without an `id` gets one derived from the file: the first 32 hex digits of the SHA-256 of the file's
    bytes, a dash, and the event's line (NDJSON) or position from 1 (JSON array). Ingesting the same file again
    therefore counts nothing twice (every event is a duplicate); a file that changed is a new file, so give events
    their own ids if a file grows between runs.

    A batch without a definite answer (network error, 429, 5xx) is tried 4 times, at most 2 s apart; then the
    command stops and says how many events were answered, and running it again is safe.
    """
    events, places = _read_events(file)
    accepted = duplicates = done = 0
    issues: list[EventIssue] = []
    warnings: list[EventWarning] = []
    try:
        # The progress bar goes to stderr, so that stdout is the summary alone.
        with (
            Client(url, api_key, retry=INGEST_RETRY) as client,
            Progress(console=Console(stderr=True), transient=True) as progress,
        ):
            task = progress.add_task("ingesting", total=len(events))
            for start in range(0, len(events), batch_size):
                chunk = events[start : start + batch_size]
                result = client.ingest(chunk, check=False)
                issues += [msgspec.structs.replace(i, index=i.index + start) for i in result.issues]
                warnings += [msgspec.structs.replace(w, index=w.index + start) for w in result.warnings]
                accepted, duplicates = accepted + result.accepted, duplicates + result.duplicates
                done += len(chunk)
                progress.advance(task, len(chunk))
    except (MeterError, httpx.HTTPError) as e:
        e.add_note(
            f"{done} of {len(events)} events were answered before it stopped; running the same command again "
            "is safe (events keep their ids)"
        )
        raise
    click.echo(
        f"{len(events)} events: {accepted} accepted, {duplicates} duplicates, {len(issues)} rejected"
        + (f"; a meter skipped {len(warnings)} accepted events" if warnings else "")
    )
    for issue in issues[:20]:
        click.echo(f"  {file}: {places[issue.index]} ({issue.id}): {issue.code}: {issue.message}", err=True)
    if len(issues) > 20:
        click.echo(f"  ... and {len(issues) - 20} more", err=True)
    # Accepted and counted by the other meters: a warning, not a failure (GET /v1/meters/{slug}/skipped lists them).
    for warning in warnings[:20]:
        click.echo(
            f"  {file}: {places[warning.index]} ({warning.id}): meter {warning.meter} skipped it: "
            f"{warning.code}: {warning.message}",
            err=True,
        )
    if len(warnings) > 20:
        click.echo(f"  ... and {len(warnings) - 20} more skipped", err=True)
    if issues:
        raise SystemExit(1)


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    envvar="METER_DATA_DIR",
    default=DATA_DIR,
    show_default=True,
    help="or METER_DATA_DIR",
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="where the Parquet goes")
@click.option("--tenant", "tenants", multiple=True, help="only these tenants (default: every tenant)")
def export(data_dir: Path, out: Path, tenants: tuple[str, ...]) -> None:
    """Export usage, raw events, the billing catalog and invoices as Parquet.

    From a data directory that no server is running on.
    """
    from meter.billing.invoicer import Invoicer
    from meter.billing.invoices import InvoiceStore
    from meter.catalog.billing import BillingCatalog
    from meter.catalog.keys import KeyStore
    from meter.exceptions import MeterError
    from meter.export import export_usage

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
                summary = export_usage(
                    engine,
                    names,
                    out,  # first, for its progress
                    progress=lambda what: progress.update(task, description=what),
                )
                progress.update(task, description="raw events, catalog and invoices")
                raw = Invoicer(engine, billing, invoices, out).export(names)["events"].rows
            finally:
                billing.close()
                invoices.close()
    except MeterError as e:
        raise click.ClickException(f"{e} (is `meter serve` running on {data_dir}?)") from None
    finally:
        keys.close()
    click.echo(
        f"exported {summary.rows} usage rows in {summary.files} files to {out / 'usage'} "
        f"({summary.unchanged} days unchanged), {raw} new raw events to {out / 'events'}, "
        f"and the catalog and invoices of {len(names)} tenants to {out / 'catalog'} and {out / 'invoices'}"
    )


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    envvar="METER_DATA_DIR",
    default=DATA_DIR,
    show_default=True,
    help="or METER_DATA_DIR",
)
@retention_options
def maintain(
    data_dir: Path,
    retention_days: float | None,
    minute_aggregates_days: float | None,
    hour_aggregates_days: float | None,
) -> None:
    """Apply retention and roll-ups now (`meter serve` does it every minute by itself).

    Drops the retained events that are past retention and written by the export, and rolls old minute aggregates up
    to hours and days; give the same options as `meter serve`. From a data directory that no server is running on.
    """
    _check_retention(minute_aggregates_days, hour_aggregates_days)

    def days(value: float | None) -> timedelta | None:
        return None if value is None else timedelta(days=value)

    try:
        with Engine(
            data_dir / "usage",
            maintenance_interval=None,
            retention=days(retention_days),
            minute_aggregates=days(minute_aggregates_days),
            hour_aggregates=days(hour_aggregates_days),
        ) as engine:
            report = engine.maintain()
    except MeterError as e:
        raise click.ClickException(f"{e} (is `meter serve` running on {data_dir}?)") from None
    dropped = ", ".join(f"{d.tenant} through commit {d.through_seq}" for d in report.dropped) or "none"
    click.echo(
        f"dropped retained events: {dropped}; rolled up {report.keys_merged} aggregate keys of "
        f"{report.meters_rolled_up} meters in {report.steps} steps"
    )
    for h in report.held_back:
        click.echo(
            f"held back for export: {h.tenant}: {h.events} events past retention not exported yet "
            "(run `meter export`, or `meter serve --export-every`)",
            err=True,
        )


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="METER_DATA_DIR",
    default=DATA_DIR,
    show_default=True,
    help="or METER_DATA_DIR; the same default as `meter serve`",
)
@click.option("--events", type=int, default=20_000, show_default=True, help="events to ingest (in 1000-event batches)")
def demo(data_dir: Path, events: int) -> None:
    """Ingest sample AI-gateway events into tenant `demo`, then print its usage per customer and model.

    Writes the data directory `meter serve` uses (the same default).
    It runs on the embedded engine directly, without HTTP, so the server must be stopped (one process owns a data
    directory). Then `meter serve` serves it: `meter keys create demo --scope read` makes a key to query it.
    """
    from meter.catalog.keys import KeyStore

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    rng = random.Random()
    try:
        keys = KeyStore(data_dir / "catalog")
    except Exception as e:  # noqa: BLE001 - rocksdict reports a held lock as a plain exception
        raise click.ClickException(
            f"cannot open {data_dir}: {e}; is `meter serve` running on it? Stop it first: one "
            "process owns a data directory"
        ) from None
    try:
        keys.create_tenant("demo", "Demo")
    except AlreadyExists:
        pass
    finally:
        keys.close()
    with Engine(data_dir / "usage") as engine:
        try:
            engine.create_meter(
                "demo",
                {
                    "slug": "tokens",
                    "event_type": "llm.request",
                    "aggregation": "sum",
                    "value_property": "$.tokens",
                    "group_by": {"model": "$.model"},
                },
            )
        except AlreadyExists:
            pass
        accepted = duplicates = 0
        for start in range(0, events, 1000):
            batch = [
                {
                    "specversion": "1.0",
                    "id": f"demo-{rng.getrandbits(64):x}",
                    "source": "demo",
                    "type": "llm.request",
                    "subject": f"customer-{rng.randrange(5)}",
                    "time": (now - timedelta(minutes=rng.randrange(60))).isoformat(),
                    "data": {"model": rng.choice(["gpt-4o", "claude-sonnet"]), "tokens": rng.randrange(1, 4000)},
                }
                for _ in range(min(1000, events - start))
            ]
            result = engine.ingest("demo", json.dumps(batch).encode())
            # Re-send the same batch: a retry is never counted twice.
            retry = engine.ingest("demo", json.dumps(batch).encode())
            accepted, duplicates = accepted + result.accepted, duplicates + retry.duplicates
        click.echo(f"ingested {accepted} events ({duplicates} retried events recognised as duplicates) into {data_dir}")
        usage = engine.usage(
            "demo",
            "tokens",
            start=now - timedelta(hours=1),
            end=now + timedelta(minutes=1),
            group_by=["subject", "model"],
        )
        click.echo(f"{'customer':<14}{'model':<16}{'tokens':>14}{'events':>9}")
        for row in usage.rows():
            tokens = format(row["value"].normalize(), "f")
            click.echo(f"{row['subject']:<14}{row['model']:<16}{tokens:>14}{row['events']:>9}")
