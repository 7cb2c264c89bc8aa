"""Invoicing: the invoices of a billing run, a threshold check and the upcoming invoice, per subscription.

They are computed from the Parquet export (usage, read by :mod:`meter.billing.usage`, and the catalog snapshot) and
what finalized invoices billed already (:mod:`meter.billing.billed`), rated by :func:`meter.pricing.rate`, and saved
as drafts in the store (:mod:`meter.billing.invoices`). It never reads RocksDB's usage. Plain subscriptions go
through :mod:`meter.billing.batch` instead, which gives the same bytes over whole tables.

The invoice of a subscription's cycle ``C`` is issued at ``C``'s start and holds:

- **recurring fees in advance** for ``C`` (flat prices with ``cadence: in_advance``), one line per part of the cycle
  the subscription covers (``cycles.segments``: prorated by day for a start, an end or a plan change, said on the
  line);
- **usage in arrears** for the previous cycle ``P`` (and flat prices ``in_arrears``), per part of ``P``: usage is
  measured over the part's own ``[start, end)``, so it needs no proration; tiers restart at a plan change;
- **adjustments** (``kind: adjustment``) for what changed after an invoice was finalized, within the back-dating
  window (:data:`RESTATE`): the fees in advance of earlier cycles whose invoice was finalized (a plan change or a
  cancellation in the middle of a cycle: the old version's fee prorated down, the new one's prorated up), and the
  usage of cycles before ``P`` whose invoice was finalized (late usage). Each names the invoices it corrects;
- the lines of the subscription's terms (:mod:`meter.billing.terms`): a **prepaid commit** bought in ``C``, and a
  **postpaid commit's shortfall** when its term ended in ``P`` and the contract bills it; **discounts**, on one
  price's lines or on the invoice (percent or a fixed amount, never below zero); **credits and prepaid commits**
  drawn down, lowest ``priority`` first, then the one expiring first, over the usage lines they apply to (their
  price ids, or all usage), limited to what is left of them after finalized invoices.

Every line that bills something carries a ``key`` (subscription, price, plan version, billing cycle; a typed
:mod:`meter.billing.keys` key, stored as its text): what it bills
is what the key rates at now minus what finalized invoices billed for the same key; a key that finalized invoices
billed but that no longer exists (a version the subscription left, a cycle it no longer covers) rates at zero now.
That one rule makes re-running idempotent, bills the rest of a cycle after a threshold invoice, and turns late usage,
plan changes and cancellations into adjustment lines.

Money: each line is rated exactly and rounded half-even to the currency's minor unit (``money``); discounts are
computed on rounded lines and rounded the same way; subtotal and total are sums of rounded lines. One currency per
invoice: the customer's. A total below zero (adjustments that credit more than the invoice bills) is what the
customer is owed.

A line shows how its amount comes about: ``details`` add up exactly to what the key rates at (a ``minimum`` or
``maximum`` detail is the step up or down to the price's bound), ``rated`` is that rounded, ``billed`` is what
finalized invoices billed for the key, and ``amount = rated - billed``.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo

import msgspec
import polars as pl

from meter.billing import cycles
from meter.billing.batch import Batch, NotPlain, Refused, invoice_batch, plain_subscriptions
from meter.billing.billed import Billed
from meter.billing.invoices import (
    Fresh,
    Invoice,
    InvoiceLine,
    LineDetail,
    Reason,
    RunError,
    ServicePeriod,
    Timing,
    check_invoice,
)
from meter.billing.keys import ChargeKey, LineKey
from meter.billing.store import InvoiceStore, StoredInvoices
from meter.billing.terms import commit_lines, credit_lines, discount_lines
from meter.billing.usage import event_amounts, period_quantities
from meter.catalog.billing import Subscription
from meter.catalog.prices import Price
from meter.catalog.types import trusted
from meter.exceptions import InvalidInput, MeterError, NotFound
from meter.lake.catalog import Snapshot
from meter.lake.invoices import FreshWriter
from meter.lake.layout import events_cited
from meter.pricing.charges import price_frame
from meter.pricing.money import round_to_minor_unit
from meter.pricing.rating import rate
from meter.pricing.schema import CHARGES_SCHEMA
from meter.pricing.steps import step

__all__ = [
    "Consumed",
    "Priced",
    "Quantities",
    "bill_thresholds",
    "consumption",
    "invoice_period",
    "parse_month",
    "upcoming_invoices",
    "UpcomingDrafts",
    "upcoming_of",
]

#: Where rating's usage comes from: requests (as :func:`meter.billing.usage.period_quantities` takes them) -> that
#: function's quantities frame. The export by default; the engine itself for the live balances.
Quantities = Callable[[pl.DataFrame], pl.DataFrame]

#: Late events are accepted this far back (the engine's default back-dating window): periods that ended within it
#: are re-rated for adjustments.
RESTATE = timedelta(days=35)
#: The months a run, or a filter on invoices, may name: cycles before or after these cannot be computed.
FIRST_YEAR, LAST_YEAR = 1970, 9998
_ZERO = Decimal(0)
_MONTH = re.compile(r"(\d{4})-(\d{2})")
#: Subscriptions whose charges rating refuses that a run takes out of the columnar path, one at a time.
_REFUSALS = 8
#: The kinds of line a charge makes (commits, discounts and credits are lines of their own).
ChargeKind = Literal["recurring", "usage", "adjustment"]
_CHARGE_KINDS = get_args(ChargeKind)


def parse_month(month: str, name: str = "period") -> datetime:
    """The first instant of ``month`` (``YYYY-MM``, naive).

    The first instant of ``month`` (``YYYY-MM``, naive); ``InvalidInput`` (``invalid_period``) for anything else,
    including months out of the range billing computes (years 1970 to 9998).
    """
    match = _MONTH.fullmatch(month) if isinstance(month, str) else None
    year, number = (int(match[1]), int(match[2])) if match else (0, 0)
    if not match or not 1 <= number <= 12:
        raise InvalidInput(f"{name} must be a month as YYYY-MM, such as 2026-11; got {month!r}", code="invalid_period")
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise InvalidInput(
            f"{name} must be a month from {FIRST_YEAR}-01 to {LAST_YEAR}-12; got {month!r}", code="invalid_period"
        )
    return datetime(year, number, 1)


@dataclass
class _Charge:
    """One price billed over one service span of one subscription."""

    key: LineKey
    kind: ChargeKind
    timing: Timing
    price: Price
    version: int
    price_key: str
    start: datetime
    end: datetime
    #: Usage is measured over [start, measured_to): the span, or up to now on a threshold invoice.
    measured_to: datetime
    proration: Decimal
    description: str
    #: A key finalized invoices billed that no longer exists: it rates at zero, and is not rated.
    gone: InvoiceLine | None = None
    #: An adjustment: the start of the cycle whose invoice billed the period it adjusts (that invoice is named).
    billed_on: datetime | None = None


@dataclass
class _Draft:
    id: str
    sub: Subscription
    reason: Reason
    period: cycles.Period
    #: The usage period billed in arrears (None on a subscription's first invoice).
    arrears: cycles.Period | None
    issued_at: datetime
    tz: str
    charges: list[_Charge] = field(default_factory=list)


@dataclass
class Priced:
    """The invoices of a run and what could not be invoiced.

    The invoices of a run, the subscriptions that could not be invoiced and why, and the service periods the
    run covers (``None`` when it covers none).
    """

    invoices: Sequence[Invoice]
    errors: list[RunError]
    fees_in_advance: ServicePeriod | None = None
    usage_in_arrears: ServicePeriod | None = None
    #: The rows of the drafts invoiced over whole tables, for the invoices export (see :class:`Fresh`).
    fresh: Fresh | None = None


def invoice_period(snapshot: Snapshot, out: Path, store: InvoiceStore, month: str) -> Priced:
    """Computes and saves as drafts the invoices of the cycles that start in ``month``.

    Computes and saves as drafts the invoices of every cycle that starts in ``month`` (``YYYY-MM``, in each
    customer's time zone); a cycle whose invoice is finalized already is left alone (what changes later goes on the
    next one as adjustments), and one whose invoice was voided gets a new draft. A subscription that cannot be
    invoiced is reported in ``errors`` and the others are invoiced all the same. Returns the drafts saved.

    Plain subscriptions (see :mod:`meter.billing.batch`) are invoiced over whole tables, the others one by one; both
    give the same invoices. ``Priced.fresh`` then holds the plain drafts' rows for the invoices export.
    """
    first = parse_month(month)
    after = first.replace(year=first.year + first.month // 12, month=first.month % 12 + 1)
    with step("billed"):
        billed = Billed.of(store, snapshot.tenant)
    rows, batched = _batched(snapshot, out, billed, first, after)
    fresh, stored = None, None
    if batched is not None:
        fresh, stored, left = _save_batch(store, out, snapshot.tenant, batched)
        if left:  # drafts the columnar texts could not write: those subscriptions go one by one
            table = snapshot.subscription_table.with_row_index("_row")
            rows = pl.concat([rows, table.filter(pl.col("id").is_in(list(left))).get_column("_row")]).sort()
    drafts, errors = [], []
    with step("one_by_one"):
        slow = snapshot.subscriptions_of(rows)
    # The invoices go in the order of the subscriptions, then of their cycles.
    order = {sub.id: position for sub, position in zip(slow, rows.to_list(), strict=True)}
    with step("one_by_one"):
        for sub in slow:
            try:
                tz = ZoneInfo(_tz(snapshot, sub))
                for period in cycles.cycles_between(sub, tz.key, first.replace(tzinfo=tz), after.replace(tzinfo=tz)):
                    drafts.append(_cycle_draft(snapshot, sub, period, billed))
            except Exception as e:  # noqa: BLE001 - one subscription never stops the invoicing of the others
                errors.append(_error(sub, e))
        priced = _price_apart(snapshot, out, drafts, billed)
    errors += priced.errors
    saved: list[tuple[int, datetime, Invoice | str]] = []
    # A cycle with nothing to bill (before the start, or after the last usage period) gets no invoice.
    checked = {}
    for invoice in priced.invoices:
        try:
            if invoice.lines:
                check_invoice(invoice)
                checked[invoice.id] = invoice
        except MeterError as e:
            errors.append(RunError(subscription=invoice.subscription, code=e.code, message=e.message))
    # Stored as save_draft stores each, in synced batches rather than one synced write per draft.
    with step("store"):
        for base, invoice_id, value in store.save_drafts(
            snapshot.tenant, ((i.id, msgspec.json.encode(i)) for i in checked.values())
        ):
            draft = checked[base]
            if invoice_id != base:
                draft = msgspec.json.decode(value, type=Invoice)
            saved.append((order[draft.subscription], draft.period_start, draft))
    fees = [d.period for d in drafts]
    usage = [d.arrears for d in drafts if d.arrears is not None]
    entries: list[Invoice | str] = [entry[2] for entry in sorted(saved, key=lambda entry: entry[:2])]
    if batched is not None and stored is not None:
        fees += [cycles.Period(*batched.fees)] if batched.fees else []
        usage += [cycles.Period(*batched.usage)] if batched.usage else []
        entries = _merged(saved, stored)
    return Priced(StoredInvoices(store, snapshot.tenant, entries), errors, _span(fees), _span(usage), fresh)


def _merged(saved: list[tuple[int, datetime, Invoice | str]], stored: pl.DataFrame) -> list[Invoice | str]:
    """The invoices saved one by one and the ids of those stored over whole tables, by subscription then cycle."""
    if not saved:
        return stored.sort("order", "period_start").get_column("stored").to_list()
    schema: dict[str, Any] = {"order": pl.UInt32, "period_start": stored.schema["period_start"], "one": pl.Int64}
    ones = pl.DataFrame([(order, start, i) for i, (order, start, _) in enumerate(saved)], schema=schema, orient="row")
    both = pl.concat(
        [stored.with_columns(one=pl.lit(None, pl.Int64)), ones.with_columns(stored=pl.lit(None, pl.String))],
        how="diagonal_relaxed",
    ).sort("order", "period_start")
    return [
        saved[one][2] if one is not None else invoice_id for invoice_id, one in both.select("stored", "one").iter_rows()
    ]


def _batched(
    snapshot: Snapshot, out: Path, billed: Billed, first: datetime, after: datetime
) -> tuple[pl.Series, Batch | None]:
    """The plain subscriptions' drafts over whole tables, and the rows of the others (all of them when that fails)."""
    table = snapshot.subscription_table
    everyone = pl.int_range(table.height, dtype=pl.UInt32, eager=True)
    if table.height == 0:
        return everyone, None
    customers = snapshot.customer_table.select(customer="id", timezone="timezone", currency="currency")
    subs = table.with_row_index("order").join(customers, on="customer", how="left", maintain_order="left")
    plain = plain_subscriptions(subs) & ~subs.get_column("id").is_in(
        pl.Series(list(billed.finalized), dtype=pl.String).implode()
    )
    # A subscription whose charge rating refuses is left to the per-subscription path, which reports it by name; a
    # few such are taken out one at a time, more than that send everyone that way.
    for _ in range(_REFUSALS):
        chosen = subs.filter(plain)
        if chosen.height == 0:
            return everyone, None
        try:
            batch = invoice_batch(snapshot, out, chosen, first, after)
        except Refused as e:
            plain &= subs.get_column("id") != e.subscription
            continue
        except Exception as e:  # noqa: BLE001 - the per-subscription path invoices them, and reports what fails
            if not isinstance(e, MeterError | NotPlain):  # not the input: keep the traceback for the server's operator
                print("meter: the columnar invoice run failed; invoicing one subscription at a time:", file=sys.stderr)
                traceback.print_exception(e, file=sys.stderr)
            return everyone, None
        return subs.filter(~plain).get_column("order"), batch
    return everyone, None


