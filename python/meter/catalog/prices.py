"""Prices: what a unit of a meter (or a period) costs, in one of the models pricing knows, and the price rules.

This module is the one place the rules of a price are written: the models and their enumerations (:data:`MODELS`,
:data:`CADENCES`, :data:`ROUNDINGS`, :data:`PERCENT_PER`), which parameter each model takes (:data:`PARAMETERS`),
which bounds must be in order (:data:`ORDERED`), and the messages a broken rule gives. :func:`validate_price` applies
them to one ``Price`` (the catalog, on every write); rating applies the same tables to a whole ``prices`` frame
(:mod:`meter.pricing.price_table`, which may be handed a frame built without the catalog). Rating imports this
module, never the reverse: the catalog does not depend on polars or on pricing.

Amounts are ``Decimal`` (JSON strings), never floats; each number has a kind (quantity, unit price, amount, percent)
whose limits :mod:`meter.catalog.types` checks whenever a price is built, so that NaN, Infinity, ``1E+999999`` or
40 decimals never reach rating. A price either charges a meter's usage or is a flat recurring fee; tiers are
explicit ``[from, up_to)`` ranges so that a gap or an overlap is an error a user can see, not a silent zero. Nothing
here rounds: rounding to a currency's minor unit happens once, on a rated amount (:mod:`meter.pricing.money`).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Literal, NoReturn, get_args

from meter.catalog.currencies import is_currency
from meter.catalog.types import Amount, Checked, Currency, Id, Percent, Quantity, Slug, Text, UnitPrice
from meter.exceptions import InvalidInput

__all__ = [
    "CADENCES",
    "MODELS",
    "ORDERED",
    "PACKAGE_SIZE_RULE",
    "PARAMETERS",
    "PERCENT_PER",
    "PER_EVENT_ALLOWANCE_RULE",
    "ROUNDINGS",
    "TIERS_RULE",
    "Cadence",
    "Matrix",
    "MatrixEntry",
    "Model",
    "Package",
    "Percentage",
    "Price",
    "Tier",
    "is_currency",
    "validate_price",
]

Model = Literal["flat", "per_unit", "graduated", "volume", "package", "percentage", "matrix"]
#: When a flat fee is billed: at the start of its period, or at its end. An invoice line's ``timing`` takes the same
#: two values (usage is always billed in arrears).
Cadence = Literal["in_advance", "in_arrears"]
Rounding = Literal["up", "down"]
PercentPer = Literal["event", "period"]

#: The enumerations, spelled once (as the Literals above, which msgspec checks on decoding) and read by rating.
MODELS: tuple[str, ...] = get_args(Model)
CADENCES: tuple[str, ...] = get_args(Cadence)
ROUNDINGS: tuple[str, ...] = get_args(Rounding)
PERCENT_PER: tuple[str, ...] = get_args(PercentPer)
#: Which field carries each model's parameters; every other parameter field must be absent.
PARAMETERS: dict[str, str] = {
    "flat": "amount",
    "per_unit": "unit_price",
    "graduated": "tiers",
    "volume": "tiers",
    "package": "package",
    "percentage": "percentage",
    "matrix": "matrix",
}
#: Bounds that must be in order, ``(lower, upper)``, named as the ``prices`` frame names them.
ORDERED: tuple[tuple[str, str], ...] = (("minimum", "maximum"), ("min_fee", "max_fee"))
#: The messages of the rules that read the same for one price and for a frame of them.
PACKAGE_SIZE_RULE = "a package needs a size above 0"
PER_EVENT_ALLOWANCE_RULE = (
    "a free allowance cannot be taken from a percentage charged per event (events have no order): "
    'set per to "period" or remove free_allowance'
)
TIERS_RULE = (
    "the first tier starts at 0, each starts where the previous one ends, only the last is unbounded, and each ends "
    "after it starts"
)


class Tier(Checked, forbid_unknown_fields=True, rename={"start": "from"}):
    """Units in ``[from, up_to)`` cost ``unit_price`` each, plus ``flat_fee`` once if any unit falls in the tier."""

    start: Quantity
    unit_price: UnitPrice
    up_to: Quantity | None = None
    flat_fee: Amount = Decimal(0)


class Package(Checked, forbid_unknown_fields=True):
    """``price`` per started (``up``) or completed (``down``) package of ``size`` units."""

    size: Quantity
    price: UnitPrice
    rounding: Rounding = "up"


class Percentage(Checked, forbid_unknown_fields=True):
    """``percent`` of the amounts the meter sums, with an optional fee floor and ceiling per ``per``."""

    percent: Percent
    per: PercentPer = "period"
    min_fee: Amount | None = None
    max_fee: Amount | None = None


class MatrixEntry(Checked, forbid_unknown_fields=True):
    values: dict[Text, Text]
    unit_price: UnitPrice


class Matrix(Checked, forbid_unknown_fields=True):
    """A unit price per combination of dimension values, such as model x token type."""

    dimensions: list[Text]
    entries: list[MatrixEntry]


class Price(Checked, forbid_unknown_fields=True):
    id: Id
    currency: Currency
    model: Model
    cadence: Cadence = "in_arrears"
    #: The meter whose usage is charged; None only for a flat recurring fee.
    meter: Slug | None = None
    amount: Amount | None = None  # flat
    unit_price: UnitPrice | None = None  # per_unit
    tiers: list[Tier] | None = None  # graduated, volume
    package: Package | None = None
    percentage: Percentage | None = None
    matrix: Matrix | None = None
    #: Units not charged in each period, taken before any tier.
    free_allowance: Quantity = Decimal(0)
    #: Bounds on the charge of a period.
    minimum: Amount | None = None
    maximum: Amount | None = None
    #: The product tax code of the price's lines (before its product's): tax rates of that code apply to them.
    tax_code: Id | None = None


def validate_price(price: Price) -> None:
    """Raises ``InvalidInput`` (code ``invalid_price``) naming the first thing to fix."""

    def fail(message: str) -> NoReturn:
        raise InvalidInput(f"price {price.id!r}: {message}", code="invalid_price")

    if price.model == "flat" and price.meter is not None:
        fail('a flat fee charges a period, not a meter: remove "meter"')
    if price.model != "flat" and price.meter is None:
        fail(f'a {price.model} price charges a meter\'s usage: set "meter" to its slug')
    needed = PARAMETERS[price.model]
    for field in sorted(set(PARAMETERS.values())):
        if field == needed and getattr(price, field) is None:
            fail(f'a {price.model} price needs "{field}"')
        if field != needed and getattr(price, field) is not None:
            fail(f'"{field}" does not belong to a {price.model} price')

    # Each number is finite, 0 or more and within its kind's limits already (meter.catalog.types).
    fees = price.percentage
    bounds: dict[str, Decimal | None] = {
        "minimum": price.minimum,
        "maximum": price.maximum,
        "min_fee": None if fees is None else fees.min_fee,
        "max_fee": None if fees is None else fees.max_fee,
    }
    for lower, upper in ORDERED:
        low, high = bounds[lower], bounds[upper]
        if low is not None and high is not None and low > high:
            fail(f"{lower} {low} is above {upper} {high}")

    if price.tiers is not None:
        _check_tiers(price.tiers, fail)
    if price.package is not None and price.package.size == 0:
        fail(PACKAGE_SIZE_RULE)
    if price.percentage is not None and price.percentage.per == "event" and price.free_allowance:
        fail(PER_EVENT_ALLOWANCE_RULE)
    if price.matrix is not None:
        _check_matrix(price.matrix, fail)


def _check_tiers(tiers: list[Tier], fail: Callable[[str], NoReturn]) -> None:
    if not tiers:
        fail("tiers must not be empty")
    if tiers[0].start != 0:
        fail(f"the first tier must start at 0; it starts at {tiers[0].start}")
    for i, tier in enumerate(tiers, start=1):
        if tier.up_to is not None and tier.up_to <= tier.start:
            fail(f"tier {i} ends at {tier.up_to}, not after where it starts ({tier.start})")
        if i < len(tiers):
            following = tiers[i]
            if tier.up_to is None:
                fail(f"only the last tier may be unbounded; tier {i} has no up_to")
            elif following.start != tier.up_to:
                gap = "a gap" if following.start > tier.up_to else "an overlap"
                fail(
                    f"tier {i + 1} starts at {following.start} but tier {i} ends at {tier.up_to}: {gap}; "
                    "each tier must start where the previous one ends"
                )
    if tiers[-1].up_to is not None:
        fail(f"the last tier must be unbounded (no up_to), or usage above {tiers[-1].up_to} would have no price")


def _check_matrix(matrix: Matrix, fail: Callable[[str], NoReturn]) -> None:
    if not matrix.dimensions or len(set(matrix.dimensions)) != len(matrix.dimensions):
        fail("a matrix needs one or more distinct dimensions")
    seen: set[tuple[str, ...]] = set()
    for i, entry in enumerate(matrix.entries, start=1):
        if set(entry.values) != set(matrix.dimensions):
            fail(f"matrix entry {i} must give a value for exactly {', '.join(matrix.dimensions)}")
        combination = tuple(entry.values[d] for d in matrix.dimensions)
        if combination in seen:
            fail(f"matrix entry {i} repeats the combination {dict(zip(matrix.dimensions, combination, strict=True))}")
        seen.add(combination)
