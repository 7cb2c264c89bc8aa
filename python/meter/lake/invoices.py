"""The invoices dataset: every invoice (drafts, finalized, void), its lines and the credit notes, for finance tools.

Layout: ``<out>/invoices/tenant=<tenant>/{invoices,invoice_lines,credit_notes}.parquet`` (:mod:`meter.lake.layout`),
in the columns of :data:`INVOICE_SCHEMA`, :data:`LINE_SCHEMA` and :data:`NOTE_SCHEMA`. Amounts are decimal128(38, 9)
and times UTC microseconds; a line's ``details`` are JSON text (decimals as plain text, see :mod:`meter.encoding`),
the invoices it ``corrects`` a comma-separated list. ``invoices`` is sorted by ``id`` and ``invoice_lines`` by
``invoice`` then ``line`` (1, 2... within an invoice), as the store keeps them.

Invariants:

- Derived: the invoices store is the source of truth, and these files are rewritten from it whole (per tenant) by
  :func:`export_invoices`. The store refuses what the files cannot hold (``InvoiceStore`` checks amounts against
  decimal128(38, 9) before it writes), so a stored invoice never makes the export fail.
- An invoice run over whole tables writes its drafts' rows as it stores them (:class:`FreshWriter`, into the hidden
  ``.run`` directory, a row group per chunk and in the order of the ids); the export takes those rows as they are
  (moved into place, or merged a row group at a time with the rows it decodes from the store) instead of reading a
  million invoices back and decoding them one by one, and removes the directory.
- Every file is replaced atomically (:mod:`meter.lake.files`).
- The lake sits below invoicing: this module imports the invoice types and ``Fresh`` from the invoices store's module
  (which imports nothing of the lake), and never the invoicing run or the invoicer, which import it.

Write: :func:`export_invoices`, :class:`FreshWriter`. Read: :func:`read_invoices` (the three tables of a tenant).
"""

from __future__ import annotations

import bisect
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal, cast

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meter.billing.invoices import Fresh, Invoice
from meter.billing.store import InvoiceStore
from meter.encoding import encode_json
from meter.lake import layout
from meter.lake.files import COMPRESSION, ExportSummary, replace, write_parquet

__all__ = [
    "INVOICE_SCHEMA",
    "LINE_SCHEMA",
    "NOTE_SCHEMA",
    "FreshWriter",
    "InvoiceTables",
    "export_invoices",
    "read_invoices",
]

_MONEY: pa.DataType = pa.decimal128(38, 9)
_UTC: pa.DataType = pa.timestamp("us", tz="UTC")
#: Tax by rate and jurisdiction (``TaxAmount``), of an invoice or a credit note.
_TAXES: pa.DataType = pa.list_(
    pa.struct(
        [
            ("rate", pa.string()),
            ("name", pa.string()),
            ("country", pa.string()),
            ("region", pa.string()),
            ("percentage", _MONEY),
            ("inclusive", pa.bool_()),
            ("taxable", _MONEY),
            ("amount", _MONEY),
        ]
    )
)
#: ``invoices``: one row per invoice, the fields of ``Invoice`` but its lines.
INVOICE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("number", pa.string()),
        ("status", pa.string()),
        ("tenant", pa.string()),
        ("customer", pa.string()),
        ("subscription", pa.string()),
        ("currency", pa.string()),
        ("reason", pa.string()),
        ("period_start", _UTC),
        ("period_end", _UTC),
        ("issued_at", _UTC),
        ("subtotal", _MONEY),
        ("total", _MONEY),
        ("finalized_at", _UTC),
        ("voided_at", _UTC),
        ("period", pa.string()),
        ("usage_start", _UTC),
        ("usage_end", _UTC),
        ("usage_period", pa.string()),
        ("reissues", pa.string()),
        # Tax, set at finalization (null and empty on drafts): the total, by rate and jurisdiction, and the note.
        ("tax", _MONEY),
        ("taxes", _TAXES),
        ("tax_note", pa.string()),
        # Collection, set at finalization (null on drafts): what the invoice asks for and what settled it.
        ("amount_due", _MONEY),
        ("amount_paid", _MONEY),
        ("amount_credited", _MONEY),
        ("amount_remaining", _MONEY),
        ("credit_applied", _MONEY),
        ("collection", pa.string()),
        ("paid_at", _UTC),
        ("uncollectible_at", _UTC),
    ]
)
#: ``invoice_lines``: one row per line, keyed by its invoice (and number) and its position there.
_LINE_FIELDS: list[tuple[str, pa.DataType]] = [
    ("invoice", pa.string()),
    ("number", pa.string()),
    ("line", pa.int32()),
    ("kind", pa.string()),
    ("description", pa.string()),
    ("amount", _MONEY),
    ("period_start", _UTC),
    ("period_end", _UTC),
    ("key", pa.string()),
    ("price", pa.string()),
    ("version", pa.int32()),
    ("model", pa.string()),
    ("meter", pa.string()),
    ("quantity", _MONEY),
    ("rated", _MONEY),
    ("details", pa.string()),
    ("events", pa.string()),
    ("grant", pa.string()),
    ("timing", pa.string()),
    ("billed", _MONEY),
    ("billed_quantity", _MONEY),
    ("corrects", pa.string()),
    # The line's tax (its rates', summed; null when it has none: drafts) and the ids of the rates it was taxed at.
    ("tax", _MONEY),
    ("tax_rates", pa.string()),
]
LINE_SCHEMA = pa.schema(_LINE_FIELDS)
#: ``credit_notes``: one row per credit note.
NOTE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("number", pa.string()),
        ("invoice", pa.string()),
        ("amount", _MONEY),
        ("reason", pa.string()),
        ("created_at", _UTC),
        # The tax the note carries back, and per rate.
        ("tax", _MONEY),
        ("taxes", _TAXES),
    ]
)


