"""The close: revenue recognized through a day, posted to the ledger exactly once per line and day range.

A close through day ``D`` (in the tenant's reporting zone, :class:`~meter.catalog.revenue.RevenueSettings`) brings
every line's recognized amount to what it has earned by the end of ``D`` (the instant ``T``, local midnight after
``D``), and posts the difference. A run through a later day than the last close is done as one step per month end
in between, then ``D``: each step is a month's (or a part of one), so revenue lands in the month it was earned.

What a line has earned by ``T`` (its *target*), by its :func:`~meter.money.ledger.treatment`:

- ``ratable`` (fees, their adjustments, shortfalls, discounts): :func:`~meter.money.revenue.schedule.earned_through`
  its service period by day (0 once its invoice is void: a void reverses what was recognized);
- ``usage``: the usage consumed, not the line: each usage key (subscription, price, version, cycle) earns what its
  usage before ``T`` rates at (:func:`meter.billing.invoicing.consumption`), invoiced or not. What is consumed and
  not invoiced is unbilled revenue; the invoice moves it to the receivable;
- ``commit``: a prepaid commit is deferred until usage draws it down (its drawdown lines); what is left when it
  expires is breakage (``at_expiry``), or stays deferred (``none``: refundable credit);
- ``immediate`` (promotional credits) and credit notes reduce revenue when their entry is posted (finalization, the
  note): the close only lists them in the rows, for the reports.

Exactly once: each source (a line, a usage key, a grant, a credit note) keeps what it has recognized (its cursor);
a step posts ``target - cursor`` and moves the cursor, in the **same synced write** as the journal entries
(``revenue_recognized:<D>/<currency>``, ``breakage:<D>/<currency>``, each with ``effective`` = ``D``) and the step's
rows, with the tenant's invoice lock held throughout. Running a close twice posts nothing the second time; a crash
leaves the step written whole or not at all.

Bounded: a step reads the invoices finalized, voided or credited since the last close (``revenue_due/``, written by
the store with the entry that changed them) and those still earning (``revenue_open/``), never the whole history
(the first close of a tenant reads every invoice once). Usage is rated for the cycles that overlap the step.

Keys (in the invoice store, under ``<tenant>``):

=====================================  ==========================================================================
``revenue_close/<tenant>``             the last close: its day and when it was posted
``revenue_open/<tenant>/<invoice>``    an invoice with a fee still earning, or a prepaid commit not yet expired
``revenue_cursor/<tenant>/<source>``   what a source has recognized (decimal text); sources: ``line:<invoice>/<n>``,
                                       ``usage:<key>``, ``breakage:<grant>``, ``note:<number>``
``revenue_rows/<tenant>/<D>``          the step's rows (Arrow IPC): what each source recognized, and where
=====================================  ==========================================================================

Money: targets are rounded half to even to the minor unit where they are derived (a month's share, a rated key);
differences of rounded figures need no rounding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pyarrow as pa

from meter.billing.invoices import BILLED, CreditNote, Invoice, InvoiceLine, RunError
from meter.billing.invoicing import consumption
from meter.billing.keys import ChargeKey, CommitKey, GrantKey, parse_line_key
from meter.billing.store import Change, InvoiceStore
from meter.catalog.revenue import RevenueSettings
from meter.exceptions import InvalidInput
from meter.lake.catalog import Snapshot
from meter.money import ledger
from meter.money.ledger import JournalEntry
from meter.money.revenue.days import midnight
from meter.money.revenue.schedule import earned_through, monthly
from meter.pricing.money import round_to_minor_unit

__all__ = [
    "ROW_SCHEMA",
    "Close",
    "CloseStep",
    "Recognized",
    "closes",
    "last_close",
    "read_rows",
    "recognize",
    "row_days",
]

_ZERO = Decimal(0)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MONEY: pa.DataType = pa.decimal128(38, 9)
#: One row per source and step: what it recognized in ``month``, and what it belongs to (for the reports).
_ROW_FIELDS: list[tuple[str, pa.DataType]] = [
    ("month", pa.string()),  # YYYY-MM, reporting zone
    ("through", pa.date32()),  # the close's day
    ("kind", pa.string()),  # fee, usage, breakage, promotional_credit, credit_note
    ("source", pa.string()),
    ("currency", pa.string()),
    ("amount", _MONEY),
    ("customer", pa.string()),
    ("subscription", pa.string()),
    ("plan", pa.string()),
    ("price", pa.string()),
    ("meter", pa.string()),
    ("product", pa.string()),
    ("invoice", pa.string()),
    ("invoice_month", pa.string()),  # YYYY-MM the invoice was finalized (reporting zone); null: not invoiced
]
ROW_SCHEMA = pa.schema(_ROW_FIELDS)


class Recognized(msgspec.Struct):
    """What a step recognized in one currency: fees earned by day, usage consumed, prepaid commits expired unused."""

    currency: str
    fees: Decimal
    usage: Decimal
    breakage: Decimal


class CloseStep(msgspec.Struct):
    """One step of a close: the day closed, what it recognized, its rows and the journal entries it posted."""

    through: date
    recognized: list[Recognized]
    rows: int
    entries: list[str]


class Close(msgspec.Struct):
    """What ``POST /v1/revenue/recognize`` did: its steps, and the day revenue is now recognized through."""

    through: date
    timezone: str
    steps: list[CloseStep]
    #: Subscriptions whose usage could not be rated (their usage is recognized at the next close that can).
    errors: list[RunError] = []


class _Last(msgspec.Struct):
    through: date
    posted_at: datetime


def last_close(store: InvoiceStore, tenant: str) -> date | None:
    """The last day revenue was recognized through; None before the first close."""
    raw = store.raw(f"revenue_close/{tenant}")
    return None if raw is None else msgspec.json.decode(raw, type=_Last).through


def closes(store: InvoiceStore, tenant: str) -> Iterator[date]:
    """The days closed so far, in order."""
    for key, _ in store.raw_items(f"revenue_rows/{tenant}/"):
        yield date.fromisoformat(key.rsplit("/", 1)[1])


def read_rows(store: InvoiceStore, tenant: str, start: date | None = None, end: date | None = None) -> pa.Table:
    """The rows of the closes through days in ``[start, end)`` (all when None), one table."""
    tables = [ROW_SCHEMA.empty_table()]
    prefix = f"revenue_rows/{tenant}/"
    for key, raw in store.raw_items(prefix, start=prefix + start.isoformat() if start else None):
        if end is not None and key[len(prefix) :] >= end.isoformat():
            break
        tables.append(pa.ipc.open_stream(raw).read_all())
    return pa.concat_tables(tables)


def row_days(through: date, last: date | None, first: date) -> list[date]:
    """The days a close through ``through`` steps through.

    Each month end after ``last`` (or from ``first``, before the first close), then ``through`` itself.
    """
    days = []
    month = (last + timedelta(days=1) if last else first).replace(day=1)
    while True:
        end = _next_month(month) - timedelta(days=1)
        if end >= through:
            break
        if last is None or end > last:
            days.append(end)
        month = _next_month(month)
    return [*days, through]


def recognize(
    store: InvoiceStore,
    snapshot: Snapshot,
    out: Path,
    settings: RevenueSettings,
    through: date,
    products: Mapping[str, str],
    now: datetime | None = None,
    progress: Callable[[CloseStep], None] | None = None,
) -> Close:
    """Recognizes the tenant's revenue through the end of ``through`` (see the module); a second run posts nothing."""
    tenant, tz = snapshot.tenant, settings.timezone
    now = now or datetime.now(UTC)
    today = now.astimezone(ZoneInfo(tz)).date()
    if through >= today:
        raise InvalidInput(
            f"'through' must be a day that has ended in the reporting time zone {tz} (before {today.isoformat()}); "
            f"got {through.isoformat()}: revenue is recognized for service already given",
            code="invalid_through",
        )
    last = last_close(store, tenant)
    if last is not None and through <= last:
        return Close(through=last, timezone=tz, steps=[])
    first = _first_day(store, snapshot, tz) if last is None else None
    close = Close(through=through, timezone=tz, steps=[])
    for day in row_days(through, last, first) if first is not None else [through]:
        step, errors = _Step(store, snapshot, out, settings, day, now, products).run()
        close.steps.append(step)
        close.errors += errors
        if progress is not None:
            progress(step)
    return close


