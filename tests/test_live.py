"""The live account state in process: balances drawn exactly as the invoice draws them, kept current from the engine.

Worked by hand: tokens at 0.00002 USD each (per unit), a credit of 1.00 USD.
- 30,000 tokens rate at 0.60: the credit pays it all, 0.40 left;
- 40,000 more (70,000) rate at 1.40: the credit pays 1.00 and is spent; 0.40 is billed.
The invoice of the cycle then draws exactly the 1.00 the balance said.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from conftest import body, event
from meter.billing.invoicer import Invoicer
from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog, Credit, Customer, PlanVersionBody, Subscription
from meter.catalog.entitlements import Entitlement, UnitGrant
from meter.catalog.prices import Price
from meter.engine import Engine
from meter.exceptions import InvalidInput
from meter.live.tracker import Tracker
from meter.live.usage import LiveUsage

TENANT = "acme"
#: Within the engine's back-dating window, whatever today's date: the middle of the current UTC month, or of the
#: previous one early in a month (so that "now" stays inside the cycle and events are not in the future).
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
CYCLE_START = NOW.replace(day=1, hour=0)


class World:
    def __init__(self, root: Path) -> None:
        self.engine = Engine(root / "usage", maintenance_interval=None)
        self.catalog = BillingCatalog(root / "billing", meters=self.engine)
        self.store = InvoiceStore(root / "invoices")
        self.out = root / "export"
        self.clock = NOW
        self.tracker = Tracker(self.engine, self.catalog, self.store, self.out, lambda: [TENANT], clock=self.now)
        self.invoicer = Invoicer(self.engine, self.catalog, self.store, self.out)
        self.n = 0

    def now(self) -> datetime:
        return self.clock

    def tokens(self, customer: str, amount: int, at: datetime | None = None) -> None:
        self.n += 1
        result = self.engine.ingest(
            TENANT,
            body(event(f"e{self.n}", customer, type="request", time=at or self.clock, tokens=amount)),
            now=self.clock,
        )
        assert result.accepted == 1, result

    def close(self) -> None:
        self.store.close()
        self.catalog.close()
        self.engine.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.engine.create_meter(
        TENANT, {"slug": "tokens", "event_type": "request", "aggregation": "sum", "value_property": "$.tokens"}
    )
    w.catalog.put_customer(TENANT, Customer(id="c1", name="C1", currency="USD"))
    price = Price(id="tok", currency="USD", model="per_unit", meter="tokens", unit_price=Decimal("0.00002"))
    w.catalog.create_plan(TENANT, "pro", "Pro", [PlanVersionBody(effective_from=CYCLE_START, prices=[price])])
    credit = Credit(id="promo", amount=Decimal("1.00"), start=CYCLE_START, end=CYCLE_START + timedelta(days=365))
    w.catalog.put_subscription(
        TENANT, Subscription(id="s1", customer="c1", plan="pro", version=1, start=CYCLE_START, credits=[credit])
    )
    yield w
    w.close()


def test_the_balance_is_the_credit_less_what_the_upcoming_invoice_draws(world: World) -> None:
    world.tracker.refresh()
    balance = world.tracker.balance(TENANT, "c1")
    assert balance is not None
    assert (balance.granted, balance.balance, balance.spend) == (Decimal("1.00"), Decimal("1.00"), Decimal(0))

    world.tokens("c1", 30_000)
    world.tracker.refresh()
    balance = world.tracker.balance(TENANT, "c1")
    assert balance is not None
    assert balance.spend == Decimal("0.60")
    assert balance.balance == Decimal("0.40")
    [grant] = balance.grants
    assert (grant.grant, grant.drawn_current, grant.remaining) == ("promo", Decimal("0.60"), Decimal("0.40"))
    [consumed] = balance.consumed
    assert (consumed.meter, consumed.quantity, consumed.drawn) == ("tokens", Decimal(30_000), Decimal("0.60"))

    world.tokens("c1", 40_000)
    world.tracker.refresh()
    balance = world.tracker.balance(TENANT, "c1")
    assert balance is not None
    assert (balance.spend, balance.balance) == (Decimal("1.40"), Decimal(0))
    assert balance.grants[0].drawn_current == Decimal("1.00")


def test_the_balance_at_the_cycles_end_is_what_its_invoice_draws(world: World) -> None:
    """One set of rules: the invoice of the cycle draws from the grant exactly what the live balance said."""
    world.tokens("c1", 70_000)
    world.tracker.refresh()
    balance = world.tracker.balance(TENANT, "c1")
    assert balance is not None
    said = balance.grants[0].drawn_current
    next_month = f"{(CYCLE_START + timedelta(days=32)):%Y-%m}"
    run = world.invoicer.run(TENANT, next_month, finalize=True)
    [invoice] = run.invoices
    drawn = -sum((line.amount for line in invoice.lines if line.kind == "credit"), Decimal(0))
    assert drawn == said == Decimal("1.00")


def test_a_backdated_event_before_the_mark_is_counted_once(world: World) -> None:
    """An event older than the tail's mark drops the bases it falls in: they are read again, not added to."""
    usage = world.tracker.usage
    world.tokens("c1", 10_000, at=CYCLE_START + timedelta(minutes=5))
    world.tracker.refresh()
    assert usage.mark > CYCLE_START + timedelta(minutes=5) or NOW - CYCLE_START < timedelta(minutes=20)
    world.tokens("c1", 5_000, at=CYCLE_START + timedelta(minutes=6))
    world.tokens("c1", 5_000, at=NOW)
    world.tracker.refresh()
    standing = world.tracker.standing(TENANT, "c1")
    assert standing is not None
    assert standing.usage["tokens"] == Decimal(20_000)
    world.tracker.refresh()  # nothing changed: nothing read again, the same answer
    standing = world.tracker.standing(TENANT, "c1")
    assert standing is not None and standing.usage["tokens"] == Decimal(20_000)


