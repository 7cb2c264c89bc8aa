"""The usage dataset: each meter's per-minute usage, written from the engine and scanned by pricing.

Layout: ``<out>/usage/tenant=<tenant>/meter=<slug>/date=<YYYY-MM-DD>/part-0.parquet`` (:mod:`meter.lake.layout`;
``part-p<n>.parquet``, one per log partition, from a cluster's workers), one row per customer, minute and
combination of the meter's dimensions, ordered by customer then minute: ``customer``, one column per dimension,
``window_start``, ``window_end`` (UTC, ``[start, end)``), ``value`` (decimal128(38, 9)) and ``events``. A meter is a
directory of its own because each meter has its own dimensions (and each price charges one meter). A day is written
while its usage changes, long before the engine rolls its minutes up to hours (``minute_aggregates``); a day exported
for the first time after that (a new export directory) has one row per hour (or UTC day), as ``window_end`` says.
The rows cross from Rust as Arrow (PyCapsule stream), without per-row Python objects.

Invariants:

- Incremental and idempotent: an export rewrites only the days whose usage changed since the last one (including by
  late events), with the same rows for the same usage. Events are only ever added, so a day changed exactly when its
  count of events did: the tenant's manifest keeps, per meter id and day, the count last written (after the files:
  a crash in between only means writing the same days again). Meters deleted since lose their directory.
- Every file is replaced atomically (:mod:`meter.lake.files`).

Write: :func:`export_usage`. Read: :func:`scan` (one meter, lazily, with ``date`` as a hive partition so that a
period's scan opens only its days), :data:`COLUMNS` (the columns besides the dimensions).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from meter.engine import Engine
from meter.lake import layout
from meter.lake.files import ExportSummary, read_manifest, write_manifest, write_parquet

__all__ = ["COLUMNS", "export_usage", "scan"]

#: The columns of a meter's scan besides its dimensions; ``date`` is the hive partition.
COLUMNS = ("customer", "window_start", "window_end", "value", "events", "date")

_DAY = timedelta(days=1)
#: Consecutive days read from the engine in one pass (the memory of one pass: its rows, as Arrow).
_DAYS_PER_READ = 8


def export_usage(
    engine: Engine,
    tenants: list[str],
    out: Path,
    progress: Callable[[str], None] | None = None,
    log_partition: int | None = None,
) -> ExportSummary:
    """Writes the days whose usage changed since the last export into `out` (all of them the first time).

    Events are only ever added, so a day changed exactly when its count of events did: `_exported.json` beside each
    tenant's meters keeps, per meter id and day, the count last written. It is written after the files, so a crash
    in between only means writing the same days again. Meters deleted since lose their directory.

    With ``log_partition`` (a cluster's worker, whose engine holds one partition of the log), the engine's files and
    manifest are that partition's own (``part-p<n>``, ``_exported-p<n>.json``) beside the other partitions' in the
    same directories, and a deleted meter loses only this partition's files: a partition that has not yet applied the
    meter's creation must not remove what the others wrote. Every partition applies the same log of meters, so the
    meters' ids agree. ``progress`` is called after each file; raising from it stops the export before the manifest.
    """
    summary = ExportSummary()
    for tenant in tenants:
        manifest_path = layout.manifest(layout.usage_tenant(out, tenant), log_partition)
        exported = read_manifest(manifest_path, dict[str, int], {})
        written: dict[str, int] = {}
        meters = engine.list_meters(tenant)
        for meter in meters:
            changed: list[tuple[datetime, Path]] = []
            for day, events in engine.day_counts(tenant, meter.slug).items():
                key = f"{meter.id}/{day:%Y-%m-%d}"
                path = layout.usage_day_file(out, tenant, meter.slug, day, log_partition)
                # The count read here may be older than the rows written next, never newer: at worst the next
                # export writes the day again.
                written[key] = events
                if exported.get(key) == events and path.exists():
                    summary.unchanged += 1
                    continue
                changed.append((day, path))
            for day, _, rows in _write_days(engine, tenant, meter.slug, changed):
                summary.files += 1
                summary.rows += rows
                if progress:
                    progress(f"{tenant}/{meter.slug}/{day:%Y-%m-%d}: {rows} rows")
        live = {m.slug for m in meters}
        for slug, gone in layout.usage_meter_dirs(out, tenant).items():
            if slug in live:
                continue
            if log_partition is None:
                shutil.rmtree(gone)
            else:
                for own in gone.glob(f"date=*/{layout.usage_part(log_partition)}"):
                    own.unlink(missing_ok=True)
        if written != exported:
            write_manifest(written, manifest_path)
    return summary


def _write_days(
    engine: Engine, tenant: str, meter: str, days: list[tuple[datetime, Path]]
) -> Iterator[tuple[datetime, Path, int]]:
    """Writes each day's file; consecutive days come from one read of the engine.

    The engine keeps a meter's rows by customer then minute, so that reading one day costs a pass over them all.
    """
    runs: list[list[tuple[datetime, Path]]] = []
    for day, path in sorted(days, key=lambda d: d[0]):
        if runs and runs[-1][-1][0] + _DAY == day and len(runs[-1]) < _DAYS_PER_READ:
            runs[-1].append((day, path))
        else:
            runs.append([(day, path)])
    for run in runs:
        if len(run) == 1:
            day, path = run[0]
            yield day, path, write_parquet(engine.minutes(tenant, meter, start=day, end=day + _DAY), path)
            continue
        table = engine.minutes(tenant, meter, start=run[0][0], end=run[-1][0] + _DAY).read_all()
        starts = table.column("window_start")
        for day, path in run:
            # Filtering keeps the engine's order (customer, then minute), as a read of the day alone gives it.
            inside = pc.and_(
                pc.greater_equal(starts, pa.scalar(day, starts.type)),
                pc.less(starts, pa.scalar(day + _DAY, starts.type)),
            )
            yield day, path, write_parquet(table.filter(inside), path)


def scan(out: Path, tenant: str, meter: str) -> pl.LazyFrame | None:
    """A meter's exported usage, lazily: :data:`COLUMNS` and its dimensions; None when none was ever exported.

    ``date`` (the UTC day, a hive partition) prunes the files a filter on it does not need. A dimension missing from
    some days' files (added to the meter since) reads as null there.
    """
    directory = layout.usage_meter(out, tenant, meter)
    if not directory.is_dir() or not any(True for _ in directory.glob("date=*/[!._]*.parquet")):
        return None
    return pl.scan_parquet(
        directory,
        hive_partitioning=True,
        hive_schema={"date": pl.Date()},
        hidden_file_prefix=list(layout.HIDDEN_PREFIXES),
        missing_columns="insert",
    )
