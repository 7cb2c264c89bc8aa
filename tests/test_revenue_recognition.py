"""Revenue recognition, worked by hand: each rule of issue 16 on a small history, through the month-end close.

The desk (tests/conftest.py) is tenant ``acme``, customer ``c1`` paying in EUR, a ``tokens`` meter; invoices are
finalized at chosen times (``finalize``), and each close says when it runs (``now``), so that every figure below is
fixed. The reporting zone is UTC unless a test sets another.

Worked examples (the arithmetic is in each test):

- an annual fee of 1,200.00 billed in advance on 1 January 2026 earns 31/365 of it in January (101.92), 28/365 in
  February (92.05)... and December takes what the others leave (101.91): the months add up to exactly 1,200.00;
- 1,000 tokens at 0.01 used in November are November's 10.00, before or after the invoice that bills them;
- a prepaid commit of 100.00 drawn by 30.00 and 20.00 of usage leaves 50.00 of breakage when it expires;
- a credit note of 12.00 on November's 30.00 fee takes 12.00 off November;
- a void in April reverses the 295.89 the annual fee earned in January to March, in April;
- a plan change on 16 November (30.00 -> 60.00 a month) earns 15.00 for the first half on version 1 and 30.00 for
  the second on version 2, each over its own days.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from conftest import Desk, event
from meter.billing.invoices import Invoice
from meter.catalog.billing import Commit, Discount, Subscription
from meter.catalog.prices import Price
from meter.catalog.revenue import RevenueSettings
from meter.exceptions import InvalidInput
from meter.lake import layout
from meter.money.revenue import recognize, reports
from meter.money.revenue.job import DailyClose
from meter.money.revenue.recognize import ROW_SCHEMA, Close, read_rows

D = Decimal


def at(day: str, hour: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def fee(amount: str) -> dict[str, Any]:
    return {"id": "base", "currency": "EUR", "model": "flat", "amount": amount, "cadence": "in_advance"}


def tokens_price() -> dict[str, Any]:
    return {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.01"}


def plan(desk: Desk, *versions: list[dict[str, Any]]) -> None:
    desk.catalog.create_plan("acme", "pro", "Pro")
    for n, prices in enumerate(versions):
        effective = datetime(2025, 1, 1 + n, tzinfo=UTC)
        desk.catalog.add_plan_version("acme", "pro", effective, [msgspec.convert(p, Price) for p in prices])


def subscribe(desk: Desk, start: str, **terms: Any) -> None:
    sub = Subscription(id="s1", customer="c1", plan="pro", version=1, start=at(start), **terms)
    desk.catalog.put_subscription("acme", sub)


def finalize(desk: Desk, month: str, when: datetime) -> list[Invoice]:
    """The invoices of the cycles starting in ``month``, finalized at ``when``."""
    drafts = desk.invoicer.run("acme", month).invoices
    return [desk.invoicer.store.finalize("acme", d.id, now=when) for d in drafts]


def close(desk: Desk, through: str, now: datetime) -> Close:
    return desk.invoicer.recognize("acme", date.fromisoformat(through), now=now)


def tokens(n: int, when: datetime) -> dict[str, Any]:
    return event(f"e-{when:%Y%m%d%H}-{n}", "c1", time=when, tokens=n, model="m")


def balances(desk: Desk) -> dict[str, Decimal]:
    """Each account's balance, on its normal side, summed over customers (zero balances left out)."""
    out: dict[str, Decimal] = {}
    for b in desk.invoicer.store.totals("acme"):
        out[b.account] = out.get(b.account, D(0)) + b.balance
    return {account: balance for account, balance in out.items() if balance}


def by_month(desk: Desk, by: str | None = None) -> dict[tuple[str, ...], Decimal]:
    rows = reports.waterfall(desk.invoicer.store, "acme", by=by).rows
    return {(r.month, *([r.group or ""] if by else [])): r.amount for r in rows}


