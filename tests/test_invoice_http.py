"""Invoices over HTTP against the real server, under concurrency.

Invoices over HTTP against the real server, under concurrency: numbers never repeat and have no gaps, credit
notes never exceed what they credit, a void is applied once, and the API answers bad money and bad periods with 400.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from http_server import Server
from meter.cli import main

SUBSCRIPTIONS = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("invoice-http"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    key = server.tenant_key("acme", ["ingest", "read", "admin"])
    with server.client(key) as c:
        assert c.post("/v1/customers", json={"id": "c1", "name": "One", "currency": "EUR"}).status_code == 200
        assert c.post("/v1/plans", json={"id": "pro", "name": "Pro"}).status_code == 201
        prices = [{"id": "base", "currency": "EUR", "model": "flat", "amount": "2E+1", "cadence": "in_advance"}]
        r = c.post("/v1/plans/pro/versions", json={"effective_from": "2020-01-01T00:00:00Z", "prices": prices})
        assert r.status_code == 201, r.text
        for i in range(SUBSCRIPTIONS):
            sub = {"id": f"s{i:02d}", "customer": "c1", "plan": "pro", "version": 1, "start": "2026-10-01T00:00:00Z"}
            assert c.post("/v1/subscriptions", json=sub).status_code == 200
    return key


def post_all(server: Server, key: str, paths: list[tuple[str, dict[str, Any] | None]]) -> list[httpx.Response]:
    """Every POST at once, from as many threads."""

    def post(item: tuple[str, dict[str, Any] | None]) -> httpx.Response:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            return c.post(item[0], json=item[1])

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        return list(pool.map(post, paths))


def test_concurrent_finalize_void_and_credit_keep_numbers_unique_and_gapless(server: Server, key: str) -> None:
    client = server.client(key)
    run = client.post("/v1/invoices/run", json={"period": "2026-11"})
    assert run.status_code == 200, run.text
    body = run.json()
    assert body["errors"] == [] and len(body["invoices"]) == SUBSCRIPTIONS
    assert body["fees_in_advance"] == {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}
    assert body["usage_in_arrears"] == {"start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"}
    drafts = [i["id"] for i in body["invoices"]]
    assert {i["total"] for i in body["invoices"]} == {"20.00"}, "amounts at the minor unit, never 2E+1"

    answers = post_all(server, key, [(f"/v1/invoices/{d}/finalize", None) for d in drafts * 2])
    assert Counter(a.status_code for a in answers) == {200: SUBSCRIPTIONS, 409: SUBSCRIPTIONS}
    numbers = sorted(a.json()["number"] for a in answers if a.status_code == 200)
    assert numbers == [f"INV-{n:06d}" for n in range(1, SUBSCRIPTIONS + 1)], "unique and gapless"
    listed = client.get("/v1/invoices", params={"status": "open"}).json()
    assert sorted(i["number"] for i in listed) == numbers

    target = drafts[0]
    notes = post_all(server, key, [(f"/v1/invoices/{target}/credit-notes", {"amount": "1", "reason": "r"})] * 40)
    accepted = [n.json() for n in notes if n.status_code == 201]
    assert len(accepted) == 20 and {n.status_code for n in notes} == {201, 400}
    assert sum(Decimal(n["amount"]) for n in accepted) == Decimal(20), "never more than the invoice's total"
    assert sorted(n["number"] for n in accepted) == [f"CN-{n:06d}" for n in range(1, 21)]
    assert {n["amount"] for n in accepted} == {"1.00"}

    voids = post_all(server, key, [(f"/v1/invoices/{drafts[1]}/void", None)] * 8)
    assert Counter(v.status_code for v in voids) == {200: 1, 409: 7}, "a state conflict is a 409"
    reissued = client.post("/v1/invoices/run", json={"period": "2026-11", "finalize": True}).json()["invoices"]
    assert [(i["id"], i["reissues"], i["number"]) for i in reissued] == [
        (f"{drafts[1]}-r2", drafts[1], f"INV-{SUBSCRIPTIONS + 1:06d}")
    ]
    by_usage = client.get("/v1/invoices", params={"usage_period": "2026-10"}).json()
    assert len(by_usage) == SUBSCRIPTIONS + 1
    assert client.get("/v1/invoices", params={"usage_period": "2026-11"}).json() == []


@pytest.mark.parametrize("period", ["9999-12", "0001-01", "2026-13", "10000-01"])
def test_bad_periods_are_400(server: Server, key: str, period: str) -> None:
    client = server.client(key)
    for r in (
        client.post("/v1/invoices/run", json={"period": period}),
        client.get("/v1/invoices", params={"usage_period": period}),
        client.get("/v1/invoices", params={"period": period}),
    ):
        assert r.status_code == 400 and r.json()["code"] == "invalid_period", r.text


@pytest.mark.parametrize("amount", ["0.001", "NaN", "-1", "0", "1E+999999", "0.000000000000000000000000000001"])
def test_a_credit_note_that_is_not_money_is_400(server: Server, key: str, amount: str) -> None:
    client = server.client(key)
    finalized = client.get("/v1/invoices", params={"status": "open"}).json()
    target = finalized[-1]["id"]
    r = client.post(f"/v1/invoices/{target}/credit-notes", json={"amount": amount, "reason": "r"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_credit_note", r.text
    assert "decimals" in r.json()["message"] or "positive" in r.json()["message"]
    # And the tenant's invoicing still works: nothing that cannot be exported was stored.
    assert client.post("/v1/invoices/run", json={"period": "2026-12"}).status_code == 200


def test_the_cli_says_which_service_periods_a_run_covers(server: Server, key: str) -> None:
    env = {"METER_URL": server.url, "METER_API_KEY": key, "COLUMNS": "250"}
    result = CliRunner().invoke(main, ["invoice", "--period", "2027-01"], env=env)
    assert result.exit_code == 0, result.output
    assert re.search(r"fees in advance for 2027-01-01T00:00:00Z \.\. 2027-02-01T00:00:00Z", result.output)
    assert re.search(r"usage in arrears for 2026-12-01T00:00:00Z \.\. 2027-01-01T00:00:00Z", result.output)
    listed = CliRunner().invoke(main, ["invoice", "list", "--usage-period", "2026-12"], env=env)
    assert listed.exit_code == 0 and "2027-01" in listed.output, listed.output


def test_a_broken_subscription_is_reported_and_the_others_invoiced(server: Server) -> None:
    key = server.tenant_key("broken-co", ["ingest", "read", "admin"])
    client = server.client(key)
    assert (
        client.post(
            "/v1/meters",
            json={
                "slug": "tokens",
                "event_type": "llm",
                "aggregation": "sum",
                "value_property": "$.tokens",
                "group_by": {"model": "$.model"},
            },
        ).status_code
        == 201
    )
    matrix = {
        "id": "matrix",
        "currency": "EUR",
        "model": "matrix",
        "meter": "tokens",
        "matrix": {"dimensions": ["model"], "entries": [{"values": {"model": "a"}, "unit_price": "0.01"}]},
    }
    assert client.post("/v1/plans", json={"id": "pro", "name": "Pro"}).status_code == 201
    assert (
        client.post(
            "/v1/plans/pro/versions", json={"effective_from": "2020-01-01T00:00:00Z", "prices": [matrix]}
        ).status_code
        == 201
    )
    for sub, customer in (("good", "c1"), ("bad", "c2")):
        assert (
            client.post("/v1/customers", json={"id": customer, "name": customer, "currency": "EUR"}).status_code == 200
        )
        assert (
            client.post(
                "/v1/subscriptions",
                json={"id": sub, "customer": customer, "plan": "pro", "version": 1, "start": "2020-01-01T00:00:00Z"},
            ).status_code
            == 200
        )
    # The events fall in last month (whatever today is): the run of this month bills them.
    from datetime import UTC, datetime, timedelta

    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    at = (month - timedelta(hours=3)).isoformat().replace("+00:00", "Z")
    events = [
        {
            "specversion": "1.0",
            "id": f"e-{c}",
            "source": "t",
            "type": "llm",
            "subject": c,
            "time": at,
            "data": {"tokens": 100, "model": m},
        }
        for c, m in (("c1", "a"), ("c2", "zzz"))
    ]
    assert client.post("/v1/events", json=events).json()["accepted"] == 2
    env = {"METER_URL": server.url, "METER_API_KEY": key, "COLUMNS": "250"}
    result = CliRunner().invoke(main, ["invoice", "--period", f"{month:%Y-%m}"], env=env)
    assert result.exit_code == 1, result.output
    assert "error: subscription bad: unpriced_usage" in result.output and "1 subscriptions could not" in result.output
    assert "good-" in result.output, "the others were invoiced"
    run = client.post("/v1/invoices/run", json={"period": f"{month:%Y-%m}"}).json()
    assert [i["subscription"] for i in run["invoices"]] == ["good"] and run["invoices"][0]["total"] == "1.00"
    assert [(e["subscription"], e["code"]) for e in run["errors"]] == [("bad", "unpriced_usage")]
