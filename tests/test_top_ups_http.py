"""``POST /v1/customers/{id}/top-ups`` over HTTP: 201 with the finalized invoice, a retry answers the same (200).

Another body under the same id is a 409 ``conflict``; bad input a 400 that says what to fix; the grant is on the
subscription and the invoice's finalization in the ledger.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from http_server import Server
from meter.client import Client, ServerError

JAN = "2026-01-01T00:00:00Z"
TOKENS = {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.002"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("top-ups-http") / "data")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    return server.tenant_key("acme", ["ingest", "read", "admin"])


@pytest.fixture(scope="module")
def acme(server: Server, key: str) -> httpx.Client:
    client = server.client(key)
    spec = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
    assert client.post("/v1/meters", json=spec).status_code == 201
    for customer in ("c1", "c2"):
        r = client.post("/v1/customers", json={"id": customer, "name": customer, "currency": "EUR"})
        assert r.status_code == 200, r.text
    plan = {"id": "pro", "name": "Pro", "versions": [{"effective_from": JAN, "prices": [TOKENS]}]}
    r = client.post("/v1/plans", json=plan)
    assert r.status_code == 201, r.text
    sub = {"id": "s1", "customer": "c1", "plan": "pro", "version": 1, "start": JAN}
    assert client.post("/v1/subscriptions", json=sub).status_code == 200
    return client


def test_a_top_up_is_invoiced_once_and_granted(acme: httpx.Client) -> None:
    r = acme.post("/v1/customers/c1/top-ups", json={"id": "t1", "amount": "25.00", "priority": 1})
    assert r.status_code == 201, r.text
    answer = r.json()
    invoice = answer["invoice"]
    assert invoice["id"] == "s1-topup-t1" and invoice["reason"] == "top_up" and invoice["status"] == "open"
    assert invoice["total"] == "25.00" and invoice["number"].startswith("INV-")
    assert answer["top_up"]["subscription"] == "s1" and answer["top_up"]["amount"] == "25.00"

    again = acme.post("/v1/customers/c1/top-ups", json={"id": "t1", "amount": "25.00", "priority": 1})
    assert again.status_code == 200 and again.json()["invoice"] == invoice
    r = acme.post("/v1/customers/c1/top-ups", json={"id": "t1", "amount": "30.00", "priority": 1})
    assert r.status_code == 409 and r.json()["code"] == "conflict", r.text

    [commit] = acme.get("/v1/subscriptions/s1").json()["commits"]
    assert (commit["id"], commit["kind"], commit["amount"], commit["priority"]) == ("t1", "prepaid", "25.00", 1)
    entries = acme.get("/v1/ledger/entries", params={"invoice": "s1-topup-t1"}).json()["data"]
    deferred = [line for e in entries for line in e["lines"] if line["account"] == "deferred_revenue"]
    assert [line["credit"] for line in deferred] == ["25.00"]
    assert [t["id"] for t in acme.get("/v1/customers/c1/top-ups").json()] == ["t1"]
    assert acme.get("/v1/customers/nobody/top-ups").status_code == 404


@pytest.mark.parametrize(
    ("customer", "body", "status", "code", "message"),
    [
        ("c1", {"id": "x", "amount": "0"}, 400, "invalid_top_up", "must be above 0"),
        ("c1", {"id": "x", "amount": "1.005"}, 400, "invalid_top_up", "minor unit"),
        ("c1", {"id": "x", "amount": "1", "expires_at": "2020-01-01T00:00:00Z"}, 400, "invalid_top_up", "after now"),
        ("c1", {"id": "x"}, 400, "invalid_top_up", "amount"),
        ("c1", {"id": "a/b", "amount": "1"}, 400, "invalid_top_up", "id"),
        ("c2", {"id": "x", "amount": "1"}, 400, "invalid_top_up", "has 0 subscriptions running"),
        ("nobody", {"id": "x", "amount": "1"}, 404, "not_found", "nobody"),
    ],
)
def test_what_a_top_up_cannot_be(
    acme: httpx.Client, customer: str, body: dict[str, str], status: int, code: str, message: str
) -> None:
    r = acme.post(f"/v1/customers/{customer}/top-ups", json=body)
    assert r.status_code == status and r.json()["code"] == code, r.text
    assert message in r.json()["message"]


def test_the_client_tops_up(server: Server, key: str, acme: httpx.Client) -> None:
    with Client(server.url, api_key=key) as client:
        done = client.top_up("c1", "t2", "10.00")
        assert done["invoice"]["id"] == "s1-topup-t2"
        assert client.top_up("c1", "t2", "10.00") == done
        assert [t["id"] for t in client.list_top_ups("c1")] == ["t1", "t2"]
        with pytest.raises(ServerError) as e:
            client.top_up("c1", "t2", "11.00")
        assert e.value.status == 409


def test_a_retry_after_a_crash_answers_the_same_top_up(tmp_path_factory: pytest.TempPathFactory) -> None:
    data = tmp_path_factory.mktemp("top-ups-crash") / "data"
    first = Server(data)
    key = first.tenant_key("acme", ["read", "admin"])
    client = first.client(key)
    spec = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
    assert client.post("/v1/meters", json=spec).status_code == 201
    assert client.post("/v1/customers", json={"id": "c1", "name": "c1", "currency": "EUR"}).status_code == 200
    plan = {"id": "pro", "name": "Pro", "versions": [{"effective_from": JAN, "prices": [TOKENS]}]}
    assert client.post("/v1/plans", json=plan).status_code == 201
    sub = {"id": "s1", "customer": "c1", "plan": "pro", "version": 1, "start": JAN}
    assert client.post("/v1/subscriptions", json=sub).status_code == 200
    r = client.post("/v1/customers/c1/top-ups", json={"id": "t1", "amount": "40.00"})
    assert r.status_code == 201, r.text
    client.close()
    first.kill()  # no shutdown of any kind
    again = Server(data, admin_key=first.admin_key)
    try:
        client = again.client(key)
        retry = client.post("/v1/customers/c1/top-ups", json={"id": "t1", "amount": "40.00"})
        assert retry.status_code == 200 and retry.json()["invoice"] == r.json()["invoice"], retry.text
        assert [i["id"] for i in client.get("/v1/invoices").json()] == ["s1-topup-t1"]
        assert [c["id"] for c in client.get("/v1/subscriptions/s1").json()["commits"]] == ["t1"]
        entries = client.get("/v1/ledger/entries", params={"invoice": "s1-topup-t1"}).json()["data"]
        assert [e["kind"] for e in entries] == ["invoice_finalized"]
    finally:
        again.stop()
