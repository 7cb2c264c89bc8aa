"""What the billing catalog refuses so that billing can never break later.

Numbers rating or the export cannot represent, currencies that are not ISO 4217, references to what does not exist,
and ids that cannot round-trip.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meter.catalog.billing import (
    BillingCatalog,
    Commit,
    Customer,
    Plan,
    PlanBody,
    PlanVersionBody,
    Product,
    Subscription,
)
from meter.catalog.currencies import CURRENCIES
from meter.catalog.prices import Price, validate_price
from meter.catalog.types import LIMITS, PLACES, Checked
from meter.exceptions import InUse, InvalidInput
from meter.pricing.charges import price_frame
from meter.pricing.money import minor_units

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
TIERS = [
    {"from": "0", "up_to": "1000", "unit_price": "0.002", "flat_fee": "1"},
    {"from": "1000", "unit_price": "0.001"},
]
# One price of every model with every optional number set: each number of a price is somewhere in here.
PRICES: list[dict[str, Any]] = [
    {"id": "flat", "currency": "EUR", "model": "flat", "amount": "49", "cadence": "in_advance"},
    {
        "id": "unit",
        "currency": "EUR",
        "model": "per_unit",
        "meter": "tokens",
        "unit_price": "0.000002",
        "free_allowance": "1000",
        "minimum": "5",
        "maximum": "500",
    },
    {"id": "grad", "currency": "EUR", "model": "graduated", "meter": "tokens", "tiers": TIERS},
    {"id": "vol", "currency": "EUR", "model": "volume", "meter": "tokens", "tiers": TIERS},
    {
        "id": "pack",
        "currency": "EUR",
        "model": "package",
        "meter": "tokens",
        "package": {"size": "1000", "price": "0.5"},
    },
    {
        "id": "pct",
        "currency": "EUR",
        "model": "percentage",
        "meter": "tokens",
        "percentage": {"percent": "2.5", "min_fee": "0.3", "max_fee": "10"},
    },
    {
        "id": "pct-event",
        "currency": "EUR",
        "model": "percentage",
        "meter": "tokens",
        "percentage": {"percent": "1", "per": "event", "min_fee": "0.1"},
    },
    {
        "id": "mat",
        "currency": "EUR",
        "model": "matrix",
        "meter": "tokens",
        "matrix": {"dimensions": ["model"], "entries": [{"values": {"model": "gpt"}, "unit_price": "0.0000025"}]},
    },
]
SUBSCRIPTION: dict[str, Any] = {
    "id": "s1",
    "customer": "c1",
    "plan": "pro",
    "version": 1,
    "start": "2026-01-01T00:00:00Z",
    "threshold": "100",
    "overrides": [{**PRICES[1], "unit_price": "0.000001"}],
    "commits": [{"id": "commit", "amount": "1000", "start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"}],
    "credits": [{"id": "credit", "amount": "50", "start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"}],
    "discounts": [
        {"id": "pct-off", "start": "2026-01-01T00:00:00Z", "percent": "10"},
        {"id": "fixed-off", "start": "2026-01-01T00:00:00Z", "amount": "5", "price": "unit"},
    ],
}
BAD_NUMBERS = ["NaN", "sNaN", "-NaN", "Infinity", "-Infinity", "1E+999999", "-1", "0." + "1" * 40]


class Meters:
    """The engine's meter directory, as the catalog sees it."""

    def __init__(self, *slugs: str) -> None:
        self.slugs = set(slugs)

    def list_meters(self, tenant: str) -> list[Any]:
        return [
            SimpleNamespace(
                slug=s,
                aggregation="unique_count" if s == "users" else "sum",
                group_by={"model": "$.model"} if s == "tokens" else {},
            )
            for s in sorted(self.slugs)
        ]

    def delete_meter(self, tenant: str, slug: str) -> None:
        self.slugs.remove(slug)


@pytest.fixture
def meters() -> Meters:
    return Meters("tokens", "calls")


@pytest.fixture
def catalog(tmp_path: Path, meters: Meters) -> Iterator[BillingCatalog]:
    c = BillingCatalog(tmp_path / "billing", meters=meters)
    yield c
    c.close()


def number_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON document that holds a decimal string."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from number_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from number_paths(v, (*path, i))
    elif isinstance(value, str) and value[:1].isdigit() and "T" not in value:
        yield path


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    changed = copy.deepcopy(document)
    target = changed
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return changed


