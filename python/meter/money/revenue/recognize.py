"""The close: revenue recognized through a day, posted to the ledger exactly once per source and day range.

A close through day ``D`` (in the tenant's reporting zone, :class:`~meter.catalog.revenue.RevenueSettings`) brings
what each source has recognized to what it has earned by the end of ``D`` (the instant ``T``, local midnight after
``D``), and posts the difference. A run through a later day than the last close is done as one step per month end
in between, then ``D``: each step is a month's (or a part of one), so revenue lands in the month it was earned.

The sources, by the :func:`~meter.money.ledger.treatment` of the lines that bill them (each a :class:`Schedule` of
the billed lines' parts):

- a **fee** (a price's key: subscription, price, version, cycle; or a keyless line such as a discount) earns the sum
  of its lines by day over the service period of the latest (:func:`~meter.money.revenue.schedule.earned_through`).
  A plan change's adjustment is a line of the same key covering the part of the cycle it now bills, so each part is
  earned over its own days; a void takes its lines out, so what they earned is reversed;
- a **usage key** earns the usage consumed before ``T``, invoiced or not: once the invoice of the next cycle bills
  the cycle in arrears (it *settles* it), what was billed for the key (late usage billed since included); before,
  what its usage so far rates at (:func:`meter.billing.invoicing.consumption`). What is consumed and not invoiced is
  unbilled revenue; the invoice moves it to the receivable;
- a **prepaid commit** is deferred until usage draws it down (its drawdown lines); what is left when it expires is
  breakage (``at_expiry``), or stays deferred (``none``: refundable credit);
- promotional credits and credit notes reduce revenue when their own entry is posted (finalization, the note): the
  close lists them in its rows (``line:<invoice>/<n>``, ``note:<number>``), for the reports.

Exactly once: each source keeps what it has recognized (its cursor); a step posts ``target - cursor`` and moves the
cursor, in the **same synced write** as the journal entries (``revenue_recognized:<D>/<currency>``,
``breakage:<D>/<currency>``, each with ``effective`` = ``D``) and the step's rows, with the tenant's invoice lock held
throughout. Running a close twice posts nothing the second time; a crash leaves a step written whole or not at all.

Bounded: a step reads the invoices finalized, voided or credited since the last close (``revenue_due/``, written by
the store with the entry that changed them) and the schedules still earning (``revenue_open/``), never the whole
history (the first close of a tenant reads every invoice once). Usage is rated only for the cycles that overlap the
step and that no invoice settled.

Keys (in the invoice store, under ``<tenant>``):

===========================================  ====================================================================
``revenue_close/<tenant>``                   the last close: its day and when it was posted
``revenue_schedule/<tenant>/<source>``       a :class:`Schedule`: the billed lines of a fee, usage key or commit
``revenue_open/<tenant>/<when>/<source>``    a schedule that needs a look at the first close reaching ``when`` (UTC):
                                             earning, or starting, ending or expiring then
``revenue_settled/<tenant>/<sub>/<cycle>``   a cycle whose usage its cycle invoice billed
``revenue_cursor/<tenant>/<source>``         what a source has recognized (decimal text)
``revenue_rows/<tenant>/<D>``                the step's rows (Arrow IPC): what each source recognized, and where
===========================================  ====================================================================

Money: targets are rounded half to even to the minor unit where they are derived (a month's share, a rated key);
differences of rounded figures need no rounding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal
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
    ("quantity", _MONEY),  # usage: the units consumed that this row's amount adds (null for anything else)
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
            touched: dict[str, Schedule] = {}
            for invoice_id in due:
                change.delete(f"revenue_due/{self.tenant}/{invoice_id}")
                self._invoice(change, self.store.get(self.tenant, invoice_id), touched)
            # The schedules open and due by now (earning, or starting, ending or expiring by the step's end).
            due_by = _instant(self.end)
            for key, _ in self.store.raw_items(f"revenue_open/{self.tenant}/"):
                waits, source = key.split("/", 3)[2:]
                if waits > due_by:
                    break
                if source not in touched and (schedule := self._load(change, source)) is not None:
                    touched[source] = schedule
            for source, schedule in touched.items():
                self._schedule(change, source, schedule)

            def settled(subscription: str, cycle: datetime) -> bool:
                return change.get(_settled_key(self.tenant, subscription, cycle)) is not None

            # Usage of the cycles no invoice settled: what its usage so far rates at.
            used, errors = consumption(self.snapshot, self.out, start, self.end, frozenset(self.again), settled)
            for found in used:
                where = self._where(found.sub.customer, found.sub.id, found.price, found.meter, None, None)
                source = f"usage:{found.key}"
                self._post(change, source, found.amount, "usage", found.currency, self.month, where, found.quantity)
            entries = self._entries(change)
            if self.rows:
                change.put(f"revenue_rows/{self.tenant}/{self.day.isoformat()}", _ipc(self.rows))
            change.put(f"revenue_close/{self.tenant}", _Last(self.day, self.now))
        summary = [
            Recognized(cur, *(round_to_minor_unit(x, cur) for x in s)) for cur, s in sorted(self.sums.items()) if any(s)
        ]
        return CloseStep(self.day, summary, len(self.rows), [e.id for e in entries]), errors

    def _invoice(self, change: Change, invoice: Invoice, touched: dict[str, Schedule]) -> None:
        """An invoice finalized, voided or credited: each line's part in its schedule, its credits' rows."""
        billed = invoice.status in BILLED
        where = self._where(invoice.customer, invoice.subscription, None, None, invoice.id, invoice.finalized_at)
        prepaid: frozenset[str] | None = None
        for n, (line, net) in enumerate(zip(invoice.lines, ledger.net_line_amounts(invoice), strict=True), start=1):
            if line.kind == "credit" and prepaid is None:
                prepaid = self.store.prepaid_grants(self.tenant, invoice.subscription)
            how = ledger.treatment(line, prepaid or frozenset())
            if how == "immediate":  # posted by its invoice's entries: a row for the reports
                at = self._where(
                    invoice.customer, invoice.subscription, line.price, None, invoice.id, invoice.finalized_at
                )
                target = net if billed else _ZERO
                month = self._month_of(invoice.finalized_at if billed else invoice.voided_at)
                self._post(change, f"line:{invoice.id}/{n}", target, "promotional_credit", invoice.currency, month, at)
                continue
            source = _source(how, invoice, n, line)
            if source is None:
                continue
            schedule = touched.get(source) or self._load(change, source)
            if schedule is None:
                schedule = Schedule(
                    kind="usage" if how == "usage" else "commit" if how in ("commit", "drawdown") else "fee",
                    currency=invoice.currency,
                    customer=invoice.customer,
                    subscription=invoice.subscription,
                    price=line.price,
                    meter=line.meter,
                )
            part = Part(
                line=f"{invoice.id}/{n}",
                amount=net,
                start=line.period_start,
                end=line.period_end,
                finalized_at=invoice.finalized_at or invoice.issued_at,
                quantity=line.quantity if how == "usage" else None,
                void=not billed,
                drawn=how == "drawdown",
                settles=how == "usage" and invoice.reason == "cycle" and invoice.usage_start == line.period_start,
            )
            schedule.parts = sorted([p for p in schedule.parts if p.line != part.line] + [part], key=_order)
            touched[source] = schedule
            change.put(f"revenue_schedule/{self.tenant}/{source}", _ENCODE(schedule))
            if how == "usage":
                key = parse_line_key(line.key or "")
                if isinstance(key, ChargeKey):
                    self.again.add((invoice.subscription, key.cycle_start))
                    mark = _settled_key(self.tenant, invoice.subscription, key.cycle_start)
                    if any(p.settles and not p.void for p in schedule.parts):
                        change.put(mark, b"")
                    else:
                        change.delete(mark)
        for note in self.notes.get(invoice.id, []):
            target = -(note.amount - (note.tax or _ZERO)) if invoice.status != "void" else _ZERO
            month = self._month_of(note.created_at if invoice.status != "void" else invoice.voided_at)
            self._post(change, f"note:{note.number}", target, "credit_note", invoice.currency, month, where)

    def _load(self, change: Change, source: str) -> Schedule | None:
        raw = change.get(f"revenue_schedule/{self.tenant}/{source}")
        return None if raw is None else _SCHEDULE.decode(raw)

    def _schedule(self, change: Change, source: str, schedule: Schedule) -> None:
        """Brings a schedule's cursor to what it has earned by the step's end; keeps it open while it earns."""
        latest = schedule.parts[-1]
        where = self._where(
            schedule.customer,
            schedule.subscription,
            schedule.price,
            schedule.meter,
            latest.line.rsplit("/", 1)[0],
            latest.finalized_at,
        )
        billed = [p for p in schedule.parts if not p.void]
        amount = sum((p.amount for p in billed), _ZERO)
        waits: datetime | None  # when it next needs a look; None: done (until a line changes it)
        if schedule.kind == "fee":
            earning = billed[-1] if billed else latest
            target = self._earned(earning.start, earning.end, amount, schedule.currency)
            self._post(change, source, target, "fee", schedule.currency, self.month, where)
            waits = max(earning.start, self.end) if amount != 0 and earning.end > self.end else None
        elif schedule.kind == "commit":
            expiry = max((p.end for p in billed if not p.drawn), default=None)
            # What is left: bought, less what usage drew (the drawdown parts are negative).
            expired = expiry is not None and expiry <= self.end and self.settings.breakage == "at_expiry"
            self._post(change, source, amount if expired else _ZERO, "breakage", schedule.currency, self.month, where)
            waits = expiry if expiry is not None and expiry > self.end else None
        else:  # usage: a settled cycle earned what was billed for it; the others are rated (consumption)
            cycle_end = max(p.end for p in schedule.parts)
            if any(p.settles for p in billed) and cycle_end <= self.end:
                used = sum((p.quantity or _ZERO for p in billed), _ZERO)
                self._post(change, source, amount, "usage", schedule.currency, self.month, where, used)
            waits = cycle_end if cycle_end > self.end else None
        if waits != schedule.waits:
            if schedule.waits is not None:
                change.delete(f"revenue_open/{self.tenant}/{_instant(schedule.waits)}/{source}")
            if waits is not None:
                change.put(f"revenue_open/{self.tenant}/{_instant(waits)}/{source}", b"")
            schedule.waits = waits
            change.put(f"revenue_schedule/{self.tenant}/{source}", _ENCODE(schedule))

    def _post(
        self,
        change: Change,
        source: str,
        target: Decimal,
        kind: str,
        currency: str,
        month: str,
        where: Where,
        quantity: Decimal | None = None,
    ) -> None:
        """Moves ``source``'s cursor to ``target``; the difference is a row.

        The difference is also part of this step's journal entry, but for credit notes and promotional credits
        (their own entries posted them). A usage source's cursor also keeps the quantity it has recognized, so
        that its rows add up to the units consumed.
        """
        key = f"revenue_cursor/{self.tenant}/{source}"
        raw = change.get(key)
        before, counted = _cursor(raw)
        delta = target - before
        added = None if quantity is None else quantity - (counted or _ZERO)
        if delta == 0 and not added:
            return
        change.put(key, f"{target} {quantity}".encode() if quantity is not None else str(target).encode())
        self.rows.append(
            {
                "month": month,
                "through": self.day,
                "kind": kind,
                "source": source,
                "currency": currency,
                "amount": delta,
                "quantity": added,
                **where(),
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
    ) -> Where:
        """What a row belongs to, made only when a row is written (most sources post nothing in most steps)."""

        def where() -> dict[str, object]:
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

        return where

    def _product(self, meter: str | None) -> str | None:
        return self.products.get(meter) if meter is not None else None

    def _month_of(self, at: datetime | None) -> str:
        return f"{(at or self.now).astimezone(self.zone):%Y-%m}"


class Part(msgspec.Struct, array_like=True):
    """One billed line's part in a schedule: what it adds and its service period."""

    line: str  # <invoice>/<n>
    amount: Decimal
    start: datetime
    end: datetime
    finalized_at: datetime
    #: A usage line's quantity.
    quantity: Decimal | None = None
    #: Its invoice was voided: it adds nothing.
    void: bool = False
    #: A credit line drawing on a prepaid commit (its amount is negative).
    drawn: bool = False
    #: A usage line of the cycle invoice that bills its cycle in arrears: the cycle's usage is billed.
    settles: bool = False


