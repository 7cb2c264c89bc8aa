"""Invoicing: the invoices of a billing run, computed from the Parquet export (usage and the catalog snapshot) and
what finalized invoices billed already. It never reads RocksDB.

The invoice of a subscription's cycle ``C`` is issued at ``C``'s start and holds:

- **recurring fees in advance** for ``C`` (flat prices with ``cadence: in_advance``), one line per part of the cycle
  the subscription covers (``cycles.segments``: prorated by day for a start, an end or a plan change, said on the
  line);
- **usage in arrears** for the previous cycle ``P`` (and flat prices ``in_arrears``), per part of ``P``: usage is
  measured over the part's own ``[start, end)``, so it needs no proration; tiers restart at a plan change;
- **prior-period adjustments**: usage that arrived for an earlier period (within the back-dating window) after its
  invoice was finalized, billed as the difference between what it rates at now and what was billed;
- a **prepaid commit** bought in ``C``, and a **postpaid commit's shortfall** when its term ended in ``P`` and the
  contract bills it;
- **discounts**, on one price's lines or on the invoice (percent or a fixed amount, never below zero);
- **credits and prepaid commits** drawn down, lowest ``priority`` first, then the one expiring first, over the
  usage lines they apply to (their price ids, or all usage), limited to what is left of them after finalized
  invoices.

Every line that bills something carries a ``key`` (subscription, price, version, service period): what it bills is
what the key rates at now minus what finalized invoices billed for the same key. That one rule makes re-running
idempotent, bills the rest of a cycle after a threshold invoice, and turns late usage into adjustment lines.

Money: each line is rated exactly and rounded half-even to the currency's minor unit (``money``); discounts are
computed on rounded lines and rounded the same way; subtotal and total are sums of rounded lines. One currency per
invoice: the customer's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec
import polars as pl

from meter.catalog.billing import Commit, Credit, Subscription
from meter.catalog.prices import Price
from meter.catalog.types import trusted
from meter.exceptions import InvalidInput
from meter.pricing import cycles
from meter.pricing.charges import CHARGES_SCHEMA, price_frame
from meter.pricing.invoices import Invoice, InvoiceLine, InvoiceStore, LineDetail
from meter.pricing.money import round_to_minor_unit
from meter.pricing.rating import rate
from meter.pricing.snapshot import Snapshot
from meter.pricing.usage import event_amounts, period_quantities

__all__ = ["Billed", "bill_thresholds", "invoice_period", "upcoming_invoices"]

#: Late events are accepted this far back (the engine's default back-dating window): periods that ended within it
#: are re-rated for adjustments.
RESTATE = timedelta(days=35)
_ZERO = Decimal(0)


@dataclass
class Billed:
    """What finalized (not void) invoices billed: per line key, per grant drawn, and each usage line for commits."""

    by_key: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    drawn: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    #: Per subscription, its usage lines: for commits' spend and for the periods adjustments re-rate.
    usage: dict[str, list[InvoiceLine]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of(cls, store: InvoiceStore, tenant: str) -> Billed:
        billed = cls()
        for invoice in store.list(tenant):
            if invoice.status != "finalized":
                continue
            for line in invoice.lines:
                if line.key is not None:
                    billed.by_key[line.key] += line.amount
                if line.grant is not None:
                    billed.drawn[line.grant] -= line.amount
                if line.kind in ("usage", "adjustment"):
                    billed.usage[invoice.subscription].append(line)
        return billed


@dataclass
class _Charge:
    """One price billed over one service span of one subscription."""

    key: str
    kind: Literal["recurring", "usage", "adjustment"]
    price: Price
    version: int
    price_key: str
    start: datetime
    end: datetime
    #: Usage is measured over [start, measured_to): the span, or up to now on a threshold invoice.
    measured_to: datetime
    proration: Decimal
    description: str


@dataclass
class _Draft:
    id: str
    sub: Subscription
    reason: Literal["cycle", "threshold"]
    period: cycles.Period
    #: The usage period billed in arrears (None on a subscription's first invoice).
    arrears: cycles.Period | None
    issued_at: datetime
    charges: list[_Charge] = field(default_factory=list)


def invoice_period(snapshot: Snapshot, out: Path, store: InvoiceStore, month: str) -> list[Invoice]:
    """Computes and saves as drafts the invoices of every cycle that starts in ``month`` (``YYYY-MM``, in each
    customer's time zone); a cycle whose invoice is finalized already is left alone (late usage goes on the next
    one). Returns the drafts saved."""
    try:
        first = datetime.strptime(month, "%Y-%m")
    except ValueError:
        raise InvalidInput(f"period must be a month as YYYY-MM, such as 2026-11; got {month!r}",
                           code="invalid_period") from None
    after = first.replace(year=first.year + first.month // 12, month=first.month % 12 + 1)
    billed = Billed.of(store, snapshot.tenant)
    drafts = []
    for sub in snapshot.subscriptions:
        tz = ZoneInfo(_tz(snapshot, sub))
        for period in cycles.cycles_between(sub, tz.key, first.replace(tzinfo=tz), after.replace(tzinfo=tz)):
            drafts.append(_cycle_draft(snapshot, sub, period, billed))
    # A cycle with nothing to bill (before the start, or after the last usage period) gets no invoice.
    invoices = [invoice for invoice in _price(snapshot, out, drafts, billed) if invoice.lines]
    return [invoice for invoice in invoices if store.save_draft(invoice)]


def upcoming_invoices(snapshot: Snapshot, out: Path, store: InvoiceStore, customer: str,
                      as_of: datetime) -> list[Invoice]:
    """The preview of a customer's next invoices (one per subscription): the cycle after ``as_of``, with the usage of
    the current cycle so far. Nothing is saved."""
    billed = Billed.of(store, snapshot.tenant)
    drafts = []
    for sub in snapshot.subscriptions:
        if sub.customer != customer:
            continue
        tz = _tz(snapshot, sub)
        current = cycles.cycle_containing(sub, tz, as_of)
        drafts.append(_cycle_draft(snapshot, sub, cycles.cycle_containing(sub, tz, current.end), billed))
    if not drafts and customer not in snapshot.customers:
        raise InvalidInput(f"no customer {customer!r} in the catalog snapshot", code="not_found")
    return [invoice for invoice in _price(snapshot, out, drafts, billed) if invoice.lines]


def bill_thresholds(snapshot: Snapshot, out: Path, store: InvoiceStore, as_of: datetime) -> list[Invoice]:
    """Issues (finalized) an early invoice for every subscription whose usage in its current cycle, not billed yet,
    has reached its ``threshold``. The cycle's own invoice later bills only the rest."""
    billed = Billed.of(store, snapshot.tenant)
    drafts = []
    for sub in snapshot.subscriptions:
        if sub.threshold is None:
            continue
        tz = _tz(snapshot, sub)
        current = cycles.cycle_containing(sub, tz, as_of)
        draft = _Draft(f"{sub.id}-{current.start:%Y%m%d}-t{as_of:%Y%m%dT%H%M%S}", sub, "threshold", current,
                       current, as_of)
        draft.charges = [c for c in _arrears(snapshot, sub, tz, current, as_of) if c.kind == "usage"]
        drafts.append(draft)
    issued = []
    for invoice in _price(snapshot, out, drafts, billed):
        sub = next(s for s in snapshot.subscriptions if s.id == invoice.subscription)
        assert sub.threshold is not None
        if invoice.total >= sub.threshold and store.save_draft(invoice):
            issued.append(store.finalize(snapshot.tenant, invoice.id, now=as_of))
    return issued


