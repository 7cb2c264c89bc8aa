"""The frames rating reads, as schemas: what each column is, and which catalog field and kind it comes from.

:mod:`~meter.pricing.charges` builds frames in these schemas from the catalog's ``Price`` structs, and
:mod:`~meter.pricing.price_table` checks a frame against them before rating reads it (a caller may build ``prices``
by hand). Both import this module and neither imports the other's caller: the schemas used to live in ``charges``,
which then needed ``price_table`` (to check what it built) while ``price_table`` needed ``charges`` (for the schema).

Invariants: every number is a :data:`DECIMAL` (38 digits, 9 after the point, the usage export's ``value`` type), so
nothing is ever cut when a catalog number becomes a column; each number column maps to exactly one catalog field
(:data:`NUMBER_FIELDS`), whose kind (quantity, unit price, amount, percent; :mod:`meter.catalog.types`) gives the
limits rating enforces on a hand-built frame, so those limits are written once, in the catalog.
"""

from __future__ import annotations

from functools import cache

import msgspec
import polars as pl
from msgspec import inspect as mi

from meter.catalog.prices import PARAMETERS, Package, Percentage, Price, Tier
from meter.catalog.types import LIMITS, Limit
from meter.pricing.exact import DECIMAL_PLACES

__all__ = [
    "CHARGES_SCHEMA",
    "DECIMAL",
    "NEEDS",
    "NUMBER_FIELDS",
    "PRICE_SCHEMA",
    "TIER_FIELDS",
    "limit_of",
]

#: Every quantity and price: 38 digits, 9 after the point (the usage export's ``value`` type).
DECIMAL = pl.Decimal(38, DECIMAL_PLACES)
_TIER = pl.Struct({"start": DECIMAL, "up_to": DECIMAL, "unit_price": DECIMAL, "flat_fee": DECIMAL})
_MATRIX_ENTRY = pl.Struct({"combination": pl.String, "unit_price": DECIMAL})

PRICE_SCHEMA: dict[str, pl.DataType] = {
    "price_id": pl.String(),
    "currency": pl.String(),
    "model": pl.String(),
    "amount": DECIMAL,
    "unit_price": DECIMAL,
    "tiers": pl.List(_TIER),
    "package_size": DECIMAL,
    "package_price": DECIMAL,
    "package_rounding": pl.String(),
    "percent": DECIMAL,
    "percent_per": pl.String(),
    "min_fee": DECIMAL,
    "max_fee": DECIMAL,
    "matrix": pl.List(_MATRIX_ENTRY),
    "free_allowance": DECIMAL,
    "minimum": DECIMAL,
    "maximum": DECIMAL,
}
CHARGES_SCHEMA: dict[str, pl.DataType] = {"charge": pl.String(), "price_id": pl.String(), "proration": DECIMAL}

#: Each number column of ``prices`` and the catalog field it holds.
NUMBER_FIELDS: dict[str, tuple[type[msgspec.Struct], str]] = {
    "amount": (Price, "amount"),
    "unit_price": (Price, "unit_price"),
    "package_size": (Package, "size"),
    "package_price": (Package, "price"),
    "percent": (Percentage, "percent"),
    "min_fee": (Percentage, "min_fee"),
    "max_fee": (Percentage, "max_fee"),
    "free_allowance": (Price, "free_allowance"),
    "minimum": (Price, "minimum"),
    "maximum": (Price, "maximum"),
}
#: Each number field of a tier struct in ``prices.tiers`` and the catalog field it holds.
TIER_FIELDS: dict[str, tuple[type[msgspec.Struct], str]] = {
    "start": (Tier, "start"),
    "up_to": (Tier, "up_to"),
    "unit_price": (Tier, "unit_price"),
    "flat_fee": (Tier, "flat_fee"),
}
# The columns that carry each catalog parameter field (PARAMETERS names the field each model needs).
_COLUMNS: dict[str, tuple[str, ...]] = {
    "amount": ("amount",),
    "unit_price": ("unit_price",),
    "tiers": ("tiers",),
    "package": ("package_size", "package_price", "package_rounding"),
    "percentage": ("percent", "percent_per"),
    "matrix": ("matrix",),
}
#: The columns each model needs (not null), from the catalog's rule of which parameter each model takes.
NEEDS: dict[str, tuple[str, ...]] = {model: _COLUMNS[field] for model, field in PARAMETERS.items()}


@cache
def limit_of(struct: type[msgspec.Struct], field: str) -> Limit:
    """The catalog's limit on ``struct.field`` (its kind's, as :mod:`meter.catalog.types` annotates it)."""
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    [found] = [f.type for f in info.fields if f.name == field]
    for t in found.types if isinstance(found, mi.UnionType) else (found,):
        if isinstance(t, mi.Metadata) and (kind := (t.extra or {}).get("catalog")) in LIMITS:
            return LIMITS[kind]
    raise TypeError(f"{struct.__name__}.{field} has no catalog number kind")
