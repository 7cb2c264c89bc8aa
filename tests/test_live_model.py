"""A model-based test of the live account state: at every step it equals a reference model computed by hand.

A small world (one tenant, three customers, a ``sum`` meter ``tokens`` priced in graduated tiers, a metered
allowance with a hard limit and a boolean feature, monthly calendar cycles) receives random usage (sometimes
backdated, before the live usage's mark), credits, top-ups, clock advances (past grants' expiries, across month
ends, where the month's invoice run is finalized), price changes (a new plan version migrated to) and restarts.
After each step the tracker is refreshed and compared with :class:`Model`, written here in plain ``Decimal`` from
the rules the invoice follows (``billing/terms.py credit_lines``), never with meter's own pricing:

- a cycle's usage is rated per plan version it spent time on (tiers restart at a plan change), each line rounded
  half to even to cents once;
- grants (credits and top-ups' prepaid commits) pay the lines lowest priority first, then the one expiring first
  (then by id), each line they overlap in time, up to what finalized invoices left of them;
- the balance is what is left of the grants in force; the metered allowance's usage is the cycle's.

Alerts: every threshold crossing the model saw (usage, balance low and depleted, allowance exhausted) produced
exactly one outbox event per (type, alert, customer, threshold, period), and nothing else was emitted, restarts
included.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from tempfile import TemporaryDirectory

import msgspec
import pytest
from conftest import body, event
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule
from meter.billing.invoicer import Invoicer
from meter.billing.invoices import Invoice
from meter.billing.store import InvoiceStore
from meter.billing.top_ups import TopUpBody, top_up
from meter.catalog.billing import BillingCatalog, Credit, Customer, PlanVersionBody, Subscription
from meter.catalog.entitlements import Entitlement
from meter.catalog.prices import Price, Tier
from meter.engine import Engine
from meter.live import alerts
from meter.live.alerts import Alert, AlertBook
from meter.live.tracker import Tracker

TENANT = "acme"
CUSTOMERS = ("c1", "c2", "c3")
CENT = Decimal("0.01")
LIMIT = Decimal(5000)
USAGE_THRESHOLDS = (Decimal(500), Decimal(3000), Decimal(8000))
BALANCE_THRESHOLDS = (Decimal("5.00"), Decimal("1.00"))
#: Tier tables: (first tier's end, its unit price, the unit price above it). Version 1 is the first.
TIERS = (
    (Decimal(1000), Decimal("0.01"), Decimal("0.005")),
    (Decimal(500), Decimal("0.012"), Decimal("0.0035")),
    (Decimal(2000), Decimal("0.008"), Decimal("0.0065")),
    (Decimal(1000), Decimal("0.0125"), Decimal("0.0045")),
)


def _month_start(t: datetime, months: int = 0) -> datetime:
    index = t.year * 12 + t.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


#: Real time matters only to keep the clock in the past (the engine takes ``now=`` on each call): the subscriptions
#: start two months back, the clock near the end of that month, and it never goes past a few hours ago.
REAL = datetime.now(UTC).replace(second=0, microsecond=0)
CYCLE0 = _month_start(REAL, -2)
START = _month_start(REAL, -1) - timedelta(hours=9)
LATEST = REAL - timedelta(hours=3)
#: A top-up without an expiry lasts as long as its subscription (these never end): the last time the catalog holds.
FOREVER = datetime(8999, 12, 31, tzinfo=UTC)


def _money(x: Decimal) -> Decimal:
    return x.quantize(CENT, rounding=ROUND_HALF_EVEN)


def _graduated(quantity: Decimal, version: int) -> Decimal:
    split, low, high = TIERS[version - 1]
    return min(quantity, split) * low + max(quantity - split, Decimal(0)) * high


def _price(version: int) -> Price:
    split, low, high = TIERS[version - 1]
    return Price(
        id="tok",
        currency="USD",
        model="graduated",
        meter="tokens",
        tiers=[Tier(start=Decimal(0), up_to=split, unit_price=low), Tier(start=split, unit_price=high)],
    )


def _cycle(t: datetime) -> tuple[datetime, datetime]:
    return _month_start(t), _month_start(t, 1)


@dataclass
class Grant:
    id: str
    amount: Decimal
    priority: int
    start: datetime
    end: datetime
    invoiced: Decimal = Decimal(0)


@dataclass
class Account:
    """One customer's subscription as the model sees it."""

    #: (version, from): the plan versions it was on, oldest first.
    phases: list[tuple[int, datetime]] = field(default_factory=lambda: [(1, CYCLE0)])
    #: The tier table of the subscription's override of the price (every version's), if any.
    override: int | None = None
    grants: dict[str, Grant] = field(default_factory=dict)
    #: (event time, tokens)
    events: list[tuple[datetime, Decimal]] = field(default_factory=list)


