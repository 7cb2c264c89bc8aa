"""The invoice store (rocksdict, ``<data>/invoices``): invoices and credit notes through their lifecycle, and numbering.

Keys: ``invoice/<tenant>/<id>`` (an :class:`~meter.billing.invoices.Invoice` as JSON; a subscription's invoice ids
start with its id, so its invoices are one prefix scan), ``credit_note/<tenant>/<number>``, and
``counter/<tenant>/<kind>`` (the last number taken of ``invoice``, ``credit_note``, as decimal text).

Numbering belongs to this store alone: nothing else writes a counter or an ``INV-``/``CN-`` number, and no number is
taken outside the write that stores what it numbers.

Money: the store computes no amount but a credit note's, which must already be a whole number of the currency's minor
unit (``5`` in USD is stored as ``5.00``; ``5.001`` is refused, never rounded). Invoices arrive rounded (each line
half to even to the minor unit, totals sums of lines: :mod:`meter.billing.invoicing`).

Concurrency and durability: every write that changes an invoice's status or takes a number (finalize, void, credit
note, saving a draft) runs under one lock per tenant and writes the invoice (or credit note) and its number counter
in one synced rocksdict write batch. Numbers thus never repeat and have no gaps, even across a crash, and the credit
notes of an invoice never add up to more than its total. Values are checked against what the Parquet export holds
(``decimal128(38, 9)``) before they are stored, so a stored invoice can always be exported.

The store never computes an invoice; it checks what it is given (:func:`meter.billing.invoices.check_invoice`) and
refuses a transition the lifecycle does not allow (``invalid_state``, ``stale_draft``).
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from itertools import islice
from typing import overload

import msgspec
from rocksdict import WriteBatch, WriteOptions

from meter.billing.invoices import CreditNote, Invoice, Status, check_credit_amount, check_invoice
from meter.catalog.kv import Store, scan
from meter.exceptions import InvalidInput, NotFound

__all__ = ["InvoiceStore", "StoredInvoices"]


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
        The drafts' values must be exportable (:mod:`meter.billing.batch` writes only such values).

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
