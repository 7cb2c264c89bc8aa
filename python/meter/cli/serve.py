"""``meter serve``: the HTTP API on one data directory, in granian (one worker: one process owns a data directory).

The command checks its options, then hands them to the server through the environment (``METER_DATA_DIR``,
``METER_ADMIN_KEY``, the export schedule, retention and cardinality limits, whether webhooks may reach private
addresses), which ``meter.server.app.create_app`` reads in granian's worker: the server opens the stores itself, at
startup (ASGI lifespan), never here. A port in use is one line, not granian's Rust backtrace.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from meter.cli.options import DATA_DIR, check_retention, retention_options

__all__ = ["serve"]


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="METER_DATA_DIR",
    default=DATA_DIR,
    show_default=True,
    help="or METER_DATA_DIR",
)
@click.option(
    "--cluster",
    envvar="METER_CLUSTER",
    default=None,
    help="run an edge of the cluster on these NATS servers (comma-separated; or METER_CLUSTER): no data directory",
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
@click.option(
    "--allow-private-webhooks",
    is_flag=True,
    envvar="METER_ALLOW_PRIVATE_WEBHOOKS",
    help="let webhook endpoints be http and resolve to loopback, private, link-local or other non-public "
    "addresses (or METER_ALLOW_PRIVATE_WEBHOOKS=1): for tests and receivers on your own network; off, the server "
    "refuses them (SSRF)",
)
def serve(
    data_dir: Path,
    cluster: str | None,
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
    allow_private_webhooks: bool,
) -> None:
    """Run the HTTP API on one data directory (one process owns it)."""
    from granian import Granian
    from granian.constants import Interfaces

    from meter.catalog.keys import valid_checksum
    from meter.server.lifecycle import admin_key_message

    if admin_key and not valid_checksum(admin_key):
        raise click.ClickException(admin_key_message())
    if cluster:
        os.environ["METER_CLUSTER"] = cluster
        return _run(Granian, Interfaces, "meter.cluster.server:create_app", host, port)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["METER_DATA_DIR"] = str(data_dir.resolve())
    if export_every is not None:
        if export_every <= 0:
            raise click.BadParameter("must be above 0 seconds", param_hint="--export-every")
        os.environ["METER_EXPORT_EVERY"] = str(export_every)
        os.environ["METER_EXPORT_DIR"] = str((export_dir or data_dir / "export").resolve())
    if admin_key:
        os.environ["METER_ADMIN_KEY"] = admin_key
    check_retention(minute_aggregates_days, hour_aggregates_days)
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
    os.environ["METER_ALLOW_PRIVATE_WEBHOOKS"] = "1" if allow_private_webhooks else "0"
    _run(Granian, Interfaces, "meter.server.app:create_app", host, port)


def _run(granian: Any, interfaces: Any, target: str, host: str, port: int) -> None:
    server = granian(
        target, factory=True, interface=interfaces.ASGI, address=host, port=port, workers=1, log_access=False
    )
    try:
        server.serve()
    except (OSError, RuntimeError) as e:  # granian binds here: a port in use; its error carries a Rust backtrace
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {reason}; stop what uses it or choose another "
            "port (--port, or make serve PORT=...)"
        ) from None