def _tz(snapshot: Snapshot, sub: Subscription) -> str:
    customer = snapshot.customers.get(sub.customer)
    if customer is None:
        raise InvalidInput(f"subscription {sub.id!r}: customer {sub.customer!r} is not in the catalog snapshot",
                           code="invalid_catalog")
    return customer.timezone


def _cycle_draft(snapshot: Snapshot, sub: Subscription, period: cycles.Period, billed: Billed) -> _Draft:
    tz = _tz(snapshot, sub)
    previous = cycles.cycle_containing(sub, tz, period.start - timedelta(microseconds=1))
    arrears = previous if previous.end > sub.start else None
    draft = _Draft(f"{sub.id}-{period.start:%Y%m%d}", sub, "cycle", period, arrears, period.start)
    for seg in cycles.segments(sub, tz, period):
        for price in snapshot.prices_of(sub, seg.version):
            if price.model == "flat" and price.cadence == "in_advance":
                draft.charges.append(_charge(sub, price, seg, "recurring", seg.end, "in advance"))
    if arrears is not None:
        draft.charges += _arrears(snapshot, sub, tz, arrears, arrears.end)
        draft.charges += _adjustments(snapshot, sub, arrears, billed)
    return draft


def _arrears(snapshot: Snapshot, sub: Subscription, tz: str, period: cycles.Period,
             measured_to: datetime) -> list[_Charge]:
    charges = []
    for seg in cycles.segments(sub, tz, period):
        for price in snapshot.prices_of(sub, seg.version):
            if price.model == "flat":
                if price.cadence == "in_arrears":
                    charges.append(_charge(sub, price, seg, "recurring", seg.end, "in arrears"))
            else:
                charges.append(_charge(sub, price, seg, "usage", min(seg.end, measured_to), ""))
    return charges


