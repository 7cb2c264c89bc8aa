"""The billing catalog: customers, products, versioned plans and subscriptions.

Validated on the way in and kept apart per tenant.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from meter.catalog.billing import BillingCatalog, Commit, Customer, Product, Subscription
from meter.catalog.prices import Price
from meter.exceptions import AlreadyExists, InUse, InvalidInput, NotFound

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[BillingCatalog]:
    c = BillingCatalog(tmp_path / "billing")
    yield c
    c.close()


def tokens_price(currency: str = "EUR", unit_price: str = "0.002") -> Price:
    return msgspec.convert(
        {"id": "tokens", "currency": currency, "model": "per_unit", "meter": "tokens", "unit_price": unit_price}, Price
    )


def setup_plan(catalog: BillingCatalog) -> None:
    catalog.put_customer("acme", Customer(id="cust-1", name="Cust One", currency="EUR", timezone="Europe/Paris"))
    catalog.create_plan("acme", "pro", "Pro")
    catalog.add_plan_version("acme", "pro", JAN, [tokens_price()])


def test_plans_are_versioned_and_subscriptions_keep_their_version(catalog: BillingCatalog) -> None:
    setup_plan(catalog)
    sub = Subscription(id="s1", customer="cust-1", plan="pro", version=1, start=JAN)
    catalog.put_subscription("acme", sub)
    v2 = catalog.add_plan_version("acme", "pro", FEB, [tokens_price(unit_price="0.003")])
    assert v2.version == 2
    plan = catalog.get_plan("acme", "pro")
    assert [v.prices[0].unit_price for v in plan.versions] == [Decimal("0.002"), Decimal("0.003")]
    assert catalog.get_subscription("acme", "s1").version == 1
    with pytest.raises(InvalidInput, match="must take effect after version 2"):
        catalog.add_plan_version("acme", "pro", JAN, [tokens_price()])


def test_subscription_errors_say_what_to_fix(catalog: BillingCatalog) -> None:
    setup_plan(catalog)
    with pytest.raises(InvalidInput, match="plan 'pro' has no version 7 \\(versions: 1\\)"):
        catalog.put_subscription("acme", Subscription(id="s", customer="cust-1", plan="pro", version=7, start=JAN))
    catalog.put_customer("acme", Customer(id="cust-usd", name="US", currency="USD"))
    with pytest.raises(InvalidInput, match="price 'tokens' is in EUR but customer 'cust-usd' pays in USD"):
        catalog.put_subscription("acme", Subscription(id="s", customer="cust-usd", plan="pro", version=1, start=JAN))
    with pytest.raises(InvalidInput, match="override 'storage' replaces no price"):
        override = msgspec.structs.replace(tokens_price(), id="storage")
        catalog.put_subscription(
            "acme", Subscription(id="s", customer="cust-1", plan="pro", version=1, start=JAN, overrides=[override])
        )
    with pytest.raises(InvalidInput, match="end must be after start"):
        catalog.put_subscription(
            "acme", Subscription(id="s", customer="cust-1", plan="pro", version=1, start=FEB, end=JAN)
        )
    with pytest.raises(InvalidInput, match="needs an amount above 0"):
        bad = Commit(id="c1", amount=Decimal(0), start=JAN, end=FEB)
        catalog.put_subscription(
            "acme", Subscription(id="s", customer="cust-1", plan="pro", version=1, start=JAN, commits=[bad])
        )
    with pytest.raises(InvalidInput, match="customer 'nobody' does not exist"):
        catalog.put_subscription("acme", Subscription(id="s", customer="nobody", plan="pro", version=1, start=JAN))


def test_bad_prices_in_a_plan_version_are_refused(catalog: BillingCatalog) -> None:
    setup_plan(catalog)
    gap = msgspec.convert(
        {
            "id": "t",
            "currency": "EUR",
            "model": "graduated",
            "meter": "tokens",
            "tiers": [{"from": "0", "up_to": "10", "unit_price": "1"}, {"from": "20", "unit_price": "1"}],
        },
        Price,
    )
    with pytest.raises(InvalidInput, match="a gap"):
        catalog.add_plan_version("acme", "pro", FEB, [gap])
    assert len(catalog.get_plan("acme", "pro").versions) == 1, "nothing of the refused version was kept"


def test_customers_and_products_are_validated(catalog: BillingCatalog) -> None:
    with pytest.raises(InvalidInput, match="not an IANA name"):
        catalog.put_customer("acme", Customer(id="c", name="C", currency="EUR", timezone="Mars/Olympus"))
    with pytest.raises(InvalidInput, match="ISO 4217"):
        catalog.put_customer("acme", Customer(id="c", name="C", currency="euro"))
    catalog.put_product("acme", Product(id="llm", name="LLM"))
    catalog.put_product("acme", Product(id="gpt-4o", name="GPT-4o", parent="llm", meters=["tokens"]))
    with pytest.raises(InvalidInput, match="comes back to itself"):
        catalog.put_product("acme", Product(id="llm", name="LLM", parent="gpt-4o"))
    with pytest.raises(InvalidInput, match="parent 'missing' does not exist"):
        catalog.put_product("acme", Product(id="x", name="X", parent="missing"))
    assert [p.id for p in catalog.list_products("acme")] == ["gpt-4o", "llm"]


def test_tenants_never_see_each_other(catalog: BillingCatalog) -> None:
    setup_plan(catalog)
    catalog.put_customer("acme-2", Customer(id="cust-1", name="Other", currency="USD"))
    assert catalog.get_customer("acme", "cust-1").name == "Cust One"
    assert [c.name for c in catalog.list_customers("acme-2")] == ["Other"]
    assert catalog.list_plans("acme-2") == []
    with pytest.raises(NotFound):
        catalog.get_plan("acme-2", "pro")
    with pytest.raises(AlreadyExists):
        catalog.create_plan("acme", "pro", "again")
    with pytest.raises(InvalidInput, match="without '/'"):
        catalog.list_customers("acme/../acme-2")


def test_migrating_keeps_the_history_that_pricing_prorates_across(catalog: BillingCatalog) -> None:
    setup_plan(catalog)
    catalog.put_subscription("acme", Subscription(id="s1", customer="cust-1", plan="pro", version=1, start=JAN))
    with pytest.raises(InvalidInput, match="has no version 2"):
        catalog.migrate_subscription("acme", "s1", 2, FEB)
    catalog.add_plan_version("acme", "pro", FEB, [tokens_price(unit_price="0.003")])
    mid_feb = datetime(2026, 2, 15, tzinfo=UTC)
    sub = catalog.migrate_subscription("acme", "s1", 2, mid_feb)
    assert catalog.get_subscription("acme", "s1") == sub
    assert sub.version == 2
    assert sub.phases() == [(1, JAN, mid_feb), (2, mid_feb, None)]
    with pytest.raises(InvalidInput, match="on version 2 already"):
        catalog.migrate_subscription("acme", "s1", 2, datetime(2026, 3, 1, tzinfo=UTC))
    with pytest.raises(InvalidInput, match="must fall after the start \\(and the migration before\\)"):
        catalog.migrate_subscription("acme", "s1", 1, FEB)
    with pytest.raises(InvalidInput, match="the last migration moved to 2"):
        catalog.put_subscription("acme", msgspec.structs.replace(sub, version=1))


def test_deleting_what_something_refers_to_is_refused(catalog: BillingCatalog) -> None:
    setup_plan(catalog)
    catalog.put_subscription("acme", Subscription(id="s1", customer="cust-1", plan="pro", version=1, start=JAN))
    catalog.put_product("acme", Product(id="llm", name="LLM"))
    catalog.put_product("acme", Product(id="gpt", name="GPT", parent="llm"))
    for delete, what in (
        (catalog.delete_customer, "cust-1"),
        (catalog.delete_plan, "pro"),
        (catalog.delete_product, "llm"),
    ):
        with pytest.raises(InUse, match="still used by"):
            delete("acme", what)
    catalog.delete_subscription("acme", "s1")
    catalog.delete_product("acme", "gpt")
    for delete, what in (
        (catalog.delete_customer, "cust-1"),
        (catalog.delete_plan, "pro"),
        (catalog.delete_product, "llm"),
    ):
        delete("acme", what)
    assert catalog.list_customers("acme") == [] and catalog.list_plans("acme") == []
    assert catalog.list_products("acme") == [] and catalog.list_subscriptions("acme") == []
    with pytest.raises(NotFound):
        catalog.delete_plan("acme", "pro")
