"""Finding accepted events over HTTP: a search by customer, type and time, and one event with what its meters count.

The server exports every half second, so a search reads the Parquet export for the commits it wrote and the engine
for the rest: the answers before and after an export are the same, each event once.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pytest
from http_server import RECENT, Server
from meter.engine import Engine
from meter.lake import events as lake_events

FROM, TO = (RECENT - timedelta(hours=1)).isoformat(), (RECENT + timedelta(hours=1)).isoformat()


def sent(n: int, subject: str, type_: str = "llm", **data: Any) -> dict[str, Any]:
    at = (RECENT + timedelta(seconds=n)).isoformat()
    return {"specversion": "1.0", "id": f"e{n}", "source": "gw", "type": type_, "subject": subject, "time": at} | {
        "data": {"tokens": n, **data}
    }


EVENTS = [
    sent(n, "ada" if n % 3 else "bob", "llm" if n % 5 else "image", model="m1" if n % 2 else "m2") for n in range(1, 31)
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("events")


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[Server]:
    s = Server(data_dir, args=("--export-every", "0.5"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def acme(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.tenant_key("acme", ["ingest", "read", "admin"])) as c:
        for meter in (
            {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"},
            {"slug": "calls", "event_type": "llm", "aggregation": "count"},
            {"slug": "m1-tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
            | {"filters": [{"property": "$.model", "op": "eq", "value": "m1"}]},
        ):
            assert c.post("/v1/meters", json=meter).status_code == 201, meter
        assert c.post("/v1/events", json=EVENTS).json()["accepted"] == 30
        yield c


def search(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Every page of a search."""
    found: list[dict[str, Any]] = []
    after = None
    while True:
        page = client.get(
            "/v1/events", params={"from": FROM, "to": TO, **params, **({"after": after} if after else {})}
        )
        assert page.status_code == 200, page.text
        body = page.json()
        found += body["data"]
        after = body["next"]
        if after is None:
            return found


def test_a_search_finds_each_event_once_in_the_order_accepted_before_and_after_the_export(
    data_dir: Path, acme: httpx.Client
) -> None:
    ada = [e for e in EVENTS if e["subject"] == "ada" and e["type"] == "llm"]
    before = search(acme, subject="ada", type="llm", limit=4)
    assert [e["id"] for e in before] == [e["id"] for e in ada]
    assert before[0]["data"] == ada[0]["data"] and before[0]["source"] == "gw" and before[0]["commit"] >= 1
    manifest = data_dir / "export" / "events" / "tenant=acme" / "_exported.json"
    deadline = time.monotonic() + 30
    while not manifest.exists():
        assert time.monotonic() < deadline, "the scheduled export did not run"
        time.sleep(0.2)
    assert search(acme, subject="ada", type="llm", limit=4) == before, "the export changes nothing of the answer"
    later = [sent(n, "ada") for n in range(31, 34)]
    assert acme.post("/v1/events", json=later).json()["accepted"] == 3
    both = search(acme, subject="ada", type="llm", limit=5)  # pages that straddle the export and the engine
    assert [e["id"] for e in both] == [e["id"] for e in ada] + ["e31", "e32", "e33"]
    assert len(search(acme)) == 33 and [e["id"] for e in search(acme, type="image", subject="bob")] == ["e15", "e30"]
    assert search(acme, subject="nobody") == []


def test_a_search_is_bounded_by_event_time_and_answers_csv_and_arrow(acme: httpx.Client) -> None:
    start, end = (RECENT + timedelta(seconds=10)).isoformat(), (RECENT + timedelta(seconds=20)).isoformat()
    window = acme.get("/v1/events", params={"from": start, "to": end}).json()["data"]
    assert [e["id"] for e in window] == [f"e{n}" for n in range(10, 20)], "[from, to): the end is excluded"
    as_csv = acme.get("/v1/events", params={"from": start, "to": end, "limit": 4}, headers={"accept": "text/csv"})
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["id"] for r in rows] == ["e10", "e11", "e12", "e13"] and as_csv.headers["meter-next"]
    assert rows[0]["data"] == '{"tokens":10,"model":"m2"}'
    arrow = acme.get(
        "/v1/events", params={"from": start, "to": end}, headers={"accept": "application/vnd.apache.arrow.stream"}
    )
    table = pa_ipc.open_stream(pa.py_buffer(arrow.content)).read_all()
    assert table.column("id").to_pylist() == [f"e{n}" for n in range(10, 20)] and "meter-next" not in arrow.headers
    bad = acme.get("/v1/events", params={"from": start, "to": end, "after": "nope"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_query"


def test_one_event_says_what_each_meter_of_its_type_counts(acme: httpx.Client) -> None:
    found = acme.get("/v1/events/gw/e7").json()
    assert found["event"]["subject"] == "ada" and found["event"]["data"] == {"tokens": 7, "model": "m1"}
    assert found["status"] == "counted" and found["history"][0]["change"] == "accepted"
    assert found["history"][0]["at"], "its receive time, from its dedup mark"
    assert found["meters"] == [
        {"meter": "calls", "value": "1"},
        {"meter": "m1-tokens", "value": "7"},
        {"meter": "tokens", "value": "7"},
    ]
    m2 = acme.get("/v1/events/gw/e8").json()["meters"]
    assert {m["meter"]: m["value"] for m in m2}["m1-tokens"] is None, "its filter leaves it out"
    missing = acme.get("/v1/events/gw/e999")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_another_tenant_finds_none_of_them(server: Server, acme: httpx.Client) -> None:
    with server.client(server.tenant_key("globex", ["read"])) as other:
        assert other.get("/v1/events", params={"from": FROM, "to": TO}).json()["data"] == []
        assert other.get("/v1/events/gw/e7").status_code == 404


def test_one_event_is_found_by_its_dedup_mark_and_past_the_window_by_a_scan(tmp_path: Path) -> None:
    """Within the dedup window the engine finds it from its mark (with its receive time); past it, by a scan."""
    t0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
    engine = Engine(tmp_path / "engine", dedup_window=timedelta(hours=1), backdate_window=timedelta(hours=1))
    try:
        early = sent(1, "ada") | {"time": t0.isoformat()}
        assert engine.ingest("acme", msgspec.json.encode([early]), now=t0).accepted == 1
        # Many commits in the minutes around it: only those received near its receipt are read.
        for n in range(2, 40):
            engine.ingest(
                "acme",
                msgspec.json.encode([sent(n, "bob") | {"time": t0.isoformat()}]),
                now=t0 + timedelta(seconds=5 * n),
            )
        found, received = lake_events.find(engine, tmp_path / "export", "acme", "gw", "e1")
        assert (found.get_column("id").to_list(), received) == (["e1"], t0)
        assert lake_events.find(engine, tmp_path / "export", "acme", "gw", "e404")[0].height == 0
        assert lake_events.find(engine, tmp_path / "export", "globex", "gw", "e1")[0].height == 0, "a tenant's own"
        later = t0 + timedelta(hours=2)  # the window moves past e1's mark
        engine.ingest("acme", msgspec.json.encode([sent(99, "bob") | {"time": later.isoformat()}]), now=later)
        found_by_scan, received = engine.find_event("acme", "gw", "e1")
        assert (found_by_scan.column("id").to_pylist(), received) == (["e1"], None), "a scan of what is retained"
        found, received = lake_events.find(engine, tmp_path / "export", "acme", "gw", "e1")
        assert (found.get_column("id").to_list(), received) == (["e1"], None)
    finally:
        engine.close()
