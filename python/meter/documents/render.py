"""What an invoice or credit note document shows, and its PDF (Typst, ``invoice.typ``).

Every value is formatted here, once, as text: the template only lays it out. Amounts are the invoice's own Decimals
(already rounded to the currency's minor unit by pricing and tax), printed with that many digits; nothing is computed
again. Dates are the customer's calendar days (its time zone): a service period ``[start, end)`` prints its first and
last day. The PDF's bytes depend only on what it shows: Typst's own fonts (never the machine's) and the finalization
time as the document's date.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import typst

from meter.billing.invoices import CreditNote, Invoice, InvoiceLine, LineDetail, TaxAmount
from meter.catalog.billing import BillingCatalog, Customer
from meter.catalog.documents import DocumentSettings, logo_format
from meter.catalog.tax import TaxId, TaxSettings
from meter.exceptions import NotFound
from meter.pricing.money import minor_units

__all__ = ["InvoiceDocuments", "credit_note_pdf", "invoice_pdf"]

TEMPLATE = Path(__file__).with_name("invoice.typ")


@dataclass(frozen=True)
class Parties:
    """Who a document is from and to, as they stood when it was issued."""

    settings: DocumentSettings
    seller_tax_ids: list[TaxId]
    customer: Customer | None


class InvoiceDocuments:
    """The documents the store writes at finalization and with each credit note, from the tenant's catalog."""

    def __init__(self, catalog: BillingCatalog) -> None:
        self.catalog = catalog

    def invoice(self, invoice: Invoice) -> bytes:
        return invoice_pdf(invoice, self._parties(invoice.tenant, invoice.customer))

    def credit_note(self, invoice: Invoice, note: CreditNote) -> bytes:
        return credit_note_pdf(note, invoice, self._parties(invoice.tenant, invoice.customer))

    def _parties(self, tenant: str, customer_id: str) -> Parties:
        tax: TaxSettings | None = self.catalog.get_tax_settings(tenant)
        try:
            customer: Customer | None = self.catalog.get_customer(tenant, customer_id)
        except NotFound:  # deleted since it was invoiced: its id is still printed
            customer = None
        return Parties(self.catalog.get_document_settings(tenant), tax.tax_ids if tax else [], customer)


def invoice_pdf(invoice: Invoice, parties: Parties) -> bytes:
    """The PDF of a finalized invoice: seller, buyer, dates, every line with its details, tax by rate, totals."""
    if invoice.number is None or invoice.finalized_at is None:
        raise ValueError(f"invoice {invoice.id} is a draft: only a finalized invoice has a document")
    text = _Text(invoice.currency, _zone(parties.customer))
    issued = invoice.finalized_at
    due = issued + timedelta(days=parties.settings.payment_terms_days)
    days = parties.settings.payment_terms_days
    totals = [("Subtotal", text.money(invoice.subtotal))]
    totals += [(_tax_label(t, text), text.money(t.amount)) for t in invoice.taxes]
    totals.append(("Total", text.money(invoice.total)))
    if invoice.credit_applied:
        totals.append(("Credit applied", text.money(-invoice.credit_applied)))
    if invoice.amount_due is not None:
        totals.append(("Amount due", text.money(invoice.amount_due)))
    document = {
        "title": "Invoice",
        "number": invoice.number,
        "facts": [
            ("Invoice number", invoice.number),
            ("Date of issue", text.day(issued)),
            ("Date due", text.day(due)),
            ("Service period", text.period(invoice.period_start, invoice.period_end)),
            ("Payment terms", "Due on receipt" if days == 0 else f"Net {days} days"),
        ],
        "lines": [_line(line, text) for line in invoice.lines],
        "totals": totals,
        "notes": [note for note in [invoice.tax_note] if note],
    }
    return _render(document, invoice.currency, invoice.customer, parties, issued)


def credit_note_pdf(note: CreditNote, invoice: Invoice, parties: Parties) -> bytes:
    """The PDF of a credit note: the invoice it credits, the amount, the tax it carries back, why."""
    text = _Text(invoice.currency, _zone(parties.customer))
    net = note.amount - (note.tax or Decimal(0))
    totals = [("Credited before tax", text.money(net))]
    totals += [(_tax_label(t, text), text.money(t.amount)) for t in note.taxes]
    totals.append(("Total credited", text.money(note.amount)))
    document = {
        "title": "Credit note",
        "number": note.number,
        "facts": [
            ("Credit note number", note.number),
            ("Date of issue", text.day(note.created_at)),
            ("Credits invoice", invoice.number or invoice.id),
            ("Service period", text.period(invoice.period_start, invoice.period_end)),
        ],
        "lines": [
            {
                "description": note.reason,
                "period": "",
                "quantity": "",
                "unit_price": "",
                "amount": text.money(net),
                "details": [],
            }
        ],  # fmt: skip
        "totals": totals,
        "notes": [f"This credit note reduces what invoice {invoice.number} asks for by {text.money(note.amount)}."],
    }
    return _render(document, invoice.currency, invoice.customer, parties, note.created_at)


