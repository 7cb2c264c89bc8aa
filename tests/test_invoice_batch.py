"""The columnar invoice run against the per-subscription one: the same invoices, byte for byte.

A varied tenant of a few hundred subscriptions (every price model, fees in advance and in arrears, usage, four
currencies with 0, 2 and 3 decimals, time zones, calendar and anniversary cycles of every length, starts and ends
inside cycles, discounts, a commit, a plan change, an id that needs quoting, usage a matrix does not price, starts
between minutes) is invoiced twice from the same export: by ``invoice_period`` as it is (plain subscriptions over
whole tables, the others one by one) and with every subscription taken one by one. The stored invoices, the errors
and the invoices export must be identical.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from conftest import YEAR, event
from meter import Engine
from meter.billing import batch, invoicing
from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog, Commit, Customer, Discount, Subscription
from meter.catalog.prices import Price
from meter.lake.catalog import export_catalog, load_snapshot
from meter.lake.events import export_events
from meter.lake.invoices import export_invoices
from meter.lake.usage import export_usage

T = "acme"
SEP, OCT, NOV, DEC = (datetime(2026, m, 1, tzinfo=UTC) for m in (9, 10, 11, 12))
CURRENCIES = {"USD": "UTC", "EUR": "Europe/Paris", "JPY": "Asia/Tokyo", "KWD": "America/New_York"}


def prices(currency: str) -> list[dict[str, Any]]:
    c = {"currency": currency}
    tiers = [
        {"from": "0", "up_to": "100", "unit_price": "0.05", "flat_fee": "1"},
        {"from": "100", "up_to": "1000", "unit_price": "0.0125"},
        {"from": "1000", "unit_price": "0.001"},
    ]
    return [
        {**c, "id": "base", "model": "flat", "amount": "30", "cadence": "in_advance"},
        {**c, "id": "support", "model": "flat", "amount": "9.99", "cadence": "in_arrears"},
        {
            **c,
            "id": "per_unit",
            "model": "per_unit",
            "meter": "tokens",
            "unit_price": "0.0123",
            "minimum": "5",
            "maximum": "4000",
            "free_allowance": "20",
        },
        {**c, "id": "graduated", "model": "graduated", "meter": "tokens", "tiers": tiers},
        {**c, "id": "volume", "model": "volume", "meter": "tokens", "tiers": tiers, "minimum": "2"},
        {
            **c,
            "id": "package",
            "model": "package",
            "meter": "requests",
            "package": {"size": "100", "price": "0.7", "rounding": "up"},
        },
        {
            **c,
            "id": "package_down",
            "model": "package",
            "meter": "requests",
            "package": {"size": "3", "price": "0.25", "rounding": "down"},
        },
        {
            **c,
            "id": "matrix",
            "model": "matrix",
            "meter": "tokens",
            "free_allowance": "50",
            "maximum": "40",
            "matrix": {
                "dimensions": ["model"],
                "entries": [
                    {"values": {"model": "a"}, "unit_price": "0.003"},
                    {"values": {"model": "b"}, "unit_price": "0.0000011"},
                ],
            },
        },
        {
            **c,
            "id": "percent",
            "model": "percentage",
            "meter": "spend",
            "percentage": {"percent": "2.5", "min_fee": "1", "max_fee": "20"},
        },
        {
            **c,
            "id": "per_event",
            "model": "percentage",
            "meter": "spend",
            "percentage": {"percent": "2.9", "per": "event", "min_fee": "0.30", "max_fee": "5"},
        },
    ]


def build(tmp: Path) -> tuple[Engine, Path]:
    rng = random.Random(12)
    engine = Engine(tmp / "usage", durability="buffered", backdate_window=YEAR, dedup_window=YEAR)
    engine.create_meter(
        T,
        {
            "slug": "tokens",
            "event_type": "llm",
            "aggregation": "sum",
            "value_property": "$.tokens",
            "group_by": {"model": "$.model"},
        },
    )
    engine.create_meter(T, {"slug": "requests", "event_type": "llm", "aggregation": "count"})
    engine.create_meter(T, {"slug": "spend", "event_type": "pay", "aggregation": "sum", "value_property": "$.amount"})
    catalog = BillingCatalog(tmp / "billing", meters=engine)
    for currency in CURRENCIES:
        every = [msgspec.convert(p, Price) for p in prices(currency)]
        plan = f"plan-{currency.lower()}"
        catalog.create_plan(T, plan, plan)
        catalog.add_plan_version(T, plan, SEP - timedelta(days=60), every)
        catalog.add_plan_version(T, plan, SEP - timedelta(days=30), every[::-1][:6])
    events = []
    cycles, anchors = ["monthly", "monthly", "quarterly", "annual"], ["calendar", "calendar", "anniversary"]
    for i in range(300):
        currency = list(CURRENCIES)[i % 4]
        customer = f"c{i:03d}" if i != 7 else "o'brien"
        catalog.put_customer(
            T, Customer(id=customer, name=customer, currency=currency, timezone=list(CURRENCIES.values())[(i // 4) % 4])
        )
        start = rng.choice(
            [
                SEP - timedelta(days=200),
                OCT + timedelta(days=rng.randrange(31), hours=rng.randrange(24)),
                NOV + timedelta(days=rng.randrange(30), minutes=rng.randrange(1440)),
                DEC,
                SEP + timedelta(days=rng.randrange(30), minutes=rng.randrange(1440)),
            ]
        )
        if i % 50 == 11:
            start += timedelta(seconds=7)  # usage is measured over whole minutes: these cannot be invoiced
        end = rng.choice([None, None, None, start + timedelta(days=rng.randrange(1, 90))])
        if i == 13:
            start, end = SEP - timedelta(days=200), None
        terms: dict[str, Any] = {}
        if i % 23 == 5:
            terms["discounts"] = [Discount(id="d", start=SEP, percent=Decimal("12.5"))]
        if i % 7 == 3:
            fixed = Decimal("1.5") if currency != "JPY" else Decimal(2)
            terms["discounts"] = [
                Discount(id="inv", start=SEP, end=NOV, amount=fixed),
                Discount(id="p", start=OCT, percent=Decimal("33.333"), price="volume"),
                Discount(id="all", start=SEP, percent=Decimal(100)),
                Discount(id="base", start=OCT, amount=Decimal(7), price="package"),
            ]
        if i % 29 == 8 and currency == "EUR":
            terms["discounts"] = [Discount(id="odd", start=SEP, amount=Decimal("5.000"))]  # more decimals than EUR
        if i % 41 == 6:
            terms["commits"] = [Commit(id="k", amount=Decimal(20), start=SEP, end=DEC + timedelta(days=90))]
        catalog.put_subscription(
            T,
            Subscription(
                id=f"s{i:03d}",
                customer=customer,
                plan=f"plan-{currency.lower()}",
                version=1 + (i % 5 == 4),
                start=start,
                end=end,
                cycle=cycles[i % 4],
                anchor=anchors[i % 3],
                **terms,
            ),
        )
        if i % 37 == 9 and end is None:
            catalog.migrate_subscription(T, f"s{i:03d}", 2 - (i % 5 == 4), start + timedelta(days=20))
        if i == 13:  # a model the matrix does not price: this one cannot be invoiced, the others are
            events += [
                event(f"z{i}-{m}", customer, time=m + timedelta(days=3), tokens=5, model="zzz") for m in (SEP, OCT, NOV)
            ]
        for j in range(rng.randrange(6)):
            at = OCT - timedelta(days=40) + timedelta(days=rng.randrange(75), minutes=rng.randrange(1440))
            events.append(
                event(
                    f"e{i}-{j}",
                    customer,
                    time=at,
                    tokens=rng.choice([1, 37, 400, 5000, "12.5"]),
                    model=rng.choice("ab"),
                )
            )
            events.append(event(f"p{i}-{j}", customer, type="pay", time=at, amount=rng.choice(["5", "100", "1000.55"])))
    for k in range(0, len(events), 500):
        result = engine.ingest(T, msgspec.json.encode(events[k : k + 500]), now=DEC + timedelta(days=1))
        assert not result.issues, result.issues
    out = tmp / "export"
    export_usage(engine, [T], out)
    export_events(engine, [T], out)
    export_catalog(catalog, engine, [T], out)
    catalog.close()
    return engine, out


@pytest.fixture(scope="module")
def tenant(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("batch")
    engine, out = build(tmp)
    yield tmp, out
    engine.close()


def one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    table = invoicing._batched

    def nothing(snapshot: Any, *args: Any) -> Any:
        rows, _ = table(snapshot, *args)
        return invoicing.pl.int_range(snapshot.subscription_table.height, dtype=invoicing.pl.UInt32, eager=True), None

    monkeypatch.setattr(invoicing, "_batched", nothing)


@pytest.mark.parametrize("month", ["2026-10", "2026-11", "2026-12"])
def test_the_columnar_run_stores_and_exports_what_the_per_subscription_run_does(
    tenant: Any, month: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp, out = tenant
    monkeypatch.setattr(batch, "CHUNK", 37)  # several chunks, merged with the invoices read from the store
    monkeypatch.setattr(batch, "RATE_SLICE", 101)  # and several slices rated
    snapshot = load_snapshot(out, T)
    stores, exports, errors = {}, {}, {}
    for way in ("columnar", "one_by_one"):
        if way == "one_by_one":
            one_by_one(monkeypatch)
        store = InvoiceStore(tmp / f"invoices-{way}-{month}")
        priced = invoicing.invoice_period(snapshot, out, store, month)
        errors[way] = sorted((e.subscription, e.code) for e in priced.errors)
        if month != "2026-10":
            assert ("s013", "unpriced_usage") in errors[way]
        if way == "columnar":
            assert priced.fresh is not None and len(priced.fresh.ids) > 100, "most go the columnar way"
        target = tmp / f"export-{way}-{month}"
        export_invoices(store, [T], target, {T: priced.fresh} if priced.fresh is not None else None)
        stores[way] = _stored(store)
        exports[way] = {
            name: pq.read_table(target / "invoices" / f"tenant={T}" / f"{name}.parquet")
            for name in ("invoices", "invoice_lines", "credit_notes")
        }
        assert [i.id for i in priced.invoices] == sorted(
            (i.id for i in priced.invoices), key=lambda i: (i.split("-")[0], i)
        )
        store.close()
    assert errors["columnar"] == errors["one_by_one"]
    assert stores["columnar"].keys() == stores["one_by_one"].keys()
    for key, value in stores["one_by_one"].items():
        assert stores["columnar"][key] == value, key
    for name, table in exports["one_by_one"].items():
        assert exports["columnar"][name].equals(table), name


def _stored(store: InvoiceStore) -> dict[bytes, Any]:
    """What the store holds, its outgoing events as the sorted list of what they say (not when they were written)."""
    stored: dict[bytes, Any] = {}
    events = []
    for key, value in store._db.items():
        if key.startswith(b"outbox/"):
            event = msgspec.json.decode(value)
            events.append(msgspec.json.encode({k: v for k, v in event.items() if k not in ("created_at", "id", "seq")}))
        else:
            stored[key] = value
    stored[b"outbox"] = sorted(events)
    return stored


def test_a_chunk_the_columnar_texts_cannot_write_goes_one_by_one(tenant: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk whose texts cannot be written exactly is invoiced the per-subscription way.

    (NotPlain: a decimal of more than 28 digits, say.) The rest of the run stays columnar; the invoices are the same.
    """
    tmp, out = tenant
    monkeypatch.setattr(batch, "CHUNK", 37)
    snapshot = load_snapshot(out, T)
    chunk = batch._chunk

    def refuse(tenant_id: str, drafts: Any, *args: Any) -> Any:
        if "s040" in drafts.get_column("id").to_list():
            raise batch.NotPlain("as if a detail had 29 digits")
        return chunk(tenant_id, drafts, *args)

    stores = {}
    for way in ("refused", "one_by_one"):
        if way == "refused":
            monkeypatch.setattr(batch, "_chunk", refuse)
        else:
            one_by_one(monkeypatch)
        store = InvoiceStore(tmp / f"invoices-{way}-refused")
        priced = invoicing.invoice_period(snapshot, out, store, "2026-11")
        if way == "refused":
            assert priced.fresh is not None and 50 < len(priced.fresh.ids), "the other chunks stay columnar"
            assert not any(i.startswith("s040-") for i in priced.fresh.ids), "s040 went one by one"
            export_invoices(store, [T], tmp / "export-refused", {T: priced.fresh})
        stores[way] = _stored(store)
        store.close()
    assert stores["refused"] == stores["one_by_one"]
    assert any(key.startswith(b"invoice/acme/s040-") for key in stores["refused"])
