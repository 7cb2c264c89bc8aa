"""Usage and the billing catalog exported as hive-partitioned Parquet (zstd) for pricing, which never reads RocksDB.

Layout: ``<out>/usage/tenant=<tenant>/meter=<slug>/date=<YYYY-MM-DD>/part-0.parquet``, one row per customer,
minute and combination of the meter's dimensions: ``customer``, one column per dimension, ``window_start``,
``window_end`` (UTC, ``[start, end)``), ``value`` (decimal128(38, 9)) and ``events``. A meter is a directory of
its own because each meter has its own dimensions (and each price charges one meter).

Catalog snapshots: ``<out>/catalog/tenant=<tenant>/{customers,prices,subscriptions}.parquet``. Prices have one row
per plan version and price, with the model's parameters (tiers, package, percentage, matrix) as JSON text; amounts
are decimals, never floats.

Each file is written to a temporary name, fsynced, renamed over the old one, and its directory fsynced: a crash
leaves the old file or the new one, never a torn one. Exporting again rewrites the same files with the same rows.
Data crosses from Rust as Arrow (PyCapsule stream), without per-row Python objects.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from meter.catalog.billing import BillingCatalog
from meter.engine import Engine

__all__ = ["ExportSummary", "export_catalog", "export_usage"]

# The whole range an export looks at for days with usage: [2000-01-01, 2100-01-01).
_FIRST = datetime(2000, 1, 1, tzinfo=timezone.utc)
_LAST = datetime(2100, 1, 1, tzinfo=timezone.utc)
_DAY = timedelta(days=1)


class ExportSummary(msgspec.Struct):
    files: int = 0
    rows: int = 0


def export_usage(engine: Engine, tenants: list[str], out: Path,
                 progress: Callable[[str], None] | None = None) -> ExportSummary:
    """Writes every day with usage of every meter of `tenants`; returns how many files and rows it wrote."""
    summary = ExportSummary()
    for tenant in tenants:
        for meter in engine.list_meters(tenant):
            days = engine.usage(tenant, meter.slug, start=_FIRST, end=_LAST, window_size="day").table
            for start in days.column("window_start").to_pylist():
                day = start.astimezone(timezone.utc)
                table = engine.usage(tenant, meter.slug, start=day, end=day + _DAY, window_size="minute",
                                     group_by=["subject", *meter.group_by]).table
                table = table.rename_columns(["customer" if c == "subject" else c for c in table.column_names])
                path = (out / "usage" / f"tenant={tenant}" / f"meter={meter.slug}" / f"date={day:%Y-%m-%d}"
                        / "part-0.parquet")
                write_atomically(table, path)
                summary.files += 1
                summary.rows += table.num_rows
                if progress:
                    progress(f"{tenant}/{meter.slug}/{day:%Y-%m-%d}: {table.num_rows} rows")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
