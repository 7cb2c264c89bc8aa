"""The sub-ledger of recognition: what each source was billed and what it has recognized, as columns.

A *source* is what earns revenue as one: a fee's key, a usage key, a prepaid commit (see
:mod:`meter.money.revenue.recognize`). Its *parts* are the billed lines about it, one row each. A close looks at
every open source at once, so both are tables (polars in memory, Arrow IPC at rest), never one record per source:

===============================================  ==============================================================
``revenue_book/<tenant>/<month>/sources``        the **book**: the sources still open (earning, waiting to start
``revenue_book/<tenant>/<month>/parts``          or expire, or usage still open to restatement) and their parts,
                                                 by the month (UTC) of the first close that must look at them
                                                 again; its size follows the subscriptions billed, not the
                                                 history kept
``revenue_book/<tenant>``                        the months of the book (JSON)
``revenue_archive/<tenant>/<day>/sources``       the sources the close through ``<day>`` found done, and their
``revenue_archive/<tenant>/<day>/parts``         parts: read again only when a later invoice touches one of
                                                 them (a void, late usage)
``revenue_index/<tenant>/<source>``              the day of the archive that holds a done source last
===============================================  ==============================================================

A close step reads the months up to its own (all of them when it has lines to add: a line can change any source),
and writes back those it read: a year billed in advance is not read and written again by every month's close.

A source's row keeps what the close needs without its parts (summed from them whenever a part changes, by
:func:`summarize`): what it was billed, the service period it earns over, whether its cycle was settled, when it
ends or expires, and its cursor (what it has recognized).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date

import msgspec
import polars as pl
import pyarrow as pa

from meter.billing.store import Change, InvoiceStore

__all__ = ["PARTS", "SOURCES", "Book", "archive", "load", "save", "summarize", "unarchive"]

_MONEY = pl.Decimal(38, 9)
_TIME = pl.Datetime("us", "UTC")
#: One billed line's part in its source.
PARTS: dict[str, pl.DataType] = {
    "source": pl.String(),
    "line": pl.String(),  # <invoice>/<n>
    "invoice": pl.String(),
    "amount": _MONEY,  # net of inclusive tax; 0 when voided is told by ``void``
    "start": _TIME,
    "end": _TIME,
    "finalized_at": _TIME,
    "quantity": _MONEY,  # a usage line's
    "void": pl.Boolean(),  # its invoice was voided: it adds nothing
    "drawn": pl.Boolean(),  # a credit line drawing on a prepaid commit (negative)
    "settles": pl.Boolean(),  # a usage line of the cycle invoice billing its cycle in arrears
}
#: One source: what it is, its cursor, and what its parts add up to.
SOURCES: dict[str, pl.DataType] = {
    "source": pl.String(),
    "kind": pl.String(),  # fee, usage, commit
    "currency": pl.String(),
    "customer": pl.String(),
    "subscription": pl.String(),
    "price": pl.String(),
    "meter": pl.String(),
    "cycle_start": _TIME,  # a usage key's billing cycle
    "cycle_end": _TIME,
    "cursor": _MONEY,  # what it has recognized
    "counted": _MONEY,  # usage: the quantity it has recognized
    # Summed from the parts (null without parts: a usage key rated before it was invoiced).
    "parts": pl.UInt32(),
    "amount": _MONEY,  # the billed parts' sum
    "earn_start": _TIME,  # a fee: the service period of its latest billed part (its latest part when none is)
    "earn_end": _TIME,
    "settled": pl.Boolean(),  # usage: a billed part settles its cycle
    "ends": _TIME,  # the latest end of its parts
    "expiry": _TIME,  # a commit: the latest end of what was bought and not voided
    "quantity": _MONEY,  # usage: the billed parts' quantity
    "invoice": pl.String(),  # its latest part's invoice, and when that was finalized
    "finalized_at": _TIME,
}


@dataclass
class Book:
    sources: pl.DataFrame
    parts: pl.DataFrame
    #: The months of the stored book read into this one (the others stay as they are).
    months: frozenset[str] = frozenset()

    @staticmethod
    def empty() -> Book:
        return Book(pl.DataFrame(schema=SOURCES), pl.DataFrame(schema=PARTS))

    def __len__(self) -> int:
        return self.sources.height

    def concat(self, other: Book) -> Book:
        sources, parts = pl.concat([self.sources, other.sources]), pl.concat([self.parts, other.parts])
        return Book(sources, parts, self.months | other.months)

    def split(self, done: pl.Series) -> tuple[Book, Book]:
        """(the sources ``done`` marks and their parts, the others and theirs, of the same months)."""
        finished = self.sources.filter(done)
        names = finished.select("source")
        return (
            Book(finished, self.parts.join(names, on="source", how="semi")),
            Book(self.sources.filter(~done), self.parts.join(names, on="source", how="anti"), self.months),
        )


def summarize(book: Book, changed: pl.Series) -> Book:
    """``book`` with the summary columns of the sources named in ``changed`` summed again from their parts."""
    if changed.is_empty():
        return book
    names = changed.unique().to_frame("source")
    billed = ~pl.col("void")
    # Within a group, rows keep the frame's order: sorted here by when each part was finalized, then its line.
    parts = book.parts.join(names, on="source", how="semi").sort("finalized_at", "line")
    sums = parts.group_by("source").agg(
        pl.len().cast(pl.UInt32).alias("parts"),
        pl.col("amount").filter(billed).sum().alias("amount"),
        pl.coalesce(pl.col("start").filter(billed).last(), pl.col("start").last()).alias("earn_start"),
        pl.coalesce(pl.col("end").filter(billed).last(), pl.col("end").last()).alias("earn_end"),
        (pl.col("settles") & billed).any().alias("settled"),
        pl.col("end").max().alias("ends"),
        pl.col("end").filter(billed & ~pl.col("drawn")).max().alias("expiry"),
        pl.col("quantity").filter(billed).sum().alias("quantity"),
        pl.col("invoice").last().alias("invoice"),
        pl.col("finalized_at").last().alias("finalized_at"),
    )
    kept = [name for name in SOURCES if name not in sums.columns or name == "source"]
    again = book.sources.join(names, on="source", how="semi").select(kept).join(sums, on="source", how="left")
    others = book.sources.join(names, on="source", how="anti")
    sources = pl.concat([others, again.select(list(SOURCES)).cast(SOURCES)])  # type: ignore[arg-type]
    return replace(book, sources=sources)


def load(store: InvoiceStore, tenant: str, until: str | None = None) -> Book:
    """The tenant's book, of the months up to ``until`` (``YYYY-MM``; all when None). Empty before its first close."""
    months = [month for month in _months(store.raw(f"revenue_book/{tenant}")) if until is None or month <= until]
    found = [_partition(store.raw, tenant, month) for month in months]
    return Book(*_concat(found), frozenset(months))