def _render(document: dict[str, Any], currency: str, customer_id: str, parties: Parties, when: datetime) -> bytes:
    settings = parties.settings
    customer = parties.customer
    document |= {
        "currency": currency,
        "accent": settings.accent_color,
        "footer": settings.footer,
        "seller": {
            "name": settings.seller_name,
            "lines": settings.seller_address.lines() if settings.seller_address else [],
            "email": settings.seller_email or "",
            "tax_ids": [_tax_id(t) for t in parties.seller_tax_ids],
        },
        "buyer": {
            "name": customer.name if customer else customer_id,
            "lines": customer.address.lines() if customer and customer.address else [],
            "email": (customer.email or "") if customer else "",
            "tax_ids": [_tax_id(t) for t in customer.tax_ids] if customer else [],
            "id": customer_id,
        },
        "logo": None,
    }
    with tempfile.TemporaryDirectory(prefix="meter-document-") as tmp:
        root = Path(tmp)
        (root / "invoice.typ").write_bytes(TEMPLATE.read_bytes())
        if settings.logo is not None:
            name = f"logo.{logo_format(settings.logo)}"
            (root / name).write_bytes(settings.logo)
            document["logo"] = name
        (root / "document.json").write_bytes(msgspec.json.encode(document))
        pdf = typst.compile(
            str(root / "invoice.typ"),
            root=str(root),
            ignore_system_fonts=True,
            timestamp=int(when.timestamp()),
            format="pdf",
        )
    assert isinstance(pdf, bytes)
    return pdf


def _line(line: InvoiceLine, text: _Text) -> dict[str, Any]:
    quantity = line.billed_quantity if line.billed_quantity is not None else line.quantity
    single = line.details[0] if len(line.details) == 1 else None
    return {
        "description": line.description,
        "period": text.period(line.period_start, line.period_end),
        "quantity": text.quantity(quantity) if quantity is not None else "",
        "unit_price": text.unit_price(single.unit_price) if single is not None and single.units else "",
        "amount": text.money(line.amount),
        # A line priced in several parts (tiers, a matrix's cells, a flat fee) shows each.
        "details": [_detail(d, text) for d in line.details] if len(line.details) > 1 else [],
    }


def _detail(detail: LineDetail, text: _Text) -> str:
    what = detail.component
    if detail.tier is not None:
        upper = "and above" if detail.tier_to is None else f"to {text.quantity(detail.tier_to)}"
        what = f"tier {detail.tier} ({text.quantity(detail.tier_from or Decimal(0))} {upper})"
    elif detail.combination:
        what = detail.combination
    if detail.flat_fee is not None and not detail.units:
        return f"{what}: flat fee {text.money(detail.flat_fee)}"
    units, price = text.quantity(detail.units), text.unit_price(detail.unit_price)
    return f"{what}: {units} × {price} = {text.money(detail.subtotal)}"


def _tax_label(tax: TaxAmount, text: _Text) -> str:
    where = f"{tax.country}-{tax.region}" if tax.region else tax.country
    included = ", included" if tax.inclusive else ""
    return f"{tax.name} {text.quantity(tax.percentage)} % ({where}{included}) on {text.money(tax.taxable)}"


def _tax_id(tax_id: TaxId) -> str:
    return f"{tax_id.type.replace('_', ' ').upper()} {tax_id.value}"


def _zone(customer: Customer | None) -> ZoneInfo:
    try:
        return ZoneInfo(customer.timezone if customer else "UTC")
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


@dataclass(frozen=True)
class _Text:
    """How a document writes numbers and days: amounts in the currency's minor unit, days in the customer's zone."""

    currency: str
    zone: ZoneInfo

    def money(self, amount: Decimal) -> str:
        return f"{amount:,.{minor_units(self.currency)}f}"

    def unit_price(self, price: Decimal) -> str:
        # A unit price keeps the digits it has (0.0025 per token), at least the currency's.
        places = max(minor_units(self.currency), -min(0, int(price.normalize().as_tuple().exponent)))
        return f"{price:,.{places}f}"

    def quantity(self, quantity: Decimal) -> str:
        normal = quantity.normalize()
        places = max(0, -int(normal.as_tuple().exponent))
        return f"{normal:,.{places}f}"

    def day(self, moment: datetime) -> str:
        return f"{moment.astimezone(self.zone):%d %b %Y}"

    def period(self, start: datetime, end: datetime) -> str:
        """``[start, end)`` as its first and last day."""
        last = end - timedelta(microseconds=1)
        return f"{self.day(start)} – {self.day(last)}"
