"""The invoicing desk the server and the CLI share: one data directory's engine, catalog, invoice store and export.

Before every run it refreshes the Parquet export of one tenant (incremental, so quick), reads the catalog snapshot
back, and runs invoicing on it. Invoicing thus always works from the files, never from RocksDB, and sees every event
acknowledged before the call. One lock serialises everything that writes into the export directory (the scheduled
export and the runs); the store has its own per-tenant lock for numbering. The desk computes no amount itself
(rounding is invoicing's: half to even, to each currency's minor unit, once per line).

The invoices store is the source of truth; the invoices export (:mod:`meter.lake.invoices`) is derived from it.
Refreshing that export after a write is best effort: the write stands whatever happens to the export, a failure is
reported as a warning (in the answer and on stderr) and the next write or export tries again. Whatever the store
holds can be exported: values that could not be are refused before they are stored.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import msgspec

from meter.billing.invoices import CreditNote, Fresh, Invoice, InvoiceRun, RunError, RunWarning
from meter.billing.invoicing import bill_thresholds, invoice_period, upcoming_invoices
from meter.billing.store import InvoiceStore, Prepare
from meter.catalog.billing import BillingCatalog
from meter.documents.render import InvoiceDocuments
from meter.engine import Engine
from meter.exceptions import Conflict, NotFound
from meter.lake.catalog import Snapshot, export_catalog, refresh_catalog, snapshot_of
from meter.lake.events import export_events
from meter.lake.files import ExportSummary
from meter.lake.invoices import export_invoices
from meter.lake.layout import invoices_root
from meter.lake.ledger import export_ledger
from meter.lake.revenue import export_revenue
from meter.lake.usage import export_usage
from meter.money.revenue.recognize import Close, CloseStep, recognize
from meter.money.tax import Taxes, credit_note_tax
from meter.pricing.steps import step

__all__ = ["Invoicer"]


class Invoicer:
    def __init__(
        self, engine: Engine, catalog: BillingCatalog, store: InvoiceStore, out: Path, taxes: Taxes | None = None
    ) -> None:
        self.engine, self.catalog, self.store, self.out = engine, catalog, store, out
        #: Every finalization and credit note, through whichever path, writes its PDF with it (meter.documents).
        self.documents = InvoiceDocuments(catalog)
        store.documents = self.documents
        #: Every finalization taxes the invoice (meter.money.tax): finalize, a run's, a threshold invoice's.
        self.taxes = taxes or Taxes(catalog)
        # One export at a time writes into `out`: the scheduled one and the ones invoicing asks for.
        self.lock = threading.Lock()
        #: Called with the invoices a call finalized, after their finalization committed and outside every lock:
        #: automatic collection (meter.money.payments) charges them. Its failure never undoes a finalization.
        self.collect: Callable[[str, Sequence[Invoice]], None] | None = None

    def prepare(self, tenant: str, now: datetime | None = None) -> Prepare:
        """What every finalization applies to a draft inside the store's lock: each step in order (tax, collection)."""
        steps: list[Prepare] = [self.taxes.taxer(tenant, now), self._collection(tenant)]

        def prepare(invoice: Invoice) -> Invoice:
            for prepare_step in steps:
                invoice = prepare_step(invoice)
            return invoice

        return prepare

    @staticmethod
    def _ahead(prepare: Prepare, draft: Invoice) -> Prepare:
        """``prepare`` applied to ``draft`` now, before the store's lock is taken; used under it if still current.

        Preparing may ask Stripe Tax (hundreds of milliseconds), and the store's lock holds every other write of the
        tenant (payments, webhook deliveries) meanwhile. Under the lock, the result stands while the stored draft is
        ``draft``; a draft recomputed in between is prepared again there.
        """
        ready = prepare(draft)
        return lambda stored: ready if stored == draft else prepare(stored)

    def _collection(self, tenant: str) -> Prepare:
        """The step that sets how the invoice is collected: its customer's ``collection``."""

        def collection(invoice: Invoice) -> Invoice:
            try:
                how = self.catalog.get_customer(tenant, invoice.customer).collection
            except NotFound:  # a customer removed since: its invoices are paid by hand
                how = "send_invoice"
            return msgspec.structs.replace(invoice, collection=how)

        return collection

    def _collected(self, tenant: str, invoices: Sequence[Invoice]) -> None:
        """Hands finalized invoices to collection (see ``collect``); a failure is reported, never raised."""
        if self.collect is None or not invoices:
            return
        try:
            self.collect(tenant, invoices)
        except Exception as e:  # noqa: BLE001 - the finalization stands; the dunning job retries what is due
            print(f"meter: tenant {tenant!r}: collecting finalized invoices failed: {e!r}", file=sys.stderr, flush=True)

    def export(self, tenants: list[str]) -> dict[str, ExportSummary]:
        """Everything the export holds, for these tenants: usage, raw events, the catalog, invoices, ledger, revenue."""
        with self.lock:
            return {
                "usage": export_usage(self.engine, tenants, self.out),
                "events": export_events(self.engine, tenants, self.out),
                "catalog": export_catalog(self.catalog, self.engine, tenants, self.out),
                "invoices": export_invoices(self.store, tenants, self.out),
                "ledger": export_ledger(self.store, tenants, self.out),
                "revenue": export_revenue(self.store, tenants, self.out),
            }

    def run(self, tenant: str, month: str, finalize: bool = False) -> InvoiceRun:
        """The drafts of the cycles starting in ``month`` (``YYYY-MM``), finalized (numbered) when asked.

        A subscription that cannot be invoiced (or whose invoice cannot be finalized) is reported in ``errors``; the
        others are invoiced all the same.
        """
        with self.lock:
            priced = invoice_period(self._snapshot(tenant), self.out, self.store, month)
            invoices, errors = priced.invoices, list(priced.errors)
            if finalize:
                done, prepare = [], self.prepare(tenant)
                for draft in invoices:
                    try:
                        done.append(self.store.finalize(tenant, draft.id, prepare=self._ahead(prepare, draft)))
                    except Exception as e:  # noqa: BLE001 - the drafts before it stay finalized: say so, go on
                        errors.append(
                            RunError(
                                subscription=draft.subscription,
                                code=getattr(e, "code", "internal"),
                                message=f"invoice {draft.id} was saved as a draft but could not be finalized: {e}",
                            )
                        )
                        done.append(self.store.get(tenant, draft.id))
                invoices = done
            # Drafts invoiced over whole tables are exported from their rows, unless finalizing changed them since.
            if finalize and priced.fresh is not None:
                priced.fresh.discard()
            with step("invoice_parquet"):
                warnings = self._export_invoices(tenant, None if finalize else priced.fresh)
        if finalize:
            self._collected(tenant, [i for i in invoices if i.status == "open"])
        return InvoiceRun(
            period=month,
            invoices=invoices,
            errors=errors,
            warnings=warnings,
            fees_in_advance=priced.fees_in_advance,
            usage_in_arrears=priced.usage_in_arrears,
        )

    def preview(self, tenant: str, customer: str, as_of: datetime) -> list[Invoice]:
        """The customer's next invoices with the usage so far, and the tax they would carry (an estimate)."""
        with self.lock:
            upcoming = upcoming_invoices(self._snapshot(tenant), self.out, self.store, customer, as_of)
        return [self.taxes.estimate(invoice, as_of) for invoice in upcoming]

    def thresholds(self, tenant: str, as_of: datetime) -> InvoiceRun:
        """Issues the threshold invoices due at ``as_of``; ``period`` in the answer is the month of ``as_of``."""
        with self.lock:
            snapshot = self._snapshot(tenant)
            table = snapshot.subscription_table  # not a million subscription objects on every scheduled export
            if "threshold" not in table.columns or not table.get_column("threshold").is_not_null().any():
                return InvoiceRun(period=f"{as_of:%Y-%m}", invoices=[])
            priced = bill_thresholds(snapshot, self.out, self.store, as_of, self.prepare(tenant, as_of))
            warnings = self._export_invoices(tenant) if priced.invoices else []
        self._collected(tenant, priced.invoices)
        return InvoiceRun(period=f"{as_of:%Y-%m}", invoices=priced.invoices, errors=priced.errors, warnings=warnings)

    def recognize(
        self,
        tenant: str,
        through: date,
        now: datetime | None = None,
        progress: Callable[[CloseStep], None] | None = None,
    ) -> Close:
        """The month-end close: revenue recognized through the end of ``through`` (:mod:`meter.money.revenue`)."""
        products: dict[str, str] = {}
        for product in sorted(self.catalog.list_products(tenant), key=lambda p: p.id):
            for meter in product.meters:
                products.setdefault(meter, product.id)
        settings = self.catalog.get_revenue_settings(tenant)
        with self.lock:
            snapshot = self._snapshot(tenant)
            return recognize(self.store, snapshot, self.out, settings, through, products, now, progress)

    def finalize(self, tenant: str, invoice_id: str) -> tuple[Invoice, list[RunWarning]]:
        prepare, draft = self.prepare(tenant), self.store.get(tenant, invoice_id)
        if draft.status == "draft":  # else the store refuses it, saying why, with nothing asked of a provider
            prepare = self._ahead(prepare, draft)
        final = self.store.finalize(tenant, invoice_id, prepare=prepare)
        warnings = self._export_after_write(tenant)
        if final.collection == "automatic" and final.status == "open" and self.collect is not None:
            self._collected(tenant, [final])
            final = self.store.get(tenant, invoice_id)  # paid, when the charge went through
        return final, warnings

    def issue(
        self, invoice: Invoice, records: dict[str, msgspec.Struct], now: datetime | None = None
    ) -> tuple[Invoice | None, list[RunWarning]]:
        """Issues ``invoice`` finalized at once with ``records`` (:meth:`InvoiceStore.issue`), then collects it.

        ``None`` when an invoice of that id exists already (nothing is written).
        """
        final = self.store.issue(invoice, now, self.prepare(invoice.tenant, now), records)
        if final is None:
            return None, []
        warnings = self._export_after_write(invoice.tenant)
        if final.collection == "automatic" and final.status == "open" and self.collect is not None:
            self._collected(invoice.tenant, [final])
            final = self.store.get(invoice.tenant, final.id)  # paid, when the charge went through
        return final, warnings

    def void(self, tenant: str, invoice_id: str) -> tuple[Invoice, list[RunWarning]]:
        void = self.store.void(tenant, invoice_id)
        return void, self._export_after_write(tenant)

    def credit(self, tenant: str, invoice_id: str, amount: Decimal, reason: str) -> tuple[CreditNote, list[RunWarning]]:
        note = self.store.credit(tenant, invoice_id, amount, reason, tax=credit_note_tax)
        return note, self._export_after_write(tenant)

    def invoice_document(self, tenant: str, invoice_id: str) -> tuple[bytes, str]:
        """A finalized invoice's PDF and its SHA-256, as stored at finalization; a draft has none (``draft_invoice``).

        An invoice finalized before documents existed gets its PDF now, once, from what it holds now.
        """
        invoice = self.store.get(tenant, invoice_id)
        if invoice.status == "draft":
            raise Conflict(
                f"invoice {invoice_id!r} is a draft: its document is made when it is finalized", code="draft_invoice"
            )
        return self.store.issue_document(tenant, "invoice", invoice_id, lambda: self.documents.invoice(invoice))

    def credit_note_document(self, tenant: str, number: str) -> tuple[bytes, str]:
        """A credit note's PDF and its SHA-256, as stored when it was issued."""
        note = next((n for n in self.store.credit_notes(tenant) if n.number == number), None)
        if note is None:
            raise NotFound(f"credit note {number!r} was not found", code="not_found")
        invoice = self.store.get(tenant, note.invoice)
        return self.store.issue_document(
            tenant, "credit_note", number, lambda: self.documents.credit_note(invoice, note)
        )

    def _export_after_write(self, tenant: str) -> list[RunWarning]:
        with self.lock:
            return self._export_invoices(tenant)

    def _export_invoices(self, tenant: str, fresh: Fresh | None = None) -> list[RunWarning]:
        """Refreshes the tenant's invoices export, at best (lock held).

        Refreshes the tenant's invoices export (lock held); a failure is a warning, never an error: what was
        written stands, and the next write or export writes the files again.
        """
        try:
            export_invoices(self.store, [tenant], self.out, {tenant: fresh} if fresh is not None else None)
        except Exception as e:  # noqa: BLE001 - the export is derived; it must never undo or hide the write
            message = (
                f"the change was saved, but the invoices export under {invoices_root(self.out)} could not be "
                f"refreshed ({type(e).__name__}: {e}); the next invoicing call or export retries it"
            )
            print(f"meter: tenant {tenant!r}: {message}", file=sys.stderr, flush=True)
            return [RunWarning(code="export_failed", message=message)]
        return []

    def _snapshot(self, tenant: str) -> Snapshot:
        # Called with the lock held. Raw events too: percentages charged per event read them.
        with step("export_usage"):
            export_usage(self.engine, [tenant], self.out)
        with step("export_events"):
            export_events(self.engine, [tenant], self.out)
        with step("export_catalog"):
            tables = refresh_catalog(self.catalog, self.engine, tenant, self.out)
        with step("snapshot"):  # from the tables written, not read back
            return snapshot_of(tenant, tables)