def _save_batch(store: InvoiceStore, out: Path, tenant: str, batch: Batch) -> tuple[Fresh, pl.DataFrame, set[str]]:
    """Stores the batch's drafts, a chunk at a time, and writes their export rows beside the export (``Fresh``).

    Returns those, what was stored (``order``, ``period_start`` and ``stored``, the id stored under) and the
    subscriptions whose drafts the columnar texts could not write (for the per-subscription path). The drafts skip
    the write-ahead log and are made durable by one flush at the end, whatever happens.
    """
    writer = FreshWriter(out, tenant)
    found: list[pl.DataFrame] = []
    left: set[str] = set()
    try:
        for chunk in batch.chunks():
            if chunk.refused:
                left.update(chunk.refused)
                continue
            invoices = chunk.invoices
            bases = invoices.get_column("id").to_list()
            with step("store"):
                stored = list(
                    store.save_drafts(
                        tenant,
                        zip(bases, invoices.get_column("json").cast(pl.Binary).to_list(), strict=True),
                        logged=False,
                    )
                )
            rows, lines = invoices.drop("json"), chunk.lines
            if len(stored) != len(bases) or any(base != invoice_id for base, invoice_id, _ in stored):
                # Some were finalized (skipped) or reissue a void invoice (stored under <id>-rN, `reissues` set):
                # the export reads the reissues back from the store.
                kept = pl.DataFrame(
                    [(base, invoice_id) for base, invoice_id, _ in stored],
                    schema={"id": pl.String, "stored": pl.String},
                    orient="row",
                )
                rows = rows.join(kept, on="id", how="inner", maintain_order="left")
                found.append(rows.select("order", "period_start", "stored"))
                rows = rows.filter(pl.col("id") == pl.col("stored")).drop("stored")
                lines = lines.join(rows.select(invoice="id"), on="invoice", how="semi", maintain_order="left")
            else:
                found.append(rows.select("order", "period_start", stored="id"))
            with step("invoice_parquet"):
                writer.write(rows.to_arrow(), lines.to_arrow())
    except BaseException:
        writer.close().discard()
        raise
    finally:
        with step("store"):
            store.flush()
    schema: dict[str, Any] = {"order": pl.UInt32, "period_start": pl.Datetime("us", "UTC"), "stored": pl.String}
    with step("invoice_parquet"):
        fresh = writer.close()
    return fresh, pl.concat([pl.DataFrame(schema=schema), *found]), left


