"""Rating (meter.pricing): worked examples computed by hand for every model, and properties against a reference.

Also: rounding at the edges, and errors that say what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal
from typing import Any

import msgspec
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meter.catalog.prices import Price
from meter.catalog.types import trusted
from meter.exceptions import InvalidInput, ValueOverflow
from meter.pricing import (
    charges_and_prices,
    combination_expr,
    combination_key,
    minor_units,
    price_frame,
    rate,
    round_half_even,
    round_to_minor_unit,
)
from meter.pricing.exact import from_scaled, to_scaled
from meter.pricing.money import round_column_half_even, round_scaled_half_even

D = Decimal
ZERO, ONE = D(0), D(1)
QUANTITY = pl.Decimal(38, 9)
EXACT = Context(prec=120)

# Stripe's tiered-pricing example (docs "Set up tiered pricing"): fonts 1-5 at 7 USD, 6-10 at 6.50, 11+ at 6.
STRIPE_TIERS = [
    {"from": "0", "up_to": "5", "unit_price": "7"},
    {"from": "5", "up_to": "10", "unit_price": "6.50"},
    {"from": "10", "unit_price": "6"},
]


def price(model: str, **fields: Any) -> Price:
    base = {"id": f"p-{model}", "currency": "USD", "model": model, "meter": None if model == "flat" else "usage"}
    return msgspec.convert({**base, **fields}, Price)


def matrix_price(**fields: Any) -> Price:
    entries = [
        ({"model": "small", "kind": "in"}, "0.001"),
        ({"model": "small", "kind": "out"}, "0.002"),
        ({"model": "large", "kind": "in"}, "0.01"),
        ({"model": "large", "kind": "out"}, "0.03"),
    ]
    return price(
        "matrix",
        matrix={"dimensions": ["model", "kind"], "entries": [{"values": v, "unit_price": p} for v, p in entries]},
        **fields,
    )


def quantities(rows: Sequence[tuple[str, Decimal | int | str, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"charge": [r[0] for r in rows], "quantity": [D(r[1]) for r in rows], "combination": [r[2] for r in rows]},
        schema={"charge": pl.String, "quantity": QUANTITY, "combination": pl.String},
    )


def events(charge: str, amounts: Sequence[str | int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"charge": [charge] * len(amounts), "amount": [D(a) for a in amounts]},
        schema={"charge": pl.String, "amount": QUANTITY},
    )


def rate_one(
    p: Price,
    quantity: Decimal | int | str | None = None,
    *,
    cells: Mapping[str, Decimal] | None = None,
    event_amounts: Sequence[str | int] | None = None,
    proration: Decimal = ONE,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The line and the details of one charge "c" at price ``p``."""
    charges, prices = charges_and_prices([("c", p, proration)])
    rows: list[tuple[str, Decimal | int | str, str | None]] = []
    if quantity is not None:
        rows.append(("c", quantity, None))
    rows += [("c", q, combination) for combination, q in (cells or {}).items()]
    rated = rate(charges, prices, quantities(rows), None if event_amounts is None else events("c", event_amounts))
    assert rated.lines.height == 1
    return rated.lines.row(0, named=True), rated.details.to_dicts()


def amount(p: Price, quantity: Decimal | int | str | None = None, **kwargs: Any) -> Decimal:
    line, _ = rate_one(p, quantity, **kwargs)
    return D(line["amount_exact"])


def cell(**values: str) -> str:
    return combination_key(values)


# --- worked examples: every model, with totals computed by hand ---------------------------------------------------


@pytest.mark.parametrize(
    ("fonts", "graduated", "volume"),
    [
        (1, "7", "7"),
        (5, "35", "35"),
        (6, "41.50", "39"),
        (8, "54.50", "52.00"),
        (10, "67.50", "65"),
        (20, "127.50", "120"),
        (25, "157.50", "150"),
        (0, "0", "0"),
    ],
)
def test_stripe_fonts_example_graduated_and_volume(fonts: int, graduated: str, volume: str) -> None:
    # Graduated 8 fonts = 5 × 7 + 3 × 6.50; volume 8 fonts = 8 × 6.50 (Stripe's own table gives 5 → 35, 6 → 39,
    # 20 → 120, 25 → 150 for volume).
    assert amount(price("graduated", tiers=STRIPE_TIERS), fonts) == D(graduated)
    assert amount(price("volume", tiers=STRIPE_TIERS), fonts) == D(volume)