def _adjustments(snapshot: Snapshot, sub: Subscription, arrears: cycles.Period, billed: Billed) -> list[_Charge]:
    """Usage periods before ``arrears`` billed already, within the back-dating window: re-rated for late usage."""
    charges = []
    spans = {line.key: line for line in billed.usage.get(sub.id, []) if line.key and line.version is not None}
    for _, line in sorted(spans.items()):
        start, end, version = line.period_start, line.period_end, line.version
        if version is None or not (arrears.start - RESTATE <= end <= arrears.start):
            continue
        price = next((p for p in snapshot.prices_of(sub, version) if p.id == line.price), None)
        if price is None:
            continue
        seg = cycles.Segment(version=version, start=start, end=end, proration=Decimal(1), reason="")
        charges.append(_charge(sub, price, seg, "adjustment", end,
                               f"prior-period adjustment for {start:%Y-%m-%d}..{end:%Y-%m-%d}"))
    return charges


def _charge(sub: Subscription, price: Price, seg: cycles.Segment, kind: Literal["recurring", "usage", "adjustment"],
            measured_to: datetime, note: str) -> _Charge:
    key = f"{sub.id}|{price.id}|{seg.version}|{seg.start.isoformat()}|{seg.end.isoformat()}"
    overridden = any(o.id == price.id for o in sub.overrides) and seg.version == sub.version
    price_key = f"{sub.plan}/{'override:' + sub.id if overridden else seg.version}/{price.id}"
    what = price.meter or price.id
    description = "; ".join(x for x in (f"{what} ({price.model})", note, seg.reason) if x)
    return _Charge(key, kind, price, seg.version, price_key, seg.start, seg.end, measured_to,
                   seg.proration if price.model == "flat" else Decimal(1), description)


