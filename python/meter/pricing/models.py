"""One function per pricing model, each turning its charges into detail rows (see :mod:`meter.pricing.rating`).

Everything here is Int128. Quantities and prices count ``10^-9`` (``PRICE_SCALE``), a detail's ``unit_price`` counts
``10^-11`` (so a percentage's rate, ``percent / 100``, is exact there too) and subtotals count ``10^-20``
(:data:`AMOUNT_SCALE`): the product of a quantity and a price (scale 18) is exact once multiplied by 100, and a
percentage of an amount (9 + 9 + 2 decimals) is exact with no multiplication at all. Each row carries its
subtotal's Float64 shadow for the overflow check (:mod:`meter.pricing.exact`).

A row of every detail reads ``subtotal = units × unit_price + flat_fee``, except a percentage whose fee was raised to
``min_fee`` or cut to ``max_fee`` (its ``raised_to_min_fee`` or ``cut_to_max_fee`` then says so).

The input ``base`` has one row per charge, row ``i`` being the charge whose ``_row`` is ``i``: ``_row``,
``price_idx`` (its row in the :class:`~meter.pricing.price_table.PriceTable`), ``model``, ``proration``,
``quantity`` and ``billable`` (Int128, after the free allowance).
"""

from __future__ import annotations

import polars as pl

from meter.exceptions import ValueOverflow
from meter.pricing.errors import fail
from meter.pricing.exact import LIMIT, SHADOW_LIMIT, from_scaled, int128, out_of_range, shadow
from meter.pricing.price_table import PRICE_SCALE, PriceTable

__all__ = [
    "AMOUNT_SCALE",
    "COMPONENT",
    "DETAIL_COLUMNS",
    "RATE_SCALE",
    "flat",
    "matrix",
    "package",
    "per_unit",
    "percentage_events",
    "percentage_period",
    "tiered",
]

AMOUNT_SCALE = 20
#: The scale of a detail's unit price: 11, so that a percentage's rate per unit of amount is exact.
RATE_SCALE = 11
COMPONENT = pl.Enum(["flat", "per_unit", "tier", "package", "percentage", "matrix"])
# A price (scale 9) as an amount (scale 20) or a rate (scale 11); a product of two scale-9 numbers as an amount.
_PRICE_TO_AMOUNT = 10 ** (AMOUNT_SCALE - PRICE_SCALE)
_PRICE_TO_RATE = 10 ** (RATE_SCALE - PRICE_SCALE)
_PRODUCT_TO_AMOUNT = 10 ** (AMOUNT_SCALE - 2 * PRICE_SCALE)

#: The detail columns and the scale of each decimal one (None: not a decimal). A part also carries ``_row``, and
#: ``_subtotal`` (Int128) with its ``_shadow`` for the sums and the overflow check, which rating drops.
DETAIL_COLUMNS: dict[str, tuple[pl.DataType, int | None]] = {
    "component": (COMPONENT, None),
    "tier": (pl.UInt32(), None),
    "combination": (pl.String(), None),
    "units": (pl.Decimal(38, PRICE_SCALE), PRICE_SCALE),
    "free_units": (pl.Decimal(38, PRICE_SCALE), PRICE_SCALE),
    "unit_price": (pl.Decimal(38, RATE_SCALE), RATE_SCALE),
    "flat_fee": (pl.Decimal(38, PRICE_SCALE), PRICE_SCALE),
    "events": (pl.UInt32(), None),
    "raised_to_min_fee": (pl.UInt32(), None),
    "cut_to_max_fee": (pl.UInt32(), None),
    "subtotal": (pl.Decimal(38, AMOUNT_SCALE), AMOUNT_SCALE),
}


def flat(base: pl.DataFrame, prices: PriceTable) -> pl.DataFrame:
    """``amount × proration``, shown as ``proration`` units at ``amount`` each."""
    charges = base.filter(pl.col("model") == "flat")
    charges = charges.with_columns(amount=prices.of("amount", charges))
    subtotal, approximate = _product("amount", "proration", _PRODUCT_TO_AMOUNT)
    return _details(
        charges, "flat", units=pl.col("proration"), unit_price=_as_rate("amount"), subtotal=subtotal, shadow=approximate
    )


