"""Invoices, their lifecycle, and where they are kept (rocksdict, ``<data>/invoices``).

Lifecycle: a **draft** is recomputed by every invoicing run until it is **finalized**, which numbers it
(``INV-000001``, sequential and gapless per tenant, never reused) and makes it immutable; a finalized invoice can be
**voided** (it then no longer counts as billed: re-running its period issues a new draft, ``<id>-r2``, which gets a new
number when finalized) or corrected by **credit notes** (``CN-000001``), never edited. A draft is finalized only
while the subscription's finalized invoices are those it was computed against (its ``basis``); otherwise it is
**stale** (``stale_draft``): it could bill again what another invoice billed since, and its period must be re-run.

What has been billed is read from finalized invoices: each usage or fee line carries the ``key`` of what it bills
(subscription, price, version, cycle), so a later run bills only the difference: the rest of a cycle after a
threshold invoice, late usage, or a plan change or cancellation after the fees in advance were finalized, as
adjustment lines that name the invoices they correct.

Concurrency and durability: every write that changes an invoice's status or takes a number (finalize, void, credit
note, saving a draft) runs under one lock per tenant and writes the invoice (or credit note) and its number counter
in one synced rocksdict write batch. Numbers thus never repeat and have no gaps, even across a crash, and the credit
notes of an invoice never add up to more than its total. Values are checked against what the Parquet export holds
(``decimal128(38, 9)``) before they are stored, so a stored invoice can always be exported.
"""

from __future__ import annotations

import builtins
import os
import shutil
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Context, Decimal
from itertools import islice
from pathlib import Path
from typing import Literal, overload

import msgspec
from rocksdict import WriteBatch, WriteOptions

from meter.catalog.kv import Store, scan
from meter.exceptions import InvalidInput, NotFound
from meter.pricing.money import minor_units

__all__ = [
    "CreditNote",
    "CreditNoteBody",
    "Fresh",
    "Invoice",
    "InvoiceLine",
    "InvoiceRun",
    "InvoiceRunBody",
    "InvoiceStore",
    "LineDetail",
    "RunError",
    "RunWarning",
    "ServicePeriod",
    "StoredInvoices",
    "check_credit_amount",
    "check_exportable",
    "check_invoice",
]

Status = Literal["draft", "finalized", "void"]
LineKind = Literal["recurring", "usage", "adjustment", "commit", "shortfall", "discount", "credit"]


class LineDetail(msgspec.Struct, omit_defaults=True):
    """One priced component of a line.

    One priced component of a line: a tier, a matrix cell, a package count, a percentage; or the step up to the
    price's ``minimum`` or down to its ``maximum`` (``component`` ``minimum``/``maximum``, ``units`` 1 and
    ``unit_price`` = ``subtotal`` = the step). The details of a line add up exactly to what its key rates at
    (``rated``, before rounding to the minor unit).
    """

    component: str
    units: Decimal
    unit_price: Decimal
    subtotal: Decimal
    tier: int | None = None
    #: The tier's bounds ``[tier_from, tier_to)``; ``tier_to`` is absent for the last, unbounded tier.
    tier_from: Decimal | None = None
    tier_to: Decimal | None = None
    combination: str | None = None
    flat_fee: Decimal | None = None
    #: A matrix combination's units covered by the free allowance.
    free_units: Decimal | None = None
    #: Percentage fees raised to ``min_fee`` or cut to ``max_fee`` (per event, or the period's one).
    raised_to_min_fee: int | None = None
    cut_to_max_fee: int | None = None


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
    #: Whether the service period is billed in advance (a recurring fee ``in_advance``) or in arrears (usage).
    timing: Literal["in_advance", "in_arrears"] | None = None
    model: str | None = None
    meter: str | None = None
    #: What the line adds: the quantity rated now minus the quantity finalized invoices billed for the key.
    quantity: Decimal | None = None
    #: The amount rated for the whole ``key`` now; ``amount`` is ``rated - billed``.
    rated: Decimal | None = None
    #: What finalized invoices billed for the key already (``corrects`` names them), and the quantity they billed.
    billed: Decimal | None = None
    billed_quantity: Decimal | None = None
    corrects: list[str] = []
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
    #: The month (``YYYY-MM``, customer's time zone) the cycle starts in: the run's ``period``.
    period: str | None = None
    #: The service period whose usage the invoice bills in arrears (``[usage_start, usage_end)``) and the month it
    #: starts in: ``GET /v1/invoices?usage_period=2026-11`` lists the invoices that bill November's usage.
    usage_start: datetime | None = None
    usage_end: datetime | None = None
    usage_period: str | None = None
    #: The invoice this one reissues after it was voided.
    reissues: str | None = None
    #: The subscription's finalized invoices this one was computed against (what they billed is not billed again). A
    #: draft is finalized only while they are still exactly the subscription's finalized invoices: otherwise it is
    #: stale (it could bill twice what another invoice billed since) and its period must be re-run.
    basis: list[str] | None = None


