"""The close: revenue recognized through a day, posted to the ledger exactly once per source and day range.

A close through day ``D`` (in the tenant's reporting zone, :class:`~meter.catalog.revenue.RevenueSettings`) brings
what each source has recognized to what it has earned by the end of ``D`` (the instant ``T``, local midnight after
``D``), and posts the difference. A run through a later day than the last close is done as one step per month end
in between, then ``D``: each step is a month's (or a part of one), so revenue lands in the month it was earned.

The sources, by the :func:`~meter.money.ledger.treatment` of the lines that bill them (each a row of the
sub-ledger, :mod:`meter.money.revenue.book`, with the billed lines' parts):

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
``breakage:<D>/<currency>``, each with ``effective`` = ``D``), the book and the step's rows, with the tenant's invoice
lock held throughout. Running a close twice posts nothing the second time; a crash leaves a step written whole or not
at all.

Bounded: a step reads the records of the invoices finalized, voided or credited since the last close
(:mod:`meter.money.revenue.due`, written by the store with the entry that changed them) and the book (the sources
still open), never the whole history (the first close of a tenant reads every invoice's record once; a done source
is read again only when a line of it changes). Usage is rated only for the subscriptions with a cycle that overlaps
the step and that no invoice settled.

Columnar: targets, cursors and rows are computed for every open source at once (polars); Python touches each
invoice's record once (two list operations), and one fee at a time only while it is earning within a month.

Keys (in the invoice store, under ``<tenant>``; the book's own in :mod:`meter.money.revenue.book`):

===========================================  ====================================================================
``revenue_close/<tenant>``                   the last close: its day and when it was posted
``revenue_cursor/<tenant>/<source>``         what a credit note or promotional credit has recognized (decimal text)
``revenue_rows/<tenant>/<D>``                the step's rows (Arrow IPC): what each source recognized, and where
===========================================  ====================================================================

Money: targets are rounded half to even to the minor unit where they are derived (a month's share, a rated key);
differences of rounded figures need no rounding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from meter.billing.invoices import CreditNote, RunError
from meter.billing.invoicing import RESTATE, Consumed, consumption
from meter.billing.store import Change, InvoiceStore
from meter.catalog.revenue import RevenueSettings
from meter.exceptions import InvalidInput
from meter.lake.catalog import Snapshot
from meter.money import ledger
from meter.money.ledger import JournalEntry
from meter.money.revenue import book as book_
from meter.money.revenue import due
from meter.money.revenue.book import Book
from meter.money.revenue.days import midnight
from meter.money.revenue.schedule import earned_by_days, earned_through, monthly
from meter.pricing.money import minor_units, round_to_minor_unit

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
    live = [sub for sub in snapshot.subscriptions if sub.end is None]
    starts = pl.DataFrame(
        {"subscription": [sub.id for sub in live], "start": [due.micros(sub.start) for sub in live]},
        schema={"subscription": pl.String(), "start": pl.Int64()},
    )
    for day in row_days(through, last, first) if first is not None else [through]:
        step, errors = _Step(store, snapshot, out, settings, day, now, products, starts).run()
        close.steps.append(step)
        close.errors += errors
        if progress is not None:
            progress(step)
    return close


def _first_day(store: InvoiceStore, snapshot: Snapshot, tz: str) -> date | None:
    """The first day anything can be earned: the earliest subscription start or invoiced service period."""
    starts = [sub.start for sub in snapshot.subscriptions]
    if (first := store.raw(f"revenue_first/{snapshot.tenant}")) is not None:
        starts.append(due.instant(int(first)))
    return min(starts).astimezone(ZoneInfo(tz)).date() if starts else None


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
    #: The subscriptions not ended, and their starts (µs): ``subscription``, ``start``.
    starts: pl.DataFrame
    #: The rows of the sources posted one by one (credit notes, promotional credits).
    rows: list[dict[str, object]] = field(default_factory=list)
    #: Their cursors moved (``revenue_cursor/<tenant>/<source>`` -> what it has recognized).
    cursors: dict[str, bytes] = field(default_factory=dict)

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
            # Lines to add can change any source: then the whole book; else the months due by the step's end.
            billed = self.store.raw_values(f"revenue_due/{self.tenant}/")
            until = None if next(billed, None) is not None else f"{self.end.astimezone(UTC):%Y-%m}"
            book = self._bill(change, book_.load(self.store, self.tenant, until), start)
            targets = self._targets(book.sources)

            # Usage of the cycles no invoice settled: what its usage so far rates at (it overrides the above).
            settled, covered = self._settled(book.sources, start)
            used, errors = consumption(
                self.snapshot,
                self.out,
                start,
                self.end,
                frozenset(self.again),
                lambda sub, cycle: (sub, due.micros(cycle)) in settled,
                covered,
            )
            book, targets = self._rated(book, targets, used)
            posted = self._post(book.sources, targets)
            book = replace(book, sources=posted.select(list(book_.SOURCES)))
            rows = pl.concat([self._rows(posted), _frame(self.rows)])
            totals = _totals(rows)
            entries = self._entries(change, totals)
            done, book = book.split(self._done(book.sources))
            book_.archive(change, self.tenant, self.day, done)
            book_.save(change, self.tenant, book, self._wakes())
            if rows.height:
                change.put(f"revenue_rows/{self.tenant}/{self.day.isoformat()}", _ipc(rows))
            change.put(f"revenue_close/{self.tenant}", _Last(self.day, self.now))
        summary = [
            Recognized(cur, *(round_to_minor_unit(of.get(k, _ZERO), cur) for k in ("fee", "usage", "breakage")))
            for cur, of in sorted(totals.items())
            if any(of.values())
        ]
        return CloseStep(self.day, summary, rows.height, [e.id for e in entries]), errors

    # ------------------------------------------------------------------------------------------------- billed lines

    def _bill(self, change: Change, book: Book, start: datetime) -> Book:
        """The book with the lines of every invoice finalized, voided or credited since the last close.

        Reads their records (:mod:`meter.money.revenue.due`) and deletes them in the step's write.
        """
        prefix = f"revenue_due/{self.tenant}/"
        values = self.store.raw_values(prefix)
        chunks = [_lines(due.lines(due.table([])))]  # the columns, when there are no records
        while records := list(islice(values, _CHUNK)):  # by chunks: a million records are a gigabyte of JSON
            table = due.table(records)
            noted = pc.is_in(table["invoice"], pa.array(list(self.notes), pa.string()))
            for n in pc.indices_nonzero(pc.or_(table["immediate"], noted)).to_pylist():
                self._posted_on_their_own(due.decode(records[n]))
            chunks.append(_lines(due.lines(table)))
        change.clear(prefix)
        kind = pl.col("treatment")
        lines = pl.concat(chunks).filter(
            kind.is_in(["ratable", "usage", "commit", "drawdown"]) & pl.col("source").is_not_null()
        )
        if not lines.height:
            return book
        # Cycles billed again before the step's window: rated again (late usage), unless settled.
        again = lines.filter(pl.col("cycle_start") < start).select("subscription", "cycle_start").unique()
        self.again.update(again.iter_rows())
        named = lines.get_column("source").unique()
        missing = named.to_frame().join(book.sources, on="source", how="anti").get_column("source")
        book = book.concat(book_.unarchive(self.store, self.tenant, missing.to_list()))
        fresh = (
            lines.join(book.sources.select("source"), on="source", how="anti")
            .group_by("source", maintain_order=True)
            .agg(pl.all().first())
            .select(
                "source",
                pl.when(kind == "usage")
                .then(pl.lit("usage"))
                .when(kind.is_in(["commit", "drawdown"]))
                .then(pl.lit("commit"))
                .otherwise(pl.lit("fee"))
                .alias("kind"),
                *("currency", "customer", "subscription", "price", "meter", "cycle_start", "cycle_end"),
                cursor=pl.lit(_ZERO),
            )
        )
        sources = pl.concat([book.sources, fresh], how="diagonal_relaxed").cast(book_.SOURCES)  # type: ignore[arg-type]
        parts = lines.select(
            "source",
            line=pl.format("{}/{}", "invoice", "n"),
            invoice="invoice",
            amount="amount",
            start="start",
            end="end",
            finalized_at="finalized_at",
            quantity="quantity",
            void=~pl.col("billed"),
            drawn=kind == "drawdown",
            settles="settles",
        ).cast(book_.PARTS)  # type: ignore[arg-type]
        kept = book.parts.join(parts.select("line"), on="line", how="anti")
        return book_.summarize(Book(sources, pl.concat([kept, parts]), book.months), named)

    def _posted_on_their_own(self, record: due.Due) -> None:
        """An invoice's promotional credits and credit notes: each a source of its own, posted now."""
        invoice, customer, subscription, currency = (
            record.invoice,
            record.customer,
            record.subscription,
            record.currency,
        )
        finalized, billed = due.instant(record.finalized_at), record.billed
        voided = None if record.voided_at is None else due.instant(record.voided_at)
        for line in record.lines() if record.immediate else []:
            if line["treatment"] == "immediate":  # posted by its invoice's entries: a row for the reports
                target = Decimal(str(line["amount"])) if billed else _ZERO
                month = self._month_of(finalized if billed else voided)
                price = line["price"]
                where = _Where(
                    customer, subscription, price if isinstance(price, str) else None, None, invoice, finalized
                )
                self._post_one(str(line["source"]), target, "promotional_credit", currency, month, where)
        where = _Where(customer, subscription, None, None, invoice, finalized)
        for note in self.notes.get(invoice, []):
            target = -(note.amount - (note.tax or _ZERO)) if record.status != "void" else _ZERO
            month = self._month_of(note.created_at if record.status != "void" else voided)
            self._post_one(f"note:{note.number}", target, "credit_note", currency, month, where)

    # ------------------------------------------------------------------------------------------------------ targets

    def _targets(self, sources: pl.DataFrame) -> pl.DataFrame:
        """What each source of the book has earned by the step's end (``target``; null: no change).

        For usage, also the quantity (``target_quantity``). A source not started earns 0, one ended all it was billed.
        """
        end = self.end
        kind, amount = pl.col("kind"), pl.col("amount")
        ended_usage = (kind == "usage") & pl.col("settled").fill_null(False) & (pl.col("ends") <= end)
        expired = (
            pl.col("expiry").is_not_null() & (pl.col("expiry") <= end) & pl.lit(self.settings.breakage == "at_expiry")
        )
        earning = (kind == "fee") & (pl.col("earn_start") < end) & (pl.col("earn_end") > end) & (amount != 0)
        partial = sources.filter(earning).select("source", "amount", "earn_start", "earn_end", "currency")
        earned = pl.DataFrame(
            [(source, self._earned(*rest)) for source, *rest in partial.iter_rows()],
            schema={"source": pl.String(), "earned": book_.SOURCES["cursor"]},
            orient="row",
        )
        zero = pl.lit(_ZERO, dtype=book_.SOURCES["cursor"])
        target = (
            pl.when((kind == "fee") & (pl.col("earn_end") <= end))
            .then(amount)
            .when((kind == "fee") & ((pl.col("earn_start") >= end) | (amount == 0)))
            .then(zero)
            .when(kind == "fee")
            .then(pl.col("earned"))
            .when(kind == "commit")
            .then(pl.when(expired).then(amount).otherwise(zero))
            .when(ended_usage)
            .then(amount)
        )
        quantity = pl.when(ended_usage).then(pl.col("quantity").fill_null(zero))
        return sources.join(earned, on="source", how="left").select(
            "source", target.alias("target"), quantity.alias("target_quantity"), rated=pl.lit(False)
        )

    def _settled(self, sources: pl.DataFrame, start: datetime) -> tuple[set[tuple[str, int]], frozenset[str]]:
        """The settled cycles the step may ask about, as (subscription, start in µs); subscriptions with none to rate.

        The step asks about the cycles that end by its end and after ``start`` less the restatement window, and the
        cycles billed again. A subscription has none to rate when settled cycles follow one another from before the
        first instant the step rates (``start`` less the restatement window, or its start) to the step's end, and
        any cycle of it billed again is settled and over. (Usage keeps its rows in the book through the restatement
        window for this.)
        """
        end = due.micros(self.end)
        low = due.micros(start - RESTATE) if start > _EPOCH + RESTATE else 0
        cycles = (
            sources.lazy()
            .filter(pl.col("settled") & pl.col("cycle_start").is_not_null())
            .select("subscription", pl.col("cycle_start").dt.epoch("us"), pl.col("cycle_end").dt.epoch("us"))
            .collect()
        )
        window = cycles.filter((pl.col("cycle_end") > low) & (pl.col("cycle_end") <= end))
        if self.again:
            again = pl.DataFrame(
                {
                    "subscription": [sub for sub, _ in self.again],
                    "cycle_start": [due.micros(at) for _, at in self.again],
                },
                schema={"subscription": pl.String(), "cycle_start": pl.Int64()},
            )
            window = pl.concat([window, cycles.join(again, on=["subscription", "cycle_start"])])
        window = window.unique().sort("subscription", "cycle_start")
        subs, starts, ends = (window.get_column(c).to_list() for c in ("subscription", "cycle_start", "cycle_end"))
        ending = dict(zip(zip(subs, starts, strict=True), ends, strict=True))
        # Runs of cycles that follow one another (a new run at each gap or subscription), the last of each
        # subscription: covered when it ends at the step's end and starts early enough.
        same = pl.col("subscription") == pl.col("subscription").shift(1)
        follows = same & (pl.col("cycle_start") == pl.col("cycle_end").shift(1))
        last_run = pl.col("run") == pl.col("run").max()
        runs = (
            window.filter(pl.col("cycle_end") > low)
            .with_columns(run=(~follows.fill_null(False)).cum_sum())
            .group_by("subscription")
            .agg(pl.col("cycle_start").filter(last_run).min(), pl.col("cycle_end").max())
            .filter(pl.col("cycle_end") == end)
            .join(self.starts, on="subscription")
            .filter(pl.col("cycle_start") <= pl.max_horizontal(pl.lit(low), pl.col("start")))
        )
        covered = set(runs.get_column("subscription").to_list())
        for sub, cycle in self.again:  # a cycle billed again is rated unless settled and over (or yet to come)
            if sub in covered and due.micros(cycle) < end and ending.get((sub, due.micros(cycle)), end + 1) > end:
                covered.discard(sub)
        return set(ending), frozenset(covered)

    def _earned(self, amount: Decimal, start: datetime, end: datetime, currency: str) -> Decimal:
        """What a fee earning over ``[start, end)`` has earned by the step's end (it started and has not ended)."""
        digits = minor_units(currency)
        minor = amount.scaleb(digits)
        first, last = (t.astimezone(self.zone) for t in (start, end))
        if minor == minor.to_integral_value() and _at_midnight(first) and _at_midnight(last):
            earned = earned_by_days(int(minor), first.date(), last.date(), self.day + timedelta(days=1))
            return Decimal(earned).scaleb(-digits)
        return earned_through(monthly(amount, start, end, self.tz, currency), self.end, self.tz, currency)

    def _rated(self, book: Book, targets: pl.DataFrame, used: list[Consumed]) -> tuple[Book, pl.DataFrame]:
        """The book and targets with what each usage key of a cycle not settled rates at (new keys added)."""
        if not used:
            return book, targets
        rated = _columns(
            (
                [f"usage:{u.key}" for u in used],
                [u.amount for u in used],
                [u.quantity for u in used],
                [u.currency for u in used],
                [u.sub.customer for u in used],
                [u.sub.id for u in used],
                [u.price for u in used],
                [u.meter for u in used],
            ),
            _RATED,
        )
        missing = rated.join(book.sources, on="source", how="anti").get_column("source")
        book = book.concat(book_.unarchive(self.store, self.tenant, missing.to_list()))
        new = rated.join(book.sources.select("source"), on="source", how="anti")
        if new.height:
            cycle_of = {f"usage:{u.key}": u.cycle for u in used}
            cycles = [cycle_of[s] for s in new.get_column("source")]
            fresh = new.select("source", "currency", "customer", "subscription", "price", "meter").with_columns(
                pl.lit("usage").alias("kind"),
                pl.Series("cycle_start", [c and c.start for c in cycles], dtype=book_.SOURCES["cycle_start"]),
                pl.Series("cycle_end", [c and c.end for c in cycles], dtype=book_.SOURCES["cycle_end"]),
                pl.lit(_ZERO).alias("cursor"),
            )
            sources = pl.concat([book.sources, fresh], how="diagonal_relaxed").cast(book_.SOURCES)  # type: ignore[arg-type]
            book = replace(book, sources=sources)
            targets = pl.concat(
                [targets, fresh.select("source", target=None, target_quantity=None, rated=False)],
                how="vertical_relaxed",
            )
        targets = (
            targets.join(rated.select("source", "rated_amount", "rated_quantity"), on="source", how="left")
            .with_columns(
                pl.when(pl.col("rated_amount").is_not_null())
                .then(pl.col("rated_amount"))
                .otherwise("target")
                .alias("target"),
                pl.when(pl.col("rated_amount").is_not_null())
                .then(pl.col("rated_quantity"))
                .otherwise("target_quantity")
                .alias("target_quantity"),
                pl.col("rated_amount").is_not_null().alias("rated"),
            )
            .drop("rated_amount", "rated_quantity")
        )
        return book, targets

    def _post(self, sources: pl.DataFrame, targets: pl.DataFrame) -> pl.DataFrame:
        """The sources with their cursors moved to their targets, and ``delta``/``added``: what each step posts."""
        joined = sources.join(targets, on="source", how="left")
        delta = pl.col("target") - pl.col("cursor")
        added = pl.col("target_quantity") - pl.col("counted").fill_null(0)
        moves = pl.col("target").is_not_null() & ((delta != 0) | (added.fill_null(0) != 0))
        return joined.with_columns(
            delta=pl.when(moves).then(delta),
            added=pl.when(moves).then(added),
        ).with_columns(
            cursor=pl.when(pl.col("delta").is_not_null()).then(pl.col("target")).otherwise("cursor"),
            counted=pl.when(pl.col("delta").is_not_null()).then(pl.col("target_quantity")).otherwise("counted"),
        )

    def _done(self, sources: pl.DataFrame) -> pl.Series:
        """The sources nothing but a changed line can move again: archived by this step.

        A fee once earned whole (or billed nothing), a commit once expired, and usage once its cycle is past
        restatement (until then it tells which cycles an invoice settled, and late usage may rate it again).
        """
        end = self.end
        kind = pl.col("kind")
        return sources.select(
            pl.when(kind == "fee")
            .then((pl.col("amount") == 0) | (pl.col("earn_end") <= end))
            .when(kind == "commit")
            .then(pl.col("expiry").is_null() | (pl.col("expiry") <= end))
            .otherwise(pl.coalesce("cycle_end", "ends") <= end - RESTATE)
            .fill_null(False)
        ).to_series()

    def _wakes(self) -> pl.Expr:
        """The month (UTC) of the first close that must look at an open source again (the book's month for it).

        A fee not started, when it starts (one earning, every close); a commit, when it expires; usage, every close
        from its cycle's start (it is rated, or tells which cycles are settled).
        """
        end, kind = pl.lit(self.end.astimezone(UTC)), pl.col("kind")
        wake = (
            pl.when(kind == "fee")
            .then(pl.max_horizontal("earn_start", end))
            .when(kind == "commit")
            .then(pl.max_horizontal("expiry", end))
            .otherwise(pl.max_horizontal("cycle_start", end))
        )
        return wake.dt.strftime("%Y-%m")

    # --------------------------------------------------------------------------------------------------------- rows

    def _rows(self, posted: pl.DataFrame) -> pl.DataFrame:
        """A row per source posted (see ``ROW_SCHEMA``): what it recognized and what it belongs to."""
        moved = posted.filter(pl.col("delta").is_not_null())
        rated = pl.col("rated")
        local = pl.col("finalized_at").dt.convert_time_zone(self.tz).dt.strftime("%Y-%m")
        return moved.select(
            month=pl.lit(self.month),
            through=pl.lit(self.day),
            kind=pl.col("kind").replace({"commit": "breakage"}),
            source="source",
            currency="currency",
            amount=pl.col("delta").cast(_ROW_MONEY),
            quantity=pl.col("added").cast(_ROW_MONEY),
            customer="customer",
            subscription="subscription",
            plan=pl.col("subscription").replace_strict(self.plans, default=None, return_dtype=pl.String()),
            price="price",
            meter="meter",
            product=pl.col("meter").replace_strict(dict(self.products), default=None, return_dtype=pl.String()),
            invoice=pl.when(~rated).then(pl.col("invoice")),
            invoice_month=pl.when(~rated).then(local),
        )

    def _post_one(self, source: str, target: Decimal, kind: str, currency: str, month: str, where: _Where) -> None:
        """Moves the cursor of a source posted on its own (a credit note, a promotional credit) to ``target``."""
        key = f"revenue_cursor/{self.tenant}/{source}"
        raw = self.store.raw(key)
        delta = target - (_ZERO if raw is None else Decimal(raw.decode()))
        if delta == 0:
            return
        self.cursors[key] = str(target).encode()
        self.rows.append(
            {"month": month, "through": self.day, "kind": kind, "source": source, "currency": currency}
            | {"amount": delta, "quantity": None}
            | where.columns(self)
        )

    def _entries(self, change: Change, totals: dict[str, dict[str, Decimal]]) -> list[JournalEntry]:
        """The step's journal entries (and the cursors of the sources posted on their own)."""
        for key, value in self.cursors.items():
            change.put(key, value)
        posted = []
        for currency, of in sorted(totals.items()):
            fees, usage, broken = (of.get(k, _ZERO) for k in ("fee", "usage", "breakage"))
            if fees or usage:
                entry = ledger.revenue_recognized(self.tenant, currency, self.day, self.now, fees, usage)
                posted.append(change.post(entry))
            if broken:
                entry = ledger.revenue_recognized(self.tenant, currency, self.day, self.now, broken, _ZERO, True)
                posted.append(change.post(entry))
        return posted

    def _month_of(self, at: datetime | None) -> str:
        return f"{(at or self.now).astimezone(self.zone):%Y-%m}"