def per_unit(base: pl.DataFrame, prices: PriceTable) -> pl.DataFrame:
    charges = base.filter(pl.col("model") == "per_unit")
    charges = charges.with_columns(unit_price=prices.of("unit_price", charges))
    subtotal, approximate = _product("billable", "unit_price", _PRODUCT_TO_AMOUNT)
    return _details(
        charges,
        "per_unit",
        units=pl.col("billable"),
        unit_price=_as_rate("unit_price"),
        subtotal=subtotal,
        shadow=approximate,
    )


def package(base: pl.DataFrame, prices: PriceTable) -> pl.DataFrame:
    """Started (``up``) or completed (``down``) packages of ``package_size`` units, shown as units at the price."""
    charges = base.filter(pl.col("model") == "package")
    charges = charges.with_columns(
        size=prices.of("package_size", charges),
        price=prices.of("package_price", charges),
        up=prices.of("package_up", charges),
    )
    billable, size = pl.col("billable"), pl.col("size")
    # Both count 10^-9, so their quotient counts packages. Ceiling as -floor(-b / s): b + s - 1 could overflow.
    packages = pl.when(pl.col("up")).then(int128(0) - (int128(0) - billable) // size).otherwise(billable // size)
    charges = charges.with_columns(packages=packages)
    if charges.select((pl.col("packages") > LIMIT // 10**PRICE_SCALE).any()).item():
        raise ValueOverflow("a charge counts more packages than pricing computes exactly (10^29): check its usage")
    subtotal, approximate = _product("packages", "price", _PRICE_TO_AMOUNT)
    return _details(
        charges,
        "package",
        units=pl.col("packages") * int128(10**PRICE_SCALE),
        unit_price=_as_rate("price"),
        subtotal=subtotal,
        shadow=approximate,
    )


def tiered(base: pl.DataFrame, prices: PriceTable) -> pl.DataFrame:
    """Graduated (every touched tier) and volume (the tier of the last unit) charges, one row per tier charged.

    A tier ``[start, up_to)`` holds the units between those bounds, so ``billable`` units put
    ``min(max(billable - start, 0), up_to - start)`` of them in a graduated tier, and a volume price takes the tier
    with ``start < billable <= up_to``: the one its last unit falls in (with tiers [0, 5) and [5, 10), 5 units are
    all in the first tier, as Stripe's "1-5" tier holds the fifth unit).
    """
    charges = base.filter(pl.col("model").is_in(["graduated", "volume"])).select(
        "_row", "price_idx", "model", "billable"
    )
    tiers = charges.join(prices.tiers, on="price_idx", how="inner", maintain_order="left")
    billable, start, up_to = pl.col("billable"), pl.col("start"), pl.col("up_to")
    # min_horizontal skips nulls: an unbounded last tier takes every unit above its start.
    graduated_units = pl.min_horizontal(pl.max_horizontal(billable - start, int128(0)), up_to - start)
    graduated = pl.col("model") == "graduated"
    in_volume_tier = (start < billable) & (up_to.is_null() | (billable <= up_to))
    charged = tiers.with_columns(units=pl.when(graduated).then(graduated_units).otherwise(billable)).filter(
        pl.when(graduated).then(pl.col("units") > 0).otherwise(in_volume_tier)
    )
    usage, usage_shadow = _product("units", "unit_price", _PRODUCT_TO_AMOUNT)
    fee, fee_shadow = pl.col("flat_fee") * int128(_PRICE_TO_AMOUNT), shadow(pl.col("flat_fee")) * _PRICE_TO_AMOUNT
    return _details(
        charged,
        "tier",
        tier=pl.col("tier"),
        units=pl.col("units"),
        unit_price=_as_rate("unit_price"),
        flat_fee=pl.col("flat_fee"),
        subtotal=usage + fee,
        shadow=usage_shadow + fee_shadow,
    )


def percentage_period(base: pl.DataFrame, prices: PriceTable) -> pl.DataFrame:
    """``percent`` of the period's billable amount, the fee then raised to ``min_fee`` or cut to ``max_fee``."""
    charges = base.filter(pl.col("model") == "percentage")
    charges = charges.with_columns(
        **{name: prices.of(name, charges) for name in ("percent", "min_fee", "max_fee", "per_event")}
    )
    charges = charges.filter(~pl.col("per_event"))
    fee, approximate = _product("percent", "billable", 1)
    charges = _bound_fee(charges.with_columns(fee=fee, shadow=approximate))
    # percent / 100 at scale 11 is the same integer as percent at scale 9.
    return _details(
        charges,
        "percentage",
        units=pl.col("billable"),
        unit_price=pl.col("percent"),
        raised_to_min_fee=pl.col("raised"),
        cut_to_max_fee=pl.col("cut"),
        subtotal=pl.col("fee"),
        shadow=pl.col("shadow"),
    )


def percentage_events(base: pl.DataFrame, prices: PriceTable, events: pl.DataFrame) -> pl.DataFrame:
    """Each event's fee (``percent`` of its amount) bounded on its own, then summed: one row per charge.

    ``events`` holds ``_row`` and ``amount`` (Int128), for per-event percentage charges only.
    """
    each = events.with_columns(price_idx=base.get_column("price_idx").gather(events.get_column("_row")))
    each = each.with_columns(**{name: prices.of(name, each) for name in ("percent", "min_fee", "max_fee")})
    fee, approximate = _product("percent", "amount", 1)
    each = _bound_fee(each.with_columns(fee=fee, shadow=approximate))
    per_charge = (
        each.group_by("_row")
        .agg(
            units=pl.col("amount").sum(),
            units_shadow=shadow(pl.col("amount")).sum(),
            events=pl.len().cast(pl.UInt32),
            raised=pl.col("raised").sum().cast(pl.UInt32),
            cut=pl.col("cut").sum().cast(pl.UInt32),
            fee=pl.col("fee").sum(),
            shadow=pl.col("shadow").sum(),
            percent=pl.col("percent").first(),
        )
        .sort("_row")
    )
    if per_charge.select(out_of_range(pl.col("units"), pl.col("units_shadow")).any()).item():
        raise ValueOverflow("a charge's event amounts sum beyond the 10^29 pricing computes exactly")
    return _details(
        per_charge,
        "percentage",
        units=pl.col("units"),
        unit_price=pl.col("percent"),
        events=pl.col("events"),
        raised_to_min_fee=pl.col("raised"),
        cut_to_max_fee=pl.col("cut"),
        subtotal=pl.col("fee"),
        shadow=pl.col("shadow"),
    )


def matrix(base: pl.DataFrame, prices: PriceTable, cells: pl.DataFrame) -> pl.DataFrame:
    """One row per combination with usage: its units after the free allowance × its unit price.

    ``cells`` holds ``_row``, ``combination`` and ``quantity`` (summed), for matrix charges only. The free allowance
    is taken from the combinations in ascending order of their canonical text: a rule that needs no price order and
    that a customer can check by hand. A combination whose usage sums below zero bills nothing and uses none of it.
    """
    cells = cells.with_columns(price_idx=base.get_column("price_idx").gather(cells.get_column("_row")))
    priced = cells.join(prices.entries, on=["price_idx", "combination"], how="left")
    if priced.select(pl.col("unit_price").is_null().any()).item():
        unpriced = priced.filter(pl.col("unit_price").is_null())
        charge = base.get_column("charge")[unpriced["_row"][0]]
        fail(
            f"charge {charge!r} has usage for the combination {unpriced['combination'][0]}, which its matrix does "
            "not price: add an entry for it, or fix the usage's dimension values",
            "unpriced_usage",
        )

    priced = priced.sort("_row", "rank")
    used = pl.max_horizontal(pl.col("quantity"), int128(0))
    priced = priced.with_columns(used=used, free_allowance=prices.of("free_allowance", priced)).with_columns(
        before=pl.col("used").cum_sum().over("_row") - pl.col("used"),
        before_shadow=shadow(pl.col("used")).cum_sum().over("_row"),
    )
    if priced.select(out_of_range(pl.col("before"), pl.col("before_shadow")).any()).item():
        raise ValueOverflow("a matrix charge's usage sums beyond the 10^29 units pricing computes exactly")
    free = pl.min_horizontal(pl.max_horizontal(pl.col("free_allowance") - pl.col("before"), int128(0)), pl.col("used"))
    priced = priced.with_columns(free_units=free).with_columns(units=pl.col("used") - pl.col("free_units"))
    subtotal, approximate = _product("units", "unit_price", _PRODUCT_TO_AMOUNT)
    return _details(
        priced,
        "matrix",
        combination=pl.col("combination"),
        units=pl.col("units"),
        free_units=pl.col("free_units"),
        unit_price=_as_rate("unit_price"),
        subtotal=subtotal,
        shadow=approximate,
    )


def _bound_fee(frame: pl.DataFrame) -> pl.DataFrame:
    """Raises ``fee`` to ``min_fee`` and cuts it to ``max_fee`` (both optional, scale 9), noting which happened."""
    # Fee bounds are amounts, below 10^18 (meter.catalog.types.LIMITS), so these products fit.
    low = pl.col("min_fee") * int128(_PRICE_TO_AMOUNT)
    high = pl.col("max_fee") * int128(_PRICE_TO_AMOUNT)
    # A fee whose shadow is out of range may have wrapped: compare its shadow, not its (wrong) Int128.
    overflowed = pl.col("shadow").abs() > SHADOW_LIMIT
    raised = pl.col("min_fee").is_not_null() & ~overflowed & (pl.col("fee") < low)
    cut = pl.col("max_fee").is_not_null() & (overflowed | (pl.col("fee") > high))
    bounded = pl.when(raised).then(low).when(cut).then(high).otherwise(pl.col("fee"))
    # The shadow follows the fee: a fee cut to max_fee is back in range even when the uncut fee was not.
    bounded_shadow = pl.when(raised | cut).then(shadow(bounded)).otherwise(pl.col("shadow"))
    frame = frame.with_columns(raised=raised.cast(pl.UInt32), cut=cut.cast(pl.UInt32))
    return frame.with_columns(fee=bounded, shadow=bounded_shadow)


def _as_rate(price: str) -> pl.Expr:
    """A price (scale 9) at the scale of detail unit prices (11)."""
    return pl.col(price) * int128(_PRICE_TO_RATE)


def _product(left: str, right: str, factor: int) -> tuple[pl.Expr, pl.Expr]:
    """``left × right × factor`` exactly (Int128) and as its Float64 shadow."""
    exact = pl.col(left) * pl.col(right) * int128(factor)
    return exact, shadow(pl.col(left)) * shadow(pl.col(right)) * float(factor)


def _details(
    frame: pl.DataFrame, component: str, *, subtotal: pl.Expr, shadow: pl.Expr, **columns: pl.Expr
) -> pl.DataFrame:
    """``frame`` as detail rows: every column of :data:`DETAIL_COLUMNS`, null where the component has none.

    Only the columns a component has are converted to decimals: the conversion is most of the cost of details.
    """
    frame = frame.with_columns(_subtotal=subtotal, _shadow=shadow)
    values: dict[str, pl.Expr] = {"_row": pl.col("_row"), "component": pl.lit(component, COMPONENT)}
    for name, (dtype, scale) in list(DETAIL_COLUMNS.items())[1:]:
        value = pl.col("_subtotal") if name == "subtotal" else columns.get(name)
        if value is None:
            values[name] = pl.lit(None, dtype)
        else:
            values[name] = from_scaled(value, scale) if scale is not None else value.cast(dtype)
    values.update(_subtotal=pl.col("_subtotal"), _shadow=pl.col("_shadow"))
    return frame.select(**values)
