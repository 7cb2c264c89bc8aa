"""Top-ups: prepaid credit bought at once, exactly once by its id, in the ledger, drawn down like any grant.

Through the invoicing desk (events, the export, invoices), with a crash between the invoice and the grant simulated,
and automatic top-ups keyed so one crossing tops up once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from conftest import OCT, Desk, event
from meter.billing.keys import CommitKey
from meter.billing.top_ups import TopUpBody, auto_top_up, complete_grants, top_up, top_ups
from meter.catalog.billing import AutoTopUp, BillingCatalog, Subscription
from meter.exceptions import Conflict, InvalidInput, NotFound

NOV = datetime(2026, 11, 1, tzinfo=UTC)
BOUGHT = NOV + timedelta(days=4)


def per_unit() -> dict[str, Any]:
    return {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.10"}


@pytest.fixture
def subscribed(desk: Desk) -> Desk:
    desk.plan([[per_unit()]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
    return desk


def accounts(desk: Desk, invoice: str) -> dict[str, tuple[Decimal, Decimal]]:
    found: dict[str, tuple[Decimal, Decimal]] = {}
    for entry in desk.invoicer.store.posted_for("acme", invoice):
        for line in entry.lines:
            debit, credit = found.get(line.account, (Decimal(0), Decimal(0)))
            found[line.account] = (debit + line.debit, credit + line.credit)
    return found


def test_a_top_up_is_a_grant_invoiced_at_once_and_deferred_in_the_ledger(subscribed: Desk) -> None:
    desk = subscribed
    result, new = top_up(desk.invoicer, "acme", "c1", TopUpBody(id="t1", amount=Decimal("50.00")), BOUGHT)
    assert new
    invoice = result.invoice
    assert invoice.id == "s1-topup-t1" and invoice.reason == "top_up" and invoice.status == "open"
    assert invoice.number is not None and invoice.total == Decimal("50.00")
    assert [(line.kind, line.amount, line.key) for line in invoice.lines] == [
        ("commit", Decimal("50.00"), CommitKey("s1", "commit", "t1").text())
    ]
    posted = accounts(desk, invoice.id)
    assert posted["accounts_receivable"] == (Decimal("50.00"), Decimal(0))
    assert posted["deferred_revenue"] == (Decimal(0), Decimal("50.00")), "prepaid: revenue when it is used"
    [commit] = desk.catalog.get_subscription("acme", "s1").commits
    assert (commit.id, commit.kind, commit.amount, commit.start) == ("t1", "prepaid", Decimal("50.00"), BOUGHT)

    # A retry (same body) answers the same invoice and writes nothing; another body under the id is refused.
    again, new = top_up(desk.invoicer, "acme", "c1", TopUpBody(id="t1", amount=Decimal("50.00")), BOUGHT)
    assert not new and again.invoice == invoice and len(desk.catalog.get_subscription("acme", "s1").commits) == 1
    assert [i.id for i in desk.invoicer.store.list("acme")] == ["s1-topup-t1"]
    with pytest.raises(Conflict) as e:
        top_up(desk.invoicer, "acme", "c1", TopUpBody(id="t1", amount=Decimal("60.00")), BOUGHT)
    assert e.value.code == "conflict"
    assert [t.id for t in top_ups(desk.invoicer.store, "acme", "c1")] == ["t1"]

    # November's usage draws on it (deferred revenue recognized), and the cycle invoice does not bill it again.
    desk.usage(event("e1", "c1", time=BOUGHT + timedelta(days=1), tokens=300, model="m"))  # 30.00
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    assert [(line.kind, line.amount, line.grant) for line in december.lines if line.kind != "usage"] == [
        ("credit", Decimal("-30.00"), "s1|t1")
    ]
    assert december.total == 0
    desk.invoicer.finalize("acme", december.id)
    assert accounts(desk, december.id)["deferred_revenue"] == (Decimal("30.00"), Decimal(0))
    [november] = desk.invoicer.run("acme", "2026-11").invoices  # the cycle the top-up started in: no commit line
    assert all(line.kind != "commit" for line in november.lines)


def test_a_crash_between_the_invoice_and_the_grant_is_completed_by_a_retry(
    subscribed: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = subscribed
    calls: list[str] = []
    real = BillingCatalog.add_commit

    def crash(self: BillingCatalog, tenant: str, sub_id: str, commit: Any, check_only: bool = False) -> Any:
        if not check_only:
            calls.append(commit.id)
            raise RuntimeError("crash")
        return real(self, tenant, sub_id, commit, check_only)

    monkeypatch.setattr(BillingCatalog, "add_commit", crash)
    with pytest.raises(RuntimeError):
        top_up(desk.invoicer, "acme", "c1", TopUpBody(id="t1", amount=Decimal(20)), BOUGHT)
    monkeypatch.setattr(BillingCatalog, "add_commit", real)
    assert calls == ["t1"] and desk.catalog.get_subscription("acme", "s1").commits == []
    # The invoice and its record were written together: the next top-up of the customer completes the grant.
    assert complete_grants(desk.invoicer, "acme", "c1") == 1
    assert [c.id for c in desk.catalog.get_subscription("acme", "s1").commits] == ["t1"]
    assert complete_grants(desk.invoicer, "acme", "c1") == 0
    result, new = top_up(desk.invoicer, "acme", "c1", TopUpBody(id="t1", amount=Decimal(20)), BOUGHT + timedelta(1))
    assert not new and result.top_up.start == BOUGHT, "a retry keeps what the first call recorded"
    assert len(desk.invoicer.store.list("acme")) == 1


def test_what_a_top_up_cannot_be(subscribed: Desk) -> None:
    desk = subscribed
    for body, message in [
        (TopUpBody(id="a", amount=Decimal(0)), "must be above 0"),
        (TopUpBody(id="a", amount=Decimal("1.001")), "whole number of EUR's minor unit"),
        (TopUpBody(id="a", amount=Decimal(1), expires_at=BOUGHT), "must be after now"),
        (TopUpBody(id="a", amount=Decimal(1), subscription="nope"), "no subscription 'nope'"),
        (TopUpBody(id="auto-7", amount=Decimal(1)), "are the automatic top-ups'"),
    ]:
        with pytest.raises((InvalidInput, NotFound)) as e:
            top_up(desk.invoicer, "acme", "c1", body, BOUGHT)
        assert message in str(e.value)
    with pytest.raises(InvalidInput, match="has 0 subscriptions running"):
        top_up(desk.invoicer, "acme", "c1", TopUpBody(id="a", amount=Decimal(1)), OCT - timedelta(days=1))
    assert desk.invoicer.store.list("acme") == []


def test_an_automatic_top_up_once_per_crossing(subscribed: Desk) -> None:
    desk = subscribed
    sub = desk.catalog.get_subscription("acme", "s1")
    assert auto_top_up(desk.invoicer, "acme", sub, Decimal(3), BOUGHT) is None, "no settings, no top-up"
    settings = AutoTopUp(below=Decimal(10), amount=Decimal(100))
    sub = desk.catalog.put_subscription("acme", msgspec.structs.replace(sub, auto_top_up=settings))
    assert auto_top_up(desk.invoicer, "acme", sub, Decimal(10), BOUGHT) is None, "not below"
    first = auto_top_up(desk.invoicer, "acme", sub, Decimal(3), BOUGHT)
    assert first is not None and first.top_up.id == "auto-1" and first.top_up.automatic
    # The caller has not seen the top-up yet (its balance is still 3): asking again buys nothing more.
    again = auto_top_up(desk.invoicer, "acme", sub, Decimal(3), BOUGHT + timedelta(seconds=1))
    assert again is not None and again.invoice == first.invoice
    seen = desk.catalog.get_subscription("acme", "s1")
    assert auto_top_up(desk.invoicer, "acme", seen, Decimal(103), BOUGHT) is None
    second = auto_top_up(desk.invoicer, "acme", seen, Decimal(2), BOUGHT + timedelta(days=1))
    assert second is not None and second.top_up.id == "auto-2"
    assert [i.id for i in desk.invoicer.store.list("acme")] == ["s1-topup-auto-1", "s1-topup-auto-2"]
