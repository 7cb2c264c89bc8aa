"""The Python face of the engine: results, errors and every aggregation, end to end through RocksDB."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import meter
import pyarrow as pa
import pytest
from conftest import T0, body, event
from meter import Engine
from meter.engine import to_micros

HOUR = timedelta(hours=1)


def make_tokens(engine: Engine, tenant: str = "acme") -> None:
    engine.create_meter(
        tenant,
        {
            "slug": "tokens",
            "event_type": "llm",
            "aggregation": "sum",
            "value_property": "$.tokens",
            "group_by": {"model": "$.model"},
        },
    )


def test_ingest_reports_accepted_duplicates_and_issues_by_index(engine: Engine, now: datetime) -> None:
    make_tokens(engine)
    batch = body(event("a", tokens=10, model="m1"), {"id": "no-fields"}, event("c", tokens="2.5", model="m1"))
    result = engine.ingest("acme", batch, now=now)
    assert (result.accepted, result.duplicates) == (2, 0)
    assert [(i.index, i.id, i.code) for i in result.issues] == [(1, "no-fields", "missing_field")]
    assert "source" in result.issues[0].message

    again = engine.ingest("acme", batch, now=now)
    assert (again.accepted, again.duplicates) == (0, 2)
    usage = engine.usage("acme", "tokens", start=T0 - HOUR, end=T0 + HOUR)
    assert usage.total() == Decimal("12.5")
    assert isinstance(usage.rows()[0]["value"], Decimal)


def test_usage_is_arrow_with_exact_decimals(engine: Engine, now: datetime) -> None:
    make_tokens(engine)
    engine.ingest(
        "acme", body(event("a", tokens="0.000000001", model="m1"), event("b", tokens=1e-9, model="m2")), now=now
    )
    usage = engine.usage("acme", "tokens", start=T0, end=T0 + HOUR, group_by=["model"], window_size="hour")
    table = pa.table(usage)
    assert table.schema.field("value").type == pa.decimal128(38, 9)
    assert table.column_names == ["window_start", "window_end", "model", "value", "events"]
    assert [(r["model"], r["value"]) for r in usage.rows()] == [("m1", Decimal("1E-9")), ("m2", Decimal("1E-9"))]


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("sum", "16"), ("count", "4"), ("min", "-1"), ("max", "10"), ("avg", "4"), ("latest", "3"), ("unique_count", "3")],
)
def test_every_aggregation(engine: Engine, now: datetime, aggregation: str, expected: str) -> None:
    spec = {"slug": "m", "event_type": "llm", "aggregation": aggregation}
    if aggregation != "count":
        spec["value_property"] = "$.v"
    engine.create_meter("acme", spec)
    values = [(10, 0), (-1, 1), (4, 2), (3, 59)]  # (value, minute): latest is the one with the latest time
    if aggregation == "unique_count":
        values = [(10, 0), (10, 1), (4, 2), (3, 59)]
    events = [event(f"e{i}", time=T0 + timedelta(minutes=m), v=v) for i, (v, m) in enumerate(values)]
    engine.ingest("acme", body(*events), now=now)
    rows = engine.usage("acme", "m", start=T0, end=T0 + HOUR).rows()
    assert [r["value"] for r in rows] == [Decimal(expected)]
    assert rows[0]["events"] == 4


def test_day_windows_follow_the_requested_time_zone(engine: Engine) -> None:
    engine.create_meter("acme", {"slug": "calls", "event_type": "llm", "aggregation": "count"})
    # 23:30 UTC on the 22nd is already the 23rd in Paris.
    late = T0.replace(hour=23, minute=30) - timedelta(days=1)
    engine.ingest("acme", body(event("a", time=late), event("b", time=T0)), now=T0 + HOUR)
    utc = engine.usage("acme", "calls", start=T0 - timedelta(days=2), end=T0 + HOUR, window_size="day")
    paris = engine.usage(
        "acme", "calls", start=T0 - timedelta(days=2), end=T0 + HOUR, window_size="day", tz="Europe/Paris"
    )
    assert [r["events"] for r in utc.rows()] == [1, 1]
    assert [r["events"] for r in paris.rows()] == [2]


def test_atomic_batches_raise_with_every_issue(engine: Engine, now: datetime) -> None:
    make_tokens(engine)
    with pytest.raises(meter.BatchRejected) as info:
        too_old = event("b", tokens=1, time=T0 - timedelta(days=100))
        engine.ingest("acme", body(event("a", tokens=1), too_old, {"x": 1}), atomic=True, now=now)
    assert [i["index"] for i in info.value.issues] == [1, 2]
    assert engine.usage("acme", "tokens", start=T0, end=T0 + HOUR).total() == 0
    # A meter that cannot read an event warns; it never rejects an atomic batch.
    result = engine.ingest("acme", body(event("c", tokens=1), event("d", tokens="x")), atomic=True, now=now)
    assert (result.accepted, result.issues, [w.code for w in result.warnings]) == (2, [], ["value_invalid"])


@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"not json", "invalid_json"), (b"[]", "empty_batch"), (b"[" + b"1," * 10_000 + b"1]", "too_many_events")],
)
def test_bad_requests_raise_invalid_input_with_a_code(engine: Engine, payload: bytes, code: str) -> None:
    with pytest.raises(meter.InvalidInput) as info:
        engine.ingest("acme", payload)
    assert info.value.code == code
    assert isinstance(info.value, ValueError)


def test_meter_errors_say_what_to_fix(engine: Engine) -> None:
    with pytest.raises(meter.InvalidInput, match="needs a value_property"):
        engine.create_meter("acme", {"slug": "s", "event_type": "t", "aggregation": "sum"})
    make_tokens(engine)
    with pytest.raises(meter.AlreadyExists):
        make_tokens(engine)
    with pytest.raises(meter.NotFound):
        engine.get_meter("other-tenant", "tokens")
    with pytest.raises(meter.InvalidInput, match="not a dimension"):
        engine.usage("acme", "tokens", start=T0, end=T0 + HOUR, group_by=["region"])
    with pytest.raises(ValueError, match="timezone-aware"):
        engine.usage("acme", "tokens", start=T0.replace(tzinfo=None), end=T0 + HOUR)
    assert [m.slug for m in engine.list_meters("acme")] == ["tokens"]


def test_concurrent_callers_share_commits(engine: Engine, now: datetime) -> None:
    """Threads ingest at once (the GIL is released); group commit must keep every event exactly once."""
    make_tokens(engine)
    errors: list[BaseException] = []

    def send(worker: int) -> None:
        try:
            for b in range(20):
                events = [event(f"w{worker}-{b}-{i}", tokens=1, model="m") for i in range(50)]
                engine.ingest("acme", body(*events), now=now)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert engine.usage("acme", "tokens", start=T0, end=T0 + HOUR).total() == 4 * 20 * 50
    assert engine.stats().accepted == 4000


def test_a_closed_engine_refuses_work_and_reopens(tmp_path: Path, now: datetime) -> None:
    e = Engine(tmp_path / "db")
    make_tokens(e)
    e.ingest("acme", body(event("a", tokens=3)), now=now)
    e.close()
    with pytest.raises(meter.EngineClosed):
        e.ingest("acme", body(event("b", tokens=3)), now=now)
    with Engine(tmp_path / "db") as again:
        assert again.usage("acme", "tokens", start=T0, end=T0 + HOUR).total() == 3
        assert again.failure() is None


def test_report_json_round_trips_through_msgspec(engine: Engine, now: datetime) -> None:
    raw = engine._inner.ingest("acme", body(event("a")), now_us=to_micros(now))
    assert json.loads(raw) == {"accepted": 1, "duplicates": 0, "issues": [], "warnings": []}


def test_a_meter_that_cannot_read_an_event_never_stops_the_others(tmp_path: Path, now: datetime) -> None:
    """The issue's scenario: a `cached_tokens` meter on `llm.request` events that mostly lack the property.

    Each event is accepted and counted by `tokens`; `cached` skips the ones it cannot read, and says so.
    """
    with Engine(tmp_path / "db") as e:
        e.create_meter(
            "acme",
            {
                "slug": "tokens",
                "event_type": "llm.request",
                "aggregation": "sum",
                "value_property": "$.tokens",
                "group_by": {"model": "$.model"},
            },
        )
        e.create_meter(
            "acme",
            {"slug": "cached", "event_type": "llm.request", "aggregation": "sum", "value_property": "$.cached_tokens"},
        )
        batch = body(
            event("a", type="llm.request", tokens=100, model="gpt"),
            event("b", type="llm.request", tokens=10, cached_tokens=4, model="gpt"),
            event("c", type="llm.request", tokens=1, cached_tokens="lots", model="gpt"),
            event("d", type="llm.request", tokens=2, cached_tokens=1, model=["gpt"]),
        )
        result = e.ingest("acme", batch, now=now)
        assert (result.accepted, result.issues) == (4, [])
        assert [(w.index, w.id, w.meter, w.code) for w in result.warnings] == [
            (0, "a", "cached", "value_missing"),
            (2, "c", "cached", "value_invalid"),
            (3, "d", "tokens", "dimension_invalid"),
        ]
        assert "cached_tokens" in result.warnings[0].message
        assert e.ingest("acme", batch, now=now).warnings == [], "a duplicate repeats no warning"

        def totals(engine: Engine) -> tuple[Decimal, Decimal]:
            return (
                engine.usage("acme", "tokens", start=T0, end=T0 + HOUR).total(),
                engine.usage("acme", "cached", start=T0, end=T0 + HOUR).total(),
            )

        assert totals(e) == (111, 5)
        assert [(c.meter, c.events) for c in e.stats().skipped] == [("cached", 2), ("tokens", 1)]
        page = e.skipped("acme", "cached", start=T0, end=T0 + HOUR, limit=1)
        assert [(s.id, s.code, s.time) for s in page.events] == [("a", "value_missing", T0)]
        rest = e.skipped("acme", "cached", start=T0, end=T0 + HOUR, after=page.next)
        assert ([s.id for s in rest.events], rest.next) == (["c"], None)
        with pytest.raises(meter.InvalidInput):
            e.skipped("acme", "cached", start=T0, end=T0 + HOUR, limit=0)
    with Engine(tmp_path / "db") as again:
        assert totals(again) == (111, 5), "the same counts after a reopen"
        twin = again.create_meter(
            "acme",
            {"slug": "cached2", "event_type": "llm.request", "aggregation": "sum", "value_property": "$.cached_tokens"},
        )
        assert (twin.backfill.events, twin.backfill.unreadable) == (2, 2), "the backfill decides as ingest did"
        assert again.usage("acme", "cached2", start=T0, end=T0 + HOUR).total() == 5


def test_usage_json_is_the_per_row_encoding(engine: Engine, now: datetime) -> None:
    """The engine's column-wise JSON equals, byte for byte, what the API built per row before.

    Value as a plain decimal, times in ISO 8601; on a result with varied dimensions, nulls, escapes and values.
    """
    import msgspec

    engine.create_meter(
        "acme",
        {
            "slug": "v",
            "event_type": "llm",
            "aggregation": "sum",
            "value_property": "$.v",
            "group_by": {"model": "$.model", "region": "$.region"},
        },
    )
    values = ["0", "1200", "2.5", "-1.25", "0.000000001", "123456789012345678.123456789", "-3", "1E+2", "7.10"]
    models = ["gpt", None, 'quote " back \\ slash', "line\nfeed \t tab \u0001 ctl", "é 日本 🚀", "", "/</>"]
    events = [
        event(
            f"e{i}",
            subject=f"cust-{i % 3}",
            time=T0 + timedelta(minutes=(i * 7) % 55),
            v=values[i % 9],
            **({"model": models[i % 7]} if models[i % 7] is not None else {}),
            **({"region": "eu"} if i % 2 else {}),
        )
        for i in range(60)
    ]
    engine.ingest("acme", body(*events), now=now)
    for window, group_by, tz in [
        (None, [], None),
        ("minute", ["subject", "model", "region"], None),
        ("hour", ["model"], "Europe/Paris"),
        ("day", ["region", "subject"], "Asia/Kolkata"),
    ]:
        usage = engine.usage("acme", "v", start=T0 - HOUR, end=T0 + HOUR, window_size=window, group_by=group_by, tz=tz)
        old = [
            {
                **row,
                "window_start": row["window_start"].isoformat(),
                "window_end": row["window_end"].isoformat(),
                "value": format(row["value"].normalize(), "f"),
            }
            for row in usage.rows()
        ]
        assert usage.json_rows() == msgspec.json.encode(old), (window, group_by)
    empty = engine.usage("acme", "v", start=T0 + 2 * HOUR, end=T0 + 3 * HOUR)
    assert empty.json_rows() == b"[]"
