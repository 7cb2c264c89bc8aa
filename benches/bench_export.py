"""bench-export: usage rows exported to Parquet per second, from the engine to hive-partitioned zstd files.

Ingests events that make `--rows` usage rows (customers x minutes x models, one event each) into a fresh engine,
then times a first full export, a second export with nothing changed (which must rewrite nothing), and, as the
ceiling in the same run, writing the same rows to Parquet from an Arrow table already in memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from _common import finish, methodology  # noqa: E402
from meter import Engine  # noqa: E402
from meter.lake import layout  # noqa: E402
from meter.lake.usage import export_usage  # noqa: E402

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "claude-haiku", "llama-70b"]


def bodies(customers: int, minutes: int, start: datetime) -> list[bytes]:
    """One event per (customer, minute, model), 1000 to a body, built as text (no per-event dicts)."""
    out, batch = [], []
    for minute in range(minutes):
        t = (start + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for c in range(customers):
            for m, model in enumerate(MODELS):
                batch.append(
                    f'{{"specversion":"1.0","id":"{minute}-{c}-{m}","source":"bench","type":"llm",'
                    f'"subject":"cust-{c:05d}","time":"{t}","data":{{"model":"{model}","tokens":{c + m}}}}}'
                )
                if len(batch) == 1000:
                    out.append(("[" + ",".join(batch) + "]").encode())
                    batch = []
    if batch:
        out.append(("[" + ",".join(batch) + "]").encode())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000, help="usage rows to export (default 10M)")
    ap.add_argument("--customers", type=int, default=2000)
    args = ap.parse_args()
    minutes = max(1, args.rows // (args.customers * len(MODELS)))
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=minutes + 1)
    methodology(
        "bench-export",
        {
            "rows": f"{args.customers} customers x {minutes} minutes x {len(MODELS)} models",
            "meter": "sum of tokens by model",
        },
        {
            "export": "meter.lake.usage.export_usage, zstd Parquet, one file per tenant, meter and day",
            "ceiling": "the same rows written to Parquet from one Arrow table in memory",
        },
    )
    with tempfile.TemporaryDirectory(prefix="meter-bench-export-") as tmp:
        work = Path(tmp)
        with Engine(work / "usage", durability="buffered") as engine:
            engine.create_meter(
                "bench",
                {
                    "slug": "tokens",
                    "event_type": "llm",
                    "aggregation": "sum",
                    "value_property": "$.tokens",
                    "group_by": {"model": "$.model"},
                },
            )
            print(f"ingesting {args.customers * minutes * len(MODELS):,} events ...", flush=True)
            for body in bodies(args.customers, minutes, start):
                engine.ingest("bench", body)

            began = time.perf_counter()
            first = export_usage(engine, ["bench"], work / "out")
            first_s = time.perf_counter() - began
            began = time.perf_counter()
            again = export_usage(engine, ["bench"], work / "out")
            again_s = time.perf_counter() - began

        table = ds.dataset(layout.usage_root(work / "out"), format="parquet", partitioning="hive").to_table()
        began = time.perf_counter()
        pq.write_table(table, work / "ceiling.parquet", compression="zstd")
        ceiling_s = time.perf_counter() - began

    print(
        f"  first export: {first.rows:,} rows in {first.files} files, {first_s:.2f} s "
        f"({first.rows / first_s:,.0f} rows/s)"
    )
    print(
        f"  second export (nothing changed): {again.files} files rewritten, {again.unchanged} unchanged, "
        f"{again_s:.2f} s"
    )
    print(f"  ceiling (Parquet write alone): {table.num_rows / ceiling_s:,.0f} rows/s")
    finish(
        "export",
        {
            "rows": first.rows,
            "files": first.files,
            "rows_per_s": round(first.rows / first_s),
            "seconds": round(first_s, 3),
            "unchanged_export_seconds": round(again_s, 3),
            "rewritten_when_unchanged": again.files,
            "ceiling_parquet_write_rows_per_s": round(table.num_rows / ceiling_s),
        },
    )


if __name__ == "__main__":
    main()