def upcoming_invoices(
    snapshot: Snapshot, out: Path, store: InvoiceStore, customer: str, as_of: datetime
) -> list[Invoice]:
    """The preview of a customer's next invoices (one per subscription).

    The preview of a customer's next invoices (one per subscription): the cycle after ``as_of``, with the usage of
    the current cycle so far. Nothing is saved.
    """
    billed = Billed.of(store, snapshot.tenant)
    table = snapshot.subscription_table
    rows = (
        table.with_row_index("_row").filter(pl.col("customer") == customer).get_column("_row")
        if table.height
        else pl.Series(dtype=pl.UInt32)
    )
    subs = snapshot.subscriptions_of(rows)  # the customer's, not a million subscription objects
    if not subs and snapshot.customer(customer) is None:
        raise NotFound(f"customer {customer!r} was not found; create it with POST /v1/customers", "not_found")
    drafts = _upcoming_drafts(snapshot, subs, as_of, billed)
    return [invoice for invoice in _price(snapshot, out, drafts, billed) if invoice.lines]


class UpcomingDrafts:
    """The upcoming drafts of a tenant's subscriptions, each made once per cycle and kept (the live balances' source).

    A draft (the fees of the next cycle, the usage charges of the current one) changes only with the catalog, the
    invoices, or the cycle: kept for one snapshot and one billed history, it is made again when its cycle ends.
    Make a new one when either changes.
    """

    def __init__(self, snapshot: Snapshot, billed: Billed) -> None:
        self.snapshot, self.billed = snapshot, billed
        #: subscription id -> (the cycle containing the time asked for, the draft of the cycle after it)
        self._drafts: dict[str, tuple[cycles.Period, _Draft]] = {}

    def of(self, subs: Sequence[Subscription], as_of: datetime) -> list[_Draft]:
        drafts = []
        for sub in subs:
            current = _current_cycle(self.snapshot, sub, as_of)
            kept = self._drafts.get(sub.id)
            if kept is None or kept[0] != current:
                kept = self._drafts[sub.id] = (current, _next_draft(self.snapshot, sub, current, self.billed))
            drafts.append(kept[1])
        return drafts