class Schedule(msgspec.Struct):
    """What one source earns, from every billed line about it: a fee's key, a usage key, a prepaid commit.

    A fee earns the sum of its lines by day over the service period of the latest (a plan change's adjustment
    carries the part of the cycle the key now covers); a commit what is left of it when it expires; a usage key
    what its cycle's invoice billed, once billed (before, what its usage rates at).
    """

    kind: Literal["fee", "usage", "commit"]
    currency: str
    customer: str
    subscription: str
    price: str | None = None
    meter: str | None = None
    parts: list[Part] = []
    #: The instant it is open until (keyed by it under ``revenue_open/``): a look is due at the first close that
    #: reaches it. None: nothing changes until one of its lines does.
    waits: datetime | None = None


_SCHEDULE = msgspec.json.Decoder(Schedule)
#: What a row belongs to (customer, subscription, plan, price, meter, product, invoice, invoice_month), when asked.
Where = Callable[[], dict[str, object]]
_ENCODE = msgspec.json.encode


def _order(part: Part) -> tuple[datetime, str]:
    return part.finalized_at, part.line


def _source(how: str, invoice: Invoice, n: int, line: InvoiceLine) -> str | None:
    """The source a line counts toward: its key's (a fee, a usage key), its commit's, or its own (a keyless fee)."""
    if how == "ratable":
        return f"fee:{line.key}" if line.key else f"fee:{invoice.id}/{n}"
    if how == "usage":
        return f"usage:{line.key}" if line.key else None
    if how == "commit":
        grant = _grant_of(line.key) if line.key else None
        return f"breakage:{grant}" if grant else None
    if how == "drawdown":
        return f"breakage:{line.grant}" if line.grant else None
    return None


def _instant(t: datetime) -> str:
    """A UTC instant as text that sorts as the instants do (the open index's keys)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _settled_key(tenant: str, subscription: str, cycle: datetime) -> str:
    return f"revenue_settled/{tenant}/{subscription}/{cycle.astimezone(UTC).isoformat()}"


def _cursor(raw: bytes | None) -> tuple[Decimal, Decimal | None]:
    """A cursor: the amount recognized, and for usage the quantity (``"<amount> <quantity>"``)."""
    if raw is None:
        return _ZERO, None
    amount, _, quantity = raw.decode().partition(" ")
    return Decimal(amount), Decimal(quantity) if quantity else None


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
