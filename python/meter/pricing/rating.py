"""Rating: the amounts of many charges at once, exact to the last digit, with the explanation of each.

``rate(charges, prices, quantities, event_amounts=None) -> Rated`` is vectorised polars: no Python code runs per
charge, and five million charges take seconds.

Inputs
------
``charges`` and ``prices``: see :mod:`meter.pricing.charges` (``charges_and_prices``, ``price_frame``). ``charge`` is
the caller's key, unique; ``proration`` is the fraction of the period a flat fee covers, in ``[0, 1]``, and must be 1
for every other model (usage is measured over the real period, so it needs no proration).

``quantities``: the period's usage, any number of rows per charge, summed per charge (and combination) before
rating: ``charge``, ``quantity`` (a Decimal with at most 9 decimals, as the usage export's ``value``
decimal128(38, 9), or an integer) and, for matrix charges only, ``combination`` (String, see ``combination_expr``).
A charge without rows has a quantity of 0. A percentage charge's quantity is the amount its meter sums.

``event_amounts``: for percentage charges priced ``per event`` only, one row per event: ``charge`` and ``amount``
(0 or more, typed as ``quantity``).

Outputs (:class:`Rated`)
------------------------
``lines``, one row per charge, in the order of ``charges``:

- ``charge``, ``price_id``, ``currency``, ``model`` (Enum of the seven models);
- ``quantity`` (Decimal(38, 9)): the summed usage (per-event percentage: the events' amounts; flat: null);
- ``billable`` (Decimal(38, 9)): the quantity after the free allowance, never below 0 (flat: null);
- ``subtotal`` (Decimal(38, 20)): the sum of the charge's ``details``, exact;
- ``amount_exact`` (Decimal(38, 20)): ``subtotal`` raised to ``minimum`` or cut to ``maximum``, exact;
- ``amount`` (Decimal(38, 4)): ``amount_exact`` rounded half to even to the currency's minor unit
  (:mod:`meter.pricing.money`); every currency shares the scale 4, digits below its minor unit are 0;
- ``minimum_applied``, ``maximum_applied`` (Boolean).

``details``, the explanation: one row per component priced. A charge's rows are adjacent and in order (tiers by
position, combinations by text); the components come model by model, each in the order of ``charges``.

- ``charge``; ``component`` (Enum): ``flat``, ``per_unit``, ``tier``, ``package``, ``percentage`` or ``matrix``;
- ``tier`` (UInt32): the tier's position in the price's tiers, from 1;
- ``combination`` (String): the matrix combination's canonical text;
- ``units`` (Decimal(38, 9)): what the unit price multiplies: the billable units (per unit), the units in the tier,
  in the combination after the allowance, the packages charged, the amount a percentage is taken of, or a flat fee's
  proration;
- ``free_units`` (Decimal(38, 9)): a matrix combination's units covered by the free allowance;
- ``unit_price`` (Decimal(38, 11)): the price per unit, per package, a flat fee's amount, or a percentage's rate
  (``percent / 100``: 2.9 % is 0.029);
- ``flat_fee`` (Decimal(38, 9)): a touched tier's flat fee;
- ``events`` (UInt32): the events of a per-event percentage;
- ``raised_to_min_fee``, ``cut_to_max_fee`` (UInt32): how many percentage fees (each event's, or the period's one)
  were raised to ``min_fee`` or cut to ``max_fee``;
- ``subtotal`` (Decimal(38, 20)): ``units × unit_price + flat_fee``, exact, unless a fee bound applied.

Semantics
---------
- **free allowance**: ``billable = max(quantity - free_allowance, 0)``, taken before any tier. Usage that sums below
  zero bills as zero: a charge is never a credit (credits are billing's business). Matrix: the allowance is taken
  from the combinations in ascending order of their canonical text (see :func:`meter.pricing.models.matrix`).
- **flat**: ``amount × proration``; no quantity.
- **per_unit**: ``billable × unit_price``.
- **graduated**: each unit at the price of the tier ``[from, up_to)`` it falls in, plus the ``flat_fee`` of every
  tier that holds at least one unit. Stripe's "1-5 at 7, 6-10 at 6.50, 11+ at 6" is ``[0, 5), [5, 10), [10, ∞)``:
  8 units cost ``5 × 7 + 3 × 6.50 = 54.50``.
- **volume**: every billable unit at the price of the tier its last unit falls in (``from < billable <= up_to``),
  plus that tier's ``flat_fee``: 8 units in the tiers above cost ``8 × 6.50 = 52.00``, 5 units ``5 × 7``. No units,
  no tier: nothing is charged, flat fees included.
- **package**: ``ceil`` (``up``) or ``floor`` (``down``) of ``billable / size`` packages, × the package price.
- **percentage**: ``percent / 100`` of the amounts. ``per = period``: of the period's billable amount, the fee then
  raised to ``min_fee`` and cut to ``max_fee`` (so a period without usage costs ``min_fee``). ``per = event``: each
  event's fee bounded on its own, then summed (no events, no fee); a free allowance is refused, events having no order.
- **matrix**: each combination's billable units × its entry's unit price; usage of a combination the matrix does not
  price is an error that names it, never a silent zero.
- **minimum / maximum** bound the charge's subtotal for the period, with or without usage, before rounding.
- **rounding**: nothing is rounded before ``amount``. Quantities and prices are Decimal(38, 9) (``price_frame`` refuses
  more decimals); products are computed on scaled Int128 (polars' decimal product cuts digits, see
  :mod:`meter.pricing.exact`), so ``amount_exact`` is the exact value. Amounts must stay below 10^18 in the currency
  and summed quantities below 10^29: beyond, rating raises ``ValueOverflow`` rather than wrap.

Errors: malformed input raises ``InvalidInput`` whose message names the charge or price and what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from polars.exceptions import InvalidOperationError

from meter.exceptions import ValueOverflow
from meter.pricing import models
from meter.pricing.errors import fail
from meter.pricing.exact import from_scaled, int128, out_of_range, shadow
from meter.pricing.models import AMOUNT_SCALE
from meter.pricing.money import round_column_half_even, scaled_to_money
from meter.pricing.price_table import PRICE_SCALE, PriceTable, prepare_prices

__all__ = ["Rated", "rate"]

_ONE = 10**PRICE_SCALE
_PRICE_TO_AMOUNT = 10 ** (AMOUNT_SCALE - PRICE_SCALE)


@dataclass(frozen=True)
class Rated:
    """The result of :func:`rate`: ``lines`` (one per charge) and ``details`` (their explanation)."""

    lines: pl.DataFrame
    details: pl.DataFrame


def rate(
    charges: pl.DataFrame, prices: pl.DataFrame, quantities: pl.DataFrame, event_amounts: pl.DataFrame | None = None
) -> Rated:
    """Rates every charge of ``charges`` at its price in ``prices`` for the usage in ``quantities``.

    ``event_amounts`` is needed only for percentages charged per event. The module doc gives the frames' columns and
    the semantics.
    """
    table = prepare_prices(prices)
    # `base` keeps one row per charge in the order of `charges`: row i is the charge whose _row is i, so per-charge
    # sums are put in place by position (scatter) and read back by position (gather), never joined.
    base = _prepare_charges(charges, table)
    keys = base.select("charge", "_row", "model", per_event=table.of("per_event", base))
    cells, usage_totals = _prepare_usage(quantities, keys)
    events = _prepare_events(event_amounts, keys)
    event_totals = events.group_by("_row").agg(quantity=pl.col("amount").sum(), shadow=shadow(pl.col("amount")).sum())
    _check_range(event_totals, "quantity", base, "the sum of a charge's event amounts")

    model, per_event = pl.col("model"), keys.get_column("per_event")
    quantity = (
        pl.when(model == "flat")
        .then(None)
        .when(per_event)
        .then(_spread(base, event_totals, "quantity").fill_null(int128(0)))
        .otherwise(_spread(base, usage_totals, "quantity").fill_null(int128(0)))
    )
    billable = (
        pl.when(model.is_in(["flat", "matrix"]))
        .then(None)
        .when(per_event)
        .then(pl.col("quantity"))
        .otherwise(pl.max_horizontal(pl.col("quantity") - pl.col("free_allowance"), int128(0)))
    )
    base = (
        base.with_columns(quantity=quantity, free_allowance=table.of("free_allowance", base))
        .with_columns(billable=billable)
        .drop("free_allowance")
    )

    single = [
        models.flat(base, table),
        models.per_unit(base, table),
        models.package(base, table),
        models.percentage_period(base, table),
        models.percentage_events(base, table, events),
    ]
    several = [_in_charge_order(models.tiered(base, table)), _in_charge_order(models.matrix(base, table, cells))]
    for part in single + several:
        _check_range(part, "_subtotal", base, "an amount", shadow="_shadow")
    # A charge's subtotal is its one detail's, or the sum of its several (tiers, combinations), which are adjacent.
    # `units` (Decimal(38, 9)) back as its Int128 count of 10^-9: a matrix charge's billable is the sum of its cells'.
    sums = [part.select("_row", "_subtotal", "_shadow", units=pl.col("units").to_physical()) for part in single]
    sums += [
        part.group_by("_row", maintain_order=True).agg(
            pl.col("_subtotal").sum(), pl.col("_shadow").sum(), units=pl.col("units").to_physical().sum()
        )
        for part in several
    ]
    summed = pl.concat(sums)
    _check_range(summed, "_subtotal", base, "the sum of a charge's amounts", shadow="_shadow")
    lines = _lines(
        base, table, subtotal=_spread(base, summed, "_subtotal"), matrix_billable=_spread(base, summed, "units")
    )
    details = pl.concat(single + several, rechunk=False)
    charge = base.get_column("charge").gather(details.get_column("_row"))
    return Rated(lines=lines, details=details.select(charge, *models.DETAIL_COLUMNS))


def _lines(base: pl.DataFrame, table: PriceTable, subtotal: pl.Series, matrix_billable: pl.Series) -> pl.DataFrame:
    params = {name: table.of(name, base) for name in ("price_id", "currency", "minimum", "maximum", "digits")}
    base = base.with_columns(subtotal=subtotal.fill_null(0), **params)
    minimum = pl.col("minimum") * int128(_PRICE_TO_AMOUNT)
    maximum = pl.col("maximum") * int128(_PRICE_TO_AMOUNT)
    minimum_applied = pl.col("minimum").is_not_null() & (pl.col("subtotal") < minimum)
    maximum_applied = pl.col("maximum").is_not_null() & (pl.col("subtotal") > maximum)
    exact = pl.when(minimum_applied).then(minimum).when(maximum_applied).then(maximum).otherwise(pl.col("subtotal"))
    billable = pl.when(pl.col("model") == "matrix").then(matrix_billable.fill_null(0)).otherwise(pl.col("billable"))
    # Materialised first: rounding reads the exact amount several times, and eager polars would compute it each time.
    base = base.with_columns(
        exact=exact, minimum_applied=minimum_applied, maximum_applied=maximum_applied, billable=billable
    )
    base = base.with_columns(rounded=round_column_half_even(base, "exact", AMOUNT_SCALE, "digits"))
    return base.select(
        "charge",
        "price_id",
        "currency",
        "model",
        quantity=from_scaled(pl.col("quantity"), PRICE_SCALE),
        billable=from_scaled(pl.col("billable"), PRICE_SCALE),
        subtotal=from_scaled(pl.col("subtotal"), AMOUNT_SCALE),
        amount_exact=from_scaled(pl.col("exact"), AMOUNT_SCALE),
        amount=scaled_to_money(pl.col("rounded"), pl.col("digits")),
        minimum_applied="minimum_applied",
        maximum_applied="maximum_applied",
    )


def _in_charge_order(part: pl.DataFrame) -> pl.DataFrame:
    """``part`` sorted by ``_row``, and flagged so: grouping a column known to be sorted takes a fraction of the time.

    The models emit their rows in charge order already; the check costs one pass and keeps a wrong flag impossible.
    """
    if not part.get_column("_row").is_sorted():
        part = part.sort("_row", maintain_order=True)
    return part.set_sorted("_row")


def _spread(base: pl.DataFrame, sums: pl.DataFrame, column: str) -> pl.Series:
    """``sums[column]`` (one row per ``_row`` at most) as a column of ``base``: null for charges without a row."""
    dense = pl.repeat(None, base.height, dtype=sums.schema[column], eager=True)
    return dense.scatter(sums.get_column("_row"), sums.get_column(column)) if sums.height else dense


def _prepare_charges(charges: pl.DataFrame, table: PriceTable) -> pl.DataFrame:
    """``charges`` checked: ``_row``, ``charge``, ``price_idx``, ``model`` and ``proration`` (Int128)."""
    for name in ("charge", "price_id"):
        if name not in charges.columns:
            fail(
                f"charges has no column {name!r}; it needs charge, price_id and optionally proration", "invalid_charges"
            )
    key_type = charges.schema["charge"]
    if not (key_type == pl.String or key_type.is_integer()):
        fail(f"charges column 'charge' must be String or an integer type; got {key_type}", "invalid_charges")
    if charges.schema["price_id"] != pl.String:
        fail(f"charges column 'price_id' must be String; got {charges.schema['price_id']}", "invalid_charges")
    key = charges.get_column("charge")
    if key.has_nulls() or key.n_unique() != charges.height:
        repeated = charges.filter(pl.col("charge").is_duplicated() | pl.col("charge").is_null())
        fail(f"charge keys must be unique and not null; {repeated['charge'][0]!r} is not", "invalid_charges")

    ids = table.params.get_column("price_id")
    price_idx = charges.get_column("price_id").replace_strict(
        ids, pl.int_range(len(ids), dtype=pl.UInt32, eager=True), default=None, return_dtype=pl.UInt32
    )
    prorations = (
        _scaled_input(charges, "proration", "charges")
        if "proration" in charges.columns
        else pl.repeat(_ONE, charges.height, dtype=pl.Int128, eager=True)
    )
    base = charges.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), "charge").with_columns(
        price_idx=price_idx, proration=prorations
    )
    if price_idx.has_nulls():
        unknown = charges.filter(price_idx.is_null())
        fail(
            f"charge {unknown['charge'][0]!r} names price {unknown['price_id'][0]!r}, which is not in prices",
            "unknown_price",
        )
    base = base.with_columns(model=table.of("model", base))
    proration, model = pl.col("proration"), pl.col("model")
    problem = (
        pl.when(proration.is_null() | (proration < 0) | (proration > _ONE))
        .then(pl.lit("proration must be between 0 and 1"))
        .when((model != "flat") & (proration != _ONE))
        .then(pl.format("proration applies to flat fees only: pass 1 for a {} charge", model))
    )
    _check_rows(base, problem, "charges")
    return base


def _prepare_usage(quantities: pl.DataFrame, keys: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The quantities summed, per matrix combination and per charge.

    Returns ``cells`` (``_row``, ``combination``, ``quantity``) and ``totals`` (``_row``, ``quantity``, ``shadow``;
    a matrix charge's total over its combinations).
    """
    _require(quantities, "quantities", ["charge", "quantity"], keys)
    if "combination" in quantities.columns and quantities.schema["combination"] != pl.String:
        fail(
            f"quantities column 'combination' must be String; got {quantities.schema['combination']}",
            "invalid_quantities",
        )
    combination = pl.col("combination") if "combination" in quantities.columns else pl.lit(None, pl.String)
    rows = quantities.select(
        "charge", combination.alias("combination"), quantity=_scaled_input(quantities, "quantity", "quantities")
    )
    model = pl.col("model")
    problem = (
        pl.when(pl.col("_row").is_null())
        .then(pl.lit("this charge is not in charges"))
        .when(pl.col("quantity").is_null())
        .then(pl.lit("a quantity is null: give 0 or drop the row"))
        .when(model == "flat")
        .then(pl.lit("a flat fee has no quantity: drop its quantity rows"))
        .when(pl.col("per_event"))
        .then(pl.lit("a percentage charged per event reads event_amounts: pass its events there, not in quantities"))
        .when((model == "matrix") & pl.col("combination").is_null())
        .then(pl.lit("a matrix charge needs the combination of each quantity row (see combination_expr)"))
        .when((model != "matrix") & pl.col("combination").is_not_null())
        .then(pl.format("only matrix charges take a combination; this one is {}", model))
    )
    # One lazy plan, run by the streaming engine: the key join and the sums are most of rating's time, and streaming
    # them in batches takes a quarter less than joining and grouping millions of rows one operation at a time.
    joined = rows.lazy().join(keys.lazy(), on="charge", how="left")
    summed = {"quantity": pl.col("quantity").sum(), "shadow": shadow(pl.col("quantity")).sum()}
    # Each group notes whether a row of it has a problem: a separate pass would join a second time.
    flagged = {**summed, "bad": problem.is_not_null().any()}
    # Grouping by the (mostly null) combination costs three times grouping by the row alone: only matrix rows need it.
    # Rows of unknown charges (null model) go with the others, to be flagged there.
    is_matrix = (model == "matrix").fill_null(False)
    cells, others = pl.collect_all(
        [
            joined.filter(is_matrix).group_by("_row", "combination").agg(**flagged),
            joined.filter(~is_matrix).group_by("_row").agg(**flagged),
        ],
        engine="streaming",
    )
    if cells.get_column("bad").any() or others.get_column("bad").any():
        bad = rows.join(keys, on="charge", how="left").select("charge", problem=problem).drop_nulls("problem")
        fail(f"quantities for charge {bad['charge'][0]!r}: {bad['problem'][0]}", "invalid_quantities")
    cells, others = cells.drop("bad"), others.drop("bad")
    _check_range(cells, "quantity", keys, "a summed quantity")
    totals = pl.concat([others, cells.group_by("_row").agg(**summed)])
    _check_range(totals, "quantity", keys, "a summed quantity")
    return cells.drop("shadow"), totals