def test_graduated_details_name_each_touched_tier() -> None:
    line, details = rate_one(price("graduated", tiers=STRIPE_TIERS), 12)
    assert [(d["component"], d["tier"], d["units"], d["unit_price"], d["subtotal"]) for d in details] == [
        ("tier", 1, D(5), D(7), D(35)),
        ("tier", 2, D(5), D("6.5"), D("32.5")),
        ("tier", 3, D(2), D(6), D(12)),
    ]
    assert line["amount"] == D("79.50") and line["billable"] == D(12)


TIERS_WITH_FEES = [
    {"from": "0", "up_to": "5", "unit_price": "5", "flat_fee": "10"},
    {"from": "5", "unit_price": "4", "flat_fee": "20"},
]


@pytest.mark.parametrize(
    ("units", "graduated", "volume"),
    [
        (0, "0", "0"),  # no unit, no tier touched: no flat fee either
        (3, "25", "25"),  # 3 × 5 + 10
        (5, "35", "35"),  # the fifth unit is still in [0, 5): tier 2 untouched
        (7, "63", "48"),  # graduated 5 × 5 + 10 + 2 × 4 + 20; volume 7 × 4 + 20
    ],
)
def test_flat_fee_tiers(units: int, graduated: str, volume: str) -> None:
    assert amount(price("graduated", tiers=TIERS_WITH_FEES), units) == D(graduated)
    assert amount(price("volume", tiers=TIERS_WITH_FEES), units) == D(volume)


def test_lago_volume_example() -> None:
    # Lago's volume doc: 65,000 API calls, tier 50,001-100,000 at $0.0006 with a $10 flat fee: 65,000 × 0.0006 + 10.
    tiers = [
        {"from": "0", "up_to": "10000", "unit_price": "0.001", "flat_fee": "10"},
        {"from": "10000", "up_to": "50000", "unit_price": "0.0008", "flat_fee": "10"},
        {"from": "50000", "up_to": "100000", "unit_price": "0.0006", "flat_fee": "10"},
        {"from": "100000", "unit_price": "0.0004", "flat_fee": "10"},
    ]
    assert amount(price("volume", tiers=tiers), 65_000) == D(49)
    assert amount(price("volume", tiers=tiers), 10_000) == D(20)  # 10,000 × 0.001 + 10: the last unit is in tier 1


def test_graduated_lago_and_orb_style_examples() -> None:
    # $1 for the first 100 units, $0.50 for the next 100, $0.10 after: 250 units = 100 + 50 + 5.
    lago = [
        {"from": "0", "up_to": "100", "unit_price": "1"},
        {"from": "100", "up_to": "200", "unit_price": "0.5"},
        {"from": "200", "unit_price": "0.1"},
    ]
    assert amount(price("graduated", tiers=lago), 250) == D(155)
    # 15,000 requests: 1,000 × 0.10 + 9,000 × 0.05 + 5,000 × 0.01 = 600 graduated; volume 15,000 × 0.01 = 150.
    three = [
        {"from": "0", "up_to": "1000", "unit_price": "0.10"},
        {"from": "1000", "up_to": "10000", "unit_price": "0.05"},
        {"from": "10000", "unit_price": "0.01"},
    ]
    assert amount(price("graduated", tiers=three), 15_000) == D(600)
    assert amount(price("volume", tiers=three), 15_000) == D(150)


def test_per_unit_with_free_allowance() -> None:
    line, details = rate_one(price("per_unit", unit_price="0.002", free_allowance="1000"), "1500.5")
    assert (line["quantity"], line["billable"], line["amount_exact"], line["amount"]) == (
        D("1500.5"),
        D("500.5"),
        D("1.001"),
        D("1.00"),
    )
    assert details[0]["units"] == D("500.5") and details[0]["unit_price"] == D("0.002")
    assert amount(price("per_unit", unit_price="0.002", free_allowance="1000"), 999) == 0


def test_allowance_is_taken_before_the_tiers() -> None:
    # 12 units, 4 free: 8 billable = 5 × 7 + 3 × 6.50.
    assert amount(price("graduated", tiers=STRIPE_TIERS, free_allowance="4"), 12) == D("54.50")


@pytest.mark.parametrize(
    ("rounding", "units", "expected", "packages"),
    [
        ("up", "250", "15", 3),
        ("down", "250", "10", 2),
        ("up", "200", "10", 2),
        ("down", "200", "10", 2),
        ("up", "0.5", "5", 1),
        ("down", "99.999999999", "0", 0),
        ("up", "0", "0", 0),
    ],
)
def test_package(rounding: str, units: str, expected: str, packages: int) -> None:
    p = price("package", package={"size": "100", "price": "5", "rounding": rounding})
    line, details = rate_one(p, units)
    assert line["amount_exact"] == D(expected)
    assert details[0]["units"] == packages and details[0]["unit_price"] == 5


