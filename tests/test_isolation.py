"""Tenant isolation over every route (issue 11, Security).

The route table of the app is walked with every kind of key (none, garbage, revoked, the operator's, tenant A's with
each scope, and a second A key with all of them) against tenant B's objects, by id and by listing, and B's state is
compared before and after.

The walk is driven by `MeterApp.routes`, so a new route is walked as soon as it exists; a route whose path parameter
or body the walk does not know fails the test (add it to `params` or `bodies` below).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import event
from http_server import Server
from meter.catalog.keys import new_key
from meter.server.app import MeterApp

#: A word in the data of tenant B (names, reasons: never an id another tenant could send): no answer to anyone
#: but B may contain it.
MARK = "bsecret"
B = "tenant-b"
NOW = datetime.now(UTC)
THIS_MONTH = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
LAST_MONTH = (THIS_MONTH - timedelta(days=1)).replace(day=1)
B_METER, B_CUSTOMER, B_PRODUCT, B_PLAN, B_SUB, B_RATE = "b-meter", "b-cust", "b-product", "b-plan", "b-sub", "b-rate"
B_ALERT, B_RESERVATION = "b-alert", "b-job"
B_BACKFILL = "b-backfill"
B_EVENTS = [
    event(f"b-e{i}", B_CUSTOMER, type="llm", time=NOW - timedelta(minutes=5 + i), tokens=100 + i) for i in range(5)
]
PRICES = [
    {"id": "b-base", "currency": "EUR", "model": "flat", "amount": "20", "cadence": "in_advance"},
    {"id": "b-tokens", "currency": "EUR", "model": "per_unit", "meter": B_METER, "unit_price": "0.01"},
]
USAGE_QUERY = {
    "from": (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:00:00Z"),
    "to": (NOW + timedelta(days=1)).strftime("%Y-%m-%dT%H:00:00Z"),
}


class TenantB:
    """What tenant B owns, created through B's own key; `snapshot` reads all of it back."""

    def __init__(self, server: Server) -> None:
        self.key = server.tenant_key(B, ["ingest", "read", "export", "admin"])
        self.client = server.client(self.key)
        c = self.client
        ok(
            c.post(
                "/v1/meters",
                json={"slug": B_METER, "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"},
            )
        )
        ok(c.post("/v1/events", json=B_EVENTS))
        ok(c.post("/v1/customers", json={"id": B_CUSTOMER, "name": f"{MARK} customer", "currency": "EUR"}))
        ok(c.post("/v1/products", json={"id": B_PRODUCT, "name": f"{MARK} product"}))
        ok(c.post("/v1/plans", json={"id": B_PLAN, "name": f"{MARK} plan"}))
        ok(c.post(f"/v1/plans/{B_PLAN}/versions", json={"effective_from": "2020-01-01T00:00:00Z", "prices": PRICES}))
        ok(
            c.post(
                "/v1/subscriptions",
                json={
                    "id": B_SUB,
                    "customer": B_CUSTOMER,
                    "plan": B_PLAN,
                    "version": 1,
                    "start": LAST_MONTH.isoformat(),
                },
            )
        )
        drafts = ok(c.post("/v1/invoices/run", json={"period": f"{THIS_MONTH:%Y-%m}"}))
        self.invoice = drafts["invoices"][0]["id"]
        ok(c.post(f"/v1/invoices/{self.invoice}/finalize"))
        ok(c.put("/v1/documents/settings", json={"seller_name": f"{MARK} seller", "footer": MARK}))
        note = {"amount": "1", "reason": f"{MARK} goodwill"}
        self.credit_note = ok(c.post(f"/v1/invoices/{self.invoice}/credit-notes", json=note))["number"]
        paid = ok(c.post(f"/v1/invoices/{self.invoice}/payments", json={"amount": "1", "reference": f"{MARK} wire"}))
        self.payment = paid["id"]
        ok(c.put("/v1/dunning", json={"retry_days": [2, 4], "after_last": "open"}))
        # Revenue: B's settings, and a close through last month's end (B's fee and usage earned, its rows kept).
        ok(c.put("/v1/revenue/settings", json={"timezone": "Europe/Berlin", "accounts": {"revenue": "4711"}}))
        ok(c.post("/v1/revenue/recognize", params={"through": f"{THIS_MONTH - timedelta(days=1):%Y-%m-%d}"}))
        # A tax rate not in force before 2099: B's invoices stay as they are.
        rate = {
            "id": B_RATE,
            "name": f"{MARK} VAT",
            "country": "DE",
            "percentage": "19",
            "effective_from": "2099-01-01T00:00:00Z",
        }
        ok(c.post("/v1/tax-rates", json=rate))
        ok(c.post("/v1/invoices/run", json={"period": f"{THIS_MONTH:%Y-%m}"}))  # a draft too, if any
        # A webhook endpoint (its deliveries to a closed port keep failing, and are retried, all through the walk).
        created = ok(c.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/b", "description": MARK}))
        self.endpoint = created["id"]
        self.event = ok(c.get("/v1/webhook-events"))["data"][0]["id"]
        # A pending backfill with one staged event: another tenant's close or revert must not reach it.
        window = {"start": (NOW - timedelta(hours=1)).isoformat(), "end": NOW.isoformat(), "reason": MARK}
        ok(c.post("/v1/backfills", json={"id": B_BACKFILL, "customer": B_CUSTOMER} | window))
        staged = event("b-staged", B_CUSTOMER, time=NOW - timedelta(minutes=30), tokens=1)
        ok(c.post(f"/v1/backfills/{B_BACKFILL}/events", json=[staged]))
        alert = {"id": B_ALERT, "kind": "usage", "meter": B_METER, "thresholds": ["1"], "description": MARK}
        ok(c.post("/v1/alerts", json=alert))
        second = ok(c.post("/v1/keys", json={"scopes": ["read"]}))
        self.key_id = second["id"]
        self.read_client = server.client(second["key"])

    def snapshot(self) -> dict[str, Any]:
        c = self.client
        state: dict[str, Any] = {
            "meters": ok(c.get("/v1/meters")),
            "meter": ok(c.get(f"/v1/meters/{B_METER}")),
            "usage": ok(c.get(f"/v1/meters/{B_METER}/usage", params={**USAGE_QUERY, "group_by": "subject"})),
            "invoices": ok(c.get("/v1/invoices")),
            "invoice": ok(c.get(f"/v1/invoices/{self.invoice}")),
            "credit_notes": ok(c.get("/v1/credit-notes")),
            "document_settings": ok(c.get("/v1/documents/settings")),
            "payments": ok(c.get("/v1/payments")),
            "attempts": ok(c.get(f"/v1/invoices/{self.invoice}/attempts")),
            "dunning": ok(c.get("/v1/dunning")),
            "payment_settings": ok(c.get("/v1/payments/settings")),
            "tax_rates": ok(c.get("/v1/tax-rates")),
            "webhook_endpoints": ok(c.get("/v1/webhook-endpoints")),
            "webhook_events": ok(c.get("/v1/webhook-events")),
            "keys": [(k["id"], k["revoked"], k["scopes"]) for k in ok(c.get("/v1/keys"))],
            "alerts": ok(c.get("/v1/alerts")),
            "backfills": ok(c.get("/v1/backfills")),
            "alert": ok(c.get(f"/v1/alerts/{B_ALERT}")),
            "revenue_settings": ok(c.get("/v1/revenue/settings")),
            "waterfall": ok(c.get("/v1/revenue/waterfall", params={"by": "customer"})),
            "deferred": ok(c.get("/v1/revenue/deferred")),
        }
        for kind, item in (
            ("customers", B_CUSTOMER),
            ("products", B_PRODUCT),
            ("plans", B_PLAN),
            ("subscriptions", B_SUB),
        ):
            state[kind], state[item] = ok(c.get(f"/v1/{kind}")), ok(c.get(f"/v1/{kind}/{item}"))
        # Usage rows carry no volatile fields; invoices may be recomputed (drafts), so compare them as B sees them.
        assert ok(self.read_client.get("/v1/meters"))  # B's second key still works
        return state


def ok(r: httpx.Response) -> Any:
    assert r.status_code < 300, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json()


def route_table() -> list[tuple[str, str]]:
    """(method, path pattern) of every route of the app, read from the app itself."""
    app = MeterApp(Path("/nonexistent"))
    try:
        return [(method, pattern.pattern) for method, pattern, _, _ in app.routes]
    finally:
        app.pool.shutdown()


#: Path parameters -> B's object of that kind (by the route's path, then the parameter's name).
def params(b: TenantB, pattern: str) -> dict[str, str]:
    by_name = {
        "slug": B_METER,
        "plan_id": B_PLAN,
        "sub_id": B_SUB,
        "invoice_id": b.invoice,
        "number": b.credit_note,  # GET /v1/credit-notes/{number}/pdf
        "customer": B_CUSTOMER,
        "key_id": b.key_id,
        "payment_id": b.payment,
        "rate_id": B_RATE,
        "endpoint_id": b.endpoint,
        "event_id": b.event,
        "source": B_EVENTS[0]["source"],  # B's usage event: GET /v1/events/{source}/{event}
        "event": B_EVENTS[0]["id"],
        "line": "1",  # of B's invoice: GET /v1/invoices/{invoice_id}/lines/{line}/events
        "alert_id": B_ALERT,
        "backfill_id": B_BACKFILL,
        "reservation_id": B_RESERVATION,
        "feature": "takeover",
    }
    by_kind = {"customers": B_CUSTOMER, "products": B_PRODUCT, "plans": B_PLAN, "subscriptions": B_SUB}
    out = {}
    for name in re.compile(pattern).groupindex:
        if name == "item_id":
            kind = pattern.split("/")[2]
            assert kind in by_kind, f"the isolation walk has no B object for {pattern}: add one"
            out[name] = by_kind[kind]
        else:
            assert name in by_name, f"the isolation walk has no B object for {{{name}}} in {pattern}: add one"
            out[name] = by_name[name]
    return out


def path_of(pattern: str, values: dict[str, str]) -> str:
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: values[m.group(1)], pattern)
    return path.replace("\\.", ".")


