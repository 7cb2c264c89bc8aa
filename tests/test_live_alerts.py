"""Alerts (meter.live.alerts): what crosses between two standings, each crossing recorded once, and the HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from in_process import started
from meter.billing.store import Change, InvoiceStore
from meter.catalog.billing import BillingCatalog, Customer, Subscription
from meter.catalog.prices import Price
from meter.exceptions import InvalidInput
from meter.live.alerts import Alert, AlertBook, check_alert, crossings, evaluate, on_refresh, record
from meter.live.answers import Access, Standing

CYCLE = datetime(2026, 11, 1, tzinfo=UTC)
NEXT = datetime(2026, 12, 1, tzinfo=UTC)
AS_OF = datetime(2026, 11, 20, 12, tzinfo=UTC)


def standing(
    usage: str = "0",
    spend: str = "0",
    balance: str | None = None,
    start: datetime = CYCLE,
    customer: str = "c1",
    entitlements: dict[str, Access] | None = None,
) -> Standing:
    return Standing(
        tenant="acme",
        customer=customer,
        currency="EUR",
        as_of=AS_OF,
        period_start=start,
        period_end=NEXT if start == CYCLE else start + timedelta(days=31),
        usage={"tokens": Decimal(usage)},
        spend=Decimal(spend),
        spend_ceiling=None,
        balance=None if balance is None else Decimal(balance),
        granted=Decimal(100),
        entitlements=entitlements or {},
    )


def metered(remaining: str, overage: str | None = None, resets_at: datetime = NEXT) -> Access:
    left = Decimal(remaining)
    return Access(
        customer="c1",
        feature="tokens",
        has_access=left > 0 or overage is not None,
        kind="metered",
        reason=None if left > 0 or overage is not None else "limit_reached",
        usage=Decimal(1000) - left,
        limit=Decimal(1000),
        reserved=Decimal(0),
        remaining=left,
        overage=None if overage is None else Decimal(overage),
        resets_at=resets_at,
        as_of=AS_OF,
    )


def alert(**fields: Any) -> Alert:
    return check_alert(Alert(**fields))


USAGE = alert(id="tokens", kind="usage", meter="tokens", thresholds=[Decimal(1000), Decimal(100)])
SPEND = alert(id="spend", kind="spend", thresholds=[Decimal(50)])
BALANCE = alert(id="low", kind="balance", thresholds=[Decimal(20), Decimal(5)])


def crossed(found: list[Any]) -> list[tuple[str, str, Decimal | None]]:
    return [(c.type, c.alert, c.threshold) for c in found]


# crossings: pure


def test_a_threshold_crossed_between_two_standings_is_one_crossing() -> None:
    assert crossed(crossings([USAGE], standing("50"), standing("150"))) == [
        ("usage.threshold_crossed", "tokens", Decimal(100))
    ]
    assert crossings([USAGE], standing("150"), standing("900")) == [], "already past 100, not yet 1000"
    assert crossed(crossings([USAGE], standing("150"), standing("5000"))) == [
        ("usage.threshold_crossed", "tokens", Decimal(1000))
    ]
    assert crossed(crossings([USAGE], standing("0"), standing("1000"))) == [
        ("usage.threshold_crossed", "tokens", Decimal(100)),
        ("usage.threshold_crossed", "tokens", Decimal(1000)),
    ], "both crossed in one step, and reaching a threshold exactly crosses it"


def test_a_customer_seen_first_already_past_a_threshold_crosses_it() -> None:
    [c] = crossings([USAGE], None, standing("150"))
    assert (c.threshold, c.value, c.period, c.customer) == (Decimal(100), Decimal(150), CYCLE, "c1")


def test_a_new_cycle_crosses_afresh() -> None:
    december = standing("150", start=NEXT)
    assert crossed(crossings([USAGE], standing("2000"), december)) == [
        ("usage.threshold_crossed", "tokens", Decimal(100))
    ]
    assert crossings([USAGE], standing("2000"), december)[0].period == NEXT


def test_spend_thresholds() -> None:
    assert crossed(crossings([SPEND], standing(spend="49.99"), standing(spend="50.00"))) == [
        ("spend.threshold_crossed", "spend", Decimal(50))
    ]
    assert crossings([SPEND], standing(spend="50"), standing(spend="80")) == []


def test_balance_low_at_or_below_each_threshold_then_depleted_at_zero() -> None:
    assert crossings([BALANCE], standing(balance="30"), standing(balance="20.01")) == []
    assert crossed(crossings([BALANCE], standing(balance="30"), standing(balance="20"))) == [
        ("balance.low", "low", Decimal(20))
    ]
    assert crossed(crossings([BALANCE], standing(balance="20"), standing(balance="0"))) == [
        ("balance.low", "low", Decimal(5)),
        ("balance.depleted", "low", None),
    ]
    assert crossings([BALANCE], standing(balance="0"), standing(balance="0")) == []
    assert crossings([BALANCE], None, standing(balance=None)) == [], "no grants, no balance to watch"
    only_depleted = alert(id="zero", kind="balance")
    assert crossed(crossings([only_depleted], standing(balance="3"), standing(balance="0"))) == [
        ("balance.depleted", "zero", None)
    ]


def test_scope_one_customer_a_plan_or_all() -> None:
    mine = alert(id="mine", kind="spend", thresholds=[Decimal(1)], customer="c1")
    theirs = alert(id="theirs", kind="spend", thresholds=[Decimal(1)], customer="c2")
    pro = alert(id="pro", kind="spend", thresholds=[Decimal(1)], plan="pro")
    everyone = alert(id="all", kind="spend", thresholds=[Decimal(1)])
    found = crossings([mine, theirs, pro, everyone], None, standing(spend="2"), plans={"pro"})
    assert [c.alert for c in found] == ["mine", "pro", "all"]
    found = crossings([mine, theirs, pro, everyone], None, standing(spend="2"), plans={"basic"})
    assert [c.alert for c in found] == ["mine", "all"]


def test_a_hard_allowance_running_out_is_exhausted_once_per_period_with_no_alert() -> None:
    before = standing(entitlements={"tokens": metered("10")})
    after = standing(entitlements={"tokens": metered("0")})
    [c] = crossings([], before, after)
    assert (c.type, c.alert, c.feature, c.period) == ("entitlement.exhausted", "entitlements", "tokens", NEXT)
    assert crossings([], after, after) == []
    assert crossings([], before, standing(entitlements={"tokens": metered("0", overage="0")})) == [], "soft"
    renewed = metered("0", resets_at=NEXT + timedelta(days=31))
    assert len(crossings([], after, standing(entitlements={"tokens": renewed}))) == 1, "a new allowance period"


def test_definitions_are_checked() -> None:
    with pytest.raises(InvalidInput, match="needs `meter`"):
        alert(id="a", kind="usage", thresholds=[Decimal(1)])
    with pytest.raises(InvalidInput, match="at least one threshold"):
        alert(id="a", kind="spend")
    with pytest.raises(InvalidInput, match="not both"):
        alert(id="a", kind="spend", thresholds=[Decimal(1)], customer="c1", plan="pro")
    with pytest.raises(InvalidInput, match="distinct"):
        alert(id="a", kind="spend", thresholds=[Decimal(1), Decimal("1.0")])
    with pytest.raises(InvalidInput, match="above 0"):
        alert(id="a", kind="balance", thresholds=[Decimal(0)])
    with pytest.raises(InvalidInput, match="factor"):
        alert(id="a", kind="anomaly", meter="tokens", factor=Decimal(1), window_minutes=5)
    assert alert(id="a", kind="spend", thresholds=[Decimal(9), Decimal(2)]).thresholds == [Decimal(2), Decimal(9)]


# record: exactly once


def test_recording_twice_emits_once(tmp_path: Path) -> None:
    store = InvoiceStore(tmp_path / "invoices")
    try:
        found = crossings([USAGE, BALANCE], None, standing("150", balance="0"))
        assert len(found) == 4
        first = record(store, "acme", found)
        assert [e.type for e in first] == ["usage.threshold_crossed", "balance.low", "balance.low", "balance.depleted"]
        assert record(store, "acme", found) == [], "a retry"
        assert record(store, "acme", [*found, *found]) == []
        assert len(list(store.outbox("acme"))) == 4
        assert record(store, "other", found[:1]) != [], "another tenant's crossing is its own"
    finally:
        store.close()
    store = InvoiceStore(tmp_path / "invoices")  # a restart: the markers are durable, with their events
    try:
        assert record(store, "acme", crossings([USAGE, BALANCE], None, standing("150", balance="0"))) == []
        [event] = [e for e in store.outbox("acme") if e.type == "usage.threshold_crossed"]
        assert event.data["threshold"] == "100" and event.data["value"] == "150" and event.data["customer"] == "c1"
    finally:
        store.close()


def test_the_same_crossing_twice_in_one_list_is_recorded_once(tmp_path: Path) -> None:
    store = InvoiceStore(tmp_path / "invoices")
    try:
        [c] = crossings([USAGE], standing("50"), standing("150"))
        same = msgspec.structs.replace(c, threshold=Decimal("100.00"), value=Decimal(151))
        assert len(record(store, "acme", [c, same])) == 1, "100 and 100.00 are one threshold"
    finally:
        store.close()


def test_the_alert_book_caches_until_the_catalog_changes(tmp_path: Path) -> None:
    catalog = BillingCatalog(tmp_path / "billing")
    try:
        book = AlertBook(catalog)
        assert book.of_tenant("acme") == []
        book.create("acme", USAGE)
        assert book.of_tenant("acme") == [USAGE]
        book.delete("acme", "tokens")
        assert book.of_tenant("acme") == []
    finally:
        catalog.close()


def test_the_trackers_hook_scopes_alerts_to_the_customers_plans_and_wakes_the_webhooks(tmp_path: Path) -> None:
    catalog = BillingCatalog(tmp_path / "billing")
    store = InvoiceStore(tmp_path / "invoices")
    try:
        book = AlertBook(catalog)
        for c in ("c1", "c2"):
            catalog.put_customer("acme", Customer(id=c, name=c, currency="EUR"))
        catalog.create_plan("acme", "pro", "Pro")
        flat = msgspec.convert({"id": "base", "currency": "EUR", "model": "flat", "amount": "20"}, Price)
        catalog.add_plan_version("acme", "pro", CYCLE, [flat])
        sub = {"id": "s1", "customer": "c1", "plan": "pro", "version": 1, "start": "2026-11-01T00:00:00Z"}
        catalog.put_subscription("acme", msgspec.convert(sub, Subscription))
        book.create("acme", alert(id="pro-spend", kind="spend", thresholds=[Decimal(10)], plan="pro"))
        assert book.plans_of("acme", "c1") == {"pro"} and book.plans_of("acme", "c2") == frozenset()
        woken: list[bool] = []
        hook = on_refresh(book, store, lambda: woken.append(True))
        hook(None, standing(spend="20", customer="c2"))
        assert woken == [] and list(store.outbox("acme")) == [], "c2 is on no plan"
        hook(None, standing(spend="20"))
        assert woken == [True] and [e.data["alert"] for e in store.outbox("acme")] == ["pro-spend"]
        hook(standing(spend="20"), standing(spend="30"))
        assert woken == [True], "nothing new, no wake"
    finally:
        store.close()
        catalog.close()


# Over HTTP


def test_an_alert_created_over_http_emits_its_webhook_event_once(tmp_path: Path) -> None:
    with started(tmp_path / "data") as api:
        meter = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
        assert api.post("/v1/meters", json=meter).status_code in (200, 201)
        assert api.post("/v1/customers", json={"id": "c1", "name": "One", "currency": "EUR"}).status_code == 200
        body = {"id": "tokens-100", "kind": "usage", "meter": "tokens", "thresholds": ["100"], "customer": "c1"}
        r = api.post("/v1/alerts", json=body)
        assert r.status_code == 201, r.text
        assert api.post("/v1/alerts", json=body).json()["code"] == "already_exists"
        assert api.get("/v1/alerts").json() == [r.json()]
        assert api.get("/v1/alerts/tokens-100").json()["thresholds"] == ["100"]

        bad = api.post("/v1/alerts", json={**body, "id": "x", "meter": "nope"})
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_catalog") and "tokens" in bad.json()["message"]
        bad = api.post("/v1/alerts", json={**body, "id": "x", "customer": "ghost"})
        assert bad.status_code == 404, bad.text
        bad = api.post("/v1/alerts", json={"id": "x", "kind": "usage", "thresholds": ["1"]})
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_catalog")

        # What the tracker does after each refresh of c1.
        app = api.app
        book = AlertBook(app.billing, app.engine)  # type: ignore[arg-type]
        store: InvoiceStore = app.invoices  # type: ignore[assignment]
        assert evaluate(book, store, "acme", None, standing("99")) == []
        assert len(evaluate(book, store, "acme", standing("99"), standing("120"))) == 1
        assert evaluate(book, store, "acme", None, standing("130")) == [], "a restart sees it again: recorded once"

        events = api.get("/v1/webhook-events", params={"type": "usage.threshold_crossed"}).json()["data"]
        assert len(events) == 1
        assert events[0]["data"] | {"as_of": None} == {
            "type": "usage.threshold_crossed",
            "alert": "tokens-100",
            "customer": "c1",
            "meter": "tokens",
            "feature": None,
            "threshold": "100",
            "value": "120",
            "currency": "EUR",
            "period": "2026-11-01T00:00:00Z",
            "period_start": "2026-11-01T00:00:00Z",
            "period_end": "2026-12-01T00:00:00Z",
            "as_of": None,
            "baseline": None,
        }
        assert api.delete("/v1/alerts/tokens-100").json() == {"deleted": "tokens-100"}
        assert api.get("/v1/alerts/tokens-100").status_code == 404


def test_a_write_that_fails_midway_leaves_neither_marker_nor_event_and_the_retry_emits_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InvoiceStore(tmp_path / "invoices")
    try:
        found = crossings([USAGE], None, standing("5000"))
        assert len(found) == 2
        real, calls = Change.emit, []

        def crash_on_second(self: Change, type_: Any, data: Any) -> Any:
            calls.append(type_)
            if len(calls) == 2:
                raise OSError("the process dies here")
            return real(self, type_, data)

        monkeypatch.setattr(Change, "emit", crash_on_second)
        with pytest.raises(OSError):
            record(store, "acme", found)
        monkeypatch.undo()
        assert list(store.outbox("acme")) == [], "the first crossing's event was not written without the second"
        assert len(record(store, "acme", found)) == 2
        assert record(store, "acme", found) == []
        assert [e.data["threshold"] for e in store.outbox("acme")] == ["100", "1000"]
    finally:
        store.close()
