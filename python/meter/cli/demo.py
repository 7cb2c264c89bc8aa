"""``meter demo``: sample AI-gateway events in tenant ``demo`` of a data directory, then its usage per customer.

It runs on the embedded engine, without HTTP, on the data directory ``meter serve`` uses by default (opened through
``meter.services.Stores``: the key store for the tenant, the engine for the meter and the events), so the server
must be stopped; running it again adds events (the tenant and meter exist already, which is fine). Every batch is
sent twice, to show that a retry is never counted twice. ``meter.services`` is imported inside the command: see
``meter.cli.admin``.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from meter.cli.options import DATA_DIR
from meter.exceptions import AlreadyExists

__all__ = ["demo"]


@click.command()
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
    from meter.services import OpenFailed, Part, Stores

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    rng = random.Random()
    try:
        stores = Stores.open(data_dir, [Part.KEYS, Part.USAGE])
    except OpenFailed as e:
        if e.part is not Part.KEYS:
            raise  # the engine's own error, as one line
        raise click.ClickException(
            f"cannot open {data_dir}: {e}; is `meter serve` running on it? Stop it first: one "
            "process owns a data directory"
        ) from None
    with stores:
        engine = stores.engine
        try:
            stores.keys.create_tenant("demo", "Demo")
        except AlreadyExists:
            pass
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