def _prepare_events(event_amounts: pl.DataFrame | None, keys: pl.DataFrame) -> pl.DataFrame:
    """One row per event of a per-event percentage: ``_row``, ``amount`` (Int128)."""
    if event_amounts is None:
        return pl.DataFrame(schema={"_row": pl.UInt32, "amount": pl.Int128})
    _require(event_amounts, "event_amounts", ["charge", "amount"], keys)
    rows = _attach_keys(
        event_amounts.select("charge", amount=_scaled_input(event_amounts, "amount", "event_amounts")),
        keys,
        "event_amounts",
    )
    problem = (
        pl.when(pl.col("amount").is_null() | (pl.col("amount") < 0))
        .then(pl.lit("an event's amount must be 0 or more (not null)"))
        .when(~pl.col("per_event"))
        .then(
            pl.format(
                "event_amounts are for percentages charged per event; this charge is {}: pass its usage in quantities",
                pl.col("model"),
            )
        )
    )
    _check_rows(rows, problem, "event_amounts")
    return rows.select("_row", "amount")


def _require(frame: pl.DataFrame, what: str, columns: list[str], keys: pl.DataFrame) -> None:
    for name in columns:
        if name not in frame.columns:
            fail(f"{what} has no column {name!r}; it needs {', '.join(columns)}", f"invalid_{what}")
    if frame.schema["charge"] != keys.schema["charge"]:
        fail(
            f"{what} column 'charge' is {frame.schema['charge']} but charges' is {keys.schema['charge']}: "
            "use the same key type",
            f"invalid_{what}",
        )