def upcoming_of(
    drafts: UpcomingDrafts, out: Path, subs: Sequence[Subscription], as_of: datetime, quantities: Quantities
) -> Priced:
    """The upcoming invoices of many subscriptions at once, rated from ``quantities`` (the live balances' source).

    The same drafts and the same pricing as :func:`upcoming_invoices`, so that what the live state says a grant has
    paid is what the invoice will draw from it; a subscription that cannot be rated is in ``errors``.
    """
    return _price_apart(drafts.snapshot, out, drafts.of(subs, as_of), drafts.billed, quantities)


@dataclass(frozen=True)
class Consumed:
    """What one usage key rates at for the usage up to an instant: the service given, for revenue recognition."""

    sub: Subscription
    #: The key's text: subscription, price, version and cycle (:mod:`meter.billing.keys`).
    key: str
    #: What the key's usage rates at, rounded half to even to the minor unit (as its invoice line would be).
    amount: Decimal
    quantity: Decimal | None
    price: str
    meter: str | None
    currency: str
    #: The key's billing cycle (None for a key that names none).
    cycle: cycles.Period | None


def consumption(
    snapshot: Snapshot,
    out: Path,
    start: datetime,
    end: datetime,
    ended: frozenset[tuple[str, datetime]] = frozenset(),
    skip: Callable[[str, datetime], bool] | None = None,
    covered: frozenset[str] = frozenset(),
) -> tuple[list[Consumed], list[RunError]]:
    """The usage keys of every cycle that overlaps ``[start - RESTATE, end)``, each rated for its usage before ``end``.

    (A cycle that ended within :data:`RESTATE` before ``start`` may have taken late events since.) And of the cycles
    in ``ended`` (``(subscription, cycle start)``: cycles billed again since, for late usage), rated whole; but not
    the cycles ended by ``end`` that ``skip`` names. What a key rates at does not depend on what was billed: it is
    the usage consumed, priced (the charges alone: no invoice is assembled). A subscription that cannot be rated is
    in the errors (the others are rated).

    ``covered`` names subscriptions known to have nothing to rate (every cycle of theirs it would look at, those in
    ``ended`` included, is over and one that ``skip`` names): they are not looked at.
    """
    charges: list[tuple[Subscription, _Charge]] = []
    errors: list[RunError] = []
    again: dict[str, list[datetime]] = defaultdict(list)
    for sid, at in ended:
        again[sid].append(at)
    for sub in snapshot.subscriptions:
        if sub.id in covered:
            continue
        live = (sub.end is None or sub.end > start - RESTATE) and sub.start < end
        if not live and sub.id not in again:
            continue
        try:
            tz = _tz(snapshot, sub)
            # Cycles that ended within the restatement window may still take late events: rated again unless settled.
            first = cycles.cycle_containing(sub, tz, max(start - RESTATE, sub.start)).start
            periods = cycles.cycles_between(sub, tz, first, end) if live else []
            periods += [cycles.cycle_containing(sub, tz, at) for at in again.get(sub.id, []) if at < first]
            for period in periods:
                if skip is not None and period.end <= end and skip(sub.id, period.start):
                    continue  # settled and over: what was billed is what it earned; a cycle still running is rated
                for charge in _arrears(snapshot, sub, tz, period, min(end, period.end)):
                    if charge.price.meter and charge.start < charge.measured_to:
                        charges.append((sub, charge))
        except Exception as e:  # noqa: BLE001 - one subscription never stops the others
            errors.append(_error(sub, e))
    try:
        rated = _rate_charges(snapshot, out, charges, explained=False)
    except Exception:  # noqa: BLE001 - found again below, per subscription
        rated, kept = {}, list[tuple[Subscription, _Charge]]()
        by_sub: dict[str, list[tuple[Subscription, _Charge]]] = defaultdict(list)
        for sub, charge in charges:
            by_sub[sub.id].append((sub, charge))
        for group in by_sub.values():
            try:
                for n, rating in _rate_charges(snapshot, out, group, explained=False).items():
                    rated[len(kept) + n] = rating
                kept += group
            except Exception as e:  # noqa: BLE001 - one subscription never stops the others
                errors.append(_error(group[0][0], e))
        charges = kept
    found = []
    for n, (sub, charge) in enumerate(charges):
        customer = snapshot.customer(sub.customer)
        assert customer is not None  # _tz found it
        amount, quantity, _ = rated[n]
        found.append(
            Consumed(
                sub=sub,
                key=charge.key.text(),
                amount=round_to_minor_unit(amount, customer.currency),
                quantity=None if quantity is None else quantity.normalize(),
                price=charge.price.id,
                meter=charge.price.meter,
                currency=customer.currency,
                cycle=cycles.Period(charge.key.cycle_start, charge.key.cycle_end)
                if isinstance(charge.key, ChargeKey)
                else None,
            )
        )
    return found, errors


