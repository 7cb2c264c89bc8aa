"""``meter meters`` and ``meter usage``: define meters and read what they counted, over HTTP through ``Client``.

A meter file is YAML (``.yaml``, ``.yml``) or JSON, one definition or a list; the definitions are sent one by one,
in order, and each one created is printed with what its backfill counted. Usage rows are printed as the server
sent them (exact decimal strings), one column per ``--group-by`` dimension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import click
import msgspec

from meter.cli.options import connect, key_option, url_option
from meter.cli.output import table
from meter.client import WindowSize

__all__ = ["meters", "usage"]


def _definitions(file: Path) -> list[Any]:
    """The item or list of items in FILE: YAML if it ends in .yaml or .yml, else JSON."""
    yaml = file.suffix.lower() in (".yaml", ".yml")
    try:
        data = (msgspec.yaml if yaml else msgspec.json).decode(file.read_bytes())
    except msgspec.DecodeError as e:
        raise click.ClickException(f"{file} is not valid {'YAML' if yaml else 'JSON'}: {e}") from None
    return data if isinstance(data, list) else [data]


@click.group()
def meters() -> None:
    """Create and list meters."""


@meters.command("create")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@url_option
@key_option
def meters_create(file: Path, url: str, api_key: str) -> None:
    """Creates the meter (or the list of meters) defined in FILE: YAML if it ends in .yaml or .yml, else JSON."""
    with connect(url, api_key) as client:
        for spec in _definitions(file):
            created = client.create_meter(spec)
            b = created.backfill
            click.echo(
                f"created {created.meter.slug} (backfilled {b.events} events, "
                f"{b.filtered} filtered, {b.unreadable} unreadable)"
            )


@meters.command("list")
@url_option
@key_option
def meters_list(url: str, api_key: str) -> None:
    with connect(url, api_key) as client:
        rows = [msgspec.to_builtins(m) for m in client.list_meters()]
    table("meters", rows, ["slug", "event_type", "aggregation", "value_property"])


@click.command()
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
    with connect(url, api_key) as client:
        rows = client.usage(
            meter_slug,
            start,
            end,
            window_size=cast("WindowSize | None", window_size),  # click.Choice allows only these
            group_by=group_by,
            subject=subject,
            tz=tz,
        )
    table(meter_slug, rows, ["window_start", "window_end", *group_by, "value", "events"])
