"""Anomaly alerts (meter.live.anomaly): a customer's recent rate against its own 24-hour baseline, told once a slot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from conftest import body, event
from meter import Engine
from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog, Customer
from meter.live.alerts import Alert, AlertBook, check_alert
from meter.live.anomaly import AnomalyJob, anomalies, window_of

NOW = datetime(2026, 11, 23, 10, 5, 30, tzinfo=UTC)
SPIKE = check_alert(Alert(id="spike", kind="anomaly", meter="tokens", factor=Decimal(5), window_minutes=10))


def test_the_window_is_whole_minutes_and_its_slot_is_window_sized() -> None:
    start, end, slot = window_of(SPIKE, NOW)
    assert (start, end, slot) == (
        NOW.replace(minute=55, hour=9, second=0),
        NOW.replace(second=0),
        NOW.replace(minute=0, second=0),
    )
    assert window_of(SPIKE, NOW + timedelta(minutes=4))[2] == slot
    assert window_of(SPIKE, NOW + timedelta(minutes=5))[2] == slot + timedelta(minutes=10)


def test_a_rate_above_factor_times_the_baseline_is_an_anomaly() -> None:
    day = Decimal(1440)  # 1 a minute over the baseline's 24 hours
    recent = {"c1": Decimal(51), "c2": Decimal(50), "new": Decimal(10_000)}
    [c] = anomalies(SPIKE, recent, {"c1": day, "c2": day}, NOW)
    assert (c.type, c.customer, c.value, c.baseline, c.threshold) == (
        "usage.anomaly",
        "c1",
        Decimal("5.1"),
        Decimal(1),
        Decimal(5),
    )
    assert anomalies(SPIKE, recent, {"c1": day}, NOW, customers={"c2"}) == [], "c1 is outside the plan's scope"


def test_the_job_emits_once_per_customer_and_slot(engine: Engine, tmp_path: Path) -> None:
    engine.create_meter(
        "acme", {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
    )
    catalog = BillingCatalog(tmp_path / "billing", meters=engine)
    store = InvoiceStore(tmp_path / "invoices")
    try:
        for c in ("c1", "c2", "c3"):
            catalog.put_customer("acme", Customer(id=c, name=c, currency="EUR"))
        hours = [NOW.replace(minute=0, second=0) - timedelta(hours=h) for h in range(1, 25)]
        events = [event(f"{c}-{h:%d%H}", c, time=h, tokens=60) for c in ("c1", "c2") for h in hours]
        spike = NOW.replace(minute=1, second=0)
        events += [event("c1-spike", "c1", time=spike, tokens=100), event("c2-more", "c2", time=spike, tokens=30)]
        events += [event("c3-first", "c3", time=spike, tokens=10_000)]
        engine.ingest("acme", body(*events), now=NOW)
        AlertBook(catalog, engine).create("acme", SPIKE)
        job = AnomalyJob(engine, catalog, store, lambda: ["acme", "quiet"])

        [first] = job.run_once(NOW)
        assert first.type == "usage.anomaly" and first.data["customer"] == "c1" and Decimal(first.data["value"]) == 10
        assert job.run_once(NOW) == [], "a retry"
        assert job.run_once(NOW + timedelta(minutes=1)) == [], "the same slot"
        [again] = job.run_once(NOW + timedelta(minutes=5))
        assert again.data["customer"] == "c1" and again.data["period"] != first.data["period"], "still running hot"
        assert job.run_once(NOW + timedelta(minutes=15)) == [], "the spike left the window"
    finally:
        store.close()
        catalog.close()
