"""Tax over HTTP against the real server: rates and settings, a taxed invoice, its credit note, the CLI, the errors.

The worked example: New York sales tax, 8.875 % exclusive, on a flat fee of 49.99 USD in advance:
49.99 x 8.875 % = 4.4366125 -> 4.44; total 54.43. A credit note of 10.00 carries back
round(10.00 x 4.44 / 54.43) = round(0.81572...) = 0.82.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from http_server import Server
from meter.cli import main


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("tax-http"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    return server.tenant_key("acme", ["ingest", "read", "admin"])


def test_rates_settings_and_a_taxed_invoice_over_http(server: Server, key: str) -> None:
    c = server.client(key)
    assert c.get("/v1/tax-settings").json()["code"] == "not_found"
    r = c.put("/v1/tax-settings", json={"country": "US", "region": "NY"})
    assert r.status_code == 200 and r.json()["provider"] == "catalog", r.text
    ny = {
        "id": "ny",
        "name": "NY sales tax",
        "country": "US",
        "region": "NY",
        "percentage": "8.875",
        "effective_from": "2026-01-01T00:00:00Z",
    }
    r = c.post("/v1/tax-rates", json=ny)
    assert r.status_code == 201 and r.json()["percentage"] == "8.875", r.text
    assert c.post("/v1/tax-rates", json=ny).status_code == 409
    assert [rate["id"] for rate in c.get("/v1/tax-rates").json()] == ["ny"]

    customer = {"id": "c1", "name": "One", "currency": "USD", "address": {"country": "US", "region": "NY"}}
    assert c.post("/v1/customers", json=customer).status_code == 200
    assert c.post("/v1/plans", json={"id": "pro", "name": "Pro"}).status_code == 201
    prices = [{"id": "base", "currency": "USD", "model": "flat", "amount": "49.99", "cadence": "in_advance"}]
    r = c.post("/v1/plans/pro/versions", json={"effective_from": "2026-01-01T00:00:00Z", "prices": prices})
    assert r.status_code == 201, r.text
    sub = {"id": "s1", "customer": "c1", "plan": "pro", "version": 1, "start": "2026-11-01T00:00:00Z"}
    assert c.post("/v1/subscriptions", json=sub).status_code == 200
    [draft] = c.post("/v1/invoices/run", json={"period": "2026-11"}).json()["invoices"]
    assert (draft["tax"], draft["taxes"], draft["total"]) == (None, [], "49.99")

    final = c.post(f"/v1/invoices/{draft['id']}/finalize")
    assert final.status_code == 200, final.text
    invoice = final.json()
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == ("49.99", "4.44", "54.43")
    assert invoice["taxes"] == [
        {
            "rate": "ny",
            "name": "NY sales tax",
            "country": "US",
            "region": "NY",
            "percentage": "8.875",
            "inclusive": False,
            "taxable": "49.99",
            "amount": "4.44",
        }
    ]
    assert invoice["line_taxes"] == [
        {"line": 0, "rate": "ny", "inclusive": False, "taxable": "49.99", "amount": "4.44"}
    ]
    assert c.get(f"/v1/invoices/{draft['id']}").json() == invoice

    note = c.post(f"/v1/invoices/{draft['id']}/credit-notes", json={"amount": "10", "reason": "outage"})
    assert note.status_code == 201, note.text
    assert (note.json()["amount"], note.json()["tax"]) == ("10.00", "0.82")
    assert [(t["rate"], t["amount"]) for t in note.json()["taxes"]] == [("ny", "0.82")]

    # The upcoming invoice (the next cycle's 49.99) shows the tax it would carry, as an estimate.
    [upcoming] = c.get("/v1/customers/c1/upcoming-invoice").json()
    assert (upcoming["status"], upcoming["subtotal"], upcoming["tax"], upcoming["total"]) == (
        "draft",
        "49.99",
        "4.44",
        "54.43",
    )
    assert upcoming["tax_note"] == "Estimate." and upcoming["taxes"][0]["rate"] == "ny"

    # Ending the rate: invoices finalized from then on are not taxed at it; it stays listed.
    ended = c.post("/v1/tax-rates/ny/end", json={"at": "2027-01-01T00:00:00Z"})
    assert ended.status_code == 200 and ended.json()["effective_to"] == "2027-01-01T00:00:00Z", ended.text
    again = c.post("/v1/tax-rates/ny/end", json={"at": "2027-02-01T00:00:00Z"})
    assert again.status_code == 400 and "ended already" in again.json()["message"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"country": "XX"}, "ISO 3166-1 alpha-2"),
        ({"country": "de"}, "ISO 3166-1"),
        ({"percentage": "101"}, "at most 100"),
        ({"percentage": "0.0000000001"}, "digits after the point"),
        ({"percentage": "-1"}, "0 or more"),
        ({"effective_to": "2025-01-01T00:00:00Z"}, "must be after effective_from"),
        ({"effective_from": "2026-01-01T00:00:00"}, "timezone"),
    ],
)
def test_a_rate_that_is_wrong_is_400_saying_what_to_fix(
    server: Server, key: str, change: dict[str, Any], says: str
) -> None:
    rate = {"id": "bad", "name": "VAT", "country": "DE", "percentage": "19", "effective_from": "2026-01-01T00:00:00Z"}
    r = server.client(key).post("/v1/tax-rates", json=rate | change)
    assert r.status_code == 400 and r.json()["code"] == "invalid_catalog", r.text
    assert says in r.json()["message"], r.json()["message"]


def test_a_customer_s_country_must_be_an_iso_code(server: Server, key: str) -> None:
    customer = {"id": "c9", "name": "Nine", "currency": "EUR", "address": {"country": "Germany"}}
    r = server.client(key).post("/v1/customers", json=customer)
    assert r.status_code == 400 and r.json()["code"] == "invalid_catalog", r.text
    assert "address.country` is 'Germany', which is not an ISO 3166-1 alpha-2" in r.json()["message"]


def test_a_customer_without_a_country_is_refused_when_rates_exist(server: Server) -> None:
    key = server.tenant_key("beta", ["read", "admin"])
    c = server.client(key)
    rate = {"id": "de", "name": "VAT", "country": "DE", "percentage": "19", "effective_from": "2026-01-01T00:00:00Z"}
    assert c.post("/v1/tax-rates", json=rate).status_code == 201
    assert c.post("/v1/customers", json={"id": "c1", "name": "One", "currency": "EUR"}).status_code == 200
    assert c.post("/v1/plans", json={"id": "pro", "name": "Pro"}).status_code == 201
    prices = [{"id": "base", "currency": "EUR", "model": "flat", "amount": "10", "cadence": "in_advance"}]
    c.post("/v1/plans/pro/versions", json={"effective_from": "2026-01-01T00:00:00Z", "prices": prices})
    sub = {"id": "s1", "customer": "c1", "plan": "pro", "version": 1, "start": "2026-11-01T00:00:00Z"}
    assert c.post("/v1/subscriptions", json=sub).status_code == 200
    [draft] = c.post("/v1/invoices/run", json={"period": "2026-11"}).json()["invoices"]
    r = c.post(f"/v1/invoices/{draft['id']}/finalize")
    assert r.status_code == 400 and r.json()["code"] == "tax_address_missing", r.text
    assert "address.country" in r.json()["message"]
    assert c.get(f"/v1/invoices/{draft['id']}").json()["status"] == "draft"


def test_the_tax_cli(server: Server, key: str) -> None:
    env = {"METER_URL": server.url, "METER_API_KEY": key, "COLUMNS": "250"}
    runner = CliRunner()
    made = runner.invoke(
        main,
        ["tax", "create", "gb-vat", "--name", "VAT", "--country", "GB", "--percentage", "20", "--inclusive"]
        + ["--from", "2026-01-01T00:00:00Z"],
        env=env,
    )
    assert made.exit_code == 0, made.output
    assert "tax rate gb-vat: 20 % inclusive in GB" in made.output
    listed = runner.invoke(main, ["tax", "rates"], env=env)
    assert listed.exit_code == 0 and "gb-vat" in listed.output and "8.875" in listed.output, listed.output
    ended = runner.invoke(main, ["tax", "end", "gb-vat", "--at", "2027-01-01T00:00:00Z"], env=env)
    assert ended.exit_code == 0 and "ends at 2027-01-01T00:00:00Z" in ended.output, ended.output
    [taxed] = [i for i in server.client(key).get("/v1/invoices").json() if i["tax"] is not None]
    invoice = runner.invoke(main, ["invoice", "show", taxed["id"]], env=env)
    assert invoice.exit_code == 0, invoice.output
    assert "NY sales tax 8.875 % (US-NY, added) on 49.99: 4.44 USD" in invoice.output
    assert "subtotal 49.99 USD, tax 4.44 USD, total 54.43 USD" in invoice.output
    shown = runner.invoke(main, ["tax", "settings"], env=env)
    assert shown.exit_code == 0 and "seller in US-NY; tax by catalog" in shown.output, shown.output
    bad = runner.invoke(
        main,
        ["tax", "create", "x", "--name", "x", "--country", "ZZ", "--percentage", "1"]
        + ["--from", "2026-01-01T00:00:00Z"],
        env=env,
    )
    assert bad.exit_code == 1 and "ISO 3166-1" in bad.output, bad.output
