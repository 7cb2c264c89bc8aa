"""The invoice store (rocksdict, ``<data>/invoices``): invoices, credit notes and every money record written with them.

Invoices and credit notes through their lifecycle, their numbering, and what is written with them: journal entries,
outgoing events, customers' credit balances.

Keys (``<tenant>`` is the key's tenant; a subscription's invoice ids start with its id, so its invoices are one
prefix scan):

=======================================  ===============================================================
``invoice/<tenant>/<id>``                an :class:`~meter.billing.invoices.Invoice` as JSON
``credit_note/<tenant>/<number>``        a :class:`~meter.billing.invoices.CreditNote`
``counter/<tenant>/<kind>``              the last number taken of a kind (``invoice``, ``journal``, ``outbox``...)
``journal/<tenant>/<seq:012d>``          a :class:`~meter.money.ledger.JournalEntry` (``journal_id/``,
                                         ``journal_invoice/``, ``journal_customer/`` index them by cause,
                                         invoice and customer)
``outbox/<tenant>/<seq:012d>``           a :class:`~meter.money.events.Event` to deliver
``revenue_due/<tenant>/<invoice>``       an invoice finalized, voided or credited since revenue recognition last
                                         ran: its :class:`~meter.money.revenue.due.Due` record, written with the
                                         entry that changed it (recognition reads and deletes it)
``revenue_first/<tenant>``               the earliest service period invoiced (where a first close starts)
``document/<tenant>/<kind>/<id>``        the PDF of a finalized invoice (``invoice/<id>``) or a credit note
                                         (``credit_note/<number>``), written with the finalization or the note
                                         (:mod:`meter.documents`), never again; ``document_sha256/...`` its SHA-256
``ledger_total/<tenant>/<customer>/``   an account's running debits and credits, per currency: ``<cur>/<account>``
                                         (``<customer>`` empty for the tenant's own accounts)
``meta/schema``                          the layout's version (2: statuses ``open``/``paid``..., the ledger)
=======================================  ===============================================================

Other money records (payments, endpoints, deliveries...) live here too, under their own prefixes, written through
:meth:`InvoiceStore.transaction` by their owners in :mod:`meter.money`.

Atomicity (design.md §8): every write goes through :meth:`InvoiceStore.transaction`, which holds the tenant's lock
and writes the state change, the numbers it takes, its journal entry (checked balanced, refused if its cause already
posted one) and its outgoing event in **one synced rocksdict write batch**. Numbers thus never repeat and have no
gaps, an entry or event exists exactly when its change does, even across a crash, and every account's running total
(a customer's credit balance among them) is changed only by the entries that post to it, in their batch: the trial
balance and customers' balances are read from the totals, not from the whole journal.

Numbering belongs to this store alone: nothing else writes a counter or an ``INV-``/``CN-`` number.

Money: the store computes what settling an invoice leaves (what was due, paid, credited, remaining) and a credit
note's split between what was owed and credit balance; it never rounds: invoices arrive rounded (each line half to
even to the minor unit, totals sums of lines: :mod:`meter.billing.invoicing`; tax: :mod:`meter.money.tax`), and a
credit note's amount must already be a whole number of the minor unit (``5.001`` USD is refused). Values are checked
against what the Parquet export holds (``decimal128(38, 9)``) before they are stored.

The store never prices an invoice; it checks what it is given (:func:`meter.billing.invoices.check_invoice`) and
refuses a transition the lifecycle does not allow (``invalid_state``, ``stale_draft``).
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from hashlib import sha256
from itertools import islice, takewhile
from operator import itemgetter
from typing import Any, Literal, Protocol, overload

import msgspec
from rocksdict import Rdict, WriteBatch, WriteOptions

from meter.billing.invoices import BILLED, CreditNote, Invoice, Status, check_credit_amount, check_invoice
from meter.billing.keys import CommitKey, GrantKey, parse_line_key
from meter.catalog.kv import Store, scan
from meter.exceptions import Conflict, InvalidInput, NotFound, StorageError
from meter.money import ledger
from meter.money.events import Event, EventType, event_id
from meter.money.ledger import JournalEntry
from meter.money.revenue import due
from meter.pricing.money import minor_units

__all__ = ["AlreadyPosted", "Change", "InvoiceStore", "StoredInvoices", "invoice_summary", "settle"]

#: What a change to an invoice may prepare before it is finalized (tax it, set its collection), inside the lock.
Prepare = Callable[[Invoice], Invoice]
DocumentKind = Literal["invoice", "credit_note"]


class Documents(Protocol):
    """Renders the documents the store writes with the state they show (:class:`meter.documents.InvoiceDocuments`)."""

    def invoice(self, invoice: Invoice) -> bytes: ...

    def credit_note(self, invoice: Invoice, note: CreditNote) -> bytes: ...


_SCHEMA = b"2"
#: The entries that change what an invoice earns: recognition (:mod:`meter.money.revenue`) looks at it again.
REVENUE_CHANGES = frozenset({"invoice_finalized", "invoice_voided", "credit_note"})
_ZERO = Decimal(0)


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


class _RawHead(msgspec.Struct):
    """An invoice's status as stored by any schema (``finalized`` before schema 2), unchecked."""

    status: str = "draft"


