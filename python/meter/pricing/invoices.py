"""Invoices, their lifecycle, and where they are kept (rocksdict, ``<data>/invoices``).

Lifecycle: a **draft** is recomputed by every invoicing run until it is **finalized**, which numbers it
(``INV-000001``, sequential per tenant, never reused) and makes it immutable; a finalized invoice can be **voided**
(it then no longer counts as billed) or corrected by **credit notes** (``CN-000001``), never edited.

What has been billed is read from finalized invoices: each usage or fee line carries the ``key`` of what it bills
(subscription, price, service period), so a later run bills only the difference: the rest of a cycle after a
threshold invoice, or late usage as a prior-period adjustment.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from decimal import Decimal
from typing import Literal

import msgspec
from rocksdict import Rdict, WriteBatch, WriteOptions

from meter.catalog.kv import scan
from meter.exceptions import InvalidInput, NotFound

__all__ = ["CreditNote", "CreditNoteBody", "Invoice", "InvoiceLine", "InvoiceRunBody", "InvoiceStore", "LineDetail"]

Status = Literal["draft", "finalized", "void"]
LineKind = Literal["recurring", "usage", "adjustment", "commit", "shortfall", "discount", "credit"]


class LineDetail(msgspec.Struct, omit_defaults=True):
    """One priced component of a line: a tier, a matrix cell, a package count, a percentage."""

    component: str
    units: Decimal
    unit_price: Decimal
    subtotal: Decimal
    tier: int | None = None
    combination: str | None = None
    flat_fee: Decimal | None = None


class InvoiceLine(msgspec.Struct):
    kind: LineKind
    description: str
    amount: Decimal
    period_start: datetime
    period_end: datetime
    #: What the line bills, for what is billed later: ``subscription|price|version|start|end``.
    key: str | None = None
    price: str | None = None
    #: The plan version whose price the line bills.
    version: int | None = None
    model: str | None = None
    meter: str | None = None
    quantity: Decimal | None = None
    #: The amount rated for the whole ``key`` now; ``amount`` is it minus what finalized invoices billed already.
    rated: Decimal | None = None
    details: list[LineDetail] = []
    #: How to list the events behind the line.
    events: str | None = None
    #: The commit or credit a ``credit`` line draws on.
    grant: str | None = None


class Invoice(msgspec.Struct):
    id: str
    tenant: str
    customer: str
    subscription: str
    currency: str
    reason: Literal["cycle", "threshold"]
    period_start: datetime
    period_end: datetime
    issued_at: datetime
    lines: list[InvoiceLine]
    subtotal: Decimal
    total: Decimal
    status: Status = "draft"
    number: str | None = None
    finalized_at: datetime | None = None
    voided_at: datetime | None = None


class CreditNote(msgspec.Struct):
    id: str
    number: str
    invoice: str
    amount: Decimal
    reason: str
    created_at: datetime


class InvoiceRunBody(msgspec.Struct, forbid_unknown_fields=True):
    #: The month whose cycles are invoiced, YYYY-MM.
    period: str
    finalize: bool = False


class CreditNoteBody(msgspec.Struct, forbid_unknown_fields=True):
    amount: Decimal
    reason: str


class InvoiceStore:
    """Keys: ``invoice/<tenant>/<id>``, ``credit_note/<tenant>/<number>``, ``counter/<tenant>/<kind>``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._db = Rdict(os.fspath(path))

    def close(self) -> None:
        self._db.close()

    def get(self, tenant: str, invoice_id: str) -> Invoice:
        raw = self._db.get(f"invoice/{tenant}/{invoice_id}".encode())
        if raw is None:
            raise NotFound(f"no invoice {invoice_id!r}")
        return msgspec.json.decode(raw, type=Invoice)

    def list(self, tenant: str) -> list[Invoice]:
        return list(scan(self._db, f"invoice/{tenant}/".encode(), Invoice))

    def credit_notes(self, tenant: str) -> list[CreditNote]:
        return list(scan(self._db, f"credit_note/{tenant}/".encode(), CreditNote))

    def save_draft(self, invoice: Invoice) -> bool:
        """Stores a recomputed draft; ``False`` (nothing written) when that invoice is already finalized or void."""
        key = f"invoice/{invoice.tenant}/{invoice.id}".encode()
        raw = self._db.get(key)
        if raw is not None and msgspec.json.decode(raw, type=Invoice).status != "draft":
            return False
        self._db[key] = msgspec.json.encode(invoice)
        return True

    def finalize(self, tenant: str, invoice_id: str, now: datetime | None = None) -> Invoice:
        invoice = self.get(tenant, invoice_id)
        if invoice.status != "draft":
            raise InvalidInput(f"invoice {invoice_id!r} is {invoice.status}; only a draft can be finalized",
                               code="invalid_state")
        counter, n = self._next(tenant, "invoice")
        final = msgspec.structs.replace(invoice, status="finalized", number=f"INV-{n:06d}",
                                        finalized_at=now or datetime.now(timezone.utc))
        self._write(counter, (f"invoice/{tenant}/{invoice_id}", msgspec.json.encode(final)))
        return final

    def void(self, tenant: str, invoice_id: str, now: datetime | None = None) -> Invoice:
        invoice = self.get(tenant, invoice_id)
        if invoice.status != "finalized":
            raise InvalidInput(f"invoice {invoice_id!r} is {invoice.status}; only a finalized invoice can be voided "
                               "(a draft is simply recomputed)", code="invalid_state")
        void = msgspec.structs.replace(invoice, status="void", voided_at=now or datetime.now(timezone.utc))
        self._db[f"invoice/{tenant}/{invoice_id}".encode()] = msgspec.json.encode(void)
        return void

    def credit(self, tenant: str, invoice_id: str, amount: Decimal, reason: str,
               now: datetime | None = None) -> CreditNote:
        """A credit note against a finalized invoice; all credit notes of an invoice never exceed its total."""
        invoice = self.get(tenant, invoice_id)
        if invoice.status != "finalized":
            raise InvalidInput(f"invoice {invoice_id!r} is {invoice.status}; credit notes go against finalized "
                               "invoices", code="invalid_state")
        credited = sum((n.amount for n in self.credit_notes(tenant) if n.invoice == invoice_id), Decimal(0))
        if amount <= 0 or credited + amount > invoice.total:
            raise InvalidInput(f"a credit note must be above 0 and at most what is left to credit on "
                               f"{invoice.number} ({invoice.total - credited} {invoice.currency})",
                               code="invalid_credit_note")
        counter, n = self._next(tenant, "credit_note")
        number = f"CN-{n:06d}"
        note = CreditNote(id=number, number=number, invoice=invoice_id, amount=amount, reason=reason,
                          created_at=now or datetime.now(timezone.utc))
        self._write(counter, (f"credit_note/{tenant}/{number}", msgspec.json.encode(note)))
        return note

    def _next(self, tenant: str, kind: str) -> tuple[tuple[str, bytes], int]:
        """The next number of a kind, and the counter's new value to write with what it numbers."""
        key = f"counter/{tenant}/{kind}"
        raw = self._db.get(key.encode())
        n = (int(raw) if raw is not None else 0) + 1
        return (key, str(n).encode()), n

    def _write(self, *entries: tuple[str, bytes]) -> None:
        # One atomic, synced batch: a number is used exactly when the counter says so, even across a crash.
        batch = WriteBatch()
        for key, value in entries:
            batch.put(key.encode(), value)
        options = WriteOptions()
        options.sync = True
        self._db.write(batch, options)
