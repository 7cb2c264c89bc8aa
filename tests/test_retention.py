"""Retention of retained events after the Parquet export, and roll-ups of old aggregates (``Engine.maintain``).

The clock moves through ``now=`` overrides, never sleeps; the background maintenance is off (``maintenance_interval``
None) so that only the test decides when it runs.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner
from conftest import T0, body, event
from meter import Engine, InvalidInput
from meter.lake.events import export_events
from meter.lake.usage import export_usage
from meter.server.app import MeterApp
from meter.server.lifecycle import engine_options_from_env

DAY = timedelta(days=1)
TOKENS = {
    "slug": "tokens",
    "event_type": "llm",
    "aggregation": "sum",
    "value_property": "$.tokens",
    "group_by": {"model": "$.model"},
}


def open_engine(path: Path, **options: object) -> Engine:
    return Engine(path, durability="buffered", maintenance_interval=None, **options)  # type: ignore[arg-type]


def send(engine: Engine, tag: str, n: int, day: int) -> None:
    """`n` events at T0 + `day` days (a few minutes apart), received then."""
    at = T0 + day * DAY
    events = [
        event(f"{tag}-{i}", f"cust-{i % 3}", time=at + timedelta(minutes=i % 7), tokens=str(i + 1), model=f"m{i % 2}")
        for i in range(n)
    ]
    assert engine.ingest("acme", body(*events), now=at + timedelta(minutes=10)).accepted == n


def retained(engine: Engine) -> int:
    table, _ = engine.retained_events("acme")
    return int(table.num_rows)


def exported_ids(out: Path) -> list[str]:
    table = ds.dataset(out / "events" / "tenant=acme", format="parquet", partitioning="hive").to_table()
    return sorted(table.column("id").to_pylist())


def test_events_are_dropped_only_once_exported_and_past_retention(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "db", retention=3 * DAY)
    engine.create_meter("acme", TOKENS)
    send(engine, "a", 5, 0)
    send(engine, "b", 4, 5)
    engine.day_counts("acme", "tokens")  # the aggregates are written: nothing waits for replay
    before = engine.usage("acme", "tokens", start=T0 - DAY, end=T0 + 6 * DAY).total()

    # Past retention, but never exported: kept, and said so.
    report = engine.maintain(now=T0 + 10 * DAY)
    assert report.dropped == [] and [(h.tenant, h.events) for h in report.held_back] == [("acme", 9)]
    assert [(h.tenant, h.events) for h in engine.stats().maintenance.held_back] == [("acme", 9)]
    assert retained(engine) == 9
    app = MeterApp(tmp_path / "server")
    app.engine = engine
    metrics = app.metrics()
    assert 'meter_retained_events_held_back{tenant="acme"} 9' in metrics and "meter_maintenance_healthy 1" in metrics

    # The export writes them and tells the engine; the next run drops them. Usage stays.
    out = tmp_path / "export"
    assert export_events(engine, ["acme"], out).rows == 9
    report = engine.maintain(now=T0 + 10 * DAY)
    assert [(d.tenant, d.through_seq) for d in report.dropped] == [("acme", 2)] and report.held_back == []
    assert retained(engine) == 0
    assert engine.usage("acme", "tokens", start=T0 - DAY, end=T0 + 6 * DAY).total() == before

    # New events are retained and exported as before; the Parquet export holds every event once.
    send(engine, "c", 3, 10)
    assert retained(engine) == 3
    engine.maintain(now=T0 + 10 * DAY + timedelta(hours=1))
    assert retained(engine) == 3, "within retention"
    assert export_events(engine, ["acme"], out).rows == 3
    assert exported_ids(out) == sorted(
        [f"a-{i}" for i in range(5)] + [f"b-{i}" for i in range(4)] + [f"c-{i}" for i in range(3)]
    )
    # A meter created now is backfilled from what is retained: the API says so.
    created = engine.create_meter("acme", {"slug": "calls", "event_type": "llm", "aggregation": "count"})
    assert created.backfill.events == 3
    engine.close()

    # After a restart the export's mark stands: past retention, the last events go too.
    with open_engine(tmp_path / "db", retention=3 * DAY) as engine:
        report = engine.maintain(now=T0 + 20 * DAY)
        assert [d.through_seq for d in report.dropped] == [3]
        assert retained(engine) == 0
        assert engine.usage("acme", "tokens", start=T0 - DAY, end=T0 + 11 * DAY).total() == before + 6


def test_rolled_up_aggregates_answer_hours_exactly_and_refuse_minutes(tmp_path: Path) -> None:
    with open_engine(tmp_path / "db") as engine:
        engine.create_meter("acme", TOKENS)
        for day in range(3):
            send(engine, f"d{day}", 50, day)
        start, end = T0 - timedelta(hours=10), T0 + 3 * DAY - timedelta(hours=10)  # whole UTC days

        def hourly(tz: str | None = None) -> list[dict[str, object]]:
            return engine.usage(
                "acme", "tokens", start=start, end=end, window_size="hour", group_by=["subject", "model"], tz=tz
            ).rows()

        by_hour, by_hour_paris = hourly(), hourly("Europe/Paris")
        daily = engine.usage("acme", "tokens", start=start, end=end, window_size="day").rows()
        usage_before = tmp_path / "usage-before"
        export_usage(engine, ["acme"], usage_before)  # also writes every fold to RocksDB: nothing lands late

        report = engine.maintain(now=T0 + 45 * DAY)  # 40 days of minutes by default: every minute here goes
        assert report.done and report.keys_merged > 0
        assert hourly() == by_hour and hourly("Europe/Paris") == by_hour_paris
        assert engine.usage("acme", "tokens", start=start, end=end, window_size="day").rows() == daily
        with pytest.raises(InvalidInput) as refused:
            engine.usage("acme", "tokens", start=start, end=end, window_size="minute")
        assert refused.value.code == "resolution_unavailable" and "kept per hour" in str(refused.value)
        with pytest.raises(InvalidInput, match="kept per hour"):
            hourly("Asia/Kolkata")

        # The usage export of a new directory writes the same totals per day, as hourly rows.
        usage_after = tmp_path / "usage-after"
        export_usage(engine, ["acme"], usage_after)

        def per_day(out: Path) -> dict[str, Decimal]:
            table = ds.dataset(
                out / "usage" / "tenant=acme" / "meter=tokens", format="parquet", partitioning="hive"
            ).to_table()
            totals: dict[str, Decimal] = {}
            for row in table.to_pylist():
                totals[str(row["date"])] = totals.get(str(row["date"]), Decimal(0)) + row["value"]
            return totals

        assert per_day(usage_after) == per_day(usage_before)
        rows = ds.dataset(usage_after / "usage" / "tenant=acme", format="parquet", partitioning="hive").to_table()
        spans = {(r["window_end"] - r["window_start"]) for r in rows.to_pylist()}
        assert spans == {timedelta(hours=1)}


def test_settings_are_checked_and_meter_maintain_runs_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="back-dating window"):
        open_engine(tmp_path / "bad", minute_aggregates=timedelta(days=10))
    with pytest.raises(InvalidInput, match="maintenance_interval"):
        Engine(tmp_path / "bad", maintenance_interval=timedelta(0))
    data = tmp_path / "data"
    with open_engine(data / "usage") as engine:
        engine.create_meter("acme", TOKENS)
        send(engine, "a", 2, 0)
    from meter.cli import main

    result = CliRunner().invoke(main, ["maintain", "--data-dir", str(data), "--retention-days", "0"])
    assert result.exit_code == 0, result.output
    assert "rolled up" in result.output
    assert "held back for export: acme: 2 events" in result.output
    result = CliRunner().invoke(main, ["maintain", "--data-dir", str(data), "--minute-aggregates-days", "3"])
    assert result.exit_code == 2 and "back-dating window" in result.output


def test_serve_options_reach_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (
        ("METER_RETENTION_DAYS", "90"),
        ("METER_MINUTE_AGGREGATES_DAYS", "45.5"),
        ("METER_MAINTENANCE_EVERY", "30"),
    ):
        monkeypatch.setenv(name, value)
    assert engine_options_from_env() == {
        "retention": timedelta(days=90),
        "minute_aggregates": timedelta(days=45.5),
        "maintenance_interval": timedelta(seconds=30),
    }
