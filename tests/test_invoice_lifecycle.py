"""Invoices that stay right through their whole life (issue 11).

Invoices that stay right through their whole life (issue 11): changes after an invoice was finalized become
adjustment lines that name what they correct, voided invoices are reissued, every amount on a line follows from what
the line shows, a broken subscription never stops the others, and a derived export never undoes or hides a write.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from meter.billing.invoices import Invoice, InvoiceLine
from meter.billing.store import Change, InvoiceStore
from meter.catalog.billing import Commit, Credit, Customer, Discount, Subscription
from meter.catalog.types import trusted
from meter.encoding import encode_json, plain
from meter.exceptions import Conflict, InvalidInput
from meter.lake.invoices import export_invoices
from meter.money.revenue import due
from meter.pricing.money import round_to_minor_unit
from rocksdict import WriteBatch
from test_invoicing import DEC, NOV, OCT, Desk, base_fee, per_unit, tokens

MIGRATION = datetime(2026, 11, 21, tzinfo=UTC)


def finalized_november(desk: Desk) -> Invoice:
    """s1 on version 1 (30.00 in advance), November invoiced and finalized."""
    desk.plan([[base_fee("30"), per_unit()], [base_fee("60"), per_unit(unit_price="0.02")]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
    [november] = desk.invoicer.run("acme", "2026-11").invoices
    return desk.invoicer.finalize("acme", november.id)[0]


def adjustments(invoice: Invoice) -> list[tuple[str | None, int | None, Decimal]]:
    return sorted((line.price, line.version, line.amount) for line in invoice.lines if line.kind == "adjustment")


def test_a_plan_change_after_the_fees_in_advance_were_finalized_is_billed(desk: Desk) -> None:
    final = finalized_november(desk)
    assert final.total == Decimal("30.00")
    desk.catalog.migrate_subscription("acme", "s1", 2, MIGRATION)
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    # November has 30 days: 20 on version 1 (30.00 billed, 20.00 due: -10.00), 10 on version 2 (60.00 x 10/30).
    assert adjustments(december) == [("base", 1, Decimal("-10.00")), ("base", 2, Decimal("20.00"))]
    for line in december.lines:
        if line.kind == "adjustment":  # both name the invoice of the period they adjust
            assert line.corrects == [final.number] and final.number in line.description
            assert (line.rated, line.billed) == (
                (Decimal("20.00"), Decimal("30.00")) if line.version == 1 else (Decimal("20.00"), Decimal("0.00"))
            )
    assert december.total == Decimal("60.00") + Decimal("10.00")  # December in advance on version 2, plus +10
    desk.invoicer.finalize("acme", december.id)
    [january] = desk.invoicer.run("acme", "2027-01").invoices
    assert adjustments(january) == [], "a correction is billed once"


def test_a_cancellation_after_the_fees_in_advance_were_finalized_is_credited(desk: Desk) -> None:
    finalized_november(desk)
    sub = desk.catalog.get_subscription("acme", "s1")
    desk.catalog.put_subscription("acme", msgspec.structs.replace(sub, end=MIGRATION))
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    assert adjustments(december) == [("base", 1, Decimal("-10.00"))]
    assert not [line for line in december.lines if line.kind == "recurring"], "no fee for a cycle it does not cover"
    assert december.total == Decimal("-10.00"), "what the customer is owed"


def test_a_key_that_no_longer_exists_rates_at_zero(desk: Desk) -> None:
    final = finalized_november(desk)
    desk.catalog.migrate_subscription("acme", "s1", 2, NOV)  # version 1 no longer covers any of November
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    assert adjustments(december) == [("base", 1, Decimal("-30.00")), ("base", 2, Decimal("60.00"))]
    gone = next(line for line in december.lines if line.kind == "adjustment" and line.version == 1)
    assert (gone.rated, gone.billed, gone.corrects) == (Decimal("0.00"), Decimal("30.00"), [final.number])


def test_a_voided_invoice_is_reissued_with_a_new_number(desk: Desk) -> None:
    final = finalized_november(desk)
    desk.invoicer.void("acme", final.id)
    [reissue] = desk.invoicer.run("acme", "2026-11").invoices
    assert reissue.id != final.id and reissue.reissues == final.id and reissue.status == "draft"
    assert [(line.kind, line.amount) for line in reissue.lines] == [(line.kind, line.amount) for line in final.lines]
    again = desk.invoicer.finalize("acme", reissue.id)[0]
    assert again.number == "INV-000002"
    assert desk.invoicer.run("acme", "2026-11").invoices == [], "finalized: never recomputed"
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    assert adjustments(december) == [], "November's fees are billed once, by the reissue"
    assert desk.invoicer.store.get("acme", final.id).status == "void"


def test_a_voided_threshold_invoice_leaves_its_usage_to_the_cycle(desk: Desk) -> None:
    desk.plan([[per_unit(unit_price="0.10")]])
    desk.catalog.put_subscription(
        "acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT, threshold=Decimal(10))
    )
    desk.usage(tokens(1, NOV + timedelta(days=1), 200), now=NOV + timedelta(days=2))
    [early] = desk.invoicer.thresholds("acme", NOV + timedelta(days=2)).invoices
    assert early.status == "open" and early.total == Decimal("20.00")
    desk.invoicer.void("acme", early.id)
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    assert december.total == Decimal("20.00")


def test_adjustment_lines_show_the_quantity_added_and_the_invoice_they_correct(desk: Desk) -> None:
    desk.plan([[per_unit()]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
    desk.usage(tokens(1, OCT + timedelta(days=2), 500))
    [november] = desk.invoicer.run("acme", "2026-11").invoices
    final = desk.invoicer.finalize("acme", november.id)[0]
    desk.usage(tokens(2, OCT + timedelta(days=30), 250))
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    [line] = [line for line in december.lines if line.kind == "adjustment"]
    assert (line.quantity, line.billed_quantity, line.rated, line.billed, line.amount) == (
        Decimal(250),
        Decimal(500),
        Decimal("7.50"),
        Decimal("5.00"),
        Decimal("2.50"),
    )
    assert line.corrects == [final.number] and final.number in line.description


def test_a_minimum_and_tier_bounds_are_shown_in_the_details(desk: Desk) -> None:
    tiers = {
        "id": "tiers",
        "currency": "EUR",
        "model": "graduated",
        "meter": "tokens",
        "tiers": [{"from": "0", "up_to": "100", "unit_price": "0.02"}, {"from": "100", "unit_price": "0.01"}],
    }
    desk.plan([[{**per_unit(), "minimum": "20"}, {**tiers, "maximum": "1"}]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
    desk.usage(tokens(1, OCT + timedelta(days=2), 750))
    [invoice] = desk.invoicer.run("acme", "2026-11").invoices
    lines = {line.price: line for line in invoice.lines}
    minimum = lines["tokens"]
    assert minimum.amount == Decimal("20.00")
    assert [(d.component, d.subtotal) for d in minimum.details] == [
        ("per_unit", Decimal("7.5")),
        ("minimum", Decimal("12.5")),
    ]
    graduated = lines["tiers"]
    assert [(d.tier, d.tier_from, d.tier_to) for d in graduated.details if d.tier] == [
        (1, Decimal(0), Decimal(100)),
        (2, Decimal(100), None),
    ]
    assert graduated.details[-1].component == "maximum" and graduated.amount == Decimal("1.00")
    for line in invoice.lines:
        assert_line_adds_up(line, "EUR")


def assert_line_adds_up(line: InvoiceLine, currency: str) -> None:
    """Checks the relations every billing line shows.

    What every billing line shows: details add up exactly to what the key rates at, which rounds to ``rated``,
    and ``amount = rated - billed``.
    """
    if line.kind in ("recurring", "usage", "adjustment"):
        exact = sum((d.subtotal for d in line.details), Decimal(0))
        assert round_to_minor_unit(exact, currency) == line.rated, line
        assert line.amount == line.rated - (line.billed or 0), line
        for d in line.details:
            if d.component not in ("minimum", "maximum", "percentage") and d.subtotal:
                assert d.subtotal == d.units * d.unit_price + (d.flat_fee or 0), d
    elif line.kind == "discount":  # percent x base, or a fixed amount at most the base; the base is said
        match = re.fullmatch(r"discount \S+: (\S+?)(%?) off .* \(of (-?[\d.]+)\)", line.description)
        assert match, line.description
        value, percent, base = Decimal(match[1]), match[2], Decimal(match[3])
        off = round_to_minor_unit(base * value / 100, currency) if percent else min(value, base)
        assert line.amount == -off, line
    elif line.kind == "credit":  # what is due, at most what the grant had left
        match = re.search(r"\((-?[\d.]+) left of ([\d.]+)\)", line.description)
        assert match, line.description
        assert 0 < -line.amount <= Decimal(match[1]) <= Decimal(match[2]), line
    elif line.kind in ("commit", "shortfall"):
        assert line.amount > 0 and line.key is not None, line
    assert line.amount == round_to_minor_unit(line.amount, currency), "amounts are at the minor unit"


PRICES: list[dict[str, Any]] = [
    base_fee("30"),
    {"id": "arrears", "currency": "EUR", "model": "flat", "amount": "9.99", "cadence": "in_arrears"},
    {**per_unit("per_unit", "0.0123"), "minimum": "5", "maximum": "40"},
    {
        "id": "graduated",
        "currency": "EUR",
        "model": "graduated",
        "meter": "tokens",
        "free_allowance": "10",
        "tiers": [
            {"from": "0", "up_to": "100", "unit_price": "0.05", "flat_fee": "1"},
            {"from": "100", "unit_price": "0.01"},
        ],
    },
    {
        "id": "volume",
        "currency": "EUR",
        "model": "volume",
        "meter": "tokens",
        "minimum": "3",
        "tiers": [{"from": "0", "up_to": "100", "unit_price": "0.05"}, {"from": "100", "unit_price": "0.004"}],
    },
    {
        "id": "package",
        "currency": "EUR",
        "model": "package",
        "meter": "tokens",
        "package": {"size": "100", "price": "0.7", "rounding": "up"},
    },
    {
        "id": "percentage",
        "currency": "EUR",
        "model": "percentage",
        "meter": "tokens",
        "percentage": {"percent": "2.5", "min_fee": "1", "max_fee": "20"},
    },
    {
        "id": "matrix",
        "currency": "EUR",
        "model": "matrix",
        "meter": "tokens",
        "free_allowance": "50",
        "maximum": "4",
        "matrix": {
            "dimensions": ["model"],
            "entries": [
                {"values": {"model": "a"}, "unit_price": "0.003"},
                {"values": {"model": "b"}, "unit_price": "0.011"},
            ],
        },
    },
]


@pytest.mark.parametrize("amounts", [[0], [1], [37, 400], [99, 1, 5000], [12345, 3]])
def test_every_line_adds_up_through_the_invoices_life(desk: Desk, amounts: list[int]) -> None:
    """A table over every price model, usage sizes, late usage, a plan change after finalization and a void."""
    kinds: set[str] = set()
    desk.plan([PRICES, [{**p, "maximum": None, "minimum": "2"} if p.get("meter") else p for p in PRICES]])
    terms = {
        "discounts": [
            Discount(id="ten", start=OCT, percent=Decimal("12.5"), price="per_unit"),
            Discount(id="five", start=OCT, amount=Decimal(5)),
        ],
        "credits": [Credit(id="welcome", amount=Decimal("3.33"), start=OCT, end=DEC + timedelta(days=40))],
        "commits": [Commit(id="pre", amount=Decimal(25), start=NOV, end=DEC + timedelta(days=60), priority=1)],
    }
    desk.catalog.put_subscription(
        "acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT, **terms)
    )
    desk.usage(*(tokens(i, OCT + timedelta(days=i), n, model="ab"[i % 2]) for i, n in enumerate(amounts)))
    seen: list[Invoice] = []
    [november] = desk.invoicer.run("acme", "2026-11").invoices
    seen.append(desk.invoicer.finalize("acme", november.id)[0])
    desk.usage(*(tokens(100 + i, OCT + timedelta(days=29), n + 7, model="b") for i, n in enumerate(amounts)))
    desk.catalog.migrate_subscription("acme", "s1", 2, MIGRATION)
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    seen.append(december)
    desk.invoicer.void("acme", desk.invoicer.finalize("acme", december.id)[0].id)
    seen += desk.invoicer.run("acme", "2026-12").invoices
    for invoice in seen:
        for line in invoice.lines:
            assert_line_adds_up(line, "EUR")
        assert invoice.total == sum((line.amount for line in invoice.lines), Decimal(0))
        kinds.update(line.kind for line in invoice.lines)
        text = encode_json(invoice).decode()
        assert not re.search(r'"-?[0-9.]+E[+-]?[0-9]+"', text), "no amount or quantity in exponent notation"
        shown = json.loads(text)
        amounts = [shown["subtotal"], shown["total"]]
        amounts += [line[name] for line in shown["lines"] for name in ("amount", "rated", "billed") if line.get(name)]
        for value in amounts:
            assert re.fullmatch(r"-?\d+\.\d\d", value), value
    assert kinds >= {"recurring", "usage", "adjustment", "discount", "commit", "credit"}, kinds
    # The export holds every line as it is (it is written at best after each write: here it must not fail at all).
    export_invoices(desk.invoicer.store, ["acme"], desk.invoicer.out)
    exported = pq.read_table(desk.invoicer.out / "invoices" / "tenant=acme" / "invoice_lines.parquet").to_pylist()
    stored = [line for invoice in desk.invoicer.store.list("acme") for line in invoice.lines]
    assert sorted(row["amount"] for row in exported) == sorted(line.amount for line in stored)
    assert {row["corrects"] for row in exported if row["kind"] == "adjustment"} == {"INV-000001"}


def test_decimals_are_written_as_plain_decimals() -> None:
    assert plain(Decimal("2E+1")) == "20" and plain(Decimal("0E-9")) == "0.000000000"
    assert plain(Decimal("-0.00")) == "0.00" and plain(Decimal("1E-9")) == "0.000000001"
    assert (
        encode_json({"subtotal": Decimal("2E+1"), "q": [Decimal("0E-9")], "text": "E+1"})
        == b'{"subtotal":"20","q":["0.000000000"],"text":"E+1"}'
    )


@pytest.mark.parametrize(
    ("amount", "rule"),
    [
        ("0.001", "at most 2 decimals"),
        ("0", "positive"),
        ("-5", "positive"),
        ("NaN", "positive"),
        ("sNaN", "positive"),
        ("Infinity", "positive"),
        ("1E+40", "positive"),
        ("0.000000000000000000000000000001", "at most 2 decimals"),
    ],
)
def test_a_credit_note_must_be_money(desk: Desk, amount: str, rule: str) -> None:
    final = finalized_november(desk)
    with pytest.raises(InvalidInput, match=rule) as e:
        desk.invoicer.credit("acme", final.id, Decimal(amount), "refund")
    assert e.value.code == "invalid_credit_note"
    assert desk.invoicer.store.credit_notes("acme") == [], "nothing was stored"
    note, warnings = desk.invoicer.credit("acme", final.id, Decimal("5"), "refund")
    assert (plain(note.amount), warnings) == ("5.00", [])


def test_a_failing_export_never_undoes_or_hides_a_write(
    desk: Desk, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    desk.plan([[base_fee("30")]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("meter.billing.invoicer.export_invoices", broken)
    run = desk.invoicer.run("acme", "2026-11", finalize=True)
    [invoice] = run.invoices
    assert invoice.status == "open" and [w.code for w in run.warnings] == ["export_failed"]
    note, warnings = desk.invoicer.credit("acme", invoice.id, Decimal("1.50"), "sorry")
    assert note.number == "CN-000001" and "was saved" in warnings[0].message
    assert "disk full" in capsys.readouterr().err
    monkeypatch.undo()
    assert desk.invoicer.run("acme", "2026-12").invoices, "later runs work, and the export is written again"
    assert (desk.invoicer.out / "invoices" / "tenant=acme" / "credit_notes.parquet").exists()


def test_one_broken_subscription_never_stops_the_others(desk: Desk) -> None:
    matrix = {
        "id": "matrix",
        "currency": "EUR",
        "model": "matrix",
        "meter": "tokens",
        "matrix": {"dimensions": ["model"], "entries": [{"values": {"model": "a"}, "unit_price": "0.01"}]},
    }
    desk.plan([[base_fee("30"), matrix]])
    for sub, customer in (("s1", "c1"), ("s2", "c2")):
        if customer != "c1":
            desk.catalog.put_customer(
                "acme", msgspec.structs.replace(desk.catalog.get_customer("acme", "c1"), id=customer)
            )
        desk.catalog.put_subscription("acme", Subscription(id=sub, customer=customer, plan="pro", version=1, start=OCT))
    # c2 uses a model the matrix does not price: its invoice cannot be computed, c1's can.
    desk.usage(
        tokens(1, OCT + timedelta(days=1), 100, model="a"),
        tokens(2, OCT + timedelta(days=1), 100, customer="c2", model="zzz"),
    )
    run = desk.invoicer.run("acme", "2026-11", finalize=True)
    assert [(i.subscription, i.status, i.total) for i in run.invoices] == [("s1", "open", Decimal("31.00"))]
    assert [(e.subscription, e.code) for e in run.errors] == [("s2", "unpriced_usage")]
    assert "zzz" in run.errors[0].message


@pytest.mark.parametrize("period", ["9999-12", "0001-01", "2026-13", "2026-00", "2026-1", "26-11", "November", ""])
def test_a_period_out_of_range_is_refused(desk: Desk, period: str) -> None:
    desk.plan([[base_fee()]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
    with pytest.raises(InvalidInput) as e:
        desk.invoicer.run("acme", period)
    assert e.value.code == "invalid_period"
    assert "YYYY-MM" in e.value.message or "from 1970-01 to 9998-12" in e.value.message


def test_a_run_says_which_service_periods_it_covers(desk: Desk) -> None:
    desk.plan([[base_fee(), per_unit()]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
    run = desk.invoicer.run("acme", "2026-11")
    assert run.fees_in_advance is not None and run.usage_in_arrears is not None
    assert (run.fees_in_advance.start, run.fees_in_advance.end) == (NOV, DEC)
    assert (run.usage_in_arrears.start, run.usage_in_arrears.end) == (OCT, NOV)
    [invoice] = run.invoices
    assert (invoice.period, invoice.usage_period) == ("2026-11", "2026-10")
    assert (invoice.usage_start, invoice.usage_end) == (OCT, NOV)


def test_a_draft_computed_before_another_invoice_was_finalized_or_voided_is_stale(desk: Desk) -> None:
    final = finalized_november(desk)
    desk.catalog.migrate_subscription("acme", "s1", 2, MIGRATION)
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    [january] = desk.invoicer.run("acme", "2027-01").invoices
    assert adjustments(january) == adjustments(december), "both drafts would correct November"
    desk.invoicer.finalize("acme", december.id)
    with pytest.raises(Conflict, match="stale") as e:
        desk.invoicer.finalize("acme", january.id)
    assert e.value.code == "stale_draft"
    [january] = desk.invoicer.run("acme", "2027-01").invoices
    assert adjustments(january) == [] and desk.invoicer.finalize("acme", january.id)[0].number == "INV-000003"

    desk.invoicer.void("acme", final.id)
    [reissue] = desk.invoicer.run("acme", "2026-11").invoices
    desk.invoicer.void("acme", december.id)
    with pytest.raises(Conflict, match="was voided"):
        desk.invoicer.finalize("acme", reissue.id)


def test_concurrent_writes_never_share_a_number_nor_over_credit(desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent finalize, credit and void, each read widened by a pause.

    Without the per-tenant lock, threads read the same counter (or the same credited total, or the same status) and
    write over each other.
    """
    desk.plan([[base_fee("20")]])
    for i in range(8):
        desk.catalog.put_subscription("acme", Subscription(id=f"s{i}", customer="c1", plan="pro", version=1, start=OCT))
    drafts = [d.id for d in desk.invoicer.run("acme", "2026-11").invoices]
    store = desk.invoicer.store
    read = InvoiceStore.get

    def slow_get(self: InvoiceStore, tenant: str, invoice_id: str) -> Invoice:
        invoice = read(self, tenant, invoice_id)
        time.sleep(0.01)
        return invoice

    monkeypatch.setattr(InvoiceStore, "get", slow_get)

    def attempt(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (InvalidInput, Conflict) as e:  # a refused state change, or a credit note past the total
            return e.code

    with ThreadPoolExecutor(max_workers=16) as pool:
        finals = list(pool.map(lambda d: attempt(lambda: store.finalize("acme", d)), drafts * 2))
        numbers = sorted(f.number for f in finals if isinstance(f, Invoice))
        assert numbers == [f"INV-{n:06d}" for n in range(1, 9)], "unique and gapless"
        notes = list(pool.map(lambda _: attempt(lambda: store.credit("acme", drafts[0], Decimal(3), "r")), range(10)))
        assert sum(n.amount for n in notes if not isinstance(n, str)) == Decimal(18), "never above the total (20)"
        voids = list(pool.map(lambda _: attempt(lambda: store.void("acme", drafts[1])), range(6)))
        assert sum(isinstance(v, Invoice) for v in voids) == 1


def test_void_is_a_synced_write(desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    final = finalized_november(desk)
    writes: list[set[str]] = []
    original = Change.batch

    def spy(self: Change) -> WriteBatch:
        batch = original(self)
        writes.append({key.decode().rsplit("/", 1)[0] for key in self._puts})
        return batch

    monkeypatch.setattr(Change, "batch", spy)
    desk.invoicer.void("acme", final.id)
    # One synced batch, like finalize: the invoice, its reversing journal entry, the invoice.voided event, and the
    # record that revenue recognition reads to look at the invoice again.
    journal = {"journal/acme", "journal_id/acme", f"journal_invoice/acme/{final.id}", "journal_customer/acme/c1"}
    totals = {"ledger_total/acme/c1/EUR", "ledger_total/acme//EUR"}  # the customer's accounts, the tenant's
    assert writes == [{"invoice/acme", "outbox/acme", "revenue_due/acme", *journal, *totals}]
    raw = desk.invoicer.store.raw(f"revenue_due/acme/{final.id}")
    assert raw is not None
    record = due.decode(raw)
    assert (record.invoice, record.status, record.billed) == (final.id, "void", False), "voided: it bills nothing"
    lines = record.lines()
    assert [(line["n"], line["amount"]) for line in lines] == [(n, str(x.amount)) for n, x in enumerate(final.lines, 1)]
    first = min([final.period_start, *(line.period_start for line in final.lines)])  # usage billed in arrears
    assert desk.invoicer.store.raw("revenue_first/acme") == str(due.micros(first)).encode()


@pytest.mark.parametrize("period", ["1970-01", "9998-12"])
@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Etc/GMT+12"])
def test_the_first_and_last_periods_are_invoiced_or_reported_never_raised(desk: Desk, period: str, zone: str) -> None:
    desk.plan([[base_fee()]])
    desk.catalog.put_customer("acme", Customer(id="c1", name="One", currency="EUR", timezone=zone))
    starts = {"old": datetime(1, 1, 2, tzinfo=UTC), "new": datetime(9998, 11, 3, tzinfo=UTC), "now": OCT}
    with trusted():  # the catalog refuses such times now (it keeps [1970, 9000)); data stored before may have them
        for sub, start in starts.items():
            desk.catalog.put_subscription(
                "acme", Subscription(id=sub, customer="c1", plan="pro", version=1, start=start)
            )
    run = desk.invoicer.run("acme", period)
    assert {i.subscription for i in run.invoices} | {e.subscription for e in run.errors} <= {"old", "new", "now"}
    assert all(e.code != "internal" for e in run.errors), run.errors


def test_keys_stored_before_they_named_the_cycle_count_for_the_same_charge(desk: Desk) -> None:
    """Invoices finalized before this change keyed a partial cycle by its segment: they are not billed twice."""
    desk.plan([[base_fee("30")]])
    start = datetime(2026, 11, 16, tzinfo=UTC)
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=start))
    [november] = desk.invoicer.run("acme", "2026-11").invoices
    [fee] = november.lines
    assert fee.amount == Decimal("15.00")
    legacy = msgspec.structs.replace(fee, key=f"s1|base|1|{start.isoformat()}|{DEC.isoformat()}")
    store = desk.invoicer.store
    with store.transaction("acme") as change:
        change.put(f"invoice/acme/{november.id}", msgspec.structs.replace(november, lines=[legacy]))
    desk.invoicer.finalize("acme", november.id)
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    assert adjustments(december) == [], "the November fee was billed once, under the old key"