DOCUMENTS = [(Price, p) for p in PRICES] + [(Subscription, SUBSCRIPTION)]
NUMBER_CASES = [(type_, doc, path) for type_, doc in DOCUMENTS for path in number_paths(doc)]


def test_the_sample_documents_cover_every_number_and_are_valid() -> None:
    fields = {path[-1] for _, _, path in NUMBER_CASES}
    assert fields >= {
        "amount",
        "unit_price",
        "free_allowance",
        "minimum",
        "maximum",
        "from",
        "up_to",
        "flat_fee",
        "size",
        "price",
        "percent",
        "min_fee",
        "max_fee",
        "threshold",
    }
    for type_, doc in DOCUMENTS:
        msgspec.json.decode(msgspec.json.encode(doc), type=type_)


@pytest.mark.parametrize("bad", BAD_NUMBERS)
@pytest.mark.parametrize(
    ("type_", "doc", "path"), NUMBER_CASES, ids=[f"{d['id']}:{'.'.join(map(str, p))}" for _, d, p in NUMBER_CASES]
)
def test_every_number_refuses_nan_infinity_and_what_rating_cannot_represent(
    type_: type[msgspec.Struct], doc: dict[str, Any], path: tuple[Any, ...], bad: str
) -> None:
    """The server decodes bodies with these types: a refused value is a 400 naming the field, never a 500."""
    body = msgspec.json.encode(replaced(doc, path, bad))
    with pytest.raises(msgspec.ValidationError) as e:
        msgspec.json.decode(body, type=type_)
    assert f"`{path[-1]}`" in str(e.value)


def test_a_number_built_in_python_is_checked_too() -> None:
    with pytest.raises(InvalidInput, match="`unit_price` is sNaN") as e:
        Price(id="p", currency="EUR", model="per_unit", meter="tokens", unit_price=Decimal("sNaN"))
    assert e.value.code == "invalid_catalog"
    good = Commit(id="c", amount=Decimal(10), start=JAN, end=FEB)
    with pytest.raises(InvalidInput, match="`amount` is NaN"):
        msgspec.structs.replace(good, amount=Decimal("NaN"))


def catalog_structs() -> list[type[msgspec.Struct]]:
    found: list[type[msgspec.Struct]] = []

    def walk(t: Any) -> None:
        if isinstance(t, msgspec.inspect.StructType):
            if t.cls not in found:
                found.append(t.cls)
                for f in t.fields:
                    walk(f.type)
        for child in ("type", "item_type", "key_type", "value_type"):
            if hasattr(t, child):
                walk(getattr(t, child))
        for option in getattr(t, "types", ()):
            walk(option)

    for root in (Customer, Product, Plan, PlanBody, PlanVersionBody, Subscription):
        walk(msgspec.inspect.type_info(root))
    return found


def test_every_number_id_text_and_time_of_the_catalog_has_a_checked_kind() -> None:
    """The class of the NaN defect: a new Decimal field without its limits cannot be added unnoticed."""
    unchecked = []

    def walk(t: Any, where: str) -> None:
        if isinstance(t, msgspec.inspect.Metadata) and (t.extra or {}).get("catalog"):
            return
        if isinstance(
            t,
            (
                msgspec.inspect.DecimalType,
                msgspec.inspect.DateTimeType,
                msgspec.inspect.StrType,
                msgspec.inspect.FloatType,
            ),
        ):
            unchecked.append(where)
        for child in ("type", "item_type", "key_type", "value_type"):
            if hasattr(t, child) and not isinstance(t, msgspec.inspect.StructType):
                walk(getattr(t, child), where)
        for option in getattr(t, "types", ()):
            walk(option, where)

    structs = catalog_structs()
    assert len(structs) >= 15
    for cls in structs:
        assert issubclass(cls, Checked), cls
        info = msgspec.inspect.type_info(cls)
        for f in info.fields:
            walk(f.type, f"{cls.__name__}.{f.name}")
    assert unchecked == []


