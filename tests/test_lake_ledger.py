"""The ledger dataset: the journal written as Parquet reads back line for line, and the CSV says the same.

Worked by hand: inv-1 (30.00 EUR of usage) and inv-2 (12.50 EUR) for c1 are finalized (usage: out of unbilled revenue,
into the receivable); 5.00 is credited on inv-1 (a credit note: revenue back, receivable down); inv-1 is paid 25.00 by
hand (cash); inv-2 is voided (its finalization reversed). Five entries, ten lines; the receivable ends at 0.00, revenue
at -5.00 and unbilled revenue at -30.00 (no close has recognized the usage yet).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import Desk
from meter.billing.invoices import Invoice, InvoiceLine
from meter.billing.store import InvoiceStore, settle
from meter.lake import layout
from meter.lake import ledger as lake_ledger
from meter.money import ledger

AT = datetime(2026, 11, 1, tzinfo=UTC)


def invoice(number: int, amount: str, customer: str = "c1") -> Invoice:
    line = InvoiceLine(kind="usage", description="tokens", amount=Decimal(amount), period_start=AT, period_end=AT)
    return Invoice(
        id=f"inv-{number}",
        tenant="acme",
        customer=customer,
        subscription=f"s{number}",
        currency="EUR",
        reason="cycle",
        period_start=AT,
        period_end=AT,
        issued_at=AT,
        lines=[line],
        subtotal=Decimal(amount),
        total=Decimal(amount),
    )


def pay(store: InvoiceStore, invoice_id: str, amount: Decimal, payment: str) -> None:
    """A manual payment, posted the way the payments module does: the settled invoice and its entry, one write."""
    with store.transaction("acme") as change:
        before = store.get("acme", invoice_id)
        after, applied = settle(before, amount, "payment", change.now)
        change.put(f"invoice/acme/{invoice_id}", after)
        change.post(ledger.payment_received(before, payment, amount, applied, "cash", change.now))


def worked_example(path: Path) -> InvoiceStore:
    """The store of the module doc's worked example (the payment is posted now, after the others)."""
    opened = InvoiceStore(path)
    for draft in (invoice(1, "30.00"), invoice(2, "12.50")):
        opened.save_draft(draft)
        opened.finalize("acme", draft.id, now=AT)
    opened.credit("acme", "inv-1", Decimal("5"), "outage", now=AT)
    pay(opened, "inv-1", Decimal("25.00"), "pay-1")
    opened.void("acme", "inv-2", now=AT)
    return opened


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InvoiceStore]:
    opened = worked_example(tmp_path / "invoices")
    yield opened
    opened.close()


def expected_rows(store: InvoiceStore) -> list[dict[str, Any]]:
    rows = []
    for entry in store.journal("acme"):
        for n, line in enumerate(entry.lines, start=1):
            rows.append(
                {
                    "entry": entry.id,
                    "seq": entry.seq,
                    "line": n,
                    "kind": entry.kind,
                    "created_at": entry.created_at,
                    "currency": "EUR",
                    "account": line.account,
                    "customer": entry.customer,
                    "debit": line.debit,
                    "credit": line.credit,
                    "invoice": entry.invoice,
                    "credit_note": entry.credit_note,
                    "payment": entry.payment,
                    "memo": None,
                }
            )
    return rows


