"""The live account state: every customer's balance, entitlements and spend, kept current on a thread of its own.

Each refresh (every ``interval``, 0.2 s by default) drains the engine's change feed (:class:`LiveUsage`) and
recomputes the customers whose usage changed, whose catalog or invoices changed, whose reservations moved, or whose
period ended. A customer's state is computed with invoicing's own rules: the upcoming invoice of each of its
subscriptions (:func:`meter.billing.invoicing.upcoming_of`, the usage of the current cycle so far, rated at its
current prices, tiers and all), read from the engine instead of the export. So what a grant has left here is what
the invoice will draw from it: its amount, less what finalized invoices drew, less the credit lines of the upcoming
invoice (``balance at the cycle's end == the invoice's draw``, tested). Checks read the result from memory
(:meth:`Tracker.check`: a dictionary lookup), never the disk.

``as_of`` on every answer: every event acknowledged before it is reflected (the drain's instant). The lag from an
event's acknowledgement to its effect is at most the interval plus one refresh; ``make bench-entitlements`` measures it.

Hooks: ``on_refresh(before, after)`` (alerts compare the two) and ``held(tenant, customer)`` (reservations: what is
held per feature, and ``"balance"``) are set by the server; a failing hook is reported, never stops a refresh.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import polars as pl

from meter.billing import cycles
from meter.billing.billed import Billed
from meter.billing.invoices import Invoice
from meter.billing.invoicing import UpcomingDrafts, upcoming_of
from meter.billing.keys import GrantKey
from meter.billing.store import InvoiceStore
from meter.billing.terms import recurring_left
from meter.catalog.billing import BillingCatalog, Commit, Credit, Customer, Plan, Subscription
from meter.catalog.entitlements import Entitlement, effective_entitlements
from meter.engine import Engine
from meter.lake.catalog import Snapshot, catalog_tables, meters_table, snapshot_of
from meter.live.answers import Access, Balance, Consumption, GrantBalance, NoAccess, Standing, UnitGrantBalance
from meter.live.usage import LiveUsage

__all__ = ["BALANCE", "Tracker"]

#: The reservation target that holds money against the balance (any other target is a feature).
BALANCE = "balance"
_ZERO = Decimal(0)
_NEVER = datetime(9999, 1, 1, tzinfo=UTC)
#: Customers recomputed in one vectorised pass (a pass costs about 80 ms of its own, plus its customers' share).
CHUNK = 2000

Clock = Callable[[], datetime]
OnRefresh = Callable[[Standing | None, Standing], None]
Held = Callable[[str, str], Mapping[str, Decimal]]
TopUp = Callable[[str, Subscription, Decimal], object]
#: A usage window a refresh reads: (customer, meter, from, to).
Window = tuple[str, str, datetime, datetime]


@dataclass
class _Tenant:
    """What one tenant's refreshes read, cached until the catalog or the invoices change."""

    catalog_seq: int = -1
    posted: int = -1
    snapshot: Snapshot | None = None
    billed: Billed | None = None
    #: The subscriptions' upcoming drafts, for this snapshot and this billed history.
    drafts: UpcomingDrafts | None = None
    plans: dict[str, Plan] = field(default_factory=dict)
    subscriptions: dict[str, list[Subscription]] = field(default_factory=dict)
    customers: dict[str, Customer] = field(default_factory=dict)


@dataclass
class _Live:
    """A customer's state as checks read it (replaced whole by each refresh, so a reader never sees half of one)."""

    standing: Standing
    balance: Balance
    #: When the state must be computed again though nothing changed (:func:`_wake`).
    wake: datetime = _NEVER


