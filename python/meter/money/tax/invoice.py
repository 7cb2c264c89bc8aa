"""Taxing an invoice when it is finalized: who is taxed, on what, by which provider, and what the invoice then says.

:meth:`Taxes.taxer` gives the callable :meth:`meter.billing.store.InvoiceStore.finalize` applies to a draft inside the
tenant's lock, before the invoice is numbered and its journal entry posted. It reads the catalog as it is then (the
customer's address and tax ids, the seller's settings, the tax rates): tax is that of the finalization, as on any
invoice. In order:

1. A customer ``tax_exempt: exempt`` is not taxed: the invoice says "Tax exempt".
2. A customer ``tax_exempt: reverse``, or a business abroad (a tax id, and a billing country other than the seller's,
   :class:`~meter.catalog.tax.TaxSettings`), is reverse charged: no tax, and the invoice says "Reverse charge" (the
   customer accounts for the tax). Without tax settings there is no seller country, so no automatic reverse charge.
3. Otherwise the provider of the settings (``catalog`` by default, or ``stripe``) computes the tax of each line's
   taxable base (reductions spread over what they reduce: :func:`~meter.money.tax.compute.taxable_bases`) with the
   line's product tax code (its price's, else its meter's product's, else its parents'). With the catalog provider and
   no tax rate at all, tax is 0 and the invoice says so; with rates but no billing country for the customer, the
   finalization is refused (400 ``tax_address_missing``): no invoice is issued untaxed by mistake.

The invoice then carries ``tax`` (the sum of every line's tax), ``taxes`` (by rate and jurisdiction), ``line_taxes``,
``tax_note``, and its ``total`` grows by the exclusive tax (inclusive tax is in the lines already): what is owed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property

import msgspec

from meter.billing.invoices import CreditNote, Invoice
from meter.catalog.billing import BillingCatalog, Customer, Plan, Product, Subscription
from meter.catalog.tax import COUNTRIES, TaxRate, TaxSettings
from meter.exceptions import InvalidInput, NotFound
from meter.money.tax.compute import credit_note_taxes, taxable_bases
from meter.money.tax.provider import CatalogTax, TaxLine, TaxProvider, TaxRequest, TaxResult
from meter.money.tax.stripe_tax import StripeTax
from meter.pricing.money import round_to_minor_unit

__all__ = ["STRIPE_KEY_VARIABLE", "Taxes", "apply_tax", "credit_note_tax"]

#: Where the server finds the Stripe secret key the ``stripe`` tax provider calls Stripe Tax with.
STRIPE_KEY_VARIABLE = "METER_STRIPE_API_KEY"


def apply_tax(invoice: Invoice, result: TaxResult) -> Invoice:
    """``invoice`` with ``result``'s tax: ``tax``, ``taxes``, ``line_taxes``, ``tax_note``.

    Its ``total`` grows by the exclusive tax (inclusive tax is in the lines' amounts already).
    """
    zero = round_to_minor_unit(Decimal(0), invoice.currency)
    tax = sum((t.amount for t in result.line_taxes), zero)
    exclusive = sum((t.amount for t in result.line_taxes if not t.inclusive), zero)
    return msgspec.structs.replace(
        invoice,
        tax=tax,
        taxes=result.taxes,
        line_taxes=result.line_taxes,
        tax_note=result.note,
        total=invoice.total + exclusive,
    )


def credit_note_tax(invoice: Invoice, note: CreditNote) -> CreditNote:
    """``note`` with the tax it carries back from ``invoice`` (:func:`~meter.money.tax.compute.credit_note_taxes`)."""
    tax, taxes = credit_note_taxes(invoice, note.amount)
    return msgspec.structs.replace(note, tax=tax, taxes=taxes)


class Taxes:
    """The tax of one data directory's invoices: the catalog it reads, and Stripe's key for the ``stripe`` provider.

    ``stripe_api_key`` defaults to the environment's :data:`STRIPE_KEY_VARIABLE`.
    """

    def __init__(self, catalog: BillingCatalog, stripe_api_key: str | None = None) -> None:
        self.catalog = catalog
        self.stripe_api_key = stripe_api_key if stripe_api_key is not None else os.environ.get(STRIPE_KEY_VARIABLE)

    def taxer(self, tenant: str, now: datetime | None = None) -> Callable[[Invoice], Invoice]:
        """What finalization applies to drafts of ``tenant``: :meth:`tax` at ``now`` (else the time it is called).

        The tenant's settings, rates and products are read once, at the first draft, for all the drafts it taxes
        (a run finalizing many); customers, subscriptions and plans are read per draft.
        """
        reads = _Reads(self.catalog, tenant)

        def tax(invoice: Invoice) -> Invoice:
            if invoice.tenant != tenant:
                raise ValueError(f"invoice {invoice.id} is of tenant {invoice.tenant!r}, not {tenant!r}")
            return self.tax(invoice, now or datetime.now(UTC), reads)

        return tax

    def estimate(self, invoice: Invoice, at: datetime) -> Invoice:
        """``invoice`` with the tax it would carry if finalized at ``at``: for previews (the upcoming invoice).

        From the catalog's rates only: Stripe Tax is asked at finalization, never for a preview (each calculation is
        billed), and a preview whose tax cannot be computed (no billing country) is answered untaxed with a note
        saying why, never refused. ``tax_note`` says it is an estimate.
        """
        reads = _Reads(self.catalog, invoice.tenant)
        if reads.settings is not None and reads.settings.provider == "stripe":
            return msgspec.structs.replace(
                invoice, tax_note="Tax: computed by Stripe Tax when the invoice is finalized."
            )
        try:
            taxed = self.tax(invoice, at, reads)
        except InvalidInput as e:
            return msgspec.structs.replace(invoice, tax_note=f"Tax not estimated: {e.message}")
        return msgspec.structs.replace(taxed, tax_note=f"Estimate; {taxed.tax_note}" if taxed.tax_note else "Estimate.")

    def provider(self, tenant: str, settings: TaxSettings | None, reads: _Reads | None = None) -> TaxProvider:
        if settings is not None and settings.provider == "stripe":
            if not self.stripe_api_key:
                raise InvalidInput(
                    f"tenant {tenant!r} computes tax with Stripe Tax, but the server has no Stripe key: set "
                    f'{STRIPE_KEY_VARIABLE}, or set the tax settings\' provider to "catalog"',
                    code="tax_provider_unconfigured",
                )
            return StripeTax(self.stripe_api_key, inclusive=settings.prices_include_tax)
        return CatalogTax((reads or _Reads(self.catalog, tenant)).rates)

    def tax(self, invoice: Invoice, at: datetime, reads: _Reads | None = None) -> Invoice:
        """``invoice`` taxed as of ``at`` (see the module doc)."""
        tenant = invoice.tenant
        reads = reads or _Reads(self.catalog, tenant)
        try:
            customer = self.catalog.get_customer(tenant, invoice.customer)
        except NotFound:
            raise InvalidInput(
                f"invoice {invoice.id}: its customer {invoice.customer!r} is not in the catalog any more; tax needs "
                "its address: create it again",
                code="tax_address_missing",
            ) from None
        settings = reads.settings
        if customer.tax_exempt == "exempt":
            note = f"Tax exempt: customer {customer.id!r} is exempt from tax; no tax is charged."
            return apply_tax(invoice, TaxResult(note=note))
        country, region = _jurisdiction(customer)
        if (reverse := _reverse_charge(customer, country, settings)) is not None:
            return apply_tax(invoice, TaxResult(note=reverse))
        provider = self.provider(tenant, settings, reads)
        if isinstance(provider, CatalogTax) and not provider.rates:
            note = "No tax: this seller has no tax rates configured (POST /v1/tax-rates), so no tax is charged."
            return apply_tax(invoice, TaxResult(note=note))
        if not country:
            raise InvalidInput(
                f"invoice {invoice.id}: customer {customer.id!r} has no billing country, which tax needs to find its "
                'rates: set the customer\'s address.country (ISO 3166-1 alpha-2, such as "DE") and finalize again',
                code="tax_address_missing",
            )
        if country not in COUNTRIES:
            raise InvalidInput(
                f"invoice {invoice.id}: customer {customer.id!r} has the billing country {country!r}, which is not "
                'an ISO 3166-1 alpha-2 code such as "DE" or "US": correct its address.country and finalize again',
                code="tax_address_invalid",
            )
        codes = self.tax_codes(invoice, reads)
        lines = [
            TaxLine(b.line, b.amount, codes[b.line], invoice.lines[b.line].description)
            for b in taxable_bases(invoice.lines, invoice.currency)
            if b.amount != 0
        ]
        request = TaxRequest(
            invoice=invoice,
            customer=customer,
            country=country,
            region=region,
            seller=settings,
            lines=lines,
            date=at,
            idempotency_key=f"meter-tax-{tenant}-{invoice.id}",
        )
        return apply_tax(invoice, provider.calculate(request))

    def tax_codes(self, invoice: Invoice, reads: _Reads | None = None) -> list[str | None]:
        """Each line's product tax code: its price's, else that of the product of its meter (or of its parents)."""
        tenant = invoice.tenant
        products = (reads or _Reads(self.catalog, tenant)).products
        sub: Subscription | None
        plan: Plan | None
        try:
            sub = self.catalog.get_subscription(tenant, invoice.subscription)
            plan = self.catalog.get_plan(tenant, sub.plan)
        except NotFound:
            sub, plan = None, None
        codes: list[str | None] = []
        for line in invoice.lines:
            code = None
            if line.price is not None and sub is not None and plan is not None:
                code = _price_code(sub, plan, line.price, line.version)
            if code is None and line.meter is not None:
                code = _product_code(products, line.meter)
            codes.append(code)
        return codes


class _Reads:
    """What taxing reads of a tenant's catalog once for many drafts: the settings, the rates, the products."""

    def __init__(self, catalog: BillingCatalog, tenant: str) -> None:
        self.catalog, self.tenant = catalog, tenant

    @cached_property
    def settings(self) -> TaxSettings | None:
        return self.catalog.get_tax_settings(self.tenant)

    @cached_property
    def rates(self) -> list[TaxRate]:
        return self.catalog.list_tax_rates(self.tenant)

    @cached_property
    def products(self) -> dict[str, Product]:
        return {p.id: p for p in self.catalog.list_products(self.tenant)}