class AlreadyPosted(AssertionError):
    """A second journal entry for the same cause: a bug the store refuses (the whole change is written or nothing)."""


def _summary_type() -> type[msgspec.Struct]:
    """An invoice's fields but its lines, as raw JSON, leaving out those unset (null, empty lists) when encoded."""
    fields = [
        (f.name, msgspec.Raw, msgspec.Raw(b"[]" if f.default_factory is list else b"null"))
        for f in msgspec.structs.fields(Invoice)
        if f.name not in ("lines", "line_taxes", "basis")
    ]
    return msgspec.defstruct("InvoiceSummary", fields, omit_defaults=True)


_SUMMARY = msgspec.json.Decoder(_summary_type())


def invoice_summary(invoice: Invoice | bytes) -> Any:
    """An invoice as an event carries it: its fields but the lines, and only those set.

    A million drafts' events stay small; ``GET /v1/invoices/{id}`` has the rest. Given the invoice's JSON (as a run
    stores drafts), its fields are copied as they are, not decoded.
    """
    return _SUMMARY.decode(invoice if isinstance(invoice, bytes) else msgspec.json.encode(invoice))


class Change:
    """One atomic write of a tenant's money state: puts, numbers taken, journal entries and outgoing events.

    Made by :meth:`InvoiceStore.transaction` (the tenant's lock held), written by it in one synced batch.
    """

    def __init__(self, db: Rdict, tenant: str, now: datetime) -> None:
        self.tenant, self.now = tenant, now
        self._db = db
        self._puts: dict[bytes, bytes | None] = {}
        self._counters: dict[str, int] = {}
        self.posted: list[JournalEntry] = []
        self.emitted: list[Event] = []
        #: Invoices whose revenue record is written with the change (their entries changed what they earn).
        self._due: set[str] = set()
        #: Prefixes whose keys in the store are deleted by the change (its own puts under them are kept).
        self._cleared: list[bytes] = []

    def get(self, key: str) -> bytes | None:
        """The value of ``key`` as this change leaves it (its own puts first, then the store)."""
        raw = key.encode()
        if raw in self._puts:
            return self._puts[raw]
        if any(raw.startswith(prefix) for prefix in self._cleared):
            return None
        value = self._db.get(raw)
        return value if isinstance(value, bytes) else None

    def put(self, key: str, value: msgspec.Struct | bytes) -> None:
        self._puts[key.encode()] = value if isinstance(value, bytes) else msgspec.json.encode(value)

    def delete(self, key: str) -> None:
        self._puts[key.encode()] = None

    def clear(self, prefix: str) -> None:
        """Deletes every key of the store under ``prefix`` (in one range deletion, however many there are)."""
        self._cleared.append(prefix.encode())

    def number(self, kind: str) -> int:
        """The tenant's next number of ``kind`` (1, 2, ...); its counter is written with the change."""
        if kind not in self._counters:
            raw = self._db.get(f"counter/{self.tenant}/{kind}".encode())
            self._counters[kind] = int(raw) if raw is not None else 0
        self._counters[kind] += 1
        return self._counters[kind]

    def post(self, entry: JournalEntry) -> JournalEntry:
        """Writes ``entry`` (balanced, its cause not posted before) and moves the credit balances it touches."""
        ledger.check_balanced(entry)
        if entry.tenant != self.tenant:
            raise AlreadyPosted(f"journal entry {entry.id} of tenant {entry.tenant} posted in {self.tenant}'s change")
        by_cause = f"journal_id/{self.tenant}/{entry.id}"
        if self.get(by_cause) is not None:
            raise AlreadyPosted(f"journal entry {entry.id} was posted already")
        entry = msgspec.structs.replace(entry, seq=self.number("journal"))
        self.put(f"journal/{self.tenant}/{entry.seq:012d}", entry)
        self.put(by_cause, str(entry.seq).encode())
        for index, of in (("invoice", entry.invoice), ("customer", entry.customer)):
            if of is not None:
                self.put(f"journal_{index}/{self.tenant}/{of}/{entry.seq:012d}", b"")
        if entry.invoice is not None and entry.kind in REVENUE_CHANGES:
            self._due.add(entry.invoice)
        for line in entry.lines:
            key = _total_key(self.tenant, line.customer, entry.currency, line.account)
            debit, credit = _total(self.get(key))
            self.put(key, msgspec.json.encode((debit + line.debit, credit + line.credit)))
        self.posted.append(entry)
        return entry

    def balance(self, customer: str, currency: str) -> Decimal:
        """The customer's credit balance in ``currency``, as this change leaves it."""
        debit, credit = _total(self.get(_total_key(self.tenant, customer, currency, "customer_credit")))
        return credit - debit

    def emit(self, type_: EventType, data: Any) -> Event:
        """Writes an outgoing event about this change to the outbox."""
        seq = self.number("outbox")
        event = Event(
            id=event_id(self.tenant, seq), seq=seq, tenant=self.tenant, type=type_, created_at=self.now, data=data
        )
        self.put(f"outbox/{self.tenant}/{seq:012d}", event)
        self.emitted.append(event)
        return event

    def batch(self) -> WriteBatch:
        self._write_due()
        batch = WriteBatch()
        for prefix in self._cleared:  # first: the change's own puts under it are kept
            batch.delete_range(prefix, _after(prefix))
        for kind, n in self._counters.items():
            batch.put(f"counter/{self.tenant}/{kind}".encode(), str(n).encode())
        for key, value in self._puts.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        return batch

    def _write_due(self) -> None:
        """The revenue record of each invoice whose entries changed what it earns, as this change leaves it."""
        for invoice_id in sorted(self._due):
            raw = self.get(f"invoice/{self.tenant}/{invoice_id}")
            assert raw is not None, f"an entry of invoice {invoice_id} was posted without it"
            invoice = msgspec.json.decode(raw, type=Invoice)
            prepaid: frozenset[str] = frozenset()
            if any(line.kind == "credit" for line in invoice.lines):
                others = scan(self._db, f"invoice/{self.tenant}/{invoice.subscription}-".encode(), Invoice)
                mine = [i for i in others if i.subscription == invoice.subscription and i.id != invoice.id]
                prepaid = _prepaid_grants(i for i in [*mine, invoice] if i.status in BILLED)
            record = due.record(invoice, prepaid)
            self.put(f"revenue_due/{self.tenant}/{invoice_id}", due.encode(record))
            first = self.get(f"revenue_first/{self.tenant}")
            if first is None or int(first) > record.first:
                self.put(f"revenue_first/{self.tenant}", str(record.first).encode())
        self._due.clear()