def test_percentage_per_event_bounds_each_fee() -> None:
    p = price("percentage", percentage={"percent": "2.9", "per": "event", "min_fee": "0.30", "max_fee": "10"})
    line, details = rate_one(p, event_amounts=["5", "100", "1000"])
    # 5 × 2.9 % = 0.145 raised to 0.30; 100 → 2.90; 1000 → 29 cut to 10.
    assert line["amount_exact"] == D("13.20") and line["quantity"] == D(1105)
    assert (details[0]["events"], details[0]["raised_to_min_fee"], details[0]["cut_to_max_fee"]) == (3, 1, 1)
    assert details[0]["unit_price"] == D("0.029")
    assert rate_one(p, event_amounts=[])[0]["amount_exact"] == 0
    assert amount(p, event_amounts=["10", "20"]) == D("0.88")  # 0.29 raised to 0.30, plus 0.58


def test_percentage_per_period_bounds_the_period_fee() -> None:
    p = price("percentage", percentage={"percent": "2", "min_fee": "0.50", "max_fee": "100"})
    assert amount(p, "12.34") == D("0.50")  # 0.2468 raised
    assert amount(p, "1000") == D("20")
    assert amount(p, "10000") == D("100")  # 200 cut
    assert amount(p) == D("0.50")  # no usage: the floor still applies
    line, details = rate_one(price("percentage", percentage={"percent": "1.5"}), "33.333")
    assert line["amount_exact"] == D("0.499995") and line["amount"] == D("0.50")
    assert details[0]["raised_to_min_fee"] == 0 and details[0]["events"] is None


def test_matrix_prices_each_combination_and_takes_the_allowance_in_text_order() -> None:
    p = matrix_price(free_allowance="1500")
    cells = {
        cell(model="small", kind="in"): D(1000),
        cell(model="small", kind="out"): D(500),
        cell(model="large", kind="in"): D(700),
        cell(model="large", kind="out"): D(100),
    }
    line, details = rate_one(p, cells=cells)
    # Text order ("kind" sorts before "model"): in/large, in/small, out/large, out/small. The 1500 free units cover
    # in/large (700) and 800 of in/small: 200 × 0.001 + out/large 100 × 0.03 + out/small 500 × 0.002 = 4.20.
    assert [(d["combination"], d["free_units"], d["units"]) for d in details] == [
        (cell(model="large", kind="in"), 700, 0),
        (cell(model="small", kind="in"), 800, 200),
        (cell(model="large", kind="out"), 0, 100),
        (cell(model="small", kind="out"), 0, 500),
    ]
    assert line["amount_exact"] == D("4.2") and line["quantity"] == 2300 and line["billable"] == 800


def test_matrix_usage_without_an_entry_is_an_error_naming_it() -> None:
    with pytest.raises(InvalidInput) as error:
        rate_one(matrix_price(), cells={cell(model="huge", kind="in"): D(1)})
    assert error.value.code == "unpriced_usage"
    assert '{"kind":"in","model":"huge"}' in str(error.value) and "'c'" in str(error.value)


def test_minimum_and_maximum_bound_the_period() -> None:
    low = price("per_unit", unit_price="0.01", minimum="10", maximum="50")
    line, _ = rate_one(low, 100)
    assert (line["subtotal"], line["amount_exact"], line["minimum_applied"], line["maximum_applied"]) == (
        D(1),
        D(10),
        True,
        False,
    )
    line, _ = rate_one(low, 10_000)
    assert (line["amount_exact"], line["minimum_applied"], line["maximum_applied"]) == (D(50), False, True)
    assert rate_one(low)[0]["amount_exact"] == D(10)  # no usage at all still pays the minimum
    assert amount(low, 2000) == D(20)


def test_flat_fee_prorated() -> None:
    fee = price("flat", amount="30")
    assert amount(fee) == D(30)
    line, details = rate_one(fee, proration=D("0.5"))
    assert line["amount_exact"] == D(15) and line["quantity"] is None
    assert (details[0]["units"], details[0]["unit_price"]) == (D("0.5"), D(30))
    # A third of a period, rounded by the caller to 9 decimals: 30 × 0.333333333 = 9.99999999, billed 10.00.
    line, _ = rate_one(fee, proration=D("0.333333333"))
    assert (line["amount_exact"], line["amount"]) == (D("9.99999999"), D("10.00"))


