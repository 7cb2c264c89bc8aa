"""The engine's side of cluster mode: applying a log with its position, and partial answers merged exactly.

- ``Engine.apply`` writes each entry's outcome and the last position with the state; a checkpoint carries them;
  entries are decided by their own clock, so applying the same log on another engine gives the same state.
- ``split_batch`` parts a batch by (tenant, customer) without losing or changing an event.
- Usage split over partitions and merged with ``finish_usage`` equals one engine's usage, for every aggregation.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import body
from meter import Engine, _core
from meter.engine import LogEntry, finish_usage, to_micros

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
RECEIVED = to_micros(T0 + timedelta(hours=1))
METERS: dict[str, dict[str, Any]] = {
    "sum": {"aggregation": "sum", "value_property": "$.v"},
    "count": {"aggregation": "count"},
    "min": {"aggregation": "min", "value_property": "$.v"},
    "max": {"aggregation": "max", "value_property": "$.v"},
    "latest": {"aggregation": "latest", "value_property": "$.v"},
    "avg": {"aggregation": "avg", "value_property": "$.v"},
    "uniq": {"aggregation": "unique_count", "value_property": "$.m"},
    "by-model": {"aggregation": "sum", "value_property": "$.v", "group_by": {"model": "$.m"}},
}


def event(i: int, subject: str, v: int, m: str = "a", minute: int = 0) -> dict[str, Any]:
    at = T0 + timedelta(minutes=minute, seconds=i % 60, microseconds=i)  # distinct times: `latest` has one answer
    return {
        "specversion": "1.0",
        "id": str(i),
        "source": "gw",
        "type": "llm",
        "subject": subject,
        "time": at.isoformat(),
        "data": {"v": v, "m": m},
    }


def meter_entry(seq: int, slug: str) -> LogEntry:
    spec = {"slug": slug, "event_type": "llm"} | METERS[slug]
    return LogEntry(seq, "acme", RECEIVED, "create_meter", json.dumps(spec).encode())


def outcome(raw: bytes) -> Any:
    return msgspec.json.decode(raw)


def open_engine(path: Path) -> Engine:
    return Engine(path, maintenance_interval=None)


def test_apply_stores_position_and_outcomes_with_the_state(tmp_path: Path) -> None:
    with open_engine(tmp_path / "p") as engine:
        assert engine.log_position("events.3") == 0
        outcomes = engine.apply(
            "events.3",
            [
                meter_entry(2, "sum"),
                LogEntry(5, "acme", RECEIVED, "ingest", body(event(1, "ada", 2), event(2, "bob", 3))),
                LogEntry(9, "acme", RECEIVED, "ingest", body(event(1, "ada", 2), event(2, "bob", 4))),
                LogEntry(11, "acme", RECEIVED, "ingest", b"not json"),
                LogEntry(12, "acme", RECEIVED, "ingest", body(event(3, "cy", 1), {"id": "x"}), atomic=True),
                # A part of a request: its events are named by their index in the request.
                LogEntry(13, "acme", RECEIVED, "ingest", body({"id": "y"}, event(4, "cy", 1)), indexes=[7, 9]),
            ],
        )
        decoded = [outcome(o) for o in outcomes]
        assert decoded[0]["ok"]["meter"]["slug"] == "sum" and decoded[0]["tenant"] == "acme"
        assert decoded[1] == {"tenant": "acme", "ok": {"accepted": 2, "duplicates": 0, "issues": [], "warnings": []}}
        assert decoded[2]["ok"]["duplicates"] == 1 and decoded[2]["ok"]["issues"][0]["code"] == "conflict"
        assert decoded[3]["error"]["code"] == "invalid_json"
        assert decoded[4]["error"]["code"] == "batch_rejected" and decoded[4]["error"]["issues"][0]["index"] == 1
        assert [i["index"] for i in decoded[5]["ok"]["issues"]] == [7] and decoded[5]["ok"]["accepted"] == 1
        assert engine.log_position("events.3") == 13
        assert engine.log_position("events.4") == 0
        assert [engine.log_outcome("events.3", s) for s in (2, 5, 9, 11, 12, 13)] == outcomes
        assert engine.log_outcome("events.3", 6) is None

        # An entry whose events were all duplicates still moves the position, and forgets the older outcomes.
        again = engine.apply(
            "events.3", [LogEntry(20, "acme", RECEIVED, "ingest", body(event(1, "ada", 2)))], forget_before=12
        )
        assert outcome(again[0])["ok"]["duplicates"] == 1
        assert engine.log_position("events.3") == 20
        assert engine.log_outcome("events.3", 9) is None and engine.log_outcome("events.3", 12) == outcomes[4]
        engine.checkpoint(tmp_path / "copy")
        total = engine.usage("acme", "sum", start=T0, end=T0 + timedelta(hours=1)).total()

    # The checkpoint opens with its position, its outcomes and its state; so does the store itself, reopened.
    for path in (tmp_path / "copy", tmp_path / "p"):
        with open_engine(path) as engine:
            assert engine.log_position("events.3") == 20
            assert engine.log_outcome("events.3", 12) == outcomes[4]
            assert engine.usage("acme", "sum", start=T0, end=T0 + timedelta(hours=1)).total() == total == 6


def test_entries_are_decided_by_their_own_clock(tmp_path: Path) -> None:
    """The same log applied on two engines, at different wall-clock times, gives the same outcomes and state."""
    late = event(7, "ada", 1, minute=-40 * 24 * 60)  # 40 days before T0: outside the 35-day back-dating window
    entries = [meter_entry(1, "sum"), LogEntry(2, "acme", RECEIVED, "ingest", body(event(1, "ada", 5), late))]
    answers = []
    for name in ("a", "b"):
        with open_engine(tmp_path / name) as engine:
            answers.append(engine.apply("log", entries))
    assert answers[0] == answers[1]
    assert [i["code"] for i in outcome(answers[0][1])["ok"]["issues"]] == ["too_old"]


def test_split_batch_parts_by_customer_and_keeps_every_event(tmp_path: Path) -> None:
    events = [event(i, f"c{i % 13}", i) for i in range(300)]
    raw = json.dumps(events[:100] + [{"specversion": "1.0"}] + events[100:]).encode()
    issues, total, parts = _core.split_batch("acme", raw, RECEIVED, 8)
    assert total == 301 and [i["index"] for i in json.loads(issues)] == [100]
    seen: dict[int, dict[str, Any]] = {}
    for partition, part, indexes in parts:
        decoded = json.loads(part)
        assert len(decoded) == len(indexes)
        for ev, index in zip(decoded, indexes, strict=True):
            assert _core.partition_of("acme", ev["subject"], 8) == partition
            seen[index] = ev
    assert sorted(seen) == [i for i in range(301) if i != 100]
    assert [seen[i if i < 100 else i + 1] for i in range(300)] == events


QUERIES: list[dict[str, Any]] = [
    {},
    {"window_size": "minute"},
    {"group_by": ["subject"]},
    {"group_by": ["model"], "window_size": "hour"},
    {"subjects": ["c1", "c4"], "window_size": "minute"},
    {"filters": {"model": ["a"]}},
]


@pytest.mark.parametrize("partitions", [1, 3, 7])
def test_partials_merge_to_the_single_engine_answer(tmp_path: Path, partitions: int) -> None:
    rng = random.Random(partitions)
    events = [
        event(i, f"c{rng.randrange(9)}", rng.randrange(-50, 1000), rng.choice("abc"), rng.randrange(5))
        for i in range(2_000)
    ]
    whole = open_engine(tmp_path / "whole")
    parts = [open_engine(tmp_path / f"p{p}") for p in range(partitions)]
    try:
        for slug in METERS:
            spec = {"slug": slug, "event_type": "llm"} | METERS[slug]
            for engine in [whole, *parts]:
                engine.create_meter("acme", spec)
        for chunk in range(0, len(events), 250):
            raw = body(*events[chunk : chunk + 250])
            whole.ingest("acme", raw, now=T0 + timedelta(hours=1))
            _, _, split = _core.split_batch("acme", raw, RECEIVED, partitions)
            for partition, part, _ in split:
                parts[partition].ingest("acme", part, now=T0 + timedelta(hours=1))
        window = {"start": T0, "end": T0 + timedelta(hours=2)}
        for slug in METERS:
            for q in QUERIES:
                if "model" in str(q) and slug != "by-model":
                    continue
                expected = whole.usage("acme", slug, **window, **q).rows()
                merged = finish_usage([p.usage_partial("acme", slug, **window, **q) for p in parts]).rows()
                assert merged == expected, (slug, q)
    finally:
        for engine in [whole, *parts]:
            engine.close()


def test_a_partition_loop_stops_when_a_clean_up_fails_during_its_cancellation() -> None:
    """The liveness bug the chaos test found: an error raised while unwinding must not swallow the cancellation."""
    from meter.cluster.worker import _unless_cancelled

    async def loop() -> None:
        while True:
            try:
                try:
                    await asyncio.sleep(60)
                finally:
                    raise OSError(39, "Directory not empty")  # a temporary directory removed under a writer
            except OSError as e:
                _unless_cancelled(e)
                await asyncio.sleep(0)

    async def run() -> None:
        task = asyncio.create_task(loop())
        await asyncio.sleep(0.01)  # inside its first sleep
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done and task.cancelled()

    asyncio.run(run())
