"""The recognition sub-ledger's storage (meter.money.revenue.book): kept by month, read and written back in part."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
from meter.billing.store import InvoiceStore
from meter.money.revenue import book
from meter.money.revenue.book import Book


def sources(*rows: tuple[str, str]) -> Book:
    """A book of fee sources (name, the month it is kept under), one part each."""
    frame = pl.DataFrame(
        {
            "source": [name for name, _ in rows],
            "kind": ["fee"] * len(rows),
            "currency": ["EUR"] * len(rows),
            "customer": ["c1"] * len(rows),
            "subscription": ["s1"] * len(rows),
            "cursor": [Decimal(0)] * len(rows),
            "month": [month for _, month in rows],
        }
    )
    parts = pl.DataFrame(
        {
            "source": [name for name, _ in rows],
            "line": [f"inv/{n}" for n in range(len(rows))],
            "amount": [Decimal("1.00")] * len(rows),
            "start": [datetime(2026, 1, 1, tzinfo=UTC)] * len(rows),
        }
    )
    return Book(
        pl.concat([pl.DataFrame(schema=book.SOURCES), frame.drop("month")], how="diagonal_relaxed"),
        pl.concat([pl.DataFrame(schema=book.PARTS), parts], how="diagonal_relaxed"),
    )


def month_of(kept: dict[str, str]) -> pl.Expr:
    return pl.col("source").replace_strict(kept, return_dtype=pl.String())


def names(found: Book) -> list[str]:
    return sorted(found.sources.get_column("source").to_list())


def test_a_book_is_kept_by_month_and_a_close_reads_the_months_up_to_its_own(tmp_path: Path) -> None:
    store = InvoiceStore(tmp_path / "invoices")
    months = {"fee:a": "2026-01", "fee:b": "2026-02", "fee:c": "2026-05"}
    with store.transaction("acme") as change:
        book.save(change, "acme", sources(*months.items()), month_of(months))
    assert names(book.load(store, "acme")) == ["fee:a", "fee:b", "fee:c"]
    january = book.load(store, "acme", until="2026-01")
    assert (names(january), january.months) == (["fee:a"], frozenset({"2026-01"}))
    assert january.parts.get_column("source").to_list() == ["fee:a"], "a source's parts are kept with it"

    # Written back: fee:a moves to May, a month not read (merged with what is there), and January is emptied.
    with store.transaction("acme") as change:
        book.save(change, "acme", january, month_of({"fee:a": "2026-05"}))
    assert book.load(store, "acme", until="2026-04").sources.get_column("source").to_list() == ["fee:b"]
    everything = book.load(store, "acme")
    assert names(everything) == ["fee:a", "fee:b", "fee:c"], "nothing lost, nothing twice"
    assert everything.months == frozenset({"2026-02", "2026-05"})
    assert store.raw("revenue_book/acme/2026-01/sources") is None
    assert sorted(everything.parts.get_column("source").to_list()) == ["fee:a", "fee:b", "fee:c"]


def test_a_done_source_is_archived_and_found_again_by_its_name(tmp_path: Path) -> None:
    store = InvoiceStore(tmp_path / "invoices")
    assert not len(book.unarchive(store, "acme", ["fee:a"])), "nothing archived yet"
    done = sources(("fee:a", ""), ("fee:b", ""))
    with store.transaction("acme") as change:
        book.archive(change, "acme", date(2026, 1, 31), done)
    with store.transaction("acme") as change:  # archived again later: the later one is found
        book.archive(change, "acme", date(2026, 3, 31), sources(("fee:a", "")))
    found = book.unarchive(store, "acme", ["fee:a", "fee:b", "fee:new"])
    assert names(found) == ["fee:a", "fee:b"]
    assert sorted(found.parts.get_column("source").to_list()) == ["fee:a", "fee:b"]
