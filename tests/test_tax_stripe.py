"""The Stripe Tax provider through the real ``stripe`` SDK, against a tiny fake Stripe served by this test.

``stripe.api_base`` points at the fake, which checks what the SDK sends: the secret key, the form-encoded parameters
of ``POST /v1/tax/calculations`` and the idempotency key, and answers a replayed key with its first answer (as Stripe
does), so a retried finalization never makes a second calculation.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import msgspec
import pytest
import stripe
from conftest import Desk
from meter.catalog.billing import Address, Customer
from meter.catalog.tax import TaxSettings
from meter.exceptions import MeterError
from meter.money.tax import Taxes
from test_tax import invoice_of

KEY = "sk_test_meter"
D = Decimal


class FakeStripe(ThreadingHTTPServer):
    """``POST /v1/tax/calculations``: UK VAT at 20 % on every line, as Stripe would answer (tax_behavior honoured)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[dict[str, str], dict[str, str]]] = []
        self.answers: dict[str, bytes] = {}
        self.created = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def calculation(self, form: dict[str, str]) -> dict[str, Any]:
        self.created += 1
        items: list[dict[str, Any]] = []
        exclusive = inclusive = total = n = 0
        while f"line_items[{n}][amount]" in form:
            amount = int(form[f"line_items[{n}][amount]"])
            behavior = form.get(f"line_items[{n}][tax_behavior]", "exclusive")
            share = D(amount) * 20 / (120 if behavior == "inclusive" else 100)
            tax = int(share.quantize(D(1), rounding=ROUND_HALF_EVEN))
            taxable = amount - tax if behavior == "inclusive" else amount
            total += amount
            exclusive += tax if behavior == "exclusive" else 0
            inclusive += tax if behavior == "inclusive" else 0
            breakdown = {
                "amount": tax,
                "jurisdiction": {"country": "GB", "display_name": "United Kingdom", "level": "country", "state": None},
                "sourcing": "destination",
                "tax_rate_details": {"display_name": "VAT", "percentage_decimal": "20.0", "tax_type": "vat"},
                "taxability_reason": "standard_rated",
                "taxable_amount": taxable,
            }
            items.append(
                {
                    "id": f"tax_li_{n}",
                    "object": "tax.calculation_line_item",
                    "amount": amount,
                    "amount_tax": tax,
                    "livemode": False,
                    "product": None,
                    "quantity": 1,
                    "reference": form[f"line_items[{n}][reference]"],
                    "tax_behavior": behavior,
                    "tax_code": form.get(f"line_items[{n}][tax_code]", "txcd_10000000"),
                    "tax_breakdown": [breakdown],
                }
            )
            n += 1
        return {
            "id": f"taxcalc_{self.created}",
            "object": "tax.calculation",
            "amount_total": total + exclusive,
            "currency": form["currency"],
            "customer": None,
            "livemode": False,
            "line_items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "url": "/v1/tax/calculations/x/line_items",
            },
            "tax_amount_exclusive": exclusive,
            "tax_amount_inclusive": inclusive,
            "tax_breakdown": [],
            "tax_date": int(form["tax_date"]),
        }


