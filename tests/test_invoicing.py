"""Invoicing end to end.

Events into the engine, the Parquet export, then invoices with hand-computed totals: cycles
and proration across a plan change, commits with overage, late usage after finalization, threshold billing, and
idempotent re-runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from conftest import OCT, YEAR, Desk, event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meter import Engine
from meter.billing.invoicer import Invoicer
from meter.billing.invoices import Invoice
from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog, Commit, Credit, Customer, Discount, Subscription
from meter.schemas import AmendEvent, CancelEvent, CorrectionRequest

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)


def tokens(i: int, at: datetime, amount: int | str, customer: str = "c1", model: str = "m") -> dict[str, Any]:
    return event(f"e{i}-{at:%Y%m%d%H%M}", customer, time=at, tokens=amount, model=model)


def per_unit(price_id: str = "tokens", unit_price: str = "0.01") -> dict[str, Any]:
    return {"id": price_id, "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": unit_price}


def base_fee(amount: str = "30") -> dict[str, Any]:
    return {"id": "base", "currency": "EUR", "model": "flat", "amount": amount, "cadence": "in_advance"}


def lines(invoice: Invoice) -> list[tuple[str, str | None, Decimal]]:
    return [(line.kind, line.price, line.amount) for line in invoice.lines]


def test_a_cycle_bills_its_fee_in_advance_and_the_previous_cycles_usage(desk: Desk) -> None:
    desk.plan([[base_fee(), per_unit()]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
    desk.usage(
        tokens(1, OCT + timedelta(days=3), 1000),
        tokens(2, OCT + timedelta(days=20), 234),
        tokens(3, NOV + timedelta(days=2), 99),
    )  # November's usage goes on December's invoice
    [invoice] = desk.invoicer.run("acme", "2026-11").invoices
    assert (invoice.period_start, invoice.period_end) == (NOV, DEC)
    assert sorted(lines(invoice)) == sorted(
        [("recurring", "base", Decimal("30.00")), ("usage", "tokens", Decimal("12.34"))]
    )
    assert invoice.total == Decimal("42.34") and invoice.status == "draft"
    usage = next(line for line in invoice.lines if line.kind == "usage")
    assert usage.quantity == Decimal(1234) and (usage.period_start, usage.period_end) == (OCT, NOV)
    assert usage.details[0].units == Decimal(1234) and usage.details[0].unit_price == Decimal("0.01")
    assert "type = 'llm', subject = 'c1'" in (usage.events or "")

    again = desk.invoicer.run("acme", "2026-11").invoices
    assert [msgspec.json.encode(i) for i in again] == [msgspec.json.encode(invoice)], "re-running is idempotent"
    final, _ = desk.invoicer.finalize("acme", invoice.id)
    assert final.number == "INV-000001" and final.status == "open"
    assert desk.invoicer.run("acme", "2026-11").invoices == [], "a finalized invoice is never recomputed"


def test_proration_across_a_plan_change(desk: Desk) -> None:
    desk.plan([[base_fee("30"), per_unit(unit_price="0.01")], [base_fee("60"), per_unit(unit_price="0.02")]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
    desk.catalog.migrate_subscription("acme", "s1", 2, datetime(2026, 11, 16, tzinfo=UTC))
    [invoice] = desk.invoicer.run("acme", "2026-11").invoices
    # November has 30 days: 15 on version 1 (30 EUR), 15 on version 2 (60 EUR), both billed in advance.
    assert sorted(lines(invoice)) == [
        ("recurring", "base", Decimal("15.00")),
        ("recurring", "base", Decimal("30.00")),
        ("usage", "tokens", Decimal("0.00")),
    ]
    assert any("prorated" in line.description and "version 2" in line.description for line in invoice.lines)

    desk.usage(tokens(1, NOV + timedelta(days=5), 100), tokens(2, NOV + timedelta(days=20), 100))
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    usage = sorted((line.period_start.day, line.amount) for line in december.lines if line.kind == "usage")
    assert usage == [(1, Decimal("1.00")), (16, Decimal("2.00"))], "usage is billed at each part's price"
    assert december.total == Decimal("63.00")


def test_a_prepaid_commit_burns_down_and_the_rest_is_overage(desk: Desk) -> None:
    desk.plan([[per_unit(unit_price="0.10")]])
    commit = Commit(id="c-2026", amount=Decimal(100), start=OCT, end=datetime(2027, 10, 1, tzinfo=UTC))
    desk.catalog.put_subscription(
        "acme",
        Subscription(
            id="s1", customer="c1", plan="pro", version=1, start=datetime(2026, 9, 1, tzinfo=UTC), commits=[commit]
        ),
    )
    [october] = desk.invoicer.run("acme", "2026-10").invoices
    assert lines(october) == [("usage", "tokens", Decimal("0.00")), ("commit", None, Decimal(100))]
    desk.invoicer.finalize("acme", october.id)

    desk.usage(tokens(1, OCT + timedelta(days=1), 600))  # 60 EUR, all paid by the commit
    [november] = desk.invoicer.run("acme", "2026-11").invoices
    assert november.total == 0 and november.subtotal == Decimal("60.00")
    desk.invoicer.finalize("acme", november.id)

    desk.usage(tokens(2, NOV + timedelta(days=1), 700))  # 70 EUR: 40 left of the commit, 30 overage
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    assert [line.amount for line in december.lines if line.kind == "credit"] == [Decimal(-40)]
    assert december.total == Decimal("30.00")


def test_a_postpaid_commits_shortfall_is_billed_when_its_term_ends(desk: Desk) -> None:
    desk.plan([[per_unit(unit_price="0.10")]])
    commit = Commit(id="min-spend", amount=Decimal(100), start=OCT, end=NOV, kind="postpaid", unused="billed")
    desk.catalog.put_subscription(
        "acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT, commits=[commit])
    )
    desk.usage(tokens(1, OCT + timedelta(days=4), 350))  # 35 EUR spent of the 100 committed
    [november] = desk.invoicer.run("acme", "2026-11").invoices
    assert sorted(lines(november)) == [("shortfall", None, Decimal(65)), ("usage", "tokens", Decimal("35.00"))]
    assert november.total == Decimal(100)


def test_late_usage_after_finalization_is_a_prior_period_adjustment(desk: Desk) -> None:
    desk.plan([[per_unit()]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
    desk.usage(tokens(1, OCT + timedelta(days=2), 500))
    [november] = desk.invoicer.run("acme", "2026-11").invoices
    desk.invoicer.finalize("acme", november.id)
    assert november.total == Decimal("5.00")

    desk.usage(tokens(2, OCT + timedelta(days=30), 250))  # October usage, after October was billed
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    adjustment = [line for line in december.lines if line.kind == "adjustment"]
    assert [(line.amount, line.rated, line.period_start) for line in adjustment] == [
        (Decimal("2.50"), Decimal("7.50"), OCT)
    ]
    assert "prior-period adjustment" in adjustment[0].description
    assert desk.invoicer.store.get("acme", november.id).total == Decimal("5.00"), "finalized stays as it was"


def test_a_correction_after_finalization_is_a_prior_period_adjustment(desk: Desk) -> None:
    desk.plan([[per_unit()]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
    real, doubled = tokens(1, OCT + timedelta(days=2), 500), tokens(2, OCT + timedelta(days=3), 300)
    desk.usage(real, doubled)
    [november] = desk.invoicer.run("acme", "2026-11").invoices
    desk.invoicer.finalize("acme", november.id)
    assert november.total == Decimal("8.00")

    # A bug sent the second event twice under another id, and the first really was 400 tokens.
    fixed = real | {"data": {"tokens": 400, "model": "m"}}
    items = [CancelEvent(source="gw", id=doubled["id"]), AmendEvent(event=fixed)]
    desk.engine.correct("acme", CorrectionRequest(reason="double-sent", items=items), actor="test")
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    adjustment = [line for line in december.lines if line.kind == "adjustment"]
    assert [(line.amount, line.rated, line.billed, line.period_start) for line in adjustment] == [
        (Decimal("-4.00"), Decimal("4.00"), Decimal("8.00"), OCT)
    ]
    assert "prior-period adjustment" in adjustment[0].description
    assert desk.invoicer.store.get("acme", november.id).total == Decimal("8.00"), "finalized stays as it was"


def test_threshold_billing_invoices_early_and_the_cycle_bills_the_rest(desk: Desk) -> None:
    tiers = {
        "id": "tokens",
        "currency": "EUR",
        "model": "graduated",
        "meter": "tokens",
        "tiers": [{"from": "0", "up_to": "1000", "unit_price": "0.02"}, {"from": "1000", "unit_price": "0.01"}],
    }
    desk.plan([[tiers]])
    desk.catalog.put_subscription(
        "acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT, threshold=Decimal(15))
    )
    desk.usage(tokens(1, NOV + timedelta(days=1), 500), now=NOV + timedelta(days=2))
    assert desk.invoicer.thresholds("acme", NOV + timedelta(days=2)).invoices == [], "10 EUR is under the threshold"
    desk.usage(tokens(2, NOV + timedelta(days=3), 500), now=NOV + timedelta(days=4))
    [early] = desk.invoicer.thresholds("acme", NOV + timedelta(days=4)).invoices
    assert early.reason == "threshold" and early.status == "open" and early.total == Decimal("20.00")

    desk.usage(tokens(3, NOV + timedelta(days=10), 1000), now=NOV + timedelta(days=11))
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    # 2000 tokens in November: 1000 x 0.02 + 1000 x 0.01 = 30 EUR, of which 20 were billed early.
    usage = next(line for line in december.lines if line.kind == "usage")
    assert (usage.rated, usage.amount) == (Decimal("30.00"), Decimal("10.00"))


def test_discounts_and_void_and_credit_notes(desk: Desk) -> None:
    desk.plan([[base_fee("50"), per_unit()]])
    discounts = [
        Discount(id="launch", start=OCT, percent=Decimal(10), price="base"),
        Discount(id="goodwill", start=OCT, amount=Decimal(5)),
    ]
    desk.catalog.put_subscription(
        "acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT, discounts=discounts)
    )
    [invoice] = desk.invoicer.run("acme", "2026-11").invoices
    assert [line.amount for line in invoice.lines if line.kind == "discount"] == [Decimal("-5.00"), Decimal(-5)]
    assert invoice.total == Decimal("40.00")
    final, _ = desk.invoicer.finalize("acme", invoice.id)
    note, _ = desk.invoicer.credit("acme", invoice.id, Decimal("15"), "service outage")
    assert note.number == "CN-000001"
    with pytest.raises(Exception, match="at most what is left"):
        desk.invoicer.credit("acme", invoice.id, Decimal("25.01"), "too much")
    desk.invoicer.void("acme", final.id)
    assert desk.invoicer.store.get("acme", final.id).status == "void"
    exported = pq.read_table(desk.invoicer.out / "invoices" / "tenant=acme" / "invoice_lines.parquet").to_pylist()
    assert {row["kind"] for row in exported} >= {"recurring", "discount"}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=12))
def test_splitting_usage_into_events_does_not_change_the_invoice(
    tmp_path_factory: pytest.TempPathFactory, parts: list[int]
) -> None:
    """The same 4000 tokens, in one event or in any number of events at any minutes of October."""
    totals = []
    for split in ([4000], [*parts, 4000 - sum(parts)] if sum(parts) < 4000 else [4000]):
        tmp = tmp_path_factory.mktemp("split")
        with Engine(tmp / "usage", durability="buffered", backdate_window=YEAR, dedup_window=YEAR) as engine:
            catalog, store = BillingCatalog(tmp / "billing"), InvoiceStore(tmp / "invoices")
            engine.create_meter(
                "acme",
                {
                    "slug": "tokens",
                    "event_type": "llm",
                    "aggregation": "sum",
                    "value_property": "$.tokens",
                    "group_by": {"model": "$.model"},
                },
            )
            catalog.put_customer("acme", Customer(id="c1", name="One", currency="EUR"))
            desk = Desk(engine, catalog, Invoicer(engine, catalog, store, tmp / "export"))
            desk.plan(
                [
                    [
                        {
                            "id": "tokens",
                            "currency": "EUR",
                            "model": "volume",
                            "meter": "tokens",
                            "tiers": [
                                {"from": "0", "up_to": "1000", "unit_price": "0.003"},
                                {"from": "1000", "unit_price": "0.0017"},
                            ],
                        }
                    ]
                ]
            )
            catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
            desk.usage(*(tokens(i, OCT + timedelta(minutes=97 * i), n) for i, n in enumerate(split)))
            [invoice] = desk.invoicer.run("acme", "2026-11").invoices
            totals.append(invoice.total)
            assert desk.invoicer.run("acme", "2026-11").invoices == [invoice], "re-running is idempotent"
            catalog.close()
            store.close()
    assert totals[0] == totals[1] == Decimal("6.80")


def test_a_percentage_per_event_bounds_each_events_fee(desk: Desk) -> None:
    desk.engine.create_meter(
        "acme",
        {
            "slug": "payments",
            "event_type": "payment",
            "aggregation": "sum",
            "value_property": "$.amount",
            "filters": [{"property": "$.status", "op": "eq", "value": "ok"}],
        },
    )
    desk.plan(
        [
            [
                {
                    "id": "fees",
                    "currency": "EUR",
                    "model": "percentage",
                    "meter": "payments",
                    "percentage": {"percent": "2.9", "per": "event", "min_fee": "0.30", "max_fee": "5"},
                }
            ]
        ]
    )
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))

    def payment(i: int, amount: str, status: str = "ok") -> dict[str, Any]:
        return event(f"p{i}", "c1", type="payment", time=OCT + timedelta(days=i), amount=amount, status=status)

    desk.usage(
        payment(1, "5"),
        payment(2, "100"),
        payment(3, "1000"),
        payment(4, "100", status="failed"),
        payment(
            5,
            "100",
        ),
    )
    [invoice] = desk.invoicer.run("acme", "2026-11").invoices
    # 5 -> 0.145 raised to 0.30; 100 -> 2.90 twice; 1000 -> 29 cut to 5; the failed payment is not counted.
    [line] = invoice.lines
    assert (line.quantity, line.amount) == (Decimal(1205), Decimal("11.10"))
    assert invoice.total == Decimal("11.10")


def test_an_ended_subscription_gets_its_last_usage_invoice_and_then_none(desk: Desk) -> None:
    desk.plan([[base_fee(), per_unit()]])
    desk.catalog.put_subscription(
        "acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT, end=NOV)
    )
    desk.usage(tokens(1, OCT + timedelta(days=9), 100))
    [last] = desk.invoicer.run("acme", "2026-11").invoices
    assert lines(last) == [("usage", "tokens", Decimal("1.00"))], "no fee in advance for a cycle it does not cover"
    assert desk.invoicer.run("acme", "2026-12").invoices == []


def test_credits_pay_only_what_the_discounts_left(desk: Desk) -> None:
    desk.plan([[per_unit()]])
    discounts = [
        Discount(id="a", start=OCT, percent=Decimal(10), price="tokens"),
        Discount(id="b", start=OCT, percent=Decimal(20), price="tokens"),
    ]
    credit = Credit(id="welcome", amount=Decimal("7.50"), start=OCT, end=DEC)
    desk.catalog.put_subscription(
        "acme",
        Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT, discounts=discounts, credits=[credit]),
    )
    desk.usage(tokens(1, OCT + timedelta(days=1), 1000))  # 10.00, minus 1.00 and 2.00 of discounts
    [invoice] = desk.invoicer.run("acme", "2026-11").invoices
    assert [line.amount for line in invoice.lines if line.kind == "credit"] == [Decimal("-7.00")]
    assert invoice.total == 0