@dataclass(frozen=True)
class InvoiceTables:
    """A tenant's invoices export as read back."""

    invoices: pa.Table
    lines: pa.Table
    credit_notes: pa.Table


def export_invoices(
    store: InvoiceStore, tenants: list[str], out: Path, fresh: dict[str, Fresh] | None = None
) -> ExportSummary:
    """Writes every invoice (drafts, finalized, void) and its lines for finance tools.

    Derived from the invoices store, which refuses what these files cannot hold (``InvoiceStore`` checks amounts
    against ``decimal128(38, 9)`` before it writes), so a stored invoice never makes this fail. ``fresh`` holds, per
    tenant, the rows of invoices just stored (an invoice run's drafts, see ``meter.billing.batch``): those are taken
    as they are, a part at a time, instead of being read back and decoded one by one.
    """
    summary = ExportSummary()
    for tenant in tenants:
        given = (fresh or {}).get(tenant)
        try:
            skip = given.ids if given is not None else frozenset()
            invoices, lines = [], []
            for raw in store.stored_except(tenant, skip):
                invoice = msgspec.json.decode(raw, type=Invoice)
                row = msgspec.to_builtins(invoice, builtin_types=(datetime, Decimal))
                taxed = _line_taxes(invoice)
                for i, line in enumerate(row.pop("lines"), start=1):
                    line["details"] = encode_json(line.get("details", [])).decode()
                    line["corrects"] = ", ".join(line.get("corrects", [])) or None
                    line["tax"], rates = taxed.get(i - 1, (None, None))
                    line["tax_rates"] = rates or None
                    lines.append({"invoice": invoice.id, "number": invoice.number, "line": i, **line})
                invoices.append(row)
            # In the store's order (by id): the given rows and what was read are each in that order, and merged.
            for name, rows, schema, key in (
                ("invoices", invoices, INVOICE_SCHEMA, "id"),
                ("invoice_lines", lines, LINE_SCHEMA, "invoice"),
            ):
                read = pa.Table.from_pylist(rows, schema=schema)
                written = given.directory / f"{name}.parquet" if given is not None else None
                summary.rows += _write_merged(read, written, schema, key, layout.invoices_file(out, tenant, name))
                summary.files += 1
        finally:
            if given is not None:
                given.discard()
        notes = pa.Table.from_pylist(
            [msgspec.to_builtins(n, builtin_types=(datetime, Decimal)) for n in store.credit_notes(tenant)],
            schema=NOTE_SCHEMA,
        )
        write_parquet(notes, layout.invoices_file(out, tenant, "credit_notes"))
        summary.files += 1
        summary.rows += notes.num_rows
    return summary