class Tracker:
    def __init__(
        self,
        engine: Engine,
        catalog: BillingCatalog,
        store: InvoiceStore,
        out: Path,
        tenants: Callable[[], Iterable[str]],
        *,
        interval: float = 0.2,
        clock: Clock | None = None,
        usage: LiveUsage | None = None,
    ) -> None:
        self.engine, self.catalog, self.store, self.out = engine, catalog, store, out
        self._tenants, self.interval = tenants, interval
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.usage = usage or LiveUsage(engine, max_future=engine.max_future, now=self.clock())
        self.on_refresh: OnRefresh | None = None
        self.held: Held | None = None
        #: Buys a subscription's automatic top-up (``meter.billing.top_ups.auto_top_up``) when its customer's balance is
        #: below the subscription's ``auto_top_up.below``; run on a thread of its own (a synced write and an export),
        #: one at a time per subscription. Asked again while the balance does not show it, it buys nothing more.
        self.top_up: TopUp | None = None
        self._topping: set[tuple[str, str]] = set()
        self._top_ups = ThreadPoolExecutor(1, thread_name_prefix="meter-top-up")
        self._live: dict[tuple[str, str], _Live] = {}
        self._cache: dict[str, _Tenant] = defaultdict(_Tenant)
        self._touched: dict[str, set[str]] = defaultdict(set)
        self._touched_lock = threading.Lock()
        #: Per tenant, the earliest period or entitlement end among its customers' states (see _expired).
        self._next_end: dict[str, datetime] = {}
        self._first = True
        self.refreshes = 0
        #: (tenant, customer) -> why its state could not be computed at the last refresh (its previous one is kept).
        self.errors: dict[tuple[str, str], str] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()

    # Reading

    def standing(self, tenant: str, customer: str) -> Standing | None:
        live = self._live.get((tenant, customer))
        return None if live is None else live.standing

    def balance(self, tenant: str, customer: str) -> Balance | None:
        live = self._live.get((tenant, customer))
        if live is None:
            return None
        lag = int((self.clock() - live.balance.as_of).total_seconds() * 1000)
        return _with_lag(live.balance, lag)

    def check(self, tenant: str, customer: str, feature: str) -> Access | None:
        """The customer's access to ``feature`` now; None when the customer has no live state (no subscription)."""
        live = self._live.get((tenant, customer))
        if live is None:
            return None
        found = live.standing.entitlements.get(feature)
        if found is not None:
            return found
        return Access.not_entitled(customer, feature, live.standing.as_of)

    # Being told

    def touch(self, tenant: str, customer: str) -> None:
        """Asks for the customer to be refreshed at the next refresh (its reservations moved, say)."""
        with self._touched_lock:
            self._touched[tenant].add(customer)

    # Refreshing

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="meter-live", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()
        self._top_ups.shutdown(wait=True)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 - the next refresh tries again; checks keep the last state
                print(f"meter: live state refresh failed: {e!r}", file=sys.stderr, flush=True)

    def refresh(self) -> int:
        """One refresh (the thread's, or a test's); returns how many customers were recomputed."""
        with self._refresh_lock:
            now = self.clock()
            changed = self.usage.drain(now)
            with self._touched_lock:
                touched, self._touched = self._touched, defaultdict(set)
            everything = changed.everything or self._first
            self._first = False
            done = 0
            for tenant in list(self._tenants()):
                state, concerned = self._tenant(tenant)
                if everything or concerned is None:
                    customers = set(state.subscriptions)
                else:
                    customers = changed.customers.get(tenant, set()) | touched.get(tenant, set()) | concerned
                    customers |= self._expired(tenant, now)
                customers &= set(state.subscriptions)
                gone = [key for key in self._live if key[0] == tenant and key[1] not in state.subscriptions]
                for key in gone:
                    del self._live[key]
                ordered = sorted(customers)
                for first in range(0, len(ordered), CHUNK):
                    done += self._refresh(tenant, state, ordered[first : first + CHUNK], changed.as_of, now)
                    time.sleep(0)  # lets the requests' thread in between chunks: checks wait for no whole refresh
                if now >= self._next_end.get(tenant, _NEVER):  # a period ended: the next end, over every state
                    ends = [live.wake for (t, _), live in self._live.items() if t == tenant]
                    self._next_end[tenant] = min(ends, default=_NEVER)
            self.refreshes += 1
            return done

    def _expired(self, tenant: str, now: datetime) -> set[str]:
        """Customers whose period, or an entitlement's, ended: they start again from zero.

        Looked for only once the tenant's earliest end has passed, not at every refresh.
        """
        if now < self._next_end.get(tenant, _NEVER):
            return set()
        found = set()
        for (t, customer), live in self._live.items():
            if t == tenant and live.wake <= now:
                found.add(customer)
        return found

    def _tenant(self, tenant: str) -> tuple[_Tenant, set[str] | None]:
        """The tenant's catalog and invoices as of now, and the customers a change to either concerns (None: all).

        Only the customers whose subscriptions, plans or own record changed are recomputed after a catalog write (a
        bulk load of ten thousand customers does not recompute them all at each refresh); an invoice change concerns
        the customers its journal entries name. Reading the catalog again costs what it holds (once per refresh at
        most, while it keeps changing).
        """
        state = self._cache[tenant]
        first = state.snapshot is None
        changed: set[str] = set()
        seq = self.catalog.written(tenant)
        if seq != state.catalog_seq or first:
            state.snapshot = snapshot_of(
                tenant, catalog_tables(self.catalog, tenant, meters_table(self.engine, tenant))
            )
            plans = {p.id: p for p in self.catalog.list_plans(tenant)}
            subs: dict[str, list[Subscription]] = defaultdict(list)
            for sub in self.catalog.list_subscriptions(tenant):
                subs[sub.customer].append(sub)
            customers = {c.id: c for c in self.catalog.list_customers(tenant)}
            moved = {p for p in plans.keys() | state.plans.keys() if plans.get(p) != state.plans.get(p)}
            for customer in subs.keys() | state.subscriptions.keys():
                before, after = state.subscriptions.get(customer, []), subs.get(customer, [])
                if before != after or customers.get(customer) != state.customers.get(customer):
                    changed.add(customer)
                elif any(s.plan in moved for s in after):
                    changed.add(customer)
            state.plans, state.subscriptions, state.customers = plans, dict(subs), customers
            state.catalog_seq = seq
        posted = self.store.posted(tenant)
        if posted != state.posted or state.billed is None:
            for entry in [] if first else self.store.journal(tenant, after=state.posted):
                if entry.customer is None:
                    first = True  # a change of no one customer's: everyone's balance is read again
                else:
                    changed.add(entry.customer)
            state.billed = Billed.of(self.store, tenant)
            state.posted = posted
        assert state.snapshot is not None and state.billed is not None
        drafts = state.drafts
        if drafts is None or drafts.snapshot is not state.snapshot or drafts.billed is not state.billed:
            state.drafts = UpcomingDrafts(state.snapshot, state.billed)
        return state, None if first else changed

    def _refresh(self, tenant: str, state: _Tenant, customers: list[str], as_of: datetime, now: datetime) -> int:
        assert state.snapshot is not None and state.drafts is not None
        snapshot = state.snapshot
        aggregations = {slug: spec.aggregation for slug, spec in snapshot.meters.items()}

        def quantities(requests: pl.DataFrame) -> pl.DataFrame:
            return self.usage.quantities(tenant, requests, aggregations, now)

        active = {
            c: [s for s in state.subscriptions[c] if s.start <= now and (s.end is None or now < s.end)]
            for c in customers
        }
        subs = [s for c in customers for s in active[c]]
        priced = upcoming_of(state.drafts, self.out, subs, now, quantities)
        failed = {e.subscription: e.message for e in priced.errors}
        invoices: dict[str, Invoice] = {i.subscription: i for i in priced.invoices}
        windows = self._windows(snapshot, state, active, now)
        watched = {key: w for mine in windows.values() for key, w in mine.items()}
        used = self._used(tenant, watched, aggregations, now)
        done = 0
        for customer in customers:
            customer_subs = active[customer]
            errors = [failed[s.id] for s in customer_subs if s.id in failed]
            if errors:
                self.errors[(tenant, customer)] = errors[0]
                continue
            self.errors.pop((tenant, customer), None)
            held = dict(self.held(tenant, customer)) if self.held is not None else {}
            live = self._compute(
                tenant, customer, snapshot, state, customer_subs, invoices, windows, used, held, as_of, now
            )
            before = self._live.get((tenant, customer))
            self._live[(tenant, customer)] = live
            self._next_end[tenant] = min(self._next_end.get(tenant, _NEVER), live.wake)
            done += 1
            if self.on_refresh is not None:
                try:
                    self.on_refresh(None if before is None else before.standing, live.standing)
                except Exception as e:  # noqa: BLE001 - alerts are retried at the next change; the state stands
                    print(f"meter: tenant {tenant!r}: alerts for {customer!r} failed: {e!r}", file=sys.stderr)
        return done

    def _buy(self, tenant: str, sub: Subscription, balance: Decimal) -> None:
        """Asks for the subscription's automatic top-up on the top-up thread, unless one is under way."""
        if (tenant, sub.id) in self._topping:
            return
        self._topping.add((tenant, sub.id))

        def buy() -> None:
            try:
                assert self.top_up is not None
                self.top_up(tenant, sub, balance)
            except Exception as e:  # noqa: BLE001 - asked again at the customer's next refresh while still low
                print(f"meter: tenant {tenant!r}: automatic top-up of {sub.id!r} failed: {e!r}", file=sys.stderr)
            finally:
                self._topping.discard((tenant, sub.id))
                self.touch(tenant, sub.customer)

        self._top_ups.submit(buy)

    def _windows(
        self, snapshot: Snapshot, state: _Tenant, active: Mapping[str, list[Subscription]], now: datetime
    ) -> dict[str, dict[str, Window]]:
        """The usage windows a refresh reads besides the invoices': per subscription, key -> window.

        Each meter's usage over the subscription's cycle (``cycle|sub|meter``, for usage alerts) and each metered
        entitlement's usage over its period (``ent|sub|feature``).
        """
        every: dict[str, dict[str, Window]] = {}
        for customer, subs in active.items():
            for sub in subs:
                windows = every[sub.id] = {}
                tz = _tz(snapshot, customer)
                cycle = cycles.cycle_containing(sub, tz, now)
                meters = {p.meter for p in snapshot.prices_of(sub, sub.version) if p.meter is not None}
                for ent in _entitlements(state.plans.get(sub.plan), sub):
                    if ent.kind == "metered" and ent.meter is not None:
                        meters.add(ent.meter)
                        start, end = _period(ent, cycle, tz, now)
                        windows[f"ent|{sub.id}|{ent.feature}"] = (customer, ent.meter, start, end)
                        for past in _past_periods(ent, sub, tz, now):
                            key = f"ent|{sub.id}|{ent.feature}|{past[0].isoformat()}"
                            windows[key] = (customer, ent.meter, *past)
                for meter in meters:
                    windows[f"cycle|{sub.id}|{meter}"] = (customer, meter, cycle.start, cycle.end)
        return every

    def _used(
        self, tenant: str, windows: Mapping[str, Window], aggregations: Mapping[str, str], now: datetime
    ) -> dict[str, Decimal]:
        """Each window's usage, all combinations together."""
        keys = list(windows)
        found = self.usage.totals(tenant, [(*windows[k][:2], (), *windows[k][2:]) for k in keys], aggregations, now)
        return {k: sum((value for value, _ in totals.values()), _ZERO) for k, totals in zip(keys, found, strict=True)}

    def _compute(
        self,
        tenant: str,
        customer: str,
        snapshot: Snapshot,
        state: _Tenant,
        subs: list[Subscription],
        invoices: Mapping[str, Invoice],
        windows: Mapping[str, Mapping[str, Window]],
        used: Mapping[str, Decimal],
        held: dict[str, Decimal],
        as_of: datetime,
        now: datetime,
    ) -> _Live:
        known = snapshot.customer(customer)
        currency = known.currency if known is not None else ""
        tz = _tz(snapshot, customer)
        period = cycles.cycle_containing(subs[0], tz, now) if subs else None
        assert state.billed is not None
        grants: list[GrantBalance] = []
        consumed: list[Consumption] = []
        spend = _ZERO
        usage: dict[str, Decimal] = defaultdict(Decimal)
        for sub in subs:
            invoice = invoices.get(sub.id)
            lines = invoice.lines if invoice is not None else []
            drawn_now: dict[str, Decimal] = defaultdict(Decimal)
            drawn_on_price: dict[str | None, Decimal] = defaultdict(Decimal)
            for line in lines:
                if line.kind == "credit" and line.grant is not None:
                    drawn_now[line.grant] -= line.amount
                    drawn_on_price[line.price] -= line.amount
            for line in lines:
                if line.kind == "usage" and line.meter is not None and line.price is not None:
                    spend += line.amount
                    drawn = min(line.amount, drawn_on_price[line.price])
                    drawn_on_price[line.price] -= drawn
                    consumed.append(
                        Consumption(
                            subscription=sub.id,
                            price=line.price,
                            meter=line.meter,
                            quantity=line.quantity or _ZERO,
                            amount=line.amount,
                            drawn=drawn,
                        )
                    )
            grants += _grants(sub, state.billed, drawn_now, tz, now)
            for key, (_, meter, _, _) in windows.get(sub.id, {}).items():
                if key.startswith(f"cycle|{sub.id}|"):
                    usage[meter] += used.get(key, _ZERO)
        reserved_money = held.get(BALANCE, _ZERO)
        _reserve(grants, reserved_money)
        in_force = [g for g in grants if g.start <= now < g.end]
        balance_left = sum((g.remaining for g in in_force), _ZERO)
        granted = sum((g.amount for g in in_force), _ZERO)
        ceiling = _first(s.spend_ceiling for s in subs)
        block: NoAccess | None = None
        if ceiling is not None and spend >= ceiling:
            block = "spend_ceiling"
        elif any(s.prepaid_only for s in subs) and balance_left <= 0:
            block = "balance_depleted"
        entitlements: dict[str, Access] = {}
        for sub in subs:
            for ent in _entitlements(state.plans.get(sub.plan), sub):
                if ent.feature in entitlements:
                    continue
                key = f"ent|{sub.id}|{ent.feature}"
                mine = windows.get(sub.id, {})
                window = mine.get(key)
                usage_now = used.get(key, _ZERO)
                periods = [(w[2], w[3], used.get(k, _ZERO)) for k, w in mine.items() if k.startswith(f"{key}|")]
                if window is not None:
                    periods.append((window[2], window[3], usage_now))
                entitlements[ent.feature] = _access(
                    customer,
                    ent,
                    usage_now,
                    window[3] if window else None,
                    held.get(ent.feature, _ZERO),
                    _unit_grants(ent, sub, sorted(periods), now),
                    block,
                    as_of,
                )
        standing = Standing(
            tenant=tenant,
            customer=customer,
            currency=currency,
            as_of=as_of,
            period_start=period.start if period else None,
            period_end=period.end if period else None,
            usage=dict(usage),
            spend=spend,
            spend_ceiling=ceiling,
            balance=balance_left if in_force else None,
            granted=granted,
            entitlements=entitlements,
        )
        if self.top_up is not None:
            for sub in subs:
                if sub.auto_top_up is not None and balance_left < sub.auto_top_up.below:
                    self._buy(tenant, sub, balance_left)
        balance = Balance(
            customer=customer,
            currency=currency,
            as_of=as_of,
            lag_ms=0,
            period_start=standing.period_start,
            period_end=standing.period_end,
            granted=granted,
            reserved=reserved_money,
            balance=balance_left,
            spend=spend,
            spend_ceiling=ceiling,
            grants=grants,
            consumed=consumed,
        )
        return _Live(standing, balance, _wake(standing, balance, subs))