#: Bodies that would change or reveal B's objects if the caller were B (or could name B).
def bodies(b: TenantB) -> dict[tuple[str, str], Any]:
    at = (NOW - timedelta(minutes=1)).isoformat()
    vendor = {"tokens": 999_999}  # drop-in ingest, naming B's customer and B's event ids: A's own, if anything
    return {
        ("POST", "/compat/openmeter/api/v1/events"): [{**e, "data": vendor} for e in B_EVENTS],
        ("POST", "/compat/metronome/v1/ingest"): [
            {"transaction_id": "b-e0", "customer_id": B_CUSTOMER, "event_type": "llm", "timestamp": at}
            | {"properties": vendor}
        ],
        ("POST", "/compat/orb/v1/ingest"): {
            "events": [{"event_name": "llm", "idempotency_key": "b-e0", "customer_id": B_CUSTOMER, "timestamp": at}]
        },
        ("POST", "/compat/lago/api/v1/events"): {
            "event": {"transaction_id": "b-e0", "external_subscription_id": B_SUB, "code": "llm", "properties": vendor}
        },
        ("POST", "/compat/lago/api/v1/events/batch"): {
            "events": [{"transaction_id": "b-e0", "external_subscription_id": B_SUB, "code": "llm"}]
        },
        ("POST", "/compat/stripe/v1/billing/meter_events"): {"event_name": "llm", "identifier": "b-e0"},
        ("POST", "/compat/stripe/v1/billing/meter_event_adjustments"): {"event_name": "llm", "type": "cancel"}
        | {"cancel": {"identifier": "b-e0"}},
        ("POST", "/compat/stripe/v2/billing/meter_event_adjustments"): {"event_name": "llm", "type": "cancel"}
        | {"cancel": {"identifier": "b-e0"}},
        ("PUT", "/compat/orb/v1/events/(?P<event_id>[^/]+)"): {"event_name": "llm", "timestamp": at}
        | {"customer_id": B_CUSTOMER, "properties": vendor},
        ("PUT", "/compat/orb/v1/events/(?P<event_id>[^/]+)/deprecate"): None,
        ("POST", "/v1/backfills"): {"id": B_BACKFILL, "start": at, "end": NOW.isoformat(), "reason": "takeover"},
        ("POST", "/v1/backfills/(?P<backfill_id>[^/]+)/events"): [
            event("b-takeover", B_CUSTOMER, time=NOW - timedelta(minutes=1), tokens=999_999)
        ],
        ("POST", "/v1/backfills/(?P<backfill_id>[^/]+)/close"): None,
        ("POST", "/v1/backfills/(?P<backfill_id>[^/]+)/revert"): None,
        ("POST", "/compat/orb/v1/events/backfills"): {"timeframe_start": at, "timeframe_end": NOW.isoformat()}
        | {"customer_id": B_CUSTOMER},
        ("POST", "/compat/orb/v1/events/backfills/(?P<backfill_id>[^/]+)/close"): None,
        ("POST", "/compat/orb/v1/events/backfills/(?P<backfill_id>[^/]+)/revert"): None,
        ("POST", "/v1/events/corrections"): {
            "reason": "takeover",
            "items": [
                {"action": "cancel", "source": "gw", "id": "b-e0"},
                {"action": "amend", "event": {**B_EVENTS[1], "data": vendor}},
            ],
        },
        ("POST", "/compat/stripe/v2/billing/meter_event_session"): {},
        ("POST", "/compat/stripe/v2/billing/meter_event_stream"): {
            "events": [{"event_name": "llm", "identifier": "b-e0", "payload": {"stripe_customer_id": B_CUSTOMER}}]
        },
        ("POST", "/v1/events"): [{**e, "data": {"tokens": 999_999}} for e in B_EVENTS]
        + [event("b-new", B_CUSTOMER, time=NOW - timedelta(minutes=1), tokens=5)],
        ("POST", "/v1/meters"): {"slug": B_METER, "event_type": "llm", "aggregation": "count"},
        ("POST", "/v1/admin/tenants"): {"id": B, "name": "taken over"},
        ("POST", "/v1/admin/keys"): {"tenant": B, "scopes": ["ingest", "read", "export", "admin"]},
        ("POST", "/v1/keys"): {"scopes": ["read", "admin"]},
        ("POST", "/v1/plans/(?P<plan_id>[^/]+)/versions"): {
            "effective_from": "2020-02-01T00:00:00Z",
            "prices": [{**PRICES[0], "id": "a-base"}],
        },
        ("PUT", "/v1/plans/(?P<plan_id>[^/]+)/entitlements"): [{"feature": "takeover", "kind": "boolean"}],
        ("POST", "/v1/customers/(?P<customer>[^/]+)/top-ups"): {"id": "takeover", "amount": "1"},
        ("POST", "/v1/subscriptions/(?P<sub_id>[^/]+)/migrate"): {"version": 1, "at": "2026-01-01T00:00:00Z"},
        ("POST", "/v1/invoices/run"): {"period": f"{THIS_MONTH:%Y-%m}", "finalize": True},
        ("POST", "/v1/invoices/thresholds"): None,
        ("POST", "/v1/invoices/(?P<invoice_id>[^/]+)/finalize"): None,
        ("POST", "/v1/invoices/(?P<invoice_id>[^/]+)/void"): None,
        ("POST", "/v1/invoices/(?P<invoice_id>[^/]+)/credit-notes"): {"amount": "1", "reason": "takeover"},
        ("POST", "/v1/invoices/(?P<invoice_id>[^/]+)/payments"): {"amount": "1", "method": "cash"},
        ("POST", "/v1/invoices/(?P<invoice_id>[^/]+)/pay"): None,
        ("POST", "/v1/invoices/(?P<invoice_id>[^/]+)/mark-uncollectible"): None,
        ("POST", "/v1/payments/(?P<payment_id>[^/]+)/refunds"): {"amount": "1", "reason": "takeover"},
        ("PUT", "/v1/payments/settings"): {"stripe_webhook_secret": "whsec_takeover"},
        ("PUT", "/v1/dunning"): {"retry_days": [1], "after_last": "uncollectible"},
        ("POST", "/v1/dunning/run"): {"as_of": "2030-01-01T00:00:00Z"},
        # A Stripe event naming B's invoice, signed by nobody: refused whoever sends it.
        ("POST", "/v1/webhooks/stripe"): {
            "id": "evt_takeover",
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {
                "object": {"id": "pi_x", "amount": 1, "metadata": {"tenant": B, "invoice": b.invoice, "attempt": "1"}}
            },
        },
        ("POST", "/v1/tax-rates"): {
            "id": B_RATE,
            "name": "taken over",
            "country": "DE",
            "percentage": "50",
            "effective_from": "2020-01-01T00:00:00Z",
        },
        ("POST", "/v1/tax-rates/(?P<rate_id>[^/]+)/end"): {"at": "2100-01-01T00:00:00Z"},
        ("PUT", "/v1/tax-settings"): {"country": "US", "provider": "catalog"},
        ("PUT", "/v1/revenue/settings"): {"timezone": "Asia/Tokyo", "breakage": "none"},
        ("PUT", "/v1/documents/settings"): {"seller_name": "takeover", "footer": "takeover"},
        ("POST", "/v1/revenue/recognize"): None,
        ("POST", "/v1/webhook-endpoints"): {"url": "http://127.0.0.1:9/takeover"},
        ("POST", "/v1/webhook-endpoints/(?P<endpoint_id>[^/]+)"): {"url": "http://127.0.0.1:9/takeover"},
        ("POST", "/v1/webhook-endpoints/(?P<endpoint_id>[^/]+)/rotate-secret"): None,
        ("POST", "/v1/webhook-endpoints/(?P<endpoint_id>[^/]+)/replay"): {"since": "2000-01-01T00:00:00Z"},
        ("POST", "/v1/webhook-events/(?P<event_id>[^/]+)/replay"): {},
        ("POST", "/v1/alerts"): {"id": B_ALERT, "kind": "spend", "thresholds": ["1"]},
        ("POST", "/v1/customers/(?P<customer>[^/]+)/reservations"): {
            "id": B_RESERVATION,
            "target": "balance",
            "amount": "1",
        },
        ("POST", "/v1/reservations/(?P<reservation_id>[^/]+)/settle"): {"actual": "1"},
        ("POST", "/v1/entitlements/check"): {"checks": [{"customer": B_CUSTOMER, "feature": "takeover"}]},
        ("POST", "/v1/customers"): {"id": B_CUSTOMER, "name": "taken over", "currency": "USD"},
        ("POST", "/v1/products"): {"id": B_PRODUCT, "name": "taken over"},
        ("POST", "/v1/plans"): {"id": B_PLAN, "name": "taken over"},
        ("POST", "/v1/subscriptions"): {
            "id": B_SUB,
            "customer": B_CUSTOMER,
            "plan": B_PLAN,
            "version": 1,
            "start": "2020-01-01T00:00:00Z",
        },
    }