def _first_day(store: InvoiceStore, snapshot: Snapshot, tz: str) -> date | None:
    """The first day anything can be earned: the earliest subscription start or invoiced service period."""
    starts = [sub.start for sub in snapshot.subscriptions]
    for _, status, raw in store.statuses(snapshot.tenant):
        if status != "draft":
            starts.append(msgspec.json.decode(raw, type=_Period).period_start)
    return min(starts).astimezone(ZoneInfo(tz)).date() if starts else None


class _Period(msgspec.Struct):
    period_start: datetime


@dataclass
class _Step:
    """One day's close (see the module): read what changed, compute the targets, write it all in one batch."""

    store: InvoiceStore
    snapshot: Snapshot
    out: Path
    settings: RevenueSettings
    day: date
    now: datetime
    #: meter -> the product it prices.
    products: Mapping[str, str]
    rows: list[dict[str, object]] = field(default_factory=list)
    #: (currency) -> [fees, usage, breakage]
    sums: dict[str, list[Decimal]] = field(default_factory=lambda: defaultdict(lambda: [_ZERO, _ZERO, _ZERO]))

    def __post_init__(self) -> None:
        self.tenant, self.tz = self.snapshot.tenant, self.settings.timezone
        self.zone = ZoneInfo(self.tz)
        self.end = midnight(self.day + timedelta(days=1), self.zone)  # T: the end of the day closed
        self.month = f"{self.day:%Y-%m}"
        last = self.store.raw(f"revenue_close/{self.tenant}")
        self.last = None if last is None else msgspec.json.decode(last, type=_Last)
        self.plans = {sub.id: sub.plan for sub in self.snapshot.subscriptions}
        #: Usage keys billed by the invoices read: (cycle start and end, currency, where they belong).
        self.billed: dict[str, tuple[datetime, datetime, str, dict[str, object]]] = {}
        #: Cycles (subscription, start) whose usage was billed again: rated again unless settled.
        self.again: set[tuple[str, datetime]] = set()
        self.notes: dict[str, list[CreditNote]] = defaultdict(list)
        for note in self.store.credit_notes(self.tenant):
            self.notes[note.invoice].append(note)

    def run(self) -> tuple[CloseStep, list[RunError]]:
        start = midnight(self.last.through + timedelta(days=1), self.zone) if self.last else _EPOCH
        # The tenant's lock is held throughout: the marks deleted are exactly those of the invoices read.
        with self.store.transaction(self.tenant, self.now) as change:
            if self.last is None:  # the first close reads every invoice once
                due = [invoice_id for invoice_id, status, _ in self.store.statuses(self.tenant) if status != "draft"]
            else:
                due = [key.rsplit("/", 1)[1] for key, _ in self.store.raw_items(f"revenue_due/{self.tenant}/")]
            opened = [key.rsplit("/", 1)[1] for key, _ in self.store.raw_items(f"revenue_open/{self.tenant}/")]
            for invoice_id in dict.fromkeys([*due, *opened]):
                change.delete(f"revenue_due/{self.tenant}/{invoice_id}")
                self._invoice(change, self.store.get(self.tenant, invoice_id))

            def settled(subscription: str, cycle: datetime) -> bool:
                return change.get(_settled_key(self.tenant, subscription, cycle)) is not None

            # Usage: a cycle whose usage its cycle invoice billed earned what was billed for it (late usage billed
            # since included); any other cycle earned what its usage so far rates at.
            used, errors = consumption(self.snapshot, self.out, start, self.end, frozenset(self.again), settled)
            for found in used:
                line, sub = found.line, found.sub
                where = self._where(sub.customer, sub.id, line.price, line.meter, None, None)
                self._post(change, f"usage:{line.key}", line.amount, "usage", found.currency, self.month, where)
            for key, (cycle, cycle_end, currency, where) in self.billed.items():
                if cycle_end <= self.end and settled(str(where["subscription"]), cycle):
                    target = _decimal(change.get(f"revenue_billed/{self.tenant}/{key}"))
                    self._post(change, f"usage:{key}", target, "usage", currency, self.month, where)
            entries = self._entries(change)
            if self.rows:
                change.put(f"revenue_rows/{self.tenant}/{self.day.isoformat()}", _ipc(self.rows))
            change.put(f"revenue_close/{self.tenant}", _Last(self.day, self.now))
        summary = [
            Recognized(cur, *(round_to_minor_unit(x, cur) for x in s)) for cur, s in sorted(self.sums.items()) if any(s)
        ]
        return CloseStep(self.day, summary, len(self.rows), [e.id for e in entries]), errors

    def _usage_billed(self, change: Change, invoice: Invoice, n: int, line: InvoiceLine, net: Decimal) -> None:
        """A usage line: what it bills counts toward its key's billed amount; a cycle invoice settles its cycle."""
        key = parse_line_key(line.key) if line.key else None
        if not isinstance(key, ChargeKey) or line.key is None:
            return
        billed = invoice.status in BILLED
        source = f"revenue_cursor/{self.tenant}/billed:{invoice.id}/{n}"
        before, now = _decimal(change.get(source)), net if billed else _ZERO
        if now != before:
            change.put(source, str(now).encode())
            total = f"revenue_billed/{self.tenant}/{line.key}"
            change.put(total, str(_decimal(change.get(total)) + now - before).encode())
        if invoice.reason == "cycle" and invoice.usage_start == key.cycle_start:
            mark = _settled_key(self.tenant, invoice.subscription, key.cycle_start)
            if billed:
                change.put(mark, b"")
            else:
                change.delete(mark)
        where = self._where(invoice.customer, invoice.subscription, line.price, line.meter, None, None)
        self.billed[line.key] = (key.cycle_start, key.cycle_end, invoice.currency, where)
        self.again.add((invoice.subscription, key.cycle_start))

    def _invoice(self, change: Change, invoice: Invoice) -> None:
        """Brings the invoice's fee lines, commits, promotional credits and credit notes to their targets."""
        billed = invoice.status in BILLED
        still_open = False
        where = self._where(invoice.customer, invoice.subscription, None, None, invoice.id, invoice.finalized_at)
        prepaid: frozenset[str] | None = None
        for n, (line, net) in enumerate(zip(invoice.lines, ledger.net_line_amounts(invoice), strict=True), start=1):
            if line.kind == "credit" and prepaid is None:
                prepaid = self.store.prepaid_grants(self.tenant, invoice.subscription)
            how = ledger.treatment(line, prepaid or frozenset())
            at = {**where, "price": line.price, "meter": line.meter, "product": self._product(line.meter)}
            if how == "ratable":
                target = self._earned(line.period_start, line.period_end, net, invoice.currency) if billed else _ZERO
                self._post(change, f"line:{invoice.id}/{n}", target, "fee", invoice.currency, self.month, at)
                still_open |= billed and line.period_end > self.end
            elif how == "immediate":
                target = net if billed else _ZERO
                month = self._month_of(invoice.finalized_at if billed else invoice.voided_at)
                self._post(change, f"line:{invoice.id}/{n}", target, "promotional_credit", invoice.currency, month, at)
            elif how == "commit":
                still_open |= billed and line.period_end > self.end
                self._breakage(change, invoice, line, at)
            elif how == "usage":
                self._usage_billed(change, invoice, n, line, net)
                still_open |= billed and line.period_end > self.end  # billed before a close reached its period
            elif how == "drawdown" and line.grant is not None:
                self._breakage_of_grant(change, invoice.subscription, line.grant)
        for note in self.notes.get(invoice.id, []):
            target = -(note.amount - (note.tax or _ZERO)) if invoice.status != "void" else _ZERO
            month = self._month_of(note.created_at if invoice.status != "void" else invoice.voided_at)
            self._post(change, f"note:{note.number}", target, "credit_note", invoice.currency, month, where)
        if still_open:
            change.put(f"revenue_open/{self.tenant}/{invoice.id}", b"")
        else:
            change.delete(f"revenue_open/{self.tenant}/{invoice.id}")

    def _breakage_of_grant(self, change: Change, subscription: str, grant: str) -> None:
        """A prepaid commit drawn again: its breakage, when it has expired, is what is left of it now."""
        for invoice in self.store.of_subscription(self.tenant, subscription):
            for line in invoice.lines:
                if line.kind == "commit" and line.key and _grant_of(line.key) == grant:
                    where = self._where(invoice.customer, subscription, None, None, invoice.id, invoice.finalized_at)
                    self._breakage(change, invoice, line, where)

    def _breakage(self, change: Change, invoice: Invoice, commit: InvoiceLine, where: dict[str, object]) -> None:
        """A prepaid commit that expired by the step's end: what is left (bought minus drawn) is breakage.

        Unless the tenant's credit is refundable (``breakage: none``), or its invoice was voided (nothing bought).
        """
        grant = _grant_of(commit.key) if commit.key else None
        if grant is None or commit.period_end > self.end:
            return
        bought = drawn = _ZERO
        for other in self.store.of_subscription(self.tenant, invoice.subscription):
            if other.status not in BILLED:
                continue
            for line, net in zip(other.lines, ledger.net_line_amounts(other), strict=True):
                if line.kind == "commit" and line.key is not None and _grant_of(line.key) == grant:
                    bought += net
                elif line.kind == "credit" and line.grant == grant:
                    drawn -= net
        target = bought - drawn if self.settings.breakage == "at_expiry" else _ZERO
        self._post(change, f"breakage:{grant}", target, "breakage", invoice.currency, self.month, where)

    def _post(
        self,
        change: Change,
        source: str,
        target: Decimal,
        kind: str,
        currency: str,
        month: str,
        where: dict[str, object],
    ) -> None:
        """Moves ``source``'s cursor to ``target``; the difference is a row.

        The difference is also part of this step's journal entry, but for credit notes and promotional credits
        (their own entries posted them).
        """
        key = f"revenue_cursor/{self.tenant}/{source}"
        before = _decimal(change.get(key))
        delta = target - before
        if delta == 0:
            return
        change.put(key, str(target).encode())
        self.rows.append(
            {
                "month": month,
                "through": self.day,
                "kind": kind,
                "source": source,
                "currency": currency,
                "amount": delta,
                **where,
            }
        )
        column = {"fee": 0, "usage": 1, "breakage": 2}.get(kind)
        if column is not None:
            self.sums[currency][column] += delta

    def _entries(self, change: Change) -> list[JournalEntry]:
        posted = []
        for currency, (fees, usage, broken) in sorted(self.sums.items()):
            if fees or usage:
                entry = ledger.revenue_recognized(self.tenant, currency, self.day, self.now, fees, usage)
                posted.append(change.post(entry))
            if broken:
                entry = ledger.revenue_recognized(self.tenant, currency, self.day, self.now, broken, _ZERO, True)
                posted.append(change.post(entry))
        return posted

    def _earned(self, start: datetime, end: datetime, amount: Decimal, currency: str) -> Decimal:
        if end <= self.end:
            return amount
        if start >= self.end:
            return _ZERO
        return earned_through(monthly(amount, start, end, self.tz, currency), self.end, self.tz, currency)

    def _where(
        self,
        customer: str,
        subscription: str,
        price: str | None,
        meter: str | None,
        invoice: str | None,
        finalized_at: datetime | None,
    ) -> dict[str, object]:
        return {
            "customer": customer,
            "subscription": subscription,
            "plan": self.plans.get(subscription),
            "price": price,
            "meter": meter,
            "product": self._product(meter),
            "invoice": invoice,
            "invoice_month": self._month_of(finalized_at) if finalized_at else None,
        }

    def _product(self, meter: str | None) -> str | None:
        return self.products.get(meter) if meter is not None else None

    def _month_of(self, at: datetime | None) -> str:
        return f"{(at or self.now).astimezone(self.zone):%Y-%m}"


def _settled_key(tenant: str, subscription: str, cycle: datetime) -> str:
    return f"revenue_settled/{tenant}/{subscription}/{cycle.astimezone(UTC).isoformat()}"


def _decimal(raw: bytes | None) -> Decimal:
    return Decimal(raw.decode()) if raw is not None else _ZERO


def _grant_of(commit_key: str) -> str | None:
    key = parse_line_key(commit_key)
    return GrantKey(key.subscription, key.commit).text() if isinstance(key, CommitKey) else None


def _ipc(rows: Iterable[dict[str, object]]) -> bytes:
    sink = pa.BufferOutputStream()
    table = pa.Table.from_pylist(list(rows), schema=ROW_SCHEMA)
    with pa.ipc.new_stream(sink, ROW_SCHEMA, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)
