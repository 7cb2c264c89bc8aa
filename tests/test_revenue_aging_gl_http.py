"""Accounts-receivable aging and the general-ledger export over HTTP against the real server, and their CLI commands.

The history, worked by hand. Reporting zone America/New_York (EDT, UTC-4, until 2026-11-01; EST, UTC-5, after), EUR,
every fee in advance (deferred revenue), no tax. Invoices are finalized at chosen past instants, which no route takes,
so the history is written through the app in this process (the invoice store's ``finalize``, ``credit``, ``void``
with their ``now``) and then read over HTTP from the real server started on the same data directory.

==========  ========  ======  ===================  =============================================================
invoice     customer  amount  finalized (UTC)      then
==========  ========  ======  ===================  =============================================================
INV-000001  c1        100.00  2026-06-15 15:00     30.00 paid 2026-07-01: owes 70.00
INV-000002  c1         40.00  2026-10-20 15:00     credit note CN-000001 of 15.00 on 2026-11-05 15:00: owes 25.00
INV-000003  c2         60.00  2026-09-10 15:00     voided 2026-11-10 15:00: owes nothing after
INV-000004  c2         80.00  2026-11-15 15:00     owes 80.00
INV-000005  c2         10.00  2026-12-01 03:00     (2026-11-30 22:00 in New York) owes 10.00
INV-000006  c1         10.00  2026-08-01 15:00     paid in full 2026-08-05: owes nothing after
==========  ========  ======  ===================  =============================================================

Aging as of 2026-11-30 (through its end in New York), due at finalization, days = 2026-11-30 minus the local day:
INV-000001 168 days (90+), INV-000002 41 (31-60), INV-000004 15 (1-30), INV-000005 0 (current).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from http_server import Server
from in_process import started
from meter.billing.store import InvoiceStore
from meter.cli import main
from meter.money.ledger import JournalEntry
from meter.money.revenue.aging import bucket
from meter.money.revenue.gl import memo

ZONE = "America/New_York"
#: Subscription -> (customer, its plan's monthly fee in advance, when its November invoice is finalized).
HISTORY = {
    "s1": ("c1", "100", "2026-06-15T15:00:00Z"),
    "s2": ("c1", "40", "2026-10-20T15:00:00Z"),
    "s4": ("c2", "60", "2026-09-10T15:00:00Z"),
    "s5": ("c2", "80", "2026-11-15T15:00:00Z"),
    "s3": ("c2", "10", "2026-12-01T03:00:00Z"),
    "s6": ("c1", "10", "2026-08-01T15:00:00Z"),
}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _history(data_dir: Path) -> tuple[str, dict[str, str]]:
    """Writes the history (see the module doc); the tenant key and each subscription's invoice id."""
    with started(data_dir) as app:
        for customer in ("c1", "c2"):
            assert app.post("/v1/customers", json={"id": customer, "name": customer, "currency": "EUR"}).is_success
        for sub, (customer, fee, _) in HISTORY.items():
            plan = f"p-{sub}"
            assert app.post("/v1/plans", json={"id": plan, "name": plan}).status_code == 201
            price = {"id": "base", "currency": "EUR", "model": "flat", "amount": fee, "cadence": "in_advance"}
            r = app.post(
                f"/v1/plans/{plan}/versions", json={"effective_from": "2020-01-01T00:00:00Z", "prices": [price]}
            )
            assert r.status_code == 201, r.text
            body = {"id": sub, "customer": customer, "plan": plan, "version": 1, "start": "2026-10-01T00:00:00Z"}
            assert app.post("/v1/subscriptions", json=body).is_success
        assert app.request("PUT", "/v1/revenue/settings", json={"timezone": ZONE}).is_success
        run = app.post("/v1/invoices/run", json={"period": "2026-11", "finalize": False})
        assert run.is_success, run.text
        ids = {i["subscription"]: i["id"] for i in run.json()["invoices"]}
        store = app.app.invoices
        assert isinstance(store, InvoiceStore)
        for sub, (_, _, finalized) in HISTORY.items():
            store.finalize("acme", ids[sub], now=at(finalized))
        paid = app.post(f"/v1/invoices/{ids['s1']}/payments", json={"amount": "30", "date": "2026-07-01T12:00:00Z"})
        assert paid.is_success, paid.text
        store.credit("acme", ids["s2"], Decimal("15"), "outage", now=at("2026-11-05T15:00:00Z"))
        store.void("acme", ids["s4"], now=at("2026-11-10T15:00:00Z"))
        paid = app.post(f"/v1/invoices/{ids['s6']}/payments", json={"amount": "10", "date": "2026-08-05T12:00:00Z"})
        assert paid.is_success, paid.text
        return app.key, ids


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, dict[str, str]]]:
    data_dir = tmp_path_factory.mktemp("revenue-ar-gl")
    key, ids = _history(data_dir)
    server = Server(data_dir)
    yield server, key, ids
    server.stop()