#: Query parameters every request carries: the ones a route needs, and attempts to name B.
QUERY = {
    **USAGE_QUERY,
    "tenant": B,
    "customer": B_CUSTOMER,
    "subscription": B_SUB,
    "subject": B_CUSTOMER,
    "through": f"{THIS_MONTH - timedelta(days=1):%Y-%m-%d}",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, TenantB, dict[str, str | None]]]:
    server = Server(tmp_path_factory.mktemp("isolation") / "data", env={"METER_ALLOW_PRIVATE_WEBHOOKS": "1"})
    try:
        b = TenantB(server)
        keys: dict[str, str | None] = {
            "none": None,
            "garbage": "Bearer " + "x" * 40,
            "wellformed-unknown": new_key(),
            "operator": server.admin_key,
        }
        for scope in ("ingest", "read", "export", "admin"):
            keys[f"A:{scope}"] = server.tenant_key("tenant-a", [scope])
        keys["A:all"] = server.tenant_key("tenant-a", ["ingest", "read", "export", "admin"])
        revoked = server.tenant_key("tenant-a", ["ingest", "read", "export", "admin"])
        admin = server.client(server.admin_key)
        revoked_id = next(
            k["id"]
            for k in ok(admin.get("/v1/admin/keys", params={"tenant": "tenant-a"}))
            if revoked.startswith(k["display"]) and not k["revoked"]
        )
        ok(admin.delete(f"/v1/admin/keys/{revoked_id}"))
        keys["revoked"] = revoked
        # Tenant A has objects of its own too, so that A's listings are not trivially empty.
        a = server.client(keys["A:all"] or "")
        ok(a.post("/v1/meters", json={"slug": "a-meter", "event_type": "llm", "aggregation": "count"}))
        ok(a.post("/v1/customers", json={"id": "a-cust", "name": "A customer", "currency": "EUR"}))
        yield server, b, keys
    finally:
        server.stop()


