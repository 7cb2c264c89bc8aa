"""Pricing: rates usage against catalog prices exactly (Decimal and scaled Int128, never floats), with polars.

Pure: frames in, frames out. Pricing reads no files, no store and no engine, knows no paths and no time zones; what
a period's usage is and which charges a subscription has are billing's business (:mod:`meter.billing`), which hands
pricing frames and gets frames back.

:func:`rate` turns the charges of a period (:func:`charges_and_prices`, or :func:`price_frame` and a frame of
charges), the period's quantities and, for per-event percentages, the events' amounts into one exact amount per
charge and the details that explain it. The modules, from the bottom up:

- :mod:`~meter.pricing.exact`: exact decimal arithmetic on scaled Int128 columns, with Float64 overflow shadows;
- :mod:`~meter.pricing.money`: each currency's minor unit and half-even rounding, for one value or a column;
- :mod:`~meter.pricing.schema`: the frames' schemas and the catalog field (and limit) behind each number column;
- :mod:`~meter.pricing.price_table`: a ``prices`` frame checked against the catalog's price rules, as tables;
- :mod:`~meter.pricing.charges`: the frames built from the catalog's ``Price`` structs;
- :mod:`~meter.pricing.models` and :mod:`~meter.pricing.rating`: one function per model, and the rating of them all;
- :mod:`~meter.pricing.text`: columns written as text exactly as Python and msgspec write one value;
- :mod:`~meter.pricing.steps`: named, timed steps (the benchmark's breakdown of an invoice run);
- :mod:`~meter.pricing.errors`: the one way pricing refuses its input.

Rounding: nothing is rounded before a charge's ``amount``, which is its exact amount rounded once, half to even, to
the currency's minor unit (:mod:`meter.pricing.money`). Sums of money are sums of rounded amounts.
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
