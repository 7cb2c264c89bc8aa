"""Corrections in the engine: cancelled and amended events restate every aggregate they touched, exactly.

A reference model keeps the events that count (the latest version of each identity, none once cancelled) and computes
each meter's usage from them; after random rounds of ingest, cancels and amends (of values, customers, times and
types), the engine's usage equals it for every aggregation, per customer and minute, also after a restart and over
minutes already rolled up to hours and days.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import body
from meter import Engine
from meter.exceptions import BatchRejected
from meter.schemas import AmendEvent, CancelEvent, CorrectionRequest

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=3)
METERS = {
    "sum": {"aggregation": "sum", "value_property": "$.v"},
    "count": {"aggregation": "count"},
    "min": {"aggregation": "min", "value_property": "$.v"},
    "max": {"aggregation": "max", "value_property": "$.v"},
    "latest": {"aggregation": "latest", "value_property": "$.v"},
    "avg": {"aggregation": "avg", "value_property": "$.v"},
    "uniq": {"aggregation": "unique_count", "value_property": "$.m"},
    "by-model": {"aggregation": "sum", "value_property": "$.v", "group_by": {"model": "$.m"}},
}
CUSTOMERS = ["ada", "bob", "cy"]


def make_meters(engine: Engine) -> None:
    for slug, spec in METERS.items():
        engine.create_meter("acme", {"slug": slug, "event_type": "llm"} | spec)


def cloud(id: str, subject: str, at: datetime, v: int, m: str, type_: str = "llm") -> dict[str, Any]:
    data = {"v": v, "m": m}
    return {
        "specversion": "1.0",
        "id": id,
        "source": "gw",
        "type": type_,
        "subject": subject,
        "time": at.isoformat(),
    } | {"data": data}


class Model:
    """The events that count, by id, and what each meter should report from them."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.order: dict[str, int] = {}
        self.clock = 0

    def put(self, e: dict[str, Any]) -> None:
        self.events[e["id"]] = e
        self.clock += 1
        self.order[e["id"]] = self.clock


def engine_usage(engine: Engine, slug: str, start: datetime, end: datetime, window: str) -> dict[Any, Decimal]:
    rows = engine.usage("acme", slug, start=start, end=end, window_size=window, group_by=["subject"]).rows()  # type: ignore[arg-type]
    return {(r["subject"], r["window_start"]): r["value"] for r in rows if r["value"] != 0 or slug == "latest"}


def expected(model: Model, slug: str, start: datetime, end: datetime, window: timedelta) -> dict[Any, Decimal]:
    """The model's cells grouped into windows the way the engine's states merge (exact for every aggregation)."""
    spec = METERS[slug]["aggregation"]
    per_window: dict[tuple[str, datetime], list[dict[str, Any]]] = defaultdict(list)
    for e in model.events.values():
        at = datetime.fromisoformat(e["time"])
        if e["type"] == "llm" and start <= at < end:
            w = start + (at - start) // window * window
            per_window[(e["subject"], w)].append(e)
    out = {}
    for key, es in per_window.items():
        value = _combine(spec, es, model)
        if value != 0 or slug == "latest":
            out[key] = value
    return out


def _combine(aggregation: str, es: list[dict[str, Any]], model: Model) -> Decimal:
    vs = [Decimal(e["data"]["v"]) for e in es]
    match aggregation:
        case "sum":
            return sum(vs, Decimal(0))
        case "count":
            return Decimal(len(vs))
        case "min":
            return min(vs)
        case "max":
            return max(vs)
        case "avg":
            return (sum(vs, Decimal(0)) / len(vs)).quantize(Decimal("1e-9"))
        case "latest":
            last = max(es, key=lambda e: (datetime.fromisoformat(e["time"]), model.order[e["id"]]))
            return Decimal(last["data"]["v"])
        case _:
            return Decimal(len({e["data"]["m"] for e in es}))