def _past_periods(ent: Entitlement, sub: Subscription, tz: str, now: datetime) -> list[tuple[datetime, datetime]]:
    """The entitlement's periods before the current one that a unit grant of its feature was in force in.

    Their overage drew on the grants then (see :func:`_unit_grants`); as many as the grants span, each read once.
    """
    grants = [g for g in sub.unit_grants if g.feature == ent.feature]
    if not grants:
        return []
    current = _period(ent, cycles.cycle_containing(sub, tz, now), tz, now)[0]
    found = []
    at = min(g.start for g in grants)
    while at < current:
        start, end = _period(ent, cycles.cycle_containing(sub, tz, at), tz, at)
        if any(g.start < end and start < g.end for g in grants):
            found.append((start, end))
        at = end
    return found


def _unit_grants(
    ent: Entitlement, sub: Subscription, periods: list[tuple[datetime, datetime, Decimal]], now: datetime
) -> tuple[list[UnitGrantBalance], Decimal]:
    """What each unit grant of the feature has left, and the usage of the current period no allowance or grant covers.

    Each period's usage past the allowance is drawn, period by period (``periods`` in order, the current one last),
    from the grants in force in it (overlapping it, as a money credit pays the usage lines it overlaps), lowest
    priority first, then the one expiring first.
    """
    grants = sorted((g for g in sub.unit_grants if g.feature == ent.feature), key=lambda g: (g.priority, g.end, g.id))
    left = {g.id: g.amount for g in grants}
    limit = ent.limit if ent.limit is not None else _ZERO
    over = _ZERO
    for start, end, usage in periods:
        over = max(usage - limit, _ZERO)
        for g in grants:
            if over <= 0:
                break
            if g.start < end and start < g.end:
                take = min(over, left[g.id])
                left[g.id] -= take
                over -= take
    balances = [
        UnitGrantBalance(
            grant=g.id, amount=g.amount, remaining=left[g.id], start=g.start, end=g.end, priority=g.priority
        )
        for g in grants
        if g.start <= now < g.end
    ]
    return balances, over


