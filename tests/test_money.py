"""Half-even division on Int128 columns (meter.pricing.money.divide_half_even) against Decimal's own rounding."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal

import polars as pl
from hypothesis import given
from hypothesis import strategies as st
from meter.pricing.money import divide_half_even

EXACT = Context(prec=100, rounding=ROUND_HALF_EVEN)


@given(
    numerator=st.integers(min_value=-(10**37), max_value=10**37),
    divisor=st.one_of(st.integers(min_value=1, max_value=1000), st.sampled_from([10**11, 3, 7, 2, 10**18])),
)
def test_divide_half_even_is_decimal_half_even(numerator: int, divisor: int) -> None:
    frame = pl.DataFrame({"n": [numerator], "d": [divisor]}, schema={"n": pl.Int128, "d": pl.Int128})
    got = frame.select(divide_half_even(pl.col("n"), pl.col("d"))).item()
    expected = EXACT.divide(Decimal(numerator), Decimal(divisor)).to_integral_value(context=EXACT)
    assert got == int(expected)


def test_ties_go_to_the_even_neighbour() -> None:
    frame = pl.DataFrame(
        {"n": [5, 15, 25, -5, -15, 7], "d": [10, 10, 10, 10, 10, 2]}, schema=[("n", pl.Int128), ("d", pl.Int128)]
    )
    assert frame.select(divide_half_even(pl.col("n"), pl.col("d"))).to_series().to_list() == [0, 2, 2, 0, -2, 4]
