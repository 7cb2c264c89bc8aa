"""``meter.Engine``: the typed Python face of the Rust metering core.

Every call that does real work runs in Rust with the GIL released. Results come back as msgspec Structs,
or, for usage, as an Arrow table that goes to pyarrow or polars without copying.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, NamedTuple

import msgspec
import pyarrow as pa

from meter import _core
from meter.exceptions import InvalidInput
from meter.schemas import (
    CancelEvent,
    Correction,
    CorrectionRequest,
    CorrectionResult,
    CreatedMeter,
    IngestResult,
    MaintenanceReport,
    Meter,
    MeterSpec,
    SkippedPage,
    Stats,
)

__all__ = ["Engine", "LogEntry", "Usage", "WindowSize", "event_values", "finish_usage"]

WindowSize = Literal["minute", "hour", "day", "month"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(t: datetime, name: str = "time") -> int:
    """Microseconds since the epoch of an aware datetime (naive ones are refused: meter's time is explicit UTC)."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (for example datetime(..., tzinfo=timezone.utc)); got {t!r}")
    return (t - _EPOCH) // _MICROSECOND


def event_values(spec: MeterSpec, data: pa.Array[Any]) -> pa.Array[Any]:
    """The value the meter ``spec`` extracts from each event's ``data`` (JSON text), null where it counts none.

    The engine's own extraction (filters and value path, in Rust), so that a reader of the raw events export
    (billing's per-event percentages) counts exactly the events the meter's usage counts.
    """
    values: pa.Array[Any] = pa.array(_core.event_values(msgspec.json.encode(spec), data))
    return values


def _seconds(d: timedelta) -> int:
    return int(d.total_seconds())


class LogEntry(NamedTuple):
    """One entry of a replicated log, as ``Engine.apply`` takes it."""

    seq: int
    tenant: str
    #: When the edge received it (µs since the epoch, UTC): the clock the engine decides the entry by.
    received_us: int
    op: Literal["ingest", "create_meter", "delete_meter"]
    #: The events (a JSON array), the meter spec's JSON, or the slug to delete.
    body: bytes
    atomic: bool = False
    #: For an ingest that is part of a request: each event's index in the request (the outcome names them so).
    indexes: Sequence[int] = ()


def finish_usage(partials: Sequence[bytes]) -> Usage:
    """Merges partitions' answers to one usage query (``Engine.usage_partial``) into its result."""
    return Usage(pa.table(_core.finish_usage(list(partials))))


def _query_args(
    start: datetime,
    end: datetime,
    window_size: WindowSize | None,
    tz: str | None,
    subjects: Iterable[str],
    group_by: Iterable[str],
    filters: Mapping[str, str | Sequence[str]] | None,
) -> dict[str, Any]:
    """A usage query's arguments as the core takes them."""
    return {
        "from_us": to_micros(start, "start"),
        "to_us": to_micros(end, "end"),
        "window_size": window_size,
        "tz": tz,
        "subjects": list(subjects),
        "group_by": list(group_by),
        "filters": [(k, [v] if isinstance(v, str) else list(v)) for k, v in (filters or {}).items()],
    }


class Usage:
    """The result of a usage query: one row per window and group, values as exact decimals."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        # pyarrow-stubs leaves Table.__arrow_c_stream__ unannotated (it returns a PyCapsule).
        return self.table.__arrow_c_stream__(requested_schema)  # type: ignore[no-untyped-call]

    def __len__(self) -> int:
        return self.table.num_rows

    def rows(self) -> list[dict[str, Any]]:
        """Rows as dicts; ``value`` is a ``decimal.Decimal`` with 9 decimal places, never a float."""
        return self.table.to_pylist()

    def total(self) -> Decimal:
        """The sum of ``value`` over all rows (meaningful for sum and count meters)."""
        return sum((row["value"] for row in self.rows()), Decimal(0))

    def json_rows(self) -> bytes:
        """The rows as a JSON array of objects, encoded by the engine column by column.

        No Python object is built per row. Times are ISO 8601 (``2026-11-23T10:00:00+00:00``), ``value`` a plain
        decimal string (``"1200"``, ``"2.5"``; no exponent), dimensions strings or null, ``events`` a number.
        """
        return _core.usage_json(self.table)


class Engine:
    """One metering engine over one data directory. Open it once per process; close it (or use ``with``).

    What is kept, and for how long (see the README, "What is kept where, and for how long"):

    - ``retention``: retained (raw) events are dropped once received longer ago than this *and* written to Parquet by
      the export (``meter.lake.events.export_events`` tells the engine, ``events_exported``); a tenant never exported
      keeps them all. Default: ``backdate_window`` plus 31 days (66 days).
    - ``minute_aggregates``: aggregates older than this (by event time) are rolled up from minutes to hours; at least
      ``backdate_window``, so that no accepted event lands in a rolled-up range. Default: ``backdate_window`` plus 5
      days (40 days).
    - ``hour_aggregates``: hours older than this are rolled up to UTC days, kept for good. Default 400 days.
    - ``maintenance_interval``: how often a background thread applies them, in small steps (None: only when
      ``maintain`` is called).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Literal["fsync", "buffered"] = "fsync",
        dedup_window: timedelta = timedelta(days=35),
        backdate_window: timedelta = timedelta(days=35),
        max_future: timedelta = timedelta(minutes=5),
        queue_capacity: int = 64,
        max_batch_events: int = 10_000,
        cache_mb: int = 512,
        recent_dedup: timedelta = timedelta(seconds=60),
        retention: timedelta | None = None,
        minute_aggregates: timedelta | None = None,
        hour_aggregates: timedelta | None = None,
        maintenance_interval: timedelta | None = timedelta(minutes=1),
        max_combinations_per_minute: int = 1_000,
        max_customers_per_minute: int = 100_000,
        max_pending_changes: int = 1_000_000,
    ) -> None:
        """Opens (or creates) the engine's store at ``path``.

        ``cache_mb`` bounds RocksDB's block cache, where the dedup filters live (about 1 byte per identity in the
        dedup window keeps them all in memory); ``recent_dedup`` is how long identities stay in memory for quick
        retries (at most a million of them). Memory does not grow with the identities kept: see the README.

        ``max_combinations_per_minute`` (distinct dimension combinations of one customer in one minute of a meter) and
        ``max_customers_per_minute`` (distinct customers in one minute of a meter) are the cardinality limits of every
        meter that does not set its own (``MeterSpec.limits``); an event past one is refused with
        ``cardinality_limit``.

        ``max_pending_changes`` bounds what waits for ``changes`` (distinct tenant, meter and customer keys); past it
        the next ``changes`` says ``overflowed``.
        """
        for name, value in (
            ("max_combinations_per_minute", max_combinations_per_minute),
            ("max_customers_per_minute", max_customers_per_minute),
        ):
            if not 1 <= value < 2**32:  # the engine checks the upper bound, with its message
                raise InvalidInput(f"{name} must be a positive whole number; got {value}", "invalid_config")
        if max_pending_changes < 1:
            raise InvalidInput(
                f"max_pending_changes must be a positive whole number; got {max_pending_changes}", "invalid_config"
            )
        #: How far ahead of the clock an event's time may be: no event acknowledged from now on is later than
        #: now + this.
        self.max_future = max_future
        self._inner = _core.Engine(
            os.fspath(path),
            durability=durability,
            dedup_window_s=_seconds(dedup_window),
            backdate_window_s=_seconds(backdate_window),
            max_future_s=_seconds(max_future),
            queue_capacity=queue_capacity,
            max_batch_events=max_batch_events,
            cache_mb=cache_mb,
            recent_dedup_s=_seconds(recent_dedup),
            retention_s=None if retention is None else _seconds(retention),
            minute_aggregates_s=None if minute_aggregates is None else _seconds(minute_aggregates),
            hour_aggregates_s=None if hour_aggregates is None else _seconds(hour_aggregates),
            maintenance_interval_s=None if maintenance_interval is None else maintenance_interval.total_seconds(),
            max_combinations_per_minute=max_combinations_per_minute,
            max_customers_per_minute=max_customers_per_minute,
            max_pending_changes=max_pending_changes,
        )

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ingest(self, tenant: str, body: bytes, *, atomic: bool = False, now: datetime | None = None) -> IngestResult:
        """Counts a batch (a JSON array of CloudEvents, or one event) exactly once; durable when this returns.

        Invalid events are listed in ``issues`` by index while the valid ones are applied; with ``atomic`` any
        invalid event rejects the whole batch (``BatchRejected``). An accepted event that some meter cannot read (its
        value missing or malformed, say) is counted by the other meters of its type and listed in ``warnings`` once
        per meter that skipped it: never a rejection. ``now`` overrides the clock, for tests and replays.

        Raises ``OutcomeUnknown`` when the write carrying the batch failed (it may be applied after a restart:
        retry with the same ids) and ``StoreFailed`` when the store had failed before (not applied).
        """
        now_us = None if now is None else to_micros(now, "now")
        return msgspec.json.decode(self._inner.ingest(tenant, body, atomic=atomic, now_us=now_us), type=IngestResult)

    def correct(
        self, tenant: str, request: CorrectionRequest, *, actor: str, now: datetime | None = None
    ) -> CorrectionResult:
        """Cancels or amends accepted events and restates every aggregate they touched, in one durable commit.

        All or nothing: any item that cannot be applied refuses the whole request (``BatchRejected``, issues by
        index). Idempotent by state: an event already cancelled, or already with that payload, is ``unchanged``.
        ``actor`` (who asked) and ``request.reason`` are kept in each event's history (:meth:`event_history`).
        """
        items: list[dict[str, Any]] = [
            {"cancel": {"source": i.source, "id": i.id}} if isinstance(i, CancelEvent) else {"amend": i.event}
            for i in request.items
        ]
        return self.correct_items(tenant, items, reason=request.reason, actor=actor, now=now)

    def correct_items(
        self, tenant: str, items: list[dict[str, Any]], *, reason: str, actor: str, now: datetime | None = None
    ) -> CorrectionResult:
        """:meth:`correct` with the engine's own items, a backfill's among them (``meter.backfills``).

        Besides ``{"cancel": {"source", "id"}}`` and ``{"amend": event}``: ``{"put": event}`` (amends the event of its
        identity, or adds it as a new one), ``{"replace": {"subject", "event_type", "from_us", "to_us"}}`` (cancels
        every event counted in that range that no other item names) and ``{"restore": {"source", "id", "seq",
        "ordinal"}}`` (brings back a version a correction voided).
        """
        body = msgspec.json.encode({"reason": reason, "actor": actor, "items": items})
        now_us = None if now is None else to_micros(now, "now")
        return msgspec.json.decode(self._inner.correct(tenant, body, now_us=now_us), type=CorrectionResult)

    def event_history(self, tenant: str, source: str, id: str) -> list[Correction]:
        """The corrections of the event ``(source, id)``, oldest first (empty when it was never corrected)."""
        return msgspec.json.decode(self._inner.event_history(tenant, source, id), type=list[Correction])

    def corrections(self, tenant: str, after_seq: int, through_seq: int) -> list[Correction]:
        """The tenant's corrections made by the commits ``(after_seq, through_seq]``, in commit order."""
        return msgspec.json.decode(self._inner.corrections(tenant, after_seq, through_seq), type=list[Correction])

    def create_meter(self, tenant: str, spec: MeterSpec | Mapping[str, Any]) -> CreatedMeter:
        """Creates a meter and backfills it from the events already retained.

        The backfill covers the retained events only: those received within ``retention``, plus older ones the
        export has not written yet. Older usage is in the Parquet export of raw events, not in the new meter.
        """
        if not isinstance(spec, MeterSpec):
            spec = msgspec.convert(spec, MeterSpec)
        raw = self._inner.create_meter(tenant, msgspec.json.encode(spec))
        return msgspec.json.decode(raw, type=CreatedMeter)

    def get_meter(self, tenant: str, slug: str) -> Meter:
        return msgspec.json.decode(self._inner.get_meter(tenant, slug), type=Meter)

    def list_meters(self, tenant: str) -> list[Meter]:
        return msgspec.json.decode(self._inner.list_meters(tenant), type=list[Meter])

    def delete_meter(self, tenant: str, slug: str) -> None:
        self._inner.delete_meter(tenant, slug)

    def usage(
        self,
        tenant: str,
        meter: str,
        *,
        start: datetime,
        end: datetime,
        window_size: WindowSize | None = None,
        subjects: Iterable[str] = (),
        group_by: Iterable[str] = (),
        filters: Mapping[str, str | Sequence[str]] | None = None,
        tz: str | None = None,
    ) -> Usage:
        """Usage of ``meter`` over ``[start, end)``, in windows of ``window_size`` (whole range when None).

        ``group_by`` takes dimension names and ``subject``; ``filters`` maps a dimension to accepted values;
        ``tz`` (IANA name) sets where day and month windows begin.

        Usage older than ``minute_aggregates`` is kept per hour, and older than ``hour_aggregates`` per UTC day: a
        query whose windows (or bounds, or time zone offset) are finer than that there raises ``InvalidInput`` with
        code ``resolution_unavailable``, naming from when and the finest windows it can answer.
        """
        table = self._inner.query(
            tenant, meter, **_query_args(start, end, window_size, tz, subjects, group_by, filters)
        )
        return Usage(pa.table(table))

    def usage_partial(
        self,
        tenant: str,
        meter: str,
        *,
        start: datetime,
        end: datetime,
        window_size: WindowSize | None = None,
        subjects: Iterable[str] = (),
        group_by: Iterable[str] = (),
        filters: Mapping[str, str | Sequence[str]] | None = None,
        tz: str | None = None,
    ) -> bytes:
        """``usage``'s answer before its values are taken: what one partition answers in cluster mode.

        ``finish_usage`` merges the partitions' answers exactly (states merged, distinct values unioned) and takes
        the values, giving the table ``usage`` gives over all of them.
        """
        return self._inner.query_partial(
            tenant, meter, **_query_args(start, end, window_size, tz, subjects, group_by, filters)
        )

    def apply(self, log: str, entries: Sequence[LogEntry], *, forget_before: int = 0) -> list[bytes]:
        """Applies log entries in log order, durably, with the last position and each outcome in the same writes.

        Cluster mode: a worker applying its partition. Returns each outcome as JSON bytes, ``{"tenant", "ok": ...}``
        (an ingest report, a created meter, null) or ``{"tenant", "error": {"code", "message", "issues"?}}``.

        Outcomes of entries before ``forget_before`` are dropped in the same write. Raises only when the store
        fails: then nothing of the call is acknowledged, and the log is replayed from ``log_position``.
        """
        return self._inner.apply(
            log,
            [(e.seq, e.tenant, e.received_us, e.op, e.body, e.atomic, list(e.indexes)) for e in entries],
            forget_before,
        )

    def log_position(self, log: str) -> int:
        """The position of the last entry of ``log`` applied (0 when none)."""
        return self._inner.log_position(log)

    def log_outcome(self, log: str, seq: int) -> bytes | None:
        """The stored outcome of ``log``'s entry at ``seq``; None when it was not applied or is no longer kept."""
        return self._inner.log_outcome(log, seq)

    def checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Writes a consistent copy of the store (with its log positions) to ``path``, which must not exist."""
        self._inner.checkpoint(os.fspath(path))

    def changes(self) -> tuple[pa.Table, bool]:
        """Takes which customers' usage changed since the previous call: a table and whether some were dropped.

        One row per (``tenant``, ``meter`` slug, ``customer``) with events that meter counted since the previous call:
        ``earliest`` (the start of the earliest event-time minute among them, UTC) and ``events`` (how many), in no
        particular order. Cheap: the engine notes them as it aggregates, and this swaps them out.

        The guarantee: an event whose ``ingest`` returned before this call is in this drain or an earlier one (the
        call first waits, briefly, for the fold threads to record the commits acknowledged before it), and a ``usage``
        query started after the drain that names it counts it. So re-querying the customers named here never misses an
        acknowledged event, and a view refreshed from a drain reflects everything acknowledged before the drain.

        Not reported: the events a new meter is backfilled from at ``create_meter``, events acknowledged before this
        engine was opened (load with ``usage`` after opening, then call this), and a deleted meter's events.

        At most ``max_pending_changes`` keys wait; past that, the next call returns no rows and ``overflowed=True``:
        refresh every customer then.
        """
        table, overflowed = self._inner.changes()
        return pa.table(table), overflowed

    def day_counts(self, tenant: str, meter: str) -> dict[datetime, int]:
        """Per UTC day with usage of ``meter`` (its midnight): the events counted in it.

        Includes every event acknowledged before the call. One pass over the meter's stored minutes.
        """
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        return {epoch + timedelta(microseconds=day): n for day, n in self._inner.day_counts(tenant, meter)}

    def minutes(
        self, tenant: str, meter: str, *, start: datetime, end: datetime, batch_rows: int = 1 << 20
    ) -> pa.RecordBatchReader:
        """The stored rows of ``meter`` in ``[start, end)``, as an Arrow stream.

        One row per customer, minute and dimension combination, ordered by customer then minute; a thread of the engine
        produces the stream while the caller consumes it. Columns: ``customer``, one per dimension, ``window_start``,
        ``window_end``, ``value``, ``events``. Every event acknowledged before the call is in it. Where aggregates were
        rolled up (``minute_aggregates``, ``hour_aggregates``) a row is an hour or a UTC day: ``window_end`` says which.
        """
        stream = self._inner.minutes(
            tenant, meter, to_micros(start, "start"), to_micros(end, "end"), batch_rows=batch_rows
        )
        return pa.RecordBatchReader.from_stream(stream)

    def retained_events(self, tenant: str, after_seq: int = 0, max_events: int = 1_000_000) -> tuple[pa.Table, int]:
        """The tenant's raw events of the commits after ``after_seq``, with the last commit they come from.

        Whole commits, about ``max_events``: page through them by passing that commit back. Only retained events: those
        retention dropped (exported, and past ``retention``) are in the Parquet export.
        """
        table, last_seq = self._inner.retained_events(tenant, after_seq, max_events)
        return pa.table(table), last_seq

    def find_event(self, tenant: str, source: str, id: str) -> tuple[pa.Table, datetime | None]:
        """The version of the event ``(source, id)`` that counts now (0 or 1 row, as :meth:`retained_events`).

        The second value is when that version was received (or amended). Found through its history or its dedup mark,
        reading only the commits around then, else by a scan of the retained events. Nothing (and ``None``) for a
        cancelled event or one no longer retained: look in the Parquet export then.
        """
        table, received_us = self._inner.find_event(tenant, source, id)
        received = None if received_us is None else _EPOCH + timedelta(microseconds=received_us)
        return pa.table(table), received

    def skipped(
        self,
        tenant: str,
        meter: str,
        *,
        start: datetime,
        end: datetime,
        after: str | int | None = None,
        limit: int = 100,
        max_scan: int | None = None,
    ) -> SkippedPage:
        """The events of ``[start, end)`` (event time) that ``meter`` could not read, with why.

        Decided as ingest, replay and backfill decide. Reads the tenant's retained events in the order they were
        accepted, from ``after`` (the ``next`` of the previous page), and stops at ``limit`` events (at most 1000) or
        after ``max_scan`` retained events read (default a million, about a second); page until ``next`` is None.
        """
        if isinstance(after, str):
            after = int(after) if after.isascii() and after.isdigit() else -1
        if after is not None and not 0 <= after < 2**64:
            raise InvalidInput("'after' must be the 'next' of a previous page", "invalid_query")
        if not 1 <= limit <= 1000:
            raise InvalidInput(f"'limit' must be 1-1000; got {limit}", "invalid_query")
        options: dict[str, Any] = {"after": after, "limit": limit}
        if max_scan is not None:
            options["max_scan"] = max(1, max_scan)
        raw = self._inner.skipped(tenant, meter, to_micros(start, "start"), to_micros(end, "end"), **options)
        return msgspec.json.decode(raw, type=SkippedPage)

    def events_exported(self, tenant: str, seq: int) -> None:
        """Tells the engine the export wrote the tenant's retained events through commit ``seq`` to Parquet.

        The export is the long-term record: retention may then drop them once they are older than ``retention``.
        Raising only: a call with a lower ``seq`` (an export behind another) changes nothing.
        """
        self._inner.events_exported(tenant, seq)

    def maintain(self, *, now: datetime | None = None, max_steps: int | None = None) -> MaintenanceReport:
        """Applies retention and roll-ups now, as the background thread does every ``maintenance_interval``.

        ``now`` overrides the clock (tests); ``max_steps`` stops after that many bounded steps (``done`` is then
        False; the next run goes on from there).
        """
        now_us = None if now is None else to_micros(now, "now")
        return msgspec.json.decode(self._inner.maintain(now_us=now_us, max_steps=max_steps), type=MaintenanceReport)

    def failure(self) -> str | None:
        """``None`` while healthy; after a storage error, why the engine stopped acknowledging (fail-stop)."""
        return self._inner.failure()

    def stats(self) -> Stats:
        return msgspec.json.decode(self._inner.stats(), type=Stats)

    def close(self) -> None:
        """Finishes queued batches and closes the store. Idempotent."""
        self._inner.close()
