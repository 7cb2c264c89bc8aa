"""What pricing reads besides usage: customers, products, versioned plans with their prices, and subscriptions
with their contract terms. Stored per tenant in rocksdict (msgspec JSON values), apart from the usage store.

Plans are versioned: editing a plan adds a version with its own effective date; a subscription keeps the version
it names until it is migrated, and keeps the record of its migrations (pricing prorates across them). Everything is
validated on the way in, with an error that says what to fix; deleting what something else refers to is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from rocksdict import Rdict

from meter.catalog.prices import Price, is_currency, validate_price
from meter.catalog.kv import scan
from meter.exceptions import AlreadyExists, InUse, InvalidInput, NotFound

__all__ = ["BillingCatalog", "Commit", "Credit", "Customer", "Discount", "Migration", "MigrationBody", "Plan", "PlanBody",
           "PlanVersion", "PlanVersionBody", "Product", "Subscription"]


class Address(msgspec.Struct, forbid_unknown_fields=True):
    line1: str = ""
    line2: str = ""
    city: str = ""
    postal_code: str = ""
    region: str = ""
    country: str = ""


class Customer(msgspec.Struct, forbid_unknown_fields=True):
    #: The external id: the `subject` of the customer's events.
    id: str
    name: str
    currency: str
    timezone: str = "UTC"
    email: str | None = None
    address: Address | None = None
    metadata: dict[str, str] = {}


class Product(msgspec.Struct, forbid_unknown_fields=True):
    """A SKU in a hierarchy (a family, a model, a region), priced through one or more meters."""

    id: str
    name: str
    parent: str | None = None
    meters: list[str] = []
    attributes: dict[str, str] = {}


class PlanVersion(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    effective_from: datetime
    prices: list[Price]


class Plan(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    name: str
    versions: list[PlanVersion] = []


class PlanBody(msgspec.Struct, forbid_unknown_fields=True):
    """A new plan; its prices come with its versions."""

    id: str
    name: str


class PlanVersionBody(msgspec.Struct, forbid_unknown_fields=True):
    effective_from: datetime
    prices: list[Price]


class Commit(msgspec.Struct, forbid_unknown_fields=True):
    """An amount the customer commits to spend over [start, end); lower priority numbers burn down first."""

    id: str
    amount: Decimal
    start: datetime
    end: datetime
    kind: Literal["prepaid", "postpaid"] = "prepaid"
    priority: int = 0
    #: What happens to what is left at the end of the term: a postpaid commit's shortfall is billed or forfeited;
    #: what is left of a prepaid commit was paid up front and is forfeited either way.
    unused: Literal["billed", "forfeited"] = "forfeited"
    #: Price ids it pays for; all usage charges when empty.
    applies_to: list[str] = []


class Credit(msgspec.Struct, forbid_unknown_fields=True):
    """A grant that pays charges over [start, end) before the customer does."""

    id: str
    amount: Decimal
    start: datetime
    end: datetime
    priority: int = 0
    #: Price ids it pays for; all usage charges when empty.
    applies_to: list[str] = []


class Discount(msgspec.Struct, forbid_unknown_fields=True):
    """``percent`` off, or a fixed ``amount`` off, one price's charge (``price``) or the whole invoice (no ``price``),
    on invoices whose period starts in [start, end)."""

    id: str
    start: datetime
    end: datetime | None = None
    percent: Decimal | None = None
    amount: Decimal | None = None
    price: str | None = None


class Migration(msgspec.Struct, forbid_unknown_fields=True):
    """The subscription moved from one version of its plan to another at ``at``."""

    from_version: int
    to_version: int
    at: datetime


class MigrationBody(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    at: datetime


class Subscription(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    customer: str
    plan: str
    version: int
    start: datetime
    end: datetime | None = None
    cycle: Literal["monthly", "quarterly", "annual"] = "monthly"
    anchor: Literal["calendar", "anniversary"] = "calendar"
    #: Prices of the plan version replaced for this customer, matched by price id.
    overrides: list[Price] = []
    commits: list[Commit] = []
    credits: list[Credit] = []
    discounts: list[Discount] = []
    #: Threshold billing: once the cycle's unbilled usage reaches this amount, it is invoiced early.
    threshold: Decimal | None = None
    #: Oldest first; ``version`` is the one the last migration moved to.
    migrations: list[Migration] = []

    def phases(self) -> list[tuple[int, datetime, datetime | None]]:
        """The plan versions the subscription was on, each over ``[from, to)``; ``to`` is None while it runs."""
        first = self.migrations[0].from_version if self.migrations else self.version
        starts = [(first, self.start), *((m.to_version, m.at) for m in self.migrations)]
        ends = [m.at for m in self.migrations] + [self.end]
        return [(version, start, end) for (version, start), end in zip(starts, ends)]


T = TypeVar("T", bound=msgspec.Struct)


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_catalog")


def _aware(t: datetime, what: str) -> None:
    if t.tzinfo is None:
        raise _invalid(f"{what} must carry a time zone (RFC 3339 with Z or an offset); got {t.isoformat()}")


def _version(plan: Plan, version: int, sub_id: str) -> PlanVersion:
    found = next((v for v in plan.versions if v.version == version), None)
    if found is None:
        known = ", ".join(str(v.version) for v in plan.versions) or "none yet"
        raise _invalid(f"subscription {sub_id!r}: plan {plan.id!r} has no version {version} (versions: {known})")
    return found


def _id(value: str, what: str) -> None:
    if not value or len(value) > 255 or "/" in value or "|" in value:
        raise _invalid(f"{what} id must be 1-255 characters without '/' or '|'; got {value!r}")


class BillingCatalog:
    """The catalog of one data directory; every call names its tenant, which comes from the caller's key."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._db = Rdict(os.fspath(path))

    def close(self) -> None:
        self._db.close()

    # Storage: `<kind>/<tenant>/<id>` -> msgspec JSON. Tenant and id never contain '/' (checked), so keys of two
    # tenants can never collide or interleave.

    def _key(self, kind: str, tenant: str, item_id: str = "") -> bytes:
        _id(tenant, "tenant")
        return f"{kind}/{tenant}/{item_id}".encode()

    def _get(self, kind: str, tenant: str, item_id: str, type_: type[T]) -> T:
        raw = self._db.get(self._key(kind, tenant, item_id))
        if raw is None:
            raise NotFound(f"no {kind} {item_id!r}")
        return msgspec.json.decode(raw, type=type_)

    def _list(self, kind: str, tenant: str, type_: type[T]) -> Iterator[T]:
        return scan(self._db, self._key(kind, tenant), type_)

    def _put(self, kind: str, tenant: str, item_id: str, value: msgspec.Struct, *, new: bool) -> None:
        key = self._key(kind, tenant, item_id)
        if new and self._db.get(key) is not None:
            raise AlreadyExists(f"{kind} {item_id!r} already exists")
        self._db[key] = msgspec.json.encode(value)

    def _delete(self, kind: str, tenant: str, item_id: str) -> None:
        key = self._key(kind, tenant, item_id)
        if self._db.get(key) is None:
            raise NotFound(f"no {kind} {item_id!r}")
        del self._db[key]

    def _refuse_if_used(self, what: str, users: list[str]) -> None:
        if users:
            shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
            raise InUse(f"{what} is still used by {shown}: delete or change those first")

    # Customers

    def put_customer(self, tenant: str, customer: Customer) -> Customer:
        _id(customer.id, "customer")
        if not is_currency(customer.currency):
            raise _invalid(f"customer {customer.id!r}: currency must be an ISO 4217 code such as \"EUR\"")
        try:
            ZoneInfo(customer.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise _invalid(f"customer {customer.id!r}: time zone {customer.timezone!r} is not an IANA name "
                           "such as \"Europe/Paris\"") from None
        self._put("customer", tenant, customer.id, customer, new=False)
        return customer

    def get_customer(self, tenant: str, customer_id: str) -> Customer:
        return self._get("customer", tenant, customer_id, Customer)

    def list_customers(self, tenant: str) -> list[Customer]:
        return list(self._list("customer", tenant, Customer))

    def delete_customer(self, tenant: str, customer_id: str) -> None:
        users = [f"subscription {s.id!r}" for s in self.list_subscriptions(tenant) if s.customer == customer_id]
        self._refuse_if_used(f"customer {customer_id!r}", users)
        self._delete("customer", tenant, customer_id)

    # Products

    def put_product(self, tenant: str, product: Product) -> Product:
        _id(product.id, "product")
        if product.parent is not None:
            ancestor: str | None = product.parent
            while ancestor is not None:
                if ancestor == product.id:
                    raise _invalid(f"product {product.id!r}: its parent chain comes back to itself")
                ancestor = self.get_product(tenant, ancestor).parent
        self._put("product", tenant, product.id, product, new=False)
        return product

    def get_product(self, tenant: str, product_id: str) -> Product:
        return self._get("product", tenant, product_id, Product)

    def list_products(self, tenant: str) -> list[Product]:
        return list(self._list("product", tenant, Product))

    def delete_product(self, tenant: str, product_id: str) -> None:
        children = [f"product {p.id!r}" for p in self.list_products(tenant) if p.parent == product_id]
        self._refuse_if_used(f"product {product_id!r}", children)
        self._delete("product", tenant, product_id)

    # Plans

    def create_plan(self, tenant: str, plan_id: str, name: str) -> Plan:
        _id(plan_id, "plan")
        plan = Plan(id=plan_id, name=name)
        self._put("plan", tenant, plan_id, plan, new=True)
        return plan

    def add_plan_version(self, tenant: str, plan_id: str, effective_from: datetime, prices: list[Price]) -> PlanVersion:
        """Editing a plan adds a version; subscriptions keep theirs until migrated."""
        plan = self.get_plan(tenant, plan_id)
        _aware(effective_from, "effective_from")
        if plan.versions and effective_from <= plan.versions[-1].effective_from:
            raise _invalid(f"plan {plan_id!r}: a new version must take effect after version "
                           f"{plan.versions[-1].version} ({plan.versions[-1].effective_from.isoformat()})")
        ids = [p.id for p in prices]
        if len(set(ids)) != len(ids):
            raise _invalid(f"plan {plan_id!r}: price ids must be distinct within a version")
        for p in prices:
            validate_price(p)
        version = PlanVersion(version=len(plan.versions) + 1, effective_from=effective_from, prices=prices)
        self._put("plan", tenant, plan_id, msgspec.structs.replace(plan, versions=[*plan.versions, version]), new=False)
        return version

    def get_plan(self, tenant: str, plan_id: str) -> Plan:
        return self._get("plan", tenant, plan_id, Plan)

    def list_plans(self, tenant: str) -> list[Plan]:
        return list(self._list("plan", tenant, Plan))

    def delete_plan(self, tenant: str, plan_id: str) -> None:
        users = [f"subscription {s.id!r}" for s in self.list_subscriptions(tenant) if s.plan == plan_id]
        self._refuse_if_used(f"plan {plan_id!r}", users)
        self._delete("plan", tenant, plan_id)

    # Subscriptions

    def put_subscription(self, tenant: str, sub: Subscription) -> Subscription:
        _id(sub.id, "subscription")
        customer = self.get_customer(tenant, sub.customer)
        plan = self.get_plan(tenant, sub.plan)
        _aware(sub.start, "start")
        if sub.end is not None:
            _aware(sub.end, "end")
            if sub.end <= sub.start:
                raise _invalid(f"subscription {sub.id!r}: end must be after start ([start, end) is half-open)")
        self._check_migrations(sub)
        for version, _, _ in sub.phases():
            prices = {p.id: p for p in _version(plan, version, sub.id).prices}
            for p in prices.values():
                if p.currency != customer.currency:
                    raise _invalid(f"subscription {sub.id!r}: price {p.id!r} is in {p.currency} but customer "
                                   f"{customer.id!r} pays in {customer.currency} (plan version {version})")
        current = {p.id for p in _version(plan, sub.version, sub.id).prices}
        for override in sub.overrides:
            if override.id not in current:
                raise _invalid(f"subscription {sub.id!r}: override {override.id!r} replaces no price of plan "
                               f"{sub.plan!r} version {sub.version}")
            validate_price(override)
            if override.currency != customer.currency:
                raise _invalid(f"subscription {sub.id!r}: override {override.id!r} is in {override.currency} but "
                               f"customer {customer.id!r} pays in {customer.currency}")
        for term in [*sub.commits, *sub.credits]:
            _aware(term.start, f"{term.id} start")
            _aware(term.end, f"{term.id} end")
            if term.end <= term.start or term.amount <= 0:
                raise _invalid(f"subscription {sub.id!r}: {term.id!r} needs an amount above 0 and end after start")
        all_prices = {p.id for version, _, _ in sub.phases() for p in _version(plan, version, sub.id).prices}
        for term in [*sub.commits, *sub.credits, *sub.discounts]:
            named = term.applies_to if not isinstance(term, Discount) else [term.price] if term.price else []
            unknown = sorted(set(named) - all_prices)
            if unknown:
                raise _invalid(f"subscription {sub.id!r}: {term.id!r} names prices the plan does not have: "
                               f"{', '.join(unknown)}")
        for d in sub.discounts:
            _aware(d.start, f"{d.id} start")
            if (d.percent is None) == (d.amount is None):
                raise _invalid(f"subscription {sub.id!r}: discount {d.id!r} needs exactly one of percent or amount")
            if d.percent is not None and not 0 < d.percent <= 100:
                raise _invalid(f"subscription {sub.id!r}: discount {d.id!r} percent must be in (0, 100]")
            if d.amount is not None and d.amount <= 0:
                raise _invalid(f"subscription {sub.id!r}: discount {d.id!r} amount must be above 0")
        if sub.threshold is not None and sub.threshold <= 0:
            raise _invalid(f"subscription {sub.id!r}: threshold must be above 0 (or absent)")
        self._put("subscription", tenant, sub.id, sub, new=False)
        return sub

    @staticmethod
    def _check_migrations(sub: Subscription) -> None:
        previous, at = None, sub.start
        for i, m in enumerate(sub.migrations, start=1):
            _aware(m.at, f"migration {i} at")
            if previous is not None and m.from_version != previous:
                raise _invalid(f"subscription {sub.id!r}: migration {i} starts from version {m.from_version} but the "
                               f"one before moved to {previous}")
            if not at < m.at or (sub.end is not None and m.at >= sub.end):
                raise _invalid(f"subscription {sub.id!r}: migration {i} at {m.at.isoformat()} must fall after the "
                               "start (and the migration before) and before the end")
            previous, at = m.to_version, m.at
        if previous is not None and previous != sub.version:
            raise _invalid(f"subscription {sub.id!r}: version is {sub.version} but the last migration moved to {previous}")

    def migrate_subscription(self, tenant: str, sub_id: str, version: int, at: datetime) -> Subscription:
        """Moves a subscription to another version of its plan from ``at`` on; pricing prorates the cycle across it.
        Overrides of prices the new version does not have are refused rather than dropped silently."""
        sub = self.get_subscription(tenant, sub_id)
        _aware(at, "at")
        if version == sub.version:
            raise _invalid(f"subscription {sub_id!r} is on version {version} already")
        migrated = msgspec.structs.replace(
            sub, version=version, migrations=[*sub.migrations, Migration(sub.version, version, at)])
        return self.put_subscription(tenant, migrated)

    def delete_subscription(self, tenant: str, sub_id: str) -> None:
        self._delete("subscription", tenant, sub_id)

    def get_subscription(self, tenant: str, sub_id: str) -> Subscription:
        return self._get("subscription", tenant, sub_id, Subscription)

    def list_subscriptions(self, tenant: str) -> list[Subscription]:
        return list(self._list("subscription", tenant, Subscription))