@dataclass
class Line:
    start: datetime
    end: datetime
    amount: Decimal


class Model:
    """The reference: usage, rating, draws, balance, allowance and alert crossings, computed from the events."""

    def __init__(self) -> None:
        self.accounts = {c: Account() for c in CUSTOMERS}
        #: (type, alert, customer, threshold, period) of every crossing the model saw.
        self.crossed: set[tuple[str, str, str, Decimal | None, datetime]] = set()

    def used(self, customer: str, start: datetime, end: datetime) -> Decimal:
        return sum((n for t, n in self.accounts[customer].events if start <= t < end), Decimal(0))

    def lines(self, customer: str, cycle: tuple[datetime, datetime]) -> list[Line]:
        """The cycle's usage lines: one per plan version it spent time on, rated apart, rounded once."""
        phases = self.accounts[customer].phases
        out = []
        for i, (version, since) in enumerate(phases):
            until = phases[i + 1][1] if i + 1 < len(phases) else cycle[1]
            lo, hi = max(since, cycle[0]), min(until, cycle[1])
            if lo < hi:
                tiers = self.accounts[customer].override or version
                out.append(Line(lo, hi, _money(_graduated(self.used(customer, lo, hi), tiers))))
        return out

    def draws(self, customer: str, cycle: tuple[datetime, datetime]) -> dict[str, Decimal]:
        """What the cycle's invoice draws from each grant: lowest priority, then earliest end, over each line."""
        lines = [line for line in self.lines(customer, cycle) if line.amount > 0]
        due = [line.amount for line in lines]
        drawn: dict[str, Decimal] = {}
        grants = sorted(self.accounts[customer].grants.values(), key=lambda g: (g.priority, g.end, g.id))
        for grant in grants:
            left = grant.amount - grant.invoiced
            for i, line in enumerate(lines):
                if left <= 0 or due[i] <= 0 or not (line.start < grant.end and grant.start < line.end):
                    continue
                take = min(due[i], left)
                due[i] -= take
                left -= take
                drawn[grant.id] = drawn.get(grant.id, Decimal(0)) + take
        return drawn

    def invoice(self, cycle: tuple[datetime, datetime]) -> None:
        """The cycle's invoices are finalized: what they drew is drawn for good."""
        for customer, account in self.accounts.items():
            for grant_id, take in self.draws(customer, cycle).items():
                account.grants[grant_id].invoiced += take


class LiveModelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._dir = TemporaryDirectory()
        self.root = Path(self._dir.name)
        self.clock = START
        self.model = Model()
        self.n = 0
        self.versions = 1
        self.version_from = CYCLE0
        self.open()
        self.engine.create_meter(
            TENANT, {"slug": "tokens", "event_type": "request", "aggregation": "sum", "value_property": "$.tokens"}
        )
        for c in CUSTOMERS:
            self.catalog.put_customer(TENANT, Customer(id=c, name=c.upper(), currency="USD"))
        entitlements = [
            Entitlement(feature="tokens", kind="metered", meter="tokens", limit=LIMIT),
            Entitlement(feature="beta", kind="boolean"),
        ]
        self.catalog.create_plan(
            TENANT, "pro", "Pro", [PlanVersionBody(effective_from=CYCLE0, prices=[_price(1)])], entitlements
        )
        for c in CUSTOMERS:
            self.catalog.put_subscription(
                TENANT,
                Subscription(id=f"s-{c}", customer=c, plan="pro", version=1, start=CYCLE0),
            )
        book = AlertBook(self.catalog, self.engine)
        book.create(TENANT, Alert(id="usage", kind="usage", meter="tokens", thresholds=list(USAGE_THRESHOLDS)))
        book.create(TENANT, Alert(id="low", kind="balance", thresholds=list(BALANCE_THRESHOLDS)))
        self.tracker.refresh()
        self.check()

    # The world

    def open(self) -> None:
        self.engine = Engine(self.root / "usage", maintenance_interval=None)
        self.catalog = BillingCatalog(self.root / "billing", meters=self.engine)
        self.store = InvoiceStore(self.root / "invoices")
        self.out = self.root / "export"
        self.invoicer = Invoicer(self.engine, self.catalog, self.store, self.out)
        self.tracker = Tracker(self.engine, self.catalog, self.store, self.out, lambda: [TENANT], clock=self.now)
        self.tracker.on_refresh = alerts.on_refresh(AlertBook(self.catalog, self.engine), self.store)

    def close(self) -> None:
        self.tracker.stop()
        self.store.close()
        self.catalog.close()
        self.engine.close()

    def teardown(self) -> None:
        self.close()
        self._dir.cleanup()

    def now(self) -> datetime:
        return self.clock

    # Rules

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        tokens=st.integers(1, 2500),
        back=st.sampled_from([0, 0, 0, 2, 7, 25, 60]),
    )
    def usage(self, customer: str, tokens: int, back: int) -> None:
        at = max(self.clock - timedelta(minutes=back), _cycle(self.clock)[0])
        self.n += 1
        result = self.engine.ingest(
            TENANT, body(event(f"e{self.n}", customer, type="request", time=at, tokens=tokens)), now=self.clock
        )
        assert result.accepted == 1, result
        self.model.accounts[customer].events.append((at, Decimal(tokens)))
        self.step()

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        cents=st.integers(1, 3000),
        priority=st.integers(0, 2),
        started=st.integers(0, 600),
        days=st.integers(1, 10),
    )
    def grant(self, customer: str, cents: int, priority: int, started: int, days: int) -> None:
        self.n += 1
        start = max(self.clock - timedelta(minutes=started), CYCLE0)
        grant = Grant(f"g{self.n}", Decimal(cents) / 100, priority, start, self.clock + timedelta(days=days))
        sub = self.catalog.get_subscription(TENANT, f"s-{customer}")
        credit = Credit(id=grant.id, amount=grant.amount, start=start, end=grant.end, priority=priority)
        self.catalog.put_subscription(TENANT, msgspec.structs.replace(sub, credits=[*sub.credits, credit]))
        self.model.accounts[customer].grants[grant.id] = grant
        self.step()

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        cents=st.integers(1, 3000),
        priority=st.integers(0, 2),
        days=st.none() | st.integers(1, 10),
        retried=st.booleans(),
    )
    def top_up(self, customer: str, cents: int, priority: int, days: int | None, retried: bool) -> None:
        self.n += 1
        expires = None if days is None else self.clock + timedelta(days=days)
        amount = Decimal(cents) / 100
        body_ = TopUpBody(id=f"t{self.n}", amount=amount, expires_at=expires, priority=priority)
        result, new = top_up(self.invoicer, TENANT, customer, body_, now=self.clock)
        assert new and result.invoice.status in ("open", "paid")
        if retried:  # exactly once by its id: the same invoice, no second grant
            again, new = top_up(self.invoicer, TENANT, customer, body_, now=self.clock)
            assert not new and again.invoice.id == result.invoice.id
        end = expires or FOREVER
        assert result.top_up.end == end
        self.model.accounts[customer].grants[body_.id] = Grant(body_.id, amount, priority, self.clock, end)
        self.step()

    @rule(minutes=st.sampled_from([1, 9, 15, 45, 120, 600]))
    def advance(self, minutes: int) -> None:
        self.move(self.clock + timedelta(minutes=minutes))

    @rule(data=st.data())
    def past_an_expiry(self, data: st.DataObject) -> None:
        ends = sorted({g.end for a in self.model.accounts.values() for g in a.grants.values() if g.end > self.clock})
        if not ends:
            return
        end = data.draw(st.sampled_from(ends[:3]))
        self.move(end + timedelta(minutes=data.draw(st.sampled_from([0, 1, 30]))))

    @rule(minutes=st.sampled_from([0, 1, 30, 200]))
    def next_month(self, minutes: int) -> None:
        self.move(_month_start(self.clock, 1) + timedelta(minutes=minutes))

    @rule(customer=st.sampled_from(CUSTOMERS), version=st.integers(2, len(TIERS)))
    def price_change(self, customer: str, version: int) -> None:
        """A new plan version (when the clock moved since the last one), and a customer migrated to a version."""
        account = self.model.accounts[customer]
        if version > self.versions and self.clock > self.version_from:
            self.catalog.add_plan_version(TENANT, "pro", self.clock, [_price(self.versions + 1)])
            self.versions += 1
            self.version_from = self.clock
        version = min(version, self.versions)
        if version == account.phases[-1][0] or self.clock <= account.phases[-1][1]:
            return
        if account.override is not None:  # the override would be dropped from the past: see OVERRIDE_BUG
            return
        self.catalog.migrate_subscription(TENANT, f"s-{customer}", version, self.clock)
        account.phases.append((version, self.clock))
        self.step()

    @precondition(lambda self: self.clock < _month_start(START, 1))
    @rule(customer=st.sampled_from(CUSTOMERS), tiers=st.integers(1, len(TIERS)))
    def override(self, customer: str, tiers: int) -> None:
        """The subscription's own price (every version's), while no cycle was invoiced: the cycle is rated again.

        Later, it would re-rate finalized cycles too (adjustment lines), which this model does not compute. Not for a
        customer that changed versions: the override applies to the current version only (see OVERRIDE_BUG).
        """
        if len(self.model.accounts[customer].phases) > 1:
            return
        sub = self.catalog.get_subscription(TENANT, f"s-{customer}")
        self.catalog.put_subscription(TENANT, msgspec.structs.replace(sub, overrides=[_price(tiers)]))
        self.model.accounts[customer].override = tiers
        self.step()

    @rule()
    def restart(self) -> None:
        self.close()
        self.open()
        self.step()

    # Steps

    def move(self, to: datetime) -> None:
        if to > LATEST:
            return
        month = _month_start(self.clock, 1)
        # What the live balance said the ending cycle draws from each grant, at its last refresh (no event can land
        # in that cycle after it: events are never later than the clock).
        said: dict[str, dict[str, Decimal]] = {}
        previous = _cycle(self.clock)
        for customer in CUSTOMERS:
            balance = self.tracker.balance(TENANT, customer)
            assert balance is not None
            said[customer] = {g.grant: g.drawn_current for g in balance.grants if g.drawn_current}
        self.clock = to
        while month <= to:  # a cycle ended: its invoices are run and finalized, drawing the grants for good
            run = self.invoicer.run(TENANT, f"{month:%Y-%m}", finalize=True)
            assert not run.errors, run.errors
            assert all(i.status in ("open", "paid") for i in run.invoices), run.invoices
            ended = _cycle(month - timedelta(days=1))
            drawn = self.check_invoices(run.invoices, ended)
            if ended == previous:
                # One set of rules: the invoice draws from each grant what the balance said, to the cent.
                assert drawn == said, (ended, drawn, said)
            self.model.invoice(ended)
            month = _month_start(month, 1)
        self.step()

    def step(self) -> None:
        self.tracker.refresh()
        self.check()

    # Invariants

    def check_invoices(
        self, invoices: Sequence[Invoice], cycle: tuple[datetime, datetime]
    ) -> dict[str, dict[str, Decimal]]:
        """The cycle's finalized invoices drew from each grant exactly what the model draws (before it records it).

        Returns what they drew per customer and grant.
        """
        drawn: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for invoice in invoices:
            for line in invoice.lines:
                if line.kind == "credit" and line.grant is not None:
                    drawn[(invoice.customer, line.grant.split("|")[-1])] -= line.amount
        want: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for customer in CUSTOMERS:
            for grant_id, take in self.model.draws(customer, cycle).items():
                want[(customer, grant_id)] += take
        assert {k: v for k, v in drawn.items() if v} == dict(want), (cycle, dict(drawn), dict(want))
        per_customer: dict[str, dict[str, Decimal]] = {c: {} for c in CUSTOMERS}
        for (customer, grant_id), take in drawn.items():
            if take:
                per_customer[customer][grant_id] = take
        return per_customer

    def check(self) -> None:
        cycle = _cycle(self.clock)
        for customer in CUSTOMERS:
            self.check_customer(customer, cycle)
        self.check_alerts()

    def check_customer(self, customer: str, cycle: tuple[datetime, datetime]) -> None:
        model, account = self.model, self.model.accounts[customer]
        where = f"{customer} at {self.clock.isoformat()}"
        standing = self.tracker.standing(TENANT, customer)
        balance = self.tracker.balance(TENANT, customer)
        assert standing is not None and balance is not None, (where, self.tracker.errors)
        used = model.used(customer, *cycle)
        assert standing.usage.get("tokens", Decimal(0)) == used, (where, standing.usage, used)
        lines = model.lines(customer, cycle)
        spend = sum((line.amount for line in lines), Decimal(0))
        assert standing.spend == spend, (where, standing.spend, [(line.start, line.amount) for line in lines])
        assert (standing.period_start, standing.period_end) == cycle, (where, standing)
        draws = model.draws(customer, cycle)
        got = {g.grant: g for g in balance.grants}
        assert set(got) == set(account.grants), where
        in_force = []
        for grant in account.grants.values():
            current = draws.get(grant.id, Decimal(0))
            remaining = max(grant.amount - grant.invoiced - current, Decimal(0))
            g = got[grant.id]
            assert (g.amount, g.drawn_invoiced, g.drawn_current, g.remaining) == (
                grant.amount,
                grant.invoiced,
                current,
                remaining,
            ), (where, grant, g)
            if grant.start <= self.clock < grant.end:
                in_force.append((grant, remaining))
        left = sum((r for _, r in in_force), Decimal(0))
        assert balance.balance == left, (where, in_force, balance)
        assert standing.balance == (left if in_force else None), (where, in_force, standing.balance)
        assert standing.granted == sum((g.amount for g, _ in in_force), Decimal(0)), where
        access = self.tracker.check(TENANT, customer, "tokens")
        assert access is not None
        remaining = max(LIMIT - used, Decimal(0))
        assert (access.usage, access.limit, access.remaining, access.has_access) == (
            used,
            LIMIT,
            remaining,
            remaining > 0,
        ), (where, access)
        assert access.resets_at == cycle[1], where
        beta = self.tracker.check(TENANT, customer, "beta")
        assert beta is not None and beta.has_access, where
        # The crossings this state makes (usage only grows in a cycle; a balance can come back up and go down again,
        # which is still the one crossing per period).
        for t in USAGE_THRESHOLDS:
            if used >= t:
                model.crossed.add(("usage.threshold_crossed", "usage", customer, t, cycle[0]))
        if in_force:
            for t in BALANCE_THRESHOLDS:
                if left <= t:
                    model.crossed.add(("balance.low", "low", customer, t, cycle[0]))
            if left <= 0:
                model.crossed.add(("balance.depleted", "low", customer, None, cycle[0]))
        if used >= LIMIT:
            model.crossed.add(("entitlement.exhausted", alerts.ENTITLEMENTS, customer, None, cycle[1]))

    def check_alerts(self) -> None:
        told: Counter[tuple[str, str, str, Decimal | None, datetime]] = Counter()
        kinds = {"usage.threshold_crossed", "balance.low", "balance.depleted", "entitlement.exhausted"}
        for e in self.store.outbox(TENANT):
            if e.type not in kinds:
                continue
            data = e.data
            threshold = None if data["threshold"] is None else Decimal(data["threshold"])
            told[(e.type, data["alert"], data["customer"], threshold, datetime.fromisoformat(data["period"]))] += 1
        assert {k: n for k, n in told.items() if n != 1} == {}, "a crossing was told more than once"
        assert set(told) == self.model.crossed


