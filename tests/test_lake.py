"""The lake's datasets round-trip: what a write puts in the files, the matching read gives back, awkward values too.

Decimals at the edges of decimal128(38, 9), times in other zones, empty tables, ids that cannot name a directory; and
the atomic write: a write that fails halfway leaves the old file whole, and readers never see the temporary.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import T0, body, event
from meter import Engine
from meter.billing.invoices import Invoice, InvoiceLine, LineDetail
from meter.billing.store import InvoiceStore
from meter.catalog.billing import (
    Address,
    BillingCatalog,
    Commit,
    Credit,
    Customer,
    Discount,
    Migration,
    Subscription,
)
from meter.catalog.prices import Price
from meter.encoding import encode_json
from meter.exceptions import InvalidInput
from meter.lake import catalog, events, files, invoices, layout, usage
from polars.testing import assert_frame_equal

NOW = T0 + timedelta(days=2)
DAY_END = T0.replace(hour=23, minute=59)  # the last minute of T0's UTC day
VALUES = ["0.000000001", "-3", "123456789012.123456789", "1E+3", "0"]


def _usage_engine(engine: Engine) -> None:
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
    engine.create_meter("acme", {"slug": "idle", "event_type": "nothing", "aggregation": "count"})
    sent = [
        # Both sides of midnight UTC, dimension values that would be awkward as paths (they are never paths).
        event(f"e{i}", f"cüst-{i % 3}", time=DAY_END + timedelta(minutes=i * 7 - 14), tokens=v, model=m)
        for i, (v, m) in enumerate(zip(VALUES * 2, ["a=b/c", "模型", "..", "m", "m"] * 2, strict=True))
    ]
    result = engine.ingest("acme", body(*sent), now=NOW)
    assert not result.issues, result.issues


def _sorted(frame: pl.DataFrame, *keys: str) -> pl.DataFrame:
    return frame.sort(*keys).select(sorted(frame.columns))


def test_usage_reads_back_as_the_engine_gives_it(engine: Engine, tmp_path: Path) -> None:
    _usage_engine(engine)
    out = tmp_path / "out"
    summary = usage.export_usage(engine, ["acme"], out)
    assert summary.files == 2, "two UTC days"
    scanned = usage.scan(out, "acme", "tokens")
    assert scanned is not None
    got = scanned.collect()
    assert set(got.columns) == {*usage.COLUMNS, "model"}
    start, end = T0 - timedelta(days=1), T0 + timedelta(days=2)
    want = pl.from_arrow(engine.minutes("acme", "tokens", start=start, end=end).read_all())
    assert isinstance(want, pl.DataFrame) and want.height == len(VALUES) * 2
    keys = ("customer", "window_start", "model")
    assert_frame_equal(_sorted(got.drop("date"), *keys), _sorted(want, *keys))
    assert got.get_column("date").unique().sort().to_list() == [T0.date(), (T0 + timedelta(days=1)).date()]
    assert usage.scan(out, "acme", "idle") is None, "a meter without usage has no files"
    assert usage.scan(out, "other", "tokens") is None, "nor has a tenant never exported"


def test_partitions_export_their_own_files_of_one_dataset(tmp_path: Path) -> None:
    """A cluster's partitions (engines holding disjoint customers) write beside each other; a scan reads them all."""
    out = tmp_path / "out"
    spec = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
    engines = [Engine(tmp_path / f"p{n}") for n in range(2)]
    try:
        for n, engine in enumerate(engines):
            engine.create_meter("acme", spec)
            sent = [event(f"e{n}-{i}", f"c{n}", time=T0 + timedelta(minutes=i), tokens=i + 1) for i in range(3)]
            assert not engine.ingest("acme", body(*sent), now=NOW).issues
            assert usage.export_usage(engine, ["acme"], out, log_partition=n).files == 1
        day = out / "usage" / "tenant=acme" / "meter=tokens" / f"date={T0:%Y-%m-%d}"
        assert sorted(f.name for f in day.iterdir()) == ["part-p0.parquet", "part-p1.parquet"]
        assert sorted(f.name for f in (out / "usage" / "tenant=acme").glob("_*")) == [
            "_exported-p0.json",
            "_exported-p1.json",
        ]
        scanned = usage.scan(out, "acme", "tokens")
        assert scanned is not None
        totals = scanned.group_by("customer").agg(pl.col("value").sum()).sort("customer").collect()
        assert totals.rows() == [("c0", Decimal(6)), ("c1", Decimal(6))]
        # Each partition's manifest is its own: nothing changed, nothing written.
        assert usage.export_usage(engines[0], ["acme"], out, log_partition=0).unchanged == 1
        # A meter deleted in one partition (the other has not applied the deletion yet) loses that partition's files.
        engines[0].delete_meter("acme", "tokens")
        usage.export_usage(engines[0], ["acme"], out, log_partition=0)
        assert sorted(f.name for f in day.iterdir()) == ["part-p1.parquet"]
    finally:
        for engine in engines:
            engine.close()