@pytest.fixture(scope="module")
def server(served: tuple[Server, str, dict[str, str]]) -> Server:
    return served[0]


@pytest.fixture(scope="module")
def key(served: tuple[Server, str, dict[str, str]]) -> str:
    return served[1]


@pytest.fixture(scope="module")
def ids(served: tuple[Server, str, dict[str, str]]) -> dict[str, str]:
    return served[2]


def aging(server: Server, key: str, **params: str) -> dict[str, Any]:
    r = server.client(key).get("/v1/revenue/ar-aging", params=params)
    assert r.status_code == 200, r.text
    report: dict[str, Any] = r.json()
    return report


def row(customer: str | None, current: str, d1_30: str, d31_60: str, d61_90: str, d90: str, n: int) -> dict[str, Any]:
    amounts = [Decimal(a) for a in (current, d1_30, d31_60, d61_90, d90)]
    found = {
        "currency": "EUR",
        "current": current,
        "1_30": d1_30,
        "31_60": d31_60,
        "61_90": d61_90,
        "90_plus": d90,
        "total": f"{sum(amounts):.2f}",
        "invoices": n,
    }
    return found if customer is None else {**found, "customer": customer}


def test_aging_at_the_end_of_a_day_buckets_what_each_invoice_still_owes(server: Server, key: str) -> None:
    report = aging(server, key, as_of="2026-11-30")
    # Through the end of 2026-11-30 in New York (EST): the instant 2026-12-01 05:00 UTC.
    assert (report["as_of"], report["date"], report["timezone"]) == ("2026-12-01T05:00:00Z", "2026-11-30", ZONE)
    assert [(i["number"], i["days_past_due"], i["bucket"], i["owed"]) for i in report["invoices"]] == [
        ("INV-000001", 168, "90_plus", "70.00"),  # 100.00 less 30.00 paid; 2026-06-15 -> 2026-11-30
        ("INV-000002", 41, "31_60", "25.00"),  # 40.00 less the 15.00 credit note; 2026-10-20 -> 2026-11-30
        ("INV-000004", 15, "1_30", "80.00"),  # 2026-11-15 -> 2026-11-30; INV-000003 voided, INV-000006 paid
        ("INV-000005", 0, "current", "10.00"),  # finalized 22:00 on the 30th in New York: due that day
    ]
    assert [i["due"] for i in report["invoices"]] == ["2026-06-15", "2026-10-20", "2026-11-15", "2026-11-30"]
    assert report["customers"] == [
        row("c1", "0.00", "0.00", "25.00", "0.00", "70.00", 2),
        row("c2", "10.00", "80.00", "0.00", "0.00", "0.00", 2),
    ]
    assert report["totals"] == [row(None, "10.00", "80.00", "25.00", "0.00", "70.00", 4)]
    # The same receivables the ledger holds per customer at that instant.
    balances = server.client(key).get("/v1/ledger/balances", params={"as_of": report["as_of"]}).json()
    assert {b["customer"]: b["owed"] for b in balances} == {"c1": "95.00", "c2": "90.00"}