def test_a_grant_that_expires_leaves_the_balance_without_any_other_change() -> None:
    """A grant's expiry is a change of its own.

    Found by the machine: a customer was computed again at its period's end only, so an expired grant stayed in its
    balance (and a balance alert could not fire) until its next event. Its grants' starts and ends count now.
    """
    world = LiveModelMachine()
    try:
        world.next_month(60)  # days from the cycle's end
        world.grant("c1", 500, 0, 0, 1)  # 5.00 for a day: the balance is 5.00
        world.top_up("c1", 200, 0, 3, False)  # 2.00 for three days
        balance = world.tracker.balance(TENANT, "c1")
        assert balance is not None and balance.balance == Decimal("7.00")
        world.move(world.clock + timedelta(days=1, minutes=1))  # checked against the model: 2.00 left
        balance = world.tracker.balance(TENANT, "c1")
        assert balance is not None and balance.balance == Decimal("2.00")
        assert ("balance.low", "low", "c1", Decimal("5.00"), _cycle(world.clock)[0]) in world.model.crossed
    finally:
        world.teardown()


#: Found by this test: ``Snapshot.prices_of`` applies a subscription's overrides to its current version only, so a
#: migration re-rates what the customer used before it, on the old version, at the plan's price: the live balance of
#: the cycle jumps, and a finalized cycle gets an adjustment line. The override is the customer's price (the catalog
#: refuses a migration to a version without the overridden price, so it carries on); the machine keeps overrides and
#: migrations apart until it is fixed, and this test says what is expected.
OVERRIDE_BUG = "overrides apply to the subscription's current version only: a migration re-rates the past"


@pytest.mark.xfail(strict=True, reason=OVERRIDE_BUG)
def test_a_plan_change_does_not_re_rate_what_an_override_priced() -> None:
    """400 tokens in October at the override's 0.012 (4.80, finalized); a migration in November re-rates nothing."""
    world = LiveModelMachine()
    try:
        world.override("c1", 2)
        world.usage("c1", 400, 0)
        world.next_month(60)
        world.clock += timedelta(minutes=5)
        world.catalog.add_plan_version(TENANT, "pro", world.clock, [_price(2)])
        world.catalog.migrate_subscription(TENANT, "s-c1", 2, world.clock)
        [upcoming] = world.invoicer.preview(TENANT, "c1", world.clock + timedelta(minutes=1))
        adjustments = [line.description for line in upcoming.lines if line.kind == "adjustment"]
        assert adjustments == []  # today: -0.80, "prior-period adjustment for <October>"
    finally:
        world.teardown()


LiveModelMachine.TestCase.settings = settings(
    max_examples=12,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_the_live_state_follows_the_model = LiveModelMachine.TestCase