def price_with(model: str, value: Decimal) -> dict[str, Any]:
    return {
        "flat": {"id": "p", "currency": "EUR", "model": "flat", "amount": str(value)},
        "per_unit": {"id": "p", "currency": "EUR", "model": "per_unit", "meter": "m", "unit_price": str(value)},
        "tier": {
            "id": "p",
            "currency": "EUR",
            "model": "graduated",
            "meter": "m",
            "tiers": [{"from": "0", "up_to": str(value), "unit_price": "1"}, {"from": str(value), "unit_price": "0"}],
        },
        "allowance": {
            "id": "p",
            "currency": "EUR",
            "model": "per_unit",
            "meter": "m",
            "unit_price": "1",
            "free_allowance": str(value),
        },
    }[model]


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from(["flat", "per_unit", "tier", "allowance"]),
    value=st.one_of(
        st.decimals(allow_nan=True, allow_infinity=True),
        st.decimals(min_value=0, max_value=Decimal(10) ** 30, places=12),
        st.sampled_from(
            [
                Decimal(10) ** 18 - Decimal("1E-9"),
                Decimal(10) ** 18,
                Decimal(10) ** 27 - Decimal("1E-9"),
                Decimal(10) ** 27,
                Decimal(10) ** 28 - 2,
                Decimal(10) ** 29,
            ]
        ),
    ),
)
def test_what_the_catalog_accepts_rating_accepts(model: str, value: Decimal) -> None:
    """The limits are the ones rating has: a price the catalog takes never fails rating's own checks later."""
    try:
        price = msgspec.json.decode(msgspec.json.encode(price_with(model, value)), type=Price)
        validate_price(price)
    except (msgspec.ValidationError, InvalidInput):
        return
    price_frame([price])


PRICE_NUMBERS = [(doc, path) for type_, doc, path in NUMBER_CASES if type_ is Price] + [
    (doc, ("free_allowance",)) for doc in PRICES if "free_allowance" not in doc
]


@settings(max_examples=400, deadline=None)
@given(
    case=st.sampled_from(PRICE_NUMBERS),
    value=st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False, places=9, min_value=0, max_value=Decimal(10) ** 29),
        st.decimals(min_value=0, max_value=10, places=3),
    ),
)
def test_whatever_number_the_catalog_accepts_in_any_price_rating_accepts(
    case: tuple[dict[str, Any], tuple[Any, ...]], value: Decimal
) -> None:
    """The same property over every number of every model, the structural checks (validate_price) included."""
    doc, path = case
    try:
        price = msgspec.json.decode(msgspec.json.encode(replaced(doc, path, str(value))), type=Price)
        validate_price(price)
    except (msgspec.ValidationError, InvalidInput):
        return
    price_frame([price])


def test_the_limits_are_stated_and_named_in_the_message() -> None:
    assert {k: str(v.maximum) for k, v in LIMITS.items()} == {
        "quantity": str(Decimal(10) ** 29),
        "unit price": str(Decimal(10) ** 27),
        "amount": str(Decimal(10) ** 18),
        "percent": "100",
    }
    assert PLACES == 9
    for doc, says in [
        (
            price_with("per_unit", Decimal(10) ** 27),
            "`unit_price` is 1000000000000000000000000000: a unit price must be 0 or more, below 10^27",
        ),
        (price_with("flat", Decimal("1E+999999")), "`amount` is 1E+999999: an amount must be 0 or more, below 10^18"),
        ({**price_with("flat", Decimal(1)), "amount": "0." + "1" * 40}, "more than 9 digits after the point"),
    ]:
        with pytest.raises(msgspec.ValidationError, match=re.escape(says)):
            msgspec.json.decode(msgspec.json.encode(doc), type=Price)


def test_numbers_are_kept_in_a_form_the_export_can_type() -> None:
    """1E+5 and 1.50000000000 are stored as 100000 and 1.500000000: the snapshot then infers decimal128(38, 9)."""
    p = msgspec.json.decode(b'{"id":"p","currency":"EUR","model":"flat","amount":"1E+5"}', type=Price)
    assert str(p.amount) == "100000"
    p = msgspec.json.decode(b'{"id":"p","currency":"EUR","model":"flat","amount":"1.50000000000"}', type=Price)
    assert str(p.amount) == "1.500000000"


@pytest.mark.parametrize("code", ["XYZ", "QQQ", "ÄÖÜ", "eur", "EURO", "XAU", "XTS", "XXX", ""])
def test_currencies_are_iso_4217_codes_with_a_minor_unit(code: str) -> None:
    with pytest.raises(InvalidInput, match="ISO 4217"):
        Customer(id="c", name="C", currency=code)
    with pytest.raises(msgspec.ValidationError, match="ISO 4217"):
        msgspec.json.decode(msgspec.json.encode({**PRICES[0], "currency": code}), type=Price)


