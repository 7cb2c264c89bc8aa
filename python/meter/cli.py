"""The ``meter`` command line."""

from __future__ import annotations

import json
import os
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from meter.engine import Engine
from meter.exceptions import AlreadyExists

__all__ = ["main"]


@click.group()
def main() -> None:
    """meter: exact, durable usage metering."""


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".meter-data"), show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--admin-key", envvar="METER_ADMIN_KEY", default=None, help="bootstrap admin key (or METER_ADMIN_KEY)")
def serve(data_dir: Path, host: str, port: int, admin_key: str | None) -> None:
    """Run the HTTP API on one data directory (one process owns it)."""
    from granian import Granian
    from granian.constants import Interfaces

    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["METER_DATA_DIR"] = str(data_dir.resolve())
    if admin_key:
        os.environ["METER_ADMIN_KEY"] = admin_key
    Granian(
        "meter.server.app:create_app", factory=True, interface=Interfaces.ASGI, address=host, port=port, workers=1,
        log_access=False,
    ).serve()


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
