"""The month-end close over HTTP, against the real server: recognize, then read the waterfall, deferred and unbilled.

Worked by hand:

- ``ada`` pays an annual fee of 1,200.00 EUR for 2025, billed in advance: a close earns it by day, 31/365 in January
  (101.92), 28/365 in February (92.05)... and December takes the remainder (101.91); 2025 adds up to 1,200.00.
- ``bob`` used 600 tokens at 0.01 last month (events must be recent: the engine takes them up to 35 days back):
  6.00 of last month's revenue, unbilled at the end of last month even though this month's invoice bills it (the
  invoice comes after that day).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from http_server import Server
from meter.cli import main
from meter.client import Client

THIS_MONTH = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
LAST_MONTH = (THIS_MONTH - timedelta(days=1)).replace(day=1)
#: The last day of last month: a day that has ended, whatever today is.
LAST_DAY = (THIS_MONTH - timedelta(days=1)).date()


def ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("revenue"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    key = server.tenant_key("acme", ["ingest", "read", "admin"])
    with server.client(key) as c:
        for customer in ("ada", "bob"):
            ok(c.post("/v1/customers", json={"id": customer, "name": customer, "currency": "EUR"}))
        meter = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
        ok(c.post("/v1/meters", json=meter), 201)
        annual = {"id": "base", "currency": "EUR", "model": "flat", "amount": "1200.00", "cadence": "in_advance"}
        tokens = {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.01"}
        for plan, price in (("annual", annual), ("metered", tokens)):
            ok(c.post("/v1/plans", json={"id": plan, "name": plan}), 201)
            version = {"effective_from": "2020-01-01T00:00:00Z", "prices": [price]}
            ok(c.post(f"/v1/plans/{plan}/versions", json=version), 201)
        subs = [
            {"id": "s-ada", "customer": "ada", "plan": "annual", "version": 1, "cycle": "annual"}
            | {"start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            {"id": "s-bob", "customer": "bob", "plan": "metered", "version": 1, "start": LAST_MONTH.isoformat()},
        ]
        for sub in subs:
            ok(c.post("/v1/subscriptions", json=sub))
        at = (THIS_MONTH - timedelta(hours=3)).isoformat().replace("+00:00", "Z")
        events = [
            {"specversion": "1.0", "id": f"u{n}", "source": "t", "type": "llm", "subject": "bob", "time": at}
            | {"data": {"tokens": n}}
            for n in (100, 200, 300)
        ]
        assert ok(c.post("/v1/events", json=events))["accepted"] == 3
        for period in ("2025-01", f"{THIS_MONTH:%Y-%m}"):
            run = ok(c.post("/v1/invoices/run", json={"period": period, "finalize": True}))
            assert run["errors"] == [], run
    return key


@pytest.fixture(scope="module")
def closed(server: Server, key: str) -> dict[str, Any]:
    answer: dict[str, Any] = ok(server.client(key).post("/v1/revenue/recognize", params={"through": str(LAST_DAY)}))
    return answer


def test_the_close_steps_through_every_month_end_and_posts_once(
    server: Server, key: str, closed: dict[str, Any]
) -> None:
    assert closed["through"] == str(LAST_DAY) and closed["timezone"] == "UTC" and closed["errors"] == []
    steps = {s["through"]: s for s in closed["steps"]}
    assert steps["2025-01-31"]["recognized"] == [
        {"currency": "EUR", "fees": "101.92", "usage": "0.00", "breakage": "0.00"}
    ]
    assert steps["2025-01-31"]["entries"] == ["revenue_recognized:2025-01-31/EUR"]
    assert steps[str(LAST_DAY)]["recognized"][0]["usage"] == "6.00"
    again = ok(server.client(key).post("/v1/revenue/recognize", params={"through": str(LAST_DAY)}))
    assert again["steps"] == [], "running the close twice changes nothing"
    entries = ok(server.client(key).get("/v1/ledger/entries", params={"kind": "revenue_recognized", "limit": 1000}))
    assert (
        len({e["id"] for e in entries["data"]})
        == len(entries["data"])
        == sum(1 for s in closed["steps"] if s["entries"])
    )


def test_the_waterfall_says_what_was_earned_each_month(server: Server, key: str, closed: dict[str, Any]) -> None:
    report = ok(server.client(key).get("/v1/revenue/waterfall", params={"by": "customer"}))
    assert report["recognized_through"] == str(LAST_DAY)
    ada = {r["month"]: Decimal(r["amount"]) for r in report["rows"] if r["group"] == "ada"}
    assert len(ada) == 12 and sum(ada.values()) == Decimal("1200.00")
    assert (ada["2025-01"], ada["2025-02"], ada["2025-12"]) == (Decimal("101.92"), Decimal("92.05"), Decimal("101.91"))
    bob = [r for r in report["rows"] if r["group"] == "bob"]
    assert [(r["month"], r["amount"], r["quantity"]) for r in bob] == [(f"{LAST_MONTH:%Y-%m}", "6.00", "600")]
    top = ok(server.client(key).get("/v1/revenue/waterfall", params={"by": "customer", "top": "1"}))
    assert {r["group"] for r in top["rows"]} == {"ada"}, "the top customer over the range"
    kinds = ok(
        server.client(key).get("/v1/revenue/waterfall", params={"by": "kind", "from": "2025-12", "to": "2026-01"})
    )
    assert kinds["rows"] == [{"month": "2025-12", "currency": "EUR", "amount": "101.91", "group": "fee"}]
    trial = ok(server.client(key).get("/v1/ledger/trial-balance"))
    revenue = next(a for a in trial["accounts"] if a["account"] == "revenue")
    assert Decimal(revenue["balance"]) == Decimal("1206.00"), "the waterfall is the revenue account"


def test_the_reports_come_as_csv_and_parquet_too(server: Server, key: str, closed: dict[str, Any]) -> None:
    c = server.client(key)
    csv = c.get("/v1/revenue/waterfall", params={"format": "csv", "from": "2025-01", "to": "2025-03"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines() == [
        "month,currency,amount,quantity,group",
        "2025-01,EUR,101.92,,",
        "2025-02,EUR,92.05,,",
    ]
    parquet = c.get("/v1/revenue/deferred", headers={"accept": "application/vnd.apache.parquet"})
    rows = pq.read_table(io.BytesIO(parquet.content)).to_pylist()
    as_json = [{k: str(v) if isinstance(v, Decimal) else v for k, v in row.items()} for row in rows]
    assert as_json == ok(c.get("/v1/revenue/deferred")), "the same rows, decimals kept"


def test_deferred_revenue_rolls_forward_and_unbilled_usage_is_at_its_day(
    server: Server, key: str, closed: dict[str, Any]
) -> None:
    c = server.client(key)
    months = ok(c.get("/v1/revenue/deferred"))
    for m in months:
        movements = Decimal(m["additions"]) - Decimal(m["drawn"]) - Decimal(m["recognized"])
        movements -= Decimal(m["breakage"]) + Decimal(m["reversed"])
        assert Decimal(m["opening"]) + movements == Decimal(m["closing"]), m
    assert sum(Decimal(m["additions"]) for m in months) == Decimal("1200.00")
    assert sum(Decimal(m["recognized"]) for m in months) == Decimal("1200.00") and months[-1]["closing"] == "0.00"
    unbilled = ok(c.get("/v1/revenue/unbilled", params={"as_of": str(LAST_DAY)}))
    assert unbilled["totals"] == {"EUR": "6.00"}
    assert unbilled["customers"] == [
        {"customer": "bob", "currency": "EUR", "recognized": "6.00", "invoiced": "0.00", "unbilled": "6.00"}
    ]


@pytest.mark.parametrize(
    ("method", "path", "params", "code", "says"),
    [
        ("POST", "/v1/revenue/recognize", {}, "invalid_query", "'through' is required"),
        ("POST", "/v1/revenue/recognize", {"through": "2026-13-01"}, "invalid_query", "YYYY-MM-DD"),
        ("POST", "/v1/revenue/recognize", {"through": "2999-01-01"}, "invalid_through", "a day that has ended"),
        ("GET", "/v1/revenue/waterfall", {"by": "colour"}, "invalid_query", "'by' must be one of"),
        ("GET", "/v1/revenue/waterfall", {"from": "2025-03", "to": "2025-03"}, "invalid_query", "[from, to)"),
        ("GET", "/v1/revenue/waterfall", {"by": "customer", "top": "0"}, "invalid_query", "1-1000"),
        ("GET", "/v1/revenue/waterfall", {"format": "xlsx"}, "invalid_query", "json, csv, parquet"),
        ("GET", "/v1/revenue/unbilled", {"as_of": "yesterday"}, "invalid_query", "YYYY-MM-DD"),
    ],
)
def test_bad_input_is_a_400_that_says_what_to_fix(
    server: Server, key: str, method: str, path: str, params: dict[str, str], code: str, says: str
) -> None:
    r = server.client(key).request(method, path, params=params)
    assert r.status_code == 400 and r.json()["code"] == code, r.text
    assert says in r.json()["message"]


def test_closing_needs_an_admin_key_and_a_tenant_sees_only_its_own(
    server: Server, key: str, closed: dict[str, Any]
) -> None:
    reader = server.tenant_key("acme", ["read"])
    assert server.client(reader).post("/v1/revenue/recognize", params={"through": "2025-01-31"}).status_code == 403
    other = server.tenant_key("globex", ["read", "admin"])
    assert ok(server.client(other).get("/v1/revenue/waterfall")) == {
        "recognized_through": None,
        "by": None,
        "rows": [],
    }
    assert ok(server.client(other).get("/v1/revenue/unbilled", params={"as_of": str(LAST_DAY)}))["customers"] == []
    assert ok(server.client(other).post("/v1/revenue/recognize", params={"through": str(LAST_DAY)}))["errors"] == []
    assert ok(server.client(key).get("/v1/revenue/waterfall"))["recognized_through"] == str(LAST_DAY)


def test_the_settings_are_checked(server: Server, key: str) -> None:
    c = server.client(key)
    assert ok(c.get("/v1/revenue/settings")) == {"timezone": "UTC", "breakage": "at_expiry", "accounts": {}}
    bad = c.put("/v1/revenue/settings", json={"timezone": "Mars/Olympus"})
    assert bad.status_code == 400 and "IANA" in bad.json()["message"]
    bad = c.put("/v1/revenue/settings", json={"accounts": {"sales": "4000"}})
    assert bad.status_code == 400 and "not ledger accounts" in bad.json()["message"]


def test_the_client_and_the_cli_close_and_read(server: Server, key: str, closed: dict[str, Any]) -> None:
    with Client(server.url, api_key=key) as client:
        assert client.recognize_revenue(LAST_DAY)["steps"] == []
        assert client.revenue_waterfall("2025-01", "2025-02")["rows"][0]["amount"] == "101.92"
        assert client.revenue_unbilled(LAST_DAY)["totals"] == {"EUR": "6.00"}
        assert client.revenue_deferred("2025-01", "2025-02")[0]["additions"] in ("0.00", "1200.00")
        assert client.revenue_report_csv("waterfall", by="kind").startswith(b"month,currency,amount,quantity,group")
    env = {"METER_URL": server.url, "METER_API_KEY": key, "COLUMNS": "200"}
    runner = CliRunner()
    result = runner.invoke(main, ["revenue", "recognize", "--through", str(LAST_DAY)], env=env)
    assert result.exit_code == 0 and "recognized through" in result.output, result.output
    result = runner.invoke(main, ["revenue", "waterfall", "--from", "2025-12", "--to", "2026-01"], env=env)
    assert result.exit_code == 0 and "101.91" in result.output, result.output
    for command in (["deferred"], ["unbilled", "--as-of", str(LAST_DAY)], ["waterfall", "--by", "kind", "--csv"]):
        result = runner.invoke(main, ["revenue", *command], env=env)
        assert result.exit_code == 0, (command, result.output)
    assert "bob" in runner.invoke(main, ["revenue", "unbilled", "--as-of", str(LAST_DAY)], env=env).output