def test_an_annual_fee_billed_in_advance_is_earned_by_day_and_its_months_add_up_exactly(desk: Desk) -> None:
    plan(desk, [fee("1200.00")])
    subscribe(desk, "2026-01-01", cycle="annual")
    finalize(desk, "2026-01", at("2026-01-01", 1))
    assert balances(desk) == {"accounts_receivable": D("1200.00"), "deferred_revenue": D("1200.00")}

    done = close(desk, "2026-11-30", now=at("2026-12-03"))
    # 1200 x days/365, rounded half to even: 31 days -> 101.917... -> 101.92; 28 -> 92.054... -> 92.05;
    # 30 -> 98.630... -> 98.63. A step per month end, one entry each.
    expected = {
        "2026-01": "101.92", "2026-02": "92.05", "2026-03": "101.92", "2026-04": "98.63", "2026-05": "101.92",
        "2026-06": "98.63", "2026-07": "101.92", "2026-08": "101.92", "2026-09": "98.63", "2026-10": "101.92",
        "2026-11": "98.63",
    }  # fmt: skip
    assert {(m,): D(v) for m, v in expected.items()} == by_month(desk)
    assert [s.through.isoformat() for s in done.steps][:2] == ["2026-01-31", "2026-02-28"] and len(done.steps) == 11
    assert done.steps[0].entries == ["revenue_recognized:2026-01-31/EUR"]
    # Through November: 6 x 101.92 + 92.05 + 4 x 98.63 = 1098.09 earned, 101.91 still deferred.
    assert balances(desk)["revenue"] == D("1098.09") and balances(desk)["deferred_revenue"] == D("101.91")

    again = close(desk, "2026-11-30", now=at("2026-12-04"))
    assert again.steps == [] and balances(desk)["revenue"] == D("1098.09"), "a second close posts nothing"

    close(desk, "2026-12-31", now=at("2027-01-02"))
    assert by_month(desk)[("2026-12",)] == D("101.91"), "December takes the remainder: the months sum to 1200.00"
    assert balances(desk) == {"accounts_receivable": D("1200.00"), "revenue": D("1200.00")}
    months = reports.deferred_rollforward(desk.invoicer.store, "acme", "UTC")
    assert [(m.month, m.opening, m.additions, m.recognized, m.closing) for m in months][0] == (
        "2026-01",
        D("0.00"),
        D("1200.00"),
        D("101.92"),
        D("1098.08"),
    )
    assert months[-1].month == "2026-12" and months[-1].closing == D("0.00")
    for m in months:  # the roll-forward's identity, month by month
        assert m.opening + m.additions - m.drawn - m.recognized - m.breakage - m.reversed == m.closing


def test_a_fee_is_earned_by_the_days_of_the_reporting_time_zone(desk: Desk) -> None:
    plan(desk, [fee("31.00")])
    subscribe(desk, "2026-11-01")
    desk.catalog.put_revenue_settings("acme", RevenueSettings(timezone="Europe/Paris"))
    finalize(desk, "2026-11", at("2026-11-01", 1))
    close(desk, "2026-11-30", now=at("2026-12-03"))
    # [1 Nov 00:00Z, 1 Dec 00:00Z) is [1 Nov 01:00, 1 Dec 01:00) in Paris: 30 days, of which November holds 30 - 1/24.
    # 31.00 x (30 - 1/24) / 30 = 31 x 719/720 = 30.9569... -> 30.96; December takes the other 0.04.
    assert by_month(desk) == {("2026-11",): D("30.96")}
    close(desk, "2026-12-31", now=at("2027-01-02"))
    assert by_month(desk) == {("2026-11",): D("30.96"), ("2026-12",): D("0.04")}