def _wake(standing: Standing, balance: Balance, subs: Iterable[Subscription]) -> datetime:
    """When the state must be computed again though nothing changed.

    The next reset (the period's, an entitlement's), or the next time a grant of money or of units comes into force or
    expires: the balance and the allowances count the grants in force, and an alert must see a balance fall when one
    expires (or access come back when a grant of units starts).
    """
    ends = [standing.period_end, *(a.resets_at for a in standing.entitlements.values())]
    spans = [(g.start, g.end) for g in balance.grants] + [(g.start, g.end) for s in subs for g in s.unit_grants]
    ends += [t for span in spans for t in span if t > standing.as_of]
    return min((end for end in ends if end is not None), default=_NEVER)


def _tz(snapshot: Snapshot, customer: str) -> str:
    known = snapshot.customer(customer)
    return known.timezone if known is not None else "UTC"


def _first(values: Iterable[Decimal | None]) -> Decimal | None:
    return next((v for v in values if v is not None), None)


def _entitlements(plan: Plan | None, sub: Subscription) -> list[Entitlement]:
    return effective_entitlements(plan.entitlements if plan is not None else [], sub.entitlements)


def _period(ent: Entitlement, cycle: cycles.Period, tz: str, now: datetime) -> tuple[datetime, datetime]:
    """The period a metered entitlement's usage counts over now: the billing cycle, or a calendar period in ``tz``."""
    if ent.reset == "cycle":
        return cycle.start, cycle.end
    zone = ZoneInfo(tz)
    today = now.astimezone(zone).date()
    if ent.reset == "day":
        first, last = today, today + timedelta(days=1)
    elif ent.reset == "week":
        first = today - timedelta(days=today.weekday())
        last = first + timedelta(days=7)
    else:
        first = today.replace(day=1)
        last = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return _midnight(first, zone), _midnight(last, zone)


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def _grants(
    sub: Subscription, billed: Billed, drawn_now: Mapping[str, Decimal], tz: str, now: datetime
) -> list[GrantBalance]:
    """The subscription's credits and prepaid commits, in the order usage draws them (as the invoice does).

    A recurring credit is this cycle's grant: its amount and what rolled over (``recurring_left``, the invoice's
    rule), less what this cycle's usage draws, keyed by the cycle as the invoice's credit lines are.
    """
    found: list[Commit | Credit] = [*sub.credits, *(c for c in sub.commits if c.kind == "prepaid")]
    found.sort(key=lambda g: (g.priority, g.end, g.id))
    out = []
    for grant in found:
        if isinstance(grant, Credit) and grant.recurring is not None:
            cycle = cycles.cycle_containing(sub, tz, now)
            amount, left = recurring_left(sub, grant, billed, tz, now)
            key = GrantKey(sub.id, grant.id, cycle.start)
            invoiced = amount - left
        else:
            key = GrantKey(sub.id, grant.id)
            amount, invoiced = grant.amount, billed.drawn.get(key, _ZERO)
        current = drawn_now.get(key.text(), _ZERO)
        out.append(
            GrantBalance(
                subscription=sub.id,
                grant=grant.id,
                kind="credit" if isinstance(grant, Credit) else "commit",
                priority=grant.priority,
                start=grant.start,
                end=grant.end,
                amount=amount,
                drawn_invoiced=invoiced,
                drawn_current=current,
                reserved=_ZERO,
                remaining=max(amount - invoiced - current, _ZERO),
            )
        )
    return out


