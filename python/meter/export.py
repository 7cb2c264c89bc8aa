"""Usage and the billing catalog exported as hive-partitioned Parquet (zstd) for pricing, which never reads RocksDB.

Layout: ``<out>/usage/tenant=<tenant>/meter=<slug>/date=<YYYY-MM-DD>/part-0.parquet``, one row per customer,
minute and combination of the meter's dimensions: ``customer``, one column per dimension, ``window_start``,
``window_end`` (UTC, ``[start, end)``), ``value`` (decimal128(38, 9)) and ``events``. A meter is a directory of
its own because each meter has its own dimensions (and each price charges one meter).

Catalog snapshots: ``<out>/catalog/tenant=<tenant>/{customers,prices,subscriptions}.parquet``. Prices have one row
per plan version and price, with the model's parameters (tiers, package, percentage, matrix) as JSON text; amounts
are decimals, never floats.

Each file is written to a temporary name, fsynced, renamed over the old one, and its directory fsynced: a crash
leaves the old file or the new one, never a torn one. An export rewrites only the days whose usage changed since the
last one (including by late events), with the same rows for the same usage.
Data crosses from Rust as Arrow (PyCapsule stream), without per-row Python objects.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meter.catalog.billing import BillingCatalog
from meter.engine import Engine
from meter.exceptions import InvalidInput

__all__ = ["ExportSummary", "export_catalog", "export_events", "export_usage"]

# The whole range an export looks at for days with usage: [2000-01-01, 2100-01-01).
_FIRST = datetime(2000, 1, 1, tzinfo=timezone.utc)
_LAST = datetime(2100, 1, 1, tzinfo=timezone.utc)
_DAY = timedelta(days=1)
_HOUR = timedelta(hours=1)


class ExportSummary(msgspec.Struct):
    files: int = 0
    rows: int = 0
    #: Days left as they were: nothing counted in them since they were last written.
    unchanged: int = 0


def export_usage(engine: Engine, tenants: list[str], out: Path,
                 progress: Callable[[str], None] | None = None) -> ExportSummary:
    """Writes the days whose usage changed since the last export into `out` (all of them the first time).

    Events are only ever added, so a day changed exactly when its count of events did: `_exported.json` beside each
    tenant's meters keeps, per meter id and day, the count last written. It is written after the files, so a crash
    in between only means writing the same days again. Meters deleted since lose their directory.
    """
    summary = ExportSummary()
    for tenant in tenants:
        base = out / "usage" / f"tenant={tenant}"
        manifest_path = base / "_exported.json"
        exported: dict[str, int] = (msgspec.json.decode(manifest_path.read_bytes(), type=dict[str, int])
                                    if manifest_path.exists() else {})
        written: dict[str, int] = {}
        meters = engine.list_meters(tenant)
        for meter in meters:
            days = engine.usage(tenant, meter.slug, start=_FIRST, end=_LAST, window_size="day").table
            for start, events in zip(days.column("window_start").to_pylist(), days.column("events").to_pylist()):
                day = start.astimezone(timezone.utc)
                key, path = f"{meter.id}/{day:%Y-%m-%d}", base / f"meter={meter.slug}" / f"date={day:%Y-%m-%d}" / "part-0.parquet"
                written[key] = events
                if exported.get(key) == events and path.exists():
                    summary.unchanged += 1
                    continue
                table = _day_of_usage(engine, tenant, meter.slug, [*meter.group_by], day)
                write_atomically(table, path)
                summary.files += 1
                summary.rows += table.num_rows
                if progress:
                    progress(f"{tenant}/{meter.slug}/{day:%Y-%m-%d}: {table.num_rows} rows")
        live = {f"meter={m.slug}" for m in meters}
        for gone in base.glob("meter=*") if base.exists() else ():
            if gone.name not in live:
                shutil.rmtree(gone)
        if written != exported:
            write_file_atomically(msgspec.json.encode(written), manifest_path)
    return summary


def _day_of_usage(engine: Engine, tenant: str, slug: str, dimensions: list[str], day: datetime) -> pa.Table:
    """One day's rows; a day too big for one query (the engine's row limit) is asked for an hour at a time."""

    def rows(start: datetime, end: datetime) -> pa.Table:
        return engine.usage(tenant, slug, start=start, end=end, window_size="minute",
                            group_by=["subject", *dimensions]).table

    try:
        table = rows(day, day + _DAY)
    except InvalidInput as e:
        if e.code != "result_too_large":
            raise
        table = pa.concat_tables([rows(day + h * _HOUR, day + (h + 1) * _HOUR) for h in range(24)])
    return table.rename_columns(["customer" if c == "subject" else c for c in table.column_names])


def export_events(engine: Engine, tenants: list[str], out: Path, page: int = 1_000_000) -> ExportSummary:
    """Appends the raw events committed since the last export: ``events/tenant=<t>/date=<event day>/part-<first
    commit>-<last commit>.parquet``. Retained events never change, so files are only added, never rewritten.

    `_exported.json` keeps the last commit written, after the files; a crash in between leaves files starting at the
    next commit, which the next export removes before writing them again.
    """
    summary = ExportSummary()
    for tenant in tenants:
        base = out / "events" / f"tenant={tenant}"
        manifest_path = base / "_exported.json"
        after = msgspec.json.decode(manifest_path.read_bytes(), type=dict[str, int])["after_seq"] \
            if manifest_path.exists() else 0
        while True:
            table, last = engine.retained_events(tenant, after, page)
            if table.num_rows == 0:
                break
            for leftover in base.glob(f"date=*/part-{after + 1:020d}-*.parquet"):
                leftover.unlink()
            days = pc.strftime(table.column("time"), format="%Y-%m-%d")
            for day in pc.unique(days).to_pylist():
                rows = table.filter(pc.equal(days, day))
                write_atomically(rows, base / f"date={day}" / f"part-{after + 1:020d}-{last:020d}.parquet")
                summary.files += 1
                summary.rows += rows.num_rows
            write_file_atomically(msgspec.json.encode({"after_seq": last}), manifest_path)
            after = last
    return summary


def export_catalog(catalog: BillingCatalog, tenants: list[str], out: Path) -> ExportSummary:
    """Writes a snapshot of what pricing needs from the catalog: customers, prices and subscriptions."""
    summary = ExportSummary()
    for tenant in tenants:
        customers = [msgspec.to_builtins(c) for c in catalog.list_customers(tenant)]
        for c in customers:
            c["address"] = msgspec.json.encode(c["address"]).decode() if c["address"] else None
            c["metadata"] = msgspec.json.encode(c["metadata"]).decode()
        prices = []
        for plan in catalog.list_plans(tenant):
            for version in plan.versions:
                for price in version.prices:
                    row = {"plan": plan.id, "version": version.version, "effective_from": version.effective_from,
                           **{k: getattr(price, k) for k in ("id", "currency", "model", "cadence", "meter", "amount",
                                                             "unit_price", "free_allowance", "minimum", "maximum")}}
                    parameters = {k: getattr(price, k) for k in ("tiers", "package", "percentage", "matrix")
                                  if getattr(price, k) is not None}
                    row["parameters"] = msgspec.json.encode(parameters).decode()
                    prices.append(row)
        subscriptions = []
        for sub in catalog.list_subscriptions(tenant):
            row = {k: getattr(sub, k) for k in ("id", "customer", "plan", "version", "start", "end", "cycle", "anchor")}
            for terms in ("overrides", "commits", "credits"):
                row[terms] = msgspec.json.encode(getattr(sub, terms)).decode()
            subscriptions.append(row)
        for name, rows in (("customers", customers), ("prices", prices), ("subscriptions", subscriptions)):
            write_atomically(pa.Table.from_pylist(rows), out / "catalog" / f"tenant={tenant}" / f"{name}.parquet")
            summary.files += 1
            summary.rows += len(rows)
    return summary


def write_atomically(table: pa.Table, path: Path) -> None:
    """The old file or the new one survives a crash, never a torn one."""
    _replace(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def write_file_atomically(data: bytes, path: Path) -> None:
    _replace(path, lambda tmp: tmp.write_bytes(data))


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    # The temporary name starts with a dot, so Parquet readers skip one a crash leaves behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
