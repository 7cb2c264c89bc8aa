"""The money foundation of the invoice store: every state change writes its journal entry and event with it.

Worked by hand: s1 pays 30.00 EUR in advance per cycle (no usage here), so November's invoice totals 30.00.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from conftest import OCT, Desk
from meter.billing.invoices import Invoice
from meter.billing.store import AlreadyPosted, InvoiceStore
from meter.catalog.billing import Subscription
from meter.exceptions import Conflict, StorageError
from meter.money import ledger
from test_invoicing import base_fee


def november(desk: Desk) -> Invoice:
    desk.plan([[base_fee("30")]])
    desk.catalog.put_subscription("acme", Subscription(id="s1", customer="c1", plan="pro", version=1, start=OCT))
    [draft] = desk.invoicer.run("acme", "2026-11").invoices
    return draft


def trial_balance(store: InvoiceStore) -> dict[tuple[str, str | None], Decimal]:
    rows = ledger.balances(store.journal("acme"))
    assert sum(r.debit for r in rows) == sum(r.credit for r in rows), "the trial balance sums to zero"
    return {(r.account, r.customer): r.balance for r in rows if r.balance}


def test_finalizing_opens_the_invoice_and_posts_receivable_and_deferred_revenue(desk: Desk) -> None:
    store = desk.invoicer.store
    draft = november(desk)
    assert [e.type for e in store.outbox("acme")] == ["invoice.created"]
    final, _ = desk.invoicer.finalize("acme", draft.id)
    assert (final.status, final.number, final.tax) == ("open", "INV-000001", Decimal("0.00"))
    assert (final.amount_due, final.amount_paid, final.amount_remaining) == (Decimal("30.00"), 0, Decimal("30.00"))
    # A fee in advance is billed before it is earned: deferred revenue, not revenue.
    assert trial_balance(store) == {
        ("accounts_receivable", "c1"): Decimal("30.00"),
        ("deferred_revenue", None): Decimal("30.00"),
    }
    [entry] = store.journal("acme")
    assert (entry.id, entry.seq, entry.invoice) == (f"invoice_finalized:{draft.id}", 1, draft.id)
    assert [e.type for e in store.outbox("acme", after=1)] == ["invoice.finalized"]
    assert "lines" not in next(store.outbox("acme", after=1)).data, "events carry the invoice without its lines"


def test_a_credit_note_reduces_what_is_owed_then_a_void_reverses_everything(desk: Desk) -> None:
    store = desk.invoicer.store
    final, _ = desk.invoicer.finalize("acme", november(desk).id)
    note, _ = desk.invoicer.credit("acme", final.id, Decimal("10"), "goodwill")
    after = store.get("acme", final.id)
    assert (after.amount_credited, after.amount_remaining, after.status) == (Decimal("10.00"), Decimal("20.00"), "open")
    assert trial_balance(store) == {
        ("accounts_receivable", "c1"): Decimal("20.00"),
        ("revenue", None): Decimal("-10.00"),
        ("deferred_revenue", None): Decimal("30.00"),
    }
    desk.invoicer.void("acme", final.id)
    assert trial_balance(store) == {}, "a void reverses the finalization and the credit note"
    assert [e.type for e in store.outbox("acme")] == [
        "invoice.created",
        "invoice.finalized",
        "credit_note.created",
        "invoice.voided",
    ]
    assert note.customer == "c1" and note.currency == "EUR"


def test_a_credit_note_past_what_is_owed_becomes_credit_balance_applied_to_the_next_invoice(desk: Desk) -> None:
    store = desk.invoicer.store
    final, _ = desk.invoicer.finalize("acme", november(desk).id)
    with store.transaction("acme") as change:  # the invoice paid by hand, as payments will record it
        settled = msgspec.structs.replace(final, amount_paid=final.total, amount_remaining=Decimal("0.00"))
        change.put(f"invoice/acme/{final.id}", msgspec.structs.replace(settled, status="paid"))
        change.post(ledger.payment_received(final, "pay_1", final.total, final.total, "cash", change.now))
    desk.invoicer.credit("acme", final.id, Decimal("12.50"), "outage")
    assert store.balance("acme", "c1", "EUR") == Decimal("12.50")
    [december] = desk.invoicer.run("acme", "2026-12").invoices
    december, _ = desk.invoicer.finalize("acme", december.id)
    assert (december.credit_applied, december.amount_due, december.status) == (
        Decimal("12.50"),
        Decimal("17.50"),
        "open",
    )
    assert store.balance("acme", "c1", "EUR") == 0
    assert trial_balance(store)[("accounts_receivable", "c1")] == Decimal("17.50")


def test_a_void_after_a_payment_and_a_second_entry_for_one_cause_are_refused(desk: Desk) -> None:
    store = desk.invoicer.store
    final, _ = desk.invoicer.finalize("acme", november(desk).id)
    with store.transaction("acme") as change:
        change.put(f"invoice/acme/{final.id}", msgspec.structs.replace(final, amount_paid=Decimal("1.00")))
    with pytest.raises(Conflict) as refused:
        desk.invoicer.void("acme", final.id)
    assert refused.value.code == "invalid_state" and "credit note" in refused.value.message
    before = list(store.journal("acme"))
    with pytest.raises(AlreadyPosted), store.transaction("acme") as change:
        change.put("marker/acme/x", b"1")
        change.post(before[0])
    assert list(store.journal("acme")) == before and store._db.get(b"marker/acme/x") is None, "nothing written"


def test_a_store_written_before_the_ledger_is_migrated_once(tmp_path: Path, desk: Desk) -> None:
    final, _ = desk.invoicer.finalize("acme", november(desk).id)
    desk.invoicer.credit("acme", final.id, Decimal("5"), "r")
    # The same invoice and note as the previous schema stored them: "finalized", no money fields, no ledger.
    old = InvoiceStore(tmp_path / "old")
    legacy = {
        k: v
        for k, v in msgspec.to_builtins(final).items()
        if k not in ("tax", "collection", "credit_applied") and not k.startswith("amount_")
    }
    legacy["status"] = "finalized"
    note = msgspec.json.decode(desk.invoicer.store._db[b"credit_note/acme/CN-000001"])
    for name in ("customer", "currency", "tax", "taxes"):
        note.pop(name, None)
    old._db[f"invoice/acme/{final.id}".encode()] = msgspec.json.encode(legacy)
    old._db[b"credit_note/acme/CN-000001"] = msgspec.json.encode(note)
    del old._db[b"meta/schema"]
    old.close()
    with pytest.raises(StorageError) as refused:  # a degraded start cannot migrate: it says so rather than misread
        InvoiceStore(tmp_path / "old", read_only=True)
    assert refused.value.code == "migration_needed" and "earlier version" in refused.value.message
    migrated = InvoiceStore(tmp_path / "old")
    try:
        invoice = migrated.get("acme", final.id)
        assert (invoice.status, invoice.number, invoice.amount_remaining) == ("open", "INV-000001", Decimal("25.00"))
        assert invoice.finalized_at == final.finalized_at
        assert trial_balance(migrated) == trial_balance(desk.invoicer.store)
        assert list(migrated.outbox("acme")) == [], "no event for the past"
    finally:
        migrated.close()
    again = InvoiceStore(tmp_path / "old")
    try:
        assert len(list(again.journal("acme"))) == 2, "migrated once"
    finally:
        again.close()
    assert datetime.now(UTC) > final.finalized_at
