"""The shapes that cross meter's boundaries, as msgspec Structs (validated, fast, and the source of the API schema)."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "Aggregation",
    "Backfill",
    "CreatedMeter",
    "EventIssue",
    "Filter",
    "IngestResult",
    "Meter",
    "MeterSpec",
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
    "invalid_value",
    "conflict",
]


class Filter(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A condition on a ``data`` property: the meter counts an event only if all its filters hold."""

    property: str
    op: FilterOp
    value: str | None = None
    values: list[str] = []


class MeterSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What to count: events of ``event_type``, aggregated per customer (``subject``), minute and dimensions."""

    slug: str
    event_type: str
    aggregation: Aggregation
    value_property: str | None = None
    group_by: dict[str, str] = {}
    filters: list[Filter] = []
    description: str | None = None


class Meter(MeterSpec, kw_only=True):
    """A stored meter: its spec plus the id and creation time the engine gave it."""

    id: int
    created_us: int


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


class IngestResult(msgspec.Struct):
    """Outcome of one batch: every event is accepted, a duplicate (a success), or listed in ``issues``."""

    accepted: int
    duplicates: int
    issues: list[EventIssue]


class Stats(msgspec.Struct):
    accepted: int
    duplicates: int
    rejected: int
    commits: int
    commit_seconds_total: float
    #: Cumulative (upper bound in seconds, commits at or under it); the last bound, +Inf, is None in JSON.
    commit_seconds_buckets: list[tuple[float | None, int]]
    queue_depth: int