def test_aging_at_a_past_date_is_what_was_owed_then(server: Server, key: str) -> None:
    # 2026-11-01: INV-000002 not yet credited (40.00, 12 days), INV-000003 not yet voided (60.00, 52 days).
    report = aging(server, key, as_of="2026-11-01")
    assert [(i["number"], i["days_past_due"], i["owed"]) for i in report["invoices"]] == [
        ("INV-000001", 139, "70.00"),
        ("INV-000002", 12, "40.00"),
        ("INV-000003", 52, "60.00"),
    ]
    assert report["totals"] == [row(None, "0.00", "40.00", "60.00", "0.00", "70.00", 3)]
    # 2026-08-03: INV-000006 not yet paid (2 days), INV-000001 already paid in part (49 days).
    report = aging(server, key, as_of="2026-08-03")
    assert report["customers"] == [row("c1", "0.00", "10.00", "70.00", "0.00", "0.00", 2)]
    # Before any finalization: nothing owed, no row.
    assert aging(server, key, as_of="2026-01-01") == {
        "as_of": "2026-01-02T05:00:00Z",
        "date": "2026-01-01",
        "timezone": ZONE,
        "customers": [],
        "totals": [],
        "invoices": [],
    }


def test_aging_at_an_instant_counts_days_to_its_local_day(server: Server, key: str) -> None:
    # Midnight UTC is 19:00 on the 30th in New York: INV-000005 (03:00 UTC on the 1st) is not finalized yet.
    report = aging(server, key, as_of="2026-12-01T00:00:00Z")
    assert report["date"] == "2026-11-30"
    assert [(i["number"], i["days_past_due"]) for i in report["invoices"]] == [
        ("INV-000001", 168),
        ("INV-000002", 41),
        ("INV-000004", 15),
    ]
    now = aging(server, key)  # as of now: what is owed today, every invoice already past due
    assert {i["number"]: i["owed"] for i in now["invoices"]} == {
        "INV-000001": "70.00",
        "INV-000002": "25.00",
        "INV-000004": "80.00",
        "INV-000005": "10.00",
    }


def test_aging_as_csv_and_what_a_request_must_be(server: Server, key: str) -> None:
    client = server.client(key)
    by_format = client.get("/v1/revenue/ar-aging", params={"as_of": "2026-11-30", "format": "csv"})
    by_accept = client.get("/v1/revenue/ar-aging", params={"as_of": "2026-11-30"}, headers={"accept": "text/csv"})
    assert by_format.headers["content-type"] == "text/csv" and by_format.content == by_accept.content
    assert list(csv.reader(io.StringIO(by_format.text))) == [
        ["customer", "currency", "current", "1_30", "31_60", "61_90", "90_plus", "total", "invoices"],
        ["c1", "EUR", "0.00", "0.00", "25.00", "0.00", "70.00", "95.00", "2"],
        ["c2", "EUR", "10.00", "80.00", "0.00", "0.00", "0.00", "90.00", "2"],
        ["", "EUR", "10.00", "80.00", "25.00", "0.00", "70.00", "185.00", "4"],
    ]
    for params, word in (
        ({"as_of": "yesterday"}, "YYYY-MM-DD"),
        ({"as_of": "2026-11-31"}, "YYYY-MM-DD"),
        ({"as_of": "2026-11-30T00:00:00"}, "offset"),
        ({"as_of": "9999-12-31"}, "9998"),
        ({"format": "xlsx"}, "csv"),
    ):
        r = client.get("/v1/revenue/ar-aging", params=params)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_query"), (params, r.text)
        assert word in r.json()["message"], (params, r.json()["message"])


def test_the_cli_prints_the_aging(server: Server, key: str) -> None:
    env = {"METER_URL": server.url, "METER_API_KEY": key, "COLUMNS": "250"}
    printed = CliRunner().invoke(main, ["revenue", "aging", "--as-of", "2026-11-30", "--invoices"], env=env)
    assert printed.exit_code == 0, printed.output
    assert "185.00" in printed.output and "INV-000001" in printed.output and "90_plus" in printed.output
    bad = CliRunner().invoke(main, ["revenue", "aging", "--as-of", "soon"], env=env)
    assert bad.exit_code == 1 and "invalid_query" in bad.output, bad.output


def gl(server: Server, key: str, **params: str) -> list[list[str]]:
    r = server.client(key).get("/v1/revenue/gl", params=params)
    assert r.status_code == 200 and r.headers["content-type"] == "text/csv", r.text
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["date", "account", "account_name", "debit", "credit", "memo", "customer", "entry", "currency"]
    return rows[1:]


