"""Tax: the worked examples, computed by hand here (figures in the comments), through the real invoicer and store.

Each example sets the seller's settings, the rates and the customer, runs November 2026 for one subscription whose
flat fees are billed in advance, and finalizes the draft: tax is applied at finalization, per line, half to even.
Then the pieces on their own: rate selection (jurisdiction, tax code, dates), taxable bases, a credit note's split.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from conftest import OCT, Desk, event
from meter.billing.invoices import Invoice, InvoiceLine, TaxAmount
from meter.catalog.billing import Address, Customer, Discount, PlanVersionBody, Product, Subscription
from meter.catalog.prices import Price
from meter.catalog.tax import TaxId, TaxRate, TaxSettings
from meter.exceptions import InvalidInput
from meter.money.tax import CatalogTax, credit_note_taxes
from meter.money.tax.compute import split, taxable_bases

NOV = datetime(2026, 11, 1, tzinfo=UTC)
D = Decimal


def rate(rate_id: str, country: str, percentage: str, **fields: Any) -> TaxRate:
    return TaxRate(
        id=rate_id,
        name=fields.pop("name", rate_id),
        country=country,
        percentage=D(percentage),
        effective_from=fields.pop("effective_from", datetime(2026, 1, 1, tzinfo=UTC)),
        **fields,
    )


def invoice_of(
    desk: Desk,
    *,
    currency: str,
    fees: list[str],
    country: str | None,
    region: str = "",
    seller: str | None = None,
    rates: tuple[TaxRate, ...] = (),
    **customer: Any,
) -> Invoice:
    """The draft of November 2026 for one subscription with flat fees ``fees`` in advance, as the customer says."""
    catalog = desk.catalog
    address = Address(country=country, region=region) if country is not None else None
    catalog.put_customer("acme", Customer(id="c1", name="One", currency=currency, address=address, **customer))
    if seller is not None:
        catalog.put_tax_settings("acme", TaxSettings(country=seller))
    for r in rates:
        catalog.create_tax_rate("acme", r)
    prices = [
        Price(id=f"fee{i}", currency=currency, model="flat", amount=D(amount), cadence="in_advance")
        for i, amount in enumerate(fees, start=1)
    ]
    catalog.create_plan("acme", "pro", "Pro", [PlanVersionBody(effective_from=OCT, prices=prices)])
    catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=NOV))
    run = desk.invoicer.run("acme", "2026-11")
    assert run.errors == [] and len(run.invoices) == 1, run.errors
    draft = run.invoices[0]
    assert draft.tax is None and draft.taxes == [], "a draft has no tax yet"
    return draft


def finalize(desk: Desk, draft: Invoice) -> Invoice:
    final, warnings = desk.invoicer.finalize("acme", draft.id)
    assert warnings == []
    assert desk.invoicer.store.get("acme", draft.id) == final, "what is answered is what is stored"
    return final


def test_exclusive_us_sales_tax_is_rounded_per_line(desk: Desk) -> None:
    # New York, 8.875 % exclusive, on two lines of 49.99 and 10.10 USD:
    #   49.99 x 8.875 % = 4.4366125 -> 4.44;  10.10 x 8.875 % = 0.896375 -> 0.90;  tax 5.34
    #   (8.875 % of the subtotal 60.09 would be 5.3329875 -> 5.33: tax is per line, not on the sum)
    #   total = 60.09 + 5.34 = 65.43
    ny = rate("ny", "US", "8.875", region="NY", name="NY sales tax")
    draft = invoice_of(
        desk, currency="USD", fees=["49.99", "10.10"], country="US", region="ny", seller="US", rates=(ny,)
    )
    final = finalize(desk, draft)
    assert final.subtotal == D("60.09") and final.tax == D("5.34") and final.total == D("65.43")
    assert [(t.line, t.rate, t.taxable, t.amount) for t in final.line_taxes] == [
        (0, "ny", D("49.99"), D("4.44")),
        (1, "ny", D("10.10"), D("0.90")),
    ]
    assert final.taxes == [
        TaxAmount(
            rate="ny",
            name="NY sales tax",
            country="US",
            region="NY",
            percentage=D("8.875"),
            inclusive=False,
            taxable=D("60.09"),
            amount=D("5.34"),
        )
    ]
    assert final.tax_note is None
    assert str(final.total) == "65.43" and str(final.tax) == "5.34", "at the minor unit"


def test_inclusive_vat_takes_the_tax_out_of_the_price(desk: Desk) -> None:
    # GB VAT 20 % inclusive on 99.99 GBP: tax = round(99.99 x 0.20 / 1.20) = round(16.665) = 16.66 (half to even),
    #   net = 99.99 - 16.66 = 83.33; the total stays 99.99 (the tax is in the price).
    vat = rate("gb-vat", "GB", "20", inclusive=True, name="VAT")
    draft = invoice_of(desk, currency="GBP", fees=["99.99"], country="GB", seller="GB", rates=(vat,))
    final = finalize(desk, draft)
    assert (final.subtotal, final.tax, final.total) == (D("99.99"), D("16.66"), D("99.99"))
    [group] = final.taxes
    assert (group.rate, group.inclusive, group.taxable, group.amount) == ("gb-vat", True, D("83.33"), D("16.66"))


def test_german_vat_19_percent_inclusive(desk: Desk) -> None:
    # DE 19 % inclusive on 119.00 and 10.00 EUR: 119.00 x 19 / 119 = 19.00 (net 100.00);
    #   10.00 x 19 / 119 = 1.5966... -> 1.60 (net 8.40); tax 20.60, total 129.00.
    vat = rate("de-vat", "DE", "19", inclusive=True, name="MwSt")
    draft = invoice_of(desk, currency="EUR", fees=["119.00", "10.00"], country="DE", seller="DE", rates=(vat,))
    final = finalize(desk, draft)
    assert (final.tax, final.total) == (D("20.60"), D("129.00"))
    assert [(t.taxable, t.amount) for t in final.line_taxes] == [(D("100.00"), D("19.00")), (D("8.40"), D("1.60"))]
    assert final.taxes[0].taxable == D("108.40")


def test_reverse_charge_for_a_business_in_another_eu_country(desk: Desk) -> None:
    # Seller in FR, customer a German business (VAT id DE123456789): reverse charged, no tax;
    #   the German rate exists but does not apply. total = subtotal = 500.00.
    de = rate("de-vat", "DE", "19", inclusive=False)
    draft = invoice_of(
        desk,
        currency="EUR",
        fees=["500.00"],
        country="DE",
        seller="FR",
        rates=(de,),
        tax_ids=[TaxId(type="eu_vat", value="DE123456789")],
    )
    seller_id = TaxId(type="eu_vat", value="FR40303265045")
    desk.catalog.put_tax_settings("acme", TaxSettings(country="FR", tax_ids=[seller_id]))
    final = finalize(desk, draft)
    assert (final.tax, final.total, final.taxes, final.line_taxes) == (D("0.00"), D("500.00"), [], [])
    assert final.tax_note is not None and final.tax_note.startswith("Reverse charge")
    assert "(seller in FR, tax id eu_vat FR40303265045; customer in DE, tax id eu_vat DE123456789)" in final.tax_note


def test_the_same_business_at_home_is_taxed(desk: Desk) -> None:
    # A tax id alone is not a reverse charge: a German business buying from a German seller pays 19 % on 500.00 = 95.00.
    de = rate("de-vat", "DE", "19")
    draft = invoice_of(
        desk,
        currency="EUR",
        fees=["500.00"],
        country="DE",
        seller="DE",
        rates=(de,),
        tax_ids=[TaxId(type="eu_vat", value="DE123456789")],
    )
    final = finalize(desk, draft)
    assert (final.tax, final.total, final.tax_note) == (D("95.00"), D("595.00"), None)


def test_an_exempt_customer_is_not_taxed_and_the_invoice_says_so(desk: Desk) -> None:
    vat = rate("gb-vat", "GB", "20")
    draft = invoice_of(
        desk, currency="GBP", fees=["80.00"], country="GB", seller="GB", rates=(vat,), tax_exempt="exempt"
    )
    final = finalize(desk, draft)
    assert (final.tax, final.total, final.taxes) == (D("0.00"), D("80.00"), [])
    assert final.tax_note is not None and final.tax_note.startswith("Tax exempt")


def test_jpy_has_no_decimals_and_ties_go_to_even(desk: Desk) -> None:
    # JP consumption tax 10 % exclusive on 1235 and 1225 JPY (0 decimals):
    #   1235 x 10 % = 123.5 -> 124 (ties to even);  1225 x 10 % = 122.5 -> 122;  tax 246, total 2460 + 246 = 2706.
    jp = rate("jp-ct", "JP", "10")
    draft = invoice_of(desk, currency="JPY", fees=["1235", "1225"], country="JP", seller="JP", rates=(jp,))
    final = finalize(desk, draft)
    assert [t.amount for t in final.line_taxes] == [D("124"), D("122")]
    assert (final.tax, final.total) == (D("246"), D("2706"))
    assert str(final.total) == "2706"


def test_a_credit_note_carries_its_share_of_the_tax_back(desk: Desk) -> None:
    # The NY invoice: total 65.43, tax 5.34. A credit note of 20.00 (tax included) carries back
    #   round(20.00 x 5.34 / 65.43) = round(1.63228...) = 1.63, all at the one rate (ny), on a base of
    #   round(60.09 x 20.00 / 65.43) = round(18.3677...) = 18.37.
    ny = rate("ny", "US", "8.875", region="NY")
    final = finalize(
        desk, invoice_of(desk, currency="USD", fees=["49.99", "10.10"], country="US", region="NY", rates=(ny,))
    )
    note, warnings = desk.invoicer.credit("acme", final.id, D("20.00"), "outage")
    assert warnings == []
    assert note.tax == D("1.63")
    assert [(t.rate, t.taxable, t.amount) for t in note.taxes] == [("ny", D("18.37"), D("1.63"))]
    assert desk.invoicer.store.credit_notes("acme") == [note]


def test_a_credit_note_split_gives_the_remainder_to_the_largest_group() -> None:
    # Tax 10.00 on a total of 100.00, in three groups 3.33 + 3.33 + 3.34. A note of 50.00 carries 5.00:
    #   5.00 x 3.33 / 10.00 = 1.665 -> 1.66 (twice), 5.00 x 3.34 / 10.00 = 1.67: 4.99, the cent left to the largest
    #   group (3.34): 1.66 + 1.66 + 1.68 = 5.00.
    def group(rate_id: str, amount: str) -> TaxAmount:
        return TaxAmount(
            rate=rate_id,
            name=rate_id,
            country="US",
            percentage=D("1"),
            inclusive=False,
            taxable=D("33.33"),
            amount=D(amount),
        )

    invoice = Invoice(
        id="i",
        tenant="acme",
        customer="c1",
        subscription="s1",
        currency="USD",
        reason="cycle",
        period_start=NOV,
        period_end=NOV,
        issued_at=NOV,
        lines=[],
        subtotal=D("90.00"),
        total=D("100.00"),
        tax=D("10.00"),
        taxes=[group("a", "3.33"), group("b", "3.33"), group("c", "3.34")],
    )
    tax, taxes = credit_note_taxes(invoice, D("50.00"))
    assert tax == D("5.00")
    assert [t.amount for t in taxes] == [D("1.66"), D("1.66"), D("1.68")]
    assert credit_note_taxes(msgspec.structs.replace(invoice, tax=None, taxes=[]), D("1.00")) == (None, [])


def test_without_rates_tax_is_zero_and_the_invoice_says_so(desk: Desk) -> None:
    final = finalize(desk, invoice_of(desk, currency="EUR", fees=["30.00"], country=None))
    assert (final.tax, final.total, final.taxes) == (D("0.00"), D("30.00"), [])
    assert final.tax_note is not None and "no tax rates configured" in final.tax_note


def test_with_rates_a_customer_without_a_country_is_refused_and_stays_a_draft(desk: Desk) -> None:
    draft = invoice_of(desk, currency="EUR", fees=["30.00"], country=None, rates=(rate("de", "DE", "19"),))
    with pytest.raises(InvalidInput) as refused:
        desk.invoicer.finalize("acme", draft.id)
    assert refused.value.code == "tax_address_missing" and "address.country" in refused.value.message
    assert desk.invoicer.store.get("acme", draft.id).status == "draft"
    # Fixed, it finalizes, taxed at 19 % exclusive: 30.00 x 19 % = 5.70.
    desk.catalog.put_customer("acme", Customer(id="c1", name="One", currency="EUR", address=Address(country="DE")))
    assert finalize(desk, draft).tax == D("5.70")


def test_a_run_that_finalizes_taxes_every_invoice(desk: Desk) -> None:
    invoice_of(desk, currency="GBP", fees=["12.00"], country="GB", seller="GB", rates=(rate("gb", "GB", "20"),))
    run = desk.invoicer.run("acme", "2026-11", finalize=True)
    # Re-running finalizes the draft saved by the first run: 12.00 x 20 % = 2.40, total 14.40.
    assert [(i.status, i.tax, i.total) for i in run.invoices] == [("open", D("2.40"), D("14.40"))]


# Rates, bases, splits on their own


def test_rates_by_jurisdiction_tax_code_and_half_open_dates() -> None:
    jan, jul = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC)
    provider = CatalogTax(
        [
            rate("us-ny", "US", "4", region="NY", effective_from=jan),
            rate("nyc", "US", "4.875", region="NY", effective_from=jan),
            rate("ny-books", "US", "0", region="NY", tax_code="txcd_books", effective_from=jan),
            rate("de-old", "DE", "16", effective_from=jan, effective_to=jul),
            rate("de-new", "DE", "19", effective_from=jul),
        ]
    )
    assert [r.id for r in provider.rates_for("US", "ny", None, jul)] == ["us-ny", "nyc"]
    assert [r.id for r in provider.rates_for("US", "NY", "txcd_books", jul)] == ["ny-books"]
    assert [r.id for r in provider.rates_for("US", "NY", "txcd_saas", jul)] == ["us-ny", "nyc"], "no own rate: general"
    assert provider.rates_for("US", "CA", None, jul) == []
    assert [r.id for r in provider.rates_for("DE", "", None, datetime(2026, 6, 30, 23, 59, tzinfo=UTC))] == ["de-old"]
    assert [r.id for r in provider.rates_for("DE", "", None, jul)] == ["de-new"], "effective_to is excluded"


def test_reductions_lower_the_base_of_what_they_reduce() -> None:
    # 100.00 of price a and 50.00 of price b; a discount of -10.00 on price a, then -15.00 on the invoice:
    #   a: 100.00 - 10.00 = 90.00; the 15.00 over 90.00 and 50.00: 9.64 and 5.36 (largest remainder):
    #   a 80.36, b 44.64; the two discount lines keep nothing. 80.36 + 44.64 = 125.00 = the lines' sum.
    def line(amount: str, price: str | None) -> InvoiceLine:
        return InvoiceLine(
            kind="usage", description="", amount=D(amount), period_start=NOV, period_end=NOV, price=price
        )

    bases = taxable_bases([line("100.00", "a"), line("50.00", "b"), line("-10.00", "a"), line("-15.00", None)], "USD")
    assert [b.amount for b in bases] == [D("80.36"), D("44.64"), D("0.00"), D("0.00")]
    assert [b.reduced for b in bases] == [D("-19.64"), D("-5.36"), D("0.00"), D("0.00")]
    # A reduction larger than everything stays on its line (its tax is then negative).
    assert [b.amount for b in taxable_bases([line("10.00", "a"), line("-30.00", None)], "USD")] == [D("0"), D("-20")]
    assert split(7, [1, 1, 1]) == [3, 2, 2] and sum(split(1001, [3, 5, 7])) == 1001


def test_a_threshold_invoice_is_taxed_when_it_is_issued(desk: Desk) -> None:
    # 1600 tokens at 0.01 EUR reach the 15.00 threshold: an early invoice of 16.00, taxed at DE 19 % exclusive:
    #   16.00 x 19 % = 3.04; total 19.04.
    desk.catalog.put_customer("acme", Customer(id="c1", name="One", currency="EUR", address=Address(country="DE")))
    desk.catalog.create_tax_rate("acme", rate("de", "DE", "19"))
    price = {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.01"}
    desk.plan([[price]])
    sub = Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT, threshold=D(15))
    desk.catalog.put_subscription("acme", sub)
    at = NOV + timedelta(days=2)
    desk.usage(event("e1", "c1", time=NOV + timedelta(days=1), tokens=1600, model="m"), now=at)
    [early] = desk.invoicer.thresholds("acme", at).invoices
    assert (early.reason, early.status, early.subtotal, early.tax, early.total) == (
        "threshold",
        "open",
        D("16.00"),
        D("3.04"),
        D("19.04"),
    )


def test_a_price_tax_code_picks_its_own_rates_and_a_meter_s_product_its_code(desk: Desk) -> None:
    # Two fees in NY: "books" (the price's tax code txcd_books, 0 % in NY) and "saas" (no code: the general 8.875 %).
    #   books 20.00 x 0 % = 0.00; saas 40.00 x 8.875 % = 3.55; tax 3.55, total 63.55.
    desk.catalog.put_customer(
        "acme", Customer(id="c1", name="One", currency="USD", address=Address(country="US", region="NY"))
    )
    for r in (rate("ny", "US", "8.875", region="NY"), rate("ny-books", "US", "0", region="NY", tax_code="txcd_books")):
        desk.catalog.create_tax_rate("acme", r)
    prices = [
        Price(id="books", currency="USD", model="flat", amount=D("20.00"), cadence="in_advance", tax_code="txcd_books"),
        Price(id="saas", currency="USD", model="flat", amount=D("40.00"), cadence="in_advance"),
    ]
    desk.catalog.create_plan("acme", "pro", "Pro", [PlanVersionBody(effective_from=OCT, prices=prices)])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=NOV))
    [draft] = desk.invoicer.run("acme", "2026-11").invoices
    final = finalize(desk, draft)
    assert [(t.line, t.rate, t.amount) for t in final.line_taxes] == [(0, "ny-books", D("0.00")), (1, "ny", D("3.55"))]
    assert (final.tax, final.total) == (D("3.55"), D("63.55"))
    # A usage line takes the tax code of the product that lists its meter (or of the product's parents).
    desk.catalog.put_product("acme", Product(id="family", name="Family", tax_code="txcd_books"))
    desk.catalog.put_product("acme", Product(id="llm", name="LLM", parent="family", meters=["tokens"]))
    usage = msgspec.structs.replace(draft.lines[1], price="unknown", meter="tokens")
    assert desk.invoicer.taxes.tax_codes(msgspec.structs.replace(draft, lines=[draft.lines[0], usage])) == [
        "txcd_books",
        "txcd_books",
    ]


def test_a_discount_on_the_invoice_lowers_the_tax_of_the_lines_it_reduces(desk: Desk) -> None:
    # NY 8.875 % on fees of 100.00 and 50.00 with 10 % off the invoice (-15.00, no price of its own):
    #   the 15.00 is spread over the fees in proportion: 10.00 and 5.00, so the bases are 90.00 and 45.00;
    #   90.00 x 8.875 % = 7.9875 -> 7.99;  45.00 x 8.875 % = 3.99375 -> 3.99;  tax 11.98;
    #   total = 150.00 - 15.00 + 11.98 = 146.98 (and the ledger entry balances: the store refuses one that does not).
    desk.catalog.put_customer(
        "acme", Customer(id="c1", name="One", currency="USD", address=Address(country="US", region="NY"))
    )
    desk.catalog.create_tax_rate("acme", rate("ny", "US", "8.875", region="NY"))
    prices = [
        Price(id=f"fee{i}", currency="USD", model="flat", amount=D(a), cadence="in_advance")
        for i, a in ((1, "100.00"), (2, "50.00"))
    ]
    desk.catalog.create_plan("acme", "pro", "Pro", [PlanVersionBody(effective_from=OCT, prices=prices)])
    off = Discount(id="launch", start=NOV, percent=D(10))
    desk.catalog.put_subscription(
        "acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=NOV, discounts=[off])
    )
    [draft] = desk.invoicer.run("acme", "2026-11").invoices
    assert [line.amount for line in draft.lines] == [D("100.00"), D("50.00"), D("-15.00")]
    final = finalize(desk, draft)
    assert [(t.line, t.taxable, t.amount) for t in final.line_taxes] == [
        (0, D("90.00"), D("7.99")),
        (1, D("45.00"), D("3.99")),
    ]
    assert (final.subtotal, final.tax, final.total) == (D("135.00"), D("11.98"), D("146.98"))
    assert final.taxes[0].taxable == D("135.00")


def test_rates_elsewhere_only_tax_nothing_and_the_invoice_says_where(desk: Desk) -> None:
    draft = invoice_of(desk, currency="USD", fees=["25.00"], country="US", region="CA", rates=(rate("de", "DE", "19"),))
    final = finalize(desk, draft)
    assert (final.tax, final.total, final.taxes) == (D("0.00"), D("25.00"), [])
    assert final.tax_note is not None and final.tax_note.startswith(
        "No tax: no tax rate of the catalog applies in US-CA"
    )


def test_a_preview_is_taxed_as_an_estimate_and_never_refused(desk: Desk) -> None:
    # The same NY invoice as above, previewed: 49.99 + 10.10 with 4.44 + 0.90 = 5.34 of tax, total 65.43, an estimate.
    ny = rate("ny", "US", "8.875", region="NY", name="NY sales tax")
    draft = invoice_of(
        desk, currency="USD", fees=["49.99", "10.10"], country="US", region="ny", seller="US", rates=(ny,)
    )
    taxes, at = desk.invoicer.taxes, datetime(2026, 11, 15, tzinfo=UTC)
    estimate = taxes.estimate(draft, at)
    assert (estimate.tax, estimate.total, estimate.tax_note) == (D("5.34"), D("65.43"), "Estimate.")
    # Without a billing country the finalization is refused; the preview is answered untaxed, saying why.
    desk.catalog.put_customer("acme", Customer(id="c1", name="One", currency="USD"))
    untaxed = taxes.estimate(draft, at)
    assert (untaxed.tax, untaxed.total) == (None, D("60.09")) and untaxed.tax_note
    assert untaxed.tax_note.startswith("Tax not estimated:") and "billing country" in untaxed.tax_note
    # With Stripe Tax, no calculation (each one is billed) for a preview.
    desk.catalog.put_tax_settings("acme", TaxSettings(country="US", provider="stripe"))
    assert taxes.estimate(draft, at).tax_note == "Tax: computed by Stripe Tax when the invoice is finalized."


@pytest.mark.parametrize(
    ("type_", "value", "ok"),
    [
        ("eu_vat", "DE123456789", True),
        ("eu_vat", "EL123456789", True),
        ("eu_vat", "de123456789", False),
        ("eu_vat", "DE 123 456 789", False),
        ("eu_vat", "US123456789", False),
        ("gb_vat", "GB123456789", True),
        ("gb_vat", "GB12345", False),
        ("us_ein", "12-3456789", True),
        ("us_ein", "123456789", False),
        ("au_abn", "12 345 678 901", True),  # a type without a fixed shape here: taken as given
    ],
)
def test_a_tax_id_of_a_known_type_must_have_its_shape(type_: str, value: str, ok: bool) -> None:
    if ok:
        assert TaxId(type=type_, value=value).value == value
    else:
        with pytest.raises(InvalidInput, match=f"a tax id of type '{type_}' is"):
            TaxId(type=type_, value=value)