@dataclass(frozen=True)
class _Where:
    """What a row posted on its own belongs to."""

    customer: str
    subscription: str
    price: str | None
    meter: str | None
    invoice: str | None
    finalized_at: datetime | None

    def columns(self, step: _Step) -> dict[str, object]:
        return {
            "customer": self.customer,
            "subscription": self.subscription,
            "plan": step.plans.get(self.subscription),
            "price": self.price,
            "meter": self.meter,
            "product": step.products.get(self.meter) if self.meter is not None else None,
            "invoice": self.invoice,
            "invoice_month": step._month_of(self.finalized_at) if self.finalized_at else None,
        }


#: Invoices read per chunk, and part rows turned into columns at a time.
_CHUNK = 100_000
_TIMES = ("finalized_at", "start", "end", "cycle_start", "cycle_end")


def _lines(lines: pa.Table) -> pl.DataFrame:
    """Records' lines (as :func:`due.lines` gives them) with instants and decimals as the book keeps them."""
    frame = pl.from_arrow(lines)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(
        pl.col(*_TIMES).cast(pl.Datetime("us", "UTC")), pl.col("amount", "quantity").cast(book_.SOURCES["cursor"])
    )


_ROW_MONEY = pl.Decimal(38, 9)


#: What consumption found, as ``_Step._rated`` reads it.
_RATED: dict[str, pa.DataType] = {
    "source": pa.string(),
    "rated_amount": pa.decimal128(38, 9),
    "rated_quantity": pa.decimal128(38, 9),
    "currency": pa.string(),
    "customer": pa.string(),
    "subscription": pa.string(),
    "price": pa.string(),
    "meter": pa.string(),
}