def _reserve(grants: list[GrantBalance], amount: Decimal) -> None:
    """Assigns money held by reservations to the grants in force, in the order usage draws them."""
    for grant in grants:
        if amount <= 0:
            return
        take = min(amount, grant.remaining)
        grant.reserved += take
        grant.remaining -= take
        amount -= take


def _access(
    customer: str,
    ent: Entitlement,
    usage: Decimal,
    resets_at: datetime | None,
    reserved: Decimal,
    grants: tuple[list[UnitGrantBalance], Decimal],
    block: NoAccess | None,
    as_of: datetime,
) -> Access:
    """One entitlement's answer, from the usage of its period, the unit grants in force and what reservations hold."""
    if ent.kind == "boolean":
        has = ent.enabled
        reason: NoAccess | None = None if has else "disabled"
        return _blocked(
            Access(customer=customer, feature=ent.feature, has_access=has, kind="boolean", reason=reason, as_of=as_of),
            block,
        )
    if ent.kind == "static":
        access = Access(
            customer=customer, feature=ent.feature, has_access=True, kind="static", value=ent.value, as_of=as_of
        )
        return _blocked(access, block)
    limit = ent.limit if ent.limit is not None else _ZERO
    balances, uncovered = grants
    granted = sum((g.remaining for g in balances), _ZERO)
    remaining = max(max(limit - usage, _ZERO) + granted - reserved, _ZERO)
    has = remaining > 0 or not ent.hard
    access = Access(
        customer=customer,
        feature=ent.feature,
        has_access=has,
        kind="metered",
        reason=None if has else "limit_reached",
        usage=usage,
        limit=limit,
        reserved=reserved,
        remaining=remaining,
        overage=None if ent.hard else uncovered,
        resets_at=resets_at,
        grants=balances,
        as_of=as_of,
    )
    return _blocked(access, block)


def _blocked(access: Access, block: NoAccess | None) -> Access:
    """Spend protection and a spent prepaid balance turn every feature off."""
    if block is None or not access.has_access:
        return access
    access.has_access, access.reason = False, block
    return access


def _with_lag(balance: Balance, lag_ms: int) -> Balance:
    return msgspec.structs.replace(balance, lag_ms=max(lag_ms, 0))
