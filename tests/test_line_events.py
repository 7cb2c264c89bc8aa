"""Every usage line traced to its events, over HTTP: re-aggregated as the meter aggregates, they give its quantity.

One subscription bills a meter of each aggregation the pricing takes (sum, count, min, max, latest, avg), a
filtered meter and one with a dimension, through each price model (per unit, graduated, volume, package, matrix).
Another customer's events, another type's and the events outside the line's period must not be listed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from http_server import Server
from meter.cli import main
from meter.client import Client

THIS_MONTH = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
LAST_MONTH = (THIS_MONTH - timedelta(days=1)).replace(day=1)
VALUES = [Decimal(v) for v in ("5", "2.5", "7", "1", "4", "9", "3", "6", "8", "2")]

TIERS = [{"from": "0", "up_to": "4", "unit_price": "1"}, {"from": "4", "unit_price": "0.5"}]
#: slug: (aggregation, extra meter fields, price fields)
METERS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "total": ("sum", {}, {"model": "per_unit", "unit_price": "0.01"}),
    "calls": ("count", {}, {"model": "graduated", "tiers": TIERS}),
    "peak": ("max", {}, {"model": "volume", "tiers": TIERS}),
    "floor": ("min", {}, {"model": "per_unit", "unit_price": "1"}),
    "last": ("latest", {}, {"model": "per_unit", "unit_price": "1"}),
    "mean": ("avg", {}, {"model": "per_unit", "unit_price": "1"}),
    "packs": ("sum", {}, {"model": "package", "package": {"size": "10", "price": "1"}}),
    "only-a": (
        "sum",
        {"filters": [{"property": "$.model", "op": "eq", "value": "a"}]},
        {"model": "per_unit", "unit_price": "1"},
    ),
    "by-model": (
        "sum",
        {"group_by": {"model": "$.model"}},
        {
            "model": "matrix",
            "matrix": {
                "dimensions": ["model"],
                "entries": [
                    {"values": {"model": "a"}, "unit_price": "1"},
                    {"values": {"model": "b"}, "unit_price": "2"},
                ],
            },
        },
    ),
}


def event(n: int, at: datetime, subject: str = "ada", type_: str = "req") -> dict[str, Any]:
    data = {"v": str(VALUES[n % len(VALUES)]), "model": "a" if n % 3 else "b"}
    return {"specversion": "1.0", "id": f"e{n}", "source": "gw", "type": type_, "subject": subject} | {
        "time": at.isoformat(),
        "data": data,
    }


#: Ada's events of the line's period (last month, an hour apart, its last day), then what must not be listed.
ADA = [event(n, THIS_MONTH - timedelta(hours=20 - n)) for n in range(10)]
OTHERS = [
    event(100, THIS_MONTH - timedelta(hours=5), subject="bob"),
    event(101, THIS_MONTH - timedelta(hours=5), type_="other"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("trace"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def invoice(server: Server) -> tuple[httpx.Client, dict[str, Any]]:
    c = server.client(server.tenant_key("acme", ["ingest", "read", "admin"]))
    prices = []
    for slug, (aggregation, extra, price) in METERS.items():
        meter: dict[str, Any] = {"slug": slug, "event_type": "req", "aggregation": aggregation} | extra
        if aggregation != "count":
            meter["value_property"] = "$.v"
        assert c.post("/v1/meters", json=meter).status_code == 201, meter
        prices.append({"id": slug, "currency": "EUR", "meter": slug} | price)
    assert c.post("/v1/customers", json={"id": "ada", "name": "Ada", "currency": "EUR"}).status_code == 200
    assert c.post("/v1/customers", json={"id": "bob", "name": "Bob", "currency": "EUR"}).status_code == 200
    assert c.post("/v1/plans", json={"id": "all", "name": "All"}).status_code == 201
    version = {"effective_from": "2020-01-01T00:00:00Z", "prices": prices}
    assert c.post("/v1/plans/all/versions", json=version).status_code == 201, c.get("/v1/plans/all").text
    for customer in ("ada", "bob"):
        sub = {
            "id": f"s-{customer}",
            "customer": customer,
            "plan": "all",
            "version": 1,
            "start": LAST_MONTH.isoformat(),
        }
        assert c.post("/v1/subscriptions", json=sub).status_code == 200
    later = event(200, THIS_MONTH + timedelta(minutes=1))  # this month: the next cycle's
    assert c.post("/v1/events", json=[*ADA, *OTHERS, later]).json()["accepted"] == 13
    run = c.post("/v1/invoices/run", json={"period": f"{THIS_MONTH:%Y-%m}", "finalize": True}).json()
    assert run["errors"] == [], run
    [found] = [i for i in c.get("/v1/invoices").json() if i["subscription"] == "s-ada"]
    return c, found


def traced(c: httpx.Client, invoice_id: str, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The first page's envelope and every page's events (three per page: the pages are walked)."""
    events: list[dict[str, Any]] = []
    after, first = None, None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"after": after} if after else {})
        page = c.get(f"/v1/invoices/{invoice_id}/lines/{n}/events", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        first = first or body
        events += body["data"]
        after = body["next"]
        if after is None:
            return first, events


def aggregate(aggregation: str, events: list[dict[str, Any]]) -> Decimal:
    """What the meter makes of the events, by hand."""
    values = [Decimal(e["value"]) for e in events]
    if aggregation in ("sum", "count"):
        return sum(values, Decimal(0))
    if aggregation == "max":
        return max(values)
    if aggregation == "min":
        return min(values)
    if aggregation == "latest":
        return Decimal(max(events, key=lambda e: e["time"])["value"])
    assert aggregation == "avg"
    return (sum(values, Decimal(0)) / len(values)).quantize(Decimal("1e-9"), ROUND_HALF_EVEN)


def test_every_usage_line_re_aggregates_from_its_events(invoice: tuple[httpx.Client, dict[str, Any]]) -> None:
    c, found = invoice
    usage = [(n, line) for n, line in enumerate(found["lines"], start=1) if line.get("meter")]
    assert {line["meter"] for _, line in usage} == set(METERS), found["lines"]
    for n, line in usage:
        envelope, events = traced(c, found["id"], n)
        aggregation = METERS[line["meter"]][0]
        assert (envelope["meter"], envelope["aggregation"]) == (line["meter"], aggregation)
        ids = [e["id"] for e in events]
        expected = [e["id"] for e in ADA if line["meter"] != "only-a" or e["data"]["model"] == "a"]
        assert ids == expected, (line["meter"], ids)
        assert aggregate(aggregation, events) == Decimal(line["quantity"]), (line["meter"], events)
        assert Decimal(envelope["quantity"]) == Decimal(line["quantity"])
    by_model = next(n for n, line in usage if line["meter"] == "by-model")
    _, events = traced(c, found["id"], by_model)
    cells = {m: sum((Decimal(e["value"]) for e in events if e["data"]["model"] == m), Decimal(0)) for m in "ab"}
    details = found["lines"][by_model - 1]["details"]
    by_cell = {json.loads(d["combination"])["model"]: Decimal(d["units"]) for d in details}
    assert by_cell == cells, details


def test_the_events_come_as_csv_to_save_for_a_dispute(invoice: tuple[httpx.Client, dict[str, Any]]) -> None:
    c, found = invoice
    n = next(n for n, line in enumerate(found["lines"], start=1) if line.get("meter") == "total")
    answer = c.get(f"/v1/invoices/{found['id']}/lines/{n}/events", headers={"accept": "text/csv"})
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["id"] for r in rows] == [e["id"] for e in ADA] and rows[0]["value"]