def test_events_read_back_as_the_engine_retained_them(engine: Engine, tmp_path: Path) -> None:
    _usage_engine(engine)
    out = tmp_path / "out"
    assert events.scan(out, "acme") is None
    retained, _ = engine.retained_events("acme", 0, 1000)
    summary = events.export_events(engine, ["acme"], out, page=4)
    assert summary.rows == retained.num_rows == len(VALUES) * 2
    scanned = events.scan(out, "acme")
    assert scanned is not None
    got = scanned.collect()
    want = pl.from_arrow(retained)
    assert isinstance(want, pl.DataFrame)
    assert_frame_equal(_sorted(got.drop("date"), "time", "id"), _sorted(want, "time", "id"))
    assert (got.get_column("date") == got.get_column("time").dt.date()).all(), "partitioned by the UTC day"


def test_ids_that_would_need_escaping_are_refused_not_written(engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for bad in ("..", "a/b", "a=b", "", "x" * 256, "t\x00", "café"):
        with pytest.raises(InvalidInput) as info:
            usage.export_usage(engine, [bad], out)
        assert info.value.code == "invalid_tenant"
        with pytest.raises(InvalidInput):
            layout.usage_meter(out, "acme", bad)
    assert not tmp_path.joinpath("out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["db"]
    assert layout.usage_day_file(out, "acme_1-2", "tokens", T0) == (
        out / "usage" / "tenant=acme_1-2" / "meter=tokens" / "date=2026-11-23" / "part-0.parquet"
    )


def test_a_write_that_fails_halfway_leaves_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "d" / "part-0.parquet"
    old = pa.table({"x": pa.array([1, 2, 3], pa.int64())})
    assert files.write_parquet(old, path) == 3

    def batches() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch({"x": pa.array([4], pa.int64())})
        raise OSError("the disk went away")

    with pytest.raises(OSError, match="went away"):
        files.write_parquet(pa.RecordBatchReader.from_batches(old.schema, batches()), path)
    assert pq.read_table(path).equals(old)
    assert ds.dataset(path.parent, format="parquet").to_table().equals(old), "readers skip the torn temporary"
    assert [p.name for p in path.parent.iterdir() if not p.name.startswith(layout.HIDDEN_PREFIXES)] == [path.name]

    new = pa.table({"x": pa.array([5], pa.int64())})
    files.write_parquet(new, path)
    assert pq.read_table(path).equals(new)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "the next write replaces the temporary"


def test_a_manifest_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "t" / layout.MANIFEST
    assert files.read_manifest(path, dict[str, int], {}) == {}
    files.write_manifest({"a": 1}, path)

    def torn(tmp: Path) -> None:
        tmp.write_bytes(b'{"a":')
        raise OSError("killed")

    with pytest.raises(OSError):
        files.replace(path, torn)
    assert files.read_manifest(path, dict[str, int], {}) == {"a": 1}


# The catalog snapshot

JAN = datetime(2026, 1, 1, tzinfo=UTC)
KOLKATA = timezone(timedelta(hours=5, minutes=30))


def _price(**fields: Any) -> Price:
    return msgspec.convert({"currency": "KWD", **fields}, Price)


PRICES = [
    _price(
        id="base",
        model="flat",
        amount="1000",
        cadence="in_advance",
        minimum="0",
        maximum="999999999999999999.999999999",
    ),
    _price(id="tiny", model="per_unit", meter="tokens", unit_price="0.000000001", free_allowance="0.5"),
    _price(
        id="tiers",
        model="graduated",
        meter="tokens",
        tiers=[{"from": "0", "up_to": "10", "unit_price": "5", "flat_fee": "1"}, {"from": "10", "unit_price": "4"}],
    ),
    _price(id="pack", model="package", meter="tokens", package={"size": "1000", "price": "0.5", "rounding": "down"}),
    _price(id="pct", model="percentage", meter="tokens", percentage={"percent": "2.5", "per": "event", "min_fee": "1"}),
    _price(
        id="grid",
        model="matrix",
        meter="tokens",
        matrix={"dimensions": ["model"], "entries": [{"values": {"model": "模型"}, "unit_price": "0.0000025"}]},
    ),
]


def _catalog(tmp_path: Path, engine: Engine) -> BillingCatalog:
    _usage_engine(engine)
    billing = BillingCatalog(tmp_path / "billing")
    billing.put_customer(
        "acme",
        Customer(
            id="cüst-0",
            name='Zoë "Z" Ørsted',
            currency="KWD",
            timezone="America/New_York",
            email="z@example.com",
            address=Address(line1="1 Rue du Bac", city="Paris", country="FR"),
            metadata={"tier": "gold", "note": "ü, 模型"},
        ),
    )
    billing.put_customer("acme", Customer(id="plain", name="Plain", currency="KWD"))
    billing.create_plan("acme", "pro", "Pro")
    billing.add_plan_version("acme", "pro", JAN, PRICES)
    billing.add_plan_version("acme", "pro", JAN + timedelta(days=31), PRICES[:2])
    billing.put_subscription(
        "acme",
        Subscription(
            id="s1",
            customer="cüst-0",
            plan="pro",
            version=2,
            start=datetime(2026, 1, 15, 9, 30, tzinfo=KOLKATA),
            end=datetime(2027, 1, 15, tzinfo=KOLKATA),
            cycle="quarterly",
            anchor="anniversary",
            threshold=Decimal("1000.125"),
            overrides=[_price(id="tiny", model="per_unit", meter="tokens", unit_price="0.000000002")],
            commits=[Commit(id="k", amount=Decimal("500"), start=JAN, end=JAN + timedelta(days=365), kind="postpaid")],
            credits=[Credit(id="c", amount=Decimal("7"), start=JAN, end=JAN + timedelta(days=30))],
            discounts=[Discount(id="d", start=JAN, percent=Decimal("12.5"), price="tiny")],
            migrations=[Migration(from_version=1, to_version=2, at=JAN + timedelta(days=40))],
        ),
    )
    billing.put_subscription("acme", Subscription(id="s2", customer="plain", plan="pro", version=1, start=JAN))
    return billing


def test_the_catalog_snapshot_reads_back_as_the_catalog_holds_it(engine: Engine, tmp_path: Path) -> None:
    billing = _catalog(tmp_path, engine)
    out = tmp_path / "out"
    try:
        catalog.export_catalog(billing, engine, ["acme"], out)
        snapshot = catalog.load_snapshot(out, "acme")
        assert snapshot.customers == {c.id: c for c in billing.list_customers("acme")}
        assert snapshot.customer("plain") == billing.list_customers("acme")[1] and snapshot.customer("x") is None
        assert snapshot.subscriptions == billing.list_subscriptions("acme")
        [plan] = billing.list_plans("acme")
        assert snapshot.prices == {("pro", v.version): v.prices for v in plan.versions}
        assert snapshot.meters == {m.slug: m.spec() for m in engine.list_meters("acme")}
        sub = snapshot.subscriptions[0]
        assert snapshot.prices_of(sub, 2)[1].unit_price == Decimal("0.000000002"), "the override"
        assert snapshot.subscription_table.schema["end"] == pl.Datetime("us", "UTC")
        assert snapshot.subscription_table.get_column("threshold").to_list() == [Decimal("1000.125"), None]
    finally:
        billing.close()


def test_the_snapshot_built_in_memory_equals_the_one_read_back(engine: Engine, tmp_path: Path) -> None:
    """The invoice run takes the tables it writes instead of reading them back: the same snapshot either way."""
    billing = _catalog(tmp_path, engine)
    out = tmp_path / "out"
    try:
        for _ in range(2):  # written, then unchanged (the files serve as they are)
            fresh = catalog.snapshot_of("acme", catalog.refresh_catalog(billing, engine, "acme", out))
            read = catalog.load_snapshot(out, "acme")
            assert (fresh.prices, fresh.meters) == (read.prices, read.meters)
            assert_frame_equal(fresh.customer_table, read.customer_table)
            assert_frame_equal(fresh.subscription_table, read.subscription_table)
            assert fresh.subscriptions == read.subscriptions and fresh.customers == read.customers
    finally:
        billing.close()


def test_an_empty_tenant_has_an_empty_snapshot(engine: Engine, tmp_path: Path) -> None:
    billing = BillingCatalog(tmp_path / "billing")
    out = tmp_path / "out"
    try:
        with pytest.raises(InvalidInput) as info:
            catalog.load_snapshot(out, "nobody")
        assert info.value.code == "no_snapshot"
        assert catalog.read_meters(out, "nobody") is None
        summary = catalog.export_catalog(billing, engine, ["nobody"], out)
        assert (summary.files, summary.rows) == (4, 0)
        for snapshot in (
            catalog.load_snapshot(out, "nobody"),
            catalog.snapshot_of("nobody", catalog.refresh_catalog(billing, engine, "nobody", out)),
        ):
            assert (snapshot.prices, snapshot.meters, snapshot.customers, snapshot.subscriptions) == ({}, {}, {}, [])
            assert snapshot.subscription_table.height == 0 and "start" in snapshot.subscription_table.columns
        meters = catalog.read_meters(out, "nobody")
        assert meters is not None and meters.height == 0
    finally:
        billing.close()


# Invoices


def _invoice(number: int, lines: list[InvoiceLine]) -> Invoice:
    total = sum((line.amount for line in lines), Decimal(0))
    return Invoice(
        id=f"inv-{number}",
        tenant="acme",
        customer="cüst-0",
        subscription="s1",
        currency="USD",
        reason="cycle",
        period_start=datetime(2026, 11, 1, tzinfo=KOLKATA),
        period_end=datetime(2026, 12, 1, tzinfo=KOLKATA),
        issued_at=datetime(2026, 11, 1, tzinfo=KOLKATA),
        lines=lines,
        subtotal=total,
        total=total,
        period="2026-11",
    )


def _line(amount: str, **fields: Any) -> InvoiceLine:
    return InvoiceLine(
        kind="usage",
        description="tokens, 模型",
        amount=Decimal(amount),
        period_start=datetime(2026, 10, 1, tzinfo=UTC),
        period_end=datetime(2026, 11, 1, tzinfo=UTC),
        **fields,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InvoiceStore]:
    opened = InvoiceStore(tmp_path / "invoices")
    yield opened
    opened.close()


def test_invoices_read_back_as_the_store_holds_them(store: InvoiceStore, tmp_path: Path) -> None:
    out = tmp_path / "out"
    detail = LineDetail(
        component="tier 1", units=Decimal("1E+3"), unit_price=Decimal("0.000000001"), subtotal=Decimal(0)
    )
    lines = [
        _line("0.01", quantity=Decimal("99999999999999999999.999999999"), details=[detail], meter="tokens"),
        _line("-0.01", corrects=["inv-0", "inv-00"], key="s1|p|1|a|b", version=1, timing="in_arrears"),
    ]
    for invoice in (_invoice(2, lines), _invoice(1, []), _invoice(3, lines[:1])):
        store.save_draft(invoice)
    store.finalize("acme", "inv-3")
    store.credit("acme", "inv-3", Decimal("0.01"), "goodwill, ü")
    summary = invoices.export_invoices(store, ["acme"], out)
    assert summary.files == 3
    tables = invoices.read_invoices(out, "acme")
    assert tables is not None
    stored = store.list("acme")
    assert [i.id for i in stored] == ["inv-1", "inv-2", "inv-3"]

    def row(value: msgspec.Struct, schema: pa.Schema) -> dict[str, Any]:
        found = msgspec.to_builtins(value, builtin_types=(datetime, Decimal))
        return {name: found.get(name) for name in schema.names}

    assert tables.invoices.to_pylist() == [row(i, invoices.INVOICE_SCHEMA) for i in stored]
    want = []
    for invoice in stored:
        for n, line in enumerate(invoice.lines, start=1):
            expected = row(line, invoices.LINE_SCHEMA) | {"invoice": invoice.id, "number": invoice.number, "line": n}
            expected |= {"details": encode_json(line.details).decode(), "corrects": ", ".join(line.corrects) or None}
            want.append(expected)
    assert tables.lines.to_pylist() == want
    assert '"units":"1000"' in want[0]["details"], "decimals in details are plain text"
    assert tables.credit_notes.to_pylist() == [row(n, invoices.NOTE_SCHEMA) for n in store.credit_notes("acme")]
    assert tables.invoices.column("period_start")[0].as_py() == datetime(2026, 10, 31, 18, 30, tzinfo=UTC)


def test_a_tenant_without_invoices_exports_three_empty_tables(store: InvoiceStore, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert invoices.read_invoices(out, "acme") is None
    invoices.export_invoices(store, ["acme"], out)
    tables = invoices.read_invoices(out, "acme")
    assert tables is not None
    for table, schema in zip(
        (tables.invoices, tables.lines, tables.credit_notes),
        (invoices.INVOICE_SCHEMA, invoices.LINE_SCHEMA, invoices.NOTE_SCHEMA),
        strict=True,
    ):
        assert table.num_rows == 0 and table.schema.equals(schema)
        assert pq.read_schema(layout.invoices_file(out, "acme", "invoices")).names == invoices.INVOICE_SCHEMA.names
