"""The shapes that cross meter's boundaries, as msgspec Structs (validated, fast, and the source of the API schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "Aggregation",
    "AmendEvent",
    "Backfill",
    "CancelEvent",
    "Correction",
    "CorrectionOutcome",
    "CorrectionRequest",
    "CorrectionResult",
    "CreatedMeter",
    "Dropped",
    "EventIssue",
    "EventPage",
    "EventRecord",
    "EventVersion",
    "EventWarning",
    "Filter",
    "FoundEvent",
    "HeldBack",
    "IngestResult",
    "LineEvent",
    "LineEvents",
    "MaintenanceReport",
    "MaintenanceStats",
    "Meter",
    "MeterCount",
    "MeterLimits",
    "MeterSpec",
    "QueuedIngest",
    "SkippedCount",
    "SkippedEvent",
    "SkippedEvents",
    "SkippedPage",
    "Stats",
]

Aggregation = Literal["sum", "count", "min", "max", "unique_count", "latest", "avg"]
FilterOp = Literal["eq", "ne", "in", "not_in", "exists", "not_exists"]
IssueCode = Literal[
    "invalid_event",
    "missing_field",
    "invalid_field",
    "invalid_time",
    "invalid_data",
    "too_old",
    "too_far_in_future",
    "conflict",
    "cardinality_limit",
    "not_found",
    "cancelled",
    "past_retention",
    "duplicate_item",
]
#: Why a meter skipped an accepted event (it counted none of it; the other meters of its type counted it).
SkipCode = Literal["value_missing", "value_invalid", "dimension_invalid", "filter_invalid"]


class Filter(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A condition on a ``data`` property: the meter counts an event only if all its filters hold."""

    property: str
    op: FilterOp
    value: str | None = None
    values: list[str] = []


