"""Payments end to end: the real server (a subprocess), the real ``stripe`` SDK in it, and a fake Stripe in the test.

Every scenario ends by stopping the server and reading its invoice store: every journal entry balances, the trial
balance sums to zero, each customer's receivable equals what its open invoices still ask for, and each credit
balance equals what the ledger's customer_credit account holds.

Worked by hand: plan ``pro`` bills 30.00 EUR in advance per monthly cycle (November's invoice: 30.00); plan ``yen``
bills 500 JPY (0 decimals: Stripe is sent ``amount=500``, and 30.00 EUR is sent as ``amount=3000``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fake_stripe import FakeStripe
from http_server import Server
from meter.billing.store import InvoiceStore
from meter.cli import main
from meter.money import ledger

SECRET_KEY = "sk_test_fake_0000"
ENDPOINT_SECRET = "whsec_test_0000"
START = "2026-10-01T00:00:00Z"


@dataclass
class Shop:
    server: Server
    data: Path
    key: str
    fake: FakeStripe
    c: httpx.Client
    subs: int = 0

    def restart(self) -> None:
        self.server = Server(self.data, admin_key=self.server.admin_key)
        self.c = self.server.client(self.key)

    def draft(self, customer: str, plan: str = "pro") -> str:
        """A new subscription of ``customer`` and its November invoice, a draft."""
        self.subs += 1
        sub = {"id": f"s{self.subs}", "customer": customer, "plan": plan, "version": 1, "start": START}
        assert self.c.post("/v1/subscriptions", json=sub).status_code == 200
        run = self.c.post("/v1/invoices/run", json={"period": "2026-11"})
        assert run.status_code == 200, run.text
        [draft] = [i for i in run.json()["invoices"] if i["subscription"] == sub["id"]]
        return str(draft["id"])

    def finalize(self, invoice: str) -> dict[str, Any]:
        r = self.c.post(f"/v1/invoices/{invoice}/finalize")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def invoice(self, invoice: str) -> dict[str, Any]:
        return dict(self.c.get(f"/v1/invoices/{invoice}").json())

    def attempts(self, invoice: str) -> list[dict[str, Any]]:
        return list(self.c.get(f"/v1/invoices/{invoice}/attempts").json())

    def dunning(self, as_of: datetime) -> list[dict[str, Any]]:
        r = self.c.post("/v1/dunning/run", json={"as_of": as_of.isoformat()})
        assert r.status_code == 200, r.text
        return list(r.json())

    def books(self) -> tuple[dict[tuple[str, str | None], Decimal], list[str]]:
        """Stops the server; the ledger's EUR balances (all are checked, see the module doc) and the event types."""
        self.server.stop()
        store = InvoiceStore(self.data / "invoices")
        try:
            entries = list(store.journal("acme"))
            for entry in entries:
                ledger.check_balanced(entry)
            rows = ledger.balances(entries)
            assert sum(r.debit for r in rows) == sum(r.credit for r in rows), "the trial balance sums to zero"
            by_currency = {(r.account, r.currency, r.customer): r.balance for r in rows}
            invoices = store.list("acme")
            for customer, currency in {(i.customer, i.currency) for i in invoices}:
                owed = sum(
                    i.amount_remaining or 0
                    for i in invoices
                    if (i.customer, i.currency, i.status) == (customer, currency, "open")
                )
                assert by_currency.get(("accounts_receivable", currency, customer), 0) == owed, customer
                held = by_currency.get(("customer_credit", currency, customer), 0)
                assert store.balance("acme", customer, currency) == held, customer
            balances: dict[tuple[str, str | None], Decimal] = {
                (r.account, r.customer): r.balance for r in rows if r.balance and r.currency == "EUR"
            }
            events: list[str] = [e.type for e in store.outbox("acme")]
        finally:
            store.close()
        return balances, events


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    fake = FakeStripe(SECRET_KEY)
    yield fake
    fake.close()
    assert fake.problems == [], "the SDK sent what Stripe would refuse"


