"""The ledger dataset: every journal line of a tenant, for finance tools (Parquet), and the same rows as CSV.

Layout: ``<out>/ledger/tenant=<tenant>/journal_lines.parquet`` (:mod:`meter.lake.layout`), in the columns of
:data:`LINE_SCHEMA`: one row per line of every journal entry, in the order they were posted (``seq``, then ``line``
1, 2... within the entry). ``entry`` is the entry's id (its cause: ``invoice_finalized:<invoice>``,
``payment:<payment>``...); ``customer`` is the customer the entry is about, on every line (so revenue reads per
customer too); ``debit`` and ``credit`` are decimal128(38, 9), one of them zero; ``created_at`` is UTC microseconds.

Invariants:

- Derived: the invoices store's journal is the source of truth, and the file is rewritten from it whole (per tenant)
  by :func:`export_ledger`, a chunk of entries (one row group) at a time, so memory does not grow with the journal.
  The journal only grows (entries are immutable), so the manifest (``{"seq": last entry written}``) tells that
  nothing changed since: the file is then left as it is (``unchanged``).
- Every file is replaced atomically (:mod:`meter.lake.files`).
- CSV (:func:`csv_bytes`, for the HTTP route and the CLI) has the same columns, amounts as plain decimal text at the
  currency's minor unit (``30.00``, ``0.00``: never a float, never ``3E+1``) and times as RFC 3339 UTC.

Write: :func:`export_ledger`. Read: :func:`read_ledger`. Rows: :func:`line_table`, :func:`csv_bytes`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from meter.billing.store import InvoiceStore
from meter.encoding import plain
from meter.lake import layout
from meter.lake.files import ExportSummary, read_manifest, write_manifest, write_parquet
from meter.money.ledger import JournalEntry
from meter.pricing.money import minor_units

__all__ = ["CHUNK", "LINE_SCHEMA", "csv_bytes", "export_ledger", "line_table", "read_ledger"]

_MONEY: pa.DataType = pa.decimal128(38, 9)
_UTC: pa.DataType = pa.timestamp("us", tz="UTC")
#: ``journal_lines``: one row per line of a journal entry.
_LINE_FIELDS: list[tuple[str, pa.DataType]] = [
    ("entry", pa.string()),
    ("seq", pa.int64()),
    ("line", pa.int32()),
    ("kind", pa.string()),
    ("created_at", _UTC),
    ("currency", pa.string()),
    ("account", pa.string()),
    ("customer", pa.string()),
    ("debit", _MONEY),
    ("credit", _MONEY),
    ("invoice", pa.string()),
    ("credit_note", pa.string()),
    ("payment", pa.string()),
    ("memo", pa.string()),
]
LINE_SCHEMA = pa.schema(_LINE_FIELDS)
#: Entries written per row group.
CHUNK = 20_000


class _Manifest(msgspec.Struct):
    #: The last entry the file holds (0: none).
    seq: int = 0


def _rows(entries: Iterable[JournalEntry]) -> Iterator[dict[str, Any]]:
    for entry in entries:
        for n, line in enumerate(entry.lines, start=1):
            yield {
                "entry": entry.id,
                "seq": entry.seq,
                "line": n,
                "kind": entry.kind,
                "created_at": entry.created_at,
                "currency": entry.currency,
                "account": line.account,
                "customer": line.customer or entry.customer,
                "debit": line.debit,
                "credit": line.credit,
                "invoice": entry.invoice,
                "credit_note": entry.credit_note,
                "payment": entry.payment,
                "memo": entry.memo,
            }


def line_table(entries: Iterable[JournalEntry]) -> pa.Table:
    """The rows of these entries' lines, in :data:`LINE_SCHEMA`."""
    return pa.Table.from_pylist(list(_rows(entries)), schema=LINE_SCHEMA)


def _batches(entries: Iterable[JournalEntry], last: list[int]) -> Iterator[pa.RecordBatch]:
    pending = iter(entries)
    while chunk := list(islice(pending, CHUNK)):
        last[0] = chunk[-1].seq
        yield from line_table(chunk).to_batches()


def export_ledger(store: InvoiceStore, tenants: list[str], out: Path) -> ExportSummary:
    """Writes each tenant's journal lines, unless no entry was posted since the file was last written."""
    summary = ExportSummary()
    for tenant in tenants:
        path = layout.ledger_file(out, tenant)
        manifest = layout.manifest(layout.ledger_tenant(out, tenant))
        written = read_manifest(manifest, _Manifest, _Manifest())
        if path.exists() and next(store.journal(tenant, written.seq), None) is None:
            summary.unchanged += 1
            continue
        last = [0]
        reader = pa.RecordBatchReader.from_batches(LINE_SCHEMA, _batches(store.journal(tenant), last))
        summary.rows += write_parquet(reader, path)
        summary.files += 1
        write_manifest(_Manifest(seq=last[0]), manifest)
    return summary


def read_ledger(out: Path, tenant: str) -> pa.Table | None:
    """The tenant's journal lines as exported; None when its ledger was never exported."""
    path = layout.ledger_file(out, tenant)
    if not path.exists():
        return None
    return pq.read_table(path).cast(LINE_SCHEMA)


def _money(amount: Decimal, currency: str) -> str:
    """Plain decimal text; a zero at the currency's minor unit (``0.00``), like the amounts it sits beside."""
    return plain(amount if amount else Decimal(0).scaleb(-minor_units(currency)))


def _time(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def csv_bytes(entries: Iterable[JournalEntry]) -> bytes:
    """The rows of these entries' lines as CSV (UTF-8, a header line, CRLF line ends as RFC 4180 says)."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(LINE_SCHEMA.names)
    for row in _rows(entries):
        row["created_at"] = _time(row["created_at"])
        row["debit"], row["credit"] = _money(row["debit"], row["currency"]), _money(row["credit"], row["currency"])
        writer.writerow("" if value is None else value for value in row.values())
    return text.getvalue().encode()