def send(server: Server, method: str, path: str, key: str | None, body: Any) -> httpx.Response:
    headers = {}
    if key is not None:
        headers["Authorization"] = key if key.startswith("Bearer ") else f"Bearer {key}"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        return client.request(
            method, path, params=QUERY, headers=headers, **({"json": body} if body is not None else {})
        )


def test_no_key_but_b_reaches_b_on_any_route(world: tuple[Server, TenantB, dict[str, str | None]]) -> None:
    server, b, keys = world
    before = b.snapshot()
    table, bodies_of = route_table(), bodies(b)
    assert len(table) >= 40, table
    # Reads first: until A writes, A owns nothing named like B's objects, so a read by id must find nothing.
    table.sort(key=lambda route: route[0] != "GET")
    walked = 0
    for method, pattern in table:
        values = params(b, pattern)
        path = path_of(pattern, values)
        if method in ("POST", "PUT"):
            assert (method, pattern) in bodies_of, f"the isolation walk has no body for {method} {pattern}: add one"
        body = bodies_of.get((method, pattern))
        public = pattern in ("/healthz", "/readyz", r"/openapi\.json")
        signed = pattern == "/v1/webhooks/stripe"  # no key: its signature, which nobody here can make
        # Drop-in routes answer in their vendor's shape (status only here); Stripe's stream takes a session's
        # token, never a key.
        vendor, session = pattern.startswith("/compat/"), pattern.endswith("meter_event_stream")
        operator_route = pattern.startswith("/v1/admin/") or pattern == "/metrics"
        for kind, key in keys.items():
            if kind == "operator" and operator_route:
                continue  # the operator administers tenants: tested in test_operator_and_tenant_administration
            r = send(server, method, path, key, body)
            walked += 1
            where = f"{kind} {method} {path}: {r.status_code} {r.text[:300]}"
            assert r.status_code < 500, where
            assert MARK not in r.text, where
            if method == "GET" and not values and not public:  # a listing shows nothing of B, not even ids
                assert B not in r.text and b.key_id not in r.text and B_CUSTOMER not in r.text, where
            if signed:
                assert r.status_code == 400 and r.json()["code"] == "invalid_signature", where
            elif session or (vendor and kind in ("none", "garbage", "wellformed-unknown", "revoked")):
                assert r.status_code == 401, where
            elif vendor and kind == "operator":
                assert r.status_code == 403, where
            elif public:
                assert r.status_code == 200, where
            elif kind in ("none", "garbage", "wellformed-unknown", "revoked"):
                assert r.status_code == 401 and r.json()["code"] == "unauthorized", where
            elif kind == "operator":
                assert r.status_code == 403 and r.json()["code"] == "tenant_only", where
            elif operator_route:
                assert r.status_code == 403 and r.json()["code"] == "operator_only", where
            elif method == "GET" and values:
                # B's object by id: not A's to see, not even its existence.
                code = r.json().get("code")  # a vendor's route answers in its vendor's shape: the status says it
                assert r.status_code in (403, 404) and (vendor or code in ("not_found", "forbidden")), where
    assert walked > 300
    # B's own view of everything is unchanged, and B's events are still B's (a re-send is all duplicates).
    assert b.snapshot() == before
    again = ok(b.client.post("/v1/events", json=B_EVENTS))
    assert again["accepted"] == 0 and again["duplicates"] == len(B_EVENTS), again


