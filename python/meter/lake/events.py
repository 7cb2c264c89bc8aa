"""The raw events dataset: the long-term record of every accepted event, appended from the engine.

Layout: ``<out>/events/tenant=<tenant>/date=<YYYY-MM-DD>/part-<first commit>-<last commit>.parquet`` (commit
sequence numbers with 20 digits, so that names sort as commits do; ``date`` is the event's UTC day), with the
engine's columns for retained events (``time``, ``type``, ``subject``, ``data``...).

Invariants:

- Append only: retained events never change, so files are only added, never rewritten. The tenant's manifest
  (``{"after_seq": n}``) keeps the last commit written, after the files; a crash in between leaves files starting at
  the next commit, which the next export removes before writing them again.
- This export *is* the record: the engine drops a tenant's retained events (past retention) only once it has been
  told they are written here (``Engine.events_exported``), and it is told only once the files and the manifest are
  durable (:mod:`meter.lake.files`). A tenant never exported keeps them all.

Write: :func:`export_events`. Read: :func:`scan` (a tenant's events, lazily, ``date`` as a hive partition).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from meter.engine import Engine
from meter.exceptions import InvalidInput
from meter.lake import layout
from meter.lake.files import ExportSummary, read_manifest, write_manifest, write_parquet

__all__ = ["export_events", "scan"]


class _Manifest(msgspec.Struct):
    after_seq: int


def export_events(engine: Engine, tenants: list[str], out: Path, page: int = 1_000_000) -> ExportSummary:
    """Appends the raw events committed since the last export, ``page`` events per read of the engine.

    Then the engine learns it (``Engine.events_exported``): this export is the long-term record, and retention drops
    a tenant's retained events only once they are written here (and older than ``retention``).
    """
    summary = ExportSummary()
    for tenant in tenants:
        manifest_path = layout.manifest(layout.events_tenant(out, tenant))
        after = read_manifest(manifest_path, _Manifest, _Manifest(0)).after_seq
        if after:
            # Said again: the engine keeps the mark without syncing it, so a crash may have lost it.
            try:
                engine.events_exported(tenant, after)
            except InvalidInput:
                pass  # a manifest beyond the engine's last commit is another data directory's: nothing to say
        while True:
            table, last = engine.retained_events(tenant, after, page)
            if table.num_rows == 0:
                break
            for leftover in layout.events_leftovers(out, tenant, after + 1):
                leftover.unlink()
            # The UTC day of each event (a cast: strftime took 1.2 s per million rows, this 0.03 s).
            days = pc.cast(table.column("time"), pa.date32())
            for day in pc.unique(days).to_pylist():
                assert day is not None, "an event's time is never null"
                rows = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
                write_parquet(rows, layout.events_file(out, tenant, day, after + 1, last))
                summary.files += 1
                summary.rows += rows.num_rows
            write_manifest(_Manifest(last), manifest_path)
            engine.events_exported(tenant, last)  # only once the files and the manifest are durable
            after = last
    return summary


def scan(out: Path, tenant: str) -> pl.LazyFrame | None:
    """A tenant's exported raw events, lazily, with ``date`` (the UTC day); None when none were ever exported."""
    root = layout.events_tenant(out, tenant)
    if not any(root.glob("date=*/[!._]*.parquet")):
        return None
    return pl.scan_parquet(
        root, hive_partitioning=True, hive_schema={"date": pl.Date()}, hidden_file_prefix=list(layout.HIDDEN_PREFIXES)
    )
