"""The billing catalog over HTTP refuses what would break billing later.

A 400 or 409 that names what to fix, never a 500, and never a 201 that makes every later invoice run of the tenant
fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from http_server import Server

JAN = "2026-01-01T00:00:00Z"
PER_UNIT = {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.002"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("catalog-http") / "data")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def acme(server: Server) -> httpx.Client:
    client = server.client(server.tenant_key("acme", ["ingest", "read", "admin"]))
    for slug in ("tokens", "seats"):
        r = client.post(
            "/v1/meters", json={"slug": slug, "event_type": "llm", "aggregation": "sum", "value_property": f"$.{slug}"}
        )
        assert r.status_code == 201, r.text
    assert client.post("/v1/customers", json={"id": "c1", "name": "One", "currency": "EUR"}).status_code == 200
    r = client.post("/v1/plans", json={"id": "pro", "name": "Pro"})
    assert r.status_code == 201, r.text
    r = client.post("/v1/plans/pro/versions", json={"effective_from": JAN, "prices": [PER_UNIT]})
    assert r.status_code == 201, r.text
    sub = {"id": "s1", "customer": "c1", "plan": "pro", "version": 1, "start": JAN}
    assert client.post("/v1/subscriptions", json=sub).status_code == 200
    return client


def refused(response: httpx.Response, status: int = 400, code: str = "invalid_catalog") -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    return str(body["message"])


TIERS = [{"from": "0", "up_to": "10", "unit_price": "1", "flat_fee": "0"}, {"from": "10", "unit_price": "0.5"}]
BAD_PRICES: list[tuple[dict[str, Any], str]] = [
    ({**PER_UNIT, "unit_price": "NaN"}, "unit_price"),
    ({**PER_UNIT, "unit_price": "sNaN"}, "unit_price"),
    ({**PER_UNIT, "free_allowance": "Infinity"}, "free_allowance"),
    ({**PER_UNIT, "minimum": "sNaN"}, "minimum"),
    (
        {**PER_UNIT, "model": "graduated", "unit_price": None, "tiers": [{**TIERS[0], "unit_price": "sNaN"}, TIERS[1]]},
        "unit_price",
    ),
    (
        {**PER_UNIT, "model": "graduated", "unit_price": None, "tiers": [{**TIERS[0], "up_to": "NaN"}, TIERS[1]]},
        "up_to",
    ),
    (
        {**PER_UNIT, "model": "volume", "unit_price": None, "tiers": [{**TIERS[0], "flat_fee": "NaN"}, TIERS[1]]},
        "flat_fee",
    ),
    ({**PER_UNIT, "model": "package", "unit_price": None, "package": {"size": "NaN", "price": "1"}}, "size"),
    ({**PER_UNIT, "model": "package", "unit_price": None, "package": {"size": "10", "price": "sNaN"}}, "price"),
    ({**PER_UNIT, "model": "percentage", "unit_price": None, "percentage": {"percent": "NaN"}}, "percent"),
    (
        {**PER_UNIT, "model": "percentage", "unit_price": None, "percentage": {"percent": "1", "max_fee": "sNaN"}},
        "max_fee",
    ),
    (
        {
            **PER_UNIT,
            "model": "matrix",
            "unit_price": None,
            "matrix": {"dimensions": ["model"], "entries": [{"values": {"model": "a"}, "unit_price": "NaN"}]},
        },
        "unit_price",
    ),
    ({**PER_UNIT, "unit_price": "0." + "1" * 40}, "unit_price"),
    ({**PER_UNIT, "unit_price": "1E+999999"}, "unit_price"),
    ({**PER_UNIT, "model": "flat", "meter": None, "unit_price": None, "amount": "1E+18"}, "amount"),
    ({**PER_UNIT, "currency": "XYZ"}, "currency"),
    ({**PER_UNIT, "currency": "QQQ"}, "currency"),
    ({**PER_UNIT, "currency": "ÄÖÜ"}, "currency"),
]


@pytest.mark.parametrize(
    ("price", "field"), BAD_PRICES, ids=[f"{f}={p.get('currency')}:{i}" for i, (p, f) in enumerate(BAD_PRICES)]
)
def test_a_price_rating_could_not_compute_is_a_400_naming_the_field(
    acme: httpx.Client, price: dict[str, Any], field: str
) -> None:
    message = refused(
        acme.post("/v1/plans/pro/versions", json={"effective_from": "2026-02-01T00:00:00Z", "prices": [price]})
    )
    assert f"`{field}`" in message
    assert len(acme.get("/v1/plans/pro").json()["versions"]) == 1


@pytest.mark.parametrize(
    ("terms", "field"),
    [
        ({"commits": [{"id": "c", "amount": "NaN", "start": JAN, "end": "2027-01-01T00:00:00Z"}]}, "amount"),
        ({"credits": [{"id": "c", "amount": "sNaN", "start": JAN, "end": "2027-01-01T00:00:00Z"}]}, "amount"),
        ({"discounts": [{"id": "d", "percent": "sNaN", "start": JAN}]}, "percent"),
        ({"discounts": [{"id": "d", "amount": "Infinity", "start": JAN}]}, "amount"),
        ({"threshold": "NaN"}, "threshold"),
        ({"threshold": "0.001"}, "threshold"),
        ({"overrides": [{**PER_UNIT, "unit_price": "sNaN"}]}, "unit_price"),
    ],
)
def test_subscription_terms_that_are_not_money_are_a_400(acme: httpx.Client, terms: dict[str, Any], field: str) -> None:
    sub = {"id": "s2", "customer": "c1", "plan": "pro", "version": 1, "start": JAN, **terms}
    assert field in refused(acme.post("/v1/subscriptions", json=sub))
    assert acme.get("/v1/subscriptions/s2").status_code == 404


def test_invoicing_still_works_after_every_refusal(acme: httpx.Client) -> None:
    r = acme.post("/v1/invoices/run", json={"period": "2026-02"})
    assert r.status_code == 200, r.text


def test_a_price_naming_a_missing_meter_is_refused_and_a_used_meter_cannot_be_deleted(acme: httpx.Client) -> None:
    message = refused(
        acme.post(
            "/v1/plans/pro/versions",
            json={"effective_from": "2026-03-01T00:00:00Z", "prices": [{**PER_UNIT, "id": "typo", "meter": "tokenz"}]},
        )
    )
    assert "plan 'pro' version 2, price 'typo': meter 'tokenz' does not exist" in message
    message = refused(acme.delete("/v1/meters/tokens"), 409, "in_use")
    assert "plan 'pro' version 1 (price 'tokens')" in message
    assert acme.get("/v1/meters/tokens").status_code == 200
    assert acme.delete("/v1/meters/seats").status_code == 200
    r = acme.post("/v1/invoices/run", json={"period": "2026-02"})
    assert r.status_code == 200, r.text


def test_a_plan_is_created_whole_or_not_at_all(acme: httpx.Client) -> None:
    plan = {
        "id": "team",
        "name": "Team",
        "versions": [
            {"effective_from": JAN, "prices": [PER_UNIT]},
            {"effective_from": "2026-02-01T00:00:00Z", "prices": [{**PER_UNIT, "meter": "nope"}]},
        ],
    }
    assert "plan 'team' version 2, price 'tokens': meter 'nope'" in refused(acme.post("/v1/plans", json=plan))
    assert acme.get("/v1/plans/team").status_code == 404
    plan["versions"] = plan["versions"][:1]
    r = acme.post("/v1/plans", json=plan)
    assert r.status_code == 201 and [v["version"] for v in r.json()["versions"]] == [1], r.text


def test_subscriptions_name_what_exists(acme: httpx.Client) -> None:
    sub = {"id": "s3", "customer": "ghost", "plan": "pro", "version": 1, "start": JAN}
    assert "customer 'ghost' does not exist" in refused(acme.post("/v1/subscriptions", json=sub))
    sub = {**sub, "customer": "c1", "plan": "ghost"}
    assert "plan 'ghost' does not exist" in refused(acme.post("/v1/subscriptions", json=sub))


@pytest.mark.parametrize("bad_id", ["..", ".", "a|b", "tab\there", "nul\u0000", " padded", "x" * 256])
def test_ids_that_cannot_round_trip_are_refused(acme: httpx.Client, bad_id: str) -> None:
    refused(acme.post("/v1/customers", json={"id": bad_id, "name": "X", "currency": "EUR"}))
    assert bad_id not in [c["id"] for c in acme.get("/v1/customers").json()]
