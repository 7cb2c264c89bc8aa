"""Reading the ledger (meter.money.reports): bounded pages, the trial balance as of a time, customers' balances.

The journal of tests/test_lake_ledger.py's worked example: inv-1 (30.00 EUR) and inv-2 (12.50 EUR) of c1 finalized,
5.00 credited on inv-1 and inv-2 voided at 2026-11-01T00:00Z; inv-1 paid 25.00 by hand now (after them). Five entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from meter.billing.store import InvoiceStore
from meter.exceptions import InvalidInput
from meter.money import reports
from meter.money.reports import EntryFilter
from test_lake_ledger import AT, worked_example


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InvoiceStore]:
    opened = worked_example(tmp_path / "invoices")
    yield opened
    opened.close()


def test_a_rare_filter_answers_a_short_page_and_where_to_carry_on(store: InvoiceStore) -> None:
    page = reports.entries(store, "acme", EntryFilter(kind="invoice_voided"), scan=2)
    assert (page.data, page.next, page.scanned) == ([], 2, 2)
    seen, after = [], 0
    while True:
        page = reports.entries(store, "acme", EntryFilter(kind="invoice_voided"), after=after, scan=2)
        seen += page.data
        if page.next is None:
            break
        after = page.next
    assert [e.seq for e in seen] == [5]


def test_the_trial_balance_as_of_a_time_holds_the_entries_created_before_it(store: InvoiceStore) -> None:
    assert reports.trial_balance(store, "acme", as_of=AT).entries == 0, "[.., as_of): an entry at as_of is after"
    before_payment = reports.trial_balance(store, "acme", as_of=AT + timedelta(seconds=1), by_customer=True)
    assert before_payment.entries == 4 and before_payment.balanced
    # The usage invoiced moved out of unbilled revenue (no close recognized it yet); the credit note took revenue back.
    assert {a.account: a.balance for a in before_payment.accounts} == {
        "accounts_receivable": Decimal("25.00"),
        "unbilled_revenue": Decimal("-30.00"),
        "revenue": Decimal("-5.00"),
    }
    assert [(c.account, c.customer, c.balance) for c in before_payment.customers or []] == [
        ("accounts_receivable", "c1", Decimal("25.00"))
    ]
    everything = reports.trial_balance(store, "acme")
    assert everything.entries == 5 and everything.customers is None
    assert [(t.currency, t.debit, t.credit) for t in everything.totals] == [("EUR", Decimal("85.00"), Decimal("85.00"))]
    assert {a.account: a.balance for a in everything.accounts} == {
        "accounts_receivable": Decimal("0.00"),
        "cash": Decimal("25.00"),
        "unbilled_revenue": Decimal("-30.00"),
        "revenue": Decimal("-5.00"),
    }
    assert [(b.customer, b.owed, b.credit) for b in reports.customer_balances(store, "acme")] == [
        ("c1", Decimal("0.00"), Decimal("0.00"))
    ]
    owed_then = reports.customer_balances(store, "acme", "c1", as_of=AT + timedelta(seconds=1))
    assert [(b.owed, b.credit) for b in owed_then] == [(Decimal("25.00"), Decimal("0.00"))]


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ({"account": "sales"}, "bad_debt"),
        ({"kind": "paid"}, "write_off"),
        ({"start": datetime(2026, 12, 1, tzinfo=UTC), "end": datetime(2026, 11, 1, tzinfo=UTC)}, "[from, to)"),
    ],
)
def test_a_filter_the_ledger_cannot_match_is_refused_with_what_it_can(where: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        EntryFilter(**where)  # type: ignore[arg-type]
    assert refused.value.code == "invalid_query" and says in refused.value.message