def _upcoming_drafts(snapshot: Snapshot, subs: Sequence[Subscription], as_of: datetime, billed: Billed) -> list[_Draft]:
    """Each subscription's next cycle's draft: its fees, and the usage of the cycle containing ``as_of``."""
    return [_next_draft(snapshot, sub, _current_cycle(snapshot, sub, as_of), billed) for sub in subs]


def _current_cycle(snapshot: Snapshot, sub: Subscription, as_of: datetime) -> cycles.Period:
    return cycles.cycle_containing(sub, _tz(snapshot, sub), as_of)


def _next_draft(snapshot: Snapshot, sub: Subscription, current: cycles.Period, billed: Billed) -> _Draft:
    return _cycle_draft(snapshot, sub, cycles.cycle_containing(sub, _tz(snapshot, sub), current.end), billed)


def bill_thresholds(
    snapshot: Snapshot,
    out: Path,
    store: InvoiceStore,
    as_of: datetime,
    prepare: Callable[[Invoice], Invoice] | None = None,
) -> Priced:
    """Issues the threshold invoices due at ``as_of``.

    Issues (finalized, in one write) an early invoice for every subscription whose usage in its current cycle, not
    billed yet, has reached its ``threshold``. The cycle's own invoice later bills only the rest. ``prepare`` is what
    finalizing applies to each (its tax); one that fails is reported in ``errors`` and the others are issued.
    """
    billed = Billed.of(store, snapshot.tenant)
    drafts, errors = [], []
    for sub in snapshot.subscriptions:
        if sub.threshold is None:
            continue
        try:
            tz = _tz(snapshot, sub)
            current = cycles.cycle_containing(sub, tz, as_of)
            draft = _Draft(
                f"{sub.id}-{current.start:%Y%m%d}-t{as_of:%Y%m%dT%H%M%S}", sub, "threshold", current, current, as_of, tz
            )
            draft.charges = [c for c in _arrears(snapshot, sub, tz, current, as_of) if c.kind == "usage"]
            drafts.append(draft)
        except Exception as e:  # noqa: BLE001 - one subscription never stops the invoicing of the others
            errors.append(_error(sub, e))
    priced = _price_apart(snapshot, out, drafts, billed)
    issued = []
    for invoice in priced.invoices:
        sub = next(s for s in snapshot.subscriptions if s.id == invoice.subscription)
        assert sub.threshold is not None
        if invoice.total < sub.threshold:
            continue
        try:
            final = store.issue(invoice, now=as_of, prepare=prepare)
        except Exception as e:  # noqa: BLE001 - one subscription never stops the invoicing of the others
            errors.append(_error(sub, e))
            continue
        if final is not None:
            issued.append(final)
    return Priced(issued, errors + priced.errors)


def _error(sub: Subscription, e: Exception) -> RunError:
    if isinstance(e, MeterError):
        return RunError(subscription=sub.id, code=e.code, message=e.message)
    # Not an error of the input we know of: keep the traceback for whoever runs the server.
    print(f"meter: invoicing subscription {sub.id!r} failed:", file=sys.stderr)
    traceback.print_exception(e, file=sys.stderr)
    return RunError(subscription=sub.id, code="internal", message=f"{type(e).__name__}: {e}")


def _span(periods: list[cycles.Period]) -> ServicePeriod | None:
    if not periods:
        return None
    return ServicePeriod(start=min(p.start for p in periods), end=max(p.end for p in periods))


def _tz(snapshot: Snapshot, sub: Subscription) -> str:
    customer = snapshot.customer(sub.customer)
    if customer is None:
        raise InvalidInput(
            f"subscription {sub.id!r}: customer {sub.customer!r} is not in the catalog snapshot", code="invalid_catalog"
        )
    return customer.timezone


def _cycle_draft(snapshot: Snapshot, sub: Subscription, period: cycles.Period, billed: Billed) -> _Draft:
    tz = _tz(snapshot, sub)
    previous = cycles.previous_cycle(sub, tz, period)
    arrears = previous if previous.end > sub.start else None
    draft = _Draft(f"{sub.id}-{period.start:%Y%m%d}", sub, "cycle", period, arrears, period.start, tz)
    draft.charges += _in_advance(snapshot, sub, tz, period, "recurring")
    owned: set[tuple[datetime, Timing]] = {(period.start, "in_advance")}
    if arrears is not None:
        draft.charges += _arrears(snapshot, sub, tz, arrears, arrears.end)
        owned.add((arrears.start, "in_arrears"))
        draft.charges += _corrections(snapshot, sub, tz, period, arrears, billed, owned)
    draft.charges += _gone(sub, tz, draft.charges, billed, owned)
    return draft