@pytest.mark.parametrize("invoiced_first", [False, True], ids=["closed-before-invoicing", "invoiced-first"])
def test_usage_is_earned_in_the_month_it_was_consumed_and_unbilled_until_invoiced(
    desk: Desk, invoiced_first: bool
) -> None:
    plan(desk, [tokens_price()])
    subscribe(desk, "2026-10-01")
    desk.usage(tokens(1000, at("2026-11-10")))  # 1,000 tokens x 0.01 = 10.00 of November
    if invoiced_first:
        finalize(desk, "2026-12", at("2026-12-01", 1))
    close(desk, "2026-11-30", now=at("2026-12-03"))
    assert by_month(desk, "kind") == {("2026-11", "usage"): D("10.00")}
    [row] = reports.waterfall(desk.invoicer.store, "acme", by="meter").rows
    assert (row.group, row.quantity, row.amount) == ("tokens", D(1000), D("10.00")), "usage and revenue by meter"
    unbilled = reports.unbilled(desk.invoicer.store, "acme", "UTC", date(2026, 11, 30))
    if invoiced_first:  # the invoice of 1 December is after November's end: at 30 November it was unbilled
        assert unbilled.totals == {"EUR": D("10.00")}
        assert balances(desk) == {"accounts_receivable": D("10.00"), "revenue": D("10.00")}
    else:
        assert unbilled.totals == {"EUR": D("10.00")}
        assert [(c.customer, c.recognized, c.invoiced, c.unbilled) for c in unbilled.customers] == [
            ("c1", D("10.00"), D("0.00"), D("10.00"))
        ]
        assert balances(desk) == {"unbilled_revenue": D("10.00"), "revenue": D("10.00")}
        finalize(desk, "2026-12", at("2026-12-04"))  # the invoice moves it from unbilled revenue to the receivable
        assert balances(desk) == {"accounts_receivable": D("10.00"), "revenue": D("10.00")}
    december = close(desk, "2026-12-31", now=at("2027-01-03"))
    assert [s.entries for s in december.steps] == [[]], "November's usage is not earned twice"
    assert reports.unbilled(desk.invoicer.store, "acme", "UTC", date(2026, 12, 31)).totals == {"EUR": D("0.00")}


def test_a_prepaid_commit_is_recognized_as_usage_draws_it_down_and_the_rest_is_breakage_at_expiry(desk: Desk) -> None:
    plan(desk, [tokens_price()])
    commit = Commit(id="k1", amount=D("100.00"), start=at("2026-10-01"), end=at("2026-12-01"))
    subscribe(desk, "2026-10-01", commits=[commit])
    finalize(desk, "2026-10", at("2026-10-01", 1))  # the commit bought: 100.00 deferred
    desk.usage(tokens(3000, at("2026-10-10")))
    finalize(desk, "2026-11", at("2026-11-01", 1))  # October's 30.00 of usage, drawn from the commit
    desk.usage(tokens(2000, at("2026-11-10")))
    finalize(desk, "2026-12", at("2026-12-01", 1))  # November's 20.00, drawn too
    close(desk, "2026-11-30", now=at("2026-12-03"))
    # Usage earned 30.00 in October and 20.00 in November; the commit expired at the end of November with
    # 100.00 - 30.00 - 20.00 = 50.00 unused: breakage, in November.
    assert by_month(desk, "kind") == {
        ("2026-10", "usage"): D("30.00"),
        ("2026-11", "usage"): D("20.00"),
        ("2026-11", "breakage"): D("50.00"),
    }
    assert balances(desk) == {"accounts_receivable": D("100.00"), "revenue": D("100.00")}
    months = {m.month: m for m in reports.deferred_rollforward(desk.invoicer.store, "acme", "UTC")}
    assert (months["2026-10"].additions, months["2026-10"].closing) == (D("100.00"), D("100.00"))
    assert (months["2026-11"].drawn, months["2026-11"].breakage, months["2026-11"].closing) == (
        D("30.00"),
        D("50.00"),
        D("20.00"),
    )
    assert (months["2026-12"].drawn, months["2026-12"].closing) == (D("20.00"), D("0.00"))


