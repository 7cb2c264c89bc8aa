"""Exact decimal arithmetic on polars columns, done on scaled Int128 integers.

polars 2.1 multiplies two ``Decimal(38, 9)`` columns into a ``Decimal(38, 9)``: the product's scale is cut back, so
``1.123456789 × 0.123456789`` comes out as ``0.138698368`` instead of ``0.138698367750190521``. Pricing therefore
never multiplies decimals in polars. It takes each decimal's physical integer (a count of ``10^-scale``, an Int128),
multiplies and adds integers, and keeps track of the scale itself; the result is turned back into a decimal only at
the end (:func:`from_scaled`, whose single multiplication by ``10^-scale`` is exact because the product's scale is
the column's scale).

Int128 arithmetic wraps silently on overflow. Every product and sum that could leave the range is therefore also
computed in Float64, as a *shadow*: a value is in range when its shadow is at most :data:`SHADOW_LIMIT` (so the true
value is far below 2^127 ≈ 1.7e38 and the Int128 result cannot have wrapped) and its exact value is at most
:data:`LIMIT`, the largest integer a ``Decimal(38, s)`` holds. Floats only ever decide "too large", never an amount.
"""

from __future__ import annotations

from decimal import Context, Decimal

import polars as pl

from meter.catalog.types import PLACES

__all__ = [
    "DECIMAL_BOUND",
    "DECIMAL_PLACES",
    "LIMIT",
    "SHADOW_LIMIT",
    "decimal_problem",
    "from_scaled",
    "int128",
    "out_of_range",
    "shadow",
    "to_scaled",
]

#: The largest scaled integer kept: 38 digits, what a ``Decimal(38, s)`` column holds.
LIMIT = 10**38 - 1
#: A shadow above this means the value is out of range (or its Int128 may have wrapped). The gap up to 2^127 covers
#: Float64's rounding, which is relative and tiny (sums here are of non-negative terms, so it does not cancel).
SHADOW_LIMIT = 1.2e38
#: Digits after the point of every quantity and price rating reads, and of every number the exports write: the
#: catalog's (every catalog number has at most these, :mod:`meter.catalog.types`).
DECIMAL_PLACES = PLACES
#: A ``Decimal(38, 9)`` (the usage export's ``value``, the invoices export's amounts) holds magnitudes below this.
DECIMAL_BOUND = Decimal(10) ** (38 - DECIMAL_PLACES)
_QUANTUM = Decimal(1).scaleb(-DECIMAL_PLACES)
# Room for every digit of a value below the bound (the default context keeps 28, and would round).
_CONTEXT = Context(prec=80)


def decimal_problem(value: object) -> str | None:
    """Why a ``Decimal(38, 9)`` cannot hold ``value`` exactly, as the end of a sentence; None when it can."""
    if not isinstance(value, Decimal) or not value.is_finite():
        return f"must be a finite Decimal; got {value!r}"
    if value.copy_abs() >= DECIMAL_BOUND:  # abs() would round to the context's 28 digits first
        return f"is {value}, beyond the 10^29 pricing computes exactly"
    if value.quantize(_QUANTUM, context=_CONTEXT) != value:
        return f"is {value}, which has more than {DECIMAL_PLACES} decimal places: round it to {DECIMAL_PLACES}"
    return None


def int128(value: int) -> pl.Expr:
    """An Int128 literal (integer literals would otherwise be Int32 and make polars upcast per operation)."""
    return pl.lit(value, pl.Int128)


def to_scaled(decimal: pl.Expr, scale: int) -> pl.Expr:
    """A decimal column as an Int128 count of ``10^-scale``.

    The cast to ``Decimal(38, scale)`` is exact when the column's scale is at most ``scale`` (callers check this), and
    raises rather than wraps when a value does not fit.
    """
    return decimal.cast(pl.Decimal(38, scale)).to_physical()


def from_scaled(scaled: pl.Expr, scale: int) -> pl.Expr:
    """An Int128 count of ``10^-scale`` as a ``Decimal(38, scale)``; the value must be within :data:`LIMIT`."""
    # Decimal(38, 0) × Decimal(38, s) keeps scale s, and the true product's scale is 0 + s: nothing is cut.
    return scaled.cast(pl.Decimal(38, 0)) * pl.lit(Decimal(1).scaleb(-scale), pl.Decimal(38, scale))


def shadow(scaled: pl.Expr) -> pl.Expr:
    """The Float64 approximation of an Int128, for overflow checks only."""
    return scaled.cast(pl.Float64)


def out_of_range(exact: pl.Expr, approximate: pl.Expr) -> pl.Expr:
    """True where ``exact`` (Int128) may have wrapped or exceeds :data:`LIMIT`; ``approximate`` is its shadow."""
    return (approximate.abs() > SHADOW_LIMIT) | (exact.abs() > LIMIT)