def _corrections(
    snapshot: Snapshot,
    sub: Subscription,
    tz: str,
    period: cycles.Period,
    arrears: cycles.Period,
    billed: Billed,
    owned: set[tuple[datetime, Timing]],
) -> list[_Charge]:
    """Earlier cycles re-rated for adjustments.

    Earlier cycles re-rated, within the back-dating window, once the invoice that billed them is finalized: the
    fees in advance of the cycles before ``period`` (billed on their own invoice) and the usage of the cycles before
    ``arrears`` (billed on the next cycle's invoice). Adds what it re-rates to ``owned``.
    """
    charges = []
    finalized = billed.cycles.get(sub.id, set())
    q = arrears
    while q.end > sub.start and q.end >= arrears.start - RESTATE:
        if q.start in finalized and q.end >= period.start - RESTATE:
            for c in _in_advance(snapshot, sub, tz, q, "adjustment"):
                c.billed_on = q.start
                charges.append(c)
            owned.add((q.start, "in_advance"))
        if q.end <= arrears.start and q.end in finalized:
            for p in _arrears_parts(snapshot, sub, tz, q, q.end):
                c = _charge(sub, p.price, p.seg, "adjustment", p.measured_to, p.note, q, p.n)
                c.billed_on = q.end
                charges.append(c)
            owned.add((q.start, "in_arrears"))
        q = cycles.previous_cycle(sub, tz, q)
    return charges


def _gone(
    sub: Subscription, tz: str, charges: list[_Charge], billed: Billed, owned: set[tuple[datetime, Timing]]
) -> list[_Charge]:
    """The keys billed before that no longer exist.

    The keys finalized invoices billed, in the cycles this invoice answers for, that no longer exist: each rates
    at zero now, so its line takes back what was billed.
    """
    current = {c.key for c in charges}
    found: dict[LineKey, InvoiceLine] = {}
    # Lines before the oldest cycle answered for are skipped before their cycle is computed: history grows.
    oldest = min(start for start, _ in owned)
    for key, line in billed.keyed.get(sub.id, []):
        if key in current or key in found or line.kind not in _CHARGE_KINDS or line.period_end <= oldest:
            continue
        cycle = cycles.cycle_containing(sub, tz, line.period_start)
        if (cycle.start, _timing(line)) not in owned:
            continue
        # Keys stored before they named the cycle named the segment (``...|<segment start>|<segment end>``): the
        # same price, version and cycle is the same charge, so what it billed counts for today's key.
        same = ChargeKey(sub.id, line.price or "", line.version or 0, cycle.start, cycle.end)
        if same in current:
            billed.adopt(key, same)
        else:
            found[key] = line
    out = []
    # In the order of the keys' texts, as the lines were always listed.
    for key, line in sorted(found.items(), key=lambda item: item[0].text()):
        with trusted():  # never rated (the line rates at zero): ISO's "no currency" code, not catalog input
            price = Price(id=line.price or "?", currency="XXX", model="flat", amount=_ZERO)
        what = f"{line.meter or line.price} ({line.model})"
        out.append(
            _Charge(
                key,
                "adjustment",
                _timing(line),
                price,
                line.version or 0,
                "",
                line.period_start,
                line.period_end,
                line.period_end,
                Decimal(1),
                f"{what}; no longer billed for {line.period_start:%Y-%m-%d}..{line.period_end:%Y-%m-%d}",
                gone=line,
            )
        )
    return out


def _timing(line: InvoiceLine) -> Timing:
    if line.timing is not None:
        return line.timing
    # Lines stored before ``timing`` existed: fees in advance said so in their description.
    return "in_advance" if line.model == "flat" and "in advance" in line.description else "in_arrears"


@dataclass
class _Part:
    """A price over a segment of a cycle billed in arrears; ``n``: earlier segments of its version in the cycle."""

    price: Price
    seg: cycles.Segment
    n: int
    measured_to: datetime
    note: str
    kind: Literal["recurring", "usage"]


def _numbered(sub: Subscription, tz: str, period: cycles.Period) -> list[tuple[cycles.Segment, int]]:
    """The segments of ``period``, numbered per version.

    The segments of ``period``, each with how many earlier segments of the same version the cycle has (0 mostly;
    a subscription that comes back to a version within one cycle has two).
    """
    seen: dict[int, int] = defaultdict(int)
    out = []
    for seg in cycles.segments(sub, tz, period):
        out.append((seg, seen[seg.version]))
        seen[seg.version] += 1
    return out


def _in_advance(
    snapshot: Snapshot, sub: Subscription, tz: str, period: cycles.Period, kind: Literal["recurring", "adjustment"]
) -> list[_Charge]:
    charges = []
    for seg, n in _numbered(sub, tz, period):
        for price in snapshot.prices_of(sub, seg.version):
            if price.model == "flat" and price.cadence == "in_advance":
                charges.append(_charge(sub, price, seg, kind, seg.end, "in advance", period, n))
    return charges


def _arrears_parts(
    snapshot: Snapshot, sub: Subscription, tz: str, period: cycles.Period, measured_to: datetime
) -> list[_Part]:
    parts = []
    for seg, n in _numbered(sub, tz, period):
        for price in snapshot.prices_of(sub, seg.version):
            if price.model == "flat":
                if price.cadence == "in_arrears":
                    parts.append(_Part(price, seg, n, seg.end, "in arrears", "recurring"))
            else:
                parts.append(_Part(price, seg, n, min(seg.end, measured_to), "", "usage"))
    return parts


def _arrears(
    snapshot: Snapshot, sub: Subscription, tz: str, period: cycles.Period, measured_to: datetime
) -> list[_Charge]:
    return [
        _charge(sub, p.price, p.seg, p.kind, p.measured_to, p.note, period, p.n)
        for p in _arrears_parts(snapshot, sub, tz, period, measured_to)
    ]


