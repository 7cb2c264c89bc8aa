"""The catalog's value types: every number, id, text and time of the billing catalog is one of these.

Each is checked whenever the struct that holds it is built: decoded from JSON, converted from YAML, constructed or
``msgspec.structs.replace``-d. A value that rating or the export could not represent therefore cannot enter the
catalog at all, whichever way it comes in, and no field needs a check of its own.

The limits, in one place (the README's "Limits" table is this one):

============  ==============================================  =================  =====================================
kind          fields                                          range              why
============  ==============================================  =================  =====================================
quantity      tier ``from``/``up_to``, ``free_allowance``,    0 <= x < 10^29     usage is ``decimal128(38, 9)``
              package ``size``
unit price    ``unit_price`` (per unit, tier, matrix entry),  0 <= x < 10^27     a unit price is shown at scale 11
              package ``price``
amount        flat ``amount``, tier ``flat_fee``,             0 <= x < 10^18     an amount is computed at scale 20
              ``minimum``/``maximum``, ``min_fee``/           (38 digits); invoices export as
              ``max_fee``, commits, credits, discounts,       ``decimal128(38, 9)``
              ``threshold``
percent       ``percent`` (percentage price, discount)        0 <= x <= 100
============  ==============================================  =================  =====================================

Every number has at most :data:`PLACES` (9) digits after the point: rating computes on integers counting 10^-9
(:mod:`meter.pricing.price_table`), and the Parquet export keeps 9. Amounts of money a subscription carries
(commits, credits, discount amounts, threshold) are also held to their currency's minor unit by the catalog, which
knows the currency (2 digits for EUR, 0 for JPY). NaN, sNaN and Infinity are never numbers here.

Ids are 1-255 characters without ``/`` (they are URL path segments and part of storage keys), ``|`` (it joins ids in
billing keys), control characters, leading or trailing white space, and are not ``.`` or ``..`` (which URL
normalisation would eat). Meter references follow the engine's slug rule. Texts (names, addresses, metadata) are at
most 1000 characters without control characters other than tab and newline. Times carry a time zone and fall in
[1970, 9000), so that cycles computed from them stay within what dates can represent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from decimal import Context, Decimal
from functools import cache
from typing import Annotated, Any

import msgspec
from msgspec import inspect as mi

from meter.catalog.currencies import CURRENCIES, PUBLISHED, is_currency
from meter.exceptions import InvalidInput

__all__ = [
    "LIMITS",
    "Address",
    "PLACES",
    "Amount",
    "Checked",
    "Currency",
    "Id",
    "Limit",
    "Percent",
    "Quantity",
    "Slug",
    "Text",
    "Time",
    "UnitPrice",
    "invalid",
    "trusted",
]

#: Digits after the decimal point of every catalog number.
PLACES = 9
_QUANTUM = Decimal(1).scaleb(-PLACES)
_EXACT = Context(prec=80)


class Limit(msgspec.Struct, frozen=True):
    kind: str
    #: The bound: exclusive, except for a percent (100 % is allowed).
    maximum: Decimal
    inclusive: bool = False

    def describe(self) -> str:
        bound = f"at most {self.maximum}" if self.inclusive else f"below {_power(self.maximum)}"
        return f"0 or more, {bound}, with at most {PLACES} digits after the point"


def _power(bound: Decimal) -> str:
    exponent = bound.adjusted()
    return f"10^{exponent}" if bound == Decimal(10) ** exponent else str(bound)


LIMITS: dict[str, Limit] = {
    "quantity": Limit("quantity", Decimal(10) ** 29),
    "unit price": Limit("unit price", Decimal(10) ** 27),
    "amount": Limit("amount", Decimal(10) ** 18),
    "percent": Limit("percent", Decimal(100), inclusive=True),
}


def _number(kind: str, example: str) -> Any:
    limit = LIMITS[kind]
    digits = limit.maximum.adjusted()
    # For the OpenAPI document (the plain form the catalog answers with; the server also reads 1E+3 or 0.5e-2).
    plain = (
        f"^(100(\\.0{{1,{PLACES}}})?|[0-9]{{1,2}}(\\.[0-9]{{1,{PLACES}}})?)$"
        if limit.inclusive
        else f"^[0-9]{{1,{digits}}}(\\.[0-9]{{1,{PLACES}}})?$"
    )
    return Annotated[
        Decimal,
        msgspec.Meta(
            description=f'A {kind}: a decimal string such as "{example}", {limit.describe()}.',
            extra={"catalog": kind},
            extra_json_schema={"pattern": plain},
        ),
    ]


Quantity = _number("quantity", "1000")
UnitPrice = _number("unit price", "0.0025")
Amount = _number("amount", "49.00")
Percent = _number("percent", "2.9")

_CONTROL = r"\x00-\x08\x0b-\x1f\x7f-\x9f"
_ID = re.compile(rf"(?!\.\.?$)[^\s/|{_CONTROL}](?:[^/|{_CONTROL}\t\n]{{0,253}}[^\s/|{_CONTROL}])?")
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_TEXT = re.compile(rf"[^{_CONTROL}]{{0,1000}}")
_RULES = {
    "id": "1-255 characters, without '/', '|', control characters or white space at either end; not '.' or '..'",
    "slug": "a meter's slug: 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter or digit",
    "text": "at most 1000 characters, without control characters but tab and newline",
}
Id = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=255,
        extra={"catalog": "id"},
        extra_json_schema={"pattern": f"^{_ID.pattern}$"},
        description=_RULES["id"],
    ),
]
Slug = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        extra={"catalog": "slug"},
        extra_json_schema={"pattern": f"^{_SLUG.pattern}$"},
        description=_RULES["slug"],
    ),
]
Text = Annotated[
    str,
    msgspec.Meta(
        max_length=1000,
        extra={"catalog": "text"},
        extra_json_schema={"pattern": f"^[^{_CONTROL}]*$"},
        description=_RULES["text"],
    ),
]
Currency = Annotated[
    str,
    msgspec.Meta(
        extra={"catalog": "currency"},
        extra_json_schema={"enum": list(CURRENCIES)},
        description=f'a current ISO 4217 code with a minor unit, such as "EUR" (the list of {PUBLISHED})',
    ),
]
Time = Annotated[
    datetime,
    msgspec.Meta(tz=True, extra={"catalog": "time"}, description="RFC 3339 with Z or an offset, in [1970, 9000)"),
]
_FIRST, _END = datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)


def invalid(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_catalog")


def _shown(value: object) -> str:
    text = str(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _a(kind: str) -> str:
    return f"an {kind}" if kind == "amount" else f"a {kind}"


def check_number(value: Decimal, kind: str, field: str) -> Decimal:
    limit = LIMITS[kind]
    if not isinstance(value, Decimal):
        raise invalid(f'`{field}` must be a decimal (a string such as "0.25"); got {_shown(value)}')
    if not value.is_finite():
        raise invalid(f"`{field}` is {value}: {_a(kind)} must be a finite decimal, {limit.describe()}")
    if value < 0:
        raise invalid(f"`{field}` is {_shown(value)}: {_a(kind)} must be {limit.describe()}")
    if value > limit.maximum or (value == limit.maximum and not limit.inclusive):
        raise invalid(
            f"`{field}` is {_shown(value)}: {_a(kind)} must be {limit.describe()} (what rating and the "
            "export can represent)"
        )
    # The value is below 10^29 here, so 80 digits hold it at 9 places: quantize cannot fail.
    canonical = value.quantize(_QUANTUM, context=_EXACT)
    if canonical != value:
        raise invalid(
            f"`{field}` is {_shown(value)}: it has more than {PLACES} digits after the point, more than "
            f"rating computes exactly; round it to {PLACES}"
        )
    # Stored in plain notation with at most 9 places and no negative zero ("1E+5" is 100000, "1.50000000000" is
    # 1.500000000), so that the export infers decimal128(38, 9) at most, whatever the mix of values.
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent > 0:
        return value.quantize(Decimal(1), context=_EXACT)
    if exponent < -PLACES:
        return canonical
    return value.copy_abs() if value.is_zero() else value


def _check_string(value: str, kind: str, field: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"`{field}` must be a string; got {_shown(value)}")
    pattern, what = {
        "id": (_ID, "an id: " + _RULES["id"]),
        "slug": (_SLUG, _RULES["slug"]),
        "text": (_TEXT, "text of " + _RULES["text"]),
    }[kind]
    if pattern.fullmatch(value) is None:
        raise invalid(f"`{field}` is {_shown(value)!r}, which is not {what}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise invalid(f"`{field}` holds a lone surrogate, which is not text (it cannot be UTF-8)") from None
    return value


def _check_currency(value: str, field: str) -> str:
    if not isinstance(value, str) or not is_currency(value):
        hint = f" (did you mean {value.upper()!r}?)" if isinstance(value, str) and is_currency(value.upper()) else ""
        raise invalid(
            f"`{field}` is {_shown(value)!r}, which is not a current ISO 4217 currency with a minor unit, "
            f'such as "EUR", "USD" or "JPY"{hint}'
        )
    return value


def _check_time(value: datetime, field: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise invalid(f"`{field}` must carry a time zone (RFC 3339 with Z or an offset); got {_shown(value)}")
    if not _FIRST <= value < _END:
        raise invalid(f"`{field}` is {value.isoformat()}: catalog times must fall in [1970, 9000)")
    return value


#: Checks a value (naming ``field`` when it fails) and returns it, or its canonical form.
Check = Callable[[Any, str], Any]


def _checker(t: mi.Type) -> Check | None:
    """How to check a value of type ``t`` (None when nothing needs checking)."""
    if isinstance(t, mi.Metadata):
        kind = (t.extra or {}).get("catalog")
        if kind in LIMITS:
            return lambda v, f: check_number(v, kind, f)
        if kind in ("id", "slug", "text"):
            return lambda v, f: _check_string(v, kind, f)
        if kind == "currency":
            return _check_currency
        if kind == "time":
            return lambda v, f: _check_time(v, f)
        return _checker(t.type)
    if isinstance(t, mi.UnionType):
        options = [(m, _checker(m)) for m in t.types]
        if not any(c for _, c in options):
            return None

        def union(v: Any, f: str) -> Any:
            if v is None:
                return v
            for m, c in options:
                if c is not None and not isinstance(m, mi.NoneType):
                    v = c(v, f)
            return v

        return union
    if isinstance(t, mi.ListType):
        item = _checker(t.item_type)
        if item is None:
            return None

        def items(v: list[Any], f: str) -> list[Any]:
            for i, x in enumerate(v):
                item(x, f"{f}[{i}]")
            return v

        return items
    if isinstance(t, mi.DictType):
        key, value = _checker(t.key_type), _checker(t.value_type)
        if key is None and value is None:
            return None

        def mapping(v: dict[Any, Any], f: str) -> dict[Any, Any]:
            if len(v) > 50:
                raise invalid(f"`{f}` has {len(v)} entries; at most 50")
            for k, x in v.items():
                if key:
                    key(k, f"{f} key")
                if value:
                    value(x, f"{f}.{k}")
            return v

        return mapping
    if isinstance(t, (mi.DecimalType, mi.DateTimeType)):
        return _unchecked
    if isinstance(t, mi.StrType) and t.max_length is None:
        return _unchecked
    return None


def _unchecked(value: Any, field: str) -> Any:
    raise TypeError(f"`{field}` has no catalog kind: annotate it with one of meter.catalog.types' types")


@cache
def _checks(cls: type[msgspec.Struct]) -> list[tuple[str, str, Check]]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return [(f.name, f.encode_name, c) for f in info.fields if (c := _checker(f.type)) is not None]


_TRUSTED: ContextVar[bool] = ContextVar("meter_catalog_trusted", default=False)


@contextmanager
def trusted() -> Iterator[None]:
    """Skips the checks while reading what the catalog stored.

    An item stored before a check existed stays readable (and deletable) rather than making every read of its tenant
    fail; rating refuses it with its own message.
    """
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


class Checked(msgspec.Struct):
    """A catalog struct: every field is checked against its kind when the struct is built (see the module doc).

    A Decimal, datetime or unconstrained str field without a kind is a programming error, reported when the struct
    is first built, so a new money field cannot be added without its limits.
    """

    def __post_init__(self) -> None:
        if _TRUSTED.get():
            return
        for name, encode_name, check in _checks(type(self)):
            value = getattr(self, name)
            checked = check(value, encode_name)
            if checked is not value:
                setattr(self, name, checked)


class Address(Checked, forbid_unknown_fields=True):
    """A postal address (a customer's, the seller's on its documents)."""

    line1: Text = ""
    line2: Text = ""
    city: Text = ""
    postal_code: Text = ""
    region: Text = ""
    country: Text = ""

    def lines(self) -> list[str]:
        """The address as printed, one line each, the empty parts left out."""
        city = " ".join(part for part in (self.postal_code, self.city) if part)
        return [line for line in (self.line1, self.line2, city, self.region, self.country) if line]
