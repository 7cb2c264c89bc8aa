"""bench-http: end to end over loopback, `meter serve` driven by wrk.

The server (granian, one worker) runs with fsync durability; wrk posts pre-built bodies (a Lua script posts each
body once; no per-event work while it runs).

Runs, in one go: 1000-event batches to a receive-and-discard endpoint (the ceiling: same reading, auth and answer,
no engine), then 1000-event batches, 100-event batches and single events to /v1/events. Workload from workload.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from _common import finish, methodology  # noqa: E402
from http_server import Server  # noqa: E402
from meter.catalog.keys import new_key  # noqa: E402
from workload import METERS, Workload  # noqa: E402

LUA = Path(__file__).parent / "post_bodies.lua"


def write_bodies(directory: Path, name: str, bodies: list[bytes]) -> Path:
    listing = directory / f"{name}.list"
    paths = []
    for i, b in enumerate(bodies):
        p = directory / f"{name}-{i:06d}.json"
        p.write_bytes(b)
        paths.append(str(p))
    listing.write_text("\n".join(paths) + "\n")
    return listing


def run_wrk(
    url: str, path: str, key: str, listing: Path, events_per_body: int, connections: int, seconds: int
) -> dict[str, Any]:
    env = {**os.environ, "BODIES_LIST": str(listing), "METER_KEY": key, "WRK_PATH": path, "WRK_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(LUA), url],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    r = json.loads(line[4:])
    bodies = len(listing.read_text().split())
    elapsed = r["duration_us"] / 1e6
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "events_per_s": round(r["requests"] * events_per_body / elapsed),
        "requests_per_s": round(r["requests"] / elapsed, 1),
        "bodies_sent_again": max(0, r["requests"] - bodies),
        "p50_ms": round(r["p50_us"] / 1000, 3),
        "p99_ms": round(r["p99_us"] / 1000, 3),
        "errors": r["errors_non2xx"] + r["socket_errors"],
        "client_cpu_share": round(client_cpu / elapsed / (os.cpu_count() or 1), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--batches", type=int, default=3000, help="1000-event batches (default 3000: enough for 4 s at 750k events/s)"
    )
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=4, help="wrk duration per run")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `make bench-http` installs it (Debian package wrk)")

    large = Workload(args.batches)
    small = Workload(args.batches * 12, batch_size=100, seed=7)
    single_bodies = [json.dumps(e).encode() for b in Workload(32, seed=9).bodies for e in json.loads(b)][:32000]
    methodology(
        "bench-http",
        {
            "large": f"{args.batches} x 1000-event batches, {large.event_bytes:.0f} B/event, "
            f"{1 - large.unique_events / large.sent_events:.1%} duplicates",
            "small": f"{len(small.bodies)} x 100-event batches",
            "single": f"{len(single_bodies)} single events",
            "meters": ", ".join(m["slug"] for m in METERS),
            "customers": "10,000 (Zipf)",
        },
        {
            "server": "meter serve (granian, 1 worker, ASGI), durability fsync",
            "client": "wrk -t1",
            "connections": args.connections,
            "loopback": "127.0.0.1",
        },
    )
    with tempfile.TemporaryDirectory(prefix="meter-bench-http-") as tmp:
        d = Path(tmp)
        lists = {
            "large": write_bodies(d, "large", large.bodies),
            "small": write_bodies(d, "small", small.bodies),
            "single": write_bodies(d, "single", single_bodies),
        }
        os.environ["METER_BENCH_ENDPOINTS"] = "1"
        server = Server(d / "data", admin_key=new_key())
        try:
            key = server.tenant_key("bench", ["ingest", "read", "admin"])
            with server.client(key) as c:
                for spec in METERS:
                    assert c.post("/v1/meters", json=spec).status_code == 201
            results = {
                "ceiling_discard": run_wrk(
                    server.url, "/bench/discard", key, lists["large"], 1000, args.connections, args.seconds
                ),
                "batch_1000": run_wrk(
                    server.url, "/v1/events", key, lists["large"], 1000, args.connections, args.seconds
                ),
                "batch_100": run_wrk(
                    server.url, "/v1/events", key, lists["small"], 100, args.connections, args.seconds
                ),
                "single": run_wrk(server.url, "/v1/events", key, lists["single"], 1, args.connections, args.seconds),
            }
        finally:
            server.stop()
    for name, r in results.items():
        print(
            f"  {name:>16}: {r['events_per_s']:>10,} events/s  {r['requests_per_s']:>8} req/s  "
            f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  errors {r['errors']}  client cpu {r['client_cpu_share']}  "
            f"re-sent bodies {r['bodies_sent_again']}"
        )
    main_run = results["batch_1000"]
    finish(
        "http",
        {
            "events_per_s": main_run["events_per_s"],
            "requests_per_s": main_run["requests_per_s"],
            "p50_ms": main_run["p50_ms"],
            "p99_ms": main_run["p99_ms"],
            "client_cpu_share": main_run["client_cpu_share"],
            "ceiling_discard_events_per_s": results["ceiling_discard"]["events_per_s"],
            "batch_100_events_per_s": results["batch_100"]["events_per_s"],
            "single_events_per_s": results["single"]["events_per_s"],
            "runs": results,
        },
    )


if __name__ == "__main__":
    main()
