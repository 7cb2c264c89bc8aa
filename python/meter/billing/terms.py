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
from collections.abc import Callable
from decimal import Decimal

from meter.billing.billed import Billed
from meter.billing.cycles import Period
from meter.billing.invoices import InvoiceLine, Reason
from meter.billing.keys import CommitKey, GrantKey
from meter.catalog.billing import Commit, Credit, Subscription

__all__ = ["applies", "commit_lines", "credit_lines", "discount_lines"]

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


def credit_lines(sub: Subscription, lines: list[InvoiceLine], billed: Billed) -> list[InvoiceLine]:
    """Credits and prepaid commits pay usage lines, lowest priority first, then the one expiring first."""
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


def applies(grant: Commit | Credit, line: InvoiceLine) -> bool:
    return (
        (not grant.applies_to or line.price in grant.applies_to)
        and line.period_start < grant.end
        and grant.start < line.period_end
    )
