"""The README's money walkthrough, step by step over HTTP.

Usage to a taxed invoice, paid through (a fake) Stripe, the ledger it leaves, and the signed webhooks the customer's
system receives. The subscription starts this month; next month's invoice bills its fee in advance and this month's
tokens in arrears (events must be recent: the engine takes them up to 35 days back).

Worked by hand (New York sales tax, 8.875 % exclusive, each line taxed and rounded half to even on its own):

- the Pro plan's fee in advance for next month: 29.00 USD; tax 29.00 x 8.875 % = 2.57375 -> 2.57;
- this month's tokens in arrears: 1,000,000 x 0.00002 = 20.00 USD; tax 20.00 x 8.875 % = 1.775 -> 1.78 (half to even:
  the digit before the 5 is 7, odd, so up);
- subtotal 49.00, tax 4.35 (the sum of the lines' taxes; taxing the subtotal happens to give the same here:
  4.34875 -> 4.35), total 53.35, sent to
  Stripe as ``amount=5335`` in cents with the key ``meter-acme-<invoice>-1``;
- the ledger: payments clearing 53.35 debit; deferred revenue 29.00 (billed before next month is served), unbilled
  revenue 20.00 credit (the usage invoiced before a month-end close recognized it as revenue), tax payable 4.35
  credit; the customer owes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from fake_stripe import FakeStripe
from http_server import Server
from standardwebhooks.webhooks import Webhook
from webhook_receiver import Receiver, wait_for

SECRET_KEY, STRIPE_WEBHOOK_SECRET = "sk_test_walkthrough", "whsec_walkthrough"


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    fake = FakeStripe(SECRET_KEY)
    yield fake
    fake.close()
    assert fake.problems == []


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


def test_usage_to_a_taxed_invoice_paid_through_stripe_with_its_ledger_and_webhooks(
    tmp_path: Path, fake: FakeStripe, receiver: Receiver
) -> None:
    now = datetime.now(UTC)
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = f"{this_month + timedelta(days=32):%Y-%m}"
    env = {"METER_STRIPE_API_BASE": fake.url, "METER_ALLOW_PRIVATE_WEBHOOKS": "1"}
    server = Server(tmp_path / "data", env=env)
    try:
        c = server.client(server.tenant_key("acme", ["ingest", "read", "admin"]))

        def ok(r: object) -> dict:  # type: ignore[type-arg]
            assert r.status_code < 300, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"  # type: ignore[attr-defined]
            return r.json()  # type: ignore[attr-defined,no-any-return]

        # 1. Where the money goes: the seller's tax, Stripe, and the customer's webhook endpoint (secret shown once).
        ok(c.put("/v1/tax-settings", json={"country": "US", "region": "NY"}))
        ny = {"id": "ny", "name": "NY sales tax", "country": "US", "region": "NY", "percentage": "8.875"}
        ok(c.post("/v1/tax-rates", json={**ny, "effective_from": "2026-01-01T00:00:00Z"}))
        ok(
            c.put(
                "/v1/payments/settings",
                json={"stripe_secret_key": SECRET_KEY, "stripe_webhook_secret": STRIPE_WEBHOOK_SECRET},
            )
        )
        endpoint = ok(
            c.post(
                "/v1/webhook-endpoints",
                json={"url": receiver.url(), "types": ["invoice.finalized", "invoice.paid", "payment.succeeded"]},
            )
        )
        assert endpoint["secret"].startswith("whsec_")
        assert "secret" not in ok(c.get(f"/v1/webhook-endpoints/{endpoint['id']}"))

        # 2. What is sold: tokens, a plan (29.00 in advance + 0.00002 per token), a customer in New York paying by card.
        ok(
            c.post(
                "/v1/meters",
                json={"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"},
            )
        )
        ok(
            c.post(
                "/v1/customers",
                json={
                    "id": "ada",
                    "name": "Ada Inc.",
                    "currency": "USD",
                    "address": {"country": "US", "region": "NY"},
                    "collection": "automatic",
                    "stripe_customer": "cus_ada",
                    "default_payment_method": "pm_card_visa",
                },
            )
        )
        ok(c.post("/v1/plans", json={"id": "pro", "name": "Pro"}))
        prices = [
            {"id": "base", "currency": "USD", "model": "flat", "amount": "29.00", "cadence": "in_advance"},
            {"id": "tokens", "currency": "USD", "model": "per_unit", "meter": "tokens", "unit_price": "0.00002"},
        ]
        ok(c.post("/v1/plans/pro/versions", json={"effective_from": "2026-01-01T00:00:00Z", "prices": prices}))
        ok(
            c.post(
                "/v1/subscriptions",
                json={"id": "ada-pro", "customer": "ada", "plan": "pro", "version": 1, "start": this_month.isoformat()},
            )
        )

        # 3. This month's usage: 1,000,000 tokens in four events (one sent twice: counted once).
        events = [
            {
                "specversion": "1.0",
                "id": f"req-{i}",
                "source": "gateway",
                "type": "llm",
                "subject": "ada",
                "time": (this_month + timedelta(seconds=i)).isoformat(),  # never before the cycle, never late
                "data": {"tokens": 250_000},
            }
            for i in range(4)
        ]
        ok(c.post("/v1/events", json=events))
        ok(c.post("/v1/events", json=events[:1]))

        # 4. Next month's invoice, finalized: taxed, numbered, charged through Stripe at once.
        [draft] = ok(c.post("/v1/invoices/run", json={"period": next_month}))["invoices"]
        assert (draft["status"], draft["subtotal"], draft["tax"]) == ("draft", "49.00", None)
        invoice = ok(c.post(f"/v1/invoices/{draft['id']}/finalize"))
        assert (invoice["number"], invoice["subtotal"], invoice["tax"], invoice["total"]) == (
            "INV-000001",
            "49.00",
            "4.35",
            "53.35",
        )
        assert [(t["line"], t["taxable"], t["amount"]) for t in invoice["line_taxes"]] == [
            (0, "29.00", "2.57"),
            (1, "20.00", "1.78"),
        ]
        assert (invoice["status"], invoice["amount_paid"], invoice["amount_remaining"]) == ("paid", "53.35", "0.00")
        [(path, key, form)] = fake.requests
        assert (path, key, form["amount"], form["currency"]) == (
            "/v1/payment_intents",
            f"meter-acme-{draft['id']}-1",
            "5335",
            "usd",
        )

        # 5. Stripe's own webhook about the same charge: verified, and the payment is not counted twice.
        intent = dict(next(iter(fake.intents.values())), status="succeeded")
        answer = fake.deliver(fake.event("payment_intent.succeeded", intent), server.url, STRIPE_WEBHOOK_SECRET)
        assert answer.status_code == 200, answer.text
        assert len(ok(c.get("/v1/payments", params={"invoice": draft["id"]}))) == 1
        forged = fake.deliver(fake.event("payment_intent.succeeded", intent), server.url, "whsec_not_stripes")
        assert forged.status_code == 400

        # 6. The books: balanced, traced to the invoice and the payment.
        trial = ok(c.get("/v1/ledger/trial-balance"))
        assert trial["balanced"] is True
        assert {(a["account"], a["balance"]) for a in trial["accounts"] if Decimal(a["balance"])} == {
            ("payments_clearing", "53.35"),
            ("deferred_revenue", "29.00"),
            ("unbilled_revenue", "-20.00"),
            ("tax_payable", "4.35"),
        }
        kinds = [e["kind"] for e in ok(c.get("/v1/ledger/entries", params={"invoice": draft["id"]}))["data"]]
        assert kinds == ["invoice_finalized", "payment"]
        assert ok(c.get("/v1/ledger/balances", params={"customer": "ada"}))[0]["owed"] == "0.00"

        # 7. What the customer's system received: three signed events, verified as a customer would.
        wait_for("three webhooks", lambda: len(receiver.requests) >= 3)
        verifier = Webhook(endpoint["secret"])
        received = [verifier.verify(r.body, r.headers) for r in receiver.requests]
        assert sorted(e["type"] for e in received) == ["invoice.finalized", "invoice.paid", "payment.succeeded"]
        paid = next(e for e in received if e["type"] == "invoice.paid")
        assert (paid["data"]["number"], paid["data"]["total"], paid["data"]["status"]) == (
            "INV-000001",
            "53.35",
            "paid",
        )
        assert datetime.fromisoformat(paid["created_at"]) <= datetime.now(UTC)
    finally:
        server.stop()
