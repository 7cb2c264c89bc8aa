"""Tax: the provider interface and its two providers, the arithmetic, and the taxing of an invoice at finalization.

- :mod:`~meter.money.tax.compute`: taxable bases, tax per line and rate (half to even), groups, a credit note's share;
- :mod:`~meter.money.tax.provider`: ``TaxProvider``, and ``CatalogTax``, the built-in provider (the catalog's rates);
- :mod:`~meter.money.tax.stripe_tax`: ``StripeTax``, Stripe Tax's calculation API through the ``stripe`` SDK;
- :mod:`~meter.money.tax.invoice`: ``Taxes``, who is taxed (exempt, reverse charge) and the invoice it gives.

The rates, the seller's settings and the customers' tax ids are the catalog's (:mod:`meter.catalog.tax`).
"""

from meter.money.tax.compute import credit_note_taxes
from meter.money.tax.invoice import Taxes, apply_tax, credit_note_tax
from meter.money.tax.provider import CatalogTax, TaxLine, TaxProvider, TaxRequest, TaxResult
from meter.money.tax.stripe_tax import StripeTax

__all__ = [
    "CatalogTax",
    "StripeTax",
    "TaxLine",
    "TaxProvider",
    "TaxRequest",
    "TaxResult",
    "Taxes",
    "apply_tax",
    "credit_note_tax",
    "credit_note_taxes",
]