def _line_taxes(invoice: Invoice) -> dict[int, tuple[Decimal, str]]:
    """Each taxed line's tax (its rates' summed) and its rates' ids, by the line's index."""
    found: dict[int, tuple[Decimal, str]] = {}
    for tax in invoice.line_taxes:
        amount, rates = found.get(tax.line, (Decimal(0), ""))
        found[tax.line] = (amount + tax.amount, f"{rates}, {tax.rate}" if rates else tax.rate)
    return found


def _write_merged(read: pa.Table, given: Path | None, schema: pa.Schema, key: str, path: Path) -> int:
    """Writes ``read`` and the rows of the file ``given``, each sorted by ``key``, as one file; the rows written.

    The file is sorted by ``key`` (then line), as the store keeps the invoices. ``given`` alone is moved into place;
    otherwise the two are merged a row group of ``given`` at a time.
    """
    order: list[tuple[str, Literal["ascending", "descending"]]] = [(key, "ascending")]
    order += [("line", "ascending")] if key == "invoice" else []
    if given is None:
        return write_parquet(read.take(pc.sort_indices(read, sort_keys=order)) if read.num_rows else read, path)
    rows = pq.ParquetFile(given).metadata.num_rows
    if read.num_rows == 0:
        replace(path, lambda tmp: os.replace(given, tmp))
        return int(rows)
    keys = read.column(key).to_pylist()
    written = 0

    def write(tmp: Path) -> None:
        nonlocal written
        at = 0
        source = pq.ParquetFile(given)
        with pq.ParquetWriter(tmp, schema, compression=COMPRESSION) as writer:
            for group in range(source.num_row_groups):
                table = source.read_row_group(group).cast(schema)
                if table.num_rows == 0:
                    continue
                upto = bisect.bisect_right(keys, table.column(key)[-1].as_py(), lo=at)
                if upto > at:  # rows read from the store fall among these: merged in order
                    table = pa.concat_tables([read.slice(at, upto - at), table])
                    table = table.take(pc.sort_indices(table, sort_keys=order))
                at = upto
                writer.write_table(table)
                written += table.num_rows
            if at < read.num_rows:
                writer.write_table(read.slice(at))
                written += read.num_rows - at

    replace(path, write)
    return written


class FreshWriter:
    """Writes an invoice run's rows for the invoices export as it stores them (see ``Fresh``), a chunk at a time."""

    def __init__(self, out: Path, tenant: str) -> None:
        directory = layout.fresh_dir(out, tenant)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        self.directory, self.ids = directory, set[str]()
        self._invoices = pq.ParquetWriter(directory / "invoices.parquet", INVOICE_SCHEMA, compression=COMPRESSION)
        self._lines = pq.ParquetWriter(directory / "invoice_lines.parquet", LINE_SCHEMA, compression=COMPRESSION)

    def write(self, invoices: pa.Table, lines: pa.Table) -> None:
        """Rows in the export's columns, after those written before in the order of the ids."""
        self._invoices.write_table(
            _drafts_defaults(invoices, INVOICE_SCHEMA).select(INVOICE_SCHEMA.names).cast(INVOICE_SCHEMA)
        )
        self._lines.write_table(_drafts_defaults(lines, LINE_SCHEMA).select(LINE_SCHEMA.names).cast(LINE_SCHEMA))
        self.ids.update(cast("list[str]", invoices.column("id").to_pylist()))  # ids are never null

    def close(self) -> Fresh:
        self._invoices.close()
        self._lines.close()
        return Fresh(self.directory, frozenset(self.ids))


def _drafts_defaults(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with the columns of ``schema`` a draft leaves at their defaults added when missing (tax: none yet)."""
    for field in schema:
        if field.name not in table.column_names:
            empty: list[object] | None = [] if pa.types.is_list(field.type) else None
            table = table.append_column(field, pa.array([empty] * table.num_rows, type=field.type))
    return table


def read_invoices(out: Path, tenant: str) -> InvoiceTables | None:
    """The tenant's three tables, in the export's schemas; None when its invoices were never exported."""
    paths = [layout.invoices_file(out, tenant, name) for name in ("invoices", "invoice_lines", "credit_notes")]
    if not all(path.exists() for path in paths):
        return None
    invoices, lines, notes = (
        pq.read_table(path).cast(schema)
        for path, schema in zip(paths, (INVOICE_SCHEMA, LINE_SCHEMA, NOTE_SCHEMA), strict=True)
    )
    return InvoiceTables(invoices, lines, notes)
