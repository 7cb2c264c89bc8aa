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

__all__ = ["HEAD", "LINE", "Due", "decode", "encode", "instant", "micros", "record", "source_of"]


#: An invoice's fields the close reads, in :attr:`Due.head`'s order. ``lines``: how many lines it has.
HEAD = ("invoice", "customer", "subscription", "currency", "billed", "finalized_at", "lines")
#: A line's fields, in the order of each line's cells in :attr:`Due.cells`.
LINE = (
    "n",  # its number on the invoice, from 1
    "treatment",  # ratable, usage, commit, drawdown or immediate (meter.money.ledger.treatment)
    "source",  # what it counts toward (None: nothing, such as a usage line without a key)
    "amount",  # net of the tax included in it (decimal text)
    "start",
    "end",
    "quantity",  # usage (decimal text)
    "price",
    "meter",
    "cycle_start",  # usage: the billing cycle its key names
    "cycle_end",
    "settles",  # usage: a line of the cycle invoice billing its cycle in arrears
)


class Due(msgspec.Struct, array_like=True):
    """An invoice as recognition reads it: :data:`HEAD`, then the :data:`LINE` cells of each line, one after another.

    Flat, so that the close takes a record in two list operations and slices the columns out of a million of them
    at once. Instants are microseconds since 1970-01-01 UTC, amounts decimal text: Arrow takes them without a
    Python ``datetime`` or ``Decimal`` per value.
    """

    head: tuple[str, str, str, str, bool, int, int]
    status: Status
    voided_at: int | None
    #: The earliest service period it bills.
    first: int
    #: A line is ``immediate`` (a promotional credit): the close posts it on its own.
    immediate: bool
    cells: list[str | int | bool | None]

    @property
    def id(self) -> str:
        return self.head[0]

    def lines(self) -> list[dict[str, object]]:
        """Its lines, each as a dict of :data:`LINE` (for what the close handles one line at a time)."""
        width = len(LINE)
        return [dict(zip(LINE, self.cells[at : at + width], strict=True)) for at in range(0, len(self.cells), width)]


encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder(Due).decode


def record(invoice: Invoice, prepaid: frozenset[str]) -> Due:
    """``invoice``'s record; ``prepaid``: the grants of the prepaid commits bought (what its credit lines draw on)."""
    cells: list[str | int | bool | None] = []
    treatments = [ledger.treatment(line, prepaid) for line in invoice.lines]
    amounts = ledger.net_line_amounts(invoice)
    for n, (line, how, amount) in enumerate(zip(invoice.lines, treatments, amounts, strict=True), start=1):
        cycle = charge_cycle(line.key) if how == "usage" and line.key else None
        cells += [
            n,
            how,
            source_of(how, invoice.id, n, line),
            str(amount),
            micros(line.period_start),
            micros(line.period_end),
            str(line.quantity) if how == "usage" and line.quantity is not None else None,
            line.price,
            line.meter,
            micros(cycle[0]) if cycle else None,
            micros(cycle[1]) if cycle else None,
            _settles(how, invoice.reason, invoice.usage_start, line),
        ]
    finalized = invoice.finalized_at or invoice.issued_at
    return Due(
        head=(
            invoice.id,
            invoice.customer,
            invoice.subscription,
            invoice.currency,
            invoice.status in BILLED,
            micros(finalized),
            len(invoice.lines),
        ),
        status=invoice.status,
        voided_at=None if invoice.voided_at is None else micros(invoice.voided_at),
        first=micros(min([invoice.period_start, *(line.period_start for line in invoice.lines)])),
        immediate="immediate" in treatments,
        cells=cells,
    )


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
