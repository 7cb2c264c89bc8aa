"""What recognition reads of an invoice, written with each change that concerns it: the ``revenue_due/`` mark.

When an entry that changes what an invoice earns is posted (finalized, voided, credited), the store writes the
invoice's :class:`Due` record under ``revenue_due/<tenant>/<invoice>`` in the same synced write, and lowers
``revenue_first/<tenant>`` (the earliest service period billed: where a tenant's first close starts). The next close
reads these records, never the invoices (an invoice is 2 KB of JSON that takes 15 µs to read and decode; its record,
a few hundred bytes of MessagePack, a fifth of that), and puts each line into its source's schedule column by column.

What each line counts toward is decided here, once, when the invoice changes: its :func:`~meter.money.ledger.treatment`
and its source (:func:`source_of`), its billing cycle when it bills usage, and whether it *settles* that cycle (a
usage line of the cycle invoice billing the cycle in arrears).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from meter.billing.invoices import BILLED, Invoice, InvoiceLine, Reason, Status
from meter.billing.keys import CommitKey, GrantKey, charge_cycle, parse_line_key
from meter.money import ledger

__all__ = ["Due", "decode", "encode", "instant", "micros", "record", "source_of"]


class Due(msgspec.Struct, array_like=True):
    """An invoice as recognition reads it: who and when, then one item per line in each list (line ``n`` is n-1).

    Instants are microseconds since 1970-01-01 UTC and amounts decimal text: the close turns a million of them into
    Arrow columns at once (Python ``datetime`` and ``Decimal`` objects would cost it more than reading them).
    """

    id: str
    customer: str
    subscription: str
    currency: str
    status: Status
    #: When it was finalized (issued, for one never finalized), and voided.
    finalized_at: int
    voided_at: int | None
    #: The earliest service period it bills.
    first: int
    #: ``ratable``, ``usage``, ``commit``, ``drawdown`` or ``immediate`` (:func:`meter.money.ledger.treatment`).
    treatments: list[str]
    #: The source the line counts toward (None: it counts toward none, such as a usage line without a key).
    sources: list[str | None]
    #: Net of the tax included in it.
    amounts: list[str]
    starts: list[int]
    ends: list[int]
    quantities: list[str | None]
    prices: list[str | None]
    meters: list[str | None]
    #: Usage: the billing cycle its key names, and whether the line settles it.
    cycle_starts: list[int | None]
    cycle_ends: list[int | None]
    settles: list[bool]

    @property
    def billed(self) -> bool:
        return self.status in BILLED


encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder(Due).decode


def record(invoice: Invoice, prepaid: frozenset[str]) -> Due:
    """``invoice``'s record; ``prepaid``: the grants of the prepaid commits bought (what its credit lines draw on)."""
    due = Due(
        id=invoice.id,
        customer=invoice.customer,
        subscription=invoice.subscription,
        currency=invoice.currency,
        status=invoice.status,
        finalized_at=micros(invoice.finalized_at or invoice.issued_at),
        voided_at=None if invoice.voided_at is None else micros(invoice.voided_at),
        first=micros(min([invoice.period_start, *(line.period_start for line in invoice.lines)])),
        treatments=[],
        sources=[],
        amounts=[str(amount) for amount in ledger.net_line_amounts(invoice)],
        starts=[],
        ends=[],
        quantities=[],
        prices=[],
        meters=[],
        cycle_starts=[],
        cycle_ends=[],
        settles=[],
    )
    for n, line in enumerate(invoice.lines, start=1):
        how = ledger.treatment(line, prepaid)
        cycle = charge_cycle(line.key) if how == "usage" and line.key else None
        due.treatments.append(how)
        due.sources.append(source_of(how, invoice.id, n, line))
        due.starts.append(micros(line.period_start))
        due.ends.append(micros(line.period_end))
        due.quantities.append(str(line.quantity) if how == "usage" and line.quantity is not None else None)
        due.prices.append(line.price)
        due.meters.append(line.meter)
        due.cycle_starts.append(micros(cycle[0]) if cycle else None)
        due.cycle_ends.append(micros(cycle[1]) if cycle else None)
        due.settles.append(_settles(how, invoice.reason, invoice.usage_start, line))
    return due


def micros(t: datetime) -> int:
    """Microseconds since 1970-01-01 UTC."""
    return (t - _EPOCH) // _MICROSECOND


def instant(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def source_of(how: str, invoice: str, n: int, line: InvoiceLine) -> str | None:
    """The source a line counts toward: its key's (a fee, a usage key), its commit's, or its own.

    A fee's key names a price of a subscription's cycle (a keyless fee, such as a discount, is its own source:
    ``fee:<invoice>/<n>``); a usage key names a usage price's cycle; a prepaid commit is ``breakage:<grant>`` for
    the line that bought it and the credit lines that draw on it; a promotional credit is ``line:<invoice>/<n>``.
    """
    if how == "ratable":
        return f"fee:{line.key}" if line.key else f"fee:{invoice}/{n}"
    if how == "usage":
        return f"usage:{line.key}" if line.key else None
    if how == "commit":
        grant = _grant_of(line.key) if line.key else None
        return f"breakage:{grant}" if grant else None
    if how == "drawdown":
        return f"breakage:{line.grant}" if line.grant else None
    return f"line:{invoice}/{n}"  # immediate


def _settles(how: str, reason: Reason, usage_start: datetime | None, line: InvoiceLine) -> bool:
    return how == "usage" and reason == "cycle" and usage_start == line.period_start


def _grant_of(commit_key: str) -> str | None:
    key = parse_line_key(commit_key)
    return GrantKey(key.subscription, key.commit).text() if isinstance(key, CommitKey) else None
