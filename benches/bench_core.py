"""bench-core: the engine alone (no HTTP), one calling thread, fsync durability.

Workload and meters are in workload.py. The ceiling is the parser alone on the same bytes, in the same run.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import meter  # noqa: E402
from _common import finish, methodology, percentile  # noqa: E402
from meter import _core  # noqa: E402
from workload import METERS, Workload  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=400, help="timed batches (default 400 = 400k events)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--durability", default="fsync", choices=["fsync", "buffered"])
    args = ap.parse_args()

    t = time.perf_counter()
    work = Workload(args.warmup + args.batches)
    gen_s = time.perf_counter() - t
    methodology(
        "bench-core",
        {
            "batches": f"{args.batches} timed + {args.warmup} warm-up, 1000 events each",
            "event_bytes": round(work.event_bytes, 1),
            "customers": "10,000 (Zipf s=1.1)",
            "dimensions": "model, region, tier",
            "meters": ", ".join(f"{m['slug']} ({m['aggregation']})" for m in METERS),
            "duplicates": f"{1 - work.unique_events / work.sent_events:.1%} (whole-batch retries + single re-sends)",
            "generation_s": round(gen_s, 1),
        },
        {"durability": args.durability, "calling_threads": 1, "meter": _core.__version__},
    )

    warm, timed = work.bodies[: args.warmup], work.bodies[args.warmup :]
    timed_events = sum(b.count(b'"specversion"') for b in timed)

    # Ceiling: the same bytes through the parser alone.
    t = time.perf_counter()
    parsed = sum(_core.parse_only(b) for b in timed)
    parse_s = time.perf_counter() - t
    assert parsed == timed_events, (parsed, timed_events)

    with (
        tempfile.TemporaryDirectory(prefix="meter-bench-") as tmp,
        meter.Engine(Path(tmp) / "db", durability=args.durability) as engine,
    ):
        for spec in METERS:
            engine.create_meter("bench", spec)
        for b in warm:
            engine.ingest("bench", b)
        latencies = []
        accepted = duplicates = rejected = 0
        cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for b in timed:
            s = time.perf_counter()
            r = engine.ingest("bench", b)
            latencies.append((time.perf_counter() - s) * 1000)
            accepted, duplicates, rejected = accepted + r.accepted, duplicates + r.duplicates, rejected + len(r.issues)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        assert rejected == 0, f"{rejected} events rejected"
        assert accepted + duplicates == timed_events

    latencies.sort()
    figures = {
        "events_per_s": round(timed_events / wall),
        "accepted_events_per_s": round(accepted / wall),
        "batches_per_s": round(len(timed) / wall, 1),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "parse_only_events_per_s": round(timed_events / parse_s),
        "duplicates": duplicates,
        "process_cpu_share": round(cpu / wall / 2, 3),
        "durability": args.durability,
    }
    print(
        f"  result: {figures['events_per_s']:,} events/s ({figures['accepted_events_per_s']:,} accepted), "
        f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms per 1000-event batch; "
        f"parser ceiling {figures['parse_only_events_per_s']:,} events/s"
    )
    finish("core", figures)


if __name__ == "__main__":
    main()