def _charge(
    sub: Subscription,
    price: Price,
    seg: cycles.Segment,
    kind: ChargeKind,
    measured_to: datetime,
    note: str,
    cycle: cycles.Period,
    n: int = 0,
) -> _Charge:
    # The key names the billing cycle, not the segment: a plan change or an end in the middle of a cycle changes
    # what the key rates at, and the difference is billed; it does not make a new key.
    key = ChargeKey(sub.id, price.id, seg.version, cycle.start, cycle.end, n + 1)
    overridden = any(o.id == price.id for o in sub.overrides) and seg.version == sub.version
    price_key = f"{sub.plan}/{'override:' + sub.id if overridden else seg.version}/{price.id}"
    what = price.meter or price.id
    if kind == "adjustment":
        note = "; ".join(
            x for x in (note, f"prior-period adjustment for {seg.start:%Y-%m-%d}..{seg.end:%Y-%m-%d}") if x
        )
    description = "; ".join(x for x in (f"{what} ({price.model})", note, seg.reason) if x)
    timing: Timing = "in_advance" if price.model == "flat" and price.cadence == "in_advance" else "in_arrears"
    return _Charge(
        key,
        kind,
        timing,
        price,
        seg.version,
        price_key,
        seg.start,
        seg.end,
        measured_to,
        seg.proration if price.model == "flat" else Decimal(1),
        description,
    )


def _price_apart(
    snapshot: Snapshot, out: Path, drafts: list[_Draft], billed: Billed, quantities: Quantities | None = None
) -> Priced:
    """Prices the drafts, isolating the subscriptions that fail.

    :func:`_price` of all drafts at once; when that fails, of each subscription's drafts alone, so that the
    failure is reported against the subscriptions it belongs to and the others are invoiced.
    """
    try:
        return Priced(_price(snapshot, out, drafts, billed, quantities), [])
    except Exception:  # noqa: BLE001 - found again below, per subscription
        pass
    by_sub: dict[str, list[_Draft]] = defaultdict(list)
    for d in drafts:
        by_sub[d.sub.id].append(d)
    invoices, errors = [], []
    for group in by_sub.values():
        try:
            invoices += _price(snapshot, out, group, billed, quantities)
        except Exception as e:  # noqa: BLE001 - one subscription never stops the invoicing of the others
            errors.append(_error(group[0].sub, e))
    return Priced(invoices, errors)


_Rating = tuple[Decimal, Decimal | None, list[LineDetail]]


def _price(
    snapshot: Snapshot, out: Path, drafts: list[_Draft], billed: Billed, quantities: Quantities | None = None
) -> list[Invoice]:
    """Rates every charge of every draft in one vectorised pass, then assembles the invoices.

    Usage comes from the Parquet export under ``out`` unless ``quantities`` gives it (the live state reads the engine).
    """
    rated = _rate_charges(snapshot, out, [(d.sub, c) for d in drafts for c in d.charges if c.gone is None], quantities)
    by_draft: dict[str, list[tuple[_Charge, _Rating]]] = defaultdict(list)
    i = 0
    for d in drafts:
        for c in d.charges:
            if c.gone is None:
                by_draft[d.id].append((c, rated[i]))
                i += 1
            else:
                by_draft[d.id].append((c, (_ZERO, _ZERO if c.gone.quantity is not None else None, [])))
    return [_assemble(snapshot, d, by_draft[d.id], billed) for d in drafts]


def _rate_charges(
    snapshot: Snapshot,
    out: Path,
    charges: list[tuple[Subscription, _Charge]],
    quantities: Quantities | None = None,
    explained: bool = True,
) -> dict[int, _Rating]:
    """Each charge's rating (amount before rounding, quantity, details), by its position, in one vectorised pass.

    Without ``explained``, no details (an invoice line's; what revenue recognition rates needs only the amounts).
    """
    rated: dict[int, _Rating] = {}
    if charges:
        with trusted():  # rating's own keys (plan/version/price) as ids: not catalog input, and not catalog ids
            prices = {c.price_key: msgspec.structs.replace(c.price, id=c.price_key) for _, c in charges}
        frame = pl.DataFrame(
            {
                "charge": [str(i) for i in range(len(charges))],
                "price_id": [c.price_key for _, c in charges],
                "proration": [c.proration for _, c in charges],
            },
            schema=CHARGES_SCHEMA,
        )
        usage = [(i, d, c) for i, (d, c) in enumerate(charges) if c.price.meter is not None]
        requests = pl.DataFrame(
            {
                "charge": [str(i) for i, _, _ in usage],
                "customer": [sub.customer for _, sub, _ in usage],
                "meter": [c.price.meter for _, _, c in usage],
                "from": [c.start for _, _, c in usage],
                "to": [c.measured_to for _, _, c in usage],
                "dimensions": [c.price.matrix.dimensions if c.price.matrix else None for _, _, c in usage],
            },
            schema={
                "charge": pl.String,
                "customer": pl.String,
                "meter": pl.String,
                "from": pl.Datetime("us", "UTC"),
                "to": pl.Datetime("us", "UTC"),
                "dimensions": pl.List(pl.String),
            },
        )
        aggregations = {slug: spec.aggregation for slug, spec in snapshot.meters.items()}
        per_event = pl.Series(
            [c.price.percentage is not None and c.price.percentage.per == "event" for _, _, c in usage],
            dtype=pl.Boolean,
        )
        periodic = requests.filter(~per_event)
        used = (
            quantities(periodic)
            if quantities is not None
            else period_quantities(out, snapshot.tenant, periodic, aggregations)
        )
        amounts = event_amounts(out, snapshot.tenant, requests.filter(per_event), snapshot.meters)
        result = rate(frame, price_frame(prices.values()), used.select("charge", "quantity", "combination"), amounts)
        details: dict[str, list[LineDetail]] = defaultdict(list)
        for row in result.details.iter_rows(named=True) if explained else ():
            tier_from = tier_to = None
            if row["tier"] is not None:
                tiers = charges[int(row["charge"])][1].price.tiers or []
                tier = tiers[row["tier"] - 1]
                tier_from, tier_to = tier.start, tier.up_to
            details[row["charge"]].append(
                LineDetail(
                    component=row["component"],
                    units=_normal(row["units"]) or _ZERO,
                    unit_price=_normal(row["unit_price"]) or _ZERO,
                    subtotal=row["subtotal"].normalize(),
                    tier=row["tier"],
                    tier_from=tier_from,
                    tier_to=tier_to,
                    combination=row["combination"],
                    flat_fee=_normal(row["flat_fee"]),
                    free_units=_normal(row["free_units"]),
                    raised_to_min_fee=row["raised_to_min_fee"] or None,
                    cut_to_max_fee=row["cut_to_max_fee"] or None,
                )
            )
        columns = ("charge", "amount", "quantity", "subtotal", "amount_exact", "minimum_applied", "maximum_applied")
        for charge, amount, quantity, subtotal, exact, raised, cut in result.lines.select(*columns).iter_rows():
            if (raised or cut) and explained:
                # The step to the bound is a detail of its own, so that the details add up to what the key rates at.
                step = (exact - subtotal).normalize()
                details[charge].append(
                    LineDetail(
                        component="minimum" if raised else "maximum", units=Decimal(1), unit_price=step, subtotal=step
                    )
                )
            rated[int(charge)] = (amount, quantity, details[charge])
    return rated


