"""Pricing: rates usage against catalog prices exactly (Decimal and scaled Int128, never floats), with polars.

It turns usage into invoices, and reads only the Parquet export.

:func:`rate` turns the charges of a period (:func:`charges_and_prices`, or :func:`price_frame` and a frame of
charges), the period's quantities and, for per-event percentages, the events' amounts into one exact amount per
charge and the details that explain it; :mod:`meter.pricing.money` rounds to each currency's minor unit.
:mod:`~meter.billing.usage` reads a period's quantities from the export, :mod:`~meter.billing.cycles` gives billing
cycles and proration, :mod:`~meter.billing.invoicing` builds invoices, :mod:`~meter.billing.invoices` keeps them
through their lifecycle and :mod:`~meter.billing.invoicer` ties these to a data directory for the server and CLI.
"""

from meter.pricing.charges import charges_and_prices, combination_expr, combination_key, price_frame
from meter.pricing.money import minor_units, round_half_even, round_to_minor_unit
from meter.pricing.rating import Rated, rate
from meter.pricing.schema import CHARGES_SCHEMA, PRICE_SCHEMA

__all__ = [
    "CHARGES_SCHEMA",
    "PRICE_SCHEMA",
    "Rated",
    "charges_and_prices",
    "combination_expr",
    "combination_key",
    "minor_units",
    "price_frame",
    "rate",
    "round_half_even",
    "round_to_minor_unit",
]
