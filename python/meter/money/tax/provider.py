"""The tax provider interface, and the built-in provider: the catalog's tax rates.

A provider is asked for the tax of one invoice's lines (:class:`TaxRequest`: each line's taxable base and product tax
code, the customer, the seller, the date the rates are those of) and answers the tax per line and per rate
(:class:`TaxResult`). Whether the customer is taxed at all (exempt, reverse charged) is decided before a provider is
asked (:mod:`meter.money.tax.invoice`); a provider only computes.

:class:`CatalogTax` picks, for each line, the rates in force at the request's date whose jurisdiction holds the
customer's billing address (its country, and its region for a regional rate): those of the line's tax code when the
jurisdiction has any, else those without a code. Several rates on one line add up (a state's and a city's sales tax).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from meter.billing.invoices import Invoice, LineTax, TaxAmount
from meter.catalog.billing import Customer
from meter.catalog.tax import TaxRate, TaxSettings
from meter.money.tax.compute import Base, describe, group_taxes, line_taxes

__all__ = ["CatalogTax", "TaxLine", "TaxProvider", "TaxRequest", "TaxResult"]


@dataclass(frozen=True)
class TaxLine:
    """One line to tax: its index in ``Invoice.lines``, its taxable base (as priced), its product tax code."""

    line: int
    amount: Decimal
    tax_code: str | None
    description: str


@dataclass(frozen=True)
class TaxRequest:
    """What a provider computes the tax of: ``lines`` of ``invoice`` for ``customer`` (country and region known)."""

    invoice: Invoice
    customer: Customer
    country: str
    region: str
    seller: TaxSettings | None
    lines: Sequence[TaxLine]
    #: The tax point: rates in force at this instant apply (the invoice's finalization).
    date: datetime
    #: For a provider called over the network: the same request always carries the same key.
    idempotency_key: str


@dataclass(frozen=True)
class TaxResult:
    """The tax per line and per rate; ``note`` says what the invoice should tell about it (or None)."""

    line_taxes: list[LineTax] = field(default_factory=list)
    taxes: list[TaxAmount] = field(default_factory=list)
    note: str | None = None


class TaxProvider(Protocol):
    """Computes the tax of an invoice's lines; ``name`` is what invoices and errors call it."""

    name: str

    def calculate(self, request: TaxRequest) -> TaxResult: ...


class CatalogTax:
    """The built-in provider: the tenant's tax rates from the catalog (``rates``, read at finalization)."""

    name = "catalog"

    def __init__(self, rates: Sequence[TaxRate]) -> None:
        self.rates = list(rates)

    def rates_for(self, country: str, region: str, tax_code: str | None, at: datetime) -> list[TaxRate]:
        """The rates of a line with ``tax_code`` for an address in ``country``/``region`` at ``at``."""
        here = [r for r in self.rates if r.covers(country, region) and r.in_force(at)]
        if tax_code is not None and any(r.tax_code == tax_code for r in here):
            return [r for r in here if r.tax_code == tax_code]
        return [r for r in here if r.tax_code is None]

    def calculate(self, request: TaxRequest) -> TaxResult:
        currency = request.invoice.currency
        found: list[LineTax] = []
        used: dict[str, TaxAmount] = {}
        for line in request.lines:
            rates = self.rates_for(request.country, request.region, line.tax_code, request.date)
            used.update((r.id, describe(r)) for r in rates)
            found += line_taxes(Base(line.line, line.amount), rates, currency)
        note = None
        if not used and request.lines:
            where = request.country + (f"-{request.region}" if request.region else "")
            note = (
                f"No tax: no tax rate of the catalog applies in {where} on {request.date:%Y-%m-%d} "
                "(the customer's billing address)."
            )
        return TaxResult(found, group_taxes(found, used, currency), note)
