"""The revenue dataset: the rows of every month-end close, for warehouses.

Layout: ``<out>/revenue/tenant=<tenant>/recognized.parquet`` (:mod:`meter.lake.layout`), in the columns of
:data:`meter.money.revenue.recognize.ROW_SCHEMA`: one row per source and close step, what it recognized (``amount``,
decimal128(38, 9); ``quantity`` for usage) in which ``month`` of the reporting zone, and what it belongs to
(customer, subscription, plan, price, meter, product, invoice and the month it was finalized). Their sum by month
is the ``revenue`` account's movement by accounting date.

Invariants: derived from the invoices store, where each close writes its rows with its journal entries; a file
already holding the last close's rows is left as it is (``unchanged``), so an export with no new close writes
nothing; the file is replaced atomically (:mod:`meter.lake.files`).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from meter.billing.store import InvoiceStore
from meter.lake import layout
from meter.lake.files import ExportSummary, write_parquet
from meter.money.revenue.recognize import last_close, read_rows

__all__ = ["export_revenue"]

#: The file's metadata key naming the last close it holds.
_THROUGH = b"meter.recognized_through"


def export_revenue(store: InvoiceStore, tenants: list[str], out: Path) -> ExportSummary:
    """Writes each tenant's close rows, when a close happened since the file was written."""
    summary = ExportSummary()
    for tenant in tenants:
        through = last_close(store, tenant)
        if through is None:
            continue
        path = layout.revenue_file(out, tenant)
        if path.exists() and (pq.read_schema(path).metadata or {}).get(_THROUGH) == through.isoformat().encode():
            summary.unchanged += 1
            continue
        table = read_rows(store, tenant)
        table = table.replace_schema_metadata({_THROUGH: through.isoformat().encode()})
        summary.rows += write_parquet(table, path)
        summary.files += 1
    return summary