# --- rounding at the edges ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "unit_price", "expected"),
    [
        ("USD", "0.005", "0.00"),
        ("USD", "0.015", "0.02"),
        ("USD", "0.025", "0.02"),
        ("USD", "0.025000001", "0.03"),
        ("USD", "0.024999999", "0.02"),
        ("JPY", "0.5", "0"),
        ("JPY", "1.5", "2"),
        ("JPY", "2.5", "2"),
        ("JPY", "3.500000001", "4"),
        ("KWD", "0.0005", "0.000"),
        ("KWD", "0.0015", "0.002"),
        ("KWD", "1.2345", "1.234"),
        ("BHD", "0.0035", "0.004"),
        ("CLF", "0.00005", "0.0000"),
        ("CLF", "0.00015", "0.0002"),
        ("EUR", "7", "7.00"),
    ],
)
def test_half_even_ties_at_the_minor_unit(currency: str, unit_price: str, expected: str) -> None:
    line, _ = rate_one(price("per_unit", unit_price=unit_price, currency=currency), 1)
    assert line["amount"] == D(expected)
    assert line["amount"] == round_to_minor_unit(line["amount_exact"], currency)


def test_minor_units_table() -> None:
    assert [minor_units(c) for c in ("USD", "JPY", "KRW", "VND", "KWD", "BHD", "TND", "CLF", "EUR")] == [
        2,
        0,
        0,
        0,
        3,
        3,
        3,
        4,
        2,
    ]
    assert round_to_minor_unit(D("-0.125"), "USD") == D("-0.12")
    assert round_to_minor_unit(D("123456789012345678901234567.5"), "JPY") == D("123456789012345678901234568")


def test_many_tiny_charges_stay_exact() -> None:
    nano = price("per_unit", unit_price="0.000000001")
    rows = [(f"c{i}", nano, D(1)) for i in range(10_000)]
    charges, prices = charges_and_prices(rows)
    rated = rate(charges, prices, quantities([(f"c{i}", 1, None) for i in range(10_000)]))
    assert rated.lines.get_column("amount_exact").to_list() == [D("1E-9")] * 10_000
    assert sum(rated.lines.get_column("amount_exact").to_list(), D(0)) == D("0.00001")
    assert rated.lines.get_column("amount").sum() == 0  # each line rounds to 0.00: totals sum rounded lines


def test_very_large_quantities_stay_exact() -> None:
    assert amount(price("per_unit", unit_price="99.999999999"), 10**15) == D("99999999999000000")
    q, unit = D("999999999999999.999999999"), D("0.123456789")
    # 33 significant digits, all kept (Python's default Decimal context, 28 digits, would round this product).
    assert amount(price("per_unit", unit_price=str(unit)), q) == EXACT.multiply(q, unit)
    assert EXACT.multiply(q, unit) == D("123456788999999.999999999876543211")
    assert amount(price("graduated", tiers=STRIPE_TIERS), 10**15) == D(35 + D("32.5")) + (10**15 - 10) * 6
    big = price("per_unit", unit_price="0.000000001", currency="JPY")
    assert rate_one(big, D("99999999999999999999.999999999"))[0]["amount"] == D(100_000_000_000)


def test_amounts_beyond_the_exact_range_raise_rather_than_wrap() -> None:
    with pytest.raises(ValueOverflow):
        rate_one(price("per_unit", unit_price="1000"), 10**18)
    with pytest.raises(ValueOverflow):
        rate_one(price("percentage", percentage={"percent": "100"}), 10**28)
    # A fee cut to max_fee is back in range even when the uncut fee was not.
    p = price("percentage", percentage={"percent": "100", "max_fee": "5"})
    assert amount(p, D("99999999999999999999999999999")) == 5


# --- errors that say what to fix ------------------------------------------------------------------------------------


