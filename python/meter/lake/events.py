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

Write: :func:`export_events`. Read: :func:`scan` (a tenant's events, lazily, ``date`` as a hive partition), and
:func:`search`: the events of a query in commit order, from this export and, for the commits it has not written yet,
from the engine's retained events (so that an event is found as soon as it is acknowledged, and found once); and
:func:`find`, one event by its identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from meter.engine import Engine
from meter.exceptions import InvalidInput
from meter.lake import layout
from meter.lake.files import ExportSummary, read_manifest, write_manifest, write_parquet

__all__ = ["EVENT_COLUMNS", "Search", "export_events", "find", "scan", "search"]

#: An event's columns, as the engine keeps them and this export writes them: its commit and place in it (``seq``,
#: ``ordinal``: the order events were accepted in), its identity, and ``data`` as JSON text.
EVENT_COLUMNS = ("seq", "ordinal", "source", "id", "type", "subject", "time", "data")


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


@dataclass(frozen=True)
class Search:
    """Which events: each field narrows (an empty list, or None, does not). ``[start, end)`` is event time."""

    subjects: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    source: str | None = None
    id: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    def matches(self) -> pl.Expr:
        """The rows this search keeps."""
        keep = pl.lit(True)
        for column, values in (("subject", self.subjects), ("type", self.types)):
            if values:
                keep &= pl.col(column).is_in(pl.Series(list(values), dtype=pl.String()))
        for column, value in (("source", self.source), ("id", self.id)):
            if value is not None:
                keep &= pl.col(column) == value
        if self.start is not None:
            keep &= pl.col("time") >= self.start
        if self.end is not None:
            keep &= pl.col("time") < self.end
        return keep

    def days(self) -> pl.Expr:
        """The export's ``date`` partitions this search reads (its time bounds, as UTC days)."""
        keep = pl.lit(True)
        if self.start is not None:
            keep &= pl.col("date") >= self.start.date()
        if self.end is not None:
            keep &= pl.col("date") <= (self.end - timedelta(microseconds=1)).date()
        return keep


def search(
    engine: Engine, out: Path, tenant: str, what: Search, after: tuple[int, int] = (0, -1), limit: int = 100
) -> tuple[pl.DataFrame, tuple[int, int] | None]:
    """The events ``what`` names, in commit order after ``after`` (a ``(seq, ordinal)``), at most ``limit``.

    And where the next page starts (None after the last). The commits this export has written are read from it
    (only the days ``what`` covers), the later ones from the engine's retained events: each event once. Without
    time bounds every day is read.
    """
    seq, ordinal = after
    later = (pl.col("seq") > seq) | ((pl.col("seq") == seq) & (pl.col("ordinal") > ordinal))
    exported = read_manifest(layout.manifest(layout.events_tenant(out, tenant)), _Manifest, _Manifest(0)).after_seq
    found: list[pl.DataFrame] = [pl.DataFrame(schema=_SCHEMA)]
    written = scan(out, tenant) if seq <= exported else None
    if written is not None:  # a crash may leave files past the manifest: those commits are read from the engine
        rows = written.filter(what.days() & (pl.col("seq") <= exported) & later & what.matches())
        found.append(rows.select(EVENT_COLUMNS).sort("seq", "ordinal").head(limit + 1).collect().cast(_SCHEMA))
    cursor = max(exported, seq - 1)  # from the commit after the export's last (or the page's own)
    while sum(f.height for f in found) <= limit:
        table, last = engine.retained_events(tenant, cursor, _PAGE)
        if table.num_rows == 0:
            break
        page = pl.from_arrow(table)
        assert isinstance(page, pl.DataFrame)
        found.append(page.filter(later & what.matches()).select(EVENT_COLUMNS).cast(_SCHEMA))
        cursor = last
    events = pl.concat(found).head(limit + 1)
    if events.height <= limit:
        return events, None
    events = events.head(limit)
    return events, (int(events["seq"][-1]), int(events["ordinal"][-1]))


def find(engine: Engine, out: Path, tenant: str, source: str, id_: str) -> tuple[pl.DataFrame, datetime | None]:
    """The event of identity ``(source, id_)`` (zero or one row, as :func:`search` gives them), and its receipt.

    Through the engine's dedup mark first: it reads only the commits received around the event's receipt, so an event
    of the dedup window costs the same in any history, and gives its receive time. Else a search of every exported
    day and retained commit.
    """
    found, received = engine.find_event(tenant, source, id_)
    if found.num_rows:
        frame = pl.from_arrow(found)
        assert isinstance(frame, pl.DataFrame)
        return frame.select(EVENT_COLUMNS).cast(_SCHEMA), received
    events, _ = search(engine, out, tenant, Search(source=source, id=id_), limit=1)
    return events, None


#: Retained events read from the engine per call while searching.
_PAGE = 100_000
_SCHEMA = pl.Schema(
    {
        "seq": pl.UInt64(),
        "ordinal": pl.UInt64(),
        "source": pl.String(),
        "id": pl.String(),
        "type": pl.String(),
        "subject": pl.String(),
        "time": pl.Datetime("us", "UTC"),
        "data": pl.String(),
    }
)
