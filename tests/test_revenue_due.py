"""Revenue records (meter.money.revenue.due): what the close reads of an invoice, read back a million at a time."""

from __future__ import annotations

import msgspec
import pytest
from meter.money.revenue import due


def a_record(invoice: str, lines: int, status: str = "open") -> due.Due:
    """A record of ``lines`` usage lines (the fields as the store writes them; values that tell lines apart)."""
    return due.Due(
        invoice=invoice,
        customer="c1",
        subscription="s1",
        currency="EUR",
        billed=status != "void",
        finalized_at=1_767_225_600_000_000,
        status=status,  # type: ignore[arg-type]
        voided_at=None if status != "void" else 1_767_312_000_000_000,
        first=1_764_547_200_000_000,
        immediate=False,
        n=list(range(1, lines + 1)),
        treatment=["usage"] * lines,
        source=[f"usage:s1/p{n}" if n % 3 else None for n in range(lines)],
        amount=[f"{n}.125000000" for n in range(lines)],
        start=[1_764_547_200_000_000 + n for n in range(lines)],
        end=[1_767_225_600_000_000] * lines,
        quantity=[str(n * 1000) if n % 2 else None for n in range(lines)],
        price=[f"p{n}" for n in range(lines)],
        meter=["tokens"] * lines,
        cycle_start=[1_764_547_200_000_000 if n % 2 else None for n in range(lines)],
        cycle_end=[1_767_225_600_000_000 if n % 2 else None for n in range(lines)],
        settles=[n % 2 == 1 for n in range(lines)],
    )


def expected_rows(*records: due.Due) -> list[dict[str, object]]:
    """Each line of each record as a row: the record's head fields, then the line's."""
    return [{**{k: getattr(record, k) for k in due.HEAD}, **line} for record in records for line in record.lines()]


def test_records_are_read_back_line_by_line_with_their_head() -> None:
    records = [a_record("inv-1", 3), a_record("inv-2", 0), a_record("inv-3", 2, "void")]
    lines = due.lines(due.table([due.encode(r) for r in records]))
    assert lines.to_pylist() == expected_rows(*records), "each line once, in order, under its own invoice's head"
    assert [due.decode(due.encode(r)) for r in records] == records


def test_a_record_larger_than_the_readers_block_is_read_whole() -> None:
    big = a_record("inv-big", 25_000)  # about 3 MB of JSON: an object the JSON reader refuses across 1 MB blocks
    encoded = due.encode(big)
    assert len(encoded) > 2 << 20
    lines = due.lines(due.table([due.encode(a_record("inv-1", 1)), encoded]))
    assert lines.num_rows == 25_001
    assert lines.to_pylist() == expected_rows(a_record("inv-1", 1), big)


def test_no_records_read_as_no_lines_with_every_column() -> None:
    lines = due.lines(due.table([]))
    assert (lines.num_rows, lines.column_names) == (0, [*due.HEAD, *due.LINE])


def test_a_record_that_is_not_one_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        due.decode(b'{"invoice": "inv-1"}')
