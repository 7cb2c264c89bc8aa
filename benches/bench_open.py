"""bench-open: how long a restart takes with a billion identities in the dedup window, and what it costs after.

The store is filled offline (crates/meter_core/examples/seen_bulk.rs: the identities written as table files and
moved into the `seen` column family, as a full compaction would leave them; the engine's write path would need
about an hour for a billion). Then a fresh process opens it through `meter.Engine`, with the page cache dropped
when the machine allows it, and ingests batches of new events (every identity looked up against the billion)
and one retried batch. The peer in the same run: the same steps on an empty store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import dir_bytes, finish, methodology  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh process: open, then ingest; prints one JSON line.
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
from workload import METERS, Workload
import meter
work = Workload(int(sys.argv[3]) + 1)
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
t = time.perf_counter()
engine = meter.Engine(sys.argv[1], cache_mb=int(sys.argv[4]))
open_s = time.perf_counter() - t
rss_open = rss_mib()
for spec in METERS:
    try:
        engine.create_meter("bench", spec)
    except Exception:
        pass
latencies = []
events = 0
t = time.perf_counter()
for body in work.bodies[:-1]:
    s = time.perf_counter()
    r = engine.ingest("bench", body)
    latencies.append(time.perf_counter() - s)
    events += r.accepted + r.duplicates
ingest_s = time.perf_counter() - t
r = engine.ingest("bench", work.bodies[0])
engine.close()
print(json.dumps({"open_s": open_s, "rss_after_open_mib": rss_open, "rss_after_ingest_mib": rss_mib(),
                  "first_batch_ms": latencies[0] * 1000, "events_per_s": events / ingest_s,
                  "retry_duplicates": r.duplicates, "retry_accepted": r.accepted}))
"""


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def run_child(path: Path, batches: int, cache_mb: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(Path(__file__).parent), str(batches), str(cache_mb)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def fill(path: Path, identities: int) -> float:
    subprocess.run(
        ["cargo", "build", "-q", "--release", "-p", "meter_core", "--example", "seen_bulk"], check=True, cwd=ROOT
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    out = subprocess.run(
        [str(target / "release/examples/seen_bulk"), str(path), str(identities)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--identities", type=int, default=1_000_000_000)
    ap.add_argument("--dir", type=Path, help="data directory to fill (or reuse if --reuse); default a temporary one")
    ap.add_argument("--reuse", action="store_true", help="the directory is already filled with --identities")
    ap.add_argument("--batches", type=int, default=20, help="1000-event batches ingested after the open")
    ap.add_argument("--keep", action="store_true", help="keep the filled directory")
    ap.add_argument(
        "--cache-mb", type=int, default=1536, help="block cache (about 1 byte per identity keeps every filter)"
    )
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="meter-open-", dir=args.dir.parent if args.dir else None))
    path = args.dir or base / "filled"
    fill_s = None if args.reuse else fill(path, args.identities)
    methodology(
        "bench-open",
        {
            "identities": f"{args.identities:,} in `seen`, received within the last day",
            "filled": "offline, table files moved into the store (seen_bulk)" if fill_s else "reused",
            "after_open": f"{args.batches} batches of 1000 new events, then one retried batch",
        },
        {
            "cache_mb": args.cache_mb,
            "page_cache": "dropped before each open" if drop_page_cache() else "warm (not droppable)",
        },
    )
    try:
        drop_page_cache()
        empty = run_child(base / "empty", args.batches, args.cache_mb)
        drop_page_cache()
        filled = run_child(path, args.batches, args.cache_mb)
        size = dir_bytes(path)
    finally:
        shutil.rmtree(base / "empty", ignore_errors=True)
        if not args.keep and not args.reuse:
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True) if not args.keep else None
    print(
        f"  result: open {filled['open_s']:.2f} s with {args.identities:,} identities "
        f"(empty store {empty['open_s']:.2f} s); {filled['events_per_s']:,.0f} events/s after it "
        f"({empty['events_per_s']:,.0f} on the empty store); RSS {filled['rss_after_ingest_mib']:.0f} MiB"
    )
    finish(
        "open",
        {
            "identities": args.identities,
            "fill_s": fill_s,
            "disk_bytes": size,
            "disk_bytes_per_identity": round(size / max(args.identities, 1), 1),
            "open_s": round(filled["open_s"], 3),
            "empty_open_s": round(empty["open_s"], 3),
            "first_batch_ms": round(filled["first_batch_ms"], 1),
            "empty_first_batch_ms": round(empty["first_batch_ms"], 1),
            "events_per_s_after_open": round(filled["events_per_s"]),
            "empty_events_per_s": round(empty["events_per_s"]),
            "rss_after_open_mib": round(filled["rss_after_open_mib"]),
            "rss_after_ingest_mib": round(filled["rss_after_ingest_mib"]),
            "empty_rss_after_ingest_mib": round(empty["rss_after_ingest_mib"]),
            "retry_duplicates": filled["retry_duplicates"],
            "cache_mb": args.cache_mb,
            "retry_accepted": filled["retry_accepted"],
        },
    )


if __name__ == "__main__":
    main()
