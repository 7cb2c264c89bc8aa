"""End to end over HTTP: the real server (`meter serve`, granian) in a subprocess, talked to with httpx."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import httpx
import pytest
from conftest import body
from http_server import RECENT_DAY, Server, recent_event
from meter.catalog.keys import new_key

FROM, TO = (t.isoformat().replace("+00:00", "Z") for t in RECENT_DAY)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("server") / "data")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def acme(server: Server) -> httpx.Client:
    key = server.tenant_key("acme", ["ingest", "read", "admin"])
    client = server.client(key)
    r = client.post(
        "/v1/meters",
        json={
            "slug": "tokens",
            "event_type": "llm",
            "aggregation": "sum",
            "value_property": "$.tokens",
            "group_by": {"model": "$.model"},
        },
    )
    assert r.status_code == 201, r.text
    return client


def total(client: httpx.Client, **params: Any) -> str:
    r = client.get("/v1/meters/tokens/usage", params={"from": FROM, "to": TO, **params})
    assert r.status_code == 200, r.text
    return str(sum(float(row["value"]) for row in r.json()["data"]))


def test_ingest_query_duplicates_and_conflicts(acme: httpx.Client) -> None:
    batch = body(recent_event("h1", tokens=10, model="m1"), recent_event("h2", tokens="2.5", model="m2"))
    headers = {"content-type": "application/cloudevents-batch+json; charset=utf-8"}
    r = acme.post("/v1/events", content=batch, headers=headers)
    assert r.status_code == 200 and r.json() == {"accepted": 2, "duplicates": 0, "issues": [], "warnings": []}, r.text
    assert acme.post("/v1/events", content=batch, headers=headers).json()["duplicates"] == 2
    conflict = acme.post("/v1/events", content=body(recent_event("h1", tokens=99, model="m1")))
    assert conflict.status_code == 400
    assert conflict.json()["issues"][0]["code"] == "conflict"
    r = acme.get("/v1/meters/tokens/usage", params={"from": FROM, "to": TO, "group_by": "model", "filter[model]": "m2"})
    assert r.json()["data"][0]["value"] == "2.5"
    assert r.json()["data"][0]["model"] == "m2"


def test_invalid_events_are_reported_by_index(acme: httpx.Client) -> None:
    r = acme.post(
        "/v1/events", content=body(recent_event("i1", tokens=1, model="m"), {"id": "x"}, recent_event("i3", tokens="x"))
    )
    assert r.status_code == 200
    assert [(i["index"], i["code"]) for i in r.json()["issues"]] == [(1, "missing_field")]
    # An event its meter cannot read is accepted with a warning (the meter skips it), never rejected.
    assert r.json()["accepted"] == 2
    assert [(w["index"], w["meter"], w["code"]) for w in r.json()["warnings"]] == [(2, "tokens", "value_invalid")]
    bad = acme.post("/v1/events", content=b"{nope")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_json"


def test_gzip_bodies_are_accepted(acme: httpx.Client) -> None:
    payload = gzip.compress(body(recent_event("g1", tokens=5, model="gz")))
    r = acme.post("/v1/events", content=payload, headers={"content-encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


def test_zstd_bodies_are_accepted_and_bounded(acme: httpx.Client) -> None:
    import zstandard

    payload = zstandard.ZstdCompressor().compress(body(recent_event("z1", tokens=5, model="zstd")))
    r = acme.post("/v1/events", content=payload, headers={"content-encoding": "zstd"})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    bomb = zstandard.ZstdCompressor().compress(b"[" + b" " * (32 * 1024 * 1024) + b"]")
    assert acme.post("/v1/events", content=bomb, headers={"content-encoding": "zstd"}).status_code == 413
    assert acme.post("/v1/events", content=b"x", headers={"content-encoding": "br"}).status_code == 415


def test_limits_answer_413(acme: httpx.Client) -> None:
    huge = b"[" + b" " * (17 * 1024 * 1024) + b"]"
    assert acme.post("/v1/events", content=huge).status_code == 413
    bomb = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]")
    assert acme.post("/v1/events", content=bomb, headers={"content-encoding": "gzip"}).status_code == 413
    many = json.dumps([recent_event(f"m{i}") for i in range(10_001)]).encode()
    r = acme.post("/v1/events", content=many)
    assert r.status_code == 413 and r.json()["code"] == "too_many_events"


def test_auth_is_uniform_401_and_scoped_403(server: Server, acme: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": f"Bearer {new_key()}"}):
        with httpx.Client() as anonymous:
            r = anonymous.post(server.url + "/v1/events", content=body(recent_event("a1")), headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    ingest_only = server.client(server.tenant_key("acme", ["ingest"]))
    assert ingest_only.get("/v1/meters").status_code == 403
    assert ingest_only.post("/v1/admin/tenants", json={"id": "evil"}).status_code == 403


def test_tenants_are_isolated(server: Server, acme: httpx.Client) -> None:
    other = server.client(server.tenant_key("globex", ["ingest", "read", "admin"]))
    assert other.get("/v1/meters/tokens").status_code == 404
    other.post(
        "/v1/meters", json={"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
    )
    before = total(acme)
    r = other.post("/v1/events", content=body(recent_event("h1", tokens=1000, model="m1")))
    assert r.json()["accepted"] == 1, "the same id in another tenant is another event"
    assert total(acme) == before
    assert total(other) == "1000.0"


def test_revoked_keys_stop_working(server: Server) -> None:
    key = server.tenant_key("acme", ["read"])
    client = server.client(key)
    assert client.get("/v1/meters").status_code == 200
    with server.client(server.admin_key) as admin:
        key_id = next(
            k["id"]
            for k in admin.get("/v1/admin/keys", params={"tenant": "acme"}).json()
            if key.startswith(k["display"]) and not k["revoked"]
        )
        assert admin.delete(f"/v1/admin/keys/{key_id}").status_code == 200
    assert client.get("/v1/meters").status_code == 401


def test_usage_as_csv_and_arrow(acme: httpx.Client) -> None:
    import pyarrow as pa

    acme.post("/v1/events", content=body(recent_event("f1", tokens=7, model="fmt")))
    params = {"from": FROM, "to": TO, "group_by": "model", "filter[model]": "fmt"}
    csv = acme.get("/v1/meters/tokens/usage", params=params, headers={"accept": "text/csv"})
    assert csv.headers["content-type"] == "text/csv"
    assert csv.text.splitlines()[0] == '"window_start","window_end","model","value","events"'
    arrow = acme.get(
        "/v1/meters/tokens/usage", params=params, headers={"accept": "application/vnd.apache.arrow.stream"}
    )
    table = pa.ipc.open_stream(arrow.content).read_all()
    assert table.column("value").type == pa.decimal128(38, 9)
    assert str(table.column("value")[0].as_py().normalize()) == "7"


def test_metrics_and_openapi(server: Server, acme: httpx.Client) -> None:
    with httpx.Client(base_url=server.url) as anonymous:
        # /metrics has every tenant's totals: the operator's only.
        assert anonymous.get("/metrics").status_code == 401
        assert acme.get("/metrics").json()["code"] == "operator_only"
        metrics = server.client(server.admin_key).get("/metrics").text
        assert "meter_events_accepted_total" in metrics and 'meter_http_responses_total{status="200"}' in metrics
        assert 'meter_commit_seconds_bucket{le="+Inf"}' in metrics and "meter_commit_seconds_count" in metrics
        assert 'meter_webhook_attempts_total{outcome="failed"} 0' in metrics
        spec = anonymous.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert "IngestResult" in spec["components"]["schemas"] and "/v1/events" in spec["paths"]


def test_billing_catalog_over_http(server: Server, acme: httpx.Client) -> None:
    price = {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.002"}
    assert acme.post("/v1/customers", json={"id": "cust-1", "name": "One", "currency": "EUR"}).status_code == 200
    assert acme.post("/v1/plans", json={"id": "pro", "name": "Pro"}).status_code == 201
    r = acme.post("/v1/plans/pro/versions", json={"effective_from": "2026-01-01T00:00:00Z", "prices": [price]})
    assert r.status_code == 201 and r.json()["version"] == 1, r.text
    sub = {"id": "s1", "customer": "cust-1", "plan": "pro", "version": 1, "start": "2026-01-01T00:00:00Z"}
    assert acme.post("/v1/subscriptions", json=sub).status_code == 200
    assert acme.get("/v1/plans/pro").json()["versions"][0]["prices"][0]["unit_price"] == "0.002"
    assert [c["id"] for c in acme.get("/v1/customers").json()] == ["cust-1"]

    bad = acme.post("/v1/subscriptions", json={**sub, "version": 3})
    assert (
        bad.status_code == 400 and bad.json()["code"] == "invalid_catalog" and "no version 3" in bad.json()["message"]
    )
    gap = {
        **price,
        "model": "graduated",
        "unit_price": None,
        "tiers": [{"from": "0", "up_to": "10", "unit_price": "1"}, {"from": "20", "unit_price": "1"}],
    }
    r = acme.post("/v1/plans/pro/versions", json={"effective_from": "2026-02-01T00:00:00Z", "prices": [gap]})
    assert r.status_code == 400 and "a gap" in r.json()["message"]
    assert acme.get("/v1/customers/nobody").status_code == 404

    r = acme.post("/v1/plans/pro/versions", json={"effective_from": "2026-02-01T00:00:00Z", "prices": [price]})
    assert r.status_code == 201, r.text
    r = acme.post("/v1/subscriptions/s1/migrate", json={"version": 2, "at": "2026-02-10T00:00:00Z"})
    assert r.status_code == 200 and r.json()["migrations"] == [
        {"from_version": 1, "to_version": 2, "at": "2026-02-10T00:00:00Z"}
    ], r.text
    in_use = acme.delete("/v1/customers/cust-1")
    assert (
        in_use.status_code == 409
        and in_use.json()["code"] == "in_use"
        and "subscription 's1'" in in_use.json()["message"]
    )
    assert acme.delete("/v1/subscriptions/s1").status_code == 200
    assert acme.delete("/v1/customers/cust-1").status_code == 200
    assert acme.delete("/v1/customers/cust-1").status_code == 404

    other = server.client(server.tenant_key("acme-other", ["read", "admin"]))
    assert other.get("/v1/customers").json() == []
    assert other.get("/v1/plans/pro").status_code == 404
    ingest_only = server.client(server.tenant_key("acme", ["ingest"]))
    assert ingest_only.post("/v1/customers", json={"id": "x", "name": "X", "currency": "EUR"}).status_code == 403


def test_the_server_exports_on_a_schedule(tmp_path_factory: pytest.TempPathFactory) -> None:
    import time

    import pyarrow.dataset as ds

    tmp = tmp_path_factory.mktemp("scheduled")
    s = Server(tmp / "data", args=("--export-every", "0.2", "--export-dir", str(tmp / "out")))
    try:
        client = s.client(s.tenant_key("acme", ["ingest", "read", "admin"]))
        client.post(
            "/v1/meters", json={"slug": "calls", "event_type": "llm", "aggregation": "count"}
        ).raise_for_status()
        client.post("/v1/events", json=[recent_event(f"e{i}", f"cust-{i % 3}") for i in range(9)]).raise_for_status()
        admin = s.client(s.admin_key)

        def exports() -> int:
            metrics = admin.get("/metrics").text
            return int(next(x for x in metrics.splitlines() if x.startswith("meter_exports_total ")).split()[1])

        # Two more exports finished: the second began after the events were acknowledged.
        target, deadline = exports() + 2, time.monotonic() + 60
        while exports() < target and time.monotonic() < deadline:
            time.sleep(0.1)
        assert exports() >= target
    finally:
        s.stop()
    table = ds.dataset(tmp / "out" / "usage" / "tenant=acme" / "meter=calls", format="parquet").to_table()
    assert sum(v for v in table.column("events").to_pylist()) == 9


def test_invoices_over_http(server: Server) -> None:
    from datetime import datetime, timedelta

    key = server.tenant_key("billing-co", ["ingest", "read", "admin"])
    client = server.client(key)
    assert (
        client.post(
            "/v1/meters",
            json={"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"},
        ).status_code
        == 201
    )
    # The cycle starting this month bills last month's usage: events of the last day of last month.
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    r = client.post(
        "/v1/events",
        json=[recent_event(f"u{i}", "cust-1", time=this_month - timedelta(hours=i + 1), tokens=250) for i in range(4)],
    )
    assert r.status_code == 200 and r.json()["accepted"] == 4, r.text
    assert client.post("/v1/customers", json={"id": "cust-1", "name": "One", "currency": "EUR"}).status_code == 200
    assert client.post("/v1/plans", json={"id": "pro", "name": "Pro"}).status_code == 201
    prices = [
        {"id": "base", "currency": "EUR", "model": "flat", "amount": "20", "cadence": "in_advance"},
        {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.004"},
    ]
    r = client.post("/v1/plans/pro/versions", json={"effective_from": "2020-01-01T00:00:00Z", "prices": prices})
    assert r.status_code == 201, r.text
    sub = {"id": "s1", "customer": "cust-1", "plan": "pro", "version": 1, "start": last_month.isoformat()}
    assert client.post("/v1/subscriptions", json=sub).status_code == 200

    bad = client.post("/v1/invoices/run", json={"period": "November"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_period"
    r = client.post("/v1/invoices/run", json={"period": f"{this_month:%Y-%m}"})
    assert r.status_code == 200, r.text
    [draft] = r.json()["invoices"]
    assert draft["status"] == "draft" and draft["total"] == "24.00", draft  # 20 in advance + 1000 x 0.004
    assert {line["kind"] for line in draft["lines"]} == {"recurring", "usage"}
    final = client.post(f"/v1/invoices/{draft['id']}/finalize").json()
    assert final["number"] == "INV-000001"
    assert client.post(f"/v1/invoices/{draft['id']}/finalize").json()["code"] == "invalid_state"
    note = client.post(f"/v1/invoices/{draft['id']}/credit-notes", json={"amount": "4", "reason": "goodwill"})
    assert note.status_code == 201 and note.json()["number"] == "CN-000001"
    assert [i["number"] for i in client.get("/v1/invoices", params={"status": "open"}).json()] == ["INV-000001"]
    upcoming = client.get("/v1/customers/cust-1/upcoming-invoice")
    assert upcoming.status_code == 200 and upcoming.json()[0]["period_start"] > draft["period_start"], upcoming.text
    unknown = client.get("/v1/customers/nobody/upcoming-invoice")
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found", unknown.text
    other = server.client(server.tenant_key("billing-other", ["read"]))
    assert other.get(f"/v1/invoices/{draft['id']}").status_code == 404