def test_operator_and_tenant_administration(world: tuple[Server, TenantB, dict[str, str | None]]) -> None:
    server, b, keys = world
    a_admin = server.client(keys["A:all"] or "")
    operator = server.client(server.admin_key)
    # A tenant's admin key manages its own keys, and only those.
    created = ok(a_admin.post("/v1/keys", json={"scopes": ["ingest"]}))
    assert created["tenant"] == "tenant-a" and created["key"].startswith("mk_live_")
    listed = ok(a_admin.get("/v1/keys", params={"tenant": B}))
    assert listed and {k["tenant"] for k in listed} == {"tenant-a"}, listed
    assert a_admin.delete(f"/v1/keys/{b.key_id}").status_code == 404
    operator_ids = [k["id"] for k in ok(operator.get("/v1/admin/keys")) if k["tenant"] is None]
    assert a_admin.delete(f"/v1/keys/{operator_ids[0]}").status_code == 404
    assert a_admin.post("/v1/keys", json={"scopes": ["read"], "tenant": B}).status_code == 400
    assert ok(a_admin.delete(f"/v1/keys/{created['id']}"))["revoked"] == created["id"]
    assert server.client(created["key"]).post("/v1/events", json=[event("x1")]).status_code == 401
    # The operator: tenants and the keys of any tenant; never a tenant's data; /metrics needs it.
    assert {t["id"] for t in ok(operator.get("/v1/admin/tenants"))} >= {B, "tenant-a"}
    assert operator.get("/v1/meters").json()["code"] == "tenant_only"
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert a_admin.get("/metrics").json()["code"] == "operator_only"
    assert "meter_events_accepted_total" in operator.get("/metrics").text
    # The last operator key cannot be revoked; with a second one, the first can.
    [only] = [k for k in ok(operator.get("/v1/admin/keys")) if k["tenant"] is None and not k["revoked"]]
    r = operator.delete(f"/v1/admin/keys/{only['id']}")
    assert r.status_code == 409 and r.json()["code"] == "last_operator_key", r.text
    second = ok(operator.post("/v1/admin/keys", json={"tenant": None}))
    assert second["tenant"] is None
    second_client = server.client(second["key"])
    assert ok(second_client.delete(f"/v1/admin/keys/{only['id']}"))["revoked"] == only["id"]
    assert operator.get("/v1/admin/tenants").status_code == 401
    ok(second_client.post("/v1/admin/keys", json={"tenant": None}))  # a spare again, for the tests that follow
    server.admin_key = second["key"]


def test_two_authorization_headers_are_refused(world: tuple[Server, TenantB, dict[str, str | None]]) -> None:
    server, b, keys = world
    a_key = keys["A:all"]
    for first, second in ((a_key, b.key), (b.key, a_key), (b.key, b.key)):
        headers = [("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")]
        with httpx.Client(base_url=server.url) as client:
            r = client.get("/v1/meters", headers=headers)
        assert r.status_code == 400 and r.json()["code"] == "duplicate_header", r.text
        assert MARK not in r.text


def test_the_openapi_document_has_every_route() -> None:
    """The fuzz test walks the OpenAPI document: a route missing from it would be walked by nobody."""
    from meter.server.openapi import openapi

    paths = openapi()["paths"]
    for method, pattern in route_table():
        if pattern.startswith("/compat/"):
            continue  # drop-in routes follow their vendor's contract (tests/test_dropin.py); the walk above covers them
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)  # the document names parameters as routes do
        path = path.replace("\\.", ".")
        assert method.lower() in paths.get(path, {}), f"{method} {path} is not in the OpenAPI document"