def _jurisdiction(customer: Customer) -> tuple[str, str]:
    address = customer.address
    return (address.country.strip(), address.region.strip()) if address is not None else ("", "")


def _reverse_charge(customer: Customer, country: str, settings: TaxSettings | None) -> str | None:
    """The invoice's note when ``customer`` is reverse charged, else None."""
    ids = ", ".join(f"{t.type} {t.value}" for t in customer.tax_ids)
    if customer.tax_exempt == "reverse":
        return (
            "Reverse charge: the customer accounts for the tax itself (customer "
            f"{customer.id!r}{f', tax id {ids}' if ids else ''}); no tax is charged."
        )
    if settings is not None and customer.tax_ids and country and country != settings.country:
        seller = ", ".join(f"{t.type} {t.value}" for t in settings.tax_ids)
        return (
            f"Reverse charge: a business sale across borders (seller in {settings.country}"
            f"{f', tax id {seller}' if seller else ''}; customer in {country}, tax id {ids}): the customer accounts "
            "for the tax itself; no tax is charged."
        )
    return None


def _price_code(sub: Subscription, plan: Plan, price_id: str, version: int | None) -> str | None:
    for override in sub.overrides:
        if override.id == price_id:
            return override.tax_code
    versions = sorted(plan.versions, key=lambda v: (v.version != version, -v.version))
    for v in versions:
        for price in v.prices:
            if price.id == price_id:
                return price.tax_code
    return None


def _product_code(products: dict[str, Product], meter: str) -> str | None:
    for product in sorted(products.values(), key=lambda p: p.id):
        if meter not in product.meters:
            continue
        seen: set[str] = set()
        current: Product | None = product
        while current is not None and current.id not in seen:
            if current.tax_code is not None:
                return current.tax_code
            seen.add(current.id)
            current = products.get(current.parent) if current.parent is not None else None
    return None