def _normal(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.normalize()


def _assemble(snapshot: Snapshot, draft: _Draft, rated: list[tuple[_Charge, _Rating]], billed: Billed) -> Invoice:
    customer = snapshot.customer(draft.sub.customer)
    assert customer is not None  # _tz found it when the draft was made
    sub, currency = draft.sub, customer.currency

    def money(amount: Decimal) -> Decimal:
        return round_to_minor_unit(amount, currency)

    lines: list[InvoiceLine] = []
    for charge, (amount, quantity, details) in rated:
        now = money(amount)
        before = billed.by_key.get(charge.key, _ZERO)
        due = now - before
        if charge.kind == "adjustment" and due == 0:
            continue
        numbers = list(billed.numbers.get(charge.key, []))
        cycle_number = billed.cycle_numbers.get((sub.id, charge.billed_on)) if charge.billed_on else None
        if cycle_number is not None and cycle_number not in numbers:
            numbers.append(cycle_number)  # an adjustment names the invoice of the period it adjusts, new key or not
        added = None if quantity is None else (quantity - billed.quantity.get(charge.key, _ZERO)).normalize()
        description = charge.description
        if numbers and charge.kind == "adjustment":
            description += f"; corrects {', '.join(numbers)}"
        elif numbers:
            description += f"; less what {', '.join(numbers)} billed"
        meter = charge.price.meter if charge.gone is None else charge.gone.meter
        events = None
        if meter is not None:
            spec = snapshot.meters.get(meter)
            event_type = spec.event_type if spec else "?"
            events = (
                f"{events_cited(snapshot.tenant)}: type = {event_type!r}, subject = {sub.customer!r}, "
                f"time in [{charge.start.isoformat()}, {charge.measured_to.isoformat()})"
            )
        price, model = (
            (charge.price.id, charge.price.model) if charge.gone is None else (charge.gone.price, charge.gone.model)
        )
        lines.append(
            InvoiceLine(
                kind=charge.kind,
                description=description,
                amount=money(due),
                period_start=charge.start,
                period_end=charge.end,
                key=charge.key.text(),
                price=price,
                version=charge.version,
                model=model,
                meter=meter,
                timing=charge.timing,
                quantity=added,
                rated=now,
                billed=money(before) if numbers else None,
                billed_quantity=(
                    billed.quantity.get(charge.key, _ZERO).normalize() if numbers and quantity is not None else None
                ),
                corrects=numbers,
                details=details,
                events=events,
            )
        )

    lines += commit_lines(sub, draft.period, draft.arrears, draft.reason, billed, lines)
    lines += discount_lines(sub, draft.period, draft.reason, lines, money)
    lines = [msgspec.structs.replace(line, amount=money(line.amount)) for line in lines]
    subtotal = sum((line.amount for line in lines), money(_ZERO))
    lines += [
        msgspec.structs.replace(line, amount=money(line.amount)) for line in credit_lines(sub, lines, billed, draft.tz)
    ]
    total = sum((line.amount for line in lines), money(_ZERO))
    tz = ZoneInfo(draft.tz)
    arrears = draft.arrears
    return Invoice(
        id=draft.id,
        tenant=snapshot.tenant,
        customer=sub.customer,
        subscription=sub.id,
        currency=currency,
        reason=draft.reason,
        period_start=draft.period.start,
        period_end=draft.period.end,
        issued_at=draft.issued_at,
        lines=lines,
        subtotal=subtotal,
        total=total,
        period=f"{draft.period.start.astimezone(tz):%Y-%m}",
        usage_start=arrears.start if arrears else None,
        usage_end=arrears.end if arrears else None,
        usage_period=f"{arrears.start.astimezone(tz):%Y-%m}" if arrears else None,
        basis=sorted(billed.finalized.get(sub.id, [])),
    )
