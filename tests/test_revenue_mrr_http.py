"""MRR, its movements, the usage run-rate and net revenue retention over HTTP against the real server, and the CLI.

Worked by hand. Plan ``pro``: version 1 bills ``base`` 20.00 EUR a month in advance, version 2 50.00. Calendar
months in UTC (the default reporting zone); each month's run of 2025-01 to 2025-06 finalizes its invoices.

==========  =============================================================  =====  =====  =====  ======  =====  =====
customer    subscriptions                                                  Jan    Feb    Mar    Apr     May    Jun
==========  =============================================================  =====  =====  =====  ======  =====  =====
c-new       v1 from March                                                                20.00  20.00   20.00  20.00
c-exp       v1 from January, v2 from 16 March (plan change)                20.00  20.00  35.49  50.00   50.00  50.00
c-con       v2 from January, v1 from April; 10 % off ``base``              45.00  45.00  45.00  18.00   18.00  18.00
c-churn     v1 January and February                                        20.00  20.00
c-react     v1 January; again from April                                   20.00                20.00   20.00  20.00
c-void      v2 in June, its invoice voided: it counts for nothing
==========  =============================================================  =====  =====  =====  ======  =====  =====

c-exp's March invoice bills v1 for 1-16 March (15 of 31 days: 20 x 15/31 = 9.677 -> 9.68) and v2 for 16-31 March
(16 days: 50 x 16/31 = 25.806 -> 25.81): both lines lie in March, so March's MRR is 9.68 + 25.81 = 35.49, and the
plan change is an expansion of 15.49 in March and 14.51 in April. c-con's discount line (-5.00, then -2.00) reduces
the fee it was taken from.

Totals: January 105.00 (all new); February 85.00 (churn -20.00: c-react); March 100.49 (new 20.00, expansion
15.49, churn -20.00: c-churn); April 108.00 (expansion 14.51, contraction -27.00, reactivation 20.00); May and June
108.00. Opening + movements = closing each month; ARR = 12 x MRR.

Retention: cohort 2025-01 (c-exp, c-con, c-churn, c-react) has 105.00 in January; February 85.00 (85/105 = 0.80952
-> 0.8095), March 35.49 + 45.00 = 80.49 (0.76657 -> 0.7666), April to June 50 + 18 + 20 = 88.00 (0.83810 ->
0.8381). Cohort 2025-03 is c-new alone: 20.00 each month, 1.0000.

Usage, kept out of MRR: c-usage's plan has only a metered price (0.01 EUR per token); 600 tokens last month (whatever
today is, inside the back-dating window) are billed by this month's run: 6.00 of usage last month, usage ARR 72.00,
and no MRR, no movement.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner
from http_server import Server
from meter.cli import main
from meter.client import Client

THIS_MONTH = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
LAST_MONTH = (THIS_MONTH - timedelta(days=1)).replace(day=1)
MONTHS = ["2025-01", "2025-02", "2025-03", "2025-04", "2025-05", "2025-06"]
ZERO = "0.00"


def ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("revenue-mrr"))
    yield s
    s.stop()


def subscribe(c: Any, sub: str, customer: str, version: int, start: str, end: str, **terms: Any) -> None:
    body = {
        "id": sub,
        "customer": customer,
        "plan": "pro",
        "version": version,
        "start": f"{start}T00:00:00Z",
        "end": f"{end}T00:00:00Z",
        **terms,
    }
    ok(c.post("/v1/subscriptions", json=body))


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    key = server.tenant_key("acme", ["ingest", "read", "admin"])
    with server.client(key) as c:
        for customer in ("c-new", "c-exp", "c-con", "c-churn", "c-react", "c-void", "c-usage"):
            ok(c.post("/v1/customers", json={"id": customer, "name": customer, "currency": "EUR"}))
        ok(c.post("/v1/plans", json={"id": "pro", "name": "Pro"}), 201)
        for amount, effective in (("20", "2020-01-01"), ("50", "2020-02-01")):
            base = {"id": "base", "currency": "EUR", "model": "flat", "amount": amount, "cadence": "in_advance"}
            version = {"effective_from": f"{effective}T00:00:00Z", "prices": [base]}
            ok(c.post("/v1/plans/pro/versions", json=version), 201)
        subscribe(c, "s-new", "c-new", 1, "2025-03-01", "2025-07-01")
        subscribe(c, "s-exp", "c-exp", 1, "2025-01-01", "2025-07-01")
        ok(c.post("/v1/subscriptions/s-exp/migrate", json={"version": 2, "at": "2025-03-16T00:00:00Z"}))
        discount = {"id": "ten", "start": "2025-01-01T00:00:00Z", "percent": "10", "price": "base"}
        subscribe(c, "s-con", "c-con", 2, "2025-01-01", "2025-07-01", discounts=[discount])
        ok(c.post("/v1/subscriptions/s-con/migrate", json={"version": 1, "at": "2025-04-01T00:00:00Z"}))
        subscribe(c, "s-churn", "c-churn", 1, "2025-01-01", "2025-03-01")
        subscribe(c, "s-react-1", "c-react", 1, "2025-01-01", "2025-02-01")
        subscribe(c, "s-react-2", "c-react", 1, "2025-04-01", "2025-07-01")
        subscribe(c, "s-void", "c-void", 2, "2025-06-01", "2025-07-01")
        for month in MONTHS:
            run = ok(c.post("/v1/invoices/run", json={"period": month, "finalize": True}))
            assert run["errors"] == [], run
        voided = [i for i in run["invoices"] if i["subscription"] == "s-void"]
        ok(c.post(f"/v1/invoices/{voided[0]['id']}/void"))

        # Usage: a metered plan of its own, last month's tokens billed by this month's run.
        meter = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
        ok(c.post("/v1/meters", json=meter), 201)
        ok(c.post("/v1/plans", json={"id": "metered", "name": "Metered"}), 201)
        price = {"id": "per-token", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.01"}
        ok(
            c.post("/v1/plans/metered/versions", json={"effective_from": "2020-01-01T00:00:00Z", "prices": [price]}),
            201,
        )
        sub = {"id": "s-usage", "customer": "c-usage", "plan": "metered", "version": 1, "start": LAST_MONTH.isoformat()}
        ok(c.post("/v1/subscriptions", json=sub))
        at = (THIS_MONTH - timedelta(hours=3)).isoformat().replace("+00:00", "Z")
        events = [
            {"specversion": "1.0", "id": f"u{n}", "source": "t", "type": "llm", "subject": "c-usage", "time": at}
            | {"data": {"tokens": n}}
            for n in (100, 200, 300)
        ]
        assert ok(c.post("/v1/events", json=events))["accepted"] == 3
        run = ok(c.post("/v1/invoices/run", json={"period": f"{THIS_MONTH:%Y-%m}", "finalize": True}))
        assert [(i["subscription"], i["total"]) for i in run["invoices"]] == [("s-usage", "6.00")], run
    return key


def test_the_plan_change_is_prorated_on_one_invoice(server: Server, key: str) -> None:
    march = ok(server.client(key).get("/v1/invoices", params={"period": "2025-03"}))
    lines = next(i["lines"] for i in march if i["subscription"] == "s-exp")
    assert [(line["version"], line["amount"]) for line in lines] == [(1, "9.68"), (2, "25.81")]


def test_mrr_months_and_their_movements_add_up(server: Server, key: str) -> None:
    report = ok(server.client(key).get("/v1/revenue/mrr", params={"from": "2025-01", "to": "2025-07"}))
    assert (report["start"], report["end"], report["timezone"], report.get("customers")) == (
        "2025-01",
        "2025-06",
        "UTC",
        None,
    )
    columns = ["opening", "new", "expansion", "contraction", "churn", "reactivation", "closing", "customers"]
    got = {m["month"]: [m[c] for c in columns] for m in report["months"]}
    assert got == {
        "2025-01": [ZERO, "105.00", ZERO, ZERO, ZERO, ZERO, "105.00", 4],
        "2025-02": ["105.00", ZERO, ZERO, ZERO, "-20.00", ZERO, "85.00", 3],
        "2025-03": ["85.00", "20.00", "15.49", ZERO, "-20.00", ZERO, "100.49", 3],
        "2025-04": ["100.49", ZERO, "14.51", "-27.00", ZERO, "20.00", "108.00", 4],
        "2025-05": ["108.00", ZERO, ZERO, ZERO, ZERO, ZERO, "108.00", 4],
        "2025-06": ["108.00", ZERO, ZERO, ZERO, ZERO, ZERO, "108.00", 4],
    }
    for m in report["months"]:
        assert m["currency"] == "EUR" and m["usage"] == ZERO and m["usage_arr"] == ZERO
        assert Decimal(m["arr"]) == 12 * Decimal(m["closing"])
        moved = sum(Decimal(m[c]) for c in columns[1:6])
        assert Decimal(m["opening"]) + moved == Decimal(m["closing"])


def test_mrr_by_customer_names_each_movement(server: Server, key: str) -> None:
    params = {"from": "2025-03", "to": "2025-05", "by_customer": "true"}
    report = ok(server.client(key).get("/v1/revenue/mrr", params=params))
    assert report["months"][0]["opening"] == "85.00", "the months before `from` give the opening"
    rows = {(r["month"], r["customer"]): (r["previous"], r["mrr"], r.get("movement")) for r in report["customers"]}
    assert rows == {
        ("2025-03", "c-new"): (ZERO, "20.00", "new"),
        ("2025-03", "c-exp"): ("20.00", "35.49", "expansion"),
        ("2025-03", "c-con"): ("45.00", "45.00", None),
        ("2025-03", "c-churn"): ("20.00", ZERO, "churn"),
        ("2025-04", "c-new"): ("20.00", "20.00", None),
        ("2025-04", "c-exp"): ("35.49", "50.00", "expansion"),
        ("2025-04", "c-con"): ("45.00", "18.00", "contraction"),
        ("2025-04", "c-react"): (ZERO, "20.00", "reactivation"),
    }, "c-void's voided invoice counts for nothing"


def test_usage_is_its_own_run_rate_never_mrr(server: Server, key: str) -> None:
    month = f"{LAST_MONTH:%Y-%m}"
    params = {"from": month, "to": f"{THIS_MONTH:%Y-%m}", "by_customer": "true"}
    report = ok(server.client(key).get("/v1/revenue/mrr", params=params))
    [row] = report["months"]
    assert (row["closing"], row["new"], row["customers"]) == (ZERO, ZERO, 0)
    assert (row["usage"], row["usage_arr"]) == ("6.00", "72.00")
    [customer] = report["customers"]
    assert (customer["customer"], customer["mrr"], customer["usage"], customer.get("movement")) == (
        "c-usage",
        ZERO,
        "6.00",
        None,
    )


def test_net_revenue_retention_by_cohort(server: Server, key: str) -> None:
    report = ok(server.client(key).get("/v1/revenue/retention", params={"from": "2025-01", "to": "2025-07"}))
    cohorts = {c["cohort"]: c for c in report["cohorts"]}
    assert list(cohorts) == ["2025-01", "2025-03"], "February has no first revenue; c-usage's is later"
    first = cohorts["2025-01"]
    assert (first["currency"], first["customers"], first["base"]) == ("EUR", 4, "105.00")
    assert [(m["month"], m["revenue"], m["customers"], m["retention"]) for m in first["months"]] == [
        ("2025-01", "105.00", 4, "1.0000"),
        ("2025-02", "85.00", 3, "0.8095"),
        ("2025-03", "80.49", 2, "0.7666"),
        ("2025-04", "88.00", 3, "0.8381"),
        ("2025-05", "88.00", 3, "0.8381"),
        ("2025-06", "88.00", 3, "0.8381"),
    ]
    third = cohorts["2025-03"]
    assert (third["customers"], third["base"]) == (1, "20.00")
    assert [m["retention"] for m in third["months"]] == ["1.0000"] * 4
    month = f"{LAST_MONTH:%Y-%m}"
    usage = ok(server.client(key).get("/v1/revenue/retention", params={"from": month, "to": f"{THIS_MONTH:%Y-%m}"}))
    assert [(c["cohort"], c["base"], c["months"][0]["retention"]) for c in usage["cohorts"]] == [
        (month, "6.00", "1.0000")
    ], "usage revenue counts for retention"


def test_csv_holds_the_same_rows(server: Server, key: str) -> None:
    client = server.client(key)
    r = client.get("/v1/revenue/mrr", params={"from": "2025-03", "to": "2025-05", "format": "csv"})
    assert r.headers["content-type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(row["month"], row["opening"], row["expansion"], row["closing"], row["arr"]) for row in rows] == [
        ("2025-03", "85.00", "15.49", "100.49", "1205.88"),
        ("2025-04", "100.49", "14.51", "108.00", "1296.00"),
    ]
    params = {"from": "2025-04", "to": "2025-05", "format": "csv", "by_customer": "true"}
    rows = list(csv.DictReader(io.StringIO(client.get("/v1/revenue/mrr", params=params).text)))
    assert {row["customer"]: row["movement"] for row in rows} == {
        "c-new": "",
        "c-exp": "expansion",
        "c-con": "contraction",
        "c-react": "reactivation",
    }
    r = client.get("/v1/revenue/retention", params={"from": "2025-03", "to": "2025-05", "format": "csv"})
    assert r.text.splitlines() == [
        "cohort,currency,cohort_size,base,month,revenue,customers,retention",
        "2025-03,EUR,1,20.00,2025-03,20.00,1,1.0000",
        "2025-03,EUR,1,20.00,2025-04,20.00,1,1.0000",
    ]


def test_the_reporting_zone_decides_the_months(server: Server) -> None:
    """In Tokyo (UTC+9) a fee for [1 Jan 00:00Z, 1 Feb 00:00Z) is [1 Jan 09:00, 1 Feb 09:00) local: both months.

    January: 31 - 9/24 = 30.625 of its 31 days; February: 9/24 = 0.375 of a day of its 28. 3,100 JPY (no minor
    unit) x (30.625/31) / (30.625/31 + 0.375/28) = 3,058.54 -> 3,059 in January; February 41.46 -> 41.
    """
    key = server.tenant_key("tokyo", ["read", "admin"])
    with server.client(key) as c:
        ok(c.put("/v1/revenue/settings", json={"timezone": "Asia/Tokyo"}))
        ok(c.post("/v1/customers", json={"id": "c1", "name": "c1", "currency": "JPY"}))
        ok(c.post("/v1/plans", json={"id": "pro", "name": "Pro"}), 201)
        base = {"id": "base", "currency": "JPY", "model": "flat", "amount": "3100", "cadence": "in_advance"}
        ok(c.post("/v1/plans/pro/versions", json={"effective_from": "2020-01-01T00:00:00Z", "prices": [base]}), 201)
        subscribe(c, "s1", "c1", 1, "2025-01-01", "2025-02-01")
        ok(c.post("/v1/invoices/run", json={"period": "2025-01", "finalize": True}))
        report = ok(c.get("/v1/revenue/mrr", params={"from": "2024-12", "to": "2025-04"}))
    assert report["timezone"] == "Asia/Tokyo"
    assert [(m["month"], m["closing"], m["new"], m["contraction"], m["churn"]) for m in report["months"]] == [
        ("2024-12", "0", "0", "0", "0"),
        ("2025-01", "3059", "3059", "0", "0"),
        ("2025-02", "41", "0", "-3018", "0"),
        ("2025-03", "0", "0", "0", "-41"),
    ]


@pytest.mark.parametrize(
    ("params", "code", "word"),
    [
        ({"from": "2025-06", "to": "2025-02"}, "invalid_period", "must be before"),
        ({"from": "2025-13"}, "invalid_period", "YYYY-MM"),
        ({"to": "June"}, "invalid_period", "YYYY-MM"),
        ({"from": "2000-01", "to": "2025-02"}, "invalid_period", "at most 120 months"),
        ({"format": "xlsx"}, "invalid_query", "json, csv"),
        ({"by_customer": "maybe"}, "invalid_query", "by_customer"),
    ],
)
def test_bad_queries_are_400_and_say_what_to_fix(
    server: Server, key: str, params: dict[str, str], code: str, word: str
) -> None:
    for path in ("/v1/revenue/mrr", "/v1/revenue/retention"):
        if "by_customer" in params and path.endswith("retention"):
            continue
        r = server.client(key).get(path, params=params)
        assert r.status_code == 400 and r.json()["code"] == code, (path, params, r.text)
        assert word in r.json()["message"], r.json()["message"]


def test_client_and_cli(server: Server, key: str) -> None:
    with Client(server.url, api_key=key) as client:
        report = client.revenue_mrr("2025-04", "2025-05", by_customer=True)
        assert report["months"][0]["closing"] == "108.00" and len(report["customers"]) == 4
        cohorts = client.revenue_retention("2025-01", "2025-03")["cohorts"]
        assert [m["retention"] for m in cohorts[0]["months"]] == ["1.0000", "0.8095"]
        assert client.revenue_report_csv("mrr", **{"from": "2025-05", "to": "2025-06"}).startswith(b"month,")
    env = {"METER_URL": server.url, "METER_API_KEY": key, "COLUMNS": "250"}
    result = CliRunner().invoke(main, ["revenue", "mrr", "--from", "2025-03", "--to", "2025-05"], env=env)
    assert result.exit_code == 0, result.output
    assert "100.49" in result.output and "15.49" in result.output and "1296.00" in result.output
    result = CliRunner().invoke(main, ["revenue", "mrr", "--from", "2025-04", "--to", "2025-05", "--csv"], env=env)
    assert result.exit_code == 0 and result.output.splitlines()[1].startswith("2025-04,EUR,100.49,"), result.output
    result = CliRunner().invoke(main, ["revenue", "retention", "--from", "2025-01", "--to", "2025-04"], env=env)
    assert result.exit_code == 0 and "0.7666" in result.output, result.output
    result = CliRunner().invoke(
        main, ["revenue", "mrr", "--from", "2025-04", "--to", "2025-05", "--by-customer"], env=env
    )
    assert result.exit_code == 0 and "reactivation" in result.output and "c-react" in result.output, result.output
    result = CliRunner().invoke(
        main, ["revenue", "retention", "--from", "2025-01", "--to", "2025-07", "--csv"], env=env
    )
    assert result.exit_code == 0 and "2025-01,EUR,4,105.00,2025-03,80.49,2,0.7666" in result.output, result.output
    result = CliRunner().invoke(main, ["revenue", "mrr", "--from", "2025-13"], env=env)
    assert result.exit_code != 0 and "invalid_period" in result.output
