"""`meter.Client` beyond ingest, against the real server: one method per route the CLI uses.

Each call is sent once; an error answer is a `ServerError` with the server's status, code and message.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from http_server import RECENT, Server, recent_event
from meter import Client
from meter.catalog.keys import new_key
from meter.client import ServerError
from meter.schemas import CreatedMeter, Meter, MeterSpec

ALL_TIME = (datetime(2000, 1, 1, tzinfo=UTC), "2100-01-01T00:00:00Z")  # a datetime and a string both work


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("client-api") / "data", admin_key=new_key())
    yield s
    s.stop()


def test_tenants_and_keys_with_the_operator_key(server: Server) -> None:
    with Client(server.url, server.admin_key) as operator:
        created = operator.create_tenant("t-api", "Tenant")
        assert created["id"] == "t-api" and created["name"] == "Tenant"
        assert "t-api" in [t["id"] for t in operator.list_tenants()]
        key = operator.create_key("t-api", ["read"])
        assert key["key"].startswith("mk_live_") and key["scopes"] == ["read"] and key["tenant"] == "t-api"
        assert [k["id"] for k in operator.list_keys("t-api")] == [key["id"]]
        with Client(server.url, key["key"]) as tenant:
            assert tenant.list_meters() == []
            operator.revoke_key(key["id"])
            with pytest.raises(ServerError) as e:
                tenant.list_meters()
        assert e.value.status == 401 and e.value.code == "unauthorized"
        assert [k["revoked"] for k in operator.list_keys("t-api")] == [True]
        with pytest.raises(ServerError) as e:
            operator.create_tenant("t-api")
        assert e.value.status == 409


def test_meters_and_usage_are_typed(server: Server) -> None:
    key = server.tenant_key("m-api", ["ingest", "read", "admin"])
    with Client(server.url, key) as client:
        spec = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
        spec["group_by"] = {"model": "$.model"}
        created = client.create_meter(spec)
        assert isinstance(created, CreatedMeter) and created.meter.slug == "tokens" and created.backfill.events == 0
        calls = client.create_meter(MeterSpec(slug="calls", event_type="llm", aggregation="count"))
        assert calls.meter.aggregation == "count"
        meters = client.list_meters()
        assert all(isinstance(m, Meter) for m in meters) and {m.slug for m in meters} == {"tokens", "calls"}
        client.ingest([recent_event("u1", tokens=5, model="a"), recent_event("u2", tokens=7, model="b")])
        rows = client.usage("tokens", *ALL_TIME, group_by=["model"])
        assert sorted((r["model"], r["value"], r["events"]) for r in rows) == [("a", "5", 1), ("b", "7", 1)]
        hourly = client.usage("tokens", RECENT - timedelta(days=1), RECENT + timedelta(days=1), window_size="hour")
        assert [r["value"] for r in hourly] == ["12"] and "window_start" in hourly[0]
        assert client.usage("tokens", *ALL_TIME, subject=["nobody"]) == []
        with pytest.raises(ServerError) as e:
            client.usage("tokens", "yesterday", "2026-12-01T00:00:00Z")
        assert e.value.status == 400 and e.value.code == "invalid_query"
        with pytest.raises(ServerError) as e:
            client.create_meter(spec)
        assert e.value.status == 409


def test_catalog_and_invoices(server: Server) -> None:
    key = server.tenant_key("i-api", ["read", "admin"])
    month = datetime.now(UTC).strftime("%Y-%m")
    flat = {"id": "base", "currency": "USD", "model": "flat", "amount": "9.99", "cadence": "in_advance"}
    with Client(server.url, key) as client:
        stored = client.put_catalog_item("customers", {"id": "cust-1", "name": "One", "currency": "USD"})
        assert stored["id"] == "cust-1"
        client.put_catalog_item("customers", {"id": "cust 2", "name": "Two", "currency": "USD"})
        plan = {"id": "pro", "name": "Pro", "versions": [{"effective_from": "2020-01-01T00:00:00Z", "prices": [flat]}]}
        client.put_catalog_item("plans", plan)
        with pytest.raises(ServerError) as e:
            client.put_catalog_item("plans", plan)  # a plan is created whole, once
        assert e.value.status == 409
        later = {"effective_from": "2021-01-01T00:00:00Z", "prices": [{**flat, "amount": "19.99"}]}
        client.add_plan_version("pro", later)
        assert [v["version"] for v in client.get_catalog_item("plans", "pro")["versions"]] == [1, 2]
        sub = {"id": "s1", "customer": "cust-1", "plan": "pro", "version": 2, "start": f"{month}-01T00:00:00Z"}
        client.put_catalog_item("subscriptions", sub)
        migrated = client.migrate_subscription("s1", 1, datetime.fromisoformat(f"{month}-15T00:00:00+00:00"))
        assert migrated["id"] == "s1"
        assert client.get_catalog_item("customers", "cust 2")["name"] == "Two"  # the id is percent-encoded
        client.delete_catalog_item("customers", "cust 2")
        assert [c["id"] for c in client.list_catalog("customers")] == ["cust-1"]
        with pytest.raises(ServerError) as e:
            client.delete_catalog_item("customers", "cust-1")  # s1 refers to it
        assert e.value.status == 409 and e.value.code == "in_use"

        run = client.run_invoices(month)
        assert [i["status"] for i in run["invoices"]] == ["draft"] and run["errors"] == []
        draft = run["invoices"][0]["id"]
        assert [i["id"] for i in client.list_invoices(status="draft", period=month)] == [draft]
        assert client.list_invoices(status="open") == []
        final = client.finalize_invoice(draft)
        assert final["number"] == "INV-000001" and final["status"] == "open"
        assert client.get_invoice(draft)["number"] == "INV-000001"
        note = client.credit_invoice(draft, "1.00", "goodwill")
        assert note["amount"] == "1.00" and note["number"]
        assert client.void_invoice(draft)["status"] == "void"
        upcoming = client.upcoming_invoices("cust-1")
        assert upcoming and upcoming[0]["customer"] == "cust-1" and upcoming[0]["status"] == "draft"
        with pytest.raises(ServerError) as e:
            client.get_invoice("nope")
        assert e.value.status == 404


def test_a_call_is_sent_once_and_a_network_error_is_httpx(tmp_path: Path) -> None:
    import httpx
    from http_server import free_port

    with Client(f"http://127.0.0.1:{free_port()}", new_key()) as client:
        with pytest.raises(httpx.ConnectError):
            client.list_tenants()
