"""Tax arithmetic: the taxable base of each line, the tax of a line at its rates, the groups, a credit note's share.

Every amount is a ``Decimal`` at its currency's minor unit; each tax is rounded once, half to even, to that unit
(:func:`meter.pricing.money.round_to_minor_unit`), per line and per rate, and every total is a sum of those:

- exclusive rate ``r``: ``tax = round(net * r)``;
- inclusive rates (``R`` their sum on one line): ``tax_i = round(gross * r_i / (1 + R))``, ``net = gross - sum(tax_i)``
  (one rate: ``net = gross - round(gross * r / (1 + r))``); exclusive rates on the same line then apply to ``net``.

Taxable bases (:func:`taxable_bases`): a line bills what it says, but a reduction (a negative line: a discount, a
credit drawn) reduces the tax of what it reduces. A negative line of one price is spread over that price's positive
lines, one without a price over every positive line, in proportion to their amounts (largest remainder, so the
shares add up exactly); what no positive line can absorb stays on the negative line (whose tax is then negative).

A credit note carries back ``round(A * X / T)`` of the invoice's tax ``X`` (``A`` the note's amount, tax included,
``T`` the invoice's total), split over the invoice's tax groups in proportion to their amounts, the remainder to
the largest group so that the split adds up exactly (:func:`credit_note_taxes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal

import msgspec

from meter.billing.invoices import Invoice, InvoiceLine, LineTax, TaxAmount
from meter.catalog.tax import TaxRate
from meter.pricing.money import minor_units, round_to_minor_unit

__all__ = ["Base", "credit_note_taxes", "describe", "group_taxes", "line_taxes", "split", "taxable_bases"]

_EXACT = Context(prec=80, rounding=ROUND_HALF_EVEN)
_HUNDRED = Decimal(100)
_ZERO = Decimal(0)


@dataclass(frozen=True)
class Base:
    """The taxable amount of line ``line`` (its index in ``Invoice.lines``), as priced.

    Tax is included for inclusive rates; ``reduced`` is what reductions spread over the line took off (0 or less).
    """

    line: int
    amount: Decimal
    reduced: Decimal = _ZERO


def _minor(amount: Decimal, digits: int) -> int:
    return int(amount.scaleb(digits, context=_EXACT))


def _money(minor: int, digits: int) -> Decimal:
    return Decimal(minor).scaleb(-digits, context=_EXACT)


def split(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` (minor units) in parts proportional to ``weights`` (each above 0), adding up exactly.

    Each part is the floor of its exact share; the units left go one each to the largest remainders (the first
    of equal ones).
    """
    whole = sum(weights)
    parts = [total * w // whole for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def taxable_bases(lines: Sequence[InvoiceLine], currency: str) -> list[Base]:
    """Each line's taxable amount once reductions are spread (see the module doc), in the order of ``lines``."""
    digits = minor_units(currency)
    amounts = [_minor(line.amount, digits) for line in lines]
    reduced = [0] * len(lines)
    left = list(amounts)  # what each line still has to bear (positive lines) or to give (negative ones)
    for i, line in enumerate(lines):
        if amounts[i] >= 0:
            continue
        for same_price in (True, False):
            takers = [
                j
                for j in range(len(lines))
                if amounts[j] > 0 and left[j] > 0 and (not same_price or lines[j].price == line.price)
            ]
            if (same_price and line.price is None) or not takers or left[i] == 0:
                continue
            room = sum(left[j] for j in takers)
            give = min(-left[i], room)
            for j, part in zip(takers, split(give, [left[j] for j in takers]), strict=True):
                left[j] -= part
                reduced[j] -= part
            left[i] += give
    return [Base(i, _money(left[i], digits), _money(reduced[i], digits)) for i in range(len(lines))]


def line_taxes(base: Base, rates: Sequence[TaxRate], currency: str) -> list[LineTax]:
    """The tax of one line at ``rates`` (the inclusive ones first: see the module doc), one entry per rate."""
    inclusive = [r for r in rates if r.inclusive]
    exclusive = [r for r in rates if not r.inclusive]
    # gross * r / (1 + R) with r and R as percentages: gross * p / (100 + P), exactly.
    together = sum((r.percentage for r in inclusive), _ZERO)
    found = []
    for rate in inclusive:
        share = _EXACT.divide(_EXACT.multiply(base.amount, rate.percentage), _HUNDRED + together)
        found.append((rate, round_to_minor_unit(share, currency)))
    net = base.amount - sum((amount for _, amount in found), _ZERO)
    taxes = [
        LineTax(line=base.line, rate=rate.id, inclusive=True, taxable=net, amount=amount) for rate, amount in found
    ]
    for rate in exclusive:
        amount = round_to_minor_unit(_EXACT.divide(_EXACT.multiply(net, rate.percentage), _HUNDRED), currency)
        taxes.append(LineTax(line=base.line, rate=rate.id, inclusive=False, taxable=net, amount=amount))
    return taxes


def describe(rate: TaxRate) -> TaxAmount:
    """A catalog rate as a tax group with nothing in it yet (what :func:`group_taxes` fills)."""
    return TaxAmount(
        rate=rate.id,
        name=rate.name,
        country=rate.country,
        region=rate.region,
        percentage=rate.percentage,
        inclusive=rate.inclusive,
        taxable=_ZERO,
        amount=_ZERO,
    )


def group_taxes(taxes: Sequence[LineTax], rates: Mapping[str, TaxAmount], currency: str) -> list[TaxAmount]:
    """The invoice's tax by rate (one jurisdiction each), ``rates`` describing each: the lines' bases and taxes summed.

    Ordered by country, region and rate id.
    """
    zero = round_to_minor_unit(_ZERO, currency)
    groups: dict[str, tuple[Decimal, Decimal]] = {}
    for tax in taxes:
        taxable, amount = groups.get(tax.rate, (zero, zero))
        groups[tax.rate] = (taxable + tax.taxable, amount + tax.amount)
    found = [
        msgspec.structs.replace(rates[rate_id], taxable=taxable, amount=amount)
        for rate_id, (taxable, amount) in groups.items()
    ]
    return sorted(found, key=lambda t: (t.country, t.region or "", t.rate))


def credit_note_taxes(invoice: Invoice, amount: Decimal) -> tuple[Decimal | None, list[TaxAmount]]:
    """The tax a credit note of ``amount`` (tax included) carries back from ``invoice``, and per rate.

    ``None`` when the invoice was finalized before it had a tax (nothing to carry back).
    """
    if invoice.tax is None:
        return None, []
    currency = invoice.currency
    if invoice.total <= 0 or invoice.tax == 0:
        return round_to_minor_unit(_ZERO, currency), []
    tax = round_to_minor_unit(_EXACT.divide(_EXACT.multiply(amount, invoice.tax), invoice.total), currency)
    groups = [g for g in invoice.taxes if g.amount != 0]
    if not groups:
        return tax, []
    shares = [round_to_minor_unit(_EXACT.divide(_EXACT.multiply(tax, g.amount), invoice.tax), currency) for g in groups]
    largest = max(range(len(groups)), key=lambda i: (abs(groups[i].amount), -i))
    shares[largest] += tax - sum(shares, _ZERO)
    ratio = _EXACT.divide(amount, invoice.total)
    carried = [
        msgspec.structs.replace(
            g, taxable=round_to_minor_unit(_EXACT.multiply(g.taxable, ratio), currency), amount=share
        )
        for g, share in zip(groups, shares, strict=True)
    ]
    return tax, carried