def _after(prefix: bytes) -> bytes:
    """The first key after every key under ``prefix`` (which ends in a byte below 0xff, such as ``/``)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _total_key(tenant: str, customer: str | None, currency: str, account: str) -> str:
    return f"ledger_total/{tenant}/{customer or ''}/{currency}/{account}"


def _total(raw: bytes | None) -> tuple[Decimal, Decimal]:
    """An account's running (debit, credit)."""
    return msgspec.json.decode(raw, type=tuple[Decimal, Decimal]) if raw is not None else (_ZERO, _ZERO)


def settle(
    invoice: Invoice, amount: Decimal, by: Literal["payment", "credit"], at: datetime
) -> tuple[Invoice, Decimal]:
    """``invoice`` once ``amount`` paid or credited is applied to it, and the part of ``amount`` that settled it.

    The part that reduced what it asked for; the rest is an overpayment, or a credit note past what was owed, which
    becomes credit balance. An open invoice
    whose remaining amount reaches zero is ``paid``; an uncollectible one stays so (its receivable was written off).
    """
    remaining = invoice.amount_remaining or _ZERO
    applied = min(amount, remaining) if amount > 0 else _ZERO
    changes: dict[str, Any] = {"amount_remaining": remaining - applied}
    if by == "payment":
        changes["amount_paid"] = (invoice.amount_paid or _ZERO) + amount
    else:
        changes["amount_credited"] = (invoice.amount_credited or _ZERO) + applied
    if invoice.status == "open" and remaining - applied == 0:
        changes.update(status="paid", paid_at=at)
    return msgspec.structs.replace(invoice, **changes), applied


