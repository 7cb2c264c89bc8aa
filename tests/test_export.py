"""Usage exported to Parquet: the files hold exactly what usage queries answer.

They survive being written again, and restate a day when a late event changes it.
"""

from __future__ import annotations

import json
from datetime import UTC, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
from conftest import T0, body, event
from meter import Engine
from meter.catalog.billing import BillingCatalog, Customer
from meter.lake.catalog import export_catalog
from meter.lake.usage import export_usage

NOW = T0 + timedelta(days=4)
START, END = T0 - timedelta(days=30), T0 + timedelta(days=30)


def setup(engine: Engine) -> None:
    engine.create_meter(
        "acme",
        {
            "slug": "tokens",
            "event_type": "llm",
            "aggregation": "sum",
            "value_property": "$.tokens",
            "group_by": {"model": "$.model"},
        },
    )
    engine.create_meter("acme", {"slug": "calls", "event_type": "llm", "aggregation": "count"})
    events = [
        event(f"e{i}", f"cust-{i % 4}", time=T0 + timedelta(hours=i * 7), tokens=f"{i}.5", model=f"m{i % 3}")
        for i in range(12)
    ]
    engine.ingest("acme", body(*events), now=NOW)
    engine.ingest("other", body(event("x", tokens=5, model="m0")), now=NOW)


def exported_totals(out: Path, meter: str) -> dict[str, Decimal]:
    table = ds.dataset(
        out / "usage" / "tenant=acme" / f"meter={meter}", format="parquet", partitioning="hive"
    ).to_table()
    totals: dict[str, Decimal] = {}
    for row in table.to_pylist():
        totals[row["customer"]] = totals.get(row["customer"], Decimal(0)) + row["value"]
    return totals


def queried_totals(engine: Engine, meter: str) -> dict[str, Decimal]:
    rows = engine.usage("acme", meter, start=START, end=END, group_by=["subject"]).rows()
    return {r["subject"]: r["value"] for r in rows}


def test_export_totals_equal_query_totals_for_every_meter_and_customer(engine: Engine, tmp_path: Path) -> None:
    setup(engine)
    out = tmp_path / "export"
    summary = export_usage(engine, ["acme"], out)
    days = sorted(p.name for p in (out / "usage" / "tenant=acme" / "meter=tokens").iterdir())
    assert days == ["date=2026-11-23", "date=2026-11-24", "date=2026-11-25", "date=2026-11-26"]
    assert summary.files == 8
    for meter in ("tokens", "calls"):
        assert exported_totals(out, meter) == queried_totals(engine, meter)
    row = ds.dataset(out / "usage" / "tenant=acme" / "meter=tokens", format="parquet").to_table().to_pylist()[0]
    assert set(row) == {"window_start", "window_end", "customer", "model", "value", "events"}
    assert row["window_end"] - row["window_start"] == timedelta(minutes=1)
    assert not (out / "usage" / "tenant=other").exists(), "only the tenants asked for"


def test_only_changed_days_are_rewritten_and_a_late_event_restates_its_day(engine: Engine, tmp_path: Path) -> None:
    setup(engine)
    out = tmp_path / "export"
    first = export_usage(engine, ["acme"], out)
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    again = export_usage(engine, ["acme"], out)
    assert (again.files, again.unchanged) == (0, first.files), "nothing changed, nothing rewritten"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == files
    assert not list(out.rglob(".*.tmp")), "no temporary file is left behind"

    engine.ingest(
        "acme", body(event("late", "cust-0", time=T0 + timedelta(minutes=5), tokens="100", model="m0")), now=NOW
    )
    late = export_usage(engine, ["acme"], out)
    assert late.files == 2, "the late event's day, for each of the two meters"
    assert exported_totals(out, "tokens") == queried_totals(engine, "tokens")
    assert exported_totals(out, "tokens")["cust-0"] == Decimal("100") + sum(Decimal(f"{i}.5") for i in (0, 4, 8))
    changed = {p for p in out.rglob("*.parquet") if p.stat().st_mtime_ns != files.get(p)}
    assert {p.parent.name for p in changed} == {"date=2026-11-23"}

    engine.delete_meter("acme", "calls")
    export_usage(engine, ["acme"], out)
    assert not (out / "usage" / "tenant=acme" / "meter=calls").exists(), "a deleted meter's files go too"


