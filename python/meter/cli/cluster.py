"""``meter worker`` and ``meter cluster``: a cluster's workers, its keys and its state (README, "Running a cluster").

``meter serve --cluster`` (in ``serve``) runs an edge. Every command here talks to the NATS servers directly: access to
them is access to the cluster, as access to a data directory is to one ``meter serve``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from pathlib import Path

import click

from meter.cli.options import DATA_DIR

__all__ = ["cluster", "worker"]

_CLUSTER = click.option(
    "--cluster",
    "servers",
    envvar="METER_CLUSTER",
    required=True,
    help="the NATS servers, comma-separated (nats://host:4222,...), or METER_CLUSTER",
)


@click.command()
@_CLUSTER
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="METER_DATA_DIR",
    default=DATA_DIR,
    show_default=True,
    help="where this worker keeps its partitions' engines (or METER_DATA_DIR)",
)
@click.option("--id", "worker_id", default=None, help="this worker's name in the cluster (default: host and pid)")
@click.option(
    "--partitions",
    type=click.IntRange(1, 1024),
    default=16,
    show_default=True,
    help="partitions of a cluster this worker creates (fixed at creation; ignored after)",
)
@click.option(
    "--replicas",
    type=click.IntRange(1, 5),
    default=3,
    show_default=True,
    help="copies of the log and checkpoints of a cluster this worker creates",
)
@click.option(
    "--lease-ttl",
    type=float,
    default=10.0,
    show_default=True,
    help="seconds before a dead worker's partitions are taken over (of a cluster this worker creates)",
)
@click.option(
    "--checkpoint-every",
    type=float,
    default=60.0,
    show_default=True,
    help="seconds between checkpoints of a partition that moved",
)
@click.option(
    "--export-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="METER_EXPORT_DIR",
    default=None,
    help="a directory every worker shares (NFS, EFS...): each partition exports its usage there, as pricing reads it",
)
@click.option(
    "--export-every",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    help="seconds between exports of a partition that moved",
)
def worker(
    servers: str,
    data_dir: Path,
    worker_id: str | None,
    partitions: int,
    replicas: int,
    lease_ttl: float,
    checkpoint_every: float,
    export_dir: Path | None,
    export_every: float,
) -> None:
    """Apply the cluster's partitions this worker holds, until SIGTERM or SIGINT (then hand them back)."""
    from meter.cluster.settings import ClusterSettings
    from meter.cluster.worker import Worker, WorkerOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = WorkerOptions(
        data_dir=data_dir.resolve(),
        worker_id=worker_id or f"{socket.gethostname()}-{os.getpid()}",
        checkpoint_every=checkpoint_every,
        export_dir=export_dir.resolve() if export_dir else None,
        export_every=export_every,
        settings=ClusterSettings(partitions=partitions, replicas=replicas, lease_ttl=lease_ttl),
    )
    data_dir.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Worker(servers, options).run(stop)

    asyncio.run(run())


@click.group()
def cluster() -> None:
    """A cluster's keys and state."""


@cluster.command("key")
@_CLUSTER
@click.option("--tenant", required=True)
@click.option(
    "--scope", "scopes", multiple=True, required=True, type=click.Choice(["ingest", "read", "export", "admin"])
)
def key(servers: str, tenant: str, scopes: tuple[str, ...]) -> None:
    """Create an API key of TENANT for the cluster's edges: the secret on stdout (shown once), its id on stderr."""
    from meter.cluster.keys import create_key
    from meter.cluster.settings import connect

    async def run() -> tuple[str, str]:
        c = await connect(servers, "meter-cli")
        try:
            secret, record = await create_key(c.catalog, tenant, list(scopes))  # type: ignore[arg-type]
            return secret, record.id
        finally:
            await c.close()

    secret, key_id = asyncio.run(run())
    click.echo(secret)
    click.echo(f"key id {key_id} (revoke it with `meter cluster revoke {key_id}`)", err=True)


@cluster.command("revoke")
@_CLUSTER
@click.argument("key_id")
def revoke(servers: str, key_id: str) -> None:
    """Revoke the key KEY_ID: every edge refuses it within `REMEMBER_S` (10 s)."""
    from meter.cluster.keys import revoke_key
    from meter.cluster.settings import connect

    async def run() -> None:
        c = await connect(servers, "meter-cli")
        try:
            await revoke_key(c.catalog, key_id)
        finally:
            await c.close()

    asyncio.run(run())
    click.echo(f"revoked {key_id}")


@cluster.command("status")
@_CLUSTER
def status(servers: str) -> None:
    """Each partition's owner and applied position, and the log's size."""
    from meter.cluster.leases import Leases
    from meter.cluster.settings import STREAM, connect

    async def run() -> None:
        c = await connect(servers, "meter-cli")
        try:
            owners = await Leases(c.js, c.leases, "meter-cli").owners()
            info = await c.js.stream_info(STREAM)
            click.echo(f"partitions: {c.settings.partitions}, replicas: {c.settings.replicas}")
            click.echo(f"log: {info.state.messages} entries, {info.state.bytes} bytes")
            for p in range(c.settings.partitions):
                click.echo(f"  partition {p}: {owners.get(p, '(no owner)')}")
        finally:
            await c.close()

    asyncio.run(run())


@cluster.command("export")
@_CLUSTER
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds to wait for each partition")
def export(servers: str, timeout: float) -> None:
    """Have every partition export its usage now, into the workers' --export-dir; wait for all of them.

    Each partition's owner writes the days that changed since its last export (its own `part-p<n>` files of the one
    dataset). Exits 1 when a partition could not: it is named, with the reason.
    """
    from meter.cluster.edge import ask
    from meter.cluster.settings import Cluster, connect
    from meter.exceptions import MeterError

    async def one(c: Cluster, partition: int) -> bool:
        try:
            answer = json.loads(await ask(c, partition, {"op": "export", "tenant": ""}, timeout))
        except MeterError as e:
            click.echo(f"partition {partition}: not exported: {e} ({e.code})", err=True)
            return False
        click.echo(
            f"partition {partition}: {answer['files']} files, {answer['rows']} rows written, "
            f"{answer['unchanged']} days unchanged (log position {answer['position']})"
        )
        return True

    async def run() -> bool:
        c = await connect(servers, "meter-cli")
        try:
            done = await asyncio.gather(*(one(c, p) for p in range(c.settings.partitions)))
            return all(done)
        finally:
            await c.close()

    if not asyncio.run(run()):
        raise SystemExit(1)