class StoredInvoices(Sequence[Invoice]):
    """The invoices of a run, read from the store when asked: a million of them are never in memory at once.

    Entries are invoices, or the ids of invoices stored (read and decoded on access). Compares equal to a list of the
    same invoices.
    """

    def __init__(self, store: InvoiceStore, tenant: str, entries: builtins.list[Invoice | str]) -> None:
        self._store, self._tenant, self._entries = store, tenant, entries

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> Invoice: ...

    @overload
    def __getitem__(self, index: slice) -> builtins.list[Invoice]: ...

    def __getitem__(self, index: int | slice) -> Invoice | builtins.list[Invoice]:
        if isinstance(index, slice):
            return [self._load(entry) for entry in self._entries[index]]
        return self._load(self._entries[index])

    def __iter__(self) -> Iterator[Invoice]:
        return (self._load(entry) for entry in self._entries)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (builtins.list, tuple, StoredInvoices)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    # Unhashable, as a list is (it defines __eq__); typeshed declares __hash__ a method, so None needs the ignore.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StoredInvoices({len(self)} invoices)"

    def _load(self, entry: Invoice | str) -> Invoice:
        return entry if isinstance(entry, Invoice) else self._store.get(self._tenant, entry)


@dataclass(frozen=True)
class Fresh:
    """Rows of the invoices export for invoices just written, so that the export need not decode them from the store.

    ``directory`` holds them as ``invoices.parquet`` and ``invoice_lines.parquet``, in the export's schemas and in
    the order of the ids (the store's), a row group per chunk written; ``ids`` are the invoices they hold.
    :func:`meter.lake.invoices.export_invoices` moves them into place, or merges them with what it reads from the
    store, and removes the directory (so does :meth:`discard` when they are not used).
    """

    directory: Path
    ids: frozenset[str]

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class CreditNote(msgspec.Struct):
    id: str
    number: str
    invoice: str
    amount: Decimal
    reason: str
    created_at: datetime


class ServicePeriod(msgspec.Struct):
    """``[start, end)``, UTC."""

    start: datetime
    end: datetime


class RunError(msgspec.Struct):
    """A subscription an invoicing run could not invoice, and why; the others were invoiced."""

    subscription: str
    code: str
    message: str


class RunWarning(msgspec.Struct):
    """Something that went wrong after what was asked for was done and stored (such as refreshing the export)."""

    code: str
    message: str


class InvoiceRun(msgspec.Struct):
    """The answer of an invoicing run.

    The answer of an invoicing run: the invoices computed (drafts, or finalized when asked), the subscriptions
    that could not be invoiced, and the service periods the run covers: the fees in advance of the cycles starting in
    ``period``, and the usage of the cycles before them, billed in arrears.
    """

    period: str
    #: A list, or the run's :class:`StoredInvoices` (read from the store when iterated).
    invoices: Sequence[Invoice]
    errors: list[RunError] = []
    warnings: list[RunWarning] = []
    fees_in_advance: ServicePeriod | None = None
    usage_in_arrears: ServicePeriod | None = None


class InvoiceRunBody(msgspec.Struct, forbid_unknown_fields=True):
    #: The month whose cycles are invoiced, YYYY-MM.
    period: str
    finalize: bool = False


class CreditNoteBody(msgspec.Struct, forbid_unknown_fields=True):
    amount: Decimal
    reason: str


