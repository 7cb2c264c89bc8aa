"""A period's quantities from the usage export (meter.billing.usage).

Each aggregation folded by hand, partitions outside the period never opened, refusals that say why, and the real
exporter's files giving the engine's totals.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import T0, body, event
from meter import Engine
from meter.billing.usage import meter_aggregations, period_quantities
from meter.catalog.prices import Price
from meter.exceptions import InvalidInput
from meter.lake.usage import export_usage
from meter.pricing import combination_key, price_frame, rate

D = Decimal
OCT, NOV = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)


def at(day: int, hour: int = 0, minute: int = 0, month: int = 10) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def write_minutes(
    out: Path, meter: str, rows: Sequence[dict[str, Any]], dims: Sequence[str] = (), tenant: str = "acme"
) -> None:
    """Rows (customer, dims..., start, value, events) written as export_usage writes them: one file per UTC day."""
    by_day: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_day.setdefault(f"{row['start']:%Y-%m-%d}", []).append(row)
    ts = pa.timestamp("us", "UTC")
    for day, day_rows in by_day.items():
        columns: dict[str, pa.Array] = {"customer": pa.array([r["customer"] for r in day_rows], pa.string())}
        for d in dims:
            columns[d] = pa.array([r.get(d) for r in day_rows], pa.string())
        columns["window_start"] = pa.array([r["start"] for r in day_rows], ts)
        columns["window_end"] = pa.array([r["start"] + timedelta(minutes=1) for r in day_rows], ts)
        columns["value"] = pa.array([D(r["value"]) for r in day_rows], pa.decimal128(38, 9))
        columns["events"] = pa.array([r.get("events", 1) for r in day_rows], pa.uint64())
        path = out / "usage" / f"tenant={tenant}" / f"meter={meter}" / f"date={day}" / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)


def requests(*rows: tuple[Any, ...], dimensions: bool = False) -> pl.DataFrame:
    """(charge, customer, meter, from, to[, dimensions]) rows."""
    data: dict[str, list[Any]] = {
        name: [r[i] for r in rows] for i, name in enumerate(("charge", "customer", "meter", "from", "to"))
    }
    schema: dict[str, pl.DataType] = {
        "charge": pl.String(),
        "customer": pl.String(),
        "meter": pl.String(),
        "from": pl.Datetime("us", "UTC"),
        "to": pl.Datetime("us", "UTC"),
    }
    if dimensions:
        data["dimensions"] = [r[5] if len(r) > 5 else None for r in rows]
        schema["dimensions"] = pl.List(pl.String)
    return pl.DataFrame(data, schema=schema)


def as_dict(quantities: pl.DataFrame) -> dict[tuple[Any, str | None], tuple[Decimal, int]]:
    return {(r["charge"], r["combination"]): (r["quantity"], r["events"]) for r in quantities.to_dicts()}


def test_a_months_sum_counts_the_minutes_in_from_to_and_opens_only_that_months_days(tmp_path: Path) -> None:
    write_minutes(
        tmp_path,
        "tokens",
        [
            {"customer": "c1", "start": at(30, 23, 59, month=9), "value": "1000"},  # before the period
            {"customer": "c1", "start": at(1), "value": "1.5", "events": 2},  # the first minute is in
            {"customer": "c1", "start": at(15, 12), "value": "2.25", "events": 3},
            {"customer": "c1", "start": at(31, 23, 59), "value": "0.000000001"},  # the last minute is in
            {"customer": "c2", "start": at(2), "value": "7", "events": 7},
            {"customer": "c9", "start": at(3), "value": "5"},  # no charge for this customer
        ],
    )
    write_minutes(tmp_path, "tokens", [{"customer": "c1", "start": NOV, "value": "1000"}])  # `to` is excluded
    meter_dir = tmp_path / "usage" / "tenant=acme" / "meter=tokens"
    # A partition outside the period that cannot be read, and what a crash or the exporter leaves beside the files:
    # reading any of them would fail, so success shows they were never opened.
    (meter_dir / "date=2026-11-02").mkdir()
    (meter_dir / "date=2026-11-02" / "part-0.parquet").write_bytes(b"not parquet")
    (meter_dir / "date=2026-10-15" / ".part-0.parquet.tmp").write_bytes(b"torn")
    (meter_dir.parent / "_exported.json").write_text("{}")

    got = period_quantities(
        tmp_path,
        "acme",
        requests(("a", "c1", "tokens", OCT, NOV), ("b", "c2", "tokens", OCT, NOV), ("none", "c3", "tokens", OCT, NOV)),
        {"tokens": "sum"},
    )
    assert got.schema == {
        "charge": pl.String,
        "combination": pl.String,
        "quantity": pl.Decimal(38, 9),
        "events": pl.UInt64,
    }
    assert as_dict(got) == {("a", None): (D("3.750000001"), 6), ("b", None): (D("7"), 7)}, (
        "a charge without usage has no row"
    )

    with pytest.raises(Exception, match="parquet|Parquet|footer|specification"):
        period_quantities(
            tmp_path, "acme", requests(("late", "c1", "tokens", NOV, NOV + timedelta(days=2))), {"tokens": "sum"}
        )


def test_the_same_usage_serves_charges_of_different_periods_and_customers(tmp_path: Path) -> None:
    write_minutes(
        tmp_path, "calls", [{"customer": "c1", "start": at(d), "value": str(d), "events": d} for d in range(1, 31)]
    )
    reqs = requests(
        ("first-half", "c1", "calls", OCT, at(16)),
        ("second-half", "c1", "calls", at(16), NOV),
        ("week", "c1", "calls", at(8), at(15)),
        ("naive", "c1", "calls", OCT, NOV),
    )
    got = as_dict(period_quantities(tmp_path, "acme", reqs, {"calls": "count"}))
    assert got == {
        ("first-half", None): (D(120), 120),
        ("second-half", None): (D(345), 345),
        ("week", None): (D(77), 77),
        ("naive", None): (D(465), 465),
    }


def test_naive_datetimes_are_utc_and_integer_charge_keys_pass_through(tmp_path: Path) -> None:
    write_minutes(tmp_path, "calls", [{"customer": "c1", "start": at(5), "value": "4", "events": 4}])
    reqs = pl.DataFrame(
        {
            "charge": [7],
            "customer": ["c1"],
            "meter": ["calls"],
            "from": [datetime(2026, 10, 5)],
            "to": [datetime(2026, 10, 6)],
        },
        schema_overrides={"charge": pl.UInt32},
    )
    got = period_quantities(tmp_path, "acme", reqs, {"calls": "count"})
    assert got.schema["charge"] == pl.UInt32
    assert as_dict(got) == {(7, None): (D(4), 4)}


def test_matrix_charges_get_one_quantity_per_combination_that_rating_prices(tmp_path: Path) -> None:
    rows = [
        {"customer": "c1", "model": "small", "kind": "in", "start": at(1), "value": "100"},
        {"customer": "c1", "model": "small", "kind": "in", "start": at(2), "value": "50"},
        {"customer": "c1", "model": "large", "kind": "out", "start": at(2), "value": "10"},
        {"customer": "c1", "model": "large", "kind": "in", "start": at(3), "value": "1"},
    ]
    write_minutes(tmp_path, "tokens", rows, dims=("model", "kind"))
    reqs = requests(
        ("matrix", "c1", "tokens", OCT, NOV, ["model", "kind"]),
        ("by-model", "c1", "tokens", OCT, NOV, ["model"]),
        ("total", "c1", "tokens", OCT, NOV, []),
        dimensions=True,
    )
    got = as_dict(period_quantities(tmp_path, "acme", reqs, {"tokens": "sum"}))
    small_in, large_out = (
        combination_key({"model": "small", "kind": "in"}),
        combination_key({"kind": "out", "model": "large"}),
    )
    assert got == {
        ("matrix", small_in): (D(150), 2),
        ("matrix", large_out): (D(10), 1),
        ("matrix", combination_key({"model": "large", "kind": "in"})): (D(1), 1),
        ("by-model", '{"model":"small"}'): (D(150), 2),
        ("by-model", '{"model":"large"}'): (D(11), 2),
        ("total", None): (D(161), 4),
    }

    entries = [
        ({"model": "small", "kind": "in"}, "0.001"),
        ({"model": "small", "kind": "out"}, "0.002"),
        ({"model": "large", "kind": "in"}, "0.01"),
        ({"model": "large", "kind": "out"}, "0.03"),
    ]
    matrix = msgspec.convert(
        {
            "id": "m",
            "currency": "USD",
            "model": "matrix",
            "meter": "tokens",
            "matrix": {
                "dimensions": ["model", "kind"],
                "entries": [{"values": v, "unit_price": p} for v, p in entries],
            },
        },
        Price,
    )
    per_unit = msgspec.convert(
        {"id": "u", "currency": "USD", "model": "per_unit", "meter": "tokens", "unit_price": "0.5"}, Price
    )
    charges = pl.DataFrame({"charge": ["matrix", "total"], "price_id": ["m", "u"]})
    quantities = period_quantities(tmp_path, "acme", reqs.filter(pl.col("charge") != "by-model"), {"tokens": "sum"})
    lines = rate(charges, price_frame([matrix, per_unit]), quantities.drop("events")).lines
    assert dict(zip(lines["charge"], lines["amount_exact"], strict=True)) == {
        "matrix": D("150") * D("0.001") + D(10) * D("0.03") + D(1) * D("0.01"),
        "total": D("80.5"),
    }


def test_min_max_and_avg_fold_exactly(tmp_path: Path) -> None:
    rows = [
        {"customer": "c1", "start": at(1), "value": "1.5", "events": 2},
        {"customer": "c1", "start": at(2), "value": "0.333333333", "events": 3},
        {"customer": "c1", "start": at(3), "value": "-4", "events": 1},
        # Ties at the 10th decimal: (1 + 2) / 2 and (1 + 0) / 2 nano-units round half to even, to 2 and 0.
        {"customer": "c2", "start": at(1), "value": "0.000000001"},
        {"customer": "c2", "start": at(2), "value": "0.000000002"},
        {"customer": "c3", "start": at(1), "value": "0.000000001"},
        {"customer": "c3", "start": at(2), "value": "0"},
    ]
    for meter in ("low", "high", "mean"):
        write_minutes(tmp_path, meter, rows)
    meters = {"low": "min", "high": "max", "mean": "avg"}
    reqs = requests(*[(f"{m}-{c}", c, m, OCT, NOV) for m in meters for c in ("c1", "c2", "c3")])
    got = {k[0]: v[0] for k, v in as_dict(period_quantities(tmp_path, "acme", reqs, meters)).items()}
    assert got["low-c1"] == D(-4) and got["high-c1"] == D("1.5")
    # (1.5 × 2 + 0.333333333 × 3 - 4) / 6 = -0.000000001 / 6, which rounds to 0.
    assert got["mean-c1"] == D(0)
    assert (got["mean-c2"], got["mean-c3"]) == (D("0.000000002"), D(0))
    events = as_dict(period_quantities(tmp_path, "acme", requests(("m", "c1", "mean", OCT, NOV)), meters))
    assert events == {("m", None): (D(0), 6)}


def test_latest_takes_the_last_minute_and_refuses_to_guess_between_combinations(tmp_path: Path) -> None:
    write_minutes(
        tmp_path,
        "storage",
        [
            {"customer": "c1", "region": "eu", "start": at(1), "value": "10"},
            {"customer": "c1", "region": "eu", "start": at(20), "value": "30"},
            {"customer": "c1", "region": "us", "start": at(20), "value": "5"},
            {"customer": "c1", "region": "us", "start": at(10), "value": "50"},
            {"customer": "c2", "region": "eu", "start": at(3), "value": "8"},
            {"customer": "c2", "region": "us", "start": at(3), "value": "8"},
            {"customer": "c2", "region": "us", "start": at(2), "value": "1"},
        ],
        dims=("region",),
    )
    meters = {"storage": "latest"}
    got = as_dict(
        period_quantities(
            tmp_path,
            "acme",
            requests(
                ("per-region", "c1", "storage", OCT, NOV, ["region"]),
                ("early", "c1", "storage", OCT, at(15)),
                ("same-value", "c2", "storage", OCT, NOV),
                dimensions=True,
            ),
            meters,
        )
    )
    assert got == {
        ("per-region", '{"region":"eu"}'): (D(30), 2),
        ("per-region", '{"region":"us"}'): (D(5), 2),
        ("early", None): (D(50), 2),
        ("same-value", None): (D(8), 3),
    }
    with pytest.raises(InvalidInput, match="which came last is unknown") as info:
        period_quantities(tmp_path, "acme", requests(("whole", "c1", "storage", OCT, NOV)), meters)
    assert info.value.code == "ambiguous_latest" and "'whole'" in info.value.message


@pytest.mark.parametrize(
    ("reqs", "meters", "code", "words"),
    [
        (requests(("a", "c1", "uniq", OCT, NOV)), {"uniq": "unique_count"}, "unsupported_meter", "counted twice"),
        (requests(("a", "c1", "nope", OCT, NOV)), {"tokens": "sum"}, "unknown_meter", "'nope'"),
        (
            requests(("a", "c1", "tokens", OCT, NOV, ["region"]), dimensions=True),
            {"tokens": "sum"},
            "invalid_dimensions",
            "'region' of meter 'tokens', which has 'model'",
        ),
        (
            requests(("a", "c1", "tokens", OCT + timedelta(seconds=30), NOV)),
            {"tokens": "sum"},
            "invalid_requests",
            "whole minutes",
        ),
        (requests(("a", "c1", "tokens", NOV, OCT)), {"tokens": "sum"}, "invalid_requests", "before"),
        (
            requests(("a", "c1", "tokens", OCT, NOV), ("a", "c2", "tokens", OCT, NOV)),
            {"tokens": "sum"},
            "invalid_requests",
            "repeated",
        ),
        (
            requests(("a", "c1", "tokens", OCT, NOV, ["model", "model"]), dimensions=True),
            {"tokens": "sum"},
            "invalid_requests",
            "distinct",
        ),
        (
            pl.DataFrame({"charge": ["a"], "customer": ["c1"], "meter": ["tokens"]}),
            {"tokens": "sum"},
            "invalid_requests",
            "'from'",
        ),
    ],
)
def test_refusals_name_what_to_fix(
    tmp_path: Path, reqs: pl.DataFrame, meters: dict[str, str], code: str, words: str
) -> None:
    write_minutes(tmp_path, "tokens", [{"customer": "c1", "model": "x", "start": at(1), "value": "1"}], dims=("model",))
    write_minutes(tmp_path, "uniq", [{"customer": "c1", "start": at(1), "value": "1"}])
    with pytest.raises(InvalidInput, match=words) as info:
        period_quantities(tmp_path, "acme", reqs, meters)
    assert info.value.code == code


def test_meters_without_exported_usage_give_no_rows_and_aggregations_come_from_the_catalog(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog" / "tenant=acme"
    catalog.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "slug": "tokens",
                    "event_type": "llm",
                    "aggregation": "sum",
                    "value_property": "$.tokens",
                    "group_by": "{}",
                },
                {"slug": "idle", "event_type": "llm", "aggregation": "max", "value_property": "$.x", "group_by": "{}"},
            ]
        ),
        catalog / "meters.parquet",
    )
    write_minutes(tmp_path, "tokens", [{"customer": "c1", "start": at(1), "value": "2"}])
    assert meter_aggregations(tmp_path, "acme") == {"tokens": "sum", "idle": "max"}
    got = period_quantities(tmp_path, "acme", requests(("a", "c1", "tokens", OCT, NOV), ("b", "c1", "idle", OCT, NOV)))
    assert as_dict(got) == {("a", None): (D(2), 1)}
    assert period_quantities(tmp_path, "acme", requests()).height == 0


def test_quantities_from_the_real_export_equal_the_engines_usage(tmp_path: Path) -> None:
    now = T0 + timedelta(days=3)
    with Engine(tmp_path / "db", durability="buffered") as engine:
        for slug, aggregation in (
            ("tokens", "sum"),
            ("calls", "count"),
            ("peak", "max"),
            ("mean", "avg"),
            ("gauge", "latest"),
        ):
            spec: dict[str, Any] = {
                "slug": slug,
                "event_type": "llm",
                "aggregation": aggregation,
                "group_by": {"model": "$.model"},
            }
            if aggregation != "count":
                spec["value_property"] = "$.tokens"
            engine.create_meter("acme", spec)
        # Values whose per-minute means are exact at 9 decimals (avg), spread over three days and four customers.
        events = [
            event(
                f"e{i}", f"cust-{i % 4}", time=T0 + timedelta(minutes=i * 37), tokens=f"{i % 7}.25", model=f"m{i % 3}"
            )
            for i in range(200)
        ]
        engine.ingest("acme", body(*events), now=now)
        summary = export_usage(engine, ["acme"], tmp_path / "out")
        assert summary.files > 5
        start, end = T0 + timedelta(hours=2), T0 + timedelta(days=2, minutes=31)
        customers = [f"cust-{c}" for c in range(5)]
        meters = {m.slug: m.aggregation for m in engine.list_meters("acme")}
        for slug in meters:
            reqs = requests(*[(f"{slug}/{c}", c, slug, start, end, ["model"]) for c in customers], dimensions=True)
            if slug != "gauge":  # latest over all models: ambiguous only if two models share the last minute
                reqs = pl.concat(
                    [reqs, requests(*[(f"{slug}/{c}/all", c, slug, start, end) for c in customers], dimensions=True)]
                )
            got = as_dict(period_quantities(tmp_path / "out", "acme", reqs, meters))
            for row in engine.usage("acme", slug, start=start, end=end, group_by=["subject", "model"]).rows():
                key = (f"{slug}/{row['subject']}", combination_key({"model": row["model"]}))
                assert got.pop(key) == (row["value"], row["events"]), key
            if slug != "gauge":
                for row in engine.usage("acme", slug, start=start, end=end, group_by=["subject"]).rows():
                    assert got.pop((f"{slug}/{row['subject']}/all", None)) == (row["value"], row["events"])
            assert got == {}, "no quantity the engine does not report (cust-4 has no usage)"
