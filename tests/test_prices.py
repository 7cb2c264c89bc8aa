"""Price definitions: every model decodes from JSON.

Prices pricing could not compute exactly are refused with a message that says what to fix.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest
from meter.catalog.prices import Price, validate_price
from meter.exceptions import InvalidInput


def price(**fields: Any) -> Price:
    return msgspec.convert({"id": "p1", "currency": "USD", "meter": "tokens", **fields}, Price)


def refused(p: Price) -> str:
    with pytest.raises(InvalidInput) as e:
        validate_price(p)
    assert e.value.code == "invalid_price"
    return str(e.value)


TIERS = [{"from": "0", "up_to": "1000", "unit_price": "0.002"}, {"from": "1000", "unit_price": "0.001"}]

VALID = [
    {"model": "flat", "meter": None, "amount": "49.00", "cadence": "in_advance"},
    {"model": "per_unit", "unit_price": "0.000002", "free_allowance": "1000000", "minimum": "5", "maximum": "500"},
    {"model": "graduated", "tiers": TIERS},
    {"model": "volume", "tiers": TIERS},
    {"model": "package", "package": {"size": "1000", "price": "0.50", "rounding": "down"}},
    {"model": "percentage", "percentage": {"percent": "2.5", "per": "event", "min_fee": "0.30", "max_fee": "10"}},
    {
        "model": "matrix",
        "matrix": {
            "dimensions": ["model", "kind"],
            "entries": [
                {"values": {"model": "gpt-4o", "kind": "input"}, "unit_price": "0.0000025"},
                {"values": {"model": "gpt-4o", "kind": "output"}, "unit_price": "0.00001"},
            ],
        },
    },
]


@pytest.mark.parametrize("fields", VALID, ids=[v["model"] for v in VALID])
def test_every_model_is_accepted_and_exact(fields: dict[str, Any]) -> None:
    p = price(**fields)
    validate_price(p)
    # Amounts are decimals end to end: what was sent is what is kept.
    again = msgspec.json.decode(msgspec.json.encode(p), type=Price)
    assert again == p
    assert not any(isinstance(v, float) for v in msgspec.to_builtins(p).values())


def test_tiers_with_a_gap_or_an_overlap_are_refused() -> None:
    gap = [{"from": "0", "up_to": "1000", "unit_price": "2"}, {"from": "1500", "unit_price": "1"}]
    assert "tier 2 starts at 1500 but tier 1 ends at 1000: a gap" in refused(price(model="graduated", tiers=gap))
    overlap = [{"from": "0", "up_to": "1000", "unit_price": "2"}, {"from": "900", "unit_price": "1"}]
    assert "an overlap" in refused(price(model="volume", tiers=overlap))
    bounded = [{"from": "0", "up_to": "1000", "unit_price": "2"}]
    assert "last tier must be unbounded" in refused(price(model="graduated", tiers=bounded))
    late = [{"from": "10", "unit_price": "2"}]
    assert "first tier must start at 0" in refused(price(model="graduated", tiers=late))


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"model": "per_unit", "unit_price": "1", "currency": "usd"}, "ISO 4217"),
        ({"model": "per_unit", "meter": None, "unit_price": "1"}, 'set "meter"'),
        ({"model": "flat", "amount": "1"}, 'remove "meter"'),
        ({"model": "per_unit"}, 'needs "unit_price"'),
        ({"model": "per_unit", "unit_price": "1", "tiers": TIERS}, '"tiers" does not belong'),
        ({"model": "per_unit", "unit_price": "-1"}, "0 or more"),
        ({"model": "per_unit", "unit_price": "NaN"}, "finite"),
        ({"model": "per_unit", "unit_price": "1", "minimum": "10", "maximum": "5"}, "above maximum"),
        ({"model": "package", "package": {"size": "0", "price": "1"}}, "size above 0"),
        ({"model": "percentage", "percentage": {"percent": "120"}}, "at most 100"),
        (
            {
                "model": "matrix",
                "matrix": {
                    "dimensions": ["model"],
                    "entries": [
                        {"values": {"model": "a"}, "unit_price": "1"},
                        {"values": {"model": "a"}, "unit_price": "2"},
                    ],
                },
            },
            "repeats the combination",
        ),
        (
            {
                "model": "matrix",
                "matrix": {"dimensions": ["model", "kind"], "entries": [{"values": {"model": "a"}, "unit_price": "1"}]},
            },
            "exactly model, kind",
        ),
    ],
)
def test_bad_prices_say_what_to_fix(fields: dict[str, Any], says: str) -> None:
    try:
        p = price(**fields)
    except msgspec.ValidationError as e:  # a value outside its kind's limits: refused as the price is built
        assert says in str(e)
        return
    assert says in refused(p)


def test_json_numbers_become_exact_decimals_never_floats() -> None:
    raw = b'{"id": "p", "currency": "USD", "model": "flat", "amount": 0.1, "minimum": 0.300000001}'
    p = msgspec.json.decode(raw, type=Price)
    assert p.amount == Decimal("0.1") and p.minimum == Decimal("0.300000001")
    with pytest.raises(msgspec.ValidationError, match="more than 9 digits after the point"):
        msgspec.json.decode(raw.replace(b"0.300000001", b"0.30000000000000004441"), type=Price)
