"""The frames rating reads, built from the catalog's ``Price`` structs so that no caller hand-builds nested columns.

``charges`` has one row per charge, ``prices`` one row per price. A charge is one price applied to one subscription
for one period, under a key of the caller's choosing. Prices are kept apart from charges because a million
subscriptions share a handful of prices: each price's tiers and matrix are then read and checked once, not once per
charge.

- :func:`charges_and_prices` builds both from ``(key, Price, proration)`` rows, for up to some thousands of charges;
- for millions, :func:`price_frame` builds ``prices`` and the caller builds ``charges`` from its subscriptions with
  polars (vectorised), in :data:`~meter.pricing.schema.CHARGES_SCHEMA`: ``charge`` (String, or an integer type,
  which joins faster), ``price_id`` and ``proration`` (optional: 1 when the column is absent).

``prices`` (:data:`~meter.pricing.schema.PRICE_SCHEMA`): ``price_id``, ``currency``, ``model``, ``amount``,
``unit_price``, ``tiers`` (a list of ``{start, up_to, unit_price, flat_fee}``, ``start`` being the catalog's
``from``), ``package_size``, ``package_price``, ``package_rounding`` (``up`` or ``down``), ``percent``,
``percent_per`` (``event`` or ``period``), ``min_fee``, ``max_fee``, ``matrix`` (a list of
``{combination, unit_price}``), ``free_allowance``, ``minimum``, ``maximum``. Every number is a
:data:`~meter.pricing.schema.DECIMAL`: a price with more than 9 decimals is refused, never cut. A price is checked
against the catalog's rules (:func:`meter.catalog.prices.validate_price`) and then against the range rating computes
exactly in (:func:`meter.pricing.price_table.prepare_prices`) as the frame is built, not at the first rating.

A matrix combination is a canonical string, the dimension values as a JSON object with sorted keys:
:func:`combination_key` makes it from a ``dict``, :func:`combination_expr` from the usage export's dimension columns;
both give the same text for the same values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import polars as pl

from meter.catalog.prices import Price, validate_price
from meter.exceptions import InvalidInput
from meter.pricing.errors import fail
from meter.pricing.exact import decimal_problem
from meter.pricing.price_table import prepare_prices
from meter.pricing.schema import CHARGES_SCHEMA, PRICE_SCHEMA

__all__ = ["charges_and_prices", "combination_expr", "combination_key", "price_frame"]


def combination_key(values: Mapping[str, str]) -> str:
    """The canonical text of one matrix combination: ``{"model":"gpt","type":"input"}`` (keys sorted, compact)."""
    return json.dumps(dict(sorted(values.items())), ensure_ascii=False, separators=(",", ":"))


def combination_expr(dimensions: Sequence[str]) -> pl.Expr:
    """:func:`combination_key` of each row of the given dimension columns (as in the usage export)."""
    if not dimensions or len(set(dimensions)) != len(dimensions):
        raise InvalidInput(
            f"a combination needs one or more distinct dimensions; got {list(dimensions)}", code="invalid_dimensions"
        )
    # polars' JSON encoder escapes as json.dumps(ensure_ascii=False) does; tests/test_rating.py holds it to that.
    return pl.struct([pl.col(d).cast(pl.String) for d in sorted(dimensions)]).struct.json_encode()


def price_frame(prices: Iterable[Price]) -> pl.DataFrame:
    """One row per distinct price (by id), validated, in :data:`PRICE_SCHEMA`.

    Raises ``InvalidInput`` (code ``invalid_price``) for a price the catalog would refuse, one pricing cannot compute
    exactly (more than 9 decimals), or two different prices under one id.
    """
    by_id: dict[str, Price] = {}
    for price in prices:
        seen = by_id.setdefault(price.id, price)
        if seen is not price and seen != price:
            raise InvalidInput(
                f"two different prices have the id {price.id!r}: give each version its own id", code="invalid_price"
            )
    frame = pl.DataFrame([_price_row(price) for price in by_id.values()], schema=PRICE_SCHEMA, orient="row")
    # Rating's own checks (the range it computes exactly in) now, rather than at the first rating.
    prepare_prices(frame)
    return frame


def charges_and_prices(rows: Iterable[tuple[str, Price, Decimal]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The ``charges`` and ``prices`` frames of ``(charge key, price, proration)`` rows, charges in their order.

    ``proration`` is the fraction of the period a flat fee covers, in ``[0, 1]`` with at most 9 decimals (round
    ``Decimal(17) / 30`` yourself: how to round a proration is billing's decision); 1 for every other model.
    """
    keys: list[str] = []
    price_ids: list[str] = []
    prorations: list[Decimal] = []
    prices: list[Price] = []
    for key, price, proration in rows:
        keys.append(key)
        price_ids.append(price.id)
        prorations.append(_exact_decimal(proration, f"charge {key!r}: proration", code="invalid_charges"))
        prices.append(price)
    charges = pl.DataFrame({"charge": keys, "price_id": price_ids, "proration": prorations}, schema=CHARGES_SCHEMA)
    return charges, price_frame(prices)


def _price_row(price: Price) -> dict[str, Any]:
    validate_price(price)  # the catalog's rules (meter.catalog.prices), then the range rating computes exactly in

    def exact(value: Decimal | None, name: str) -> Decimal | None:
        return None if value is None else _exact_decimal(value, f"price {price.id!r}: {name}")

    row: dict[str, Any] = dict.fromkeys(PRICE_SCHEMA)
    row.update(
        price_id=price.id,
        currency=price.currency,
        model=price.model,
        amount=exact(price.amount, "amount"),
        unit_price=exact(price.unit_price, "unit_price"),
        free_allowance=exact(price.free_allowance, "free_allowance"),
        minimum=exact(price.minimum, "minimum"),
        maximum=exact(price.maximum, "maximum"),
    )
    if price.tiers is not None:
        row["tiers"] = [
            {
                "start": exact(t.start, f"tier {i} from"),
                "up_to": exact(t.up_to, f"tier {i} up_to"),
                "unit_price": exact(t.unit_price, f"tier {i} unit_price"),
                "flat_fee": exact(t.flat_fee, f"tier {i} flat_fee"),
            }
            for i, t in enumerate(price.tiers, start=1)
        ]
    if price.package is not None:
        row.update(
            package_size=exact(price.package.size, "package size"),
            package_price=exact(price.package.price, "package price"),
            package_rounding=price.package.rounding,
        )
    if price.percentage is not None:
        p = price.percentage
        row.update(
            percent=exact(p.percent, "percent"),
            percent_per=p.per,
            min_fee=exact(p.min_fee, "min_fee"),
            max_fee=exact(p.max_fee, "max_fee"),
        )
    if price.matrix is not None:
        row["matrix"] = [
            {
                "combination": combination_key(e.values),
                "unit_price": exact(e.unit_price, f"matrix entry {i} unit_price"),
            }
            for i, e in enumerate(price.matrix.entries, start=1)
        ]
    return row


def _exact_decimal(value: Decimal, what: str, code: str = "invalid_price") -> Decimal:
    """``value`` unchanged if a ``Decimal(38, 9)`` holds it exactly; otherwise ``InvalidInput`` saying why."""
    if (problem := decimal_problem(value)) is not None:
        fail(f"{what} {problem}", code)
    return value
