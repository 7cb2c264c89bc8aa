"""Over HTTP: an event some meter cannot read is accepted with a warning, and the usage JSON keeps its shape.

The skip is counted per meter on /metrics and listed by `GET /v1/meters/{slug}/skipped`; the usage JSON is now
encoded by the engine.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from conftest import T0, body, event
from http_server import Server

FROM, TO = "2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("skips") / "data")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def acme(server: Server) -> httpx.Client:
    client = server.client(server.tenant_key("acme", ["ingest", "read", "admin"]))
    for spec in (
        {
            "slug": "tokens",
            "event_type": "llm.request",
            "aggregation": "sum",
            "value_property": "$.tokens",
            "group_by": {"model": "$.model"},
        },
        {"slug": "cached", "event_type": "llm.request", "aggregation": "sum", "value_property": "$.cached_tokens"},
    ):
        assert client.post("/v1/meters", json=spec).status_code == 201
    return client


def test_a_second_meter_never_stops_the_first_from_counting(server: Server, acme: httpx.Client) -> None:
    batch = body(
        *(
            event(f"r{i}", type="llm.request", tokens=10, model="gpt", **({"cached_tokens": 3} if i % 4 == 0 else {}))
            for i in range(8)
        )
    )
    r = acme.post("/v1/events", content=batch)
    assert r.status_code == 200, r.text
    assert (r.json()["accepted"], r.json()["issues"]) == (8, [])
    assert [(w["index"], w["id"], w["meter"], w["code"]) for w in r.json()["warnings"]] == [
        (i, f"r{i}", "cached", "value_missing") for i in range(8) if i % 4
    ]
    usage = acme.get("/v1/meters/tokens/usage", params={"from": FROM, "to": TO}).json()
    assert [row["value"] for row in usage["data"]] == ["80"]
    cached = acme.get("/v1/meters/cached/usage", params={"from": FROM, "to": TO}).json()
    assert [(row["value"], row["events"]) for row in cached["data"]] == [("6", 2)]

    skipped = acme.get("/v1/meters/cached/skipped", params={"from": FROM, "to": TO, "limit": 4})
    assert skipped.status_code == 200, skipped.text
    page = skipped.json()
    assert (page["meter"], page["from"], page["to"]) == (
        "cached",
        "2026-11-23T00:00:00+00:00",
        "2026-11-24T00:00:00+00:00",
    )
    assert [(e["id"], e["code"], e["time"], e["subject"]) for e in page["data"]] == [
        (f"r{i}", "value_missing", "2026-11-23T10:00:00Z", "cust-1") for i in (1, 2, 3, 5)
    ]
    rest = acme.get("/v1/meters/cached/skipped", params={"from": FROM, "to": TO, "after": page["next"]}).json()
    assert ([e["id"] for e in rest["data"]], rest["next"]) == (["r6", "r7"], None)
    for bad in ({"limit": "0"}, {"limit": "x"}, {"after": "-1"}, {"after": "99999999999999999999999"}):
        r = acme.get("/v1/meters/cached/skipped", params={"from": FROM, "to": TO, **bad})
        assert r.status_code == 400 and r.json()["code"] == "invalid_query", (bad, r.text)
    assert acme.get("/v1/meters/nope/skipped", params={"from": FROM, "to": TO}).status_code == 404

    # The operator's view: one counter per meter that skipped events.
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"}) as operator:
        metrics = operator.get("/metrics").text
    assert 'meter_events_skipped_total{tenant="acme",meter="cached"} 6' in metrics
    assert 'meter="tokens"' not in metrics


def test_usage_json_keeps_its_envelope_and_formats(acme: httpx.Client) -> None:
    acme.post(
        "/v1/events",
        content=body(
            event("u1", type="llm.request", tokens="1.50", model="fmt"),
            event("u2", type="llm.request", tokens=0, model=None),
        ),
    )
    r = acme.get(
        "/v1/meters/tokens/usage",
        params={"from": "2026-11-23T10:00:00+01:00", "to": TO, "group_by": ["subject", "model"], "window_size": "hour"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    answer = r.json()
    assert (answer["meter"], answer["from"], answer["to"]) == (
        "tokens",
        "2026-11-23T10:00:00+01:00",
        "2026-11-24T00:00:00+00:00",
    )
    rows = {row["model"]: row for row in answer["data"]}
    assert rows["fmt"] == {
        "window_start": T0.isoformat(),
        "window_end": "2026-11-23T11:00:00+00:00",
        "subject": "cust-1",
        "model": "fmt",
        "value": "1.5",
        "events": 1,
    }
    assert (rows[None]["value"], rows[None]["events"]) == ("0", 1)
