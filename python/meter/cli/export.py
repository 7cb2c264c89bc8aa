"""``meter export``: usage, raw events, the billing catalog, invoices and the ledger of a data directory, as Parquet.

It runs on the data directory itself (no server: one process owns a data directory), opening every store through
``meter.services.Stores`` and writing through the same ``Invoicer`` the server's scheduled export uses, into
``--out``. A data directory a running server holds is one line that says so, and nothing is exported.
``meter.services`` is imported inside the command: see ``meter.cli.admin``.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import Progress

from meter.cli.options import data_dir_option
from meter.exceptions import MeterError

__all__ = ["export"]


@click.command()
@data_dir_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="where the Parquet goes")
@click.option("--tenant", "tenants", multiple=True, help="only these tenants (default: every tenant)")
def export(data_dir: Path, out: Path, tenants: tuple[str, ...]) -> None:
    """Export usage, raw events, the billing catalog, invoices and the ledger as Parquet.

    From a data directory that no server is running on.
    """
    from meter.lake import layout
    from meter.lake.usage import export_usage
    from meter.services import OpenFailed, Part, Stores

    try:
        stores = Stores.open(data_dir, export_dir=out)
    except OpenFailed as e:
        if e.part is Part.KEYS:
            raise click.ClickException(f"cannot open {data_dir}: {e} (is `meter serve` running on it?)") from None
        raise click.ClickException(f"{e} (is `meter serve` running on {data_dir}?)") from None
    with stores:
        try:
            names = list(tenants) or [t.id for t in stores.keys.list_tenants()]
            with Progress(transient=True) as progress:
                task = progress.add_task("exporting", total=None)
                summary = export_usage(
                    stores.engine,
                    names,
                    out,  # first, for its progress
                    progress=lambda what: progress.update(task, description=what),
                )
                progress.update(task, description="raw events, catalog, invoices and ledger")
                raw = stores.invoicer.export(names)["events"].rows
        except MeterError as e:
            raise click.ClickException(f"{e} (is `meter serve` running on {data_dir}?)") from None
    click.echo(
        f"exported {summary.rows} usage rows in {summary.files} files to {layout.usage_root(out)} "
        f"({summary.unchanged} days unchanged), {raw} new raw events to {layout.events_root(out)}, and the catalog "
        f"and invoices of {len(names)} tenants to {layout.catalog_root(out)} and {layout.invoices_root(out)}, and "
        f"their ledgers to {layout.ledger_root(out)}"
    )