def test_rounding_uses_the_same_iso_4217_table() -> None:
    assert len(CURRENCIES) > 150 and {"EUR", "USD", "JPY", "KWD", "CLF"} <= set(CURRENCIES)
    for code, digits in CURRENCIES.items():
        Customer(id="c", name="C", currency=code)
        assert minor_units(code) == digits
    assert (CURRENCIES["JPY"], CURRENCIES["KWD"], CURRENCIES["CLF"], CURRENCIES["EUR"]) == (0, 3, 4, 2)


def price(price_id: str = "tokens", meter: str | None = "tokens", currency: str = "EUR") -> Price:
    fields = {"id": price_id, "currency": currency, "model": "per_unit", "meter": meter, "unit_price": "0.002"}
    return msgspec.convert(fields, Price)


def test_a_price_naming_a_missing_meter_is_refused(catalog: BillingCatalog) -> None:
    catalog.create_plan("acme", "pro", "Pro")
    with pytest.raises(
        InvalidInput,
        match="plan 'pro' version 1, price 'oops': meter 'tokenz' does not exist "
        "\\(this tenant's meters: calls, tokens\\)",
    ) as e:
        catalog.add_plan_version("acme", "pro", JAN, [price(), price("oops", "tokenz")])
    assert e.value.code == "invalid_catalog"
    assert catalog.get_plan("acme", "pro").versions == []
    with pytest.raises(InvalidInput, match="plan 'new' version 2, price 'oops': meter 'tokenz'"):
        catalog.create_plan(
            "acme", "new", "New", [PlanVersionBody(JAN, [price()]), PlanVersionBody(FEB, [price("oops", "tokenz")])]
        )
    assert [p.id for p in catalog.list_plans("acme")] == ["pro"], "a refused plan leaves nothing behind"


def test_a_meter_that_a_price_uses_cannot_be_deleted(catalog: BillingCatalog, meters: Meters) -> None:
    catalog.put_customer("acme", Customer(id="c1", name="One", currency="EUR"))
    catalog.create_plan("acme", "pro", "Pro", [PlanVersionBody(JAN, [price()])])
    catalog.create_plan("acme", "old", "Old", [PlanVersionBody(JAN, [price()])])
    with pytest.raises(
        InUse, match="meter 'tokens' is still used by plan 'old' version 1 \\(price 'tokens'\\), plan 'pro' version 1"
    ) as e:
        catalog.delete_meter("acme", "tokens")
    assert e.value.code == "in_use" and "tokens" in meters.slugs
    catalog.delete_plan("acme", "old")
    catalog.delete_plan("acme", "pro")
    catalog.put_product("acme", Product(id="llm", name="LLM", meters=["tokens"]))
    with pytest.raises(InUse, match="product 'llm'"):
        catalog.delete_meter("acme", "tokens")
    catalog.delete_product("acme", "llm")
    catalog.delete_meter("acme", "tokens")
    assert meters.slugs == {"calls"}


def test_a_price_rating_could_not_read_from_its_meter_is_refused(catalog: BillingCatalog, meters: Meters) -> None:
    meters.slugs.add("users")
    catalog.create_plan("acme", "pro", "Pro")
    with pytest.raises(InvalidInput, match="meter 'users' counts unique values"):
        catalog.add_plan_version("acme", "pro", JAN, [price(meter="users")])
    matrix = msgspec.convert(
        {
            **PRICES[-1],
            "matrix": {
                "dimensions": ["model", "region"],
                "entries": [{"values": {"model": "gpt", "region": "eu"}, "unit_price": "1"}],
            },
        },
        Price,
    )
    with pytest.raises(
        InvalidInput,
        match="the matrix prices the dimensions region, which meter 'tokens' does not "
        "group by \\(its dimensions: model\\)",
    ):
        catalog.add_plan_version("acme", "pro", JAN, [matrix])
    catalog.add_plan_version("acme", "pro", JAN, [msgspec.convert(PRICES[-1], Price)])


def test_an_override_naming_a_missing_meter_is_refused(catalog: BillingCatalog) -> None:
    catalog.put_customer("acme", Customer(id="c1", name="One", currency="EUR"))
    catalog.create_plan("acme", "pro", "Pro", [PlanVersionBody(JAN, [price()])])
    sub = Subscription(id="s1", customer="c1", plan="pro", version=1, start=JAN, overrides=[price(meter="gone")])
    with pytest.raises(InvalidInput, match="subscription 's1', override 'tokens': meter 'gone' does not exist"):
        catalog.put_subscription("acme", sub)


