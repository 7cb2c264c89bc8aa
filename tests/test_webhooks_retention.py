"""Outgoing events are kept for the retention, then deleted with their deliveries: never while one is pending."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from meter.billing.store import InvoiceStore
from meter.money.webhooks import deliveries, endpoints, records
from meter.money.webhooks.endpoints import EndpointBody
from meter.money.webhooks.retention import DEFAULT_RETENTION, prune, prune_all, retention_from_env
from test_webhooks import T0, Clock, FakeReceiver, emit, run, the_delivery, worker

DAY = timedelta(days=1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InvoiceStore]:
    s = InvoiceStore(tmp_path / "invoices")
    yield s
    s.close()


def outbox(store: InvoiceStore, tenant: str) -> list[str]:
    return [key for key, _ in records.scan(store, records.outbox_key(tenant))]


def test_events_older_than_the_retention_go_with_their_deliveries(store: InvoiceStore) -> None:
    created = endpoints.create(store, "acme", EndpointBody("http://127.0.0.1:9/h"), allow_private=True, now=T0)
    clock, receiver = Clock(T0), FakeReceiver([200])
    old = [emit(store, "acme", "invoice.paid", T0, n=n) for n in range(3)]
    run(worker(store, clock, receiver), lambda: False)
    assert [the_delivery(store, "acme", e).status for e in old] == ["delivered"] * 3
    recent = emit(store, "acme", "invoice.paid", T0 + 40 * DAY, n=3)
    assert prune(store, "acme", T0 + 40 * DAY - DEFAULT_RETENTION, batch=2) == 3, "in batches of 2: 2, then 1"
    assert outbox(store, "acme") == ["outbox/acme/000000000004"]
    assert list(records.scan(store, "delivery/acme/event/")) == []
    assert list(records.scan(store, records.by_endpoint_key("acme", created.id))) == []
    assert deliveries.find_event(store, "acme", recent)[0] == 4


def test_a_pending_delivery_keeps_its_event_and_every_later_one(store: InvoiceStore) -> None:
    endpoints.create(store, "acme", EndpointBody("http://127.0.0.1:9/h"), allow_private=True, now=T0)
    clock, receiver = Clock(T0), FakeReceiver([500])
    first = emit(store, "acme", "invoice.paid", T0)
    run(worker(store, clock, receiver), lambda: False)
    assert the_delivery(store, "acme", first).status == "pending"
    emit(store, "acme", "invoice.paid", T0 + DAY)
    assert prune(store, "acme", T0 + 60 * DAY) == 0
    assert len(outbox(store, "acme")) == 2


def test_events_not_yet_fanned_out_are_kept_and_a_tenant_without_endpoints_is_pruned_too(
    store: InvoiceStore,
) -> None:
    endpoints.create(store, "acme", EndpointBody("http://127.0.0.1:9/h"), allow_private=True, now=T0)
    emit(store, "acme", "invoice.paid", T0)  # the worker has not seen it yet
    emit(store, "solo", "invoice.created", T0)  # a tenant that never registered an endpoint
    emit(store, "solo", "invoice.created", T0 + 31 * DAY)
    assert prune_all(store, T0 + 31 * DAY, DEFAULT_RETENTION) == 1
    assert len(outbox(store, "acme")) == 1 and outbox(store, "solo") == ["outbox/solo/000000000002"]


def test_the_retention_is_a_positive_number_of_days(monkeypatch: pytest.MonkeyPatch) -> None:
    assert retention_from_env() == DEFAULT_RETENTION
    monkeypatch.setenv("METER_EVENT_RETENTION_DAYS", "7.5")
    assert retention_from_env() == timedelta(days=7.5)
    for bad in ("0", "-1", "week"):
        monkeypatch.setenv("METER_EVENT_RETENTION_DAYS", bad)
        with pytest.raises(ValueError, match="METER_EVENT_RETENTION_DAYS"):
            retention_from_env()


def test_the_worker_prunes_in_its_first_round_then_hourly(store: InvoiceStore) -> None:
    endpoints.create(store, "acme", EndpointBody("http://127.0.0.1:9/h"), allow_private=True, now=T0)
    clock, receiver = Clock(T0), FakeReceiver([200])
    w = worker(store, clock, receiver)
    first = emit(store, "acme", "invoice.paid", T0)
    run(w, lambda: False)
    assert the_delivery(store, "acme", first).status == "delivered" and len(outbox(store, "acme")) == 1
    clock.now = T0 + 31 * DAY  # the first round pruned at T0; the next one, more than an hour later, prunes again
    run(w, lambda: False)
    assert outbox(store, "acme") == []