def test_a_line_without_usage_or_out_of_range_is_refused(invoice: tuple[httpx.Client, dict[str, Any]]) -> None:
    c, found = invoice
    fee = next((n for n, line in enumerate(found["lines"], start=1) if not line.get("meter")), None)
    if fee is not None:
        refused = c.get(f"/v1/invoices/{found['id']}/lines/{fee}/events")
        assert refused.status_code == 400 and refused.json()["code"] == "not_a_usage_line"
    assert c.get(f"/v1/invoices/{found['id']}/lines/999/events").status_code == 404
    assert c.get(f"/v1/invoices/{found['id']}/lines/x/events").status_code == 400
    assert c.get("/v1/invoices/nope/lines/1/events").status_code == 404


def test_the_cli_saves_them_page_after_page(
    server: Server, invoice: tuple[httpx.Client, dict[str, Any]], tmp_path: Path
) -> None:
    c, found = invoice
    n = next(n for n, line in enumerate(found["lines"], start=1) if line.get("meter") == "total")
    key = c.headers["authorization"].removeprefix("Bearer ")
    with Client(server.url, key) as client:
        pages = list(client.line_events(found["id"], n, limit=4))
    assert len(pages) == 3, "ten events, four a page"
    out = tmp_path / "dispute.csv"
    env = {"METER_URL": server.url, "METER_API_KEY": key}
    result = CliRunner().invoke(main, ["invoice", "events", found["id"], str(n), "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["id"] for r in rows] == [e["id"] for e in ADA]