def test_records_read_by_chunks_close_the_same(desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    """The close reads invoices' records by chunks, each parsed while the next is read: one record a chunk here."""
    monkeypatch.setattr(recognize, "_CHUNK", 1)
    test_a_prepaid_commit_is_recognized_as_usage_draws_it_down_and_the_rest_is_breakage_at_expiry(desk)


def test_refundable_credit_is_not_broken_at_expiry(desk: Desk) -> None:
    desk.catalog.put_revenue_settings("acme", RevenueSettings(breakage="none"))
    plan(desk, [tokens_price()])
    commit = Commit(id="k1", amount=D("100.00"), start=at("2026-10-01"), end=at("2026-11-01"))
    subscribe(desk, "2026-10-01", commits=[commit])
    finalize(desk, "2026-10", at("2026-10-01", 1))
    desk.usage(tokens(3000, at("2026-10-10")))
    finalize(desk, "2026-11", at("2026-11-01", 1))
    close(desk, "2026-11-30", now=at("2026-12-03"))
    assert by_month(desk, "kind") == {("2026-10", "usage"): D("30.00")}
    assert balances(desk)["deferred_revenue"] == D("70.00"), "owed back until refunded or credited"


def test_a_credit_note_reduces_revenue_in_the_month_it_is_issued(desk: Desk) -> None:
    plan(desk, [fee("30.00")])
    subscribe(desk, "2026-11-01")
    [invoice] = finalize(desk, "2026-11", at("2026-11-01", 1))
    desk.invoicer.store.credit("acme", invoice.id, D("12.00"), "outage", now=at("2026-11-20"))
    close(desk, "2026-11-30", now=at("2026-12-03"))
    assert by_month(desk, "kind") == {("2026-11", "fee"): D("30.00"), ("2026-11", "credit_note"): D("-12.00")}
    assert by_month(desk) == {("2026-11",): D("18.00")}
    assert balances(desk)["revenue"] == D("18.00"), "the waterfall is the revenue account, month by month"


def test_a_void_reverses_what_the_invoice_earned_in_the_month_it_is_voided(desk: Desk) -> None:
    plan(desk, [fee("1200.00")])
    subscribe(desk, "2026-01-01", cycle="annual")
    [invoice] = finalize(desk, "2026-01", at("2026-01-01", 1))
    close(desk, "2026-03-31", now=at("2026-04-02"))
    assert balances(desk)["revenue"] == D("295.89")  # 101.92 + 92.05 + 101.92
    desk.invoicer.store.void("acme", invoice.id, now=at("2026-04-10"))
    close(desk, "2026-04-30", now=at("2026-05-02"))
    assert by_month(desk)[("2026-04",)] == D("-295.89")
    assert balances(desk) == {}, "everything the invoice posted, and earned, is reversed"


def test_a_plan_change_in_the_middle_of_a_cycle_earns_each_part_over_its_own_days(desk: Desk) -> None:
    plan(desk, [fee("30.00")], [fee("60.00")])
    subscribe(desk, "2026-11-01")
    finalize(desk, "2026-11", at("2026-11-01", 1))  # 30.00 for November on version 1
    desk.catalog.migrate_subscription("acme", "s1", 2, at("2026-11-16"))
    [december] = finalize(desk, "2026-12", at("2026-12-01", 1))
    # December's invoice corrects November: version 1 now bills 15 days (-15.00), version 2 the other 15 (+30.00).
    adjustments = sorted((line.amount, line.period_start.day) for line in december.lines if line.kind == "adjustment")
    assert adjustments == [(D("-15.00"), 1), (D("30.00"), 16)]
    close(desk, "2026-11-20", now=at("2026-12-03"))
    # Through 20 November: version 1's 15.00 over 1-15 November, all of it; version 2's 30.00 over 16-30
    # November, 5 days of 15: 10.00.
    assert by_month(desk, "price") == {("2026-11", "base"): D("25.00")}
    close(desk, "2026-11-30", now=at("2026-12-03"))
    assert by_month(desk, "price") == {("2026-11", "base"): D("45.00")}


def test_a_discount_reduces_the_fee_it_applies_to_over_the_same_days(desk: Desk) -> None:
    plan(desk, [fee("30.00")])
    subscribe(desk, "2026-11-01", discounts=[Discount(id="d", start=at("2026-11-01"), percent=D("10"))])
    finalize(desk, "2026-11", at("2026-11-01", 1))  # 30.00 and a 10 % discount of -3.00 over November
    close(desk, "2026-11-15", now=at("2026-11-20"))
    # Half of November (15 of 30 days): 15.00 - 1.50.
    assert by_month(desk, "kind") == {("2026-11", "fee"): D("13.50")}


def test_a_close_must_be_through_a_day_that_has_ended(desk: Desk) -> None:
    with pytest.raises(InvalidInput) as refused:
        close(desk, "2026-12-03", now=at("2026-12-03", 12))
    assert refused.value.code == "invalid_through" and "before 2026-12-03" in str(refused.value)


def test_late_usage_billed_after_its_month_was_closed_is_earned_when_it_is_billed(desk: Desk) -> None:
    plan(desk, [tokens_price()])
    subscribe(desk, "2026-10-01")
    desk.usage(tokens(1000, at("2026-10-10")))
    finalize(desk, "2026-11", at("2026-11-01", 1))
    close(desk, "2026-10-31", now=at("2026-11-02"))
    desk.usage(tokens(500, at("2026-10-20")), now=at("2026-11-10"))  # October's, sent late
    finalize(desk, "2026-12", at("2026-12-01", 1))  # its adjustment: +5.00 on December's invoice
    close(desk, "2026-11-30", now=at("2026-12-03"))
    # October is closed: the 5.00 is earned in November, when it is billed (a change of estimate, not a restatement).
    assert by_month(desk, "kind") == {("2026-10", "usage"): D("10.00"), ("2026-11", "usage"): D("5.00")}
    assert balances(desk) == {"accounts_receivable": D("15.00"), "revenue": D("15.00")}


def test_the_rows_add_up_to_the_revenue_account_month_by_month(desk: Desk) -> None:
    plan(desk, [fee("30.00"), tokens_price()])
    subscribe(desk, "2026-09-01")
    for month, day in (("2026-09", "2026-09-01"), ("2026-10", "2026-10-01"), ("2026-11", "2026-11-01")):
        finalize(desk, month, at(day, 1))
        desk.usage(tokens(700, at(day) + timedelta(days=3)))
    close(desk, "2026-11-30", now=at("2026-12-03"))
    table = read_rows(desk.invoicer.store, "acme").to_pylist()
    assert sum(r["amount"] for r in table) == balances(desk)["revenue"] == D("111.00")  # 3 x (30.00 + 7.00)


def test_the_closes_rows_are_in_the_parquet_export_for_warehouses(desk: Desk) -> None:
    plan(desk, [fee("30.00")])
    subscribe(desk, "2026-11-01")
    finalize(desk, "2026-11", at("2026-11-01", 1))
    assert desk.invoicer.export(["acme"])["revenue"].files == 0, "no close, no file"
    close(desk, "2026-11-30", now=at("2026-12-03"))
    summary = desk.invoicer.export(["acme"])["revenue"]
    table = pq.read_table(layout.revenue_file(desk.invoicer.out, "acme"))
    assert (summary.files, summary.rows) == (1, 1) and table.schema.remove_metadata() == ROW_SCHEMA
    assert table.to_pylist()[0] | {"through": None} == {
        **table.to_pylist()[0],
        "month": "2026-11",
        "kind": "fee",
        "amount": D("30.000000000"),
        "customer": "c1",
        "plan": "pro",
        "through": None,
    }
    assert desk.invoicer.export(["acme"])["revenue"].unchanged == 1, "rewritten only after a new close"


def test_the_scheduled_close_closes_every_tenant_through_yesterday_once(desk: Desk) -> None:
    plan(desk, [fee("30.00")])
    subscribe(desk, "2026-11-01")
    finalize(desk, "2026-11", at("2026-11-01", 1))
    job = DailyClose(desk.invoicer, lambda: ["acme"])
    done = job.run_once(now=at("2026-11-16", 9))
    assert done["acme"].through == date(2026, 11, 15) and balances(desk)["revenue"] == D("15.00")
    assert job.run_once(now=at("2026-11-16", 10)) == {}, "yesterday is closed: nothing to do until tomorrow"
    job.run_once(now=at("2026-12-01", 0))
    assert balances(desk)["revenue"] == D("30.00")


def test_a_cycle_not_aligned_with_months_earns_each_month_its_own_usage_whenever_the_close_runs(desk: Desk) -> None:
    plan(desk, [tokens_price()])
    subscribe(desk, "2026-10-15", anchor="anniversary")  # cycles from the 15th to the 15th
    desk.usage(tokens(1000, at("2026-10-20")), tokens(300, at("2026-11-05")))
    desk.usage(tokens(200, at("2026-11-20")))
    finalize(desk, "2026-11", at("2026-11-15", 1))  # bills 15 October - 15 November: 13.00
    finalize(desk, "2026-12", at("2026-12-15", 1))  # bills 15 November - 15 December: 2.00
    # Closed after both invoices (a first close over past months): each month still earns the usage it consumed.
    close(desk, "2026-12-31", now=at("2027-01-02"))
    assert by_month(desk, "kind") == {
        ("2026-10", "usage"): D("10.00"),
        ("2026-11", "usage"): D("5.00"),
    }