def test_the_general_ledger_of_a_month_books_each_line_on_its_local_day(
    server: Server, key: str, ids: dict[str, str]
) -> None:
    # November in New York: INV-000004's and INV-000005's finalizations (the latter at 22:00 on the 30th), the credit
    # note on INV-000002, INV-000003's void; in posting order, each entry's lines together. Fees in advance: deferred.
    ar, deferred, revenue = ("1200", "Accounts receivable"), ("2300", "Deferred revenue"), ("4000", "Revenue")
    s5, s3, s4 = (f"invoice_finalized:{ids['s5']}", f"invoice_finalized:{ids['s3']}", f"invoice_voided:{ids['s4']}")
    note = ("credit note CN-000001 on invoice INV-000002", "c1", "credit_note:CN-000001", "EUR")
    assert gl(server, key, **{"from": "2026-11-01", "to": "2026-12-01"}) == [
        ["2026-11-15", *ar, "80.00", "0.00", "invoice INV-000004 finalized", "c2", s5, "EUR"],
        ["2026-11-15", *deferred, "0.00", "80.00", "invoice INV-000004 finalized", "c2", s5, "EUR"],
        ["2026-11-30", *ar, "10.00", "0.00", "invoice INV-000005 finalized", "c2", s3, "EUR"],
        ["2026-11-30", *deferred, "0.00", "10.00", "invoice INV-000005 finalized", "c2", s3, "EUR"],
        ["2026-11-05", *revenue, "15.00", "0.00", *note],
        ["2026-11-05", *ar, "0.00", "15.00", *note],
        ["2026-11-10", *ar, "0.00", "60.00", "invoice INV-000003 voided", "c2", s4, "EUR"],
        ["2026-11-10", *deferred, "60.00", "0.00", "invoice INV-000003 voided", "c2", s4, "EUR"],
    ]
    # The whole journal: 10 entries, 20 lines; debits = credits = 300.00 of invoices + 40.00 paid + 15.00 + 60.00.
    rows = gl(server, key)
    assert len(rows) == 20
    assert sum(Decimal(r[3]) for r in rows) == sum(Decimal(r[4]) for r in rows) == Decimal("415.00")
    payment = [r for r in rows if r[1] == "1000"]  # cash: the manual payments
    assert [(r[0], r[3], r[6]) for r in payment] == [("2026-07-01", "30.00", "c1"), ("2026-08-05", "10.00", "c1")]
    assert payment[0][5].startswith("payment ") and payment[0][5].endswith(" on invoice INV-000001"), payment[0]
    assert gl(server, key, to="2026-06-15") == []  # INV-000001 was finalized on the 15th


def test_the_general_ledger_pages_and_answers_json(server: Server, key: str) -> None:
    client = server.client(key)
    november = {"from": "2026-11-01", "to": "2026-12-01"}
    whole = client.get("/v1/revenue/gl", params=november).content
    pages, after = [], "0"
    while after is not None:
        r = client.get("/v1/revenue/gl", params={**november, "limit": "1", "after": after})
        pages.append(r.text.split("\r\n", 1)[1])
        after = r.headers.get("meter-next")
    # An entry a page: seq 4, 5, 8, 9, then the rest of the journal read, with nothing in November.
    assert len(pages) == 5 and pages[-1] == "" and whole.decode().split("\r\n", 1)[1] == "".join(pages)
    page = client.get("/v1/revenue/gl", params={**november, "format": "json", "limit": "2"}).json()
    assert (page["next"], page["scanned"]) == (5, 5)
    assert page["data"][0] == {
        "date": "2026-11-15",
        "account": "1200",
        "account_name": "Accounts receivable",
        "debit": "80.00",
        "credit": "0.00",
        "memo": "invoice INV-000004 finalized",
        "customer": "c2",
        "entry": page["data"][0]["entry"],
        "currency": "EUR",
    }
    by_accept = client.get("/v1/revenue/gl", params=november, headers={"accept": "application/json"}).json()
    assert len(by_accept["data"]) == 8 and by_accept["next"] is None
    for params, word in (
        ({"from": "2026-11"}, "YYYY-MM-DD"),
        ({"to": "2026-11-01T00:00:00Z"}, "YYYY-MM-DD"),
        ({"from": "2026-12-01", "to": "2026-11-01"}, "[from, to)"),
        ({"format": "parquet"}, "csv"),
        ({"limit": "0"}, "1-10000"),
        ({"after": "x"}, "next"),
    ):
        r = client.get("/v1/revenue/gl", params=params)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_query"), (params, r.text)
        assert word in r.json()["message"], (params, r.json()["message"])


