"""Reservations (meter.live.reservations): fit, exactly once across retries and restarts, expiry, and the HTTP API.

The live state is a fake that behaves as the tracker does: it counts the holds as of its last refresh (``refresh``),
which a test runs or not; so a reservation's fit must not rely on the standing counting the latest holds. A feature
``tokens`` with an allowance of 1000 units, and a credit balance of 100 EUR in one grant.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from in_process import started
from meter.billing.store import InvoiceStore
from meter.exceptions import Conflict, InvalidInput, NotFound
from meter.live.answers import Access, Balance, GrantBalance, Standing
from meter.live.reservations import ReservationBody, Reservations

T = datetime(2026, 11, 20, 12, tzinfo=UTC)
ZERO = Decimal(0)


class Live:
    """A customer's state as of its last ``refresh``: ``used`` of the allowance, the holds then counted."""

    def __init__(self, limit: str = "1000", balance: str | None = "100", pause: float = 0.0) -> None:
        self.limit, self.granted, self.pause = Decimal(limit), balance, pause
        self.used = ZERO
        self.reservations: Reservations | None = None
        self.counted: dict[str, Decimal] = {}
        self.touched: list[tuple[str, str]] = []

    def refresh(self, tenant: str = "acme", customer: str = "c1") -> None:
        assert self.reservations is not None
        self.counted = self.reservations.held(tenant, customer)

    def touch(self, tenant: str, customer: str) -> None:
        self.touched.append((tenant, customer))

    def standing(self, tenant: str, customer: str) -> Standing | None:
        time.sleep(self.pause)  # a slow answer: another reservation would get in here, were they not serialised
        reserved = self.counted.get("tokens", ZERO)
        tokens = Access(
            customer=customer,
            feature="tokens",
            has_access=True,
            kind="metered",
            usage=self.used,
            limit=self.limit,
            reserved=reserved,
            remaining=max(self.limit - self.used - reserved, ZERO),
            as_of=T,
        )
        chat = Access(customer=customer, feature="chat", has_access=True, kind="boolean", as_of=T)
        balance = self.balance(tenant, customer)
        return Standing(
            tenant=tenant,
            customer=customer,
            currency="EUR",
            as_of=T,
            period_start=None,
            period_end=None,
            usage={},
            spend=ZERO,
            spend_ceiling=None,
            balance=None if balance is None else balance.balance,
            granted=Decimal(100),
            entitlements={"tokens": tokens, "chat": chat},
        )

    def balance(self, tenant: str, customer: str) -> Balance | None:
        if self.granted is None:
            return None
        amount = Decimal(self.granted)
        held = self.counted.get("balance", ZERO)
        take = min(held, amount)
        grant = GrantBalance(
            subscription="s1",
            grant="g1",
            kind="credit",
            priority=0,
            start=T,
            end=T + timedelta(days=365),
            amount=amount,
            drawn_invoiced=ZERO,
            drawn_current=ZERO,
            reserved=take,
            remaining=amount - take,
        )
        return Balance(
            customer=customer,
            currency="EUR",
            as_of=T,
            lag_ms=0,
            period_start=None,
            period_end=None,
            granted=amount,
            reserved=held,
            balance=amount - take,
            spend=ZERO,
            spend_ceiling=None,
            grants=[grant],
            consumed=[],
        )


class Clock:
    def __init__(self) -> None:
        self.now = T

    def __call__(self) -> datetime:
        return self.now


def opened(path: Path, live: Live, clock: Clock) -> tuple[InvoiceStore, Reservations]:
    store = InvoiceStore(path)
    reservations = Reservations(store, live, clock)
    live.reservations = reservations
    return store, reservations


def body(id: str, amount: str, target: str = "tokens", seconds: int = 600) -> ReservationBody:
    return ReservationBody(id=id, target=target, amount=Decimal(amount), expires_in_seconds=seconds)