def invalid(call: Any, *args: Any, **kwargs: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as error:
        call(*args, **kwargs)
    return error.value


def test_errors_name_what_to_fix() -> None:
    per_unit = price("per_unit", unit_price="1")
    charges, prices = charges_and_prices([("a", per_unit, D(1))])
    assert "'ghost'" in str(invalid(rate, charges, prices, quantities([("ghost", 1, None)])))
    floats = pl.DataFrame({"charge": ["a"], "quantity": [1.5]})
    assert "floats are not exact" in str(invalid(rate, charges, prices, floats))
    ten_places = pl.DataFrame(
        {"charge": ["a"], "quantity": [D("1.0000000001")]}, schema={"charge": pl.String, "quantity": pl.Decimal(38, 10)}
    )
    assert "more than 9 decimal places" in str(invalid(rate, charges, prices, ten_places))
    trailing = pl.DataFrame(
        {"charge": ["a"], "quantity": [D("2.5000000000")]}, schema={"charge": pl.String, "quantity": pl.Decimal(38, 10)}
    )
    assert rate(charges, prices, trailing).lines["amount"].item() == D("2.5")
    combined = quantities([("a", 1, cell(model="small", kind="in"))])
    assert "only matrix charges take a combination" in str(invalid(rate, charges, prices, combined))
    assert "event_amounts are for percentages" in str(invalid(rate, charges, prices, quantities([]), events("a", [1])))

    with trusted():  # prices the catalog refuses (meter.catalog.types), built to test rating's own checks
        tiny, huge_unit, huge_amount = (
            price("per_unit", unit_price="0.0000000001"),
            price("per_unit", unit_price="1e27"),
            price("flat", amount="1e18"),
        )
    error = invalid(price_frame, [tiny])
    assert error.code == "invalid_price" and "more than 9 decimal places" in str(error)
    assert "below 10^27" in str(invalid(price_frame, [huge_unit]))
    assert "below 10^18" in str(invalid(price_frame, [huge_amount]))
    assert "proration applies to flat fees only" in str(invalid(rate_one, per_unit, 1, proration=D("0.5")))
    stray = pl.DataFrame({"charge": ["a"], "price_id": ["nope"]})
    assert "names price 'nope'" in str(invalid(rate, stray, prices, quantities([])))
    twice, _ = charges_and_prices([("a", per_unit, D(1)), ("a", per_unit, D(1))])
    assert "unique" in str(invalid(rate, twice, prices, quantities([])))
    per_event = price("percentage", percentage={"percent": "1", "per": "event"})
    assert "event_amounts" in str(invalid(rate_one, per_event, 5))
    assert "free allowance" in str(
        invalid(price_frame, [price("percentage", free_allowance="1", percentage={"percent": "1", "per": "event"})])
    )
    assert "combination" in str(invalid(rate_one, matrix_price(), 5))
    other = price("per_unit", id="p-per_unit", unit_price="2")
    assert "two different prices" in str(invalid(price_frame, [per_unit, other]))


def test_a_hand_built_prices_frame_with_broken_tiers_is_refused() -> None:
    _, prices = charges_and_prices([("a", price("graduated", tiers=STRIPE_TIERS), D(1))])
    gap = prices.with_columns(
        pl.col("tiers").list.eval(
            pl.element().struct.with_fields(
                start=pl.when(pl.element().struct.field("start") == 5)
                .then(pl.lit(D(6), QUANTITY))
                .otherwise(pl.element().struct.field("start"))
            )
        )
    )
    charges = pl.DataFrame({"charge": ["a"], "price_id": ["p-graduated"]})
    assert "tier 2 breaks the rules of tiers" in str(invalid(rate, charges, gap, quantities([("a", 1, None)])))


# --- frames: order, keys, explanation -------------------------------------------------------------------------------


def test_lines_keep_the_order_of_charges_and_details_explain_them() -> None:
    rows = [
        ("z", price("graduated", tiers=STRIPE_TIERS), D(1)),
        ("a", price("flat", amount="9"), D(1)),
        ("m", matrix_price(), D(1)),
        ("b", price("per_unit", unit_price="3"), D(1)),
    ]
    charges, prices = charges_and_prices(rows)
    usage = quantities(
        [
            ("z", 11, None),
            ("b", 2, None),
            ("m", 4, cell(model="large", kind="out")),
            ("m", 10, cell(model="small", kind="in")),
        ]
    )
    rated = rate(charges, prices, usage)
    assert rated.lines["charge"].to_list() == ["z", "a", "m", "b"]
    assert rated.lines["amount"].to_list() == [D("73.50"), D(9), D("0.13"), D(6)]
    check_details(rated.lines, rated.details)
    keys = rated.details["charge"].to_list()
    assert keys == sorted(keys, key=keys.index)  # a charge's details are adjacent


def test_integer_keys_and_integer_quantities() -> None:
    charges = pl.DataFrame({"charge": [7, 3], "price_id": ["p-per_unit", "p-per_unit"]})
    prices = price_frame([price("per_unit", unit_price="0.5")])
    usage = pl.DataFrame({"charge": [3, 7, 3], "quantity": [4, 1, 2]})
    assert rate(charges, prices, usage).lines["amount"].to_list() == [D("0.5"), D(3)]


def test_no_charges() -> None:
    empty = pl.DataFrame(schema={"charge": pl.String, "price_id": pl.String})
    rated = rate(empty, price_frame([]), quantities([]))
    assert rated.lines.height == 0 and rated.details.height == 0
    assert rated.lines.schema["amount"] == pl.Decimal(38, 4)


def check_details(lines: pl.DataFrame, details: pl.DataFrame) -> None:
    """Each line's subtotal is the sum of its details; each detail is units × unit_price + flat_fee unless bounded."""
    sums: dict[Any, Decimal] = {}
    for d in details.iter_rows(named=True):
        sums[d["charge"]] = sums.get(d["charge"], D(0)) + d["subtotal"]
        if not (d["raised_to_min_fee"] or d["cut_to_max_fee"]):
            assert d["subtotal"] == d["units"] * d["unit_price"] + (d["flat_fee"] or 0), d
    for line in lines.iter_rows(named=True):
        assert line["subtotal"] == sums.get(line["charge"], D(0))


# --- money and exactness --------------------------------------------------------------------------------------------

SCALED = st.integers(min_value=-(10**38 - 1), max_value=10**38 - 1)
CURRENCIES = st.sampled_from(["USD", "JPY", "KWD", "CLF", "EUR", "BHD", "XXX"])


@given(values=st.lists(SCALED, min_size=1, max_size=20), scale=st.sampled_from([0, 4, 9, 11, 20, 38]))
def test_scaled_integers_and_decimals_convert_exactly(values: list[int], scale: int) -> None:
    series = pl.Series("x", values, dtype=pl.Int128)
    decimals = series.to_frame().select(from_scaled(pl.col("x"), scale)).to_series()
    assert decimals.to_list() == [D(v).scaleb(-scale, context=EXACT) for v in values]
    assert decimals.to_frame().select(to_scaled(pl.col("x"), scale)).to_series().to_list() == values


@given(
    rows=st.lists(st.tuples(st.integers(min_value=-(10**37), max_value=10**37), CURRENCIES), min_size=1, max_size=20)
)
def test_vectorised_rounding_equals_decimal_quantize(rows: list[tuple[int, str]]) -> None:
    frame = pl.DataFrame(
        {"scaled": [r[0] for r in rows], "currency": [r[1] for r in rows]},
        schema={"scaled": pl.Int128, "currency": pl.String},
    )
    expected = [round_to_minor_unit(D(v).scaleb(-20, context=EXACT), c) for v, c in rows]
    amounts = frame.select(from_scaled(pl.col("scaled"), 20).alias("amount"), "currency")
    by_expression = amounts.select(round_half_even(pl.col("amount"), pl.col("currency"))).to_series().to_list()
    assert by_expression == expected
    digits = frame.with_columns(digits=pl.col("currency").map_elements(minor_units, return_dtype=pl.Int8))
    by_frame = round_column_half_even(digits, "scaled", 20, "digits").to_list()
    by_expr = digits.select(round_scaled_half_even(pl.col("scaled"), 20, pl.col("digits"))).to_series().to_list()
    assert by_frame == by_expr == [int(e.scaleb(minor_units(c))) for e, (_, c) in zip(expected, rows, strict=True)]


@given(values=st.lists(st.text(), min_size=2, max_size=2), names=st.sampled_from([["a", "b"], ["kind", "model"]]))
def test_combination_expr_matches_combination_key(values: list[str], names: list[str]) -> None:
    frame = pl.DataFrame({names[1]: [values[1]], names[0]: [values[0]]})
    assert frame.select(combination_expr(list(reversed(names)))).item() == combination_key(
        dict(zip(names, values, strict=True))
    )


# --- properties against a plain-Decimal reference model -------------------------------------------------------------


def reference(
    p: Price,
    quantity: Decimal = ZERO,
    cells: Mapping[str, Decimal] | None = None,
    event_amounts: Sequence[Decimal] = (),
    proration: Decimal = ONE,
) -> Decimal:
    """The exact amount of one charge, computed the obvious way with Decimal (120 digits: nothing is rounded)."""
    c = EXACT

    def bound(fee: Decimal, low: Decimal | None, high: Decimal | None) -> Decimal:
        fee = max(fee, low) if low is not None else fee
        return min(fee, high) if high is not None else fee

    billable = max(c.subtract(quantity, p.free_allowance), D(0))
    total = D(0)
    if p.model == "flat":
        assert p.amount is not None
        total = c.multiply(p.amount, proration)
    elif p.model == "per_unit":
        assert p.unit_price is not None
        total = c.multiply(billable, p.unit_price)
    elif p.model in ("graduated", "volume"):
        assert p.tiers is not None
        for tier in p.tiers:
            end = tier.up_to
            if p.model == "graduated":
                units = max(D(0), billable - tier.start)
                units = min(units, end - tier.start) if end is not None else units
                if units > 0:
                    total += c.multiply(units, tier.unit_price) + tier.flat_fee
            elif tier.start < billable and (end is None or billable <= end):
                total = c.multiply(billable, tier.unit_price) + tier.flat_fee
    elif p.model == "package":
        assert p.package is not None
        rounding = ROUND_CEILING if p.package.rounding == "up" else ROUND_FLOOR
        packages = c.divide(billable, p.package.size).to_integral_value(rounding=rounding)
        total = c.multiply(packages, p.package.price)
    elif p.model == "percentage":
        assert p.percentage is not None
        pct = p.percentage
        amounts = list(event_amounts) if pct.per == "event" else [billable]
        total = sum((bound(c.multiply(a, pct.percent) / 100, pct.min_fee, pct.max_fee) for a in amounts), D(0))
    else:
        assert p.matrix is not None
        unit_prices = {combination_key(e.values): e.unit_price for e in p.matrix.entries}
        free = p.free_allowance
        for combination in sorted(cells or {}):
            used = max((cells or {})[combination], D(0))
            covered = min(max(free, D(0)), used)
            free -= covered
            total += c.multiply(used - covered, unit_prices[combination])
    return bound(total, p.minimum, p.maximum)


def amounts(max_units: int = 10**6, places: Sequence[int] = (0, 2, 9)) -> st.SearchStrategy[Decimal]:
    return st.sampled_from(places).flatmap(
        lambda p: st.integers(min_value=0, max_value=max_units * 10**p).map(lambda i: D(i).scaleb(-p))
    )


PRICES_MONEY = amounts(1000)


@st.composite
def tiers(draw: st.DrawFn) -> list[dict[str, str]]:
    bounds = sorted(draw(st.lists(st.integers(min_value=1, max_value=10**5), max_size=4, unique=True)))
    starts = [0, *bounds]
    return [
        {
            "from": str(start),
            **({"up_to": str(starts[i + 1])} if i + 1 < len(starts) else {}),
            "unit_price": str(draw(PRICES_MONEY)),
            "flat_fee": str(draw(st.sampled_from([D(0), D(0), D("2.5")]))),
        }
        for i, start in enumerate(starts)
    ]


@st.composite
def prices(
    draw: st.DrawFn,
    models: Sequence[str] = ("flat", "per_unit", "graduated", "volume", "package", "percentage", "matrix"),
) -> Price:
    model = draw(st.sampled_from(models))
    fields: dict[str, Any] = {
        "id": f"p{draw(st.integers(0, 10**9))}",
        "currency": draw(st.sampled_from(["USD", "JPY", "KWD"])),
    }
    if model != "flat" and draw(st.booleans()):
        fields["free_allowance"] = str(draw(amounts(1000)))
    if draw(st.booleans()):
        low = draw(PRICES_MONEY)
        fields.update(minimum=str(low), maximum=str(low + draw(PRICES_MONEY)))
    if model == "flat":
        fields["amount"] = str(draw(PRICES_MONEY))
    elif model == "per_unit":
        fields["unit_price"] = str(draw(PRICES_MONEY))
    elif model in ("graduated", "volume"):
        fields["tiers"] = draw(tiers())
    elif model == "package":
        fields["package"] = {
            "size": str(draw(amounts(1000)) + D("0.5")),
            "price": str(draw(PRICES_MONEY)),
            "rounding": draw(st.sampled_from(["up", "down"])),
        }
    elif model == "percentage":
        per = draw(st.sampled_from(["event", "period"]))
        floor: Decimal | None = draw(st.none() | PRICES_MONEY)
        ceiling: Decimal | None = draw(st.none() | PRICES_MONEY)
        fields["percentage"] = {
            "percent": str(draw(amounts(100, (0, 1, 9)))),
            "per": per,
            "min_fee": None if floor is None else str(floor),
            "max_fee": None if ceiling is None else str(max(ceiling, floor or ZERO)),
        }
        if per == "event":
            fields.pop("free_allowance", None)
    else:
        return matrix_price(**fields)
    return price(model, **fields)


COMBINATIONS = [cell(model=m, kind=k) for m in ("small", "large") for k in ("in", "out")]


@st.composite
def usages(draw: st.DrawFn, p: Price) -> dict[str, Any]:
    """What one charge used: a quantity, matrix cells or event amounts, as fits its price."""
    if p.model == "flat":
        return {"proration": draw(st.sampled_from([D(1), D(0), D("0.5"), D("0.333333333")]))}
    if p.model == "matrix":
        used = draw(st.lists(st.sampled_from(COMBINATIONS), unique=True, max_size=4))
        return {"cells": {c: draw(amounts()) for c in used}}
    if p.model == "percentage" and p.percentage is not None and p.percentage.per == "event":
        return {"event_amounts": draw(st.lists(amounts(10**4), max_size=5))}
    return {"quantity": draw(amounts(10**6) | st.just(D(0)))}


def rate_many(charges: Sequence[tuple[str, Price, dict[str, Any]]], splits: int = 1) -> pl.DataFrame:
    """Rates the charges together; each quantity sent as ``splits`` rows that add up to it."""
    frame, price_rows = charges_and_prices([(k, p, u.get("proration", D(1))) for k, p, u in charges])
    rows: list[tuple[str, Decimal, str | None]] = []
    event_rows: list[tuple[str, Decimal]] = []
    for key, _, usage in charges:
        parts: list[tuple[Decimal, str | None]] = [(q, c) for c, q in usage.get("cells", {}).items()]
        if "quantity" in usage:
            parts.append((usage["quantity"], None))
        for q, combination in parts:
            first = (q / splits).quantize(D("1e-9"))
            rows += [(key, first, combination)] * (splits - 1) + [(key, q - first * (splits - 1), combination)]
        event_rows += [(key, a) for a in usage.get("event_amounts", [])]
    usage_frame = quantities(rows)
    event_frame = pl.DataFrame(event_rows, schema={"charge": pl.String, "amount": QUANTITY}, orient="row")
    rated = rate(frame, price_rows, usage_frame, event_frame)
    check_details(rated.lines, rated.details)
    return rated.lines


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_model_equals_the_decimal_reference(data: st.DataObject) -> None:
    p = data.draw(prices())
    usage = data.draw(usages(p))
    line = rate_many([("c", p, usage)]).row(0, named=True)
    expected = reference(
        p, usage.get("quantity", D(0)), usage.get("cells"), usage.get("event_amounts", ()), usage.get("proration", D(1))
    )
    assert line["amount_exact"] == expected
    assert line["amount"] == round_to_minor_unit(expected, p.currency)


@settings(max_examples=60, deadline=None)
@given(p=prices(models=("graduated",)), low=amounts(), extra=amounts())
def test_graduated_total_never_decreases_as_usage_grows(p: Price, low: Decimal, extra: Decimal) -> None:
    lines = rate_many([("less", p, {"quantity": low}), ("more", p, {"quantity": low + extra})])
    less, more = lines["amount_exact"].to_list()
    assert less <= more


@st.composite
def charge_sets(draw: st.DrawFn, min_size: int) -> list[tuple[str, Price, dict[str, Any]]]:
    """Charges at a few prices (several charges may share one), each with what it used."""
    pool = [
        msgspec.structs.replace(p, id=f"p{i}") for i, p in enumerate(draw(st.lists(prices(), min_size=1, max_size=4)))
    ]
    picks = draw(st.lists(st.sampled_from(pool), min_size=min_size, max_size=8))
    return [(f"c{i}", p, draw(usages(p))) for i, p in enumerate(picks)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(charges=charge_sets(min_size=1), splits=st.integers(min_value=2, max_value=4))
def test_quantities_split_over_several_rows_rate_as_one(
    charges: list[tuple[str, Price, dict[str, Any]]], splits: int
) -> None:
    assert rate_many(charges, splits=splits).equals(rate_many(charges))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(charges=charge_sets(min_size=2))
def test_many_charges_rated_together_equal_each_rated_alone(charges: list[tuple[str, Price, dict[str, Any]]]) -> None:
    together = rate_many(charges)
    alone = pl.concat([rate_many([charge]) for charge in charges])
    assert together.equals(alone)
