"""Anomaly alerts: a customer's usage rate of a meter running far above its own recent baseline.

A prompt-abuse or runaway-agent signal, so that the first sign of an attack is not next month's invoice. For each
alert of kind ``anomaly`` (:class:`~meter.live.alerts.Alert`: ``meter``, ``factor``, ``window_minutes``), every run
compares, per customer in the alert's scope, the rate of the last ``window_minutes`` (whole minutes, up to the
current minute) with the customer's mean rate over the 24 hours before that window, and emits ``usage.anomaly`` when

    window rate > factor x baseline rate

A customer with no usage in the baseline has no baseline: it is never anomalous (a new customer's first burst is not
an attack signal; a spend ceiling protects those). Rates are per minute, in the meter's units.

Exactly once: a crossing is recorded (:func:`~meter.live.alerts.record`) once per (alert, customer, period), the
period being the window-sized slot of time (since the epoch) in which the window ends: a run every minute sees an
attack within a minute, and a sustained one is told once per ``window_minutes``, not every minute.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog
from meter.engine import Engine
from meter.live.alerts import Alert, AlertBook, Crossing, record
from meter.money.events import Event

__all__ = ["AnomalyJob", "BASELINE", "anomalies", "window_of"]

#: How far back the baseline reaches, before the window.
BASELINE = timedelta(hours=24)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE = timedelta(minutes=1)
_ZERO = Decimal(0)


def window_of(alert: Alert, now: datetime) -> tuple[datetime, datetime, datetime]:
    """(start, end, slot): the window of whole minutes ending at ``now``'s minute, and the slot it is once per."""
    assert alert.window_minutes is not None  # checked when stored
    end = _EPOCH + (now - _EPOCH) // _MINUTE * _MINUTE
    size = timedelta(minutes=alert.window_minutes)
    return end - size, end, _EPOCH + (end - _EPOCH) // size * size


def anomalies(
    alert: Alert,
    recent: dict[str, Decimal],
    baseline: dict[str, Decimal],
    now: datetime,
    customers: Collection[str] | None = None,
) -> list[Crossing]:
    """The customers whose ``recent`` usage (the window's, by customer) runs ``factor`` times above ``baseline``.

    Pure: ``baseline`` is each customer's usage over the :data:`BASELINE` before the window; ``customers`` says
    the customers in the alert's scope when it is a plan's (None: every customer).
    """
    assert alert.factor is not None and alert.window_minutes is not None  # checked when stored
    start, end, slot = window_of(alert, now)
    minutes = Decimal(BASELINE // _MINUTE)
    found = []
    for customer, used in sorted(recent.items()):
        usual = baseline.get(customer, _ZERO) / minutes
        rate = used / alert.window_minutes
        if usual > 0 and rate > alert.factor * usual and (customers is None or customer in customers):
            found.append(
                Crossing(
                    type="usage.anomaly",
                    alert=alert.id,
                    customer=customer,
                    meter=alert.meter,
                    threshold=alert.factor,
                    value=rate,
                    baseline=usual,
                    period=slot,
                    period_start=start,
                    period_end=end,
                    as_of=now,
                )
            )
    return found


class AnomalyJob:
    """Evaluates every tenant's anomaly alerts: :meth:`run_once` is what the server schedules every minute."""

    def __init__(
        self,
        engine: Engine,
        catalog: BillingCatalog,
        store: InvoiceStore,
        tenants: Callable[[], Iterable[str]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine, self.catalog, self.store, self.tenants, self.clock = engine, catalog, store, tenants, clock
        self.book = AlertBook(catalog, engine)

    def run_once(self, now: datetime | None = None) -> list[Event]:
        now = now or self.clock()
        emitted: list[Event] = []
        for tenant in self.tenants():
            alerts = [a for a in self.book.of_tenant(tenant) if a.kind == "anomaly"]
            if alerts:
                emitted += self.run_tenant(tenant, alerts, now)
        return emitted

    def run_tenant(self, tenant: str, alerts: list[Alert], now: datetime) -> list[Event]:
        on_plan: dict[str, set[str]] = {}
        if any(a.plan is not None for a in alerts):
            for sub in self.catalog.list_subscriptions(tenant):
                on_plan.setdefault(sub.plan, set()).add(sub.customer)
        found: list[Crossing] = []
        for alert in alerts:
            assert alert.meter is not None
            start, end, _ = window_of(alert, now)
            recent = self._by_customer(tenant, alert.meter, start, end, alert.customer)
            if not recent:
                continue
            baseline = self._by_customer(tenant, alert.meter, start - BASELINE, start, alert.customer)
            scope = on_plan.get(alert.plan, set()) if alert.plan is not None else None
            found += anomalies(alert, recent, baseline, now, scope)
        return record(self.store, tenant, found, now)

    def _by_customer(
        self, tenant: str, meter: str, start: datetime, end: datetime, customer: str | None
    ) -> dict[str, Decimal]:
        subjects = [customer] if customer is not None else []
        usage = self.engine.usage(tenant, meter, start=start, end=end, subjects=subjects, group_by=["subject"])
        return {row["subject"]: row["value"] for row in usage.rows() if row["value"]}
