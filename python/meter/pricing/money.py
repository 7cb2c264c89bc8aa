"""Money: each currency's minor unit (ISO 4217) and exact half-even rounding to it.

Money is never a float. An amount is computed exactly (see :mod:`meter.pricing.exact`) and rounded once, half to
even ("banker's rounding"), to the minor unit of its currency: 2 decimals for most currencies, 0 for JPY or KRW, 3
for KWD or BHD, 4 for the funds codes CLF and UYW, as ISO 4217 says (:mod:`meter.catalog.currencies`). Half-even does
not drift upwards over many ties, which half-up does.

Invoice totals are sums of the rounded lines, never a rounding of the exact total: an invoice then adds up to
exactly what its lines show, and a line's amount does not change when another line is added.

The same rule for one ``Decimal`` (:func:`round_to_minor_unit`) and for a polars column (:func:`round_half_even`, an
expression; :func:`round_column_half_even`, the same on a frame and faster): the column forms work on scaled Int128
integers, so they are exact for every value a ``Decimal(38, s)`` holds.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal
from types import MappingProxyType

import polars as pl

from meter.catalog.currencies import CURRENCIES
from meter.exceptions import InvalidInput
from meter.pricing.exact import from_scaled, int128, to_scaled

__all__ = [
    "DEFAULT_MINOR_UNITS",
    "MAX_MINOR_UNITS",
    "MINOR_UNITS",
    "divide_half_even",
    "minor_units",
    "minor_units_expr",
    "round_column_half_even",
    "round_half_even",
    "round_scaled_half_even",
    "round_to_minor_unit",
    "scaled_to_money",
]

#: Digits after the decimal point for the currencies whose ISO 4217 exponent is not 2, from the same ISO 4217 table
#: the catalog validates currencies against (:mod:`meter.catalog.currencies`, the ``iso4217`` package).
MINOR_UNITS = MappingProxyType({code: digits for code, digits in CURRENCIES.items() if digits != 2})
DEFAULT_MINOR_UNITS = 2
#: The scale of every rounded amount column, so that all currencies share one dtype, ``Decimal(38, 4)``.
MAX_MINOR_UNITS = max(MINOR_UNITS.values())
_MINOR_UNIT_VALUES = sorted({DEFAULT_MINOR_UNITS, *MINOR_UNITS.values()})
#: Each minor unit as the quantum ``Decimal.quantize`` rounds to (made once: invoices round every line).
_QUANTA = {digits: Decimal(1).scaleb(-digits) for digits in _MINOR_UNIT_VALUES}

# Quantize needs room for every digit of a Decimal(38, s) value; the default context keeps only 28.
_CONTEXT = Context(prec=80, rounding=ROUND_HALF_EVEN)


def minor_units(currency: str) -> int:
    """Digits after the decimal point of ``currency``'s minor unit: 2 unless :data:`MINOR_UNITS` says otherwise."""
    return MINOR_UNITS.get(currency, DEFAULT_MINOR_UNITS)


