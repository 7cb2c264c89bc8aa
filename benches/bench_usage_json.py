"""bench-usage-json: how long a usage answer of 88k rows takes to encode as JSON, before and now, against CSV.

Before: Python dicts per row; now: the engine, column by column. Ingests one event per (customer, minute, model)
into a fresh engine, queries `window_size=minute` grouped by customer and model (88,000 rows), then times, best of
`--repeat`, the query alone (the ceiling) and each encoding after it; CSV is the peer measured in the same run.
Prints a Methodology block and, last, a JSON line (also in benches/results/usage_json.json).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.csv as pa_csv
from meter import Engine, Usage

sys.path.insert(0, str(Path(__file__).parent))
from _common import finish, methodology  # noqa: E402

START = datetime(2026, 11, 23, tzinfo=UTC)
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "claude-haiku"]


def per_row_json(usage: Usage) -> bytes:
    """The API's JSON before: a dict per row, then msgspec."""
    rows = [
        {
            **row,
            "window_start": row["window_start"].isoformat(),
            "window_end": row["window_end"].isoformat(),
            "value": format(row["value"].normalize(), "f"),
        }
        for row in usage.rows()
    ]
    return msgspec.json.encode(rows)


def csv(usage: Usage) -> bytes:
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(usage.table, sink)
    return bytes(sink.getvalue().to_pybytes())


def best(repeat: int, fn: Any) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=250)
    parser.add_argument("--minutes", type=int, default=88)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    methodology(
        "bench-usage-json",
        {
            "rows": f"{args.customers} customers x {args.minutes} minutes x {len(MODELS)} "
            "models, one event each, queried per minute by customer and model"
        },
        {"repeat": f"best of {args.repeat}", "client": "one Python thread, in process (no HTTP)"},
    )
    with tempfile.TemporaryDirectory() as tmp, Engine(Path(tmp) / "db") as engine:
        engine.create_meter(
            "t",
            {
                "slug": "tokens",
                "event_type": "llm",
                "aggregation": "sum",
                "value_property": "$.tokens",
                "group_by": {"model": "$.model"},
            },
        )
        batch: list[str] = []
        for minute in range(args.minutes):
            t = (START + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")
            for c in range(args.customers):
                for m, model in enumerate(MODELS):
                    batch.append(
                        f'{{"specversion":"1.0","id":"{minute}-{c}-{m}","source":"b","type":"llm",'
                        f'"subject":"cust-{c:05d}","time":"{t}","data":{{"model":"{model}",'
                        f'"tokens":"{c}.{m}5"}}}}'
                    )
                    if len(batch) == 10_000:
                        engine.ingest("t", ("[" + ",".join(batch) + "]").encode(), now=START + timedelta(hours=2))
                        batch = []
        if batch:
            engine.ingest("t", ("[" + ",".join(batch) + "]").encode(), now=START + timedelta(hours=2))

        def query() -> Usage:
            return engine.usage(
                "t",
                "tokens",
                start=START,
                end=START + timedelta(hours=2),
                window_size="minute",
                group_by=["subject", "model"],
            )

        q, usage = best(args.repeat, query)
        old, old_bytes = best(args.repeat, lambda: per_row_json(query()))
        new, new_bytes = best(args.repeat, lambda: query().json_rows())
        as_csv, _ = best(args.repeat, lambda: csv(query()))
        assert old_bytes == new_bytes, "the engine's JSON differs from the per-row JSON"
    figures = {
        "rows": len(usage),
        "query_s": round(q, 4),
        "json_per_row_s": round(old, 4),
        "json_engine_s": round(new, 4),
        "csv_s": round(as_csv, 4),
        "json_bytes": len(new_bytes),
    }
    print(
        f"{len(usage)} rows: query alone {q:.3f} s; query + JSON per row (before) {old:.3f} s; "
        f"query + JSON by the engine (now) {new:.3f} s; query + CSV {as_csv:.3f} s"
    )
    finish("usage_json", figures)


if __name__ == "__main__":
    main()
