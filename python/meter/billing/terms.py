"""The lines a subscription's commercial terms add to an invoice, after its charges.

- :func:`commit_lines`: a **prepaid commit** bought on the invoice of the cycle it starts in, and a **postpaid
  commit's shortfall** (committed minus spent, never below zero) on the invoice whose usage period its term ends in,
  when the contract bills it;
- :func:`discount_lines`: **discounts** active at the start of the invoice's period, on one price's lines first, then
  on the invoice (which then sees the price discounts); a fixed amount on cycle invoices only, so a threshold
  invoice in the same cycle does not take it twice; never more than the base they are taken from;
- :func:`credit_lines`: **credits and prepaid commits drawn down**, lowest ``priority`` first, then the one expiring
  first, over the usage lines they apply to (:func:`applies`), limited to what is left of them after finalized
  invoices (:class:`~meter.billing.billed.Billed`).

Each keyed line (a commit, a shortfall) bills its key's amount minus what finalized invoices billed for it
(:mod:`meter.billing.keys`), so re-running a period never bills a commit twice. Money: a percent discount is rounded
half to even to the currency's minor unit (the ``money`` the caller passes: :func:`meter.pricing.round_to_minor_unit`)
from a base that is a sum of rounded lines; fixed amounts, commits and credits are whole minor units already (the
catalog holds them to it), so these lines need no other rounding. Every line states the numbers its amount follows
from (the base, what a grant had left), so that a customer can check it by hand.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal

from meter.billing import cycles
from meter.billing.billed import Billed
from meter.billing.cycles import Period
from meter.billing.invoices import InvoiceLine, Reason
from meter.billing.keys import CommitKey, GrantKey
from meter.catalog.billing import Commit, Credit, Subscription

__all__ = ["applies", "commit_lines", "credit_lines", "discount_lines", "recurring_draws", "recurring_left"]

_ZERO = Decimal(0)


def commit_lines(
    sub: Subscription,
    period: Period,
    arrears: Period | None,
    reason: Reason,
    billed: Billed,
    lines: list[InvoiceLine],
) -> list[InvoiceLine]:
    """Prepaid commits bought and postpaid shortfalls billed.

    A prepaid commit is bought on the invoice of the cycle it starts in; a postpaid commit's shortfall is billed
    on the invoice whose usage period its term ends in, when the contract says so.
    """
    out = []
    for commit in sub.commits:
        starts_here = period.start <= commit.start < period.end
        if commit.kind == "prepaid" and reason == "cycle" and starts_here:
            key = CommitKey(sub.id, "commit", commit.id)
            due = commit.amount - billed.by_key.get(key, _ZERO)
            if due:
                out.append(
                    InvoiceLine(
                        kind="commit",
                        description=f"prepaid commit {commit.id}",
                        amount=due,
                        period_start=commit.start,
                        period_end=commit.end,
                        key=key.text(),
                    )
                )
        if (
            commit.kind == "postpaid"
            and commit.unused == "billed"
            and reason == "cycle"
            and arrears
            and arrears.start < commit.end <= arrears.end
        ):
            spent = sum((line.amount for line in billed.usage.get(sub.id, []) if applies(commit, line)), _ZERO)
            spent += sum(
                (
                    line.amount
                    for line in lines
                    if line.kind in ("usage", "adjustment") and line.meter is not None and applies(commit, line)
                ),
                _ZERO,
            )
            key = CommitKey(sub.id, "shortfall", commit.id)
            shortfall = max(commit.amount - spent, _ZERO) - billed.by_key.get(key, _ZERO)
            if shortfall:
                out.append(
                    InvoiceLine(
                        kind="shortfall",
                        amount=shortfall,
                        key=key.text(),
                        period_start=commit.start,
                        period_end=commit.end,
                        description=f"commit {commit.id}: {commit.amount} committed, {spent} spent",
                    )
                )
    return out


def discount_lines(
    sub: Subscription, period: Period, reason: Reason, lines: list[InvoiceLine], money: Callable[[Decimal], Decimal]
) -> list[InvoiceLine]:
    """Discounts active at the start of the invoice's period.

    Discounts active at the start of the invoice's period: on one price's lines first, then on the invoice (which
    then sees the price discounts). A fixed amount is taken on cycle invoices only, so a threshold invoice in the
    same cycle does not take it twice.
    """
    out: list[InvoiceLine] = []
    at = period.start
    active = [
        d
        for d in sub.discounts
        if d.start <= at and (d.end is None or at < d.end) and (d.percent is not None or reason == "cycle")
    ]
    for d in sorted(active, key=lambda d: d.price is None):
        targets = [line for line in lines if line.price == d.price] if d.price else [*lines, *out]
        base = sum((line.amount for line in targets), _ZERO)
        if base <= 0:
            continue
        off = money(base * d.percent / 100) if d.percent is not None else min(d.amount or _ZERO, base)
        what = f"{d.percent}% off" if d.percent is not None else f"{d.amount} off"
        on = f"price {d.price}" if d.price else "the invoice"
        # The base is said, so that the amount follows from the line: percent x base, or the amount (at most base).
        out.append(
            InvoiceLine(
                kind="discount",
                description=f"discount {d.id}: {what} {on} (of {base})",
                amount=-off,
                period_start=period.start,
                period_end=period.end,
                price=d.price,
            )
        )
    return out


def credit_lines(sub: Subscription, lines: list[InvoiceLine], billed: Billed, tz: str) -> list[InvoiceLine]:
    """Credits and prepaid commits pay usage lines, lowest priority first, then the one expiring first.

    ``tz`` is the customer's time zone: a recurring credit is granted per billing cycle (:func:`recurring_draws`).
    """
    grants: list[Commit | Credit] = [*sub.credits, *(c for c in sub.commits if c.kind == "prepaid")]
    grants.sort(key=lambda g: (g.priority, g.end, g.id))
    # What is left to pay of each usage line once its price's discounts (all of them) are taken off.
    off: dict[str | None, Decimal] = defaultdict(Decimal)
    for line in lines:
        if line.kind == "discount" and line.price:
            off[line.price] -= line.amount
    payable: list[InvoiceLine] = []
    due: list[Decimal] = []
    for line in lines:
        if line.kind in ("usage", "adjustment") and line.meter is not None and line.amount > 0:
            discounted = min(line.amount, off[line.price])
            off[line.price] -= discounted
            payable.append(line)
            due.append(line.amount - discounted)
    out = []
    for grant in grants:
        if isinstance(grant, Credit) and grant.recurring is not None:
            out += recurring_draws(sub, grant, billed, tz, payable, due)
            continue
        drawn_on = GrantKey(sub.id, grant.id)
        remaining = grant.amount - billed.drawn.get(drawn_on, _ZERO)
        for i, line in enumerate(payable):
            if remaining <= 0 or due[i] <= 0 or not applies(grant, line):
                continue
            take = min(due[i], remaining)
            due[i] -= take
            remaining -= take
            # What the grant had left is said, so that the amount follows from the line: min(due, left).
            out.append(
                InvoiceLine(
                    kind="credit",
                    description=f"{type(grant).__name__.lower()} {grant.id} applied to "
                    f"{line.price} ({remaining + take} left of {grant.amount})",
                    amount=-take,
                    period_start=line.period_start,
                    period_end=line.period_end,
                    price=line.price,
                    grant=drawn_on.text(),
                )
            )
    return out


def recurring_draws(
    sub: Subscription, credit: Credit, billed: Billed, tz: str, payable: list[InvoiceLine], due: list[Decimal]
) -> list[InvoiceLine]:
    """A recurring credit's draws on ``payable`` (what is left ``due`` of each, reduced as it draws).

    Each billing cycle of the subscription from the one containing the credit's start (and starting before its end)
    grants ``amount`` plus what the cycle before left, at most ``rollover_max`` (nothing without it). A usage line
    draws on the grant of the cycle it measures (the cycle containing its start), keyed by that cycle
    (:class:`GrantKey` with ``cycle``). What a cycle left is its grant minus what finalized invoices drew on it and
    what this computation drew on it (for the cycles of this invoice's lines, in order): a re-run draws only what
    finalized invoices did not, and the rollover follows from what finalized invoices drew.

    Worked example (100 a cycle, rollover_max 50): cycle 1 uses 30 (70 left, 50 rolls over), cycle 2 has 150 and
    uses 160 (150 drawn, 10 billed, nothing left), cycle 3 has 100.
    """
    wanted: dict[datetime, list[int]] = defaultdict(list)
    for i, line in enumerate(payable):
        if due[i] > 0 and applies(credit, line):
            wanted[cycles.cycle_containing(sub, tz, line.period_start).start].append(i)
    if not wanted:
        return []
    out = []
    for cycle, left, granted in _renewals(sub, credit, billed, tz, max(wanted)):
        for i in wanted.get(cycle.start, []):
            line = payable[i]
            take = min(due[i], left.value)
            if take <= 0:
                break
            due[i] -= take
            left.value -= take
            out.append(
                InvoiceLine(
                    kind="credit",
                    description=f"credit {credit.id} for the cycle from {cycle.start.isoformat()} applied to "
                    f"{line.price} ({left.value + take} left of {granted} granted for it)",
                    amount=-take,
                    period_start=line.period_start,
                    period_end=line.period_end,
                    price=line.price,
                    grant=GrantKey(sub.id, credit.id, cycle.start).text(),
                )
            )
    return out


class _Left:
    """What a cycle's grant has left, drawn down by the caller as the cycle is visited."""

    def __init__(self, value: Decimal) -> None:
        self.value = value


def _renewals(
    sub: Subscription, credit: Credit, billed: Billed, tz: str, until: datetime
) -> Iterator[tuple[cycles.Period, _Left, Decimal]]:
    """Each cycle of a recurring credit up to the one starting at ``until``: (cycle, what it has left, its grant).

    What is left is read after the caller's draws on it, when the next cycle is asked for: that remainder (never
    below zero) rolls over, up to ``rollover_max``.
    """
    carry = _ZERO
    cap = credit.rollover_max if credit.rollover_max is not None else _ZERO
    for cycle in cycles.cycles_between(sub, tz, cycles.cycle_containing(sub, tz, credit.start).start, until):
        if cycle.start >= credit.end:
            return
        granted = credit.amount + carry
        left = _Left(granted - billed.drawn.get(GrantKey(sub.id, credit.id, cycle.start), _ZERO))
        yield cycle, left, granted
        carry = min(cap, max(left.value, _ZERO))
    last = cycles.cycle_containing(sub, tz, until)
    if last.start < credit.end:
        granted = credit.amount + carry
        yield last, _Left(granted - billed.drawn.get(GrantKey(sub.id, credit.id, last.start), _ZERO)), granted


def recurring_left(sub: Subscription, credit: Credit, billed: Billed, tz: str, at: datetime) -> tuple[Decimal, Decimal]:
    """``(granted, left)``: what a recurring credit grants the cycle containing ``at``, and what is left of it.

    Granted: its amount and what rolled over into the cycle; left: that minus what finalized invoices drew on the
    cycle. The live balance starts from it, as invoicing does.
    """
    cycle = cycles.cycle_containing(sub, tz, at)
    granted, left = _ZERO, _ZERO
    for seen, remaining, amount in _renewals(sub, credit, billed, tz, cycle.start):
        if seen.start == cycle.start:
            granted, left = amount, remaining.value
    return granted, left


def applies(grant: Commit | Credit, line: InvoiceLine) -> bool:
    return (
        (not grant.applies_to or line.price in grant.applies_to)
        and line.period_start < grant.end
        and grant.start < line.period_end
    )