def _scaled_input(frame: pl.DataFrame, column: str, what: str) -> pl.Series:
    """An exact Decimal (at most 9 decimals) or integer column as Int128 counts of 10^-9."""
    dtype = frame.schema[column]
    values = frame.get_column(column)
    if isinstance(dtype, pl.Decimal):
        if dtype.scale <= PRICE_SCALE:
            try:
                return values.cast(pl.Decimal(38, PRICE_SCALE)).to_physical()
            except InvalidOperationError:
                fail(
                    f"{what} column {column!r} holds a value beyond the 10^29 pricing computes exactly",
                    f"invalid_{what}",
                )
        physical, cut = values.to_physical().to_frame(column), int128(10 ** (dtype.scale - PRICE_SCALE))
        if not physical.select((pl.col(column) % cut == int128(0)).all()).item():
            fail(
                f"{what} column {column!r} has values with more than {PRICE_SCALE} decimal places: round them first",
                f"invalid_{what}",
            )
        return physical.select(pl.col(column) // cut).to_series()
    if dtype.is_integer():
        return values.cast(pl.Int128).to_frame().select(pl.col(column) * int128(_ONE)).to_series()
    fail(
        f"{what} column {column!r} must be a Decimal with at most {PRICE_SCALE} decimals (the usage export's "
        f"decimal128(38, 9)) or an integer; got {dtype}: floats are not exact",
        f"invalid_{what}",
    )


def _attach_keys(rows: pl.DataFrame, keys: pl.DataFrame, what: str) -> pl.DataFrame:
    joined = rows.join(keys, on="charge", how="inner")
    if joined.height != rows.height:
        unknown = rows.join(keys, on="charge", how="anti")
        fail(f"{what} names charge {unknown['charge'][0]!r}, which is not in charges", "unknown_charge")
    return joined


def _check_rows(rows: pl.DataFrame, problem: pl.Expr, what: str) -> None:
    """Raises ``InvalidInput`` with the first row's ``problem`` (text, null when the row is fine)."""
    # `any` first: filtering millions of rows costs far more than testing them, even when none is kept.
    if rows.select(problem.is_not_null().any()).item():
        bad = rows.select("charge", problem=problem).filter(pl.col("problem").is_not_null())
        fail(f"{what} for charge {bad['charge'][0]!r}: {bad['problem'][0]}", f"invalid_{what}")


def _check_range(frame: pl.DataFrame, column: str, base: pl.DataFrame, what: str, shadow: str = "shadow") -> None:
    """Raises ``ValueOverflow`` naming a charge whose ``column`` (with its ``shadow``) left the exact range."""
    beyond = out_of_range(pl.col(column), pl.col(shadow))
    if frame.select(beyond.any()).item():
        over = frame.filter(beyond)
        charge = base.get_column("charge")[over["_row"][0]]
        raise ValueOverflow(
            f"charge {charge!r}: {what} leaves the range pricing computes exactly (amounts below "
            "10^18, quantities below 10^29); rate shorter periods or check the usage"
        )
