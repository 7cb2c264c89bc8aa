"""Recognized, deferred and unbilled revenue reconcile to what was invoiced and consumed, for any invoice history.

Hypothesis draws six months of a subscription (a monthly or an annual fee billed in advance, tokens at 0.01 used each
month), voids and credit notes on some invoices, and closes on any days, before or after the invoicing of the month
(or none but the last). After the last close, through 30 June, a plain-Decimal reference says what each account
holds:

- revenue = the fees earned (a monthly fee: each month's in full; an annual one: January to June of its schedule)
  + the usage earned - the credit notes. A month's usage earned is what its tokens rate at (x 0.01), unless the
  invoice of the next month billed it (settled it): then what invoices billed for it, late tokens included once an
  invoice bills them (tokens sent after the month was invoiced are billed by the invoice after, as an adjustment);
- deferred revenue = the fees billed - the fees earned;
- unbilled revenue = the usage earned - the usage invoiced;

each to the cent, whichever days the closes before it fell on (the result does not depend on the path), with every
intermediate close balanced and its rows adding up to the revenue account.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
from conftest import YEAR, Desk, body, event
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from meter import Engine
from meter.billing.invoicer import Invoicer
from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog, Customer, Subscription
from meter.catalog.prices import Price
from meter.money.revenue.recognize import read_rows
from meter.money.revenue.schedule import earned_through, monthly

D = Decimal
MONTHS = 6  # January to June 2026


@contextmanager
def desk_in(path: Path) -> Iterator[Desk]:
    with Engine(path / "usage", durability="buffered", backdate_window=YEAR, dedup_window=YEAR) as engine:
        catalog, store = BillingCatalog(path / "billing"), InvoiceStore(path / "invoices")
        meter = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
        engine.create_meter("acme", meter)
        catalog.put_customer("acme", Customer(id="c1", name="One", currency="EUR"))
        try:
            yield Desk(engine, catalog, Invoicer(engine, catalog, store, path / "export"))
        finally:
            catalog.close()
            store.close()


def month_start(m: int) -> datetime:
    return datetime(2026, m, 1, tzinfo=UTC)


def balances(desk: Desk) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for b in desk.invoicer.store.totals("acme"):
        out[b.account] = out.get(b.account, D(0)) + b.balance
    return out


def check_close(desk: Desk) -> None:
    totals = balances(desk)
    debits = sum((b.debit for b in desk.invoicer.store.totals("acme")), D(0))
    credits = sum((b.credit for b in desk.invoicer.store.totals("acme")), D(0))
    assert debits == credits, "every close leaves the ledger balanced"
    rows = read_rows(desk.invoicer.store, "acme").to_pylist()
    assert sum((r["amount"] for r in rows), D(0)) == totals.get("revenue", D(0)), "the rows are the revenue account"


#: An annual fee, nothing voided or credited, one close at the end: the schedule's straddling path, always tried.
ANNUAL_UNTOUCHED = {
    "annual": True,
    "fee": D("1200.00"),
    "tokens": [1000] * MONTHS,
    "late": [0] * MONTHS,
    "days": [1] * MONTHS,
    "void": set(),
    "credit": set(),
    "close": ["none"] * MONTHS,
    "mid": set(),
}
history = st.fixed_dictionaries(
    {
        "annual": st.booleans(),
        "fee": st.decimals(min_value=D("0.01"), max_value=D("999.99"), places=2),
        "tokens": st.lists(st.integers(0, 50_000), min_size=MONTHS, max_size=MONTHS),
        # Tokens of each month sent late: after the month's usage was invoiced (the 3rd of the next month).
        "late": st.lists(st.integers(0, 5_000), min_size=MONTHS, max_size=MONTHS),
        "days": st.lists(st.integers(1, 28), min_size=MONTHS, max_size=MONTHS),
        "void": st.sets(st.integers(1, MONTHS), max_size=2),
        "credit": st.sets(st.integers(1, MONTHS), max_size=3),
        # Per month: close through the last month's end before its invoicing, after it, or not; and mid-month.
        "close": st.lists(st.sampled_from(["before", "after", "none"]), min_size=MONTHS, max_size=MONTHS),
        "mid": st.sets(st.integers(1, MONTHS)),
    }
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=history)
@example(h=ANNUAL_UNTOUCHED)
def test_recognized_deferred_and_unbilled_reconcile_to_what_was_invoiced_and_consumed(h: dict) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp, desk_in(Path(tmp)) as desk:
        cycle = "annual" if h["annual"] else "monthly"
        fee = {"id": "base", "currency": "EUR", "model": "flat", "amount": str(h["fee"]), "cadence": "in_advance"}
        tokens = {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.01"}
        desk.catalog.create_plan("acme", "pro", "Pro")
        prices = [msgspec.convert(p, Price) for p in (fee, tokens)]
        desk.catalog.add_plan_version("acme", "pro", datetime(2025, 1, 1, tzinfo=UTC), prices)
        sub = Subscription(id="s1", customer="c1", plan="pro", version=1, start=month_start(1), cycle=cycle)
        desk.catalog.put_subscription("acme", sub)

        def close(through: date, now: datetime) -> None:
            desk.invoicer.recognize("acme", through, now=now)
            check_close(desk)

        fees_billed = usage_invoiced = notes = D(0)
        fee_lines = []
        billed_usage: dict[int, Decimal] = dict.fromkeys(range(1, MONTHS + 1), D(0))
        settled: set[int] = set()
        for m in range(1, MONTHS + 1):
            start = month_start(m)
            if h["close"][m - 1] == "before" and m > 1:
                close((start - timedelta(days=1)).date(), start)
            drafts = desk.invoicer.run("acme", f"2026-{m:02d}").invoices
            for draft in drafts:
                final = desk.invoicer.store.finalize("acme", draft.id, now=start + timedelta(hours=1))
                voided = m in h["void"]
                if voided:
                    desk.invoicer.store.void("acme", final.id, now=start + timedelta(hours=2))
                elif m in h["credit"] and final.total > 0:
                    note = (final.total / 3).quantize(D("0.01"))
                    if note > 0:
                        desk.invoicer.store.credit("acme", final.id, note, "goodwill", now=start + timedelta(days=2))
                        notes += note
                for line in final.lines:
                    if voided:
                        continue
                    if line.kind == "usage" or line.kind == "adjustment" and line.meter is not None:
                        usage_invoiced += line.amount
                        billed_usage[line.period_start.month] += line.amount
                        if final.reason == "cycle" and final.usage_start == line.period_start:
                            settled.add(line.period_start.month)
                    elif line.kind == "recurring":
                        fees_billed += line.amount
                        fee_lines.append(line)
            if h["close"][m - 1] == "after" and m > 1:
                close((start - timedelta(days=1)).date(), start + timedelta(hours=3))
            used = start + timedelta(days=h["days"][m - 1] - 1, hours=5)
            if h["tokens"][m - 1]:
                ingest = event(f"e{m}", "c1", time=used, tokens=h["tokens"][m - 1])
                assert not desk.engine.ingest("acme", body(ingest), now=used + timedelta(hours=1)).issues
            if m > 1 and h["late"][m - 2]:  # last month's, after its invoice
                late = event(f"late{m}", "c1", time=start - timedelta(days=3), tokens=h["late"][m - 2])
                assert not desk.engine.ingest("acme", body(late), now=start + timedelta(days=2)).issues
            if m in h["mid"]:
                mid = start + timedelta(days=14)
                close((mid - timedelta(days=1)).date(), mid)
        close(date(2026, 6, 30), datetime(2026, 7, 5, tzinfo=UTC))

        end = month_start(7)
        fees_earned = sum(
            (earned_through(monthly(line.amount, line.period_start, line.period_end, "UTC", "EUR"), end, "UTC", "EUR")
             for line in fee_lines),
            D(0),
        )  # fmt: skip
        # Whole tokens x 0.01: already at the cent. June's late tokens come after the last close.
        sent = [D(t + late) * D("0.01") for t, late in zip(h["tokens"], [*h["late"][:-1], 0], strict=True)]
        consumed = sum((billed_usage[m] if m in settled else sent[m - 1] for m in range(1, MONTHS + 1)), D(0))
        totals = balances(desk)
        assert totals.get("revenue", D(0)) == fees_earned + consumed - notes
        assert totals.get("deferred_revenue", D(0)) == fees_billed - fees_earned
        assert totals.get("unbilled_revenue", D(0)) == consumed - usage_invoiced
        recognized = totals.get("revenue", D(0)) + notes
        assert recognized + totals.get("deferred_revenue", D(0)) - totals.get("unbilled_revenue", D(0)) == (
            fees_billed + usage_invoiced
        ), "recognized + deferred - unbilled = what was invoiced"
