"""The ledger over HTTP against the real server, and `meter ledger` through it.

Worked by hand: c1 has s1 and s2, c2 has s3, each 20.00 EUR in advance per cycle (deferred revenue). November's run
finalizes three invoices (60.00 receivable); 5.00 is credited on s1's (revenue back, receivable down); s2's is voided
(its finalization reversed). Five entries: receivable c1 15.00, c2 20.00; deferred revenue 40.00; revenue -5.00;
debits = credits = 85.00.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from http_server import Server
from meter.cli import main
from meter.lake.ledger import LINE_SCHEMA


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("ledger-http"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    key = server.tenant_key("acme", ["ingest", "read", "admin"])
    with server.client(key) as c:
        for customer in ("c1", "c2"):
            assert (
                c.post("/v1/customers", json={"id": customer, "name": customer, "currency": "EUR"}).status_code == 200
            )
        assert c.post("/v1/plans", json={"id": "pro", "name": "Pro"}).status_code == 201
        prices = [{"id": "base", "currency": "EUR", "model": "flat", "amount": "20", "cadence": "in_advance"}]
        r = c.post("/v1/plans/pro/versions", json={"effective_from": "2020-01-01T00:00:00Z", "prices": prices})
        assert r.status_code == 201, r.text
        for sub, customer in (("s1", "c1"), ("s2", "c1"), ("s3", "c2")):
            body = {"id": sub, "customer": customer, "plan": "pro", "version": 1, "start": "2026-10-01T00:00:00Z"}
            assert c.post("/v1/subscriptions", json=body).status_code == 200
        run = c.post("/v1/invoices/run", json={"period": "2026-11", "finalize": True}).json()
        ids = {i["subscription"]: i["id"] for i in run["invoices"]}
        r = c.post(f"/v1/invoices/{ids['s1']}/credit-notes", json={"amount": "5", "reason": "outage"})
        assert r.status_code == 201, r.text
        assert c.post(f"/v1/invoices/{ids['s2']}/void").status_code == 200
    return key


def entries(server: Server, key: str, **params: Any) -> dict[str, Any]:
    r = server.client(key).get("/v1/ledger/entries", params=params)
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


def test_entries_come_in_posting_order_and_page_by_seq(server: Server, key: str) -> None:
    page = entries(server, key)
    kinds = [e["kind"] for e in page["data"]]
    assert kinds == ["invoice_finalized"] * 3 + ["credit_note", "invoice_voided"]
    assert [e["seq"] for e in page["data"]] == [1, 2, 3, 4, 5] and page["next"] is None
    seen, after = [], 0
    while True:
        part = entries(server, key, limit=2, after=after)
        seen += part["data"]
        if part["next"] is None:
            break
        after = part["next"]
    assert seen == page["data"]
    note = page["data"][3]
    assert note["credit_note"] == "CN-000001" and note["customer"] == "c1"
    assert {(line["account"], line.get("debit"), line.get("credit")) for line in note["lines"]} == {
        ("revenue", "5.00", None),
        ("accounts_receivable", None, "5.00"),
    }


def test_filters_keep_matching_entries_and_refuse_what_the_ledger_has_not(server: Server, key: str) -> None:
    assert [e["customer"] for e in entries(server, key, customer="c2")["data"]] == ["c2"]
    assert [e["kind"] for e in entries(server, key, kind="credit_note")["data"]] == ["credit_note"]
    assert len(entries(server, key, account="revenue")["data"]) == 1
    voided = entries(server, key, kind="invoice_voided")["data"][0]["invoice"]
    assert [e["kind"] for e in entries(server, key, invoice=voided)["data"]] == ["invoice_finalized", "invoice_voided"]
    assert len(entries(server, key, **{"from": "2000-01-01T00:00:00Z", "to": "2999-01-01T00:00:00Z"})["data"]) == 5
    assert entries(server, key, to="2000-01-01T00:00:00Z")["data"] == []
    client = server.client(key)
    for params, word in (
        ({"account": "sales"}, "accounts_receivable"),
        ({"kind": "refunded"}, "write_off"),
        ({"from": "2026-12-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "[from, to)"),
        ({"limit": "0"}, "1-10000"),
        ({"after": "-1"}, "next"),
        ({"format": "xlsx"}, "parquet"),
        ({"from": "yesterday"}, "RFC 3339"),
    ):
        r = client.get("/v1/ledger/entries", params=params)
        assert r.status_code == 400 and r.json()["code"] == "invalid_query", (params, r.text)
        assert word in r.json()["message"], (params, r.json()["message"])


def test_csv_and_parquet_hold_one_row_per_line(server: Server, key: str) -> None:
    client = server.client(key)
    by_accept = client.get("/v1/ledger/entries", headers={"accept": "text/csv"})
    by_format = client.get("/v1/ledger/entries", params={"format": "csv"})
    assert by_accept.headers["content-type"] == "text/csv" and by_accept.content == by_format.content
    rows = list(csv.DictReader(io.StringIO(by_accept.text)))
    assert len(rows) == 10 and "meter-next" not in by_accept.headers
    assert sum(Decimal(r["debit"]) for r in rows) == sum(Decimal(r["credit"]) for r in rows) == Decimal("85.00")
    parquet = client.get("/v1/ledger/entries", params={"format": "parquet", "limit": 2})
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    assert parquet.headers["meter-next"] == "2"
    table = pq.read_table(pa.BufferReader(parquet.content))
    assert table.schema.equals(LINE_SCHEMA) and table.column("seq").to_pylist() == [1, 1, 2, 2]
    by_accept = client.get("/v1/ledger/entries", headers={"accept": "application/vnd.apache.parquet"})
    assert pq.read_table(pa.BufferReader(by_accept.content)).num_rows == 10
    assert client.get("/v1/ledger/entries", params={"format": "json"}, headers={"accept": "text/csv"}).json()["data"]


def test_the_trial_balance_balances_and_reads_as_of_a_time(server: Server, key: str) -> None:
    client = server.client(key)
    balance = client.get("/v1/ledger/trial-balance", params={"by_customer": "true"}).json()
    assert balance["balanced"] is True and balance["entries"] == 5
    assert balance["totals"] == [{"currency": "EUR", "debit": "85.00", "credit": "85.00"}]
    assert {a["account"]: a["balance"] for a in balance["accounts"]} == {
        "accounts_receivable": "35.00",
        "revenue": "-5.00",
        "deferred_revenue": "40.00",
    }
    assert {(c["account"], c["customer"]): c["balance"] for c in balance["customers"]} == {
        ("accounts_receivable", "c1"): "15.00",
        ("accounts_receivable", "c2"): "20.00",
    }
    before = client.get("/v1/ledger/trial-balance", params={"as_of": "2000-01-01T00:00:00Z"}).json()
    assert (before["entries"], before["accounts"], before["customers"]) == (0, [], None)


def test_customers_balances_come_from_the_ledger(server: Server, key: str) -> None:
    client = server.client(key)
    assert client.get("/v1/ledger/balances").json() == [
        {"customer": "c1", "currency": "EUR", "owed": "15.00", "credit": "0.00"},
        {"customer": "c2", "currency": "EUR", "owed": "20.00", "credit": "0.00"},
    ]
    assert [b["customer"] for b in client.get("/v1/ledger/balances", params={"customer": "c2"}).json()] == ["c2"]
    assert client.get("/v1/ledger/balances", params={"customer": "nobody"}).json() == []
    assert client.get("/v1/ledger/balances", params={"as_of": "2000-01-01T00:00:00Z"}).json() == []


def test_the_cli_reads_the_ledger_and_exports_it_as_csv(server: Server, key: str, tmp_path: Path) -> None:
    env = {"METER_URL": server.url, "METER_API_KEY": key, "COLUMNS": "250"}
    runner = CliRunner()
    listed = runner.invoke(main, ["ledger", "entries", "--kind", "credit_note"], env=env)
    assert listed.exit_code == 0 and "credit_note" in listed.output and "revenue" in listed.output, listed.output
    paged = runner.invoke(main, ["ledger", "entries", "--limit", "1"], env=env)
    assert paged.exit_code == 0 and "more: --after 1" in paged.output, paged.output
    balance = runner.invoke(main, ["ledger", "trial-balance", "--by-customer"], env=env)
    assert balance.exit_code == 0 and "85.00" in balance.output and "c2" in balance.output, balance.output
    balances = runner.invoke(main, ["ledger", "balances", "c1"], env=env)
    assert balances.exit_code == 0 and "15.00" in balances.output, balances.output
    out = tmp_path / "journal.csv"
    exported = runner.invoke(main, ["ledger", "export", "--out", str(out), "--page-size", "2"], env=env)
    assert exported.exit_code == 0 and "3 pages" in exported.output, exported.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 10 and [int(r["seq"]) for r in rows] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    bad = runner.invoke(main, ["ledger", "entries", "--account", "sales"], env=env)
    assert bad.exit_code == 1 and "invalid_query" in bad.output and "accounts_receivable" in bad.output
