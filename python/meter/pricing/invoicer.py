"""The invoicing desk the server and the CLI share: it refreshes the Parquet export of one tenant (incremental, so
quick), reads it back, and runs invoicing on it. Pricing thus always works from the files, never from RocksDB, and
sees every event acknowledged before the call.
"""

from __future__ import annotations

import threading
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from meter.catalog.billing import BillingCatalog
from meter.engine import Engine
from meter.export import ExportSummary, export_catalog, export_events, export_invoices, export_usage
from meter.pricing.invoices import CreditNote, Invoice, InvoiceStore
from meter.pricing.invoicing import bill_thresholds, invoice_period, upcoming_invoices
from meter.pricing.snapshot import Snapshot, load_snapshot

__all__ = ["Invoicer"]

T = TypeVar("T")


class Invoicer:
    def __init__(self, engine: Engine, catalog: BillingCatalog, store: InvoiceStore, out: Path) -> None:
        self.engine, self.catalog, self.store, self.out = engine, catalog, store, out
        # One export at a time writes into `out`: the scheduled one and the ones invoicing asks for.
        self.lock = threading.Lock()

    def export(self, tenants: list[str]) -> dict[str, ExportSummary]:
        """Everything the export holds, for these tenants: usage, raw events, the catalog and the invoices."""
        with self.lock:
            return {"usage": export_usage(self.engine, tenants, self.out),
                    "events": export_events(self.engine, tenants, self.out),
                    "catalog": export_catalog(self.catalog, self.engine, tenants, self.out),
                    "invoices": export_invoices(self.store, tenants, self.out)}

    def run(self, tenant: str, month: str, finalize: bool = False) -> list[Invoice]:
        """The drafts of the cycles starting in ``month`` (``YYYY-MM``), finalized (numbered) when asked."""
        with self.lock:
            drafts = invoice_period(self._snapshot(tenant), self.out, self.store, month)
            if finalize:
                drafts = [self.store.finalize(tenant, d.id) for d in drafts]
            export_invoices(self.store, [tenant], self.out)
        return drafts

    def preview(self, tenant: str, customer: str, as_of: datetime) -> list[Invoice]:
        with self.lock:
            return upcoming_invoices(self._snapshot(tenant), self.out, self.store, customer, as_of)

    def thresholds(self, tenant: str, as_of: datetime) -> list[Invoice]:
        with self.lock:
            snapshot = self._snapshot(tenant)
            if not any(s.threshold is not None for s in snapshot.subscriptions):
                return []
            issued = bill_thresholds(snapshot, self.out, self.store, as_of)
            if issued:
                export_invoices(self.store, [tenant], self.out)
            return issued

    def finalize(self, tenant: str, invoice_id: str) -> Invoice:
        return self._then_export(tenant, self.store.finalize(tenant, invoice_id))

    def void(self, tenant: str, invoice_id: str) -> Invoice:
        return self._then_export(tenant, self.store.void(tenant, invoice_id))

    def credit(self, tenant: str, invoice_id: str, amount: Decimal, reason: str) -> CreditNote:
        return self._then_export(tenant, self.store.credit(tenant, invoice_id, amount, reason))

    def _then_export(self, tenant: str, result: T) -> T:
        with self.lock:
            export_invoices(self.store, [tenant], self.out)
        return result

    def _snapshot(self, tenant: str) -> Snapshot:
        # Called with the lock held. Raw events too: percentages charged per event read them.
        export_usage(self.engine, [tenant], self.out)
        export_events(self.engine, [tenant], self.out)
        export_catalog(self.catalog, self.engine, [tenant], self.out)
        return load_snapshot(self.out, tenant)
