"""The ledger dataset: every journal line of a tenant, for finance tools (Parquet), and the same rows as CSV.

Layout: ``<out>/ledger/tenant=<tenant>/journal_lines.parquet`` (:mod:`meter.lake.layout`), in the columns of
:data:`LINE_SCHEMA`: one row per line of every journal entry, in the order they were posted (``seq``, then ``line``
1, 2... within the entry). ``entry`` is the entry's id (its cause: ``invoice_finalized:<invoice>``,
``payment:<payment>``...); ``customer`` is the customer the entry is about, on every line (so revenue reads per
customer too); ``debit`` and ``credit`` are decimal128(38, 9), one of them zero; ``created_at`` is UTC microseconds.

Invariants:

- Derived: the invoices store's journal is the source of truth. Entries are immutable and the journal only grows,
  so :func:`export_ledger` copies the rows the file holds (Arrow, a row group at a time) and appends the entries
  posted since, a chunk at a time: memory does not grow with the journal, and Python builds rows only for new
  entries. Which entries the file holds it says itself (the ``seq`` statistics of its last row group), so no
  manifest can disagree with it after a crash; a file nothing was posted since is left as it is (``unchanged``).
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
from itertools import chain, islice
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq

from meter.billing.store import InvoiceStore
from meter.encoding import plain
from meter.lake import layout
from meter.lake.files import ExportSummary, write_parquet
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
#: Entries turned into rows at a time.
CHUNK = 20_000
#: Rows per row group (at least; the last one of a file holds what is left).
ROW_GROUP = 100_000


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
    """The rows of these entries' lines, in :data:`LINE_SCHEMA` (built a column at a time: twice as fast as rows)."""
    columns: dict[str, list[Any]] = {name: [] for name in LINE_SCHEMA.names}
    for row in _rows(entries):
        for name, value in row.items():
            columns[name].append(value)
    return pa.table([pa.array(columns[f.name], type=f.type) for f in LINE_SCHEMA], schema=LINE_SCHEMA)


def _batches(entries: Iterable[JournalEntry]) -> Iterator[pa.RecordBatch]:
    pending = iter(entries)
    while chunk := list(islice(pending, CHUNK)):
        yield from line_table(chunk).to_batches()


def _coalesced(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The batches joined into batches of at least ``rows`` rows (the last one: what is left), one row group each.

    So that a file appended to by many small exports keeps a few large row groups, not one per export.
    """
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        if held >= rows:
            yield from pa.Table.from_batches(pending, LINE_SCHEMA).combine_chunks().to_batches()
            pending, held = [], 0
    if held:
        yield from pa.Table.from_batches(pending, LINE_SCHEMA).combine_chunks().to_batches()


def _last_seq(path: Path) -> int | None:
    """The last entry the file holds (0: none), from its row groups' statistics; None when it must be rewritten."""
    try:
        source = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid):
        return None
    if not source.schema_arrow.equals(LINE_SCHEMA):
        return None  # written by another version of this module: rewritten whole
    groups = source.metadata.num_row_groups
    if groups == 0:
        return 0
    stats = source.metadata.row_group(groups - 1).column(LINE_SCHEMA.get_field_index("seq")).statistics
    if stats is None or not stats.has_min_max:
        return None
    return int(cast("int", stats.max))


def _appended(path: Path, held: int | None, entries: Iterator[JournalEntry]) -> Iterator[pa.RecordBatch]:
    """The rows the file holds (when it holds ``held`` > 0 entries), then those of ``entries``."""
    if held:  # a row group at a time, as Arrow: no Python object per row
        yield from pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP)
    yield from _batches(entries)


def export_ledger(store: InvoiceStore, tenants: list[str], out: Path) -> ExportSummary:
    """Writes each tenant's journal lines: the file as it was, then the entries posted since (none: left as it is).

    The file itself says which entries it holds (the ``seq`` statistics of its last row group), so no crash between
    writing it and a manifest can make an entry written twice or skipped.
    """
    summary = ExportSummary()
    for tenant in tenants:
        path = layout.ledger_file(out, tenant)
        last = _last_seq(path) if path.exists() else None
        new = store.journal(tenant, last or 0)
        first = next(new, None)
        if last is not None and first is None:
            summary.unchanged += 1
            continue
        entries = chain([first], new) if first is not None else iter(())
        reader = pa.RecordBatchReader.from_batches(LINE_SCHEMA, _coalesced(_appended(path, last, entries), ROW_GROUP))
        summary.rows += write_parquet(reader, path)
        summary.files += 1
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