def test_subscriptions_name_what_exists(catalog: BillingCatalog) -> None:
    catalog.put_customer("acme", Customer(id="c1", name="One", currency="EUR"))
    catalog.create_plan("acme", "pro", "Pro", [PlanVersionBody(JAN, [price()])])
    for fields, says in [
        ({"customer": "nobody"}, "subscription 's1': customer 'nobody' does not exist"),
        ({"plan": "nothing"}, "subscription 's1': plan 'nothing' does not exist"),
        ({"version": 4}, "plan 'pro' has no version 4"),
        (
            {"commits": [Commit(id="c", amount=Decimal(1), start=JAN, end=FEB, applies_to=["nope"])]},
            "'c' names prices the plan does not have: nope",
        ),
    ]:
        sub = Subscription(**{"id": "s1", "customer": "c1", "plan": "pro", "version": 1, "start": JAN, **fields})
        with pytest.raises(InvalidInput, match=says) as e:
            catalog.put_subscription("acme", sub)
        assert e.value.code == "invalid_catalog"
    assert catalog.list_subscriptions("acme") == []


def test_terms_of_a_subscription_have_distinct_ids_and_whole_minor_units(catalog: BillingCatalog) -> None:
    catalog.put_customer("acme", Customer(id="c1", name="One", currency="EUR"))
    catalog.put_customer("acme", Customer(id="jp", name="JP", currency="JPY"))
    catalog.create_plan("acme", "pro", "Pro", [PlanVersionBody(JAN, [price()])])
    catalog.create_plan("acme", "jpy", "JPY", [PlanVersionBody(JAN, [price(currency="JPY")])])
    base = msgspec.json.decode(
        msgspec.json.encode({**SUBSCRIPTION, "overrides": [], "discounts": []}), type=Subscription
    )
    catalog.put_subscription("acme", base)
    same = msgspec.structs.replace(base, credits=[msgspec.structs.replace(base.credits[0], id="commit")])
    with pytest.raises(InvalidInput, match="distinct ids"):
        catalog.put_subscription("acme", same)
    twice = msgspec.structs.replace(base, overrides=[price(), price()])
    with pytest.raises(InvalidInput, match="overridden once"):
        catalog.put_subscription("acme", twice)
    tenth = msgspec.structs.replace(base, commits=[msgspec.structs.replace(base.commits[0], amount=Decimal("0.001"))])
    with pytest.raises(
        InvalidInput,
        match="'commit' amount is 0.001 EUR, which is not a whole number of the currency's minor unit \\(2 digits",
    ):
        catalog.put_subscription("acme", tenth)
    yen = Subscription(id="s2", customer="jp", plan="jpy", version=1, start=JAN, threshold=Decimal("1000.5"))
    with pytest.raises(InvalidInput, match="threshold is 1000.5 JPY"):
        catalog.put_subscription("acme", yen)


def test_a_customer_keeps_its_currency_while_it_has_subscriptions(catalog: BillingCatalog) -> None:
    catalog.put_customer("acme", Customer(id="c1", name="One", currency="EUR"))
    catalog.create_plan("acme", "pro", "Pro", [PlanVersionBody(JAN, [price()])])
    catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=JAN))
    catalog.put_customer("acme", Customer(id="c1", name="Renamed", currency="EUR"))
    with pytest.raises(InvalidInput, match="cannot change while it has subscriptions"):
        catalog.put_customer("acme", Customer(id="c1", name="One", currency="USD"))


def test_products_name_an_existing_parent_and_meters(catalog: BillingCatalog) -> None:
    with pytest.raises(InvalidInput, match="product 'x': parent 'missing' does not exist"):
        catalog.put_product("acme", Product(id="x", name="X", parent="missing"))
    with pytest.raises(InvalidInput, match="product 'x': meter 'nope' does not exist"):
        catalog.put_product("acme", Product(id="x", name="X", meters=["nope"]))
    assert catalog.list_products("acme") == []