#: What the invoices export holds (``decimal128(38, 9)``): every stored amount and quantity fits it.
EXPORT_SCALE = 9
EXPORT_DIGITS = 38
_EXPORT_LIMIT = Decimal(10) ** (EXPORT_DIGITS - EXPORT_SCALE)
# Room for every digit of a value below the limit (the default context keeps 28).
_CONTEXT = Context(prec=80)


def check_exportable(value: Decimal | None, what: str) -> None:
    """Raises ``InvalidInput`` unless ``value`` is finite and fits the export's ``decimal128(38, 9)`` exactly."""
    if value is None:
        return
    if (
        not value.is_finite()
        or abs(value) >= _EXPORT_LIMIT
        or value != value.quantize(Decimal(1).scaleb(-EXPORT_SCALE), context=_CONTEXT)
    ):
        raise InvalidInput(
            f"{what} is {value}: amounts and quantities must be finite, below 10^29 and have at most "
            f"{EXPORT_SCALE} decimals",
            code="invalid_amount",
        )


def check_invoice(invoice: Invoice) -> None:
    """Raises ``InvalidInput`` unless every amount and quantity of ``invoice`` fits the export."""
    for name in ("subtotal", "total"):
        check_exportable(getattr(invoice, name), f"invoice {invoice.id}: {name}")
    for i, line in enumerate(invoice.lines, start=1):
        for name in ("amount", "quantity", "rated", "billed", "billed_quantity"):
            check_exportable(getattr(line, name), f"invoice {invoice.id} line {i}: {name}")


def check_credit_amount(amount: Decimal, currency: str) -> Decimal:
    """A credit note's amount, checked.

    A credit note's amount: positive, finite, with at most ``currency``'s minor-unit digits; returned at exactly
    that many digits (``5`` in USD is ``5.00``).
    """
    digits = minor_units(currency)
    quantum = Decimal(1).scaleb(-digits)
    if not amount.is_finite() or amount <= 0 or abs(amount) >= _EXPORT_LIMIT:
        raise InvalidInput(
            f"a credit note's amount must be a positive decimal amount of {currency}; got {amount}",
            code="invalid_credit_note",
        )
    if amount != amount.quantize(quantum, context=_CONTEXT):
        raise InvalidInput(
            f"a credit note's amount must have at most {digits} decimals, {currency}'s minor unit "
            f"({quantum} {currency}); got {amount}",
            code="invalid_credit_note",
        )
    return amount.quantize(quantum, context=_CONTEXT)


class _Head(msgspec.Struct):
    """What reading an invoice's status needs: the rest of its JSON is skipped, not decoded."""

    status: Status = "draft"


