"""bench-cluster: bench-http's 1000-event batches through a cluster on this one machine, beside one `meter serve`.

One box: this shows the cluster's overhead and its failover time, not scaling. Three `nats-server` nodes (R3 file
stream), two workers, one edge (granian, one worker); wrk posts pre-built bodies to the edge, and each answer waits
for the owning workers' outcomes (the edge's 200: applied, synced, exactly once). The peer measured in the same run is
one `meter serve` on the same bodies. Then a worker holding partitions is killed (SIGKILL) and the time until every
partition answers again is the takeover time.

The scaling model divides the measured CPU seconds of each stage (edge, workers, NATS) by the events they carried,
and the log's bytes by the events: the cores and the log bandwidth a given rate needs.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from _common import finish, methodology  # noqa: E402
from bench_http import run_wrk, write_bodies  # noqa: E402
from http_server import Server  # noqa: E402
from meter.catalog.keys import new_key  # noqa: E402
from meter_cluster import MeterCluster, post  # noqa: E402
from nats_cluster import NatsCluster  # noqa: E402
from workload import METERS, Workload  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU of every process in the process groups of `pids` (an edge's granian workers included)."""
    groups = {os.getpgid(p) for p in pids if _alive(p)}
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in groups:  # pgrp
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def nats_cpu(nats: NatsCluster) -> float:
    total = 0.0
    for node in nats.nodes:
        if node.proc is not None:
            fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def log_bytes(cluster: MeterCluster) -> int:
    import asyncio

    from meter.cluster.settings import STREAM, connect

    async def size() -> int:
        c = await connect(cluster.nats.url, "meter-bench")
        try:
            return int((await c.js.stream_info(STREAM)).state.bytes)
        finally:
            await c.close()

    return asyncio.run(size())


def model(per_core: dict[str, float], bytes_per_event: float, replicas: int, cores: int) -> dict[str, Any]:
    """Machines of `cores` cores for each stage at 1 M, 10 M and 100 M events/s, and the log's bandwidth."""
    out: dict[str, Any] = {}
    for rate in (1_000_000, 10_000_000, 100_000_000):
        machines = {stage: math.ceil(rate / (eps * cores)) for stage, eps in per_core.items()}
        out[f"{rate:,}"] = {
            "machines": machines,
            "log_MB_per_s_written": round(rate * bytes_per_event * replicas / 1e6, 1),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=1500, help="1000-event batches")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--cores-per-machine", type=int, default=16, help="for the scaling model")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `make bench-cluster` installs it (Debian package wrk)")
    work = Workload(args.batches)
    methodology(
        "bench-cluster",
        {
            "batches": f"{args.batches} x 1000-event batches, {work.event_bytes:.0f} B/event, "
            f"{1 - work.unique_events / work.sent_events:.1%} duplicates",
            "meters": ", ".join(m["slug"] for m in METERS),
        },
        {
            "cluster": f"3 nats-server nodes (R3 file stream), 2 workers, 1 edge; {args.partitions} partitions",
            "peer": "one meter serve (granian, 1 worker), durability fsync",
            "client": f"wrk -t1, {args.connections} connections, {args.seconds} s per run",
            "answer": "the edge answers once every part's outcome is known (applied and synced by its worker)",
        },
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="meter-bench-cluster-") as tmp:
        d = Path(tmp)
        bodies = write_bodies(d, "large", work.bodies)

        server = Server(d / "single", admin_key=new_key())
        try:
            key = server.tenant_key("bench", ["ingest", "read", "admin"])
            with server.client(key) as c:
                for spec in METERS:
                    assert c.post("/v1/meters", json=spec).status_code == 201
            results["single_node"] = run_wrk(
                server.url, "/v1/events", key, bodies, 1000, args.connections, args.seconds
            )
        finally:
            server.stop()

        with NatsCluster(d / "nats") as nats:
            cluster = MeterCluster(d, nats, partitions=args.partitions, lease_ttl=5.0, checkpoint_every=30.0)
            try:
                for name in ("w0", "w1"):
                    cluster.start_worker(name)
                url = cluster.start_edge("e0")
                key = cluster.key("bench", "ingest", "read", "admin")
                cluster.settled(balanced=True)
                for spec in METERS:
                    answer = post(url, key, "/v1/meters", spec)
                    assert answer.status_code == 201, answer.text
                pids = {n: p.proc.pid for n, p in [*cluster.workers.items(), *cluster.edges.items()] if p.proc}
                workers = [pids["w0"], pids["w1"]]
                edge0, workers0, nats0 = (
                    cpu_seconds([pids["e0"]]),
                    cpu_seconds([pids["w0"], pids["w1"]]),
                    nats_cpu(nats),
                )
                bytes0 = log_bytes(cluster)
                run = run_wrk(url, "/v1/events", key, bodies, 1000, args.connections, args.seconds)
                cluster.settled()
                events = run["events_per_s"] * args.seconds
                edge_s = cpu_seconds([pids["e0"]]) - edge0
                workers_s = cpu_seconds(workers) - workers0
                nats_s = nats_cpu(nats) - nats0
                bytes_per_event = (log_bytes(cluster) - bytes0) / max(events, 1)
                results["cluster"] = run

                # Takeover: SIGKILL a worker; every partition answers again once another restored and replayed it.
                killed = time.monotonic()
                cluster.workers["w0"].signal(signal.SIGKILL)
                cluster.settled()
                takeover_s = time.monotonic() - killed
            finally:
                cluster.close()

    per_core = {
        "edge": events / max(edge_s, 1e-9),
        "worker": events / max(workers_s, 1e-9),
        "nats": events / max(nats_s, 1e-9),
    }
    scaling = model(per_core, bytes_per_event, 3, args.cores_per_machine)
    for name, r in results.items():
        print(
            f"  {name:>12}: {r['events_per_s']:>10,} events/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
            f"errors {r['errors']}  client cpu {r['client_cpu_share']}"
        )
    print("  per core: " + ", ".join(f"{k} {v:,.0f} events/s" for k, v in per_core.items()))
    print(f"  log: {bytes_per_event:.0f} B/event stored once (x3 replicas)")
    print(f"  takeover after SIGKILL of a worker (lease TTL 5 s): {takeover_s:.1f} s")
    for rate, m in scaling.items():
        print(f"  {rate} events/s on {args.cores_per_machine}-core machines: {m}")
    finish(
        "cluster",
        {
            "events_per_s": results["cluster"]["events_per_s"],
            "p50_ms": results["cluster"]["p50_ms"],
            "p99_ms": results["cluster"]["p99_ms"],
            "single_node_events_per_s": results["single_node"]["events_per_s"],
            "ratio_to_single_node": round(
                results["cluster"]["events_per_s"] / max(results["single_node"]["events_per_s"], 1), 3
            ),
            "takeover_s": round(takeover_s, 2),
            "events_per_core_s": {k: round(v) for k, v in per_core.items()},
            "log_bytes_per_event": round(bytes_per_event, 1),
            "scaling": scaling,
            "client_cpu_share": results["cluster"]["client_cpu_share"],
            "runs": results,
        },
    )


if __name__ == "__main__":
    main()