@pytest.mark.parametrize("bad_id", ["a/b", "a|b", ".", "..", "a\x00b", "a\nb", " a", "a ", "", "x" * 256, "a\ud800"])
def test_ids_that_cannot_round_trip_are_refused(bad_id: str, catalog: BillingCatalog) -> None:
    """Ids are URL path segments, parts of storage and billing keys, and Parquet strings."""
    with pytest.raises(InvalidInput) as e:
        catalog.put_customer("acme", Customer(id=bad_id, name="C", currency="EUR"))
    assert e.value.code == "invalid_catalog"
    with pytest.raises(msgspec.ValidationError, match=r"`id`|`\$\.id`"):
        msgspec.convert({**PRICES[0], "id": bad_id}, Price)


def test_texts_and_times_that_cannot_be_exported_or_billed_are_refused() -> None:
    with pytest.raises(InvalidInput, match="`name`"):
        Customer(id="c", name="a\x00b", currency="EUR")
    with pytest.raises(InvalidInput, match="`metadata.k`"):
        Customer(id="c", name="C", currency="EUR", metadata={"k": "\ud800"})
    with pytest.raises(InvalidInput, match="catalog times must fall in \\[1970, 9000\\)"):
        Subscription(id="s", customer="c", plan="p", version=1, start=datetime(9999, 12, 1, tzinfo=UTC))
    with pytest.raises(InvalidInput, match="must carry a time zone"):
        Subscription(id="s", customer="c", plan="p", version=1, start=datetime(2026, 1, 1))
    assert Customer(id="ok: user@example.com", name="Zoë\tGroup\nLtd", currency="EUR").id == "ok: user@example.com"


def test_what_was_stored_before_the_checks_stays_readable_and_deletable(catalog: BillingCatalog) -> None:
    """A data directory from before the checks: reading it must not fail the tenant; fixing it must be possible."""
    legacy_price = {**PRICES[1], "unit_price": "0." + "1" * 40}
    catalog._db[b"plan/acme/old"] = msgspec.json.encode(
        {"id": "old", "name": "Old", "versions": [{"version": 1, "effective_from": JAN, "prices": [legacy_price]}]}
    )
    catalog._db[b"customer/acme/c9"] = msgspec.json.encode({"id": "c9", "name": "Nine", "currency": "XYZ"})
    assert [p.id for p in catalog.list_plans("acme")] == ["old"]
    assert catalog.get_customer("acme", "c9").currency == "XYZ"
    with pytest.raises(InvalidInput, match="pays in 'XYZ', which is not an ISO 4217 currency"):
        catalog.put_subscription("acme", Subscription(id="s", customer="c9", plan="old", version=1, start=JAN))
    catalog.delete_plan("acme", "old")
    catalog.put_customer("acme", Customer(id="c9", name="Nine", currency="EUR"))


class SlowMeters(Meters):
    """An engine whose meter listing takes a while: the window in which a deletion could slip in."""

    def list_meters(self, tenant: str) -> list[Any]:
        listed = super().list_meters(tenant)
        time.sleep(0.02)
        return listed


def test_a_meter_cannot_be_deleted_between_the_check_of_a_price_and_its_write(tmp_path: Path) -> None:
    meters = SlowMeters(*[f"m{i}" for i in range(20)])
    catalog = BillingCatalog(tmp_path / "billing", meters=meters)
    try:

        def add(i: int) -> None:
            try:
                catalog.create_plan("acme", f"p{i}", "P", [PlanVersionBody(JAN, [price(meter=f"m{i}")])])
            except InvalidInput:
                pass  # deleted first: refused, and nothing stored

        def delete(i: int) -> None:
            try:
                catalog.delete_meter("acme", f"m{i}")
            except InUse:
                pass

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda job: job[0](job[1]), [(f, i) for i in range(20) for f in (add, delete)]))
        for plan in catalog.list_plans("acme"):
            assert plan.versions[0].prices[0].meter in meters.slugs, f"plan {plan.id} prices a deleted meter"
    finally:
        catalog.close()


def test_concurrent_versions_of_one_plan_are_never_lost(catalog: BillingCatalog) -> None:
    catalog.create_plan("acme", "pro", "Pro")
    accepted: list[int] = []

    def add(day: int) -> None:
        try:
            version = catalog.add_plan_version("acme", "pro", JAN + timedelta(days=day), [price()])
            accepted.append(version.version)
        except InvalidInput:
            pass  # not after the last version: refused, and nothing stored

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(add, range(60)))
    versions = catalog.get_plan("acme", "pro").versions
    assert [v.version for v in versions] == sorted(accepted) == list(range(1, len(accepted) + 1))
