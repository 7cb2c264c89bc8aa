"""Cardinality limits: an event past one of its meter's limits is refused by its index with `cardinality_limit`.

The limits are distinct dimension combinations per customer and minute, and distinct customers per minute; the rest
of the batch is applied. The engine's defaults come from `meter.Engine(...)` or `meter serve` flags; a meter's
`limits` override them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import T0, body, event
from http_server import RECENT_DAY, Server, recent_event
from meter import Engine, MeterLimits
from meter.exceptions import InvalidInput

REQUESTS = {"slug": "calls", "event_type": "llm", "aggregation": "count", "group_by": {"request": "$.request_id"}}


def test_a_request_id_as_dimension_is_refused_past_the_limit(tmp_path: Path) -> None:
    with Engine(tmp_path / "db", max_combinations_per_minute=3, max_customers_per_minute=2) as engine:
        created = engine.create_meter("t", REQUESTS)
        assert created.meter.limits == MeterLimits(3, 2), "the limits that apply, shown"
        events = [event(f"e{i}", request_id=f"req-{i}") for i in range(5)]
        events.append(event("again", request_id="req-0"))  # a combination the customer has: accepted
        events.append(event("c2", "cust-2", request_id="req-0"))
        events.append(event("c3", "cust-3", request_id="req-0"))  # a third customer in the minute
        r = engine.ingest("t", body(*events), now=T0)
        assert r.accepted == 5
        assert [(i.index, i.id, i.code) for i in r.issues] == [
            (3, "e3", "cardinality_limit"),
            (4, "e4", "cardinality_limit"),
            (7, "c3", "cardinality_limit"),
        ]
        assert "meter 'calls' allows at most 3 distinct dimension combinations" in r.issues[0].message
        assert "max_customers_per_minute" in r.issues[2].message

        own = engine.create_meter("t", {**REQUESTS, "slug": "own", "limits": {"max_customers_per_minute": 9}})
        assert own.meter.limits == MeterLimits(3, 9)
        assert engine.get_meter("t", "own").limits == MeterLimits(3, 9)
        for limits in ({"max_combinations_per_minute": 0}, {"max_customers_per_minute": 10_000_001}):
            with pytest.raises(InvalidInput) as e:
                engine.create_meter("t", {**REQUESTS, "slug": "bad", "limits": limits})
            assert e.value.code == "invalid_meter" and "must be between 1 and" in e.value.message
    for bad in ({"max_combinations_per_minute": 0}, {"max_customers_per_minute": 20_000_000}):
        with pytest.raises(InvalidInput) as e:
            Engine(tmp_path / "db", **bad)
        assert e.value.code == "invalid_config"


def test_over_http_per_event_refusals_that_survive_a_restart(tmp_path: Path) -> None:
    args = ("--max-combinations-per-minute", "5")
    server = Server(tmp_path / "data", args=args)
    try:
        key = server.tenant_key("acme", ["ingest", "read", "admin"])
        client = server.client(key)
        assert client.post("/v1/meters", json=REQUESTS).status_code == 201
        assert client.get("/v1/meters/calls").json()["limits"] == {
            "max_combinations_per_minute": 5,
            "max_customers_per_minute": 100_000,
        }
        # A gateway that puts each request's id in a grouped property: one new combination per event.
        r = client.post("/v1/events", content=body(*(recent_event(f"r{i}", request_id=f"req-{i}") for i in range(8))))
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 5
        issues = r.json()["issues"]
        assert [(i["index"], i["code"]) for i in issues] == [(i, "cardinality_limit") for i in (5, 6, 7)]
        assert "meter 'calls'" in issues[0]["message"] and "--max-combinations-per-minute" in issues[0]["message"]

        r = client.post("/v1/meters", json={**REQUESTS, "slug": "bad", "limits": {"max_combinations_per_minute": -1}})
        assert r.status_code == 400 and r.json()["code"] == "invalid_meter", r.text
        assert "cardinality_limit" in server.client(key).get("/openapi.json").text
    finally:
        server.stop()

    server = Server(tmp_path / "data", admin_key=server.admin_key, args=args)
    try:
        client = server.client(key)
        # Nothing in memory after the restart: the minute's combinations are read back, and still full.
        r = client.post("/v1/events", content=body(recent_event("r8", request_id="req-8")))
        assert r.status_code == 400 and r.json()["code"] == "no_events_accepted", r.text
        assert r.json()["issues"][0]["code"] == "cardinality_limit"
        r = client.post("/v1/events", content=body(recent_event("r9", request_id="req-1")))
        assert (r.status_code, r.json()["accepted"]) == (200, 1), r.text
        start, end = (t.isoformat() for t in RECENT_DAY)
        usage = client.get("/v1/meters/calls/usage", params={"from": start, "to": end}).json()
        assert [row["events"] for row in usage["data"]] == [6]
    finally:
        server.stop()
