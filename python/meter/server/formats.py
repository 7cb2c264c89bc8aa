"""The tabular answers' formats: JSON, CSV or Parquet, chosen by ``format`` or ``Accept``, and their encoding.

Reports whose rows a finance tool reads (the ledger's entries, revenue reports) answer in any of the three; CSV and
Parquet carry the same columns, CSV amounts as plain decimal text (never a float, never ``3E+1``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq

from meter.encoding import plain
from meter.server.errors import ApiError
from meter.server.http import Answer

__all__ = ["FORMATS", "MEDIA", "TABLE_MEDIA", "TEXT_FORMATS", "TEXT_MEDIA", "choose", "rows_answer", "table_answer"]

#: The answer's formats, by their ``format`` value and media type.
FORMATS = {"json": "application/json", "csv": "text/csv", "parquet": "application/vnd.apache.parquet"}
#: What the OpenAPI document says CSV and Parquet answers are.
MEDIA = {
    "text/csv": {"type": "string"},
    "application/vnd.apache.parquet": {"type": "string", "format": "binary"},
}


#: JSON or CSV: the reports that have no Parquet form.
TEXT_FORMATS = {"json": FORMATS["json"], "csv": FORMATS["csv"]}
TEXT_MEDIA = {"text/csv": MEDIA["text/csv"]}


#: What the OpenAPI document says a table's CSV and Arrow answers are (the usage, the events), beside JSON.
TABLE_MEDIA = {
    "text/csv": {"type": "string"},
    "application/vnd.apache.arrow.stream": {"type": "string", "format": "binary"},
}


def table_answer(table: pa.Table, accept: str, headers: dict[str, str] | None = None) -> Answer | None:
    """``table`` as CSV (RFC 4180 lines) or Arrow IPC when ``accept`` asks for either; None for JSON."""
    if "text/csv" in accept:
        sink = pa.BufferOutputStream()
        pa_csv.write_csv(table, sink, pa_csv.WriteOptions(eol="\r\n"))  # type: ignore[call-arg]  # the stubs lack eol
        return 200, sink.getvalue().to_pybytes(), {**(headers or {}), "content-type": "text/csv"}
    if "application/vnd.apache.arrow.stream" in accept:
        sink = pa.BufferOutputStream()
        with pa_ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return (
            200,
            sink.getvalue().to_pybytes(),
            {**(headers or {}), "content-type": "application/vnd.apache.arrow.stream"},
        )
    return None


def choose(fmt: str | None, accept: str = "", formats: dict[str, str] = FORMATS, default: str = "json") -> str:
    """The answer's format: ``format`` when given (one of ``formats``).

    Else the first of the other ``formats`` that ``Accept`` names, else ``default``.
    """
    if fmt is not None:
        if fmt not in formats:
            raise ApiError(400, "invalid_query", f"'format' must be one of {', '.join(formats)}; got {fmt!r}")
        return fmt
    for name, media in formats.items():
        if media in accept and name != default:
            return name
    return default


def rows_answer(value: Any, rows: Sequence[msgspec.Struct], fmt: str) -> Answer:
    """``value`` as JSON, or ``rows`` (structs of one type) as CSV or Parquet with one column per field."""
    if fmt == "json":
        return 200, value, {}
    records = [msgspec.to_builtins(row, builtin_types=(Decimal, date, datetime)) for row in rows]
    columns = list(rows[0].__struct_fields__) if rows else []
    headers = {"content-type": FORMATS[fmt]}
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({k: _cell(record.get(k)) for k in columns})
        return 200, out.getvalue().encode(), headers
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(records) if records else pa.table({}), sink, compression="zstd")
    return 200, sink.getvalue().to_pybytes(), headers


def _cell(value: Any) -> Any:
    if isinstance(value, Decimal):
        return plain(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return "" if value is None else value
