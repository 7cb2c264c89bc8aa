"""Alerts: thresholds on a customer's live standing, each crossing told once as an outgoing webhook event.

An :class:`Alert` watches, for one customer, every customer of a plan, or every customer of the tenant:

- ``usage``: the current cycle's usage of a ``meter`` (``Standing.usage[meter]``) reaching each threshold
  (``usage.threshold_crossed``);
- ``spend``: the cycle's usage charges (``Standing.spend``) reaching each threshold (``spend.threshold_crossed``);
- ``balance``: the credit balance (``Standing.balance``) falling to or below each threshold (``balance.low``), and
  reaching 0 (``balance.depleted``, with or without thresholds);
- ``anomaly``: a meter's usage rate over the last ``window_minutes`` running ``factor`` times above the customer's
  own baseline (:mod:`meter.live.anomaly`, ``usage.anomaly``).

Besides them, ``entitlement.exhausted`` is emitted for every customer whose hard metered allowance goes to 0
remaining, with no definition: it is the moment a gateway's checks start refusing, which every integration needs to
hear about and none should have to configure; an endpoint that does not want it leaves the type out of its list.

:func:`crossings` is pure: from a customer's standing before and after a refresh it says what crossed. A threshold
counts as crossed when the after value is past it and the before value (in the same period) was not; with no before
(a customer seen for the first time, as after a restart) everything already past counts, and :func:`record` makes
that harmless: it writes each crossing at most once per (alert, customer, event type, threshold, period), its marker
``alert_mark/<tenant>/<alert>/<customer>/<type>/<threshold>/<period>`` and its event in one synced write of the
invoice store (:meth:`~meter.billing.store.InvoiceStore.transaction`), so a retry, or a crash between computing and
writing, never emits twice nor loses one. The period is the billing cycle's start (an entitlement's: the time its
allowance resets; an anomaly's: its window's start).

Definitions are stored in the billing catalog under ``alert/<tenant>/<id>`` (:class:`AlertBook`).
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal, TypeVar

import msgspec

from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog, Meters
from meter.catalog.types import Checked, Id, Quantity, Slug, Text, invalid
from meter.live.answers import Access, Standing
from meter.money.events import Event, EventType

__all__ = [
    "ENTITLEMENTS",
    "Alert",
    "AlertBook",
    "AlertKind",
    "Crossing",
    "check_alert",
    "crossings",
    "evaluate",
    "exhausted",
    "marker",
    "on_refresh",
    "record",
]

AlertKind = Literal["usage", "spend", "balance", "anomaly"]
_V = TypeVar("_V")
#: The alert id a crossing of no definition (``entitlement.exhausted``) is recorded under.
ENTITLEMENTS = "entitlements"
_ZERO = Decimal(0)
_MAX_THRESHOLDS = 100


class Alert(Checked, forbid_unknown_fields=True):
    """An alert definition; scope: ``customer``, or every customer of ``plan``, or (neither) every customer."""

    id: Id
    kind: AlertKind
    #: usage and anomaly: the meter watched.
    meter: Slug | None = None
    #: usage: quantities of the meter; spend and balance: amounts in the customer's currency.
    thresholds: list[Quantity] = []
    customer: Id | None = None
    plan: Id | None = None
    #: anomaly: how many times the baseline rate the window's rate must exceed, and the window's length.
    factor: Quantity | None = None
    window_minutes: Annotated[int, msgspec.Meta(ge=1, le=1440)] | None = None
    description: Text = ""

    def applies_to(self, customer: str, plans: Collection[str]) -> bool:
        if self.customer is not None:
            return self.customer == customer
        return self.plan is None or self.plan in plans


def check_alert(alert: Alert) -> Alert:
    """``alert`` if its fields fit its kind; an ``invalid_catalog`` error saying what to fix otherwise."""
    kind = alert.kind
    if alert.customer is not None and alert.plan is not None:
        raise invalid("an alert watches one customer, or every customer of a plan, not both: drop customer or plan")
    if kind in ("usage", "anomaly") and alert.meter is None:
        raise invalid(f"a {kind} alert needs `meter`: the slug of the meter it watches")
    if kind in ("spend", "balance") and alert.meter is not None:
        raise invalid(f"a {kind} alert watches money, not a meter: drop `meter`")
    if kind != "anomaly" and (alert.factor is not None or alert.window_minutes is not None):
        raise invalid("`factor` and `window_minutes` belong to anomaly alerts only")
    if kind == "anomaly":
        if alert.thresholds:
            raise invalid("an anomaly alert has no thresholds: it compares a rate to a baseline (`factor`)")
        if alert.factor is None or alert.factor <= 1 or alert.window_minutes is None:
            raise invalid(
                "an anomaly alert needs `factor` (above 1: how many times the customer's usual rate) and "
                "`window_minutes` (1-1440: the recent window compared to it)"
            )
    elif kind in ("usage", "spend") and not alert.thresholds:
        raise invalid(f"a {kind} alert needs at least one threshold in `thresholds`")
    if len(alert.thresholds) > _MAX_THRESHOLDS:
        raise invalid(f"an alert has at most {_MAX_THRESHOLDS} thresholds; got {len(alert.thresholds)}")
    if len(set(alert.thresholds)) != len(alert.thresholds):
        raise invalid("thresholds must be distinct")
    if any(t == 0 for t in alert.thresholds):
        reason = "a balance at 0 is `balance.depleted`, emitted anyway" if kind == "balance" else "0 is no crossing"
        raise invalid(f"thresholds must be above 0 ({reason})")
    return msgspec.structs.replace(alert, thresholds=sorted(alert.thresholds))


class AlertBook:
    """The alert definitions, in the billing catalog (``alert/<tenant>/<id>``), and the tenants' lists cached.

    The catalog's own storage helpers are used, so alert keys follow its discipline (tenant checked, values trusted
    once written). The cache is dropped whenever the catalog's sequence number moved (any write, in any way), so the
    tracker, which asks on every refresh, reads the store only after a change.
    """

    def __init__(self, catalog: BillingCatalog, meters: Meters | None = None) -> None:
        self.catalog, self.meters = catalog, meters
        self._lock = threading.Lock()
        self._seen = -1
        self._cache: dict[str, list[Alert]] = {}
        self._plans: dict[str, dict[str, frozenset[str]]] = {}

    def create(self, tenant: str, alert: Alert) -> Alert:
        """Stores a new alert (409 ``already_exists`` for a taken id), its references checked."""
        alert = check_alert(alert)
        with self.catalog._lock:  # the catalog's write lock: the check and the write are one step
            if alert.customer is not None:
                self.catalog.get_customer(tenant, alert.customer)
            if alert.plan is not None:
                self.catalog.get_plan(tenant, alert.plan)
            if alert.meter is not None and self.meters is not None:
                slugs = sorted(m.slug for m in self.meters.list_meters(tenant))
                if alert.meter not in slugs:
                    raise invalid(f"no meter {alert.meter!r}; the tenant's meters: {', '.join(slugs) or 'none yet'}")
            self.catalog._put("alert", tenant, alert.id, alert, new=True)
        return alert

    def get(self, tenant: str, alert_id: str) -> Alert:
        return self.catalog._get("alert", tenant, alert_id, Alert)

    def list(self, tenant: str) -> list[Alert]:
        return self.catalog._list("alert", tenant, Alert)

    def delete(self, tenant: str, alert_id: str) -> None:
        """Deletes the alert; what it recorded stays (a new alert of the same id does not emit those again)."""
        with self.catalog._lock:
            self.catalog._delete("alert", tenant, alert_id)

    def of_tenant(self, tenant: str) -> builtins.list[Alert]:
        """The tenant's alerts, from memory unless the catalog changed since they were read."""
        return self._cached(self._cache, tenant, lambda: self.list(tenant))

    def plans_of(self, tenant: str, customer: str) -> frozenset[str]:
        """The plans of the customer's subscriptions (for alerts scoped to a plan), from memory likewise."""
        by_customer = self._cached(self._plans, tenant, lambda: self._subscribed(tenant))
        return by_customer.get(customer, frozenset())

    def _subscribed(self, tenant: str) -> dict[str, frozenset[str]]:
        plans: dict[str, set[str]] = {}
        for sub in self.catalog.list_subscriptions(tenant):
            plans.setdefault(sub.customer, set()).add(sub.plan)
        return {customer: frozenset(p) for customer, p in plans.items()}

    def _cached(self, cache: dict[str, _V], tenant: str, read: Callable[[], _V]) -> _V:
        sequence = self.catalog.sequence()
        with self._lock:
            if sequence != self._seen:
                self._cache.clear()
                self._plans.clear()
                self._seen = sequence
            found = cache.get(tenant)
        if found is None:
            found = read()
            with self._lock:
                if self._seen == sequence:
                    cache[tenant] = found
        return found


