"""What pricing reads besides usage: customers, products, versioned plans with prices, subscriptions with terms.

And what tax reads: tax rates and the seller's tax settings (their rules are :mod:`meter.catalog.tax`'s).

Stored per tenant in rocksdict (msgspec JSON values), apart from the usage store.

Plans are versioned: editing a plan adds a version with its own effective date; a subscription keeps the version
it names until it is migrated, and keeps the record of its migrations (pricing prorates across them). Everything is
validated on the way in, with an error that says what to fix: every value against its kind's limits when a struct is
built (:mod:`meter.catalog.types`), and every reference (a subscription's customer, plan, version and prices, a
price's meter, a product's parent and meters) when it is written. Deleting what something else refers to is refused
(``in_use``), a meter included: :meth:`BillingCatalog.delete_meter` is how a meter is deleted once billing exists.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from rocksdict import WriteBatch

from meter.catalog.currencies import CURRENCIES
from meter.catalog.documents import DEFAULT as DOCUMENTS_DEFAULT
from meter.catalog.documents import DocumentSettings
from meter.catalog.entitlements import (
    Entitlement,
    UnitGrant,
    check_entitlements,
    check_unit_grants,
    effective_entitlements,
)
from meter.catalog.kv import Store, scan
from meter.catalog.prices import Price, validate_price
from meter.catalog.revenue import DEFAULT as REVENUE_DEFAULT
from meter.catalog.revenue import RevenueSettings
from meter.catalog.tax import Exemption, TaxId, TaxRate, TaxSettings, check_country, check_rate
from meter.catalog.types import Address, Amount, Checked, Currency, Id, Percent, Slug, Text, Time, invalid, trusted
from meter.exceptions import AlreadyExists, Conflict, InUse, InvalidInput, NotFound

__all__ = [
    "Anchor",
    "AutoTopUp",
    "BillingCatalog",
    "Cycle",
    "Commit",
    "Credit",
    "Customer",
    "Discount",
    "Meters",
    "Migration",
    "MigrationBody",
    "Plan",
    "PlanBody",
    "PlanVersion",
    "PlanVersionBody",
    "Product",
    "Subscription",
]


class Customer(Checked, forbid_unknown_fields=True):
    #: The external id: the `subject` of the customer's events.
    id: Id
    name: Text
    currency: Currency
    timezone: Text = "UTC"
    email: Text | None = None
    address: Address | None = None
    metadata: dict[Text, Text] = {}
    #: Tax (:mod:`meter.catalog.tax`): the customer's tax ids (a business's VAT number), and how it is taxed:
    #: ``none`` (by the rules: a business abroad is reverse charged), ``exempt``, or ``reverse`` (always).
    tax_ids: list[TaxId] = []
    tax_exempt: Exemption = "none"
    #: Payments (meter.money.payments): ``automatic`` charges the customer's Stripe payment method when an invoice
    #: is finalized (``stripe_customer``, ``default_payment_method``: ``cus_...``, ``pm_...``); ``send_invoice``
    #: waits for payments recorded by hand.
    collection: Literal["automatic", "send_invoice"] = "send_invoice"
    stripe_customer: Id | None = None
    default_payment_method: Id | None = None
    #: Other ids its events may name it by: another vendor's customer id (an Orb external customer id, a
    #: Metronome ingest alias, a Lago subscription id). The drop-in ingest routes (:mod:`meter.server.dropin`) count
    #: an event naming one as ``id``'s; so does one naming ``stripe_customer``. Each names one customer only.
    aliases: list[Id] = []

    def names(self) -> set[str]:
        """The ids, besides its own, that drop-in ingest maps to it."""
        return {*self.aliases, *([self.stripe_customer] if self.stripe_customer else [])}


class Product(Checked, forbid_unknown_fields=True):
    """A SKU in a hierarchy (a family, a model, a region), priced through one or more meters."""

    id: Id
    name: Text
    parent: Id | None = None
    meters: list[Slug] = []
    attributes: dict[Text, Text] = {}
    #: The product tax code of the lines of its meters (a price's own ``tax_code`` comes first), such as Stripe's
    #: "txcd_10103001" (SaaS): tax rates of that code apply to them.
    tax_code: Id | None = None


class PlanVersion(Checked, forbid_unknown_fields=True):
    version: int
    effective_from: Time
    prices: list[Price]


class Plan(Checked, forbid_unknown_fields=True):
    id: Id
    name: Text
    versions: list[PlanVersion] = []
    #: What the plan lets its customers use, by feature (:mod:`meter.catalog.entitlements`): the plan's, whatever its
    #: version (set with ``PUT /v1/plans/{id}/entitlements``); a subscription's replace those of the same feature.
    entitlements: list[Entitlement] = []


class PlanVersionBody(Checked, forbid_unknown_fields=True):
    effective_from: Time
    prices: list[Price]


class PlanBody(Checked, forbid_unknown_fields=True):
    """A new plan, with the versions it starts with (numbered from 1 in order), created whole or not at all."""

    id: Id
    name: Text
    versions: list[PlanVersionBody] = []
    entitlements: list[Entitlement] = []


class Commit(Checked, forbid_unknown_fields=True):
    """An amount the customer commits to spend over [start, end); lower priority numbers burn down first."""

    id: Id
    amount: Amount
    start: Time
    end: Time
    kind: Literal["prepaid", "postpaid"] = "prepaid"
    priority: int = 0
    #: What happens to what is left at the end of the term: a postpaid commit's shortfall is billed or forfeited;
    #: what is left of a prepaid commit was paid up front and is forfeited either way.
    unused: Literal["billed", "forfeited"] = "forfeited"
    #: Price ids it pays for; all usage charges when empty.
    applies_to: list[Id] = []


class Credit(Checked, forbid_unknown_fields=True):
    """A grant that pays charges over [start, end) before the customer does.

    A ``recurring: cycle`` credit grants ``amount`` anew for each billing cycle of the subscription within [start,
    end) (a cycle's usage draws on its cycle's grant); what a cycle leaves unused rolls over to the next one, up to
    ``rollover_max`` (nothing rolls over without it). :func:`meter.billing.terms.credit_lines` applies it.
    """

    id: Id
    amount: Amount
    start: Time
    end: Time
    priority: int = 0
    #: Price ids it pays for; all usage charges when empty.
    applies_to: list[Id] = []
    recurring: Literal["cycle"] | None = None
    rollover_max: Amount | None = None


class Discount(Checked, forbid_unknown_fields=True):
    """``percent`` or a fixed ``amount`` off one price's charge (``price``) or the whole invoice (no ``price``).

    It applies to invoices whose period starts in [start, end).
    """

    id: Id
    start: Time
    end: Time | None = None
    percent: Percent | None = None
    amount: Amount | None = None
    price: Id | None = None


class Migration(Checked, forbid_unknown_fields=True):
    """The subscription moved from one version of its plan to another at ``at``."""

    from_version: int
    to_version: int
    at: Time


class MigrationBody(Checked, forbid_unknown_fields=True):
    version: int
    at: Time


class AutoTopUp(Checked, forbid_unknown_fields=True):
    """Buy ``amount`` of prepaid credit (a top-up, invoiced at once) when the credit balance falls below ``below``."""

    below: Amount
    amount: Amount


#: How long a subscription's billing cycle is, and where its cycles start (meter.billing.cycles computes them).
Cycle = Literal["monthly", "quarterly", "annual"]
Anchor = Literal["calendar", "anniversary"]


class Subscription(Checked, forbid_unknown_fields=True):
    id: Id
    customer: Id
    plan: Id
    version: int
    start: Time
    end: Time | None = None
    cycle: Cycle = "monthly"
    anchor: Anchor = "calendar"
    #: Prices of the plan version replaced for this customer, matched by price id.
    overrides: list[Price] = []
    commits: list[Commit] = []
    credits: list[Credit] = []
    discounts: list[Discount] = []
    #: Threshold billing: once the cycle's unbilled usage reaches this amount, it is invoiced early.
    threshold: Amount | None = None
    #: Oldest first; ``version`` is the one the last migration moved to.
    migrations: list[Migration] = []
    #: The plan's entitlements replaced (same ``feature``) or added for this customer.
    entitlements: list[Entitlement] = []
    #: Prepaid units of metered features (:class:`~meter.catalog.entitlements.UnitGrant`): they extend an allowance.
    unit_grants: list[UnitGrant] = []
    #: Spend protection: a hard ceiling on the usage charges of one billing cycle; once reached, entitlement checks
    #: answer ``has_access: false``.
    spend_ceiling: Amount | None = None
    #: Usage stops (checks answer ``has_access: false``) once the credit balance is spent.
    prepaid_only: bool = False
    #: Top up the credit balance automatically when it falls below a threshold (:mod:`meter.billing.top_ups`).
    auto_top_up: AutoTopUp | None = None

    def phases(self) -> list[tuple[int, datetime, datetime | None]]:
        """The plan versions the subscription was on, each over ``[from, to)``; ``to`` is None while it runs."""
        first = self.migrations[0].from_version if self.migrations else self.version
        starts = [(first, self.start), *((m.to_version, m.at) for m in self.migrations)]
        ends = [m.at for m in self.migrations] + [self.end]
        return [(version, start, end) for (version, start), end in zip(starts, ends, strict=True)]


T = TypeVar("T", bound=msgspec.Struct)


class Meters(Protocol):
    """Where the catalog looks meters up and deletes them: the engine (:class:`meter.engine.Engine`) is one."""

    def list_meters(self, tenant: str) -> Sequence[Any]: ...

    def delete_meter(self, tenant: str, slug: str) -> None: ...


def _version(plan: Plan, version: int, sub_id: str) -> PlanVersion:
    found = next((v for v in plan.versions if v.version == version), None)
    if found is None:
        known = ", ".join(str(v.version) for v in plan.versions) or "none yet"
        raise invalid(f"subscription {sub_id!r}: plan {plan.id!r} has no version {version} (versions: {known})")
    return found


def _places(value: Decimal, currency: str, what: str) -> None:
    """An amount of money a subscription carries is billed as it is: it must be a whole number of minor units."""
    digits = CURRENCIES[currency]
    if value != value.quantize(Decimal(1).scaleb(-digits)):
        raise invalid(
            f"{what} is {value} {currency}, which is not a whole number of the currency's minor unit "
            f"({digits} digits after the point)"
        )


#: Set once the customers' names are indexed (``customer_name/``): a catalog written before that is indexed at open.
_NAMES_INDEXED = b"meta/customer_names"


class BillingCatalog(Store):
    """The catalog of one data directory; every call names its tenant, which comes from the caller's key.

    ``meters`` is where meter references are checked (a price's meter, a product's meters) and where
    :meth:`delete_meter` deletes a meter once nothing refers to it: the server passes its engine. Without it
    (offline tools, tests), meter references are not checked.

    Writes are serialised by one lock: a check of references and the write it allows are one step, so a meter cannot
    be deleted between the check of a price that names it and the price's write (nor two plan versions get one
    number).
    """

    def __init__(self, path: str | os.PathLike[str], meters: Meters | None = None, read_only: bool = False) -> None:
        super().__init__(path, read_only)
        self._meters = meters
        self._lock = threading.RLock()
        self._written: dict[str, int] = {}
        if not read_only and self._db.get(_NAMES_INDEXED) is None:
            self._index_names()

    def _index_names(self) -> None:
        """Indexes the names (aliases, stripe_customer) of customers stored before they were indexed, once."""
        batch = WriteBatch()
        with trusted():
            for key, value in self._db.items(from_key=b"customer/"):
                if not isinstance(key, bytes) or not key.startswith(b"customer/"):
                    break
                tenant = key.split(b"/", 2)[1].decode(errors="surrogatepass")
                customer = msgspec.json.decode(value, type=Customer)
                for name in customer.names():
                    batch.put(self._key("customer_name", tenant, name), customer.id.encode())
        batch.put(_NAMES_INDEXED, b"1")
        self._db.write(batch)

    # Storage: `<kind>/<tenant>/<id>` -> msgspec JSON. Tenant and id never contain '/' (checked), so keys of two
    # tenants can never collide or interleave. What was stored is read without the value checks (see trusted()).

    def _key(self, kind: str, tenant: str, item_id: str = "") -> bytes:
        if not isinstance(tenant, str) or "/" in tenant or not 1 <= len(tenant) <= 255:
            raise invalid(f"tenant id must be 1-255 characters without '/'; got {tenant!r}")
        return f"{kind}/{tenant}/{item_id}".encode(errors="surrogatepass")

    def _get(self, kind: str, tenant: str, item_id: str, type_: type[T]) -> T:
        raw = self._db.get(self._key(kind, tenant, item_id))
        if raw is None:
            raise NotFound(f"no {kind} {item_id!r}")
        with trusted():
            return msgspec.json.decode(raw, type=type_)

    def _list(self, kind: str, tenant: str, type_: type[T]) -> list[T]:
        with trusted():
            return list(scan(self._db, self._key(kind, tenant), type_))

    def sequence(self) -> int:
        """A number that changes with every write to the catalog (any tenant's): what an export of it reflects."""
        return int(self._db.latest_sequence_number())

    def raw_values(self, kind: str, tenant: str) -> list[bytes]:
        """The stored JSON of every item of a kind, in the order ``list_*`` gives them.

        The export reads a million subscriptions this way, without building a struct for each.
        """
        prefix = self._key(kind, tenant)
        found = []
        for key, value in self._db.items(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                break
            found.append(value)
        return found

    def _exists(self, kind: str, tenant: str, item_id: str) -> bool:
        return self._db.get(self._key(kind, tenant, item_id)) is not None

    def _put(self, kind: str, tenant: str, item_id: str, value: msgspec.Struct, *, new: bool) -> None:
        key = self._key(kind, tenant, item_id)
        if new and self._db.get(key) is not None:
            raise AlreadyExists(f"{kind} {item_id!r} already exists")
        self._db[key] = msgspec.json.encode(value)
        self._wrote(tenant)

    def _delete(self, kind: str, tenant: str, item_id: str) -> None:
        key = self._key(kind, tenant, item_id)
        if self._db.get(key) is None:
            raise NotFound(f"no {kind} {item_id!r}")
        del self._db[key]
        self._wrote(tenant)

    def _wrote(self, tenant: str) -> None:
        self._written[tenant] = self._written.get(tenant, 0) + 1

    def written(self, tenant: str) -> int:
        """How many writes this process made to the tenant's catalog: what the live state watches, tenant by tenant.

        (:meth:`sequence` moves with every tenant's writes, so a write of one would make every tenant be read again.)
        """
        return self._written.get(tenant, 0)

    def _refuse_if_used(self, what: str, users: list[str]) -> None:
        if users:
            shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
            raise InUse(f"{what} is still used by {shown}: delete or change those first")

    def _check_meter(
        self, slug: str | None, where: str, known: Callable[[], dict[str, Any]], price: Price | None = None
    ) -> None:
        """The meter exists, and pricing can rate ``price`` from it (else every invoice run of the tenant fails)."""
        if slug is None or self._meters is None:
            return
        meter = known().get(slug)
        if meter is None:
            names = ", ".join(sorted(known())) or "none yet"
            raise invalid(
                f"{where}: meter {slug!r} does not exist (this tenant's meters: {names}); create it first "
                "(POST /v1/meters) or fix the slug"
            )
        if price is None:
            return
        if getattr(meter, "aggregation", None) == "unique_count":
            raise invalid(
                f"{where}: meter {slug!r} counts unique values, which do not add up over a period: "
                "price a count or sum meter instead"
            )
        dimensions = set(getattr(meter, "group_by", None) or {})
        if price.matrix is not None and not set(price.matrix.dimensions) <= dimensions:
            missing = ", ".join(sorted(set(price.matrix.dimensions) - dimensions))
            raise invalid(
                f"{where}: the matrix prices the dimensions {missing}, which meter {slug!r} does not "
                f"group by (its dimensions: {', '.join(sorted(dimensions)) or 'none'})"
            )

    def _meter_slugs(self, tenant: str) -> Callable[[], dict[str, Any]]:
        """The tenant's meters by slug, looked up once and only if needed."""
        found: list[dict[str, Any]] = []

        def slugs() -> dict[str, Any]:
            if not found:
                assert self._meters is not None
                found.append({m.slug: m for m in self._meters.list_meters(tenant)})
            return found[0]

        return slugs

    # Meters (stored by the engine; deleted here so that the check and the deletion are one step)

    def meter_users(self, tenant: str, slug: str) -> list[str]:
        """What refers to the meter ``slug``: plan versions' prices, subscriptions' overrides, products."""
        users = [
            f"plan {plan.id!r} version {v.version} (price {p.id!r})"
            for plan in self.list_plans(tenant)
            for v in plan.versions
            for p in v.prices
            if p.meter == slug
        ]
        users += [
            f"subscription {s.id!r} (override {p.id!r})"
            for s in self.list_subscriptions(tenant)
            for p in s.overrides
            if p.meter == slug
        ]
        users += [f"product {p.id!r}" for p in self.list_products(tenant) if slug in p.meters]
        users += [
            f"{kind} {item.id!r} (entitlement {e.feature!r})"
            for kind, items in (("plan", self.list_plans(tenant)), ("subscription", self.list_subscriptions(tenant)))
            for item in items
            for e in item.entitlements
            if e.meter == slug
        ]
        return users

    def delete_meter(self, tenant: str, slug: str) -> None:
        """Deletes a meter unless a price, an override or a product names it (``InUse``, 409).

        Deleting it would leave charges that no invoice run could rate.
        """
        if self._meters is None:
            raise InvalidInput(
                "this catalog was opened without its meters: delete meters through the server", code="invalid_request"
            )
        with self._lock:
            self._refuse_if_used(f"meter {slug!r}", self.meter_users(tenant, slug))
            self._meters.delete_meter(tenant, slug)

    # Customers

    def put_customer(self, tenant: str, customer: Customer) -> Customer:
        if customer.address is not None and customer.address.country:  # tax finds its rates by it
            check_country(customer.address.country, "address.country")
        try:
            ZoneInfo(customer.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise invalid(
                f'customer {customer.id!r}: time zone {customer.timezone!r} is not an IANA name such as "Europe/Paris"'
            ) from None
        with self._lock:
            before = self.get_customer(tenant, customer.id) if self._exists("customer", tenant, customer.id) else None
            if before is not None:
                subs = [s.id for s in self.list_subscriptions(tenant) if s.customer == customer.id]
                if before.currency != customer.currency and subs:
                    raise invalid(
                        f"customer {customer.id!r} pays in {before.currency} for subscriptions "
                        f"{', '.join(map(repr, subs[:5]))}: its currency cannot change while it has "
                        "subscriptions (their prices are in that currency)"
                    )
            names, kept = customer.names(), before.names() if before else set()
            if before is None and (owner := self.customer_named(tenant, customer.id)) is not None:
                raise AlreadyExists(
                    f"{customer.id!r} already names customer {owner!r} (as an alias or its stripe_customer)"
                )
            for name in sorted(names - kept):
                owner = self.customer_named(tenant, name)
                if owner is not None and owner != customer.id:
                    raise AlreadyExists(
                        f"{name!r} already names customer {owner!r} (as its id, an alias or its stripe_customer): "
                        "an id names one customer; remove it from that customer first"
                    )
            # The customer and its names in one write: the index never names a customer that does not name it back.
            batch = WriteBatch()
            for name in kept - names:
                batch.delete(self._key("customer_name", tenant, name))
            for name in names:
                batch.put(self._key("customer_name", tenant, name), customer.id.encode())
            batch.put(self._key("customer", tenant, customer.id), msgspec.json.encode(customer))
            self._db.write(batch)
            self._wrote(tenant)
        return customer

    def customer_named(self, tenant: str, name: str) -> str | None:
        """The id of the customer ``name`` names: its own id, one of its aliases, or its ``stripe_customer``."""
        if self._exists("customer", tenant, name):
            return name
        found = self._db.get(self._key("customer_name", tenant, name))
        return found.decode() if isinstance(found, bytes) else None

    def get_customer(self, tenant: str, customer_id: str) -> Customer:
        return self._get("customer", tenant, customer_id, Customer)

    def list_customers(self, tenant: str) -> list[Customer]:
        return self._list("customer", tenant, Customer)

    def delete_customer(self, tenant: str, customer_id: str) -> None:
        with self._lock:
            users = [f"subscription {s.id!r}" for s in self.list_subscriptions(tenant) if s.customer == customer_id]
            self._refuse_if_used(f"customer {customer_id!r}", users)
            batch = WriteBatch()
            for name in self.get_customer(tenant, customer_id).names():
                batch.delete(self._key("customer_name", tenant, name))
            batch.delete(self._key("customer", tenant, customer_id))
            self._db.write(batch)
            self._wrote(tenant)

    # Products

    def put_product(self, tenant: str, product: Product) -> Product:
        with self._lock:
            ancestor: str | None = product.parent
            while ancestor is not None:
                if ancestor == product.id:
                    raise invalid(f"product {product.id!r}: its parent chain comes back to itself")
                if not self._exists("product", tenant, ancestor):
                    raise invalid(f"product {product.id!r}: parent {ancestor!r} does not exist; create it first")
                ancestor = self.get_product(tenant, ancestor).parent
            slugs = self._meter_slugs(tenant)
            for slug in product.meters:
                self._check_meter(slug, f"product {product.id!r}", slugs)
            self._put("product", tenant, product.id, product, new=False)
        return product

    def get_product(self, tenant: str, product_id: str) -> Product:
        return self._get("product", tenant, product_id, Product)

    def list_products(self, tenant: str) -> list[Product]:
        return self._list("product", tenant, Product)

    def delete_product(self, tenant: str, product_id: str) -> None:
        with self._lock:
            children = [f"product {p.id!r}" for p in self.list_products(tenant) if p.parent == product_id]
            self._refuse_if_used(f"product {product_id!r}", children)
            self._delete("product", tenant, product_id)

    # Plans

    def create_plan(
        self,
        tenant: str,
        plan_id: str,
        name: str,
        versions: Sequence[PlanVersionBody] = (),
        entitlements: Sequence[Entitlement] = (),
    ) -> Plan:
        """Creates a plan with its first versions (and its entitlements) in one write.

        All of it is checked first, so a refused version leaves no plan behind.
        """
        with self._lock:
            plan = Plan(id=plan_id, name=name)
            if self._exists("plan", tenant, plan_id):
                raise AlreadyExists(f"plan {plan_id!r} already exists")
            for body in versions:
                plan.versions.append(self._next_version(tenant, plan, body.effective_from, body.prices))
            plan.entitlements = list(entitlements)
            self._check_plan_entitlements(tenant, plan)
            self._put("plan", tenant, plan_id, plan, new=True)
        return plan

    def put_plan_entitlements(self, tenant: str, plan_id: str, entitlements: Sequence[Entitlement]) -> Plan:
        """Replaces the plan's entitlements (all its versions'); subscriptions' own still replace theirs by feature.

        An entitlement that names a meter must still be valid for every subscription's overrides of the plan: a
        subscription's ``overage_price`` is checked against the plan's prices, which do not change here.
        """
        with self._lock:
            plan = msgspec.structs.replace(self.get_plan(tenant, plan_id), entitlements=list(entitlements))
            self._check_plan_entitlements(tenant, plan)
            self._put("plan", tenant, plan_id, plan, new=False)
        return plan

    def _check_plan_entitlements(self, tenant: str, plan: Plan) -> None:
        prices: dict[str, list[Price]] = {}
        for v in plan.versions:
            for p in v.prices:
                prices.setdefault(p.id, []).append(p)
        meters = self._meter_slugs(tenant) if self._meters is not None else None
        check_entitlements(plan.entitlements, f"plan {plan.id!r}", prices, meters)

    def add_plan_version(self, tenant: str, plan_id: str, effective_from: datetime, prices: list[Price]) -> PlanVersion:
        """Editing a plan adds a version; subscriptions keep theirs until migrated."""
        with self._lock:
            plan = self.get_plan(tenant, plan_id)
            version = self._next_version(tenant, plan, effective_from, prices)
            self._put(
                "plan", tenant, plan_id, msgspec.structs.replace(plan, versions=[*plan.versions, version]), new=False
            )
        return version

    def _next_version(self, tenant: str, plan: Plan, effective_from: datetime, prices: list[Price]) -> PlanVersion:
        """The plan's next version, checked: its date, its prices and the meters they name."""
        version = PlanVersion(version=len(plan.versions) + 1, effective_from=effective_from, prices=prices)
        where = f"plan {plan.id!r} version {version.version}"
        if plan.versions and effective_from <= plan.versions[-1].effective_from:
            raise invalid(
                f"{where}: a new version must take effect after version "
                f"{plan.versions[-1].version} ({plan.versions[-1].effective_from.isoformat()})"
            )
        ids = [p.id for p in prices]
        if len(set(ids)) != len(ids):
            raise invalid(f"{where}: price ids must be distinct within a version")
        slugs = self._meter_slugs(tenant)
        for p in prices:
            try:
                validate_price(p)
            except InvalidInput as e:
                raise InvalidInput(f"{where}: {e.message}", code=e.code) from None
            self._check_meter(p.meter, f"{where}, price {p.id!r}", slugs, p)
        return version

    def get_plan(self, tenant: str, plan_id: str) -> Plan:
        return self._get("plan", tenant, plan_id, Plan)

    def list_plans(self, tenant: str) -> list[Plan]:
        return self._list("plan", tenant, Plan)

    def delete_plan(self, tenant: str, plan_id: str) -> None:
        with self._lock:
            users = [f"subscription {s.id!r}" for s in self.list_subscriptions(tenant) if s.plan == plan_id]
            self._refuse_if_used(f"plan {plan_id!r}", users)
            self._delete("plan", tenant, plan_id)

    # Subscriptions

    def put_subscription(self, tenant: str, sub: Subscription) -> Subscription:
        with self._lock:
            self._check_subscription(tenant, sub)
            self._put("subscription", tenant, sub.id, sub, new=False)
        return sub

    def _check_subscription(self, tenant: str, sub: Subscription) -> None:
        where = f"subscription {sub.id!r}"
        if not self._exists("customer", tenant, sub.customer):
            raise invalid(f"{where}: customer {sub.customer!r} does not exist; create it first")
        if not self._exists("plan", tenant, sub.plan):
            raise invalid(f"{where}: plan {sub.plan!r} does not exist; create it first")
        customer, plan = self.get_customer(tenant, sub.customer), self.get_plan(tenant, sub.plan)
        if customer.currency not in CURRENCIES:  # stored before currencies were checked
            raise invalid(
                f"{where}: customer {customer.id!r} pays in {customer.currency!r}, which is not an ISO 4217 "
                "currency with a minor unit: correct the customer first"
            )
        if sub.end is not None and sub.end <= sub.start:
            raise invalid(f"{where}: end must be after start ([start, end) is half-open)")
        self._check_migrations(sub)
        for version, _, _ in sub.phases():
            prices = {p.id: p for p in _version(plan, version, sub.id).prices}
            for p in prices.values():
                if p.currency != customer.currency:
                    raise invalid(
                        f"{where}: price {p.id!r} is in {p.currency} but customer "
                        f"{customer.id!r} pays in {customer.currency} (plan version {version})"
                    )
        current = {p.id for p in _version(plan, sub.version, sub.id).prices}
        overridden = [o.id for o in sub.overrides]
        if len(set(overridden)) != len(overridden):
            raise invalid(f"{where}: each price may be overridden once; overrides repeat a price id")
        slugs = self._meter_slugs(tenant)
        for override in sub.overrides:
            if override.id not in current:
                raise invalid(
                    f"{where}: override {override.id!r} replaces no price of plan {sub.plan!r} version {sub.version}"
                )
            validate_price(override)
            if override.currency != customer.currency:
                raise invalid(
                    f"{where}: override {override.id!r} is in {override.currency} but "
                    f"customer {customer.id!r} pays in {customer.currency}"
                )
            self._check_meter(override.meter, f"{where}, override {override.id!r}", slugs, override)
        grants: list[Commit | Credit] = [*sub.commits, *sub.credits]
        every_term: list[Commit | Credit | Discount] = [*grants, *sub.discounts]
        terms = [t.id for t in every_term]
        if len(set(terms)) != len(terms):
            raise invalid(
                f"{where}: commits, credits and discounts need distinct ids (billing keeps what each has "
                "drawn under its id)"
            )
        for term in grants:
            if term.end <= term.start or term.amount <= 0:
                raise invalid(f"{where}: {term.id!r} needs an amount above 0 and end after start")
            _places(term.amount, customer.currency, f"{where}: {term.id!r} amount")
        all_prices = {p.id for version, _, _ in sub.phases() for p in _version(plan, version, sub.id).prices}
        for any_term in every_term:
            named = (
                any_term.applies_to
                if not isinstance(any_term, Discount)
                else [any_term.price]
                if any_term.price
                else []
            )
            unknown = sorted(set(named) - all_prices)
            if unknown:
                raise invalid(f"{where}: {any_term.id!r} names prices the plan does not have: {', '.join(unknown)}")
        for d in sub.discounts:
            if (d.percent is None) == (d.amount is None):
                raise invalid(f"{where}: discount {d.id!r} needs exactly one of percent or amount")
            if d.percent is not None and d.percent == 0:
                raise invalid(f"{where}: discount {d.id!r} percent must be in (0, 100]")
            if d.amount is not None:
                if d.amount == 0:
                    raise invalid(f"{where}: discount {d.id!r} amount must be above 0")
                _places(d.amount, customer.currency, f"{where}: discount {d.id!r} amount")
            if d.end is not None and d.end <= d.start:
                raise invalid(f"{where}: discount {d.id!r} end must be after its start")
        for c in sub.credits:
            if c.rollover_max is not None:
                if c.recurring is None:
                    raise invalid(
                        f"{where}: credit {c.id!r} has a rollover_max but is not recurring: what is left of a one-off "
                        'credit stays until its end; set `recurring: "cycle"` or remove rollover_max'
                    )
                _places(c.rollover_max, customer.currency, f"{where}: credit {c.id!r} rollover_max")
        amounts = [("threshold", sub.threshold), ("spend_ceiling", sub.spend_ceiling)]
        if sub.auto_top_up is not None:
            amounts += [("auto_top_up.below", sub.auto_top_up.below), ("auto_top_up.amount", sub.auto_top_up.amount)]
        for name, amount in amounts:
            if amount is not None:
                if amount == 0:
                    raise invalid(f"{where}: {name} must be above 0 (or absent)")
                _places(amount, customer.currency, f"{where}: {name}")
        self._check_subscription_entitlements(sub, plan, slugs)

    def _check_subscription_entitlements(self, sub: Subscription, plan: Plan, slugs: Callable[[], Any]) -> None:
        """A subscription's entitlements, as the plan's: an overage price is one of its plan's or its overrides."""
        prices: dict[str, list[Price]] = {}
        for version, _, _ in sub.phases():
            for p in _version(plan, version, sub.id).prices:
                prices.setdefault(p.id, []).append(p)
        for p in sub.overrides:
            prices.setdefault(p.id, []).append(p)
        meters = slugs if self._meters is not None else None
        check_entitlements(sub.entitlements, f"subscription {sub.id!r}", prices, meters)
        entitled = effective_entitlements(plan.entitlements, sub.entitlements)
        check_unit_grants(sub.unit_grants, entitled, f"subscription {sub.id!r}")

    @staticmethod
    def _check_migrations(sub: Subscription) -> None:
        previous, at = None, sub.start
        for i, m in enumerate(sub.migrations, start=1):
            if previous is not None and m.from_version != previous:
                raise invalid(
                    f"subscription {sub.id!r}: migration {i} starts from version {m.from_version} but the "
                    f"one before moved to {previous}"
                )
            if not at < m.at or (sub.end is not None and m.at >= sub.end):
                raise invalid(
                    f"subscription {sub.id!r}: migration {i} at {m.at.isoformat()} must fall after the "
                    "start (and the migration before) and before the end"
                )
            previous, at = m.to_version, m.at
        if previous is not None and previous != sub.version:
            raise invalid(
                f"subscription {sub.id!r}: version is {sub.version} but the last migration moved to {previous}"
            )

    def migrate_subscription(self, tenant: str, sub_id: str, version: int, at: datetime) -> Subscription:
        """Moves a subscription to another version of its plan from ``at`` on; pricing prorates the cycle across it.

        Overrides of prices the new version does not have are refused rather than dropped silently.
        """
        with self._lock:
            sub = self.get_subscription(tenant, sub_id)
            if version == sub.version:
                raise invalid(f"subscription {sub_id!r} is on version {version} already")
            migrated = msgspec.structs.replace(
                sub, version=version, migrations=[*sub.migrations, Migration(sub.version, version, at)]
            )
            return self.put_subscription(tenant, migrated)

    def add_commit(self, tenant: str, sub_id: str, commit: Commit, check_only: bool = False) -> Subscription:
        """Adds ``commit`` to the subscription once: a commit of that id that is ``commit`` already is left as it is.

        A top-up's grant (:mod:`meter.billing.top_ups`), written again by a retry. Another term of the same id is
        refused (409 ``conflict``): billing keeps what each term drew under its id. ``check_only``: the subscription
        with it is checked, and nothing is written.
        """
        with self._lock:
            sub = self.get_subscription(tenant, sub_id)
            terms: list[Commit | Credit | Discount] = [*sub.commits, *sub.credits, *sub.discounts]
            same = [t for t in terms if t.id == commit.id]
            if same == [commit]:
                return sub
            if same:
                raise Conflict(
                    f"subscription {sub_id!r} has a term {commit.id!r} already, which is not this top-up's grant: "
                    "use another id",
                    code="conflict",
                )
            added = msgspec.structs.replace(sub, commits=[*sub.commits, commit])
            if check_only:
                self._check_subscription(tenant, added)
                return added
            return self.put_subscription(tenant, added)

    def delete_subscription(self, tenant: str, sub_id: str) -> None:
        with self._lock:
            self._delete("subscription", tenant, sub_id)

    def get_subscription(self, tenant: str, sub_id: str) -> Subscription:
        return self._get("subscription", tenant, sub_id, Subscription)

    def list_subscriptions(self, tenant: str) -> list[Subscription]:
        return self._list("subscription", tenant, Subscription)

    # Tax: rates (never edited: ended, and replaced by a new one) and the seller's settings (meter.catalog.tax)

    def create_tax_rate(self, tenant: str, rate: TaxRate) -> TaxRate:
        check_rate(rate)
        with self._lock:
            self._put("tax_rate", tenant, rate.id, rate, new=True)
        return rate

    def get_tax_rate(self, tenant: str, rate_id: str) -> TaxRate:
        return self._get("tax_rate", tenant, rate_id, TaxRate)

    def list_tax_rates(self, tenant: str) -> list[TaxRate]:
        return self._list("tax_rate", tenant, TaxRate)

    def end_tax_rate(self, tenant: str, rate_id: str, at: datetime) -> TaxRate:
        """The rate stops applying at ``at`` (its ``effective_to``); invoices finalized before keep it."""
        with self._lock:
            rate = self.get_tax_rate(tenant, rate_id)
            if rate.effective_to is not None and rate.effective_to <= at:
                raise invalid(
                    f"tax rate {rate_id!r} ended already, at {rate.effective_to.isoformat()}: it cannot end later "
                    "(create a new rate to tax again)"
                )
            if at <= rate.effective_from:
                raise invalid(
                    f"tax rate {rate_id!r} takes effect at {rate.effective_from.isoformat()}: it must end after that "
                    f"(got {at.isoformat()})"
                )
            ended = msgspec.structs.replace(rate, effective_to=at)
            self._put("tax_rate", tenant, rate_id, ended, new=False)
        return ended

    def put_tax_settings(self, tenant: str, settings: TaxSettings) -> TaxSettings:
        with self._lock:
            self._put("tax_settings", tenant, "seller", settings, new=False)
        return settings

    def get_tax_settings(self, tenant: str) -> TaxSettings | None:
        """The tenant's tax settings; None until they are set."""
        if not self._exists("tax_settings", tenant, "seller"):
            return None
        return self._get("tax_settings", tenant, "seller", TaxSettings)

    # Invoice documents' settings (meter.catalog.documents)

    def put_document_settings(self, tenant: str, settings: DocumentSettings) -> DocumentSettings:
        with self._lock:
            self._put("document_settings", tenant, "tenant", settings, new=False)
        return settings

    def get_document_settings(self, tenant: str) -> DocumentSettings:
        """The tenant's document settings; the defaults (no seller details, no logo) until they are set."""
        if not self._exists("document_settings", tenant, "tenant"):
            return DOCUMENTS_DEFAULT
        return self._get("document_settings", tenant, "tenant", DocumentSettings)

    # Revenue recognition's settings (meter.catalog.revenue)

    def put_revenue_settings(self, tenant: str, settings: RevenueSettings) -> RevenueSettings:
        with self._lock:
            self._put("revenue_settings", tenant, "tenant", settings, new=False)
        return settings

    def get_revenue_settings(self, tenant: str) -> RevenueSettings:
        """The tenant's revenue settings; the defaults (UTC, breakage at expiry) until they are set."""
        if not self._exists("revenue_settings", tenant, "tenant"):
            return REVENUE_DEFAULT
        return self._get("revenue_settings", tenant, "tenant", RevenueSettings)