def test_the_journal_reads_back_line_for_line(store: InvoiceStore, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert lake_ledger.read_ledger(out, "acme") is None
    summary = lake_ledger.export_ledger(store, ["acme"], out)
    table = lake_ledger.read_ledger(out, "acme")
    assert table is not None and table.schema.equals(lake_ledger.LINE_SCHEMA)
    rows = table.to_pylist()
    assert rows == expected_rows(store) and (summary.files, summary.rows) == (1, len(rows))
    assert [r["kind"] for r in rows if r["line"] == 1] == [
        "invoice_finalized",
        "invoice_finalized",
        "credit_note",
        "payment",
        "invoice_voided",
    ]
    assert sum(r["debit"] for r in rows) == sum(r["credit"] for r in rows) == Decimal("85.00")
    revenue = sum(r["credit"] - r["debit"] for r in rows if r["account"] == "revenue")
    unbilled = sum(r["debit"] - r["credit"] for r in rows if r["account"] == "unbilled_revenue")
    receivable = sum(r["debit"] - r["credit"] for r in rows if r["account"] == "accounts_receivable")
    assert (revenue, unbilled, receivable) == (Decimal("-5.00"), Decimal("-30.00"), Decimal("0.00"))
    assert layout.ledger_file(out, "acme") == out / "ledger" / "tenant=acme" / "journal_lines.parquet"


def test_an_unchanged_journal_is_not_written_again_and_a_new_entry_rewrites_it(
    store: InvoiceStore, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    lake_ledger.export_ledger(store, ["acme"], out)
    before = layout.ledger_file(out, "acme").stat().st_mtime_ns
    again = lake_ledger.export_ledger(store, ["acme"], out)
    assert (again.files, again.unchanged) == (0, 1)
    assert layout.ledger_file(out, "acme").stat().st_mtime_ns == before
    store.save_draft(invoice(3, "7.00", customer="c2"))
    store.finalize("acme", "inv-3", now=AT)
    assert lake_ledger.export_ledger(store, ["acme"], out).files == 1
    table = lake_ledger.read_ledger(out, "acme")
    assert table is not None and table.to_pylist() == expected_rows(store), "the rows written, then the new ones"
    assert table.to_pylist()[-1]["customer"] == "c2"
    assert pq.ParquetFile(layout.ledger_file(out, "acme")).metadata.num_row_groups == 1, "small appends coalesce"


@pytest.mark.parametrize("damage", [b"", b"not parquet"])
def test_a_file_that_cannot_say_what_it_holds_is_written_again_whole(
    store: InvoiceStore, tmp_path: Path, damage: bytes
) -> None:
    out = tmp_path / "out"
    lake_ledger.export_ledger(store, ["acme"], out)
    layout.ledger_file(out, "acme").write_bytes(damage)
    assert lake_ledger.export_ledger(store, ["acme"], out).files == 1
    table = lake_ledger.read_ledger(out, "acme")
    assert table is not None and table.to_pylist() == expected_rows(store)


def test_a_tenant_without_entries_exports_an_empty_table(store: InvoiceStore, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert lake_ledger.export_ledger(store, ["nobody"], out).rows == 0
    table = lake_ledger.read_ledger(out, "nobody")
    assert table is not None and table.num_rows == 0
    assert pq.read_schema(layout.ledger_file(out, "nobody")).names == lake_ledger.LINE_SCHEMA.names


def test_the_csv_has_the_same_rows_with_exact_decimal_text(store: InvoiceStore) -> None:
    text = lake_ledger.csv_bytes(store.journal("acme")).decode()
    assert text.startswith(",".join(lake_ledger.LINE_SCHEMA.names) + "\r\n")
    rows = list(csv.DictReader(io.StringIO(text)))
    want = expected_rows(store)
    assert len(rows) == len(want)
    for got, row in zip(rows, want, strict=True):
        assert Decimal(got["debit"]) == row["debit"] and Decimal(got["credit"]) == row["credit"]
        assert datetime.fromisoformat(got["created_at"]) == row["created_at"]
        assert (got["entry"], int(got["seq"]), got["account"]) == (row["entry"], row["seq"], row["account"])
    first = rows[0]
    assert (first["account"], first["debit"], first["credit"]) == ("accounts_receivable", "30.00", "0.00")
    assert first["created_at"] == "2026-11-01T00:00:00Z" and first["credit_note"] == ""


def test_every_export_writes_the_ledger(desk: Desk) -> None:
    """``Invoicer.export``: what ``meter export`` and the server's scheduled export run."""
    summary = desk.invoicer.export(["acme"])
    assert (summary["ledger"].files, summary["ledger"].rows) == (1, 0)
    assert lake_ledger.read_ledger(desk.invoicer.out, "acme") is not None
    assert desk.invoicer.export(["acme"])["ledger"].unchanged == 1