def test_the_account_mapping_and_the_reporting_zone_change_codes_and_days(server: Server, key: str) -> None:
    client = server.client(key)
    november = {"from": "2026-11-01", "to": "2026-12-01"}
    mapped = {"timezone": "UTC", "accounts": {"accounts_receivable": "1100", "deferred_revenue": "2350"}}
    assert client.put("/v1/revenue/settings", json=mapped).is_success
    try:
        rows = gl(server, key, **november)
    finally:
        assert client.put("/v1/revenue/settings", json={"timezone": ZONE}).is_success
    # In UTC, INV-000005 (03:00 UTC on December 1st) is December's: November keeps six lines, with the new codes.
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("2026-11-15", "1100", "Accounts receivable", "80.00", "0.00"),
        ("2026-11-15", "2350", "Deferred revenue", "0.00", "80.00"),
        ("2026-11-05", "4000", "Revenue", "15.00", "0.00"),
        ("2026-11-05", "1100", "Accounts receivable", "0.00", "15.00"),
        ("2026-11-10", "1100", "Accounts receivable", "0.00", "60.00"),
        ("2026-11-10", "2350", "Deferred revenue", "60.00", "0.00"),
    ]
    assert [r[1] for r in gl(server, key, **november)][:2] == ["1200", "2300"]  # the defaults again


def test_the_cli_writes_the_general_ledger_as_one_csv_file(server: Server, key: str, tmp_path: Path) -> None:
    env = {"METER_URL": server.url, "METER_API_KEY": key, "COLUMNS": "250"}
    out = tmp_path / "gl.csv"
    args = ["revenue", "gl", "--from", "2026-11-01", "--to", "2026-12-01", "-o", str(out), "--page-size", "1"]
    written = CliRunner().invoke(main, args, env=env)
    assert written.exit_code == 0 and "5 pages" in written.output, written.output
    whole = server.client(key).get("/v1/revenue/gl", params={"from": "2026-11-01", "to": "2026-12-01"})
    assert out.read_bytes() == whole.content
    bad = CliRunner().invoke(main, ["revenue", "gl", "--from", "November", "-o", str(tmp_path / "x.csv")], env=env)
    assert bad.exit_code == 1 and "invalid_query" in bad.output and not (tmp_path / "x.csv").exists(), bad.output


def test_bucket_edges_are_inclusive_and_90_plus_starts_at_91() -> None:
    edges = {-3: "current", 0: "current", 1: "1_30", 30: "1_30", 31: "31_60", 60: "31_60", 61: "61_90"}
    assert {days: bucket(days) for days in [*edges, 90, 91]} == {**edges, 90: "61_90", 91: "90_plus"}


def test_every_kind_of_entry_has_a_memo_an_accountant_reads() -> None:
    def entry(kind: str, cause: str, **refs: str) -> JournalEntry:
        fields: dict[str, Any] = {"tenant": "acme", "currency": "EUR", "created_at": at("2026-11-01T00:00:00Z")}
        return JournalEntry(id=f"{kind}:{cause}", kind=kind, lines=[], invoice="s1-2026-11", **fields, **refs)  # type: ignore[arg-type]

    assert memo(entry("refund", "re_1", payment="pay_1"), "INV-000007") == (
        "refund re_1 of payment pay_1 on invoice INV-000007"
    )
    assert memo(entry("write_off", "s1-2026-11"), "INV-000007") == "invoice INV-000007 written off"
    assert memo(entry("credit_applied", "s1-2026-11"), None) == "credit balance applied to invoice s1-2026-11"
    assert memo(entry("payment", "pay_2", payment="pay_2", memo="wire 42"), "INV-000007") == (
        "payment pay_2 on invoice INV-000007: wire 42"
    )
    # A kind this module does not know (a recognition entry, say): its id says what it is.
    assert memo(entry("revenue_recognized", "s1-2026-11|base|2026-11"), None) == (
        "revenue recognized s1-2026-11|base|2026-11"
    )