def check(engine: Engine, model: Model, start: datetime, end: datetime, window: str = "minute") -> None:
    size = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}[window]
    for slug in METERS:
        if slug == "by-model":
            continue
        assert engine_usage(engine, slug, start, end, window) == expected(model, slug, start, end, size), slug
    grouped = engine.usage("acme", "by-model", start=start, end=end, group_by=["model"]).rows()
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for e in model.events.values():
        if e["type"] == "llm" and start <= datetime.fromisoformat(e["time"]) < end:
            totals[e["data"]["m"]] += Decimal(e["data"]["v"])
    assert {r["model"]: r["value"] for r in grouped if r["value"]} == {k: v for k, v in totals.items() if v}


def correct(engine: Engine, items: list[Any], now: datetime = NOW) -> Any:
    return engine.correct("acme", CorrectionRequest(reason="test", items=items), actor="key:test", now=now)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(tmp_path / "db", maintenance_interval=None) as e:
        make_meters(e)
        yield e


@pytest.mark.parametrize("seed", range(4))
def test_random_cancels_and_amends_restate_every_aggregation(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    model = Model()
    engine = Engine(tmp_path / "db", maintenance_interval=None)
    make_meters(engine)
    ids = 0
    for _ in range(6):
        batch = []
        for _ in range(rng.randint(5, 30)):
            ids += 1
            at = T0 + timedelta(seconds=rng.randint(0, 600))
            batch.append(cloud(f"e{ids}", rng.choice(CUSTOMERS), at, rng.randint(-5, 50), rng.choice("xyz")))
        assert engine.ingest("acme", body(*batch), now=NOW).accepted == len(batch)
        for e in batch:
            model.put(e)
        items: list[Any] = []
        for id in rng.sample(sorted(model.events), k=min(len(model.events), rng.randint(1, 8))):
            old = model.events[id]
            if rng.random() < 0.4:
                items.append(CancelEvent(source="gw", id=id))
                del model.events[id]
                continue
            new = cloud(
                id,
                rng.choice([old["subject"], *CUSTOMERS]),
                datetime.fromisoformat(old["time"]) + timedelta(seconds=rng.choice([0, 0, 45, -300, 3600])),
                rng.randint(-5, 50),
                rng.choice("xyz"),
                type_=rng.choice(["llm", "llm", "llm", "other"]),
            )
            items.append(AmendEvent(event=new))
            model.put(new)
        result = correct(engine, items)
        assert [c.status for c in result.corrections] == [
            "cancelled" if isinstance(i, CancelEvent) else "amended" for i in items
        ]
        check(engine, model, T0 - timedelta(hours=1), T0 + timedelta(hours=2))
    check(engine, model, T0 - timedelta(hours=1), T0 + timedelta(hours=2), "hour")
    engine.close()
    with Engine(tmp_path / "db", maintenance_interval=None) as reopened:
        check(reopened, model, T0 - timedelta(hours=1), T0 + timedelta(hours=2))


def test_a_correction_is_idempotent_and_kept_as_history(engine: Engine) -> None:
    engine.ingest("acme", body(cloud("a", "ada", T0, 10, "x"), cloud("b", "ada", T0, 5, "y")), now=NOW)
    amend = AmendEvent(event=cloud("a", "ada", T0, 7, "x"))
    first = correct(engine, [amend, CancelEvent(source="gw", id="b")])
    assert first.seq is not None and [c.status for c in first.corrections] == ["amended", "cancelled"]
    again = correct(engine, [amend, CancelEvent(source="gw", id="b")])
    assert again.seq is None and [c.status for c in again.corrections] == ["unchanged", "unchanged"]
    assert engine.usage("acme", "sum", start=T0, end=NOW).total() == 7

    (history,) = [engine.event_history("acme", "gw", "a")]
    assert [(h.action, h.reason, h.actor, h.seq) for h in history] == [("amend", "test", "key:test", first.seq)]
    assert history[0].replacement is not None and history[0].replacement.seq == first.seq
    assert [h.action for h in engine.event_history("acme", "gw", "b")] == ["cancel"]
    assert engine.event_history("acme", "gw", "never") == []

    # The event that counts now is the amended one; a cancelled one is found nowhere.
    found, _ = engine.find_event("acme", "gw", "a")
    assert msgspec.json.decode(found.column("data")[0].as_py()) == {"v": 7, "m": "x"}
    assert engine.find_event("acme", "gw", "b")[0].num_rows == 0
    # A retry of the original payload is still a duplicate: the identity was accepted once.
    retry = engine.ingest("acme", body(cloud("a", "ada", T0, 10, "x"), cloud("b", "ada", T0, 5, "y")), now=NOW)
    assert (retry.accepted, retry.duplicates) == (0, 2)
    assert engine.usage("acme", "sum", start=T0, end=NOW).total() == 7
    # The raw events the export reads hold the new version, not the old ones.
    table, _ = engine.retained_events("acme")
    assert sorted(zip(table.column("id").to_pylist(), table.column("data").to_pylist(), strict=True)) == [
        ("a", '{"v":7,"m":"x"}')
    ]
    made = engine.corrections("acme", 0, first.seq)
    assert [(c.id, c.action) for c in made] == [("a", "amend"), ("b", "cancel")]
    assert engine.corrections("acme", first.seq, first.seq) == []


def test_a_bad_item_refuses_the_whole_correction(engine: Engine) -> None:
    engine.ingest("acme", body(*(cloud(id, "ada", T0, 10, "x") for id in "acd")), now=NOW)
    correct(engine, [CancelEvent(source="gw", id="c")])
    bad = [
        CancelEvent(source="gw", id="a"),
        CancelEvent(source="gw", id="missing"),
        AmendEvent(event={"specversion": "1.0", "id": "a", "source": "gw", "subject": "ada"}),
        AmendEvent(event=cloud("c", "bob", T0, 2, "x")),
        AmendEvent(event=cloud("d", "ada", T0 - timedelta(days=60), 2, "x")),
        CancelEvent(source="gw", id="a"),
    ]
    with pytest.raises(BatchRejected) as refused:
        correct(engine, bad)
    codes = [(i["index"], i["code"]) for i in refused.value.issues]
    assert codes == [(1, "not_found"), (2, "missing_field"), (3, "cancelled"), (4, "too_old"), (5, "duplicate_item")]
    assert all(i["message"] for i in refused.value.issues)
    assert engine.usage("acme", "sum", start=T0, end=NOW).total() == 20
    assert engine.event_history("acme", "gw", "a") == []


def test_corrections_restate_rolled_up_hours_and_days(tmp_path: Path) -> None:
    """Minutes rolled up to hours and days are restated whole: each bucket again from its retained events."""
    day = timedelta(days=1)
    options: dict[str, Any] = {"backdate_window": day, "dedup_window": day, "minute_aggregates": day}
    with Engine(tmp_path / "db", maintenance_interval=None, hour_aggregates=2 * day, **options) as engine:
        make_meters(engine)
        model = Model()
        events = [cloud(f"e{n}", CUSTOMERS[n % 3], T0 + timedelta(minutes=7 * n), n, "xyz"[n % 3]) for n in range(40)]
        assert engine.ingest("acme", body(*events), now=T0 + timedelta(hours=5)).accepted == len(events)
        for e in events:
            model.put(e)
        later = NOW + 5 * day
        engine.maintain(now=later)
        with pytest.raises(Exception, match="resolution_unavailable|finest"):
            engine.usage("acme", "sum", start=T0, end=T0 + timedelta(minutes=1))
        # e8 (bob's) goes to ada, with a new value and model, at its own time: a time that old may stay, not move.
        moved = cloud("e8", "ada", T0 + timedelta(minutes=56), 1000, "q")
        items: list[Any] = [CancelEvent(source="gw", id="e3"), AmendEvent(event=moved)]
        del model.events["e3"]
        model.put(moved)
        assert [c.status for c in correct(engine, items, now=later).corrections] == ["cancelled", "amended"]
        check(engine, model, T0 - timedelta(hours=10), T0 + timedelta(hours=14), "day")


def test_a_correction_marks_its_days_for_the_export(engine: Engine) -> None:
    engine.ingest("acme", body(cloud("a", "ada", T0, 10, "x")), now=NOW)
    before = engine.day_counts("acme", "sum")
    correct(engine, [AmendEvent(event=cloud("a", "ada", T0, 11, "x"))])
    after = engine.day_counts("acme", "sum")
    assert after.keys() == before.keys() and all(after[d] > before[d] for d in before)
    correct(engine, [CancelEvent(source="gw", id="a")])
    assert all(engine.day_counts("acme", "sum")[d] > after[d] for d in after)


def test_corrections_that_need_dropped_events_are_refused(tmp_path: Path) -> None:
    """A bucket restated needs all its events: one whose neighbours retention dropped is past retention."""
    with Engine(tmp_path / "db", maintenance_interval=None, retention=timedelta(hours=1)) as engine:
        make_meters(engine)
        engine.ingest("acme", body(cloud("old", "ada", T0, 1, "x")), now=T0 + timedelta(minutes=1))
        # Retention drops by receive time, to the last receive mark before the cutoff: a commit between marks it.
        engine.ingest("acme", body(cloud("between", "bob", T0, 1, "x", "other")), now=T0 + timedelta(hours=1))
        engine.ingest("acme", body(cloud("new", "ada", T0, 2, "x")), now=T0 + timedelta(hours=2, minutes=45))
        table, seq = engine.retained_events("acme")
        engine.events_exported("acme", seq)
        engine.day_counts("acme", "sum")  # every fold written: retention drops only what is aggregated
        dropped = engine.maintain(now=T0 + timedelta(hours=3, minutes=30))
        assert [d.through_seq for d in dropped.dropped] == [1]
        with pytest.raises(BatchRejected) as refused:
            correct(engine, [CancelEvent(source="gw", id="new")], now=T0 + timedelta(hours=3, minutes=30))
        assert [i["code"] for i in refused.value.issues] == ["past_retention"]
        assert engine.usage("acme", "sum", start=T0, end=NOW).total() == 3
        # The event retention dropped is not found; one that no meter counts restates nothing, so it can go.
        with pytest.raises(BatchRejected, match="could not be applied"):
            correct(engine, [CancelEvent(source="gw", id="old")], now=T0 + timedelta(hours=3, minutes=30))
        correct(engine, [CancelEvent(source="gw", id="between")], now=T0 + timedelta(hours=3, minutes=30))
        assert [h.action for h in engine.event_history("acme", "gw", "between")] == ["cancel"]

        # Once retention drops the correction's commit, its record and the history it ended go with it.
        engine.ingest("acme", body(cloud("last", "cy", T0 + timedelta(hours=5), 1, "x")), now=T0 + timedelta(hours=5))
        table, seq = engine.retained_events("acme")
        engine.events_exported("acme", seq)
        engine.day_counts("acme", "sum")
        assert engine.maintain(now=T0 + timedelta(hours=7)).dropped[0].through_seq == seq
        assert engine.event_history("acme", "gw", "between") == [] and engine.corrections("acme", 0, seq) == []


def test_a_correction_is_on_the_change_feed_so_live_balances_follow(engine: Engine) -> None:
    engine.ingest("acme", body(cloud("a", "ada", T0 + timedelta(seconds=30), 10, "x")), now=NOW)
    engine.changes()  # what ingest changed, taken
    correct(engine, [AmendEvent(event=cloud("a", "bob", T0 + timedelta(seconds=30), 10, "x"))])
    table, overflowed = engine.changes()
    changed = {(r["meter"], r["customer"], r["earliest"]) for r in table.to_pylist()}
    assert not overflowed and {("sum", "ada", T0), ("sum", "bob", T0), ("max", "ada", T0)} <= changed
