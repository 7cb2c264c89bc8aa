"""What finalized invoices billed: the one reading of the invoice store that a run's arithmetic starts from.

A run bills, for each line key, what the key rates at now minus what finalized (not void) invoices billed under it
(:mod:`meter.billing.keys`); a grant's remainder is its amount minus what finalized credit lines drew on it; a
postpaid commit's spend counts the finalized usage lines it applies to; and a draft is computed against the
subscription's finalized invoices (its ``basis``). :meth:`Billed.of` reads all of that in one pass over the tenant's
invoices, skipping drafts on their status alone (a run leaves a million of them), and decodes each finalized line's
key once. Amounts are summed as stored: each was rounded to the currency's minor unit when its invoice was computed,
so these sums are exact and need no rounding.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import msgspec

from meter.billing.invoices import BILLED, Invoice, InvoiceLine
from meter.billing.keys import GrantKey, LineKey, parse_grant_key, parse_line_key
from meter.billing.store import InvoiceStore

__all__ = ["Billed"]

_ZERO = Decimal(0)


@dataclass
class Billed:
    """What finalized (not void) invoices billed.

    What finalized (not void) invoices billed: per line key (amount, quantity, the invoices' numbers), per grant
    drawn, each usage line for commits, and which cycles' invoices are finalized.
    """

    by_key: dict[LineKey, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    quantity: dict[LineKey, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    numbers: dict[LineKey, list[str]] = field(default_factory=lambda: defaultdict(list))
    drawn: dict[GrantKey, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    #: Per subscription, its usage lines: for commits' spend.
    usage: dict[str, list[InvoiceLine]] = field(default_factory=lambda: defaultdict(list))
    #: Per subscription, every keyed line and its cycle's start: a key billed before and not rated now rates at 0.
    keyed: dict[str, list[tuple[LineKey, InvoiceLine]]] = field(default_factory=lambda: defaultdict(list))
    #: Per subscription, the starts of the cycles whose (cycle) invoice is finalized.
    cycles: dict[str, set[datetime]] = field(default_factory=lambda: defaultdict(set))
    #: Per subscription, the ids of its finalized invoices: what a draft is computed against (its ``basis``).
    finalized: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: (subscription, cycle start) -> the number of the cycle's finalized invoice.
    cycle_numbers: dict[tuple[str, datetime], str] = field(default_factory=dict)
    #: Keys in an earlier format whose amounts now count under today's key (see :meth:`adopt`).
    adopted: set[LineKey] = field(default_factory=set)

    def adopt(self, old: LineKey, key: LineKey) -> None:
        """Counts what was billed under ``old`` (a key in an earlier format) as billed under ``key``, once."""
        if old in self.adopted:
            return
        self.adopted.add(old)
        self.by_key[key] += self.by_key.pop(old, _ZERO)
        self.quantity[key] += self.quantity.pop(old, _ZERO)
        self.numbers[key] += [n for n in self.numbers.pop(old, []) if n not in self.numbers[key]]

    @classmethod
    def of(cls, store: InvoiceStore, tenant: str) -> Billed:
        billed = cls()
        # Drafts (a million after a run) are skipped on their status alone, without decoding them.
        for _, status, raw in store.statuses(tenant):
            if status not in BILLED:
                continue
            invoice = msgspec.json.decode(raw, type=Invoice)
            billed.finalized[invoice.subscription].append(invoice.id)
            if invoice.reason == "cycle":
                billed.cycles[invoice.subscription].add(invoice.period_start)
                billed.cycle_numbers[(invoice.subscription, invoice.period_start)] = invoice.number or invoice.id
            for line in invoice.lines:
                if line.key is not None:
                    key = parse_line_key(line.key)
                    billed.by_key[key] += line.amount
                    billed.quantity[key] += line.quantity or _ZERO
                    billed.numbers[key].append(invoice.number or invoice.id)
                    billed.keyed[invoice.subscription].append((key, line))
                if line.grant is not None:
                    billed.drawn[parse_grant_key(line.grant)] -= line.amount
                if line.kind in ("usage", "adjustment") and line.meter is not None:
                    billed.usage[invoice.subscription].append(line)
        return billed