class Crossing(msgspec.Struct, frozen=True, kw_only=True):
    """A threshold crossed by one customer: the ``data`` of its event."""

    type: EventType
    #: The alert's id (``entitlements`` for ``entitlement.exhausted``, which needs none).
    alert: str
    customer: str
    #: usage and anomaly: the meter; entitlement.exhausted: the feature.
    meter: str | None = None
    feature: str | None = None
    #: What was crossed (None for balance.depleted and entitlement.exhausted, whose line is 0), and the value now.
    threshold: Decimal | None = None
    value: Decimal
    currency: str | None = None
    #: The period it is once per (see the module doc), and the cycle or window it belongs to.
    period: datetime | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    as_of: datetime
    #: Anomaly: the baseline rate per minute it was compared to.
    baseline: Decimal | None = None


def _text(value: Decimal | datetime | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat()
    return format(value.normalize(), "f")  # 100, 100.0 and 1E+2 are one threshold


def marker(tenant: str, crossing: Crossing) -> str:
    """The key that says ``crossing`` was recorded (its value is the event's id)."""
    c = crossing
    return f"alert_mark/{tenant}/{c.alert}/{c.customer}/{c.type}/{_text(c.threshold)}/{_text(c.period)}"


def exhausted(access: Access | None) -> bool:
    """A hard metered allowance with nothing left (a soft one reports ``overage`` instead and keeps access)."""
    return (
        access is not None
        and access.kind == "metered"
        and access.remaining is not None
        and access.remaining <= 0
        and access.overage is None
    )


def crossings(
    alerts: Iterable[Alert], before: Standing | None, after: Standing, plans: Collection[str] = ()
) -> list[Crossing]:
    """What crossed from ``before`` to ``after`` (one customer's standings): pure, nothing written.

    ``plans``: the plans of the customer's subscriptions (for alerts scoped to a plan). A ``before`` of another period
    counts as none: each period crosses afresh. Anomaly alerts are not evaluated here (:mod:`meter.live.anomaly`).
    """
    same = before is not None and before.period_start == after.period_start
    prior = before if same else None
    found: list[Crossing] = []

    def crossed(type_: EventType, alert: Alert, value: Decimal, threshold: Decimal | None = None) -> None:
        found.append(
            Crossing(
                type=type_,
                alert=alert.id,
                customer=after.customer,
                meter=alert.meter,
                threshold=threshold,
                value=value,
                currency=after.currency,
                period=after.period_start,
                period_start=after.period_start,
                period_end=after.period_end,
                as_of=after.as_of,
            )
        )

    for alert in alerts:
        if alert.kind == "anomaly" or not alert.applies_to(after.customer, plans):
            continue
        if alert.kind == "usage":
            assert alert.meter is not None  # checked when stored
            now = after.usage.get(alert.meter, _ZERO)
            was = prior.usage.get(alert.meter, _ZERO) if prior is not None else None
            for t in _upward(alert.thresholds, was, now):
                crossed("usage.threshold_crossed", alert, now, t)
        elif alert.kind == "spend":
            for t in _upward(alert.thresholds, prior.spend if prior is not None else None, after.spend):
                crossed("spend.threshold_crossed", alert, after.spend, t)
        elif after.balance is not None:  # balance: only customers with credit grants have one
            was = prior.balance if prior is not None else None
            for t in sorted(alert.thresholds, reverse=True):
                if after.balance <= t and (was is None or was > t):
                    crossed("balance.low", alert, after.balance, t)
            if after.balance <= 0 and (was is None or was > 0):
                crossed("balance.depleted", alert, after.balance)
    for feature, access in sorted(after.entitlements.items()):
        if not exhausted(access):
            continue
        earlier = before.entitlements.get(feature) if before is not None else None
        if earlier is not None and earlier.resets_at == access.resets_at and exhausted(earlier):
            continue
        found.append(
            Crossing(
                type="entitlement.exhausted",
                alert=ENTITLEMENTS,
                customer=after.customer,
                feature=feature,
                value=access.remaining or _ZERO,
                period=access.resets_at or after.period_start,
                period_start=after.period_start,
                period_end=access.resets_at or after.period_end,
                as_of=access.as_of,
            )
        )
    return found


def _upward(thresholds: Sequence[Decimal], was: Decimal | None, now: Decimal) -> list[Decimal]:
    """The thresholds ``now`` reached that ``was`` had not (ascending)."""
    return [t for t in thresholds if now >= t and (was is None or was < t)]


def record(store: InvoiceStore, tenant: str, found: Sequence[Crossing], now: datetime | None = None) -> list[Event]:
    """Writes each crossing not recorded before: its marker and its event, in one synced write of the tenant.

    Returns the events written (none for a crossing already recorded: a retry, a restart's re-evaluation).
    """
    fresh = [c for c in found if store.raw(marker(tenant, c)) is None]  # the common case: no write, no lock
    if not fresh:
        return []
    emitted: list[Event] = []
    with store.transaction(tenant, now) as change:
        for crossing in fresh:
            key = marker(tenant, crossing)
            if change.get(key) is not None:  # recorded meanwhile, or twice in this list
                continue
            event = change.emit(crossing.type, msgspec.to_builtins(crossing))
            change.put(key, event.id.encode())
            emitted.append(event)
    return emitted


def on_refresh(
    book: AlertBook, store: InvoiceStore, wake: Callable[[], None] | None = None
) -> Callable[[Standing | None, Standing], None]:
    """The tracker's ``on_refresh`` hook: each refresh of a customer evaluated and recorded (:func:`evaluate`).

    ``wake``: told when events were written (the webhook worker's ``wake``), so that they leave at once.
    """

    def hook(before: Standing | None, after: Standing) -> None:
        alerts = book.of_tenant(after.tenant)
        plans = book.plans_of(after.tenant, after.customer) if any(a.plan is not None for a in alerts) else ()
        if record(store, after.tenant, crossings(alerts, before, after, plans)) and wake is not None:
            wake()

    return hook


def evaluate(
    book: AlertBook,
    store: InvoiceStore,
    tenant: str,
    before: Standing | None,
    after: Standing,
    plans: Collection[str] = (),
) -> list[Event]:
    """The tracker's one call after refreshing a customer: :func:`crossings` of the tenant's alerts, recorded."""
    return record(store, tenant, crossings(book.of_tenant(tenant), before, after, plans))
