"""``Engine.changes``: which customers' usage changed since the last call, for a live view that re-queries them alone.

An acknowledged event reaches a drain shortly after ``ingest`` returns (the fold threads record it), so these tests
drain until what they expect has arrived, then check that nothing more does.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
from conftest import T0, body, event
from meter import Engine

MINUTE = timedelta(minutes=1)
FIELDS: list[pa.Field[Any]] = [
    pa.field("tenant", pa.utf8(), nullable=False),
    pa.field("meter", pa.utf8(), nullable=False),
    pa.field("customer", pa.utf8(), nullable=False),
    pa.field("earliest", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("events", pa.uint64(), nullable=False),
]
SCHEMA = pa.schema(FIELDS)

Key = tuple[str, str, str]


def meters(engine: Engine, tenant: str) -> None:
    engine.create_meter(tenant, {"slug": "calls", "event_type": "llm", "aggregation": "count"})
    engine.create_meter(
        tenant, {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
    )


def drain_until(engine: Engine, events: int, *, seconds: float = 5.0) -> dict[Key, tuple[datetime, int]]:
    """Drains until the rows name ``events`` events in all (merging drains: earliest of, sum of), or time is up."""
    merged: dict[Key, tuple[datetime, int]] = {}
    deadline = time.monotonic() + seconds
    while True:
        table, overflowed = engine.changes()
        assert not overflowed
        assert table.schema == SCHEMA
        for row in table.to_pylist():
            key = (row["tenant"], row["meter"], row["customer"])
            earliest, n = merged.get(key, (row["earliest"], 0))
            merged[key] = (min(earliest, row["earliest"]), n + row["events"])
        if sum(n for _, n in merged.values()) >= events or time.monotonic() > deadline:
            return merged
        time.sleep(0.005)


def test_a_drain_with_nothing_pending_is_an_empty_table_with_the_schema(engine: Engine) -> None:
    table, overflowed = engine.changes()
    assert (table.num_rows, overflowed) == (0, False)
    assert table.schema == SCHEMA


def test_changes_name_each_tenant_meter_and_customer_with_its_earliest_minute(engine: Engine, now: datetime) -> None:
    for tenant in ("acme", "globex"):
        meters(engine, tenant)
    backdated = T0 - timedelta(minutes=40, seconds=30)
    engine.ingest(
        "acme",
        body(
            event("a", "c1", time=T0 + timedelta(minutes=5, seconds=59), tokens=10),
            event("b", "c1", time=backdated, tokens=1),
            event("c", "c2", time=T0, tokens=3),
            event("d", "c2", type="other", time=T0),  # no meter counts it
        ),
        now=now,
    )
    engine.ingest("globex", body(event("a", "c1", time=T0 + timedelta(seconds=30), tokens=2)), now=now)

    rows = drain_until(engine, events=10)
    minute_of_backdated = datetime(2026, 11, 23, 9, 19, tzinfo=UTC)
    assert rows == {
        ("acme", "calls", "c1"): (minute_of_backdated, 2),
        ("acme", "tokens", "c1"): (minute_of_backdated, 2),
        ("acme", "calls", "c2"): (T0, 1),
        ("acme", "tokens", "c2"): (T0, 1),
        ("globex", "calls", "c1"): (T0, 1),
        ("globex", "tokens", "c1"): (T0, 1),
    }
    # What a drain names, a usage query made after it counts.
    usage = engine.usage("acme", "tokens", start=minute_of_backdated, end=now, subjects=["c1"])
    assert usage.total() == Decimal(11)


def test_a_duplicate_adds_nothing_and_a_drain_takes_what_it_returns(engine: Engine, now: datetime) -> None:
    meters(engine, "acme")
    batch = body(event("a", "c1", tokens=1), event("b", "c2", tokens=1))
    engine.ingest("acme", batch, now=now)
    assert len(drain_until(engine, events=4)) == 4

    assert engine.ingest("acme", batch, now=now).duplicates == 2
    # A later event of the same customers: once it is drained, the duplicates would have been too.
    engine.ingest("acme", body(event("c", "c1", time=T0 + MINUTE, tokens=1)), now=now)
    assert drain_until(engine, events=2) == {
        ("acme", "calls", "c1"): (T0 + MINUTE, 1),
        ("acme", "tokens", "c1"): (T0 + MINUTE, 1),
    }
    time.sleep(0.05)
    table, _ = engine.changes()
    assert table.num_rows == 0


def test_a_deleted_meters_events_are_dropped_and_a_backfill_is_not_reported(engine: Engine, now: datetime) -> None:
    meters(engine, "acme")
    engine.ingest("acme", body(event("a", "c1", tokens=1)), now=now)
    engine.delete_meter("acme", "calls")
    # The backfill of a new meter is not reported: only its events from now on.
    engine.create_meter("acme", {"slug": "calls", "event_type": "llm", "aggregation": "count"})
    assert drain_until(engine, events=1) == {("acme", "tokens", "c1"): (T0, 1)}
    engine.ingest("acme", body(event("b", "c1", tokens=1)), now=now)
    assert set(drain_until(engine, events=2)) == {("acme", "tokens", "c1"), ("acme", "calls", "c1")}


def test_past_the_pending_limit_the_next_drain_is_overflowed(tmp_path: Path, now: datetime) -> None:
    with Engine(tmp_path / "db", max_pending_changes=3) as engine:
        meters(engine, "acme")
        engine.ingest("acme", body(*(event(f"e{i}", f"c{i}", tokens=1) for i in range(4))), now=now)
        engine.day_counts("acme", "calls")  # waits until the fold threads have every acknowledged event
        table, overflowed = engine.changes()
        assert (table.num_rows, overflowed) == (0, True)
        assert table.schema == SCHEMA
        engine.ingest("acme", body(event("f", "c9", tokens=1)), now=now)
        assert set(drain_until(engine, events=2)) == {("acme", "calls", "c9"), ("acme", "tokens", "c9")}
