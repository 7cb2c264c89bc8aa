"""bench-query-ingest: usage queries while ingesting at full speed, the W1 query of `bench-peers` alone.

One thread ingests 1000-event batches (workload.py, fsync) as fast as the engine takes them; another asks one
customer's input tokens over 30 days by model every 50 ms (customers drawn as bench-peers draws them). Each round
ingests the same bodies into a fresh engine twice, without queries and with them, so that the ingest throughput lost
to queries is measured in the same run, on the same machine state.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import meter  # noqa: E402
from _common import finish, methodology, percentile  # noqa: E402
from meter import _core  # noqa: E402
from workload import CUSTOMERS, METERS, Workload  # noqa: E402


class Queries(threading.Thread):
    """One customer's 30 days by model, every `every` seconds, until stopped; records each query's latency."""

    def __init__(self, engine: meter.Engine, every: float) -> None:
        super().__init__(daemon=True)
        self.engine, self.every, self.latencies, self.stop = engine, every, [], threading.Event()

    def run(self) -> None:
        rng = random.Random(5)
        end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=2)
        start = end - timedelta(days=30)
        while not self.stop.is_set():
            customer = f"cust-{min(int(rng.paretovariate(1.1)) - 1, CUSTOMERS - 1):05d}"
            began = time.perf_counter()
            self.engine.usage(
                "bench", "input-tokens", start=start, end=end, subjects=[customer], group_by=["model"]
            ).rows()
            self.latencies.append(time.perf_counter() - began)
            self.stop.wait(self.every)


def ingest(bodies: list[bytes], warm: list[bytes], every: float | None) -> dict[str, Any]:
    """Ingests `bodies` into a fresh engine (after `warm`), with queries every `every` seconds unless None."""
    with tempfile.TemporaryDirectory(prefix="meter-bench-") as tmp, meter.Engine(Path(tmp) / "db") as engine:
        for spec in METERS:
            engine.create_meter("bench", spec)
        for b in warm:
            engine.ingest("bench", b)
        queries = Queries(engine, every) if every is not None else None
        if queries:
            queries.start()
        began = time.perf_counter()
        events = sum(engine.ingest("bench", b).accepted for b in bodies)
        seconds = time.perf_counter() - began
        if queries:
            queries.stop.set()
            queries.join()
        return {"events_per_s": events / seconds, "latencies": queries.latencies if queries else []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=300, help="timed batches per run (1000 events each)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (without queries, with queries)")
    ap.add_argument("--every", type=float, default=0.05, help="seconds between queries")
    args = ap.parse_args()

    work = Workload(args.warmup + args.batches)
    warm, timed = work.bodies[: args.warmup], work.bodies[args.warmup :]
    methodology(
        "bench-query-ingest",
        {
            "batches": f"{args.batches} timed + {args.warmup} warm-up per run, 1000 events each",
            "rounds": f"{args.rounds} x (fresh engine without queries, fresh engine with queries)",
            "query": f"one customer's input tokens, 30 days, by model, every {args.every * 1000:.0f} ms",
            "meters": ", ".join(m["slug"] for m in METERS),
        },
        {"durability": "fsync", "ingest_threads": 1, "query_threads": 1, "meter": _core.__version__},
    )
    rates: dict[str, list[float]] = {"without": [], "with": []}
    latencies: list[float] = []
    for r in range(args.rounds):
        for mode in ("without", "with"):
            run = ingest(timed, warm, args.every if mode == "with" else None)
            rates[mode].append(run["events_per_s"])
            latencies += run["latencies"]
            lat = sorted(run["latencies"])
            p50, p99 = percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
            extra = f", {len(lat)} queries p50 {p50:.1f} ms p99 {p99:.1f} ms" if lat else ""
            print(f"  round {r + 1} {mode:>7} queries: {run['events_per_s']:,.0f} events/s{extra}", flush=True)
    latencies.sort()
    without, with_ = statistics.median(rates["without"]), statistics.median(rates["with"])
    finish(
        "query-ingest",
        {
            "ingest_events_per_s_without_queries": round(without),
            "ingest_events_per_s_with_queries": round(with_),
            "ingest_lost_to_queries": round(1 - with_ / without, 4),
            "queries": len(latencies),
            "query_p50_ms": round(percentile(latencies, 50) * 1e3, 2),
            "query_p99_ms": round(percentile(latencies, 99) * 1e3, 2),
            "query_max_ms": round(latencies[-1] * 1e3, 2) if latencies else None,
        },
    )


if __name__ == "__main__":
    main()