@pytest.fixture
def shop(tmp_path: Path, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    monkeypatch.setenv("METER_STRIPE_API_BASE", fake.url)
    monkeypatch.setenv("METER_DUNNING_EVERY", "3600")  # the tests run the schedule themselves, at chosen times
    data = tmp_path / "data"
    server = Server(data)
    key = server.tenant_key("acme", ["ingest", "read", "admin"])
    c = server.client(key)
    settings = {"stripe_secret_key": SECRET_KEY, "stripe_webhook_secret": ENDPOINT_SECRET}
    shown = c.put("/v1/payments/settings", json=settings)
    assert shown.status_code == 200 and shown.json() == {
        "stripe_secret_key": "...0000",
        "stripe_webhook_secret": "...0000",
    }
    automatic = {"collection": "automatic", "stripe_customer": "cus_auto", "default_payment_method": "pm_auto"}
    for customer in (
        {"id": "auto", "name": "Auto", "currency": "EUR", **automatic},
        {"id": "manual", "name": "Manual", "currency": "EUR"},
        {"id": "yen", "name": "Yen", "currency": "JPY", **automatic, "stripe_customer": "cus_yen"},
    ):
        assert c.post("/v1/customers", json=customer).status_code == 200
    for plan, currency, amount in (("pro", "EUR", "30.00"), ("yen", "JPY", "500")):
        assert c.post("/v1/plans", json={"id": plan, "name": plan}).status_code == 201
        price = {"id": "base", "currency": currency, "model": "flat", "amount": amount, "cadence": "in_advance"}
        r = c.post(f"/v1/plans/{plan}/versions", json={"effective_from": "2020-01-01T00:00:00Z", "prices": [price]})
        assert r.status_code == 201, r.text
    shop = Shop(server, data, key, fake, c)
    yield shop
    shop.server.stop()


def test_paid_on_the_first_attempt_in_minor_units_with_an_idempotency_key(shop: Shop) -> None:
    invoice = shop.draft("auto")
    paid = shop.finalize(invoice)
    assert (paid["status"], paid["amount_paid"], paid["amount_remaining"]) == ("paid", "30.00", "0.00")
    [(path, key, form)] = shop.fake.requests
    assert key == f"meter-acme-{invoice}-1"
    assert {k: form[k] for k in ("amount", "currency", "customer", "payment_method", "off_session", "confirm")} == {
        "amount": "3000",
        "currency": "eur",
        "customer": "cus_auto",
        "payment_method": "pm_auto",
        "off_session": "true",
        "confirm": "true",
    }
    assert (form["metadata[tenant]"], form["metadata[invoice]"], form["metadata[attempt]"]) == ("acme", invoice, "1")
    [attempt] = shop.attempts(invoice)
    assert (attempt["status"], attempt["amount_minor"], attempt["idempotency_key"]) == ("succeeded", 3000, key)
    [payment] = shop.c.get(f"/v1/invoices/{invoice}/payments").json()
    assert (payment["method"], payment["status"], payment["amount"]) == ("stripe", "succeeded", "30.00")
    # JPY has no minor unit: 500 JPY is amount=500.
    yen = shop.finalize(shop.draft("yen", plan="yen"))
    assert (yen["status"], yen["amount_paid"]) == ("paid", "500")
    assert shop.fake.requests[-1][2]["amount"] == "500" and shop.fake.requests[-1][2]["currency"] == "jpy"
    balances, events = shop.books()
    assert balances == {("deferred_revenue", None): Decimal("30.00"), ("payments_clearing", None): Decimal("30.00")}
    assert events.count("payment.succeeded") == 2 and events.count("invoice.paid") == 2


def test_two_failures_then_success_on_the_dunning_schedule(shop: Shop) -> None:
    shop.fake.decline(2)
    invoice = shop.draft("auto")
    assert shop.finalize(invoice)["status"] == "open"
    [first] = shop.attempts(invoice)
    assert (first["status"], first["error_code"], first["decline_code"]) == (
        "failed",
        "card_declined",
        "insufficient_funds",
    )
    failed_at = datetime.fromisoformat(first["completed_at"])
    assert datetime.fromisoformat(first["next_attempt_at"]) == failed_at + timedelta(days=3)
    assert shop.dunning(failed_at + timedelta(days=2)) == [], "nothing is due before the first retry"
    [second] = shop.dunning(failed_at + timedelta(days=3))
    assert (second["n"], second["status"], second["trigger"]) == (2, "failed", "dunning")
    assert datetime.fromisoformat(second["next_attempt_at"]) == failed_at + timedelta(days=5)
    [third] = shop.dunning(failed_at + timedelta(days=5))
    assert (third["n"], third["status"]) == (3, "succeeded")
    paid = shop.invoice(invoice)
    assert (paid["status"], paid["amount_paid"], paid["amount_remaining"]) == ("paid", "30.00", "0.00")
    assert shop.fake.keys() == [f"meter-acme-{invoice}-{n}" for n in (1, 2, 3)] and shop.fake.charges == 3
    assert shop.dunning(failed_at + timedelta(days=30)) == [], "a paid invoice leaves the schedule"
    statuses = [p["status"] for p in shop.c.get("/v1/payments", params={"invoice": invoice}).json()]
    assert statuses == ["failed", "failed", "succeeded"]
    balances, events = shop.books()
    assert balances[("payments_clearing", None)] == Decimal("30.00")
    assert ("accounts_receivable", "auto") not in balances
    assert events.count("payment.failed") == 2 and events.count("invoice.payment_failed") == 2
    assert events[-2:] == ["payment.succeeded", "invoice.paid"]


def test_every_attempt_fails_so_the_invoice_is_written_off_and_a_later_payment_recovers_it(shop: Shop) -> None:
    shop.fake.decline(4)
    invoice = shop.draft("auto")
    shop.finalize(invoice)
    failed_at = datetime.fromisoformat(shop.attempts(invoice)[0]["completed_at"])
    for day in (3, 5, 7):
        [attempt] = shop.dunning(failed_at + timedelta(days=day))
        assert attempt["status"] == "failed"
    assert attempt["next_attempt_at"] is None, "no retry is left after the third retry"
    written = shop.invoice(invoice)
    assert (written["status"], written["amount_remaining"]) == ("uncollectible", "30.00")
    assert [a["status"] for a in shop.attempts(invoice)] == ["failed"] * 4
    assert shop.dunning(failed_at + timedelta(days=60)) == []
    # The customer pays by bank transfer after all: the written-off debt is recovered and the invoice is paid.
    r = shop.c.post(f"/v1/invoices/{invoice}/payments", json={"amount": "30", "method": "bank_transfer"})
    assert r.status_code == 201 and r.json()["recovered"] is True, r.text
    assert shop.invoice(invoice)["status"] == "paid"
    balances, events = shop.books()
    assert ("bad_debt", None) not in balances and balances[("cash", None)] == Decimal("30.00")
    assert events.count("invoice.uncollectible") == 1


def test_the_same_webhook_twice_is_applied_once_and_a_failure_webhook_schedules_a_retry(shop: Shop) -> None:
    shop.fake.processing(2)
    invoice = shop.draft("auto")
    assert shop.finalize(invoice)["status"] == "open"
    [attempt] = shop.attempts(invoice)
    assert attempt["status"] == "pending", "processing: its webhook will tell"
    intent = dict(shop.fake.intents[next(iter(shop.fake.intents))], status="succeeded")
    event = shop.fake.event("payment_intent.succeeded", intent)
    first = shop.fake.deliver(event, shop.server.url, ENDPOINT_SECRET)
    again = shop.fake.deliver(event, shop.server.url, ENDPOINT_SECRET)
    assert (first.status_code, first.json()["status"]) == (200, "applied"), first.text
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    assert shop.invoice(invoice)["status"] == "paid"
    assert len(shop.c.get("/v1/payments", params={"invoice": invoice}).json()) == 1
    # The pending attempt of another invoice fails by webhook: the schedule continues from there.
    other = shop.draft("auto")
    shop.finalize(other)
    pending = [i for i in shop.fake.intents.values() if i["metadata"]["invoice"] == other][0]
    failure = dict(pending, status="requires_payment_method", last_payment_error={"code": "card_declined"})
    answer = shop.fake.deliver(
        shop.fake.event("payment_intent.payment_failed", failure), shop.server.url, ENDPOINT_SECRET
    )
    assert answer.json()["status"] == "applied"
    [failed] = shop.attempts(other)
    assert (failed["status"], failed["error_code"]) == ("failed", "card_declined") and failed["next_attempt_at"]
    ignored = shop.fake.deliver(
        shop.fake.event("customer.created", {"id": "cus_1", "metadata": {"tenant": "acme"}}),
        shop.server.url,
        ENDPOINT_SECRET,
    )
    assert (ignored.status_code, ignored.json()["status"]) == (200, "ignored")
    balances, events = shop.books()
    assert events.count("payment.succeeded") == 1 and events.count("payment.failed") == 1
    assert balances[("accounts_receivable", "auto")] == Decimal("30.00")


def test_a_forged_webhook_is_400_and_applies_nothing(shop: Shop) -> None:
    shop.fake.processing(1)
    invoice = shop.draft("auto")
    shop.finalize(invoice)
    intent = dict(next(iter(shop.fake.intents.values())), status="succeeded")
    event = shop.fake.event("payment_intent.succeeded", intent)
    url = shop.server.url
    tampered = dict(event, data={"object": dict(intent, amount=1)})
    for answer in (
        shop.fake.deliver(event, url, "whsec_wrong_secret"),  # not the endpoint's secret
        shop.fake.deliver(event, url, ENDPOINT_SECRET, payload=httpx_json(tampered)),  # a body the signature is not of
        shop.fake.deliver(event, url, ENDPOINT_SECRET, timestamp=int(datetime.now().timestamp()) - 600),  # too old
        httpx.post(
            f"{url}/v1/webhooks/stripe", content=httpx_json(event), headers={"content-type": "application/json"}
        ),
    ):
        assert (answer.status_code, answer.json()["code"]) == (400, "invalid_signature"), answer.text
    assert shop.invoice(invoice)["status"] == "open"
    assert shop.c.get("/v1/payments", params={"invoice": invoice}).json() == []
    assert shop.fake.deliver(event, url, ENDPOINT_SECRET).json()["status"] == "applied", "the genuine one still applies"
    balances, _ = shop.books()
    assert balances[("payments_clearing", None)] == Decimal("30.00")


def httpx_json(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_a_server_killed_between_the_charge_and_its_record_charges_once(shop: Shop) -> None:
    invoice = shop.draft("auto")

    def crash(form: dict[str, str]) -> None:
        shop.fake.on_charge = None
        shop.server.kill()  # Stripe charged the card; the server never hears the answer

    shop.fake.on_charge = crash
    with pytest.raises(httpx.TransportError):
        shop.c.post(f"/v1/invoices/{invoice}/finalize")
    shop.restart()
    assert shop.invoice(invoice)["status"] == "open"
    [pending] = shop.attempts(invoice)
    assert (pending["status"], pending["idempotency_key"]) == ("pending", f"meter-acme-{invoice}-1")
    [done] = shop.dunning(datetime.now().astimezone())  # the job completes the pending attempt with its own key
    assert (done["n"], done["status"]) == (1, "succeeded")
    assert shop.fake.keys() == [f"meter-acme-{invoice}-1"] * 2, "replayed with the same key"
    assert shop.fake.charges == 1, "charged once"
    assert shop.invoice(invoice)["status"] == "paid"
    balances, events = shop.books()
    assert balances[("payments_clearing", None)] == Decimal("30.00") and events.count("payment.succeeded") == 1


def test_partial_manual_payments_and_what_a_payment_must_be(shop: Shop) -> None:
    draft = shop.draft("manual")
    refused = shop.c.post(f"/v1/invoices/{draft}/payments", json={"amount": "10"})
    assert (refused.status_code, refused.json()["code"]) == (409, "invalid_state"), "a draft is not paid"
    invoice = shop.finalize(draft)
    assert invoice["status"] == "open" and shop.fake.requests == [], "send_invoice: nobody is charged"
    for body, code in (
        ({"amount": "0.001"}, "invalid_amount"),
        ({"amount": "0"}, "invalid_amount"),
        ({"amount": "-5"}, "invalid_amount"),
        ({"amount": "NaN"}, "invalid_amount"),
        ({"amount": "10", "currency": "USD"}, "invalid_currency"),
        ({"amount": "10", "method": "barter"}, "invalid_payment"),
    ):
        r = shop.c.post(f"/v1/invoices/{draft}/payments", json=body)
        assert (r.status_code, r.json()["code"]) == (400, code), r.text
    first = shop.c.post(
        f"/v1/invoices/{draft}/payments",
        json={"amount": "10", "method": "check", "reference": "chk 1001", "date": "2026-11-20T00:00:00Z"},
    )
    assert first.status_code == 201, first.text
    assert (first.json()["amount"], first.json()["applied"], first.json()["method"]) == ("10.00", "10.00", "check")
    after = shop.invoice(draft)
    assert (after["status"], after["amount_paid"], after["amount_remaining"]) == ("open", "10.00", "20.00")
    shop.c.post(f"/v1/invoices/{draft}/payments", json={"amount": "20.00"})
    paid = shop.invoice(draft)
    assert (paid["status"], paid["amount_paid"], paid["amount_remaining"]) == ("paid", "30.00", "0.00")
    assert [p["reference"] for p in shop.c.get("/v1/payments", params={"customer": "manual"}).json()] == [
        "chk 1001",
        None,
    ]
    balances, events = shop.books()
    assert balances[("cash", None)] == Decimal("30.00") and ("accounts_receivable", "manual") not in balances
    assert events.count("invoice.paid") == 1 and events.count("payment.succeeded") == 2


def test_an_overpayment_becomes_credit_balance_applied_to_the_next_invoice(shop: Shop) -> None:
    november = shop.draft("manual")
    shop.finalize(november)
    r = shop.c.post(f"/v1/invoices/{november}/payments", json={"amount": "50"})
    assert (r.json()["applied"], r.json()["to_credit"]) == ("30.00", "20.00")
    assert shop.invoice(november)["status"] == "paid"
    # The ledger's own reading agrees: nothing owed, 20.00 of credit.
    [balance] = shop.c.get("/v1/ledger/balances", params={"customer": "manual"}).json()
    assert (balance["owed"], balance["credit"], balance["currency"]) == ("0.00", "20.00", "EUR"), balance
    run = shop.c.post("/v1/invoices/run", json={"period": "2026-12"}).json()
    [december] = [i["id"] for i in run["invoices"] if i["customer"] == "manual"]
    final = shop.finalize(december)
    assert (final["credit_applied"], final["amount_due"], final["amount_remaining"]) == ("20.00", "10.00", "10.00")
    balances, _ = shop.books()
    assert balances[("accounts_receivable", "manual")] == Decimal("10.00")
    assert ("customer_credit", "manual") not in balances, "the credit balance was used up"


def test_refunds_through_stripe_and_recorded_for_manual_payments(shop: Shop) -> None:
    invoice = shop.draft("auto")
    shop.finalize(invoice)
    [payment] = shop.c.get(f"/v1/invoices/{invoice}/payments").json()
    too_much = shop.c.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": "31", "reason": "x"})
    assert (too_much.status_code, too_much.json()["code"]) == (400, "invalid_refund")
    r = shop.c.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": "10", "reason": "outage"})
    assert r.status_code == 201, r.text
    refunded = r.json()
    assert (refunded["status"], refunded["amount_refunded"]) == ("partially_refunded", "10.00")
    [(_, key, form)] = [(p, k, f) for p, k, f in shop.fake.requests if p == "/v1/refunds"]
    assert key == f"meter-acme-{payment['id']}-refund-1"
    assert (form["amount"], form["payment_intent"]) == ("1000", payment["payment_intent"])
    # Stripe's charge.refunded for that refund changes nothing; one made in its dashboard (5.00 more) is recorded.
    url = shop.server.url
    charge = shop.fake.charge_of(payment["payment_intent"])
    assert shop.fake.deliver(shop.fake.event("charge.refunded", charge), url, ENDPOINT_SECRET).status_code == 200
    assert shop.c.get(f"/v1/payments/{payment['id']}").json()["amount_refunded"] == "10.00"
    shop.fake.refunded[payment["payment_intent"]] += 500
    dashboard = shop.fake.event("charge.refunded", shop.fake.charge_of(payment["payment_intent"]))
    assert shop.fake.deliver(dashboard, url, ENDPOINT_SECRET).json()["status"] == "applied"
    after = shop.c.get(f"/v1/payments/{payment['id']}").json()
    assert (after["amount_refunded"], [x["amount"] for x in after["refunds"]]) == ("15.00", ["10.00", "5.00"])
    # A manual payment's refund is recorded only: no call to Stripe.
    manual = shop.draft("manual")
    shop.finalize(manual)
    paid = shop.c.post(f"/v1/invoices/{manual}/payments", json={"amount": "30"}).json()
    calls = len(shop.fake.requests)
    whole = shop.c.post(f"/v1/payments/{paid['id']}/refunds", json={"reason": "cancelled"}).json()
    assert (whole["status"], whole["amount_refunded"]) == ("refunded", "30.00") and len(shop.fake.requests) == calls
    balances, events = shop.books()
    assert balances[("refunds", None)] == Decimal("45.00")
    assert balances[("payments_clearing", None)] == Decimal("15.00") and ("cash", None) not in balances
    assert events.count("payment.refunded") == 3


def test_dunning_settings_and_mark_uncollectible(shop: Shop) -> None:
    assert shop.c.get("/v1/dunning").json() == {"retry_days": [3, 5, 7], "after_last": "uncollectible"}
    bad = shop.c.put("/v1/dunning", json={"retry_days": [5, 3]})
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_dunning")
    assert shop.c.put("/v1/dunning", json={"retry_days": [1], "after_last": "open"}).status_code == 200
    shop.fake.decline(2)
    invoice = shop.draft("auto")
    shop.finalize(invoice)
    failed_at = datetime.fromisoformat(shop.attempts(invoice)[0]["completed_at"])
    [last] = shop.dunning(failed_at + timedelta(days=1))
    assert (last["status"], last["next_attempt_at"]) == ("failed", None)
    assert shop.invoice(invoice)["status"] == "open", "after_last: open"
    r = shop.c.post(f"/v1/invoices/{invoice}/mark-uncollectible")
    assert r.status_code == 200 and r.json()["status"] == "uncollectible", r.text
    again = shop.c.post(f"/v1/invoices/{invoice}/mark-uncollectible")
    assert (again.status_code, again.json()["code"]) == (409, "invalid_state")
    manual = shop.finalize(shop.draft("manual"))
    no_card = shop.c.post(f"/v1/invoices/{manual['id']}/pay")
    assert (no_card.status_code, no_card.json()["code"]) == (409, "no_payment_method")
    balances, _ = shop.books()
    assert balances[("bad_debt", None)] == Decimal("30.00")


def test_the_cli_records_lists_refunds_and_sets_dunning_through_the_client(shop: Shop) -> None:
    invoice = shop.draft("manual")
    shop.finalize(invoice)
    env = {"METER_URL": shop.server.url, "METER_API_KEY": shop.key, "COLUMNS": "250"}

    def meter(*args: str) -> str:
        result = CliRunner().invoke(main, ["payments", *args], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    recorded = meter("record", invoice, "12.50", "--method", "check", "--reference", "chk 7")
    assert "12.50 EUR" in recorded and "17.50 EUR remaining" in recorded and "open" in recorded
    assert "chk 7" in meter("list", "--invoice", invoice)
    [payment] = shop.c.get("/v1/payments", params={"invoice": invoice}).json()
    assert "partially_refunded" in meter("refund", payment["id"], "--amount", "2.50", "--reason", "typo")
    assert meter("dunning", "--retry-days", "1,2") == "retries 1, 2 days after the first failure; then uncollectible\n"
    assert "stripe_webhook_secret: ...0000" in meter("settings")
    # One secret set leaves the other as it was.
    meter("settings", "--stripe-webhook-secret", "whsec_rotated_1234")
    assert shop.c.get("/v1/payments/settings").json() == {
        "stripe_secret_key": "...0000",
        "stripe_webhook_secret": "...1234",
    }
    bad = CliRunner().invoke(main, ["payments", "record", invoice, "1.001"], env=env)
    assert bad.exit_code == 1 and "invalid_amount" in bad.output
    shop.books()


def test_a_pending_attempt_older_than_its_idempotency_key_is_looked_up_not_replayed(shop: Shop) -> None:
    """Stripe forgets a key after 24 hours: replaying it then would charge again, so the charge is searched first."""
    invoice = shop.draft("auto")

    def crash(form: dict[str, str]) -> None:
        shop.fake.on_charge = None
        shop.server.kill()

    shop.fake.on_charge = crash
    with pytest.raises(httpx.TransportError):
        shop.c.post(f"/v1/invoices/{invoice}/finalize")
    shop.restart()  # back two days later: the schedule runs at that time
    [done] = shop.dunning(datetime.now().astimezone() + timedelta(days=2))
    assert (done["n"], done["status"]) == (1, "succeeded")
    assert shop.fake.keys() == [f"meter-acme-{invoice}-1"], "found by its metadata, never sent again"
    [(path, _, params)] = [r for r in shop.fake.requests if r[0].endswith("/search")]
    assert f"metadata['invoice']:'{invoice}'" in params["query"] and "metadata['attempt']:'1'" in params["query"]
    assert shop.fake.charges == 1 and shop.invoice(invoice)["status"] == "paid"
    shop.books()