def _prepaid_grants(invoices: Iterable[Invoice]) -> frozenset[str]:
    """The grants (``<subscription>|<commit>``) of the prepaid commits these invoices bought."""
    bought = set()
    for invoice in invoices:
        for line in invoice.lines:
            if line.kind == "commit" and line.key is not None:
                key = parse_line_key(line.key)
                if isinstance(key, CommitKey):
                    bought.add(GrantKey(key.subscription, key.commit).text())
    return frozenset(bought)


def _zero(currency: str) -> Decimal:
    return Decimal(0).scaleb(-minor_units(currency))


class InvoiceStore(Store):
    """Invoices, credit notes and the money records written with them (see the module doc for the keys).

    One store per data directory and process; its writes serialise per tenant (see the module doc).
    """

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False) -> None:
        super().__init__(path, read_only)
        #: Renders each finalized invoice's and credit note's PDF, written with it (set by ``Invoicer``); None: none.
        self.documents: Documents | None = None
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        if self._db.get(b"meta/schema") != _SCHEMA:
            if not read_only:
                self._migrate()
            elif next(self._keys(b"invoice/"), None) is not None:
                self.close()
                raise StorageError(
                    f"the invoice store {os.fspath(path)} was written by an earlier version of meter: it is brought "
                    "up to date when opened for writing, which a read-only (degraded) start cannot do; free the "
                    "disk (or make it writable) and start again",
                    code="migration_needed",
                )

    def lock(self, tenant: str) -> threading.Lock:
        """The lock that serialises the tenant's writes (a ``with`` block may hold it across several calls)."""
        with self._locks_lock:
            return self._locks.setdefault(tenant, threading.Lock())

    @contextmanager
    def transaction(self, tenant: str, now: datetime | None = None, logged: bool = True) -> Iterator[Change]:
        """A :class:`Change` of the tenant's state, written in one synced batch when the block ends without error.

        The tenant's lock is held for the whole block. With ``logged=False`` the batch skips the write-ahead log (it
        is durable once :meth:`flush` returns): only for what can be computed again (drafts).
        """
        with self.lock(tenant):
            change = Change(self._db, tenant, now or datetime.now(UTC))
            yield change
            options = WriteOptions()
            if logged:
                options.sync = True
            else:
                options.disable_wal = True  # type: ignore[method-assign,assignment]  # a property, not the stub's method
            self._db.write(change.batch(), options)

    def get(self, tenant: str, invoice_id: str) -> Invoice:
        raw = self._db.get(f"invoice/{tenant}/{invoice_id}".encode())
        if raw is None:
            raise NotFound(f"no invoice {invoice_id!r}")
        return msgspec.json.decode(raw, type=Invoice)

    def list(self, tenant: str) -> builtins.list[Invoice]:
        return builtins.list(scan(self._db, f"invoice/{tenant}/".encode(), Invoice))

    def of_subscription(self, tenant: str, subscription: str) -> Iterator[Invoice]:
        """The subscription's invoices (their ids start with its id)."""
        for invoice in scan(self._db, f"invoice/{tenant}/{subscription}-".encode(), Invoice):
            if invoice.subscription == subscription:
                yield invoice

    def credit_notes(self, tenant: str) -> builtins.list[CreditNote]:
        return builtins.list(scan(self._db, f"credit_note/{tenant}/".encode(), CreditNote))

    def prepaid_grants(self, tenant: str, subscription: str) -> frozenset[str]:
        """The grants of the prepaid commits the subscription's billed invoices bought (what its credit lines drew)."""
        return _prepaid_grants(i for i in self.of_subscription(tenant, subscription) if i.status in BILLED)

    def journal(self, tenant: str, after: int = 0) -> Iterator[JournalEntry]:
        """The tenant's journal entries in the order they were posted, from sequence number ``after + 1``."""
        start = f"journal/{tenant}/{after + 1:012d}".encode()
        yield from scan(self._db, f"journal/{tenant}/".encode(), JournalEntry, start)

    def outbox(self, tenant: str, after: int = 0) -> Iterator[Event]:
        """The tenant's outgoing events in the order they were written, from sequence number ``after + 1``."""
        yield from scan(self._db, f"outbox/{tenant}/".encode(), Event, f"outbox/{tenant}/{after + 1:012d}".encode())

    def raw(self, key: str) -> bytes | None:
        """The stored bytes of ``key``, for the money records' owners (``endpoint/``, ``delivery/``...)."""
        value = self._db.get(key.encode())
        return value if isinstance(value, bytes) else None

    def raw_many(self, keys: builtins.list[str]) -> builtins.list[bytes | None]:
        """The stored bytes of each of ``keys`` (None where there are none), in one read."""
        values = self._db[[key.encode() for key in keys]] if keys else []
        assert isinstance(values, builtins.list)
        return [value if isinstance(value, bytes) else None for value in values]

    def raw_values(self, prefix: str) -> Iterator[bytes]:
        """The values under ``prefix`` in key order (without a Python step per value: a million in a second)."""
        encoded = prefix.encode()
        under = takewhile(
            lambda item: isinstance(item[0], bytes) and item[0].startswith(encoded), self._db.items(from_key=encoded)
        )
        return map(itemgetter(1), under)

    def raw_items(self, prefix: str, start: str | None = None, backwards: bool = False) -> Iterator[tuple[str, bytes]]:
        """``(key, bytes)`` under ``prefix`` in key order, or reverse, from ``start`` (inclusive) when given."""
        encoded = prefix.encode()
        if backwards:  # from the greatest key at or before start (or under prefix)
            items = self._db.items(backwards=True, from_key=start.encode() if start else encoded + b"\xff")
        else:
            items = self._db.items(from_key=(start or prefix).encode())
        for key, value in items:
            if not isinstance(key, bytes) or not key.startswith(encoded):
                break
            yield key.decode(), value

    def balance(self, tenant: str, customer: str, currency: str) -> Decimal:
        """The customer's credit balance in ``currency`` (what overpayments and credit notes left it)."""
        debit, credit = _total(self._db.get(_total_key(tenant, customer, currency, "customer_credit").encode()))
        return credit - debit

    def posted(self, tenant: str) -> int:
        """How many journal entries the tenant has (the last sequence number taken)."""
        raw = self._db.get(f"counter/{tenant}/journal".encode())
        return int(raw) if raw is not None else 0

    def totals(self, tenant: str, customer: str | None = None) -> Iterator[ledger.AccountBalance]:
        """Every account's running total (of one customer's accounts when given), as posted so far."""
        prefix = f"ledger_total/{tenant}/{customer + '/' if customer is not None else ''}".encode()
        for key, raw in self._db.items(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                break
            who, currency, account = key.decode().split("/")[2:]
            debit, credit = _total(raw)
            yield ledger.AccountBalance(
                account=account,  # type: ignore[arg-type]  # written from an Account
                currency=currency,
                debit=debit,
                credit=credit,
                balance=debit - credit if account in ledger.NORMAL_DEBIT else credit - debit,
                customer=who or None,
            )

    def save_draft(self, invoice: Invoice) -> Invoice | None:
        """Stores a recomputed draft and returns it; ``None`` (nothing written) when that invoice is finalized.

        A void invoice is reissued: the draft goes under the next id ``<id>-r2``, ``<id>-r3``... that is not void.
        A draft stored under a new id emits ``invoice.created``.
        """
        check_invoice(invoice)
        with self.transaction(invoice.tenant) as change:
            draft = self._reissue(invoice)
            if draft is not None:
                key = f"invoice/{invoice.tenant}/{draft.id}"
                if change.get(key) is None:
                    change.emit("invoice.created", invoice_summary(draft))
                change.put(key, draft)
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
        before then loses drafts, which a run computes again, and never a finalized invoice, which is logged). Their
        ``invoice.created`` events are written with them, so a lost draft's event is lost with it and written again
        with the draft that replaces it.
        """
        pending = iter(drafts)
        while part := builtins.list(islice(pending, chunk)):
            with self.transaction(tenant, logged=logged) as change:
                stored: builtins.list[bytes | None] = self._db.get(  # type: ignore[assignment]  # a list for a list
                    [f"invoice/{tenant}/{i}".encode() for i, _ in part]
                )
                saved = []
                for (base, value), raw in zip(part, stored, strict=True):
                    invoice_id, new = base, raw is None
                    if raw is not None:
                        status = msgspec.json.decode(raw, type=_Head).status
                        if status != "draft" and status != "void":
                            continue
                        if status == "void":  # rare: the way save_draft reissues it
                            draft = self._reissue(msgspec.json.decode(value, type=Invoice))
                            if draft is None:
                                continue
                            invoice_id, value = draft.id, msgspec.json.encode(draft)
                            new = change.get(f"invoice/{tenant}/{invoice_id}") is None
                    if new:
                        change.emit("invoice.created", invoice_summary(value))
                    change.put(f"invoice/{tenant}/{invoice_id}", value)
                    saved.append((base, invoice_id, value))
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
            if status in BILLED:
                return None
            if status != "void":
                return msgspec.structs.replace(invoice, id=invoice_id, reissues=reissues)
            reissues, n = invoice_id, n + 1

    def stored_except(self, tenant: str, skip: frozenset[str] | set[str]) -> Iterator[bytes]:
        """The JSON of the tenant's invoices whose ids are not in ``skip``, in id order; those are not even read."""
        prefix = f"invoice/{tenant}/".encode()
        for key in self._keys(prefix):
            if key[len(prefix) :].decode() not in skip and (value := self._db.get(key)) is not None:
                yield value

    def statuses(self, tenant: str) -> Iterator[tuple[str, Status, bytes]]:
        """Every invoice of the tenant as ``(id, status, JSON)``, reading only the status of each."""
        prefix = f"invoice/{tenant}/".encode()
        for key, value in self._db.items(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                break
            yield key[len(prefix) :].decode(), msgspec.json.decode(value, type=_Head).status, value

    def issue(
        self,
        invoice: Invoice,
        now: datetime | None = None,
        prepare: Prepare | None = None,
        records: dict[str, msgspec.Struct] | None = None,
    ) -> Invoice | None:
        """Saves ``invoice`` finalized (numbered) at once, in one write, with ``records`` (key -> value) beside it.

        A threshold invoice, a top-up's (whose record says what it bought). ``None`` when an invoice of that id
        exists already, or when it is stale (see :meth:`finalize`): the next run computes it again.
        """
        check_invoice(invoice)
        with self.transaction(invoice.tenant, now) as change:
            if change.get(f"invoice/{invoice.tenant}/{invoice.id}") is not None or self._stale(invoice):
                return None
            change.emit("invoice.created", invoice_summary(invoice))
            for key, value in (records or {}).items():
                change.put(key, value)
            return self._finalize(change, invoice, prepare)

    def finalize(
        self, tenant: str, invoice_id: str, now: datetime | None = None, prepare: Prepare | None = None
    ) -> Invoice:
        """Numbers the draft, applies ``prepare`` (tax, collection) and the customer's credit balance, posts its entry.

        The invoice is then ``open``, or ``paid`` at once when nothing is left to pay (a zero total, or a credit
        balance that covers it).
        """
        with self.transaction(tenant, now) as change:
            invoice = self.get(tenant, invoice_id)
            if invoice.status != "draft":
                raise Conflict(f"invoice {invoice_id!r} is {invoice.status}; only a draft can be finalized")
            if (stale := self._stale(invoice)) is not None:
                raise Conflict(
                    f"draft {invoice_id!r} is stale: {stale} since it was computed; re-run its period "
                    f"({invoice.period or f'{invoice.period_start:%Y-%m}'}) and finalize the new draft",
                    code="stale_draft",
                )
            return self._finalize(change, invoice, prepare)

    def _stale(self, invoice: Invoice) -> str | None:
        """Why ``invoice`` no longer holds (lock held): a billed invoice of its subscription came or went."""
        if invoice.basis is None:
            return None
        now = sorted(i.id for i in self.of_subscription(invoice.tenant, invoice.subscription) if i.status in BILLED)
        if now == sorted(invoice.basis):
            return None
        came, went = sorted(set(now) - set(invoice.basis)), sorted(set(invoice.basis) - set(now))
        return "; ".join([*(f"invoice {i} was finalized" for i in came), *(f"invoice {i} was voided" for i in went)])

    def _finalize(self, change: Change, invoice: Invoice, prepare: Prepare | None) -> Invoice:
        if prepare is not None:
            invoice = prepare(invoice)
            check_invoice(invoice)
        numbered = msgspec.structs.replace(
            invoice, number=f"INV-{change.number('invoice'):06d}", finalized_at=change.now
        )
        billed = [i for i in self.of_subscription(invoice.tenant, invoice.subscription) if i.status in BILLED]
        final = self._opened(change, numbered, _prepaid_grants([numbered, *billed]))
        if self.documents is not None:
            self._put_document(change, "invoice", final.id, self.documents.invoice(final))
        change.put(f"invoice/{final.tenant}/{final.id}", final)
        change.emit("invoice.finalized", invoice_summary(final))
        if final.status == "paid":
            change.emit("invoice.paid", invoice_summary(final))
        return final

    def _opened(self, change: Change, invoice: Invoice, prepaid: frozenset[str]) -> Invoice:
        """A numbered invoice opened: its finalization posted, the customer's credit balance applied to it.

        ``prepaid``: the grants of the prepaid commits its subscription bought (see :func:`ledger.invoice_finalized`).
        """
        final = msgspec.structs.replace(
            invoice,
            status="open",
            tax=invoice.tax if invoice.tax is not None else _zero(invoice.currency),
            collection=invoice.collection or "send_invoice",
        )
        change.post(ledger.invoice_finalized(final, prepaid))
        owed = max(final.total, _ZERO)
        applied = min(change.balance(final.customer, final.currency), owed)
        if applied > 0:
            change.post(ledger.credit_applied(final, applied, change.now))
        final = msgspec.structs.replace(
            final,
            credit_applied=applied if applied else _zero(final.currency),
            amount_due=owed - applied,
            amount_paid=_zero(final.currency),
            amount_credited=_zero(final.currency),
            amount_remaining=owed - applied,
        )
        if final.amount_remaining == 0:
            final = msgspec.structs.replace(final, status="paid", paid_at=change.now)
        return final

    def void(self, tenant: str, invoice_id: str, now: datetime | None = None) -> Invoice:
        """Voids an open or uncollectible invoice nothing was paid on, reversing every entry it posted."""
        with self.transaction(tenant, now) as change:
            invoice = self.get(tenant, invoice_id)
            if invoice.status not in ("open", "uncollectible"):
                raise Conflict(
                    f"invoice {invoice_id!r} is {invoice.status}; only an open or uncollectible invoice can be "
                    "voided (a draft is simply recomputed; a paid one is corrected by a credit note)"
                )
            if invoice.amount_paid:
                raise Conflict(
                    f"invoice {invoice_id!r} has {invoice.amount_paid} {invoice.currency} paid on it; refund the "
                    "payments or issue a credit note instead of voiding it"
                )
            void = msgspec.structs.replace(invoice, status="void", voided_at=change.now)
            change.post(ledger.invoice_voided(void, self.posted_for(tenant, invoice_id), change.now))
            change.put(f"invoice/{tenant}/{invoice_id}", void)
            change.emit("invoice.voided", invoice_summary(void))
            return void

    def posted_for(
        self, tenant: str, invoice: str | None = None, customer: str | None = None, after: int = 0
    ) -> Iterator[JournalEntry]:
        """The journal entries posted for an invoice, or about a customer, in order (from ``after + 1``).

        Read through their index (``journal_invoice/``, ``journal_customer/``): proportional to those entries, not to
        the whole journal.
        """
        index, of = ("invoice", invoice) if invoice is not None else ("customer", customer)
        prefix = f"journal_{index}/{tenant}/{of}/".encode()
        start = prefix + f"{after + 1:012d}".encode()
        for key in self._db.keys(from_key=start):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                break
            raw = self._db.get(f"journal/{tenant}/".encode() + key[len(prefix) :])
            if raw is not None:
                yield msgspec.json.decode(raw, type=JournalEntry)

    def credit(
        self,
        tenant: str,
        invoice_id: str,
        amount: Decimal,
        reason: str,
        now: datetime | None = None,
        tax: Callable[[Invoice, CreditNote], CreditNote] | None = None,
    ) -> CreditNote:
        """A credit note against an open or paid invoice; all credit notes of an invoice never exceed its total.

        It reduces what the invoice still asks for; the rest (a note on a paid invoice) becomes the customer's credit
        balance. ``tax`` sets the tax the note carries back.
        """
        with self.transaction(tenant, now) as change:
            invoice = self.get(tenant, invoice_id)
            if invoice.status not in ("open", "paid"):
                raise Conflict(
                    f"invoice {invoice_id!r} is {invoice.status}; credit notes go against open or paid invoices"
                )
            amount = check_credit_amount(amount, invoice.currency)
            credited = sum((n.amount for n in self.credit_notes(tenant) if n.invoice == invoice_id), Decimal(0))
            if credited + amount > invoice.total:
                raise InvalidInput(
                    f"a credit note must be at most what is left to credit on {invoice.number} "
                    f"({invoice.total - credited} {invoice.currency}); got {amount}",
                    code="invalid_credit_note",
                )
            number = f"CN-{change.number('credit_note'):06d}"
            note = CreditNote(
                id=number,
                number=number,
                invoice=invoice_id,
                amount=amount,
                reason=reason,
                created_at=change.now,
                customer=invoice.customer,
                currency=invoice.currency,
            )
            if tax is not None:
                note = tax(invoice, note)
            settled, applied = settle(invoice, amount, "credit", change.now)
            change.post(ledger.credit_note_issued(invoice, note, applied))
            change.put(f"credit_note/{tenant}/{number}", note)
            if self.documents is not None:
                self._put_document(change, "credit_note", number, self.documents.credit_note(invoice, note))
            change.put(f"invoice/{tenant}/{invoice_id}", settled)
            change.emit("credit_note.created", msgspec.to_builtins(note))
            if settled.status == "paid" and invoice.status != "paid":
                change.emit("invoice.paid", invoice_summary(settled))
            return note

    @staticmethod
    def _put_document(change: Change, kind: DocumentKind, document_id: str, pdf: bytes) -> None:
        change.put(f"document/{change.tenant}/{kind}/{document_id}", pdf)
        change.put(f"document_sha256/{change.tenant}/{kind}/{document_id}", sha256(pdf).hexdigest().encode())

    def document(self, tenant: str, kind: DocumentKind, document_id: str) -> tuple[bytes, str] | None:
        """The PDF of a finalized invoice (by id) or a credit note (by number), and its SHA-256; None if none."""
        key = f"{tenant}/{kind}/{document_id}"
        pdf, digest = self.raw_many([f"document/{key}", f"document_sha256/{key}"])
        return None if pdf is None or digest is None else (pdf, digest.decode())

    def issue_document(
        self, tenant: str, kind: DocumentKind, document_id: str, render: Callable[[], bytes]
    ) -> tuple[bytes, str]:
        """The document of ``document_id``, rendered and stored now if it has none (finalized before documents).

        Written once: under the tenant's lock, a document found is returned as it is, never rendered again.
        """
        if (found := self.document(tenant, kind, document_id)) is not None:
            return found
        with self.transaction(tenant) as change:
            if (found := self.document(tenant, kind, document_id)) is not None:
                return found
            pdf = render()
            self._put_document(change, kind, document_id, pdf)
            return pdf, sha256(pdf).hexdigest()

    def _migrate(self) -> None:
        """Brings a store written before the ledger to schema 2, once, in one synced batch per tenant.

        Invoices stored ``finalized`` become ``open`` (or ``paid`` when credit notes covered them), with their
        finalization and credit notes posted to the ledger as they would be today; no event is emitted for the past.
        """
        tenants = sorted({key.split(b"/")[1].decode() for key in self._keys(b"invoice/")})
        for tenant in tenants:
            notes = self.credit_notes(tenant)
            finalized: builtins.list[Invoice] = []
            prefix = f"invoice/{tenant}/".encode()
            for key, raw in self._db.items(from_key=prefix):
                if not isinstance(key, bytes) or not key.startswith(prefix):
                    break
                if msgspec.json.decode(raw, type=_RawHead).status == "finalized":
                    stored = msgspec.json.decode(raw)
                    finalized.append(msgspec.convert({**stored, "status": "draft"}, Invoice, strict=False))
            prepaid = _prepaid_grants(finalized)
            with self.transaction(tenant) as change:
                for invoice in finalized:
                    change.now = invoice.finalized_at or invoice.issued_at
                    invoice = self._opened(change, invoice, prepaid)
                    for note in notes:
                        if note.invoice == invoice.id:
                            note = msgspec.structs.replace(note, customer=invoice.customer, currency=invoice.currency)
                            invoice, applied = settle(invoice, note.amount, "credit", note.created_at)
                            change.post(ledger.credit_note_issued(invoice, note, applied))
                            change.put(f"credit_note/{tenant}/{note.number}", note)
                    change.put(f"invoice/{tenant}/{invoice.id}", invoice)
        batch = WriteBatch()
        batch.put(b"meta/schema", _SCHEMA)
        options = WriteOptions()
        options.sync = True
        self._db.write(batch, options)

    def _keys(self, prefix: bytes) -> Iterator[bytes]:
        for key in self._db.keys(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                break
            yield key