def test_the_mark_moves_forward_without_losing_or_doubling_usage(world: World) -> None:
    world.tokens("c1", 1_000)
    world.tracker.refresh()
    before = world.tracker.usage.mark
    world.clock = NOW + timedelta(minutes=45)
    world.tokens("c1", 2_000)
    world.tracker.refresh()
    assert world.tracker.usage.mark > before
    world.clock = NOW + timedelta(minutes=95)
    world.tracker.refresh()
    standing = world.tracker.standing(TENANT, "c1")
    assert standing is not None and standing.usage["tokens"] == Decimal(3_000)


def test_live_usage_reads_few_queries_once_warm(world: World) -> None:
    """A refresh after a change re-reads the tail of the changed customers only: one query per meter."""
    world.tokens("c1", 1_000)
    world.tracker.refresh()
    usage: LiveUsage = world.tracker.usage
    before = usage.queries
    world.tokens("c1", 1_000)
    world.tracker.refresh()
    assert usage.queries - before == 1
    standing = world.tracker.standing(TENANT, "c1")
    assert standing is not None and standing.usage["tokens"] == Decimal(2_000)
    assert msgspec.json.encode(standing)


def test_unit_grants_extend_an_allowance_period_by_period(world: World) -> None:
    """Worked by hand: 1000 tokens a month; grant A (500, priority 0) and B (300, priority 1), both over both months.

    Last month 1200 tokens: 200 past the allowance, drawn from A (300 left). This month 1500: 500 past it, A's 300 then
    200 of B (100 left): 100 remaining, access on. 100 more: nothing left, the hard limit turns access off.
    """
    start = CYCLE_START - timedelta(days=20)
    allowance = Entitlement(feature="tokens", kind="metered", meter="tokens", limit=Decimal(1000), reset="month")
    world.catalog.create_plan(
        TENANT, "units", "Units", [PlanVersionBody(effective_from=start, prices=[])], entitlements=[allowance]
    )
    world.catalog.put_customer(TENANT, Customer(id="c2", name="C2", currency="USD"))
    grants = [
        UnitGrant(id="a", feature="tokens", amount=Decimal(500), start=start, end=CYCLE_START + timedelta(days=20)),
        UnitGrant(
            id="b", feature="tokens", amount=Decimal(300), start=start, end=CYCLE_START + timedelta(days=60), priority=1
        ),
    ]
    world.catalog.put_subscription(
        TENANT, Subscription(id="s2", customer="c2", plan="units", version=1, start=start, unit_grants=grants)
    )
    world.tokens("c2", 1200, at=CYCLE_START - timedelta(hours=1))
    world.tokens("c2", 1500)
    world.tracker.refresh()
    access = world.tracker.check(TENANT, "c2", "tokens")
    assert access is not None
    assert (access.has_access, access.usage, access.limit, access.remaining) == (
        True,
        Decimal(1500),
        Decimal(1000),
        Decimal(100),
    )
    assert [(g.grant, g.remaining) for g in access.grants] == [("a", Decimal(0)), ("b", Decimal(100))]
    world.tokens("c2", 100)
    world.tracker.refresh()
    access = world.tracker.check(TENANT, "c2", "tokens")
    assert access is not None
    assert (access.has_access, access.reason, access.remaining) == (False, "limit_reached", Decimal(0)), access


def test_a_unit_grant_must_name_a_metered_feature(world: World) -> None:
    grant = UnitGrant(id="a", feature="nope", amount=Decimal(5), start=CYCLE_START, end=CYCLE_START + timedelta(days=9))
    with pytest.raises(InvalidInput, match="'nope' is not a metered entitlement"):
        world.catalog.put_subscription(
            TENANT, Subscription(id="s1", customer="c1", plan="pro", version=1, start=CYCLE_START, unit_grants=[grant])
        )


def test_a_unit_grant_that_starts_later_turns_access_on_when_it_starts(world: World) -> None:
    """No event and no catalog write between: the grant's start alone makes the state be computed again."""
    allowance = Entitlement(feature="tokens", kind="metered", meter="tokens", limit=Decimal(1000), reset="month")
    world.catalog.create_plan(
        TENANT, "units", "Units", [PlanVersionBody(effective_from=CYCLE_START, prices=[])], entitlements=[allowance]
    )
    world.catalog.put_customer(TENANT, Customer(id="c2", name="C2", currency="USD"))
    later = NOW + timedelta(hours=1)
    grant = UnitGrant(id="later", feature="tokens", amount=Decimal(500), start=later, end=later + timedelta(days=30))
    world.catalog.put_subscription(
        TENANT, Subscription(id="s2", customer="c2", plan="units", version=1, start=CYCLE_START, unit_grants=[grant])
    )
    world.tokens("c2", 1000)
    world.tracker.refresh()
    access = world.tracker.check(TENANT, "c2", "tokens")
    assert access is not None
    assert (access.has_access, access.reason, access.remaining) == (False, "limit_reached", Decimal(0))

    world.clock = later + timedelta(minutes=1)
    world.tracker.refresh()
    access = world.tracker.check(TENANT, "c2", "tokens")
    assert access is not None
    assert (access.has_access, access.remaining) == (True, Decimal(500)), access
    assert [(g.grant, g.remaining) for g in access.grants] == [("later", Decimal(500))]
