"""The raw events dataset: the long-term record of every accepted event, appended from the engine.

Layout: ``<out>/events/tenant=<tenant>/date=<YYYY-MM-DD>/part-<first commit>-<last commit>.parquet`` (commit
sequence numbers with 20 digits, so that names sort as commits do; ``date`` is the event's UTC day), with the
engine's columns for retained events (``time``, ``type``, ``subject``, ``data``...).

Corrections (``Engine.correct``) never rewrite a file either: a cancelled or amended event's old version stays where
it was written, and ``<out>/corrections/tenant=<tenant>/part-<first commit>-<last commit>.parquet`` lists the
corrections those commits made (:data:`CORRECTION_COLUMNS`: the version each one voids, ``replaced_seq`` and
``replaced_ordinal``, and its replacement, which is an event of the correction's own commit). What counts is every
written event minus the versions voided (:func:`search` applies them).

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

__all__ = ["CORRECTION_COLUMNS", "EVENT_COLUMNS", "Search", "export_events", "find", "scan", "search", "voided"]

#: An event's columns, as the engine keeps them and this export writes them: its commit and place in it (``seq``,
#: ``ordinal``: the order events were accepted in), its identity, and ``data`` as JSON text.
EVENT_COLUMNS = ("seq", "ordinal", "source", "id", "type", "subject", "time", "data")

#: A correction's columns: its commit and time, the event, what was done and why, the version it voided and the one
#: that counts instead (null for a cancel).
CORRECTION_COLUMNS = (
    "seq",
    "at",
    "source",
    "id",
    "action",
    "reason",
    "actor",
    "replaced_seq",
    "replaced_ordinal",
    "replacement_seq",
    "replacement_ordinal",
)


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
            if last == after:  # a commit may hold no event, only corrections (a cancel's): it is written all the same
                break
            for leftover in [
                *layout.events_leftovers(out, tenant, after + 1),
                *layout.corrections_leftover(out, tenant, after + 1),
            ]:
                leftover.unlink()
            # The UTC day of each event (a cast: strftime took 1.2 s per million rows, this 0.03 s).
            days = pc.cast(table.column("time"), pa.date32())
            for day in pc.unique(days).to_pylist():
                assert day is not None, "an event's time is never null"
                rows = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
                write_parquet(rows, layout.events_file(out, tenant, day, after + 1, last))
                summary.files += 1
                summary.rows += rows.num_rows
            corrections = _corrections(engine, tenant, after, last)
            if corrections.num_rows:
                write_parquet(corrections, layout.corrections_file(out, tenant, after + 1, last))
                summary.files += 1
            write_manifest(_Manifest(last), manifest_path)
            engine.events_exported(tenant, last)  # only once the files and the manifest are durable
            after = last
    return summary


def _corrections(engine: Engine, tenant: str, after: int, through: int) -> pa.Table:
    """The corrections of commits ``(after, through]`` as a table of :data:`CORRECTION_COLUMNS`."""
    made = engine.corrections(tenant, after, through)
    replaced, replacements = [c.replaced for c in made], [c.replacement for c in made]
    columns = {
        "seq": pa.array([c.seq for c in made], pa.uint64()),
        "at": pa.array([c.at_us for c in made], pa.int64()).cast(pa.timestamp("us", "UTC")),
        "source": pa.array([c.source for c in made], pa.string()),
        "id": pa.array([c.id for c in made], pa.string()),
        "action": pa.array([c.action for c in made], pa.string()),
        "reason": pa.array([c.reason for c in made], pa.string()),
        "actor": pa.array([c.actor for c in made], pa.string()),
        "replaced_seq": pa.array([r and r.seq for r in replaced], pa.uint64()),
        "replaced_ordinal": pa.array([r and r.ordinal for r in replaced], pa.uint64()),
        "replacement_seq": pa.array([r and r.seq for r in replacements], pa.uint64()),
        "replacement_ordinal": pa.array([r and r.ordinal for r in replacements], pa.uint64()),
    }
    return pa.table(columns)


def voided(engine: Engine, out: Path, tenant: str) -> pl.DataFrame:
    """Every version of the tenant's events that counts no more (``seq``, ``ordinal``), exported or retained.

    A version is voided by the last correction that names it: as the one it replaced (a cancel, an amend), unless a
    later one names it as the one that counts again (a backfill's revert restores it).
    """
    columns = ("seq", "replaced_seq", "replaced_ordinal", "replacement_seq", "replacement_ordinal")
    exported = read_manifest(layout.manifest(layout.events_tenant(out, tenant)), _Manifest, _Manifest(0)).after_seq
    root = layout.corrections_tenant(out, tenant)
    later = pl.from_arrow(_corrections(engine, tenant, exported, 2**64 - 1).select(list(columns)))
    assert isinstance(later, pl.DataFrame)
    frames = [later]
    if any(root.glob("part-*.parquet")):
        written = pl.scan_parquet(root / "*.parquet").filter(pl.col("seq") <= exported).select(columns)
        frames.insert(0, written.collect())
    made = pl.concat(frames)
    names = [
        made.select(
            "seq", pl.col("replaced_seq").alias("v_seq"), pl.col("replaced_ordinal").alias("v_ordinal")
        ).with_columns(counts=pl.lit(False)),
        made.select(
            "seq", pl.col("replacement_seq").alias("v_seq"), pl.col("replacement_ordinal").alias("v_ordinal")
        ).with_columns(counts=pl.lit(True)),
    ]
    last = pl.concat(names).drop_nulls("v_seq").sort("seq", "counts").group_by("v_seq", "v_ordinal").last()
    return last.filter(~pl.col("counts")).select(pl.col("v_seq").alias("seq"), pl.col("v_ordinal").alias("ordinal"))


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
    """The events ``what`` names that count, in commit order after ``after`` (a ``(seq, ordinal)``), at most ``limit``.

    And where the next page starts (None after the last). The commits this export has written are read from it
    (only the days ``what`` covers, less the versions corrections voided), the later ones from the engine's retained
    events: each event once. Without time bounds every day is read.
    """
    seq, ordinal = after
    later = (pl.col("seq") > seq) | ((pl.col("seq") == seq) & (pl.col("ordinal") > ordinal))
    exported = read_manifest(layout.manifest(layout.events_tenant(out, tenant)), _Manifest, _Manifest(0)).after_seq
    found: list[pl.DataFrame] = [pl.DataFrame(schema=_SCHEMA)]
    written = scan(out, tenant) if seq <= exported else None
    if written is not None:  # a crash may leave files past the manifest: those commits are read from the engine
        rows = written.filter(what.days() & (pl.col("seq") <= exported) & later & what.matches())
        rows = rows.join(voided(engine, out, tenant).lazy(), on=["seq", "ordinal"], how="anti")
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