def round_to_minor_unit(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded half to even to ``currency``'s minor unit: ``Decimal("0.125")`` in USD is ``0.12``."""
    if not amount.is_finite():
        raise InvalidInput(f"an amount must be a finite decimal; got {amount}", code="invalid_amount")
    return amount.quantize(_QUANTA[minor_units(currency)], context=_CONTEXT)


def minor_units_expr(currency: pl.Expr) -> pl.Expr:
    """:func:`minor_units` for a column of currency codes (Int8)."""
    return currency.replace_strict(dict(MINOR_UNITS), default=DEFAULT_MINOR_UNITS, return_dtype=pl.Int8)


def round_half_even(amount: pl.Expr, currency: pl.Expr, *, scale: int = 20) -> pl.Expr:
    """A decimal column rounded half to even to each row's currency, as ``Decimal(38, MAX_MINOR_UNITS)``.

    ``amount`` is read at ``scale`` decimals (the default is the scale of rating's exact amounts, at least
    ``MAX_MINOR_UNITS``); a column with more decimals must be rounded explicitly first, since polars' cast would cut
    them. Exact for every value that fits.
    """
    if not MAX_MINOR_UNITS <= scale <= 38:
        raise InvalidInput(f"scale must be between {MAX_MINOR_UNITS} and 38; got {scale}", code="invalid_scale")
    digits = minor_units_expr(currency)
    return scaled_to_money(round_scaled_half_even(to_scaled(amount, scale), scale, digits), digits)


def round_scaled_half_even(scaled: pl.Expr, scale: int, digits: pl.Expr) -> pl.Expr:
    """Rounds an Int128 count of ``10^-scale`` half to even to ``digits`` decimals (per row: a minor unit).

    The result is an Int128 count of ``10^-digits``; ``digits`` takes the values :func:`minor_units` gives (another
    value gives null). With ``half = divisor / 2``, ``floor((x + half) / divisor)`` is the nearest integer with ties
    rounded up; a tie is exactly when ``x + half`` is a multiple of ``divisor``, and then an odd result steps back
    down to the even one. Floor division makes this hold for negative amounts too. ``x + half`` cannot overflow:
    ``|x|`` is at most 10^38 and ``half`` at most 5 × 10^37.

    As one expression this computes the quotient several times (eager polars does not share subexpressions):
    :func:`round_column_half_even` is the same rule on a frame, with each step computed once.
    """
    divisor = _divisor(digits, scale)
    shifted = scaled + divisor // int128(2)
    return _half_even_step(shifted // divisor, shifted, divisor)


def round_column_half_even(frame: pl.DataFrame, scaled: str, scale: int, digits: str) -> pl.Series:
    """:func:`round_scaled_half_even` of ``frame``'s columns ``scaled`` and ``digits``, each step materialised."""
    steps = frame.select(pl.col(scaled).alias("scaled"), divisor=_divisor(pl.col(digits), scale))
    steps = steps.select("divisor", shifted=pl.col("scaled") + pl.col("divisor") // int128(2))
    steps = steps.with_columns(quotient=pl.col("shifted") // pl.col("divisor"))
    return steps.select(_half_even_step(pl.col("quotient"), pl.col("shifted"), pl.col("divisor"))).to_series()


def divide_half_even(numerator: pl.Expr, divisor: pl.Expr) -> pl.Expr:
    """``numerator / divisor`` on Int128, rounded half to even, for any ``divisor`` above 0.

    :func:`round_scaled_half_even` divides by powers of ten only (its tie test needs an even divisor); this divides by
    anything, such as an event count (a mean) or ``10^11`` (a percent of an amount of money). Floor division keeps the
    remainder in ``[0, divisor)``, so the rule holds for negative numerators too.
    """
    quotient, remainder = numerator // divisor, numerator % divisor
    twice = remainder * int128(2)
    up = (twice > divisor) | ((twice == divisor) & (quotient % int128(2) == int128(1)))
    return quotient + up.cast(pl.Int128)


def _divisor(digits: pl.Expr, scale: int) -> pl.Expr:
    return digits.replace_strict(
        {d: 10 ** (scale - d) for d in _MINOR_UNIT_VALUES}, default=None, return_dtype=pl.Int128
    )


def _half_even_step(quotient: pl.Expr, shifted: pl.Expr, divisor: pl.Expr) -> pl.Expr:
    """``quotient`` (``shifted // divisor``), one lower where it is an odd result of an exact tie."""
    tie_on_odd = (quotient * divisor == shifted) & (quotient % int128(2) == int128(1))
    return quotient - tie_on_odd.cast(pl.Int128)


def scaled_to_money(minor: pl.Expr, digits: pl.Expr) -> pl.Expr:
    """An Int128 count of ``10^-digits`` (per row) as a ``Decimal(38, MAX_MINOR_UNITS)``."""
    widen = digits.replace_strict({d: 10 ** (MAX_MINOR_UNITS - d) for d in _MINOR_UNIT_VALUES}, return_dtype=pl.Int128)
    return from_scaled(minor * widen, MAX_MINOR_UNITS)
