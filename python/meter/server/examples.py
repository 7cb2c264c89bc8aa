"""Request bodies that work on a fresh tenant: the examples of `/openapi.json`, and the seed of the fuzz tests.

Keyed by the name of the body's schema (a msgspec Struct's name, or `CloudEvent`). In this order they build one
tenant from nothing (a meter, a customer, a product, a plan and its version, a subscription, an invoice run), which
is how `tests/test_bad_input.py` seeds the ids its generated requests find.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EXAMPLES"]

_PRICE_EXAMPLE = {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.002"}
_EVENT_EXAMPLE = {
    "specversion": "1.0",
    "id": "ev-1",
    "source": "gateway",
    "type": "llm.request",
    "subject": "cust-1",
    "time": "2026-11-23T10:00:00Z",
    "data": {"tokens": 120, "model": "small"},
}
#: Request bodies that work on a fresh tenant, in this order (the examples of the document, and the seed of the
#: bad-input test, whose generated requests start from them).
EXAMPLES: dict[str, Any] = {
    "CloudEvent": _EVENT_EXAMPLE,
    "MeterSpec": {
        "slug": "tokens",
        "event_type": "llm.request",
        "aggregation": "sum",
        "value_property": "$.tokens",
        "group_by": {"model": "$.model"},
    },
    "Customer": {"id": "cust-1", "name": "Acme", "currency": "EUR"},
    "Product": {"id": "llm", "name": "LLM tokens", "meters": ["tokens"]},
    "PlanBody": {"id": "pro", "name": "Pro"},
    "PlanVersionBody": {
        "effective_from": "2026-01-01T00:00:00Z",
        "prices": [
            _PRICE_EXAMPLE,
            {"id": "platform", "currency": "EUR", "model": "flat", "cadence": "in_advance", "amount": "30.00"},
            {
                "id": "tiers",
                "currency": "EUR",
                "model": "graduated",
                "meter": "tokens",
                "free_allowance": "100",
                "tiers": [
                    {"from": "0", "up_to": "1000", "unit_price": "0.01"},
                    {"from": "1000", "unit_price": "0.005"},
                ],
                "maximum": "500.00",
            },
        ],
    },
    "Entitlement": {"feature": "gpt", "kind": "metered", "meter": "tokens", "limit": "1000000", "reset": "cycle"},
    "Subscription": {
        "id": "sub-1",
        "customer": "cust-1",
        "plan": "pro",
        "version": 1,
        "start": "2026-01-01T00:00:00Z",
        "threshold": "1000.00",
        "discounts": [{"id": "launch", "start": "2026-01-01T00:00:00Z", "percent": "10"}],
        "credits": [{"id": "promo", "amount": "5.00", "start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"}],
    },
    "MigrationBody": {"version": 1, "at": "2026-11-15T00:00:00Z"},
    "InvoiceRunBody": {"period": "2026-11"},
    "CreditNoteBody": {"amount": "1.00", "reason": "goodwill"},
    "TopUpBody": {"id": "top-up-1", "amount": "50.00"},
    "EndpointBody": {
        "url": "https://billing.example.com/webhooks/meter",
        "types": ["invoice.finalized", "invoice.paid"],
        "description": "ERP",
    },
    "EndpointUpdate": {"enabled": True},
    "ReplayBody": {"since": "2026-11-01T00:00:00Z"},
    "EventReplayBody": {"endpoint": None},
    "TaxRate": {
        "id": "de-vat",
        "name": "VAT",
        "country": "DE",
        "percentage": "19",
        "inclusive": True,
        "effective_from": "2026-01-01T00:00:00Z",
    },
    "TaxEnd": {"at": "2027-01-01T00:00:00Z"},
    "TaxSettings": {"country": "DE", "provider": "catalog"},
    "RevenueSettings": {"timezone": "America/New_York", "breakage": "at_expiry", "accounts": {"revenue": "4010"}},
    "DocumentSettings": {
        "seller_name": "Acme AI SAS",
        "seller_address": {"line1": "1 Rue de Rivoli", "city": "Paris", "postal_code": "75001", "country": "FR"},
        "seller_email": "billing@acme.example",
        "accent_color": "#1F4E79",
        "footer": "Acme AI SAS, RCS Paris 123 456 789",
        "payment_terms_days": 30,
    },
    "TenantBody": {"id": "acme", "name": "Acme Inc."},
    "KeyBody": {"tenant": "acme", "scopes": ["ingest", "read"]},
    "TenantKeyBody": {"scopes": ["ingest"]},
    "PaymentBody": {"amount": "10.00", "method": "bank_transfer", "reference": "wire 2026-11-30"},
    "RefundBody": {"amount": "1.00", "reason": "duplicate"},
    # The webhook secret only: a secret key in an example would send the fuzz tests' charges to Stripe.
    "PaymentSettingsBody": {"stripe_webhook_secret": "whsec_example_0000"},
    "DunningSettings": {"retry_days": [3, 5, 7], "after_last": "uncollectible"},
    "DunningRunBody": {},
    "Alert": {
        "id": "tokens-80",
        "kind": "usage",
        "meter": "tokens",
        "thresholds": ["800", "1000"],
        "customer": "cust-1",
    },
    "Checks": {"checks": [{"customer": "acme", "feature": "tokens"}, {"customer": "globex", "feature": "sso"}]},
    "ReservationBody": {"id": "job-42", "target": "balance", "amount": "1.00", "expires_in_seconds": 3600},
    "SettleBody": {"actual": "0.80"},
    "BackfillBody": {
        "id": "bf-november",
        "start": "2026-11-23T00:00:00Z",
        "end": "2026-11-24T00:00:00Z",
        "customer": "cust-1",
        "reason": "the gateway lost a day: re-sent from the warehouse",
    },
    "CorrectionRequest": {
        "reason": "the gateway counted ev-1's cached tokens twice",
        "items": [{"action": "amend", "event": _EVENT_EXAMPLE | {"data": {"tokens": 100, "model": "small"}}}],
    },
}
