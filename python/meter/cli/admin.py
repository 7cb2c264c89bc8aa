"""The operator's commands on a data directory itself, with no server running: ``admin-key`` and ``maintain``.

``admin-key new`` makes a well-formed operator key; ``admin-key reset`` revokes a data directory's operator keys
and prints a new one; ``maintain`` applies retention and roll-ups now. The last two open stores through
``meter.services.Stores``, only the ones they need, and say so in one line when a running ``meter serve`` holds
them (one process owns a data directory).

``meter.services`` (with polars and RocksDB behind it) is imported inside these commands, not at the top: every
other command (each ``meter`` invocation imports this module) would pay for it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click

from meter.cli.options import check_retention, data_dir_option, retention_options
from meter.exceptions import MeterError

__all__ = ["admin_key_group", "maintain"]


@click.group("admin-key")
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
    from meter.services import OpenFailed, Part, Stores

    catalog = Part.KEYS.path(data_dir)
    if not catalog.is_dir():
        raise click.ClickException(f"{data_dir} is not a meter data directory (no {catalog}); give --data-dir")
    try:
        stores = Stores.open(data_dir, [Part.KEYS])
    except OpenFailed as e:
        if e.in_use:
            raise click.ClickException(
                f"{data_dir} is in use by a running server: stop `meter serve` first, then run this again"
            ) from None
        raise click.ClickException(f"cannot open {catalog}: {e}") from None
    with stores:
        revoked = sum(1 for k in stores.keys.list_keys(operators=True) if not k.revoked)
        secret, _ = stores.keys.reset_operator_keys()
    click.echo(secret)
    click.echo(
        f"revoked {revoked} operator key(s); the key above is the operator key now (shown once: store it). "
        "If METER_ADMIN_KEY is set, set it to this key or unset it.",
        err=True,
    )


@click.command()
@data_dir_option
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
    from meter.services import Part, Stores

    check_retention(minute_aggregates_days, hour_aggregates_days)

    def days(value: float | None) -> timedelta | None:
        return None if value is None else timedelta(days=value)

    options = {
        "maintenance_interval": None,
        "retention": days(retention_days),
        "minute_aggregates": days(minute_aggregates_days),
        "hour_aggregates": days(hour_aggregates_days),
    }
    try:
        with Stores.open(data_dir, [Part.USAGE], engine_options=options) as stores:
            report = stores.engine.maintain()
    except MeterError as e:  # OpenFailed too: a running server holds the engine
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