class MeterLimits(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A meter's cardinality limits; one left out takes the engine's default (shown filled in when a meter is read).

    An event that would go past one is refused with ``cardinality_limit``.
    """

    #: Distinct dimension combinations one customer may have in one minute (1-100,000; engine default 1,000).
    max_combinations_per_minute: int | None = None
    #: Distinct customers one minute may have (1-10,000,000; engine default 100,000).
    max_customers_per_minute: int | None = None


class MeterSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What to count: events of ``event_type``, aggregated per customer (``subject``), minute and dimensions."""

    slug: str
    event_type: str
    aggregation: Aggregation
    value_property: str | None = None
    group_by: dict[str, str] = {}
    filters: list[Filter] = []
    description: str | None = None
    limits: MeterLimits | None = None


class Meter(MeterSpec, kw_only=True):
    """A stored meter: its spec plus the id and creation time the engine gave it."""

    id: int
    created_us: int

    def spec(self) -> MeterSpec:
        """What it counts, without what the engine gave it (what :func:`meter.engine.event_values` takes)."""
        return MeterSpec(**{name: getattr(self, name) for name in MeterSpec.__struct_fields__})


class Backfill(msgspec.Struct):
    """How a new meter was filled from the retained events."""

    events: int
    filtered: int
    unreadable: int


class CreatedMeter(msgspec.Struct):
    meter: Meter
    backfill: Backfill


class EventIssue(msgspec.Struct):
    """Why the event at ``index`` was not counted (or, for ``conflict``, not counted again)."""

    index: int
    id: str | None
    code: IssueCode
    message: str


class EventWarning(msgspec.Struct):
    """The event at ``index`` was accepted, but ``meter`` could not read it and skipped it whole.

    The event's other meters counted it. Reported once, when the event is accepted;
    ``GET /v1/meters/{slug}/skipped`` lists such events later.
    """

    index: int
    id: str
    meter: str
    code: SkipCode
    message: str


class IngestResult(msgspec.Struct):
    """Outcome of one batch: every event is accepted, a duplicate (a success), or listed in ``issues``.

    ``warnings`` names the meters that skipped an accepted event.
    """

    accepted: int
    duplicates: int
    issues: list[EventIssue]
    warnings: list[EventWarning] = []


class QueuedIngest(IngestResult):
    """Cluster mode: the outcome of a batch stored in the log, with how many of its events are still being applied.

    Every event of the batch is durable in the replicated log once this is answered. ``accepted``, ``duplicates``,
    ``issues`` and ``warnings`` cover the events whose partition's worker reported in time; the other ``pending``
    events are counted exactly once all the same, and ``GET /v1/events/batches/{batch}`` tells their outcome.
    """

    batch: str = ""
    pending: int = 0


class CancelEvent(msgspec.Struct, tag="cancel", tag_field="action", forbid_unknown_fields=True):
    """Cancels the event of this identity: it no longer counts in any meter, invoice or export."""

    source: str
    id: str


class AmendEvent(msgspec.Struct, tag="amend", tag_field="action", forbid_unknown_fields=True):
    """Replaces the event of the CloudEvent's ``(source, id)`` with this one: same identity, new payload.

    ``type``, ``subject``, ``time`` and ``data`` may all change; without ``time`` the event keeps its own.
    """

    event: dict[str, Any]


class CorrectionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Events to cancel or amend, and why: applied whole, in one durable commit, or refused whole."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    items: Annotated[list[CancelEvent | AmendEvent], msgspec.Meta(min_length=1, max_length=10_000)]


class CorrectionOutcome(msgspec.Struct):
    """What a correction did to the event named at ``index``: ``cancelled``, ``amended``, or ``unchanged``.

    ``unchanged``: it was already cancelled, or already had that payload (a retried correction applies once). A
    backfill's close also ``added`` new events and ``replaced`` a range; its revert ``restored`` what it replaced.
    """

    index: int
    source: str
    id: str
    status: Literal["cancelled", "amended", "added", "restored", "replaced", "unchanged"]
    #: Events the item changed: 0 or 1, or how many events of a replaced range were cancelled.
    events: int = 0


class CorrectionResult(msgspec.Struct):
    """A correction's outcome per item; ``seq`` is its commit (None when nothing changed).

    ``buckets`` customer-minutes (or rolled-up hours and days) were restated from ``events_read`` retained events.
    """

    seq: int | None
    corrections: list[CorrectionOutcome]
    events_read: int
    buckets: int


class EventVersion(msgspec.Struct):
    """One version of an event: the commit that holds it and its ordinal in the raw-events export."""

    seq: int
    ordinal: int


class Correction(msgspec.Struct):
    """One correction of one event: what was done, when, by whom and why, and which version it replaced.

    ``add`` (a backfill's new event) replaced none; ``restore`` (a backfill's revert) brought ``replacement`` back.
    """

    source: str
    id: str
    action: Literal["cancel", "amend", "add", "restore"]
    seq: int
    at_us: int
    reason: str
    actor: str
    replaced: EventVersion | None
    replacement: EventVersion | None


class SkippedEvent(msgspec.Struct):
    """A retained event that a meter could not read, and why."""

    source: str
    id: str
    subject: str
    time: datetime
    code: SkipCode
    message: str


class FoundEvent(msgspec.Struct):
    """An accepted event, as it was sent (``data`` as its JSON object), and the commit that accepted it."""

    source: str
    id: str
    type: str
    subject: str
    time: datetime
    data: dict[str, Any]
    commit: int


class EventPage(msgspec.Struct):
    """A page of a search of the accepted events, in the order they were accepted.

    ``next`` (pass it as ``after``) is ``None`` after the last.
    """

    data: list[FoundEvent]
    next: str | None


class LineEvent(FoundEvent):
    """An event behind an invoice line, with the value its meter reads from it."""

    value: str


class LineEvents(msgspec.Struct):
    """A page of the events behind a usage line, in the order they were accepted.

    Aggregated as ``aggregation`` (a matrix price: per combination of its dimensions, then added up), every page's
    values give the line's ``quantity``. ``next`` (pass it as ``after``) is ``None`` after the last page.
    """

    invoice: str
    line: int
    meter: str
    aggregation: Aggregation
    quantity: str | None
    period_start: datetime
    period_end: datetime
    data: list[LineEvent]
    next: str | None


class MeterCount(msgspec.Struct):
    """What one meter counts of an event.

    Its value, or null when it counts nothing of it (a filter leaves it out, or the meter cannot read it).
    """

    meter: str
    value: str | None


class EventRecord(msgspec.Struct):
    """One event: the version that counts (None once cancelled), its status, its history, what its meters count.

    ``history`` starts with its acceptance, then each correction: when, by whom, why, and the version it replaced.
    """

    event: FoundEvent | None
    status: Literal["counted", "amended", "cancelled"]
    history: list[dict[str, Any]]
    meters: list[MeterCount]


class SkippedPage(msgspec.Struct):
    """One page of a meter's skipped events, in the order they were accepted.

    ``next`` (pass it as ``after``) is ``None`` once every retained event was read; ``scanned`` is how many retained
    events this page read.
    """

    events: list[SkippedEvent]
    scanned: int
    next: str | None


class SkippedEvents(msgspec.Struct):
    """The answer of ``GET /v1/meters/{slug}/skipped``: one page of the meter's skipped events in ``[from, to)``."""

    meter: str
    from_: str = msgspec.field(name="from")
    to: str
    data: list[SkippedEvent]
    #: Pass as ``after`` for the next page; null once every retained event was read.
    next: str | None
    #: Retained events this page read (each page reads at most a million).
    scanned: int


class SkippedCount(msgspec.Struct):
    """Accepted events of ``tenant`` that ``meter`` skipped since the engine opened (ingest and backfill)."""

    tenant: str
    meter: str
    events: int


class HeldBack(msgspec.Struct):
    """Retained events of ``tenant`` past retention, kept because the export has not written them to Parquet yet."""

    tenant: str
    #: Counted so far: after a restart the count starts again, a bounded step at a time.
    events: int
    #: The last commit the export said it wrote for this tenant (0: never).
    exported_seq: int


class Dropped(msgspec.Struct):
    """A tenant whose retained events a maintenance run dropped, through commit ``through_seq``."""

    tenant: str
    through_seq: int


class MaintenanceReport(msgspec.Struct):
    """What one run of retention and roll-ups did (``Engine.maintain``)."""

    now_us: int
    dropped: list[Dropped]
    held_back: list[HeldBack]
    #: Meters that had a roll-up step, and the aggregate keys merged into their hour's or day's first minute.
    meters_rolled_up: int
    keys_merged: int
    steps: int
    #: False when the run stopped early (``max_steps``, or the engine closing).
    done: bool


class MaintenanceStats(msgspec.Struct):
    runs: int = 0
    held_back: list[HeldBack] = []
    last_error: str | None = None


class Stats(msgspec.Struct):
    accepted: int
    duplicates: int
    rejected: int
    commits: int
    commit_seconds_total: float
    #: Cumulative (upper bound in seconds, commits at or under it); the last bound, +Inf, is None in JSON.
    commit_seconds_buckets: list[tuple[float | None, int]]
    queue_depth: int
    skipped: list[SkippedCount] = []
    maintenance: MaintenanceStats = msgspec.field(default_factory=MaintenanceStats)
