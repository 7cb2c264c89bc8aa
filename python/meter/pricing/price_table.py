"""The ``prices`` frame read once per rating: checked, numbers as scaled Int128, tiers and matrix entries as tables.

Row ``i`` of :attr:`PriceTable.params` is the price whose ``price_idx`` is ``i``, so a charge finds its price's
parameters by position (a gather), without a join. Every check here runs on the handful of prices, not on the
charges: that is why rating takes prices apart from charges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import polars as pl

from meter.exceptions import InvalidInput
from meter.pricing.charges import PRICE_SCHEMA
from meter.pricing.exact import LIMIT, to_scaled
from meter.pricing.money import minor_units_expr

__all__ = ["MAX_AMOUNT", "MAX_UNIT_PRICE", "MODEL", "MODELS", "PRICE_SCALE", "PriceTable", "prepare_prices"]

MODELS = ("flat", "per_unit", "graduated", "volume", "package", "percentage", "matrix")
MODEL = pl.Enum(MODELS)
#: Quantities and prices count 10^-9.
PRICE_SCALE = 9
#: The largest amount-like price (a flat amount, fee, bound or tier flat fee), scaled: below 10^18, so that it still
#: fits 38 digits at the amount scale of 10^-20.
MAX_AMOUNT = LIMIT // 10**11
#: The largest unit price (per unit, tier unit, package or matrix unit), scaled: below 10^27, so that details can show
#: it at the rate scale of 10^-11.
MAX_UNIT_PRICE = LIMIT // 100
_ONE = 10**PRICE_SCALE
_NUMBERS = (
    "amount",
    "unit_price",
    "package_size",
    "package_price",
    "percent",
    "min_fee",
    "max_fee",
    "free_allowance",
    "minimum",
    "maximum",
)
_AMOUNT_LIKE = ("amount", "min_fee", "max_fee", "minimum", "maximum")
# What each model needs besides the common fields; validate_price checks the same for prices built from the catalog.
_NEEDS = {
    "flat": ["amount"],
    "per_unit": ["unit_price"],
    "graduated": ["tiers"],
    "volume": ["tiers"],
    "package": ["package_size", "package_price", "package_rounding"],
    "percentage": ["percent", "percent_per"],
    "matrix": ["matrix"],
}


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
    """Checks ``prices`` (:data:`~meter.pricing.charges.PRICE_SCHEMA`) and turns it into a :class:`PriceTable`."""
    for name, dtype in PRICE_SCHEMA.items():
        if name not in prices.columns:
            _fail(f"prices has no column {name!r}: build it with price_frame()")
        if prices.schema[name] != dtype:
            _fail(f"prices column {name!r} must be {dtype}; got {prices.schema[name]}: build it with price_frame()")
    ids = prices.get_column("price_id")
    if ids.has_nulls() or ids.n_unique() != prices.height:
        repeated = prices.filter(pl.col("price_id").is_duplicated() | pl.col("price_id").is_null())
        _fail(f"price ids must be unique and not null; {repeated['price_id'][0]!r} is not")

    checked = prices.with_row_index("price_idx").with_columns(
        *(to_scaled(pl.col(name), PRICE_SCALE) for name in _NUMBERS),
        per_event=(pl.col("percent_per") == "event").fill_null(False),
    )
    problems = checked.select("price_id", problem=_problem()).filter(pl.col("problem").is_not_null())
    if problems.height:
        _fail(f"price {problems['price_id'][0]!r}: {problems['problem'][0]}")

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
        for name, fields in _NEEDS.items()
        for field in fields
    ]
    checks += [(col(name) < 0, f"{name} must be 0 or more") for name in _NUMBERS]
    checks += [(col(name) > MAX_AMOUNT, f"{name} must be below 10^18") for name in _AMOUNT_LIKE]
    checks += [(col(name) > MAX_UNIT_PRICE, f"{name} must be below 10^27") for name in ("unit_price", "package_price")]
    checks += [
        (col("free_allowance").is_null(), "free_allowance must be a number (0 for none)"),
        (col("percent") > 100 * _ONE, "percent must be between 0 and 100"),
        ((model == "package") & (col("package_size") == 0), "package_size must be above 0"),
        (
            (model == "package") & ~col("package_rounding").is_in(["up", "down"]),
            'package_rounding must be "up" or "down"',
        ),
        (
            (model == "percentage") & ~col("percent_per").is_in(["event", "period"]),
            'percent_per must be "event" or "period"',
        ),
        (col("minimum") > col("maximum"), "minimum is above maximum"),
        (col("min_fee") > col("max_fee"), "min_fee is above max_fee"),
        (
            (model == "percentage") & col("per_event") & (col("free_allowance") > 0),
            "a free allowance cannot be taken from a percentage charged per event: remove it",
        ),
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
        _fail(f"price {empty['price_id'][0]!r}: a {empty['model'][0]} price needs one or more tiers")
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
        | (pl.col("unit_price") < 0)
        | (pl.col("unit_price") > MAX_UNIT_PRICE)
        | (pl.col("flat_fee") < 0)
        | (pl.col("flat_fee") > MAX_AMOUNT)
    )
    if broken.height:
        _fail(
            f"price {broken['price_id'][0]!r}: tier {broken['tier'][0]} breaks the rules of tiers (the first starts "
            "at 0, each starts where the previous ends, only the last is unbounded, unit prices are between 0 and "
            "10^27 and flat fees between 0 and 10^18)"
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
        | ~pl.col("unit_price").is_between(0, MAX_UNIT_PRICE).fill_null(False)
    )
    if broken.height:
        _fail(
            f"price {broken['price_id'][0]!r}: matrix entry {broken['combination'][0]} is repeated, or lacks a "
            "combination or a unit price between 0 and 10^27: keep one entry per combination"
        )
    rank = pl.int_range(pl.len(), dtype=pl.UInt32).over("price_idx")
    return entries.select("price_idx", "combination", "unit_price", rank=rank)


def _fail(message: str) -> NoReturn:
    raise InvalidInput(message, code="invalid_price")
