"""The MRR rules on invoices written by hand (lines the HTTP tests cannot reach today), and their invariants.

- An adjustment after a plan change on a finalized invoice (the old key rated down to zero, the new parts billed):
  MRR follows what the keys net to, in the months they cover.
- An invoice discount is shared between the fee and the usage it was taken from: 2.75 off 20.00 of fee and 7.50 of
  usage is 2.00 off the fee (20/27.5 of it) and 0.75 off usage; commits bought and credit drawn count for neither.
- Properties (hypothesis): for any invoices, each month's opening plus its movements is its closing, a month's
  total is the sum of its customers', and a customer's months add up to its fee lines to within the rounding of
  each month (half a minor unit each).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from meter.billing.invoices import Invoice, InvoiceLine, LineKind
from meter.money.revenue import mrr, retention

MOVES = ("new", "expansion", "contraction", "churn", "reactivation")


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def line(kind: str, amount: str, start: str, end: str, **fields: object) -> InvoiceLine:
    return InvoiceLine(
        kind=kind,  # type: ignore[arg-type]
        description=kind,
        amount=Decimal(amount),
        period_start=at(start),
        period_end=at(end),
        **fields,  # type: ignore[arg-type]
    )


def invoice(id_: str, customer: str, lines: list[InvoiceLine], status: str = "open") -> Invoice:
    first = min(x.period_start for x in lines)
    return Invoice(
        id=id_,
        tenant="t",
        customer=customer,
        subscription=f"s-{customer}",
        currency="EUR",
        reason="cycle",
        period_start=first,
        period_end=first + timedelta(days=31),
        issued_at=first,
        lines=lines,
        subtotal=sum((x.amount for x in lines), Decimal(0)),
        total=sum((x.amount for x in lines), Decimal(0)),
        status=status,  # type: ignore[arg-type]
    )


def test_an_adjustment_after_a_plan_change_nets_with_what_it_corrects() -> None:
    march = invoice("i3", "c", [line("recurring", "20.00", "2025-03-01", "2025-04-01", price="base", version=1)])
    april = invoice(
        "i4",
        "c",
        [
            line("recurring", "50.00", "2025-04-01", "2025-05-01", price="base", version=2),
            # The plan change on 16 March, after March's invoice was finalized: v1's whole-month key rates at zero
            # now, v1 for 1-16 March (9.68) and v2 for 16-31 March (25.81) are billed.
            line("adjustment", "-20.00", "2025-03-01", "2025-04-01", price="base", version=1),
            line("adjustment", "9.68", "2025-03-01", "2025-03-16", price="base", version=1),
            line("adjustment", "25.81", "2025-03-16", "2025-04-01", price="base", version=2),
        ],
    )
    figures = mrr.figures([march, april], "UTC")
    assert figures.mrr[("EUR", "c")] == {"2025-03": Decimal("35.49"), "2025-04": Decimal("50.00")}
    assert figures.usage == {}


def test_an_invoice_discount_is_shared_between_fee_and_usage() -> None:
    lines = [
        line("recurring", "20.00", "2025-02-01", "2025-03-01", price="base"),
        line("usage", "7.50", "2025-01-01", "2025-02-01", price="tokens", meter="tokens"),
        line("commit", "100.00", "2025-02-01", "2026-02-01"),
        line("discount", "-12.75", "2025-02-01", "2025-03-01"),  # 10 % of 127.50: its share of the commit drops out
        line("credit", "-6.00", "2025-01-01", "2025-02-01", price="tokens"),
    ]
    figures = mrr.figures([invoice("i", "c", lines)], "UTC")
    # Fee: 20 - 12.75 x 20/127.5 = 20 - 2.00; usage: 7.50 - 12.75 x 7.5/127.5 = 7.50 - 0.75, in its own month.
    assert figures.mrr[("EUR", "c")] == {"2025-02": Decimal("18.00")}
    assert figures.usage[("EUR", "c")] == {"2025-01": Decimal("6.75")}


def test_an_annual_fee_is_a_twelfth_each_month_and_drafts_and_voids_do_not_count() -> None:
    annual = invoice("a", "c", [line("recurring", "1200.00", "2025-01-01", "2026-01-01", price="year")])
    draft = invoice("d", "c", [line("recurring", "99.00", "2025-01-01", "2025-02-01")], status="draft")
    void = invoice("v", "c", [line("recurring", "99.00", "2025-01-01", "2025-02-01")], status="void")
    billed = [i for i in (annual, draft, void) if i.status in ("open", "paid", "uncollectible")]
    figures = mrr.figures(billed, "UTC")
    assert set(figures.mrr[("EUR", "c")].values()) == {Decimal("100.00")}
    assert len(figures.mrr[("EUR", "c")]) == 12


DAYS = st.integers(min_value=0, max_value=700)
AMOUNTS = st.integers(min_value=-5_000, max_value=50_000).map(lambda cents: Decimal(cents).scaleb(-2))


@st.composite
def invoices(draw: st.DrawFn) -> list[Invoice]:
    out = []
    for n in range(draw(st.integers(min_value=1, max_value=8))):
        lines = []
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            start = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=draw(DAYS), hours=draw(st.integers(0, 23)))
            end = start + timedelta(days=draw(st.integers(min_value=1, max_value=400)))
            kind: LineKind = draw(st.sampled_from(["recurring", "adjustment", "usage"]))
            amount = draw(AMOUNTS)
            meter = "m" if kind == "usage" or (kind == "adjustment" and draw(st.booleans())) else None
            lines.append(InvoiceLine(kind, "x", amount, start, end, meter=meter))
        if draw(st.booleans()):
            off = Decimal(-draw(st.integers(0, 500))).scaleb(-2)
            lines.append(line("discount", str(off), "2025-01-01", "2025-02-01"))
        out.append(invoice(f"i{n}", draw(st.sampled_from(["a", "b", "c"])), lines))
    return out


@settings(max_examples=60, deadline=None)
@given(invoices(), st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]))
def test_movements_add_up_and_months_add_up_to_the_lines(found: list[Invoice], tz: str) -> None:
    figures = mrr.figures(found, tz)
    months = mrr.month_range("2024-12", "2027-05", tz)
    report = mrr.mrr_report(figures, months, tz, by_customer=True)
    for month in report.months:
        moved = sum((getattr(month, m) for m in MOVES), Decimal(0))
        assert month.opening + moved == month.closing and month.arr == 12 * month.closing
        rows = [c for c in report.customers or [] if c.month == month.month]
        assert sum((c.mrr for c in rows), Decimal(0)) == month.closing
        assert sum((c.usage for c in rows), Decimal(0)) == month.usage
    for customer in {i.customer for i in found}:
        exact = sum(
            (p.amount for i in found if i.customer == customer for p in mrr._pieces(i) if p.kind == "fee"), Fraction(0)
        )
        counted = figures.mrr.get(("EUR", customer), {})
        # Each month is rounded once, by half a cent at most; the months hold every fee piece, nothing else.
        assert abs(Fraction(sum(counted.values(), Decimal(0))) - exact) <= Fraction(1, 200) * len(counted)
    cohorts = retention.retention_report(figures, months, tz).cohorts
    assert all(c.months[0].retention == Decimal("1.0000") for c in cohorts)
