"""The ``prices`` frame read once per rating: checked, numbers as scaled Int128, tiers and matrix entries as tables.

Row ``i`` of :attr:`PriceTable.params` is the price whose ``price_idx`` is ``i``, so a charge finds its price's
parameters by position (a gather), without a join. Every check here runs on the handful of prices, not on the
charges: that is why rating takes prices apart from charges.

The checks are the catalog's price rules (:mod:`meter.catalog.prices`: models, parameters, enumerations, ordered
bounds, tiers) and limits (:mod:`meter.catalog.types`, through :func:`meter.pricing.schema.limit_of`), applied to a
whole frame: a frame built by :func:`~meter.pricing.charges.price_frame` passes them by construction, one built by
hand is held to the same rules. Nothing here rounds; a number that does not fit 9 decimals never gets this far.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from meter.catalog.prices import (
    MODELS,
    ORDERED,
    PACKAGE_SIZE_RULE,
    PER_EVENT_ALLOWANCE_RULE,
    PERCENT_PER,
    ROUNDINGS,
    TIERS_RULE,
    MatrixEntry,
)
from meter.catalog.types import Limit
from meter.pricing.errors import fail
from meter.pricing.exact import DECIMAL_PLACES, to_scaled
from meter.pricing.money import minor_units_expr
from meter.pricing.schema import NEEDS, NUMBER_FIELDS, PRICE_SCHEMA, TIER_FIELDS, limit_of

__all__ = ["MODEL", "PRICE_SCALE", "PriceTable", "prepare_prices", "scaled_limit"]

MODEL = pl.Enum(MODELS)
#: Quantities and prices count 10^-9.
PRICE_SCALE = DECIMAL_PLACES
_ONE = 10**PRICE_SCALE
_NUMBERS = tuple(NUMBER_FIELDS)
_CODE = "invalid_price"


def scaled_limit(limit: Limit) -> int:
    """The largest value ``limit`` allows, as a count of 10^-9.

    Amounts stay below 10^18 (10^27 - 1 scaled), so that they still fit 38 digits at the amount scale of 10^-20; unit
    prices below 10^27, so that details can show them at the rate scale of 10^-11.
    """
    top = int(limit.maximum.scaleb(PRICE_SCALE))
    return top if limit.inclusive else top - 1


_ENTRY_LIMIT = limit_of(MatrixEntry, "unit_price")
_MAX_ENTRY_PRICE = scaled_limit(_ENTRY_LIMIT)


def _limit(column: str) -> tuple[int, str]:
    """A number column's largest scaled value and the rule's text, from the catalog field it holds."""
    limit = limit_of(*NUMBER_FIELDS[column])
    return scaled_limit(limit), f"{column} must be {limit.describe()}"


@dataclass(frozen=True)
class PriceTable:
    """The prices as three tables; numbers are Int128 counts of 10^-9.

    ``params``: one row per price (``price_idx`` = row); ``tiers``: ``price_idx``, ``tier`` (from 1), ``start``,
    ``up_to``, ``unit_price``, ``flat_fee``; ``entries``: ``price_idx``, ``combination``, ``rank`` (its position in
    the combinations' text order), ``unit_price``.
    """

    params: pl.DataFrame
    tiers: pl.DataFrame
    entries: pl.DataFrame

    def of(self, name: str, rows: pl.DataFrame) -> pl.Series:
        """The parameter ``name`` of each row's price (``rows`` has a ``price_idx`` column)."""
        return self.params.get_column(name).gather(rows.get_column("price_idx"))


def prepare_prices(prices: pl.DataFrame) -> PriceTable:
    """Checks ``prices`` (:data:`~meter.pricing.schema.PRICE_SCHEMA`) and turns it into a :class:`PriceTable`."""
    for name, dtype in PRICE_SCHEMA.items():
        if name not in prices.columns:
            fail(f"prices has no column {name!r}: build it with price_frame()", _CODE)
        if prices.schema[name] != dtype:
            fail(
                f"prices column {name!r} must be {dtype}; got {prices.schema[name]}: build it with price_frame()", _CODE
            )
    ids = prices.get_column("price_id")
    if ids.has_nulls() or ids.n_unique() != prices.height:
        repeated = prices.filter(pl.col("price_id").is_duplicated() | pl.col("price_id").is_null())
        fail(f"price ids must be unique and not null; {repeated['price_id'][0]!r} is not", _CODE)

    checked = prices.with_row_index("price_idx").with_columns(
        *(to_scaled(pl.col(name), PRICE_SCALE) for name in _NUMBERS),
        per_event=(pl.col("percent_per") == "event").fill_null(False),
    )
    problems = checked.select("price_id", problem=_problem()).filter(pl.col("problem").is_not_null())
    if problems.height:
        fail(f"price {problems['price_id'][0]!r}: {problems['problem'][0]}", _CODE)

    params = checked.select(
        "price_id",
        "currency",
        pl.col("model").cast(MODEL),
        *_NUMBERS,
        "per_event",
        digits=minor_units_expr(pl.col("currency")),
        package_up=pl.col("package_rounding") == "up",
    )
    return PriceTable(params=params, tiers=_tiers(checked), entries=_entries(checked))


def _problem() -> pl.Expr:
    """The first thing wrong with a price row, as text (null when nothing is)."""
    model, col = pl.col("model"), pl.col
    checks: list[tuple[pl.Expr, pl.Expr | str]] = [
        (
            model.is_null() | ~model.is_in(MODELS),
            pl.format("model must be one of {}; got {}", pl.lit(", ".join(MODELS)), model.fill_null("null")),
        ),
        (~col("currency").fill_null("").str.contains("^[A-Z]{3}$"), 'currency must be an ISO 4217 code such as "USD"'),
    ]
    checks += [
        ((model == name) & col(field).is_null(), f"a {name} price needs {field}")
        for name, fields in NEEDS.items()
        for field in fields
    ]
    checks += [((col(name) < 0) | (col(name) > top), message) for name in _NUMBERS for top, message in [_limit(name)]]
    checks += [
        (col("free_allowance").is_null(), "free_allowance must be a number (0 for none)"),
        ((model == "package") & (col("package_size") == 0), PACKAGE_SIZE_RULE),
        (
            (model == "package") & ~col("package_rounding").is_in(ROUNDINGS),
            f"package_rounding must be one of {', '.join(ROUNDINGS)}",
        ),
        (
            (model == "percentage") & ~col("percent_per").is_in(PERCENT_PER),
            f"percent_per must be one of {', '.join(PERCENT_PER)}",
        ),
        *((col(lower) > col(upper), f"{lower} is above {upper}") for lower, upper in ORDERED),
        ((model == "percentage") & col("per_event") & (col("free_allowance") > 0), PER_EVENT_ALLOWANCE_RULE),
    ]
    # The first failing check's message: coalesce keeps the first non-null.
    return pl.coalesce(
        [
            pl.when(failed.fill_null(False)).then(message if isinstance(message, pl.Expr) else pl.lit(message))
            for failed, message in checks
        ]
    )


def _tiers(prices: pl.DataFrame) -> pl.DataFrame:
    """The graduated and volume prices' tiers, one row each, checked for the structure the arithmetic relies on."""
    tiered = prices.filter(pl.col("model").is_in(["graduated", "volume"]))
    empty = tiered.filter(pl.col("tiers").list.len() == 0)
    if empty.height:
        fail(f"price {empty['price_id'][0]!r}: a {empty['model'][0]} price needs one or more tiers", _CODE)
    field = pl.col("tiers").struct.field
    tiers = (
        tiered.select(
            "price_idx",
            "price_id",
            "tiers",
            count=pl.col("tiers").list.len(),
            tier=pl.int_ranges(1, pl.col("tiers").list.len() + 1, dtype=pl.UInt32),
        )
        .explode("tiers", "tier")
        .select(
            "price_idx",
            "price_id",
            "count",
            "tier",
            start=to_scaled(field("start"), PRICE_SCALE),
            up_to=to_scaled(field("up_to"), PRICE_SCALE),
            unit_price=to_scaled(field("unit_price"), PRICE_SCALE),
            flat_fee=to_scaled(field("flat_fee"), PRICE_SCALE),
        )
    )
    # Exploded tiers of one price are adjacent and in order, so the previous row is the previous tier.
    first, last = pl.col("tier") == 1, pl.col("tier") == pl.col("count")
    broken = tiers.filter(
        (first & (pl.col("start") != 0))
        | (~first & (pl.col("start") != pl.col("up_to").shift(1)))
        | (last & pl.col("up_to").is_not_null())
        | (~last & pl.col("up_to").is_null())
        | (pl.col("up_to") <= pl.col("start"))
        | pl.any_horizontal(pl.col("start", "unit_price", "flat_fee").is_null())
        | pl.any_horizontal(
            (pl.col(name) < 0) | (pl.col(name) > scaled_limit(limit_of(*field))) for name, field in TIER_FIELDS.items()
        )
    )
    if broken.height:
        limits = "; ".join(f"{name} {limit_of(*field).describe()}" for name, field in TIER_FIELDS.items())
        fail(
            f"price {broken['price_id'][0]!r}: tier {broken['tier'][0]} breaks the rules of tiers ({TIERS_RULE}; "
            f"{limits})",
            _CODE,
        )
    return tiers.drop("price_id", "count")


def _entries(prices: pl.DataFrame) -> pl.DataFrame:
    """The matrix prices' entries, one row each, with ``rank``: the order in which a free allowance is taken."""
    entries = (
        prices.filter(pl.col("model") == "matrix")
        .select("price_idx", "price_id", "matrix")
        .explode("matrix")
        .drop_nulls("matrix")
        .select(
            "price_idx",
            "price_id",
            combination=pl.col("matrix").struct.field("combination"),
            unit_price=to_scaled(pl.col("matrix").struct.field("unit_price"), PRICE_SCALE),
        )
        .sort("price_idx", "combination")
    )
    broken = entries.filter(
        pl.struct("price_idx", "combination").is_duplicated()
        | pl.col("combination").is_null()
        | ~pl.col("unit_price").is_between(0, _MAX_ENTRY_PRICE).fill_null(False)
    )
    if broken.height:
        fail(
            f"price {broken['price_id'][0]!r}: matrix entry {broken['combination'][0]} is repeated, or lacks a "
            f"combination or a unit price {_ENTRY_LIMIT.describe()}: keep one entry per combination",
            _CODE,
        )
    rank = pl.int_range(pl.len(), dtype=pl.UInt32).over("price_idx")
    return entries.select("price_idx", "combination", "unit_price", rank=rank)