def test_a_reservation_holds_until_settled_and_what_does_not_fit_is_refused(tmp_path: Path) -> None:
    live, clock = Live(), Clock()
    store, rs = opened(tmp_path / "invoices", live, clock)
    try:
        first = rs.reserve("acme", "c1", body("job-1", "700"))
        assert (first.status, first.expires_at) == ("held", T + timedelta(seconds=600))
        assert rs.held("acme", "c1") == {"tokens": Decimal(700)}
        assert live.touched == [("acme", "c1")], "the live state is asked to refresh the customer"
        with pytest.raises(Conflict, match="300 left") as refused:
            rs.reserve("acme", "c1", body("job-2", "301"))
        assert refused.value.code == "insufficient"
        assert rs.reserve("acme", "c1", body("job-2", "300")).status == "held", "exactly what is left fits"
        assert rs.reserve("acme", "c1", body("job-1", "700")) == first, "a retry answers the same reservation"
        with pytest.raises(Conflict) as conflict:
            rs.reserve("acme", "c1", body("job-1", "1"))
        assert conflict.value.code == "conflict"
        live.refresh()  # the live state now counts those holds: the fit is the same
        with pytest.raises(Conflict, match="0 left"):
            rs.reserve("acme", "c1", body("job-3", "1"))
        assert rs.reserve("acme", "c1", body("money", "100", target="balance")).amount == Decimal(100)
        with pytest.raises(Conflict, match="the credit balance"):
            rs.reserve("acme", "c1", body("more-money", "0.01", target="balance"))
        with pytest.raises(InvalidInput, match="boolean"):
            rs.reserve("acme", "c1", body("x", "1", target="chat"))
        with pytest.raises(InvalidInput, match="no entitlement 'images'"):
            rs.reserve("acme", "c1", body("x", "1", target="images"))
        assert rs.held("acme", "c2") == {} and rs.held("other", "c1") == {}

        settled = rs.settle("acme", "job-1", Decimal(650))
        assert (settled.status, settled.actual) == ("settled", Decimal(650))
        assert rs.settle("acme", "job-1", Decimal(650)) == settled, "a retry"
        with pytest.raises(Conflict, match="settled with actual 650"):
            rs.settle("acme", "job-1", Decimal(1))
        with pytest.raises(Conflict, match="can no longer be released"):
            rs.release("acme", "job-1")
        assert rs.held("acme", "c1") == {"tokens": Decimal(300), "balance": Decimal(100)}
        released = rs.release("acme", "money")
        assert released.status == "released" and rs.release("acme", "money") == released
        with pytest.raises(Conflict, match="released"):
            rs.settle("acme", "money", Decimal(1))
        assert [r.id for r in rs.of_customer("acme", "c1")] == ["job-2"]
        with pytest.raises(NotFound):
            rs.get("other", "job-2")
    finally:
        store.close()


def test_holds_and_ids_survive_a_restart(tmp_path: Path) -> None:
    live, clock = Live(), Clock()
    store, rs = opened(tmp_path / "invoices", live, clock)
    made = rs.reserve("acme", "c1", body("job-1", "600"))
    rs.reserve("acme", "c1", body("job-2", "100"))
    rs.settle("acme", "job-2", Decimal(90))
    store.close()

    store, rs = opened(tmp_path / "invoices", live, clock)
    try:
        assert rs.held("acme", "c1") == {"tokens": Decimal(600)}, "the open hold, not the settled one"
        assert rs.reserve("acme", "c1", body("job-1", "600")) == made, "a retry after the restart: the same"
        assert rs.held("acme", "c1") == {"tokens": Decimal(600)}, "and not held twice"
        with pytest.raises(Conflict, match="400 left"):
            rs.reserve("acme", "c1", body("job-3", "401"))
        assert rs.get("acme", "job-2").actual == Decimal(90)
    finally:
        store.close()


def test_a_reservation_past_its_expiry_holds_nothing_and_the_sweep_ends_it(tmp_path: Path) -> None:
    live, clock = Live(), Clock()
    store, rs = opened(tmp_path / "invoices", live, clock)
    try:
        rs.reserve("acme", "c1", body("short", "900", seconds=60))
        rs.reserve("acme", "c1", body("long", "100", seconds=3600))
        clock.now = T + timedelta(seconds=60)
        assert rs.held("acme", "c1") == {"tokens": Decimal(100)}, "expired, though not swept yet"
        [swept] = rs.expire()
        assert (swept.id, swept.status, swept.ended_at) == ("short", "expired", T + timedelta(seconds=60))
        assert rs.expire() == []
        with pytest.raises(Conflict, match="expired"):
            rs.settle("acme", "short", Decimal(900))
        assert rs.release("acme", "short").status == "expired", "releasing what expired is done already"
        clock.now = T + timedelta(hours=2)
        settled_late = pytest.raises(Conflict, match="expired")
        with settled_late:
            rs.settle("acme", "long", Decimal(100))  # unswept, but its time ran out: it ends expired
        assert rs.get("acme", "long").status == "held", "a refused settle writes nothing"
        assert rs.release("acme", "long").status == "expired"
    finally:
        store.close()