def save(change: Change, tenant: str, book: Book, month: pl.Expr) -> None:
    """Writes ``book`` back, each source (and its parts) in the ``month`` (``YYYY-MM``) it says.

    The months it was read from are replaced; a month it was not read from is merged with what is stored there.
    """
    stored = set(_months(change.get(f"revenue_book/{tenant}")))
    sources = book.sources.with_columns(month.alias("_month"))
    parts = book.parts.join(sources.select("source", "_month"), on="source", how="left")
    written: set[str] = set()
    for (when,), these in sources.partition_by("_month", as_dict=True).items():
        assert isinstance(when, str), "every source has a month"
        those = parts.filter(pl.col("_month") == when)
        mine = Book(these.drop("_month"), those.drop("_month"))
        if when in stored and when not in book.months:
            mine = Book(*_concat([_partition(change.get, tenant, when), (mine.sources, mine.parts)]))
        change.put(f"revenue_book/{tenant}/{when}/sources", _ipc(mine.sources))
        change.put(f"revenue_book/{tenant}/{when}/parts", _ipc(mine.parts))
        written.add(when)
    for emptied in book.months - written:
        change.delete(f"revenue_book/{tenant}/{emptied}/sources")
        change.delete(f"revenue_book/{tenant}/{emptied}/parts")
    months = sorted((stored - book.months) | written)
    change.put(f"revenue_book/{tenant}", msgspec.json.encode(months))


def _months(raw: bytes | None) -> list[str]:
    return [] if raw is None else msgspec.json.decode(raw, type=list[str])


def _partition(read: Callable[[str], bytes | None], tenant: str, month: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    sources, parts = (read(f"revenue_book/{tenant}/{month}/{name}") for name in ("sources", "parts"))
    assert sources is not None and parts is not None, f"the book's month {month} is missing"
    return _table(sources, SOURCES), _table(parts, PARTS)


def _concat(tables: list[tuple[pl.DataFrame, pl.DataFrame]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    if not tables:
        return pl.DataFrame(schema=SOURCES), pl.DataFrame(schema=PARTS)
    return pl.concat([s for s, _ in tables]), pl.concat([p for _, p in tables])


def archive(change: Change, tenant: str, day: date, done: Book) -> None:
    """Keeps the sources a close through ``day`` found done, and indexes each by that day."""
    if not len(done):
        return
    change.put(f"revenue_archive/{tenant}/{day.isoformat()}/sources", _ipc(done.sources))
    change.put(f"revenue_archive/{tenant}/{day.isoformat()}/parts", _ipc(done.parts))
    stamp = day.isoformat().encode()
    for source in done.sources.get_column("source"):
        change.put(f"revenue_index/{tenant}/{source}", stamp)
    change.put(f"revenue_archived/{tenant}", b"")


def unarchive(store: InvoiceStore, tenant: str, wanted: list[str]) -> Book:
    """The sources of ``wanted`` that a close archived, as each was archived last (the others are new)."""
    if not wanted or store.raw(f"revenue_archived/{tenant}") is None:
        return Book.empty()
    days: dict[str, list[str]] = {}
    for source, stamp in zip(wanted, store.raw_many([f"revenue_index/{tenant}/{s}" for s in wanted]), strict=True):
        if stamp is not None:
            days.setdefault(stamp.decode(), []).append(source)
    found = [Book.empty()]
    for day, names in sorted(days.items()):
        chunk = {name: store.raw(f"revenue_archive/{tenant}/{day}/{name}") for name in ("sources", "parts")}
        assert chunk["sources"] is not None and chunk["parts"] is not None, f"archive {day} is missing"
        these = pl.Series(names).implode()
        found.append(
            Book(
                _table(chunk["sources"], SOURCES).filter(pl.col("source").is_in(these)),
                _table(chunk["parts"], PARTS).filter(pl.col("source").is_in(these)),
            )
        )
    return Book(pl.concat([b.sources for b in found]), pl.concat([b.parts for b in found]))


def _ipc(frame: pl.DataFrame) -> bytes:
    table = frame.to_arrow()
    sink = pa.BufferOutputStream()
    # LZ4: the book is rewritten by every close, and zstd would take several times as long for little less disk.
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _table(raw: bytes, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    frame = pl.from_arrow(pa.ipc.open_stream(raw).read_all())
    assert isinstance(frame, pl.DataFrame)
    return frame.cast(schema)  # type: ignore[arg-type]