def _totals(rows: pl.DataFrame) -> dict[str, dict[str, Decimal]]:
    """What the rows recognized per currency and kind (``fee``, ``usage``, ``breakage``): the journal's amounts."""
    sums = rows.filter(pl.col("kind").is_in(["fee", "usage", "breakage"])).group_by("currency", "kind")
    totals: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for currency, kind, amount in sums.agg(pl.col("amount").sum()).iter_rows():
        totals[currency][kind] = _money(amount, currency)
    return totals


def _money(amount: Decimal, currency: str) -> Decimal:
    """``amount`` in the currency's minor unit when it has no more digits (the columns keep nine)."""
    rounded = round_to_minor_unit(amount, currency)
    return rounded if rounded == amount else amount.normalize()


def _columns(columns: Iterable[Sequence[object]], types: dict[str, pa.DataType]) -> pl.DataFrame:
    """Python values gathered column by column, as a frame (through Arrow: five times faster than polars' rows)."""
    arrays = [pa.array(c, t) for c, t in zip(columns, types.values(), strict=True)]
    frame = pl.from_arrow(pa.table(arrays, names=list(types)))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _at_midnight(t: datetime) -> bool:
    return (t.hour, t.minute, t.second, t.microsecond) == (0, 0, 0, 0)


def _frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    frame = pl.from_arrow(pa.Table.from_pylist(rows, schema=ROW_SCHEMA))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _ipc(rows: pl.DataFrame) -> bytes:
    sink = pa.BufferOutputStream()
    table = rows.to_arrow().cast(ROW_SCHEMA)
    with pa.ipc.new_stream(sink, ROW_SCHEMA, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)