def _price(snapshot: Snapshot, out: Path, drafts: list[_Draft], billed: Billed) -> list[Invoice]:
    """Rates every charge of every draft in one vectorised pass, then assembles the invoices."""
    charges = [(d, c) for d in drafts for c in d.charges]
    rated: dict[int, tuple[Decimal, Decimal | None, list[LineDetail]]] = {}
    if charges:
        with trusted():  # rating's own keys (plan/version/price) as ids: not catalog input, and not catalog ids
            prices = {c.price_key: msgspec.structs.replace(c.price, id=c.price_key) for _, c in charges}
        frame = pl.DataFrame({"charge": [str(i) for i in range(len(charges))],
                              "price_id": [c.price_key for _, c in charges],
                              "proration": [c.proration for _, c in charges]}, schema=CHARGES_SCHEMA)
        usage = [(i, d, c) for i, (d, c) in enumerate(charges) if c.price.meter is not None]
        requests = pl.DataFrame({
            "charge": [str(i) for i, _, _ in usage],
            "customer": [d.sub.customer for _, d, _ in usage],
            "meter": [c.price.meter for _, _, c in usage],
            "from": [c.start for _, _, c in usage],
            "to": [c.measured_to for _, _, c in usage],
            "dimensions": [c.price.matrix.dimensions if c.price.matrix else None for _, _, c in usage],
        }, schema={"charge": pl.String, "customer": pl.String, "meter": pl.String,
                   "from": pl.Datetime("us", "UTC"), "to": pl.Datetime("us", "UTC"),
                   "dimensions": pl.List(pl.String)})
        aggregations = {slug: spec.aggregation for slug, spec in snapshot.meters.items()}
        per_event = pl.Series([c.price.percentage is not None and c.price.percentage.per == "event"
                               for _, _, c in usage], dtype=pl.Boolean)
        quantities = period_quantities(out, snapshot.tenant, requests.filter(~per_event), aggregations)
        amounts = event_amounts(out, snapshot.tenant, requests.filter(per_event), snapshot.meters)
        result = rate(frame, price_frame(prices.values()), quantities.select("charge", "quantity", "combination"),
                      amounts)
        details: dict[str, list[LineDetail]] = defaultdict(list)
        for row in result.details.iter_rows(named=True):
            details[row["charge"]].append(LineDetail(
                component=row["component"], units=row["units"], unit_price=row["unit_price"].normalize(),
                subtotal=row["subtotal"].normalize(), tier=row["tier"], combination=row["combination"],
                flat_fee=row["flat_fee"]))
        for row in result.lines.select("charge", "amount", "quantity").iter_rows():
            rated[int(row[0])] = (row[1], row[2], details[row[0]])
    by_draft: dict[str, list[tuple[_Charge, tuple[Decimal, Decimal | None, list[LineDetail]]]]] = defaultdict(list)
    for i, (d, c) in enumerate(charges):
        by_draft[d.id].append((c, rated[i]))
    return [_assemble(snapshot, d, by_draft[d.id], billed) for d in drafts]


def _assemble(snapshot: Snapshot, draft: _Draft, rated: list[tuple[_Charge, tuple[Decimal, Decimal | None,
              list[LineDetail]]]], billed: Billed) -> Invoice:
    sub, currency = draft.sub, snapshot.customers[draft.sub.customer].currency

    def money(amount: Decimal) -> Decimal:
        return round_to_minor_unit(amount, currency)

    lines: list[InvoiceLine] = []
    for charge, (amount, quantity, details) in rated:
        now = money(amount)
        due = now - billed.by_key.get(charge.key, _ZERO)
        if charge.kind == "adjustment" and due == 0:
            continue
        meter = charge.price.meter
        events = None
        if meter is not None:
            spec = snapshot.meters.get(meter)
            event_type = spec.event_type if spec else "?"
            events = (f"events/tenant={snapshot.tenant}: type = {event_type!r}, subject = {sub.customer!r}, "
                      f"time in [{charge.start.isoformat()}, {charge.measured_to.isoformat()})")
        lines.append(InvoiceLine(
            kind=charge.kind, description=charge.description, amount=due, period_start=charge.start,
            period_end=charge.end, key=charge.key, price=charge.price.id, version=charge.version,
            model=charge.price.model, meter=meter,
            quantity=quantity, rated=now, details=details, events=events))

    lines += _commit_lines(sub, draft, billed, lines)
    lines += _discount_lines(sub, draft, lines, money)
    subtotal = sum((line.amount for line in lines), _ZERO)
    lines += _credit_lines(sub, lines, billed)
    total = max(sum((line.amount for line in lines), _ZERO), _ZERO)
    return Invoice(id=draft.id, tenant=snapshot.tenant, customer=sub.customer, subscription=sub.id,
                   currency=currency, reason=draft.reason, period_start=draft.period.start,
                   period_end=draft.period.end, issued_at=draft.issued_at, lines=lines, subtotal=subtotal,
                   total=total)