class _Handler(BaseHTTPRequestHandler):
    server: FakeStripe

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append((headers, form))
        if self.path != "/v1/tax/calculations" or headers.get("authorization") != f"Bearer {KEY}":
            return self._answer(401, {"error": {"type": "invalid_request_error", "message": "bad key or path"}})
        key = headers["idempotency-key"]
        if key not in self.server.answers:
            self.server.answers[key] = json.dumps(self.server.calculation(form)).encode()
        self._answer(200, self.server.answers[key])

    def _answer(self, status: int, body: dict[str, Any] | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    server = FakeStripe()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(stripe, "api_base", server.url)
    monkeypatch.setattr(stripe, "max_network_retries", 0)
    yield server
    server.shutdown()
    server.server_close()


def test_stripe_tax_computes_an_inclusive_uk_invoice(desk: Desk, fake: FakeStripe) -> None:
    # 99.99 GBP, prices include tax: Stripe (the fake) answers 9999 x 20 / 120 = 1666.5 -> 1666 pence of VAT,
    #   on a taxable 8333: tax 16.66, total 99.99.
    desk.invoicer.taxes = Taxes(desk.catalog, stripe_api_key=KEY)
    draft = invoice_of(desk, currency="GBP", fees=["99.99"], country="GB", region="")
    desk.catalog.put_tax_settings("acme", TaxSettings(country="GB", provider="stripe", prices_include_tax=True))
    final, _ = desk.invoicer.finalize("acme", draft.id)
    assert (final.tax, final.total) == (D("16.66"), D("99.99"))
    [group] = final.taxes
    assert (group.rate, group.country, group.percentage, group.inclusive) == (
        "stripe:GB:vat:20.0",
        "GB",
        D("20.0"),
        True,
    )
    assert (group.taxable, group.amount, group.name) == (D("83.33"), D("16.66"), "VAT (United Kingdom)")
    assert final.tax_note == "Tax computed by Stripe Tax (calculation taxcalc_1)."

    [(headers, form)] = fake.requests
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert re.fullmatch(rf"meter-tax-acme-{re.escape(draft.id)}-[0-9a-f]{{24}}", headers["idempotency-key"])
    tax_date = form.pop("tax_date")
    assert int(tax_date) == pytest.approx(final.finalized_at.timestamp(), abs=5)  # type: ignore[union-attr]
    assert form == {
        "currency": "gbp",
        "line_items[0][amount]": "9999",
        "line_items[0][reference]": "0",
        "line_items[0][tax_behavior]": "inclusive",
        "customer_details[address_source]": "billing",
        "customer_details[address][country]": "GB",
        "expand[0]": "line_items",
        "expand[1]": "line_items.data.tax_breakdown",
    }


def test_a_retried_calculation_reuses_its_idempotency_key(desk: Desk, fake: FakeStripe) -> None:
    # 10.00 GBP exclusive: 1000 x 20 % = 200 pence; the same request twice is one calculation for Stripe.
    taxes = Taxes(desk.catalog, stripe_api_key=KEY)
    draft = invoice_of(desk, currency="GBP", fees=["10.00"], country="GB")
    desk.catalog.put_tax_settings("acme", TaxSettings(country="GB", provider="stripe"))
    at = draft.period_start
    first, again = taxes.tax(draft, at), taxes.tax(draft, at)
    assert first == again and (first.tax, first.total) == (D("2.00"), D("12.00"))
    assert fake.created == 1 and len(fake.requests) == 2
    assert fake.requests[0][0]["idempotency-key"] == fake.requests[1][0]["idempotency-key"]
    # A draft recomputed since (20.00 now) is another request, with another key: 2000 x 20 % = 400 pence.
    recomputed = msgspec.structs.replace(draft, lines=[msgspec.structs.replace(draft.lines[0], amount=D("20.00"))])
    assert taxes.tax(recomputed, at).tax == D("4.00") and fake.created == 2
    assert fake.requests[2][0]["idempotency-key"] != fake.requests[0][0]["idempotency-key"]


def test_a_stripe_error_is_503_tax_unavailable_and_nothing_is_written(desk: Desk, fake: FakeStripe) -> None:
    desk.invoicer.taxes = Taxes(desk.catalog, stripe_api_key=KEY)
    draft = invoice_of(desk, currency="GBP", fees=["10.00"], country="GB")
    desk.catalog.put_tax_settings("acme", TaxSettings(country="GB", provider="stripe"))
    # A country Stripe would refuse never gets there: the catalog refuses it when the customer is written.
    with pytest.raises(MeterError) as refused:
        desk.catalog.put_customer("acme", Customer(id="c1", name="One", currency="GBP", address=Address(country="XX")))
    assert refused.value.code == "invalid_catalog" and fake.requests == []
    desk.invoicer.taxes = Taxes(desk.catalog, stripe_api_key="sk_test_wrong")
    with pytest.raises(MeterError) as failed:
        desk.invoicer.finalize("acme", draft.id)
    assert failed.value.code == "tax_unavailable" and "retry" in failed.value.message
    assert desk.invoicer.store.get("acme", draft.id).status == "draft"


def test_the_stripe_provider_needs_the_servers_key(desk: Desk) -> None:
    desk.invoicer.taxes = Taxes(desk.catalog, stripe_api_key="")
    draft = invoice_of(desk, currency="GBP", fees=["10.00"], country="GB")
    desk.catalog.put_tax_settings("acme", TaxSettings(country="GB", provider="stripe"))
    with pytest.raises(MeterError) as failed:
        desk.invoicer.finalize("acme", draft.id)
    assert failed.value.code == "tax_provider_unconfigured" and "METER_STRIPE_API_KEY" in failed.value.message


def test_stripe_tax_is_asked_before_the_store_lock_is_taken(desk: Desk, fake: FakeStripe) -> None:
    # The lock holds every other write of the tenant (payments, webhook deliveries): never across Stripe's latency.
    desk.invoicer.taxes = Taxes(desk.catalog, stripe_api_key=KEY)
    draft = invoice_of(desk, currency="GBP", fees=["10.00"], country="GB")
    desk.catalog.put_tax_settings("acme", TaxSettings(country="GB", provider="stripe"))
    held: list[bool] = []
    calculation = fake.calculation

    def watched(form: dict[str, str]) -> dict[str, Any]:
        held.append(desk.invoicer.store.lock("acme").locked())
        return calculation(form)

    fake.calculation = watched  # type: ignore[method-assign]
    final, _ = desk.invoicer.finalize("acme", draft.id)
    assert held == [False] and (final.tax, final.total) == (D("2.00"), D("12.00"))
