"""Entitlements in the catalog over HTTP: on plans (``PUT /v1/plans/{id}/entitlements``) and subscriptions.

And a subscription's spend protection (``spend_ceiling``, ``prepaid_only``) and automatic top-up settings. What a
check could not answer is refused on write with a 400 ``invalid_catalog`` that says what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from http_server import Server
from meter.catalog.entitlements import Entitlement, effective_entitlements
from meter.client import Client, ServerError

JAN = "2026-01-01T00:00:00Z"
TOKENS = {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.002"}
SEATS = {"id": "seats", "currency": "EUR", "model": "per_unit", "meter": "seats", "unit_price": "5"}
ALLOWANCE = {"feature": "gpt", "kind": "metered", "meter": "tokens", "limit": "1000000", "reset": "cycle"}
SSO = {"feature": "sso", "kind": "boolean"}
RATE = {"feature": "rate-limit", "kind": "static", "value": "600"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("entitlements-http") / "data")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    return server.tenant_key("acme", ["ingest", "read", "admin"])


@pytest.fixture(scope="module")
def acme(server: Server, key: str) -> httpx.Client:
    client = server.client(key)
    for slug, aggregation in (("tokens", "sum"), ("seats", "sum"), ("people", "unique_count")):
        spec = {"slug": slug, "event_type": "llm", "aggregation": aggregation, "value_property": f"$.{slug}"}
        r = client.post("/v1/meters", json=spec)
        assert r.status_code == 201, r.text
    assert client.post("/v1/customers", json={"id": "c1", "name": "One", "currency": "EUR"}).status_code == 200
    r = client.post("/v1/plans", json={"id": "pro", "name": "Pro"})
    assert r.status_code == 201, r.text
    r = client.post("/v1/plans/pro/versions", json={"effective_from": JAN, "prices": [TOKENS, SEATS]})
    assert r.status_code == 201, r.text
    sub = {"id": "s1", "customer": "c1", "plan": "pro", "version": 1, "start": JAN}
    assert client.post("/v1/subscriptions", json=sub).status_code == 200
    return client


def refused(response: httpx.Response, status: int = 400, code: str = "invalid_catalog") -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    return str(body["message"])


def test_a_plans_entitlements_are_replaced_whole_and_kept(acme: httpx.Client) -> None:
    soft = {**ALLOWANCE, "hard": False, "overage_price": "tokens"}
    r = acme.put("/v1/plans/pro/entitlements", json=[SSO, RATE, soft])
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["id"] == "pro" and [e["feature"] for e in plan["entitlements"]] == ["sso", "rate-limit", "gpt"]
    assert len(plan["versions"]) == 1  # the versions are untouched
    got = acme.get("/v1/plans/pro").json()["entitlements"]
    assert got[2] == {**soft, "enabled": True, "value": None}
    r = acme.put("/v1/plans/pro/entitlements", json=[SSO])
    assert [e["feature"] for e in r.json()["entitlements"]] == ["sso"]
    # A new version keeps the plan's entitlements: they are the plan's, not a version's.
    r = acme.post("/v1/plans/pro/versions", json={"effective_from": "2026-06-01T00:00:00Z", "prices": [TOKENS]})
    assert r.status_code == 201, r.text
    assert [e["feature"] for e in acme.get("/v1/plans/pro").json()["entitlements"]] == ["sso"]


def test_a_plan_is_created_with_its_entitlements(acme: httpx.Client) -> None:
    body = {"id": "team", "name": "Team", "versions": [{"effective_from": JAN, "prices": [TOKENS]}]}
    r = acme.post("/v1/plans", json={**body, "entitlements": [ALLOWANCE]})
    assert r.status_code == 201, r.text
    assert r.json()["entitlements"][0]["limit"] == "1000000"
    r = acme.post("/v1/plans", json={**body, "id": "bad", "entitlements": [{**ALLOWANCE, "meter": "nope"}]})
    assert "meter 'nope' does not exist" in refused(r)
    assert acme.get("/v1/plans/bad").status_code == 404  # refused whole


BAD: list[tuple[list[dict[str, Any]], str]] = [
    ([SSO, {**SSO, "kind": "static", "value": "x"}], "repeated: sso"),
    ([{**SSO, "meter": "tokens"}], "a boolean entitlement has no meter"),
    ([{**SSO, "value": "1"}], "a boolean entitlement has no value"),
    ([{**RATE, "value": None}], "a static entitlement needs a `value`"),
    ([{**RATE, "limit": "5"}], "a static entitlement has no limit"),
    ([{**ALLOWANCE, "limit": None}], "needs a `meter` and a `limit`"),
    ([{**ALLOWANCE, "meter": None}], "needs a `meter` and a `limit`"),
    ([{**ALLOWANCE, "value": "1"}], "a metered entitlement has no `value`"),
    ([{**ALLOWANCE, "meter": "nope"}], "meter 'nope' does not exist (this tenant's meters: people, seats, tokens)"),
    ([{**ALLOWANCE, "meter": "people"}], "aggregates by unique_count"),
    ([{**ALLOWANCE, "overage_price": "tokens"}], "set `hard: false`"),
    ([{**ALLOWANCE, "hard": False, "overage_price": "gone"}], "is not a price of the plan (its prices: seats, tokens)"),
    ([{**ALLOWANCE, "hard": False, "overage_price": "seats"}], "prices meter seats, not 'tokens'"),
    ([{**ALLOWANCE, "limit": "-1"}], "`limit` is -1"),
    ([{**ALLOWANCE, "reset": "hourly"}], "reset"),
    ([{**ALLOWANCE, "surprise": 1}], "surprise"),
]


@pytest.mark.parametrize(("entitlements", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_entitlements_a_check_could_not_answer_are_refused(
    acme: httpx.Client, entitlements: list[dict[str, Any]], message: str
) -> None:
    before = acme.get("/v1/plans/pro").json()["entitlements"]
    assert message in refused(acme.put("/v1/plans/pro/entitlements", json=entitlements))
    assert acme.get("/v1/plans/pro").json()["entitlements"] == before
    sub = {"id": "s-bad", "customer": "c1", "plan": "pro", "version": 1, "start": JAN, "entitlements": entitlements}
    assert message in refused(acme.post("/v1/subscriptions", json=sub))


def test_entitlements_of_a_missing_plan_are_a_404(acme: httpx.Client) -> None:
    refused(acme.put("/v1/plans/nope/entitlements", json=[SSO]), 404, "not_found")
    refused(acme.put("/v1/plans/pro/entitlements", json={"feature": "sso"}))


def test_a_subscription_overrides_entitlements_and_sets_spend_protection(acme: httpx.Client) -> None:
    soft = {**ALLOWANCE, "limit": "5000000", "hard": False, "overage_price": "tokens"}
    sub = {
        "id": "s2",
        "customer": "c1",
        "plan": "pro",
        "version": 1,
        "start": JAN,
        "entitlements": [soft, {**SSO, "enabled": False}],
        "spend_ceiling": "500.00",
        "prepaid_only": True,
        "auto_top_up": {"below": "10.00", "amount": "100.00"},
    }
    r = acme.post("/v1/subscriptions", json=sub)
    assert r.status_code == 200, r.text
    stored = acme.get("/v1/subscriptions/s2").json()
    assert stored["entitlements"][1]["enabled"] is False and stored["spend_ceiling"] == "500.00"
    assert stored["prepaid_only"] is True and stored["auto_top_up"] == {"below": "10.00", "amount": "100.00"}
    # A meter an entitlement names cannot be deleted from under it.
    assert "entitlement 'gpt'" in refused(acme.delete("/v1/meters/tokens"), 409, "in_use")


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ({"spend_ceiling": "0"}, "spend_ceiling must be above 0"),
        ({"spend_ceiling": "10.001"}, "spend_ceiling is 10.001 EUR, which is not a whole number"),
        ({"spend_ceiling": "-5"}, "`spend_ceiling` is -5"),
        ({"prepaid_only": "yes"}, "prepaid_only"),
        ({"auto_top_up": {"below": "0", "amount": "10"}}, "auto_top_up.below must be above 0"),
        ({"auto_top_up": {"below": "5", "amount": "0"}}, "auto_top_up.amount must be above 0"),
        ({"auto_top_up": {"below": "5", "amount": "0.005"}}, "auto_top_up.amount is 0.005 EUR"),
        ({"auto_top_up": {"below": "5"}}, "amount"),
    ],
)
def test_spend_protection_and_auto_top_up_are_checked(acme: httpx.Client, terms: dict[str, Any], message: str) -> None:
    sub = {"id": "s3", "customer": "c1", "plan": "pro", "version": 1, "start": JAN, **terms}
    assert message in refused(acme.post("/v1/subscriptions", json=sub))


def test_the_client_puts_entitlements(server: Server, key: str, acme: httpx.Client) -> None:
    with Client(server.url, api_key=key) as client:
        plan = client.put_plan_entitlements("team", [RATE, SSO])
        assert [e["feature"] for e in plan["entitlements"]] == ["rate-limit", "sso"]
        with pytest.raises(ServerError) as e:
            client.put_plan_entitlements("team", [{**RATE, "value": None}])
        assert e.value.status == 400 and e.value.code == "invalid_catalog"


def test_a_subscriptions_entitlements_replace_the_plans_by_feature() -> None:
    plan = [msgspec.convert(e, Entitlement) for e in (SSO, RATE, ALLOWANCE)]
    own = [msgspec.convert(e, Entitlement) for e in ({**SSO, "enabled": False}, {**RATE, "feature": "extra"})]
    merged = effective_entitlements(plan, own)
    shown = [(e.feature, e.enabled) for e in merged]
    assert shown == [("sso", False), ("rate-limit", True), ("gpt", True), ("extra", True)]
