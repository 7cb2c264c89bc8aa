"""bench-corrections: what a correction costs, by its size, against a read of the events it must restate from.

Workload: one tenant, ``--days`` UTC days of ``--per-day`` events each (received the same day, in batches of 10,000),
spread over ``--customers`` customers, counted by a sum and a max meter. Then corrections of growing size, each one
synced commit: cancels of 1, 100 and 1,000 events of one day, and 1,000 amends (a new value) of one day.

A correction restates each bucket its events count in from the retained events of the commits the day's mark names
(``engine::correct``), so its floor is one read of that day's events. The ceiling measured in the same run is that
read through the engine's Arrow reader of retained events (``Engine.retained_events``, whole commits): the
correction's time over it says what the restatement adds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
from _common import finish, methodology  # noqa: E402
from meter import Engine  # noqa: E402
from meter.schemas import AmendEvent, CancelEvent, CorrectionRequest  # noqa: E402

TENANT = "bench"
DAY0 = datetime(2026, 11, 1, tzinfo=UTC)
BATCH = 10_000


def event(day: int, n: int, customers: int, per_day: int, value: int) -> dict[str, Any]:
    at = DAY0 + timedelta(days=day, microseconds=n * 86_400_000_000 // per_day)
    return {
        "specversion": "1.0",
        "id": f"d{day}-{n}",
        "source": "gw",
        "type": "llm",
        "subject": f"c{n % customers}",
    } | {
        "time": at.isoformat(),
        "data": {"v": value},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--per-day", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=1_000)
    args = parser.parse_args()
    methodology(
        "bench-corrections",
        {"days": args.days, "events_per_day": args.per_day, "customers": args.customers, "meters": "sum, max"},
        {"durability": "fsync", "client": "in process: the engine's Python API, one thread"},
    )
    directory = Path(tempfile.mkdtemp(prefix="bench-corrections-"))
    now = DAY0 + timedelta(days=args.days, hours=1)
    figures: dict[str, Any] = {}
    try:
        with Engine(directory / "db", maintenance_interval=None) as engine:
            for slug, aggregation in (("tokens", "sum"), ("peak", "max")):
                spec = {"slug": slug, "event_type": "llm", "aggregation": aggregation, "value_property": "$.v"}
                engine.create_meter(TENANT, spec)
            started = time.perf_counter()
            for day in range(args.days):
                for first in range(0, args.per_day, BATCH):
                    batch = [event(day, n, args.customers, args.per_day, n % 97) for n in range(first, first + BATCH)]
                    engine.ingest(TENANT, json.dumps(batch).encode(), now=DAY0 + timedelta(days=day, hours=23))
            figures["ingest_s"] = round(time.perf_counter() - started, 2)

            # The ceiling: the middle day's events read back whole, as Arrow. Creating a meter takes no commit, and
            # each batch is one: that day's commits follow the days before it.
            day = args.days // 2
            per_batch = args.per_day // BATCH
            started = time.perf_counter()
            table, _ = engine.retained_events(TENANT, day * per_batch, args.per_day)
            figures["ceiling_read_day_s"] = round(time.perf_counter() - started, 3)
            figures["ceiling_events"] = table.num_rows

            def timed(name: str, items: list[Any]) -> None:
                started = time.perf_counter()
                result = engine.correct(TENANT, CorrectionRequest(reason=name, items=items), actor="bench", now=now)
                seconds = time.perf_counter() - started
                figures[name] = {
                    "s": round(seconds, 3),
                    "events_read": result.events_read,
                    "buckets": result.buckets,
                    "over_ceiling": round(seconds / figures["ceiling_read_day_s"], 1),
                }
                print(f"  {name}: {seconds:.3f} s, {result.events_read} events read, {result.buckets} buckets")

            step = max(1, args.per_day // 2_000)
            ids = [f"d{day}-{n}" for n in range(0, args.per_day, step)]
            timed("cancel_1", [CancelEvent(source="gw", id=ids[0])])
            timed("cancel_100", [CancelEvent(source="gw", id=i) for i in ids[1:101]])
            timed("cancel_1000", [CancelEvent(source="gw", id=i) for i in ids[101:1101]])
            amends = [event(day, n, args.customers, args.per_day, 1_000) for n in range(1, args.per_day, step)][:1000]
            timed("amend_1000", [AmendEvent(event=e) for e in amends])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    finish("bench-corrections", figures)


if __name__ == "__main__":
    main()