def _commit_lines(sub: Subscription, draft: _Draft, billed: Billed, lines: list[InvoiceLine]) -> list[InvoiceLine]:
    """A prepaid commit is bought on the invoice of the cycle it starts in; a postpaid commit's shortfall is billed
    on the invoice whose usage period its term ends in, when the contract says so."""
    out = []
    for commit in sub.commits:
        if commit.kind == "prepaid" and draft.reason == "cycle" and draft.period.start <= commit.start < draft.period.end:
            key = f"{sub.id}|commit|{commit.id}"
            due = commit.amount - billed.by_key.get(key, _ZERO)
            if due:
                out.append(InvoiceLine(kind="commit", description=f"prepaid commit {commit.id}", amount=due,
                                       period_start=commit.start, period_end=commit.end, key=key))
        arrears = draft.arrears
        if (commit.kind == "postpaid" and commit.unused == "billed" and draft.reason == "cycle" and arrears
                and arrears.start < commit.end <= arrears.end):
            spent = sum((line.amount for line in billed.usage.get(sub.id, []) if _applies(commit, line)), _ZERO)
            spent += sum((line.amount for line in lines if line.kind in ("usage", "adjustment")
                          and _applies(commit, line)), _ZERO)
            key = f"{sub.id}|shortfall|{commit.id}"
            shortfall = max(commit.amount - spent, _ZERO) - billed.by_key.get(key, _ZERO)
            if shortfall:
                out.append(InvoiceLine(kind="shortfall", amount=shortfall, key=key, period_start=commit.start,
                                       period_end=commit.end,
                                       description=f"commit {commit.id}: {commit.amount} committed, {spent} spent"))
    return out


def _discount_lines(sub: Subscription, draft: _Draft, lines: list[InvoiceLine],
                    money: Callable[[Decimal], Decimal]) -> list[InvoiceLine]:
    """Discounts active at the start of the invoice's period: on one price's lines first, then on the invoice (which
    then sees the price discounts). A fixed amount is taken on cycle invoices only, so a threshold invoice in the
    same cycle does not take it twice."""
    out: list[InvoiceLine] = []
    at = draft.period.start
    active = [d for d in sub.discounts if d.start <= at and (d.end is None or at < d.end)
              and (d.percent is not None or draft.reason == "cycle")]
    for d in sorted(active, key=lambda d: d.price is None):
        targets = [line for line in lines if line.price == d.price] if d.price else [*lines, *out]
        base = sum((line.amount for line in targets), _ZERO)
        if base <= 0:
            continue
        off = money(base * d.percent / 100) if d.percent is not None else min(d.amount or _ZERO, base)
        what = f"{d.percent}% off" if d.percent is not None else f"{d.amount} off"
        on = f"price {d.price}" if d.price else "the invoice"
        out.append(InvoiceLine(kind="discount", description=f"discount {d.id}: {what} {on}", amount=-off,
                               period_start=draft.period.start, period_end=draft.period.end, price=d.price))
    return out


def _credit_lines(sub: Subscription, lines: list[InvoiceLine], billed: Billed) -> list[InvoiceLine]:
    """Credits and prepaid commits pay usage lines, lowest priority first, then the one expiring first."""
    grants: list[Commit | Credit] = [*sub.credits, *(c for c in sub.commits if c.kind == "prepaid")]
    grants.sort(key=lambda g: (g.priority, g.end, g.id))
    # What is left to pay of each usage line once its price's discounts (all of them) are taken off.
    off: dict[str | None, Decimal] = defaultdict(Decimal)
    for line in lines:
        if line.kind == "discount" and line.price:
            off[line.price] -= line.amount
    left = []
    for line in lines:
        if line.kind in ("usage", "adjustment") and line.amount > 0:
            discounted = min(line.amount, off[line.price])
            off[line.price] -= discounted
            left.append([line, line.amount - discounted])
    out = []
    for grant in grants:
        remaining = grant.amount - billed.drawn.get(f"{sub.id}|{grant.id}", _ZERO)
        for entry in left:
            line, due = entry
            if remaining <= 0 or due <= 0 or not _applies(grant, line):
                continue
            take = min(due, remaining)
            entry[1] -= take
            remaining -= take
            out.append(InvoiceLine(kind="credit", description=f"{type(grant).__name__.lower()} {grant.id} applied to "
                                   f"{line.price}", amount=-take, period_start=line.period_start,
                                   period_end=line.period_end, price=line.price, grant=f"{sub.id}|{grant.id}"))
    return out


def _applies(grant: Commit | Credit, line: InvoiceLine) -> bool:
    return ((not grant.applies_to or line.price in grant.applies_to)
            and line.period_start < grant.end and grant.start < line.period_end)

