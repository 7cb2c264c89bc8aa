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