def test_catalog_snapshot_keeps_prices_exact(engine: Engine, tmp_path: Path) -> None:
    from datetime import datetime

    import msgspec
    from meter.catalog.billing import BillingCatalog, Customer, Subscription
    from meter.catalog.prices import Price
    from meter.lake.catalog import export_catalog

    setup(engine)
    catalog = BillingCatalog(tmp_path / "billing")
    jan = datetime(2026, 1, 1, tzinfo=UTC)
    catalog.put_customer("acme", Customer(id="cust-1", name="One", currency="EUR"))
    catalog.create_plan("acme", "pro", "Pro")
    prices = [
        msgspec.convert(p, Price)
        for p in (
            {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.0000025"},
            {
                "id": "seats",
                "currency": "EUR",
                "model": "graduated",
                "meter": "seats",
                "tiers": [{"from": "0", "up_to": "10", "unit_price": "5"}, {"from": "10", "unit_price": "4"}],
            },
        )
    ]
    catalog.add_plan_version("acme", "pro", jan, prices)
    catalog.put_subscription("acme", Subscription(id="s1", customer="cust-1", plan="pro", version=1, start=jan))
    summary = export_catalog(catalog, engine, ["acme"], tmp_path / "out")
    catalog.close()
    assert (summary.files, summary.rows) == (4, 6)
    meters = ds.dataset(tmp_path / "out" / "catalog" / "tenant=acme" / "meters.parquet").to_table().to_pylist()
    assert {m["slug"]: m["aggregation"] for m in meters} == {"tokens": "sum", "calls": "count"}
    rows = ds.dataset(tmp_path / "out" / "catalog" / "tenant=acme" / "prices.parquet").to_table().to_pylist()
    assert {r["id"]: r["unit_price"] for r in rows} == {"tokens": Decimal("0.0000025"), "seats": None}
    assert '"up_to":"10"' in next(r["parameters"] for r in rows if r["id"] == "seats")


def test_raw_events_are_appended_commit_by_commit(engine: Engine, tmp_path: Path) -> None:
    from meter.lake.events import export_events

    setup(engine)
    out = tmp_path / "export"
    first = export_events(engine, ["acme"], out, page=5)
    events = ds.dataset(out / "events" / "tenant=acme", format="parquet", partitioning="hive").to_table()
    assert events.num_rows == first.rows == 12, "every accepted event of acme, once"
    assert sorted(events.column("id").to_pylist()) == sorted(f"e{i}" for i in range(12))
    assert export_events(engine, ["acme"], out).files == 0, "nothing new, nothing written"

    engine.ingest(
        "acme",
        body(
            event("late", "cust-0", time=T0 + timedelta(minutes=5), tokens="1", model="m0"),
            event("e0", "cust-0", time=T0, tokens="0.5", model="m0"),
        ),
        now=NOW,
    )
    assert export_events(engine, ["acme"], out).rows == 1, "the new event only; the duplicate was never retained"
    row = next(
        r
        for r in ds.dataset(out / "events" / "tenant=acme" / "date=2026-11-23", format="parquet").to_table().to_pylist()
        if r["id"] == "late"
    )
    assert row["subject"] == "cust-0" and json.loads(row["data"]) == {"tokens": "1", "model": "m0"}, "the bytes sent"


def test_the_catalog_snapshot_is_written_again_only_after_a_catalog_write(tmp_path: Path) -> None:
    """The snapshot keeps the catalog's sequence number: unchanged, only the meters are written; changed, all."""
    with Engine(tmp_path / "usage") as engine:
        catalog = BillingCatalog(tmp_path / "billing")
        catalog.put_customer("t", Customer(id="c1", name="One", currency="EUR"))
        first = export_catalog(catalog, engine, ["t"], tmp_path / "out")
        again = export_catalog(catalog, engine, ["t"], tmp_path / "out")
        assert (first.unchanged, again.unchanged, again.files) == (0, 3, 1)
        catalog.put_customer("t", Customer(id="c2", name="Two", currency="USD", timezone="Europe/Paris"))
        after = export_catalog(catalog, engine, ["t"], tmp_path / "out")
        assert after.unchanged == 0
        rows = pq.read_table(tmp_path / "out" / "catalog" / "tenant=t" / "customers.parquet").to_pylist()
        assert [(r["id"], r["timezone"]) for r in rows] == [("c1", "UTC"), ("c2", "Europe/Paris")]
        catalog.close()
