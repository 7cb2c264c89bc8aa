"""What recognition reads of an invoice, written with each change that concerns it: the ``revenue_due/`` mark.

When an entry that changes what an invoice earns is posted (finalized, voided, credited), the store writes the
invoice's :class:`Due` record under ``revenue_due/<tenant>/<invoice>`` in the same synced write, and lowers
``revenue_first/<tenant>`` (the earliest service period billed: where a tenant's first close starts). The next close
reads these records, never the invoices (an invoice is 2 KB of JSON that Python takes 15 µs to read and decode; its
record is a line of JSON that Arrow's JSON reader takes with a million others in a few seconds, in native code), and
puts each line into its source's schedule column by column.

What each line counts toward is decided here, once, when the invoice changes: its :func:`~meter.money.ledger.treatment`
and its source (:func:`source_of`), its billing cycle when it bills usage, and whether it *settles* that cycle (a
usage line of the cycle invoice billing the cycle in arrears).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json

from meter.billing.invoices import BILLED, Invoice, InvoiceLine, Reason, Status
from meter.billing.keys import CommitKey, GrantKey, charge_cycle, parse_line_key
from meter.money import ledger

__all__ = ["HEAD", "LINE", "Due", "decode", "encode", "instant", "lines", "micros", "record", "source_of", "table"]


class Due(msgspec.Struct, kw_only=True):
    """An invoice as recognition reads it: its head fields, then its lines column by column (:data:`LINE`).

    A line of JSON: Arrow's JSON reader takes a million of them at once, in native code, without a Python object
    per value. Instants are microseconds since 1970-01-01 UTC, amounts decimal text (exact, and cast by the close).
    """

    invoice: str
    customer: str
    subscription: str
    currency: str
    #: Finalized and not voided (``Invoice.status in BILLED``).
    billed: bool
    finalized_at: int
    status: Status
    voided_at: int | None
    #: The earliest service period it bills.
    first: int
    #: A line is ``immediate`` (a promotional credit): the close posts it on its own.
    immediate: bool
    #: Its number on the invoice, from 1.
    n: list[int]
    #: ratable, usage, commit, drawdown or immediate (:func:`meter.money.ledger.treatment`).
    treatment: list[str]
    #: What it counts toward (None: nothing, such as a usage line without a key).
    source: list[str | None]
    #: Net of the tax included in it.
    amount: list[str]
    start: list[int]
    end: list[int]
    #: Usage lines' quantity.
    quantity: list[str | None]
    price: list[str | None]
    meter: list[str | None]
    #: A usage line's billing cycle (the one its key names).
    cycle_start: list[int | None]
    cycle_end: list[int | None]
    #: A usage line of the cycle invoice billing its cycle in arrears.
    settles: list[bool]

    def lines(self) -> list[dict[str, object]]:
        """Its lines, each as a dict of :data:`LINE` (for what the close handles one line at a time)."""
        columns = [getattr(self, name) for name in LINE]
        return [dict(zip(LINE, cells, strict=True)) for cells in zip(*columns, strict=True)]


#: The Arrow types of a record's head fields, as :func:`lines` gives them.
_HEAD_TYPES: dict[str, pa.DataType] = {
    "invoice": pa.string(),
    "customer": pa.string(),
    "subscription": pa.string(),
    "currency": pa.string(),
    "billed": pa.bool_(),
    "finalized_at": pa.int64(),
    "status": pa.string(),
    "voided_at": pa.int64(),
    "first": pa.int64(),
    "immediate": pa.bool_(),
}
#: The Arrow types of a line's fields, as :func:`lines` gives them.
_LINE_TYPES: dict[str, pa.DataType] = {
    "n": pa.int32(),
    "treatment": pa.string(),
    "source": pa.string(),
    "amount": pa.string(),
    "start": pa.int64(),
    "end": pa.int64(),
    "quantity": pa.string(),
    "price": pa.string(),
    "meter": pa.string(),
    "cycle_start": pa.int64(),
    "cycle_end": pa.int64(),
    "settles": pa.bool_(),
}
HEAD, LINE = tuple(_HEAD_TYPES), tuple(_LINE_TYPES)
assert (*HEAD, *LINE) == Due.__struct_fields__, "the Arrow types name each field of a record, in its order"
_LINES = pa.schema([*_HEAD_TYPES.items(), *_LINE_TYPES.items()])
_READ = pyarrow.json.ParseOptions(
    explicit_schema=pa.schema([*_HEAD_TYPES.items(), *((k, pa.list_(t)) for k, t in _LINE_TYPES.items())])
)

encode = msgspec.json.Encoder().encode
decode = msgspec.json.Decoder(Due).decode


def table(records: Sequence[bytes]) -> pa.Table:
    """Many encoded records, one row each: their :data:`HEAD` fields, then a list per :data:`LINE` field."""
    if not records:
        return _READ.explicit_schema.empty_table()
    # A block holds whole records: the largest one twice over, at least the reader's default.
    block = max(1 << 20, 2 * max(map(len, records)))
    return pyarrow.json.read_json(io.BytesIO(b"\n".join(records)), pyarrow.json.ReadOptions(block_size=block), _READ)


def lines(records: pa.Table) -> pa.Table:
    """The lines of records (as :func:`table` gives them), one row each: its record's head fields, then its own."""
    of_line = pc.list_parent_indices(records["n"])
    columns = [*records.select(HEAD).take(of_line).columns, *(pc.list_flatten(records[name]) for name in LINE)]
    return pa.table(columns, schema=_LINES)


def record(invoice: Invoice, prepaid: frozenset[str]) -> Due:
    """``invoice``'s record; ``prepaid``: the grants of the prepaid commits bought (what its credit lines draw on)."""
    rows = []
    treatments = [ledger.treatment(line, prepaid) for line in invoice.lines]
    amounts = ledger.net_line_amounts(invoice)
    for n, (line, how, amount) in enumerate(zip(invoice.lines, treatments, amounts, strict=True), start=1):
        cycle = charge_cycle(line.key) if how == "usage" and line.key else None
        rows.append(
            (
                n,
                how,
                source_of(how, invoice.id, n, line),
                format(amount, "f"),
                micros(line.period_start),
                micros(line.period_end),
                format(line.quantity, "f") if how == "usage" and line.quantity is not None else None,
                line.price,
                line.meter,
                micros(cycle[0]) if cycle else None,
                micros(cycle[1]) if cycle else None,
                _settles(how, invoice.reason, invoice.usage_start, line),
            )
        )
    columns = [list(cells) for cells in zip(*rows, strict=True)] or [[] for _ in LINE]
    return Due(
        invoice=invoice.id,
        customer=invoice.customer,
        subscription=invoice.subscription,
        currency=invoice.currency,
        billed=invoice.status in BILLED,
        finalized_at=micros(invoice.finalized_at or invoice.issued_at),
        status=invoice.status,
        voided_at=None if invoice.voided_at is None else micros(invoice.voided_at),
        first=micros(min([invoice.period_start, *(line.period_start for line in invoice.lines)])),
        immediate="immediate" in treatments,
        **dict(zip(LINE, columns, strict=True)),
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