def test_concurrent_reservations_cannot_both_fit_the_last_units(tmp_path: Path) -> None:
    live, clock = Live(pause=0.01), Clock()
    store, rs = opened(tmp_path / "invoices", live, clock)
    try:
        outcomes: list[str] = []

        def job(i: int) -> None:
            try:
                rs.reserve("acme", "c1", body(f"job-{i}", "300"))
                outcomes.append("held")
            except Conflict as e:
                outcomes.append(e.code)

        threads = [threading.Thread(target=job, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["held"] * 3 + ["insufficient"] * 3
        assert rs.held("acme", "c1") == {"tokens": Decimal(900)}
    finally:
        store.close()


def test_reservations_over_http(tmp_path: Path) -> None:
    with started(tmp_path / "data") as api:
        assert api.app.reservations is not None
        live = Live()
        live.reservations = api.app.reservations
        r = api.post("/v1/customers/c1/reservations", json={"id": "job-1", "target": "tokens", "amount": "800"})
        assert (r.status_code, r.json()["code"]) == (404, "not_found"), "no customer c1 yet"
        assert api.post("/v1/customers", json={"id": "c1", "name": "One", "currency": "EUR"}).status_code == 200
        r = api.post("/v1/customers/c1/reservations", json={"id": "job-1", "target": "tokens", "amount": "800"})
        assert (r.status_code, r.json()["code"]) == (409, "insufficient"), "no subscription: nothing to hold against"
        api.app.reservations.live = live  # from here on, a live state of known figures

        r = api.post("/v1/customers/c1/reservations", json={"id": "job-1", "target": "tokens", "amount": "800"})
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["status"] == "held" and made["amount"] == "800" and made["expires_in_seconds"] == 3600
        again = api.post("/v1/customers/c1/reservations", json={"id": "job-1", "target": "tokens", "amount": "800"})
        assert (again.status_code, again.json()) == (201, made)
        other = api.post("/v1/customers/c1/reservations", json={"id": "job-1", "target": "tokens", "amount": "5"})
        assert (other.status_code, other.json()["code"]) == (409, "conflict")
        big = api.post("/v1/customers/c1/reservations", json={"id": "job-2", "target": "tokens", "amount": "201"})
        assert (big.status_code, big.json()["code"]) == (409, "insufficient") and "200 left" in big.json()["message"]
        bad = api.post("/v1/customers/c1/reservations", json={"id": "job-2", "target": "tokens", "amount": "-1"})
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_reservation")
        bad = api.post(
            "/v1/customers/c1/reservations",
            json={"id": "job-2", "target": "tokens", "amount": "1", "expires_in_seconds": 0},
        )
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_reservation")

        assert api.get("/v1/customers/c1/reservations").json() == [made]
        assert api.get("/v1/reservations/job-1").json() == made
        assert api.get("/v1/reservations/nope").status_code == 404
        settled = api.post("/v1/reservations/job-1/settle", json={"actual": "640"})
        assert settled.status_code == 200 and settled.json()["actual"] == "640", settled.text
        assert api.post("/v1/reservations/job-1/settle", json={"actual": "640"}).json() == settled.json()
        assert api.post("/v1/reservations/job-1/settle", json={"actual": "1"}).json()["code"] == "invalid_state"
        assert api.delete("/v1/reservations/job-1").status_code == 409
        assert api.get("/v1/customers/c1/reservations").json() == []

        r = api.post("/v1/customers/c1/reservations", json={"id": "cash", "target": "balance", "amount": "99.50"})
        assert r.status_code == 201, r.text
        released = api.delete("/v1/reservations/cash")
        assert released.status_code == 200 and released.json()["status"] == "released"