class InvoiceStore(Store):
    """Keys: ``invoice/<tenant>/<id>``, ``credit_note/<tenant>/<number>``, ``counter/<tenant>/<kind>``.

    One store per data directory and process; its writes serialise per tenant (see the module doc).
    """

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False) -> None:
        super().__init__(path, read_only)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def lock(self, tenant: str) -> threading.Lock:
        """The lock that serialises the tenant's writes (a ``with`` block may hold it across several calls)."""
        with self._locks_lock:
            return self._locks.setdefault(tenant, threading.Lock())

    def get(self, tenant: str, invoice_id: str) -> Invoice:
        raw = self._db.get(f"invoice/{tenant}/{invoice_id}".encode())
        if raw is None:
            raise NotFound(f"no invoice {invoice_id!r}")
        return msgspec.json.decode(raw, type=Invoice)

    def list(self, tenant: str) -> list[Invoice]:
        return list(scan(self._db, f"invoice/{tenant}/".encode(), Invoice))

    def of_subscription(self, tenant: str, subscription: str) -> Iterator[Invoice]:
        """The subscription's invoices (their ids start with its id)."""
        for invoice in scan(self._db, f"invoice/{tenant}/{subscription}-".encode(), Invoice):
            if invoice.subscription == subscription:
                yield invoice

    def credit_notes(self, tenant: str) -> builtins.list[CreditNote]:
        return list(scan(self._db, f"credit_note/{tenant}/".encode(), CreditNote))

    def save_draft(self, invoice: Invoice) -> Invoice | None:
        """Stores a recomputed draft and returns it; ``None`` (nothing written) when that invoice is finalized.

        A void invoice is reissued: the draft goes under the next id ``<id>-r2``, ``<id>-r3``... that is not void.
        """
        check_invoice(invoice)
        with self.lock(invoice.tenant):
            draft = self._reissue(invoice)
            if draft is not None:
                self._write((f"invoice/{invoice.tenant}/{draft.id}", msgspec.json.encode(draft)))
            return draft

    def save_drafts(
        self, tenant: str, drafts: Iterable[tuple[str, bytes]], chunk: int = 20_000, logged: bool = True
    ) -> Iterator[tuple[str, str, bytes]]:
        """:meth:`save_draft` of many drafts, given as ``(id, JSON of the Invoice)``, in large synced write batches.

        Yields ``(id, stored id, JSON)`` of each draft stored (the id it was stored under is ``<id>-r2``... when it
        reissues a void invoice); a draft whose invoice is finalized is skipped. Each chunk is checked and written
        under the tenant's lock, in one synced write: as durable as one write per draft, without a sync per draft.
        The drafts' values must be exportable (:mod:`meter.pricing.batch` writes only such values).

        With ``logged=False`` the drafts skip the write-ahead log: they are durable once :meth:`flush` returns (a crash
        before then loses drafts, which a run computes again, and never a finalized invoice, which is logged).
        """
        options = WriteOptions()
        if logged:
            options.sync = True
        else:  # the caller flushes them (see flush): a million drafts are then written once, not twice
            options.disable_wal = True  # type: ignore[method-assign,assignment]  # a property, not the stub's method
        pending = iter(drafts)
        while part := list(islice(pending, chunk)):
            with self.lock(tenant):
                stored: list[bytes | None] = self._db.get(  # type: ignore[assignment]  # a list for a list of keys
                    [f"invoice/{tenant}/{i}".encode() for i, _ in part]
                )
                batch, saved = WriteBatch(), []
                for (base, value), raw in zip(part, stored, strict=True):
                    invoice_id = base
                    if raw is not None:
                        status = msgspec.json.decode(raw, type=_Head).status
                        if status == "finalized":
                            continue
                        if status == "void":  # rare: the way save_draft reissues it
                            draft = self._reissue(msgspec.json.decode(value, type=Invoice))
                            if draft is None:
                                continue
                            invoice_id, value = draft.id, msgspec.json.encode(draft)
                    batch.put(f"invoice/{tenant}/{invoice_id}".encode(), value)
                    saved.append((base, invoice_id, value))
                if saved:
                    self._db.write(batch, options)
            yield from saved

    def flush(self) -> None:
        """Makes every write durable, those that skipped the write-ahead log included."""
        self._db.flush(wait=True)

    def _reissue(self, invoice: Invoice) -> Invoice | None:
        """The draft that reissues ``invoice``'s void predecessors (lock held); None when one is finalized."""
        base, n, reissues = invoice.id, 1, None
        while True:
            invoice_id = base if n == 1 else f"{base}-r{n}"
            raw = self._db.get(f"invoice/{invoice.tenant}/{invoice_id}".encode())
            status = None if raw is None else msgspec.json.decode(raw, type=_Head).status
            if status == "finalized":
                return None
            if status != "void":
                return msgspec.structs.replace(invoice, id=invoice_id, reissues=reissues)
            reissues, n = invoice_id, n + 1

    def stored_except(self, tenant: str, skip: frozenset[str] | set[str]) -> Iterator[bytes]:
        """The JSON of the tenant's invoices whose ids are not in ``skip``, in id order; those are not even read."""
        prefix = f"invoice/{tenant}/".encode()
        for key in self._db.keys(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                break
            if key[len(prefix) :].decode() not in skip and (value := self._db.get(key)) is not None:
                yield value

    def statuses(self, tenant: str) -> Iterator[tuple[str, Status, bytes]]:
        """Every invoice of the tenant as ``(id, status, JSON)``, reading only the status of each."""
        prefix = f"invoice/{tenant}/".encode()
        for key, value in self._db.items(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                break
            yield key[len(prefix) :].decode(), msgspec.json.decode(value, type=_Head).status, value

    def issue(self, invoice: Invoice, now: datetime | None = None) -> Invoice | None:
        """Saves ``invoice`` finalized (numbered) at once, in one write.

        A threshold invoice. ``None`` when an invoice of that id exists already, or when it is stale (see
        :meth:`finalize`): the next run computes it again.
        """
        check_invoice(invoice)
        with self.lock(invoice.tenant):
            if self._db.get(f"invoice/{invoice.tenant}/{invoice.id}".encode()) is not None or self._stale(invoice):
                return None
            return self._finalize(invoice, now)

    def finalize(self, tenant: str, invoice_id: str, now: datetime | None = None) -> Invoice:
        with self.lock(tenant):
            invoice = self.get(tenant, invoice_id)
            if invoice.status != "draft":
                raise InvalidInput(
                    f"invoice {invoice_id!r} is {invoice.status}; only a draft can be finalized", code="invalid_state"
                )
            if (stale := self._stale(invoice)) is not None:
                raise InvalidInput(
                    f"draft {invoice_id!r} is stale: {stale} since it was computed; re-run its period "
                    f"({invoice.period or f'{invoice.period_start:%Y-%m}'}) and finalize the new draft",
                    code="stale_draft",
                )
            return self._finalize(invoice, now)

    def _stale(self, invoice: Invoice) -> str | None:
        """Why ``invoice`` no longer holds (lock held): a finalized invoice of its subscription came or went."""
        if invoice.basis is None:
            return None
        now = sorted(
            i.id for i in self.of_subscription(invoice.tenant, invoice.subscription) if i.status == "finalized"
        )
        if now == sorted(invoice.basis):
            return None
        came, went = sorted(set(now) - set(invoice.basis)), sorted(set(invoice.basis) - set(now))
        return "; ".join([*(f"invoice {i} was finalized" for i in came), *(f"invoice {i} was voided" for i in went)])

    def _finalize(self, invoice: Invoice, now: datetime | None) -> Invoice:
        counter, n = self._next(invoice.tenant, "invoice")
        final = msgspec.structs.replace(
            invoice, status="finalized", number=f"INV-{n:06d}", finalized_at=now or datetime.now(UTC)
        )
        self._write(counter, (f"invoice/{invoice.tenant}/{invoice.id}", msgspec.json.encode(final)))
        return final

    def void(self, tenant: str, invoice_id: str, now: datetime | None = None) -> Invoice:
        with self.lock(tenant):
            invoice = self.get(tenant, invoice_id)
            if invoice.status != "finalized":
                raise InvalidInput(
                    f"invoice {invoice_id!r} is {invoice.status}; only a finalized invoice can be "
                    "voided (a draft is simply recomputed)",
                    code="invalid_state",
                )
            void = msgspec.structs.replace(invoice, status="void", voided_at=now or datetime.now(UTC))
            self._write((f"invoice/{tenant}/{invoice_id}", msgspec.json.encode(void)))
            return void

    def credit(
        self, tenant: str, invoice_id: str, amount: Decimal, reason: str, now: datetime | None = None
    ) -> CreditNote:
        """A credit note against a finalized invoice; all credit notes of an invoice never exceed its total."""
        with self.lock(tenant):
            invoice = self.get(tenant, invoice_id)
            if invoice.status != "finalized":
                raise InvalidInput(
                    f"invoice {invoice_id!r} is {invoice.status}; credit notes go against finalized invoices",
                    code="invalid_state",
                )
            amount = check_credit_amount(amount, invoice.currency)
            credited = sum((n.amount for n in self.credit_notes(tenant) if n.invoice == invoice_id), Decimal(0))
            if credited + amount > invoice.total:
                raise InvalidInput(
                    f"a credit note must be at most what is left to credit on {invoice.number} "
                    f"({invoice.total - credited} {invoice.currency}); got {amount}",
                    code="invalid_credit_note",
                )
            counter, n = self._next(tenant, "credit_note")
            number = f"CN-{n:06d}"
            note = CreditNote(
                id=number,
                number=number,
                invoice=invoice_id,
                amount=amount,
                reason=reason,
                created_at=now or datetime.now(UTC),
            )
            self._write(counter, (f"credit_note/{tenant}/{number}", msgspec.json.encode(note)))
            return note

    def _next(self, tenant: str, kind: str) -> tuple[tuple[str, bytes], int]:
        """The next number of a kind, and the counter's new value to write with what it numbers (lock held)."""
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
