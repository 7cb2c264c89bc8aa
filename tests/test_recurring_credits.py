"""Recurring credits with rollover: a grant renewed every billing cycle, drawn per cycle, computed by hand.

The rule (:func:`meter.billing.terms.credit_lines`) is the one both the invoice and the live balance use: each cycle
grants the credit's amount plus what the cycle before left, at most ``rollover_max``; a cycle's usage draws on its own
cycle's grant, keyed by the cycle, so a re-run never draws twice and the rollover follows from finalized invoices.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from conftest import OCT, Desk, event
from meter.billing.billed import Billed
from meter.billing.invoices import InvoiceLine
from meter.billing.keys import ChargeKey, GrantKey, parse_grant_key
from meter.billing.terms import credit_lines, recurring_left
from meter.catalog.billing import Credit, Subscription
from meter.exceptions import InvalidInput

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
JAN = datetime(2027, 1, 1, tzinfo=UTC)
FEB = datetime(2027, 2, 1, tzinfo=UTC)
YEARS = datetime(2030, 1, 1, tzinfo=UTC)


def per_unit() -> dict[str, Any]:
    return {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "1"}


def monthly(amount: str = "100", rollover_max: str | None = "50", start: datetime = OCT) -> Credit:
    return Credit(
        id="monthly",
        amount=Decimal(amount),
        start=start,
        end=YEARS,
        recurring="cycle",
        rollover_max=None if rollover_max is None else Decimal(rollover_max),
    )


def sub(*credits: Credit) -> Subscription:
    return Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT, credits=list(credits))


def usage_line(cycle: datetime, end: datetime, amount: str) -> InvoiceLine:
    key = ChargeKey("s1", "tokens", 1, cycle, end)
    return InvoiceLine(
        kind="usage",
        description="tokens",
        amount=Decimal(amount),
        period_start=cycle,
        period_end=end,
        key=key.text(),
        price="tokens",
        meter="tokens",
    )


def drawn(lines: list[InvoiceLine]) -> list[tuple[str | None, Decimal]]:
    return [(line.grant, line.amount) for line in lines]


def test_the_worked_example_cycle_by_cycle() -> None:
    """100 a cycle, rollover max 50: cycle 1 uses 30 -> cycle 2 has 150, uses 160 (10 billed) -> cycle 3 has 100."""
    s, billed = sub(monthly()), Billed()
    oct_key, nov_key, dec_key = (GrantKey("s1", "monthly", c).text() for c in (OCT, NOV, DEC))
    assert recurring_left(s, s.credits[0], billed, "UTC", OCT + timedelta(days=3)) == (Decimal(100), Decimal(100))

    assert drawn(credit_lines(s, [usage_line(OCT, NOV, "30")], billed, "UTC")) == [(oct_key, Decimal(-30))]
    billed.drawn[parse_grant_key(oct_key)] += 30  # the November invoice finalized
    # 70 left of October's 100: 50 of it rolls over.
    assert recurring_left(s, s.credits[0], billed, "UTC", NOV) == (Decimal(150), Decimal(150))

    assert drawn(credit_lines(s, [usage_line(NOV, DEC, "160")], billed, "UTC")) == [(nov_key, Decimal(-150))]
    billed.drawn[parse_grant_key(nov_key)] += 150  # the December invoice finalized: 10 billed
    assert recurring_left(s, s.credits[0], billed, "UTC", DEC) == (Decimal(100), Decimal(100))
    assert drawn(credit_lines(s, [usage_line(DEC, JAN, "120")], billed, "UTC")) == [(dec_key, Decimal(-100))]


def test_a_rerun_never_draws_twice_and_a_threshold_draw_counts() -> None:
    s, billed = sub(monthly()), Billed()
    # A threshold invoice in November drew 40 of November's 100 (no rollover: October left nothing it could use...
    billed.drawn[GrantKey("s1", "monthly", OCT)] += 100  # ...October used all of its grant).
    billed.drawn[GrantKey("s1", "monthly", NOV)] += 40
    # The cycle invoice for November's 90 (already 40 billed): only 60 is left of the grant, and 50 is due here.
    assert drawn(credit_lines(s, [usage_line(NOV, DEC, "50")], billed, "UTC")) == [
        (GrantKey("s1", "monthly", NOV).text(), Decimal(-50))
    ]
    billed.drawn[GrantKey("s1", "monthly", NOV)] += 60
    assert credit_lines(s, [usage_line(NOV, DEC, "50")], billed, "UTC") == [], "nothing left of November's grant"


def test_lines_of_several_cycles_draw_in_order_and_roll_over_within_one_invoice() -> None:
    s = sub(monthly("100", "50"))
    # A late October adjustment (10) and November's usage (170) on one invoice, nothing finalized before.
    lines = [usage_line(NOV, DEC, "170"), usage_line(OCT, NOV, "10")]
    assert drawn(credit_lines(s, lines, Billed(), "UTC")) == [
        (GrantKey("s1", "monthly", OCT).text(), Decimal(-10)),
        (GrantKey("s1", "monthly", NOV).text(), Decimal(-150)),
    ]


def test_without_rollover_max_nothing_rolls_over_and_idle_cycles_accumulate_up_to_it() -> None:
    s = sub(monthly("100", None))
    assert recurring_left(s, s.credits[0], Billed(), "UTC", DEC) == (Decimal(100), Decimal(100))
    s = sub(monthly("100", "250"))
    # Nothing used: October leaves 100, November 200, December has 300, January 100 + 250.
    assert recurring_left(s, s.credits[0], Billed(), "UTC", DEC) == (Decimal(300), Decimal(300))
    assert recurring_left(s, s.credits[0], Billed(), "UTC", JAN) == (Decimal(350), Decimal(350))


def test_a_one_off_credit_keeps_its_key() -> None:
    once = Credit(id="welcome", amount=Decimal(20), start=OCT, end=YEARS)
    assert drawn(credit_lines(sub(once), [usage_line(OCT, NOV, "30")], Billed(), "UTC")) == [
        ("s1|welcome", Decimal(-20))
    ]


def test_grant_keys_with_a_cycle_round_trip() -> None:
    key = GrantKey("s1", "monthly", NOV)
    assert key.text() == "s1|monthly|2026-11-01T00:00:00+00:00" and parse_grant_key(key.text()) == key
    assert parse_grant_key("s1|monthly") == GrantKey("s1", "monthly")
    for bad in ("s1|monthly|tomorrow", "s1|m|2026-11-01", "a|b|c|d"):
        with pytest.raises(InvalidInput):
            parse_grant_key(bad)


def tokens(i: int, at: datetime, amount: int) -> dict[str, Any]:
    return event(f"e{i}-{at:%Y%m%d%H%M}", "c1", time=at, tokens=amount, model="m")


def test_the_worked_example_through_invoices(desk: Desk) -> None:
    desk.plan([[per_unit()]])
    desk.catalog.put_subscription("acme", sub(monthly()))
    desk.usage(tokens(1, OCT + timedelta(days=2), 30))
    [november] = desk.invoicer.run("acme", "2026-11").invoices
    assert [line.amount for line in november.lines if line.kind == "credit"] == [Decimal(-30)]
    assert november.total == 0
    desk.invoicer.finalize("acme", november.id)

    desk.usage(tokens(2, NOV + timedelta(days=2), 160), now=NOV + timedelta(days=3))
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    credit = [line for line in december.lines if line.kind == "credit"]
    assert [line.amount for line in credit] == [Decimal(-150)] and december.total == Decimal(10)
    assert "150 left of 150 granted" in credit[0].description
    assert desk.invoicer.run("acme", "2026-12").invoices[0].total == Decimal(10), "a re-run draws the same"
    desk.invoicer.finalize("acme", december.id)
    assert desk.invoicer.run("acme", "2026-12").invoices == []

    desk.usage(tokens(3, DEC + timedelta(days=2), 120), now=DEC + timedelta(days=3))
    [january] = desk.invoicer.run("acme", "2027-01").invoices
    assert [line.amount for line in january.lines if line.kind == "credit"] == [Decimal(-100)]
    assert january.total == Decimal(20)
    # The live balance reads the same rule: December's grant is 100, nothing rolled over from November.
    billed = Billed.of(desk.invoicer.store, "acme")
    stored = desk.catalog.get_subscription("acme", "s1")
    assert recurring_left(stored, stored.credits[0], billed, "UTC", DEC + timedelta(days=5)) == (
        Decimal(100),
        Decimal(100),
    )
