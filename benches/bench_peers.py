"""bench-peers: meter against what users would build instead (PostgreSQL, DuckDB, ClickHouse via chdb).

The same workloads, in one run, driven directly (in process) and over HTTP (each behind the same granian + msgspec
front).

Workloads, generated once from a seed and pre-encoded: W1 1000-event batches (about 230-byte events, 10k Zipf
customers, 3 dimensions, 5% duplicates), W2 100-event batches, W5 a replay of W1 (100% duplicates), and usage
queries (one customer, 30 days, grouped by model) run on another thread while W1 is ingested.

Each system's direct run happens in a child process of its own, so that its CPU time and peak memory are its own.
Correctness: after the direct run, every customer's totals must equal what the generator says; a system that
miscounts is reported with by how much. Ceilings from the same run: meter's parser alone, msgspec decoding alone
(what the peers' front does before storage), and receive-and-discard over HTTP.

One system's failure never loses the others' figures: it is recorded as that system's error (direct or HTTP) and the
run goes on; each system's figures are written to results/peers.json (with "complete": false) as soon as they exist.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from _common import RESULTS, finish, memory_kib, methodology, percentile  # noqa: E402
from bench_http import run_wrk, write_bodies  # noqa: E402
from http_server import Server, free_port  # noqa: E402
from meter import _core  # noqa: E402
from meter.catalog.keys import new_key  # noqa: E402
from peers import NAMES, load  # noqa: E402
from peers.base import Peer, decode_batch  # noqa: E402
from peers.meter_peer import METERS, TENANT  # noqa: E402
from workload import CUSTOMERS, Workload  # noqa: E402


def query_window() -> tuple[datetime, datetime]:
    """30 days up to the next whole minute: the usage-query workload's range."""
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    return end - timedelta(days=30), end


class Queries(threading.Thread):
    """Runs usage queries back to back while ingest is under way, recording each one's latency."""

    def __init__(self, ask: Any) -> None:
        super().__init__(daemon=True)
        self.ask, self.latencies, self.stop, self.errors = ask, [], threading.Event(), 0

    def run(self) -> None:
        rng = random.Random(5)
        start, end = query_window()
        while not self.stop.is_set():
            customer = f"cust-{min(int(rng.paretovariate(1.1)) - 1, CUSTOMERS - 1):05d}"
            began = time.perf_counter()
            try:
                self.ask(customer, start, end)
                self.latencies.append(time.perf_counter() - began)
            except Exception:  # noqa: BLE001 - counted and reported, never hidden
                self.errors += 1
            self.stop.wait(0.05)

    def figures(self) -> dict[str, Any]:
        self.stop.set()
        self.join()
        lat = sorted(self.latencies)
        return {
            "queries": len(lat),
            "query_p50_ms": round(percentile(lat, 50) * 1000, 2),
            "query_p99_ms": round(percentile(lat, 99) * 1000, 2),
            "query_errors": self.errors,
        }


def cpu_seconds(pids: list[int]) -> float:
    """This process's CPU time plus that of the given server processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except OSError:
            pass
    return total


def peak_rss_mib(pids: list[int], baseline_kib: int) -> float:
    """Peak memory of this process above `baseline_kib` (the pre-loaded bodies), plus the servers' peaks."""
    kib = memory_kib("self", "VmHWM") - baseline_kib + sum(memory_kib(pid, "VmHWM") for pid in pids)
    return round(kib / 1024, 1)


def timed_ingest(peer: Peer, bodies: list[bytes], seconds: float) -> dict[str, Any]:
    """Sends bodies in order, one at a time, until they run out or `seconds` pass."""
    latencies, events, accepted, duplicates = [], 0, 0, 0
    started = time.perf_counter()
    for body in bodies:
        began = time.perf_counter()
        a, d = peer.ingest(body)
        latencies.append(time.perf_counter() - began)
        events, accepted, duplicates = events + a + d, accepted + a, duplicates + d
        if began - started > seconds:
            break
    elapsed = time.perf_counter() - started
    lat = sorted(latencies)
    return {
        "bodies": len(latencies),
        "events": events,
        "accepted": accepted,
        "duplicates": duplicates,
        "seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed),
        "ack_p50_ms": round(percentile(lat, 50) * 1000, 3),
        "ack_p99_ms": round(percentile(lat, 99) * 1000, 3),
    }


class Failed(RuntimeError):
    """One system's run (direct or over HTTP) failed: recorded as its error, the other systems still run."""


def direct(name: str, lists: dict[str, Path], seconds: float) -> dict[str, Any]:
    """One system in this (child) process: W1 with queries, W5, W2; then its totals, disk, CPU and memory.

    Disk is measured twice, each with the walk that tolerates files vanishing under it: while the system runs (as
    before: WALs and unmerged parts included) and once it has stopped (settled: memtables flushed, merges ended).
    """
    bodies = {k: [Path(p).read_bytes() for p in v.read_text().split()] for k, v in lists.items()}
    baseline_kib = memory_kib("self", "VmRSS")
    peer = load(name)
    with tempfile.TemporaryDirectory(prefix=f"peer-{name}-") as tmp:
        peer.open(Path(tmp))
        try:
            cpu_before = cpu_seconds(peer.server_pids())
            queries = Queries(peer.usage)
            queries.start()
            w1 = timed_ingest(peer, bodies["w1"], seconds)
            w1.update(queries.figures())
            # Server processes started since (a PostgreSQL backend per connection) count in full.
            w1["cpu_s_per_million"] = round((cpu_seconds(peer.server_pids()) - cpu_before) / w1["events"] * 1e6, 2)
            w5 = timed_ingest(peer, bodies["w1"][: w1["bodies"]], seconds / 2)
            w2 = timed_ingest(peer, bodies["w2"], seconds / 2)
            totals = peer.totals()
            result = {
                "system": name,
                "dedup": peer.dedup,
                "durable": peer.durable,
                "settings": peer.settings(),
                "w1": w1,
                "w5": w5,
                "w2": w2,
                "totals": totals,
                "duplicates_seen": peer.duplicates_seen(),
                "disk_bytes": peer.disk_bytes(),
                "peak_rss_mib": peak_rss_mib(peer.server_pids(), baseline_kib),
            }
        finally:
            peer.close()
        result["disk_bytes_closed"] = peer.disk_bytes()
        return result


def run_direct(name: str, lists: dict[str, Path], seconds: float) -> dict[str, Any]:
    args = [sys.executable, __file__, "--direct", name, "--seconds", str(seconds)]
    args += [f"--list-{k}={v}" for k, v in lists.items()]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise Failed(f"the direct run exited with {out.returncode}:\n{out.stderr[-3000:]}")
    try:
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as e:
        raise Failed(f"the direct run printed no figures ({e}):\n{out.stderr[-3000:]}") from e
    return result


def correctness(result: dict[str, Any], w1: Workload, w2: Workload) -> dict[str, Any]:
    """Compares the system's per-customer totals with the generator's for the bodies it was sent."""
    want = w1.expected(result["w1"]["bodies"])
    for customer, (tokens, requests) in w2.expected(result["w2"]["bodies"]).items():
        t, r = want.get(customer, (0, 0))
        want[customer] = (t + tokens, r + requests)
    got = {c: tuple(v) for c, v in result.pop("totals").items()}
    wrong = [c for c in want.keys() | got.keys() if got.get(c, (0, 0)) != want.get(c, (0, 0))]
    return {
        "customers": len(want),
        "customers_miscounted": len(wrong),
        "tokens_off_by": sum(got.get(c, (0, 0))[0] - want.get(c, (0, 0))[0] for c in wrong),
        "requests_off_by": sum(got.get(c, (0, 0))[1] - want.get(c, (0, 0))[1] for c in wrong),
        "exact": not wrong,
    }


class QueryClient:
    """Usage queries over HTTP: meter's API, or the peers' front."""

    def __init__(self, url: str, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http, self.meter = httpx.Client(base_url=url, headers=headers, timeout=60), key is not None

    def __call__(self, customer: str, start: datetime, end: datetime) -> None:
        if self.meter:
            params = {"from": start.isoformat(), "to": end.isoformat(), "subject": customer, "group_by": "model"}
            r = self.http.get("/v1/meters/input-tokens/usage", params=params)
        else:
            r = self.http.get("/usage", params={"customer": customer, "from": start.isoformat(), "to": end.isoformat()})
        r.raise_for_status()


def start_front(name: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "peers" / "front.py"), name, str(data_dir), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise Failed(f"{name}: the HTTP front exited with {proc.returncode}")
        time.sleep(0.2)
    raise Failed(f"{name}: the HTTP front did not start")


def stop_front(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


def over_http(name: str, work: Path, lists: dict[str, Path], seconds: int, connections: int) -> dict[str, Any]:
    """W1 with usage queries on the side, then W2, each with wrk against the system's HTTP front."""
    data = work / f"http-{name}"
    if name == "meter":
        server = Server(data, admin_key=new_key())
        key = server.tenant_key(TENANT, ["ingest", "read", "admin"])
        with server.client(key) as c:
            for spec in METERS:
                c.post("/v1/meters", json=spec).raise_for_status()
        url, stop = server.url, server.stop
        query_key: str | None = key
    else:
        proc, url = start_front(name, data)
        key, query_key = "unused", None

        def stop() -> None:
            stop_front(proc)

    try:
        queries = Queries(QueryClient(url, query_key))
        queries.start()
        w1 = run_wrk(url, "/v1/events", key, lists["w1"], 1000, connections, seconds)
        w1.update(queries.figures())
        w2 = run_wrk(url, "/v1/events", key, lists["w2"], 100, connections, seconds)
    finally:
        stop()
    failed = w1["errors"] + w2["errors"] + w1["query_errors"]
    if failed:
        raise Failed(f"{failed} requests failed over HTTP; its figures would be meaningless")
    return {"w1": w1, "w2": w2}


def ceilings(w1: Workload, work: Path, lists: dict[str, Path], seconds: int, connections: int) -> dict[str, Any]:
    sample = w1.bodies[:300]
    events = sum(len(json.loads(b)) for b in sample)

    def rate(parse: Any) -> int:
        started = time.perf_counter()
        for body in sample:
            parse(body)
        return round(events / (time.perf_counter() - started))

    os.environ["METER_BENCH_ENDPOINTS"] = "1"
    server = Server(work / "discard", admin_key=new_key())
    try:
        key = server.tenant_key(TENANT, ["ingest"])
        discard = run_wrk(server.url, "/bench/discard", key, lists["w1"], 1000, connections, seconds)
    finally:
        server.stop()
    return {
        "meter_parse_only_events_per_s": rate(_core.parse_only),
        "msgspec_decode_events_per_s": rate(decode_batch),
        "http_discard_events_per_s": discard["events_per_s"],
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """The results table; a part that failed reads `failed` (its error follows the table), one not run `-`."""
    head = (
        "| system | dedup | durable | W1 direct ev/s | W1 p50/p99 ms | W1 HTTP ev/s | HTTP p50/p99 ms | W2 direct ev/s "
        "| W2 HTTP ev/s | W5 dup replay ev/s | query p50/p99 ms (direct, HTTP) | disk B/unique event | peak RSS MiB "
        "| CPU s per M events | exact |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    notes = []
    for name, r in results.items():
        errors = r.get("errors", {})
        missing = {phase: "failed" if phase in errors else "-" for phase in ("direct", "http")}
        d, h, c = r.get("direct"), r.get("http"), r.get("correctness")
        if d is not None and c is not None:
            exact = (
                "yes"
                if c["exact"]
                else (
                    f"no: {c['customers_miscounted']} customers, {c['requests_off_by']:+,} "
                    f"requests, {c['tokens_off_by']:+,} tokens"
                )
            )
            direct_cells = [
                d["dedup"],
                "yes" if d["durable"] else "no",
                f"{d['w1']['events_per_s']:,}",
                f"{d['w1']['ack_p50_ms']:.1f} / {d['w1']['ack_p99_ms']:.1f}",
                f"{d['w2']['events_per_s']:,}",
                f"{d['w5']['events_per_s']:,}",
                f"{d['w1']['query_p50_ms']:.1f} / {d['w1']['query_p99_ms']:.1f}",
                f"{r['disk_bytes_per_unique_event']:.0f}",
                f"{d['peak_rss_mib']:,.0f}",
                f"{d['w1']['cpu_s_per_million']:.1f}",
                exact,
            ]
        else:
            direct_cells = [missing["direct"]] * 11
        if h is not None:
            http_cells = [
                f"{h['w1']['events_per_s']:,}",
                f"{h['w1']['p50_ms']:.1f} / {h['w1']['p99_ms']:.1f}",
                f"{h['w2']['events_per_s']:,}",
                f"{h['w1']['query_p50_ms']:.1f} / {h['w1']['query_p99_ms']:.1f}",
            ]
        else:
            http_cells = [missing["http"]] * 4
        (dedup, durable, w1, w1_ack, w2, w5, query, disk, rss, cpu, exact) = direct_cells
        (h_w1, h_ack, h_w2, h_query) = http_cells
        lines.append(
            f"| {name} | {dedup} | {durable} | {w1} | {w1_ack} | {h_w1} | {h_ack} | {w2} | {h_w2} | {w5} "
            f"| {query}, {h_query} | {disk} | {rss} | {cpu} | {exact} |"
        )
        for phase, error in errors.items():
            last = error.strip().splitlines()[-1] if error.strip() else "(no message)"
            notes.append(f"{name}, {phase}: failed: {last}")
    return "\n".join(lines + ([""] + notes if notes else []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--systems", default=",".join(NAMES), help=f"comma-separated, from {', '.join(NAMES)}")
    ap.add_argument("--batches", type=int, default=3000, help="W1 1000-event batches (W2 has as many events)")
    ap.add_argument("--seconds", type=int, default=8, help="longest W1 phase; W2 and W5 get half")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--direct", help=argparse.SUPPRESS)
    ap.add_argument("--list-w1", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--list-w2", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.direct:
        print(json.dumps(direct(args.direct, {"w1": args.list_w1, "w2": args.list_w2}, args.seconds)))
        return

    systems = args.systems.split(",")
    print(f"generating workloads ({args.batches} x 1000 and {args.batches * 10} x 100 events) ...", flush=True)
    w1 = Workload(args.batches)
    w2 = Workload(args.batches * 10, batch_size=100, seed=7)
    with tempfile.TemporaryDirectory(prefix="meter-bench-peers-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # PostgreSQL runs as another user and must reach its data directory inside
        lists = {"w1": write_bodies(work, "w1", w1.bodies), "w2": write_bodies(work, "w2", w2.bodies)}
        results: dict[str, dict[str, Any]] = {}
        settings: dict[str, Any] = {}
        for name in systems:
            r = results[name] = {}
            print(f"{name}: direct ...", flush=True)
            if attempt(r, "direct", run_direct, name, lists, args.seconds):
                d = r["direct"]
                settings[name] = d.pop("settings")
                r["correctness"] = correctness(d, w1, w2)
                r["disk_bytes_per_unique_event"] = d["disk_bytes"] / max(1, d["w1"]["accepted"] + d["w2"]["accepted"])
                print(
                    f"{name}: direct: W1 {d['w1']['events_per_s']:,} events/s, exact: {r['correctness']['exact']}",
                    flush=True,
                )
            keep(results, None)
            print(f"{name}: over HTTP ...", flush=True)
            if attempt(r, "http", over_http, name, work, lists, max(2, args.seconds // 2), args.connections):
                print(f"{name}: HTTP: W1 {r['http']['w1']['events_per_s']:,} events/s", flush=True)
            keep(results, None)
        print("ceilings ...", flush=True)
        ceiling: dict[str, Any] = {}
        if attempt(ceiling, "figures", ceilings, w1, work, lists, max(2, args.seconds // 2), args.connections):
            ceiling = ceiling["figures"]
        keep(results, ceiling)

    methodology(
        "bench-peers",
        {
            "W1": f"{args.batches} x 1000-event batches, {w1.event_bytes:.0f} B/event, "
            f"{1 - w1.unique_events / w1.sent_events:.1%} duplicates, 10k Zipf customers, 3 dimensions",
            "W2": f"{len(w2.bodies)} x 100-event batches",
            "W5": "W1's bodies sent again (100% duplicates)",
            "queries": "one customer's input tokens over 30 days by model, back to back (50 ms apart) during W1",
            "rollup": "input tokens, output tokens, requests per customer, minute, model, region, tier",
        },
        {
            "direct": f"one thread, each body in order, up to {args.seconds} s (W2, W5: half); "
            "a child process per system",
            "http": f"granian + msgspec front (meter: meter serve), wrk -t1 -c{args.connections}, "
            f"{max(2, args.seconds // 2)} s per workload",
            "disk": "data directory while the system runs (disk_bytes; disk_bytes_closed: after it stopped)",
            **{f"{name}": ", ".join(f"{k}={v}" for k, v in s.items()) for name, s in settings.items()},
        },
    )
    md = table(results)
    if "errors" in ceiling:
        md += f"\n\nCeilings failed: {ceiling['errors']['figures'].strip().splitlines()[-1]}"
    else:
        md += (
            f"\n\nCeilings in the same run: meter's parser alone {ceiling['meter_parse_only_events_per_s']:,} "
            f"events/s, msgspec decoding alone {ceiling['msgspec_decode_events_per_s']:,} events/s, "
            f"receive-and-discard over HTTP {ceiling['http_discard_events_per_s']:,} events/s."
        )
    print(md)
    figures: dict[str, Any] = {"systems": results, "ceilings": ceiling, "complete": True}
    figures.update(versus_best(results))
    print(f"ceilings: {ceiling}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peers.md").write_text(md + "\n")
    finish("peers", figures)


def attempt(into: dict[str, Any], part: str, run: Callable[..., dict[str, Any]], *args: Any) -> bool:
    """Runs one part of one system's run: its figures go to `into[part]`, or its failure to `into["errors"][part]`.

    Any failure counts, SystemExit included (a helper that gives up on a missing tool): the other systems still
    run. Only an interrupt (Ctrl-C) ends the whole run.
    """
    try:
        into[part] = run(*args)
        return True
    except (Exception, SystemExit) as e:  # noqa: BLE001 - recorded as this system's error and printed
        message = str(e) if isinstance(e, Failed) else f"{type(e).__name__}: {e}"
        into.setdefault("errors", {})[part] = message
        print(f"  failed ({part}): {message}", flush=True)
        return False


def keep(results: dict[str, dict[str, Any]], ceiling: dict[str, Any] | None) -> None:
    """Writes the figures so far to results/peers.json, so that a later failure (or a kill) cannot lose them."""
    RESULTS.mkdir(exist_ok=True)
    partial = {"systems": results, "ceilings": ceiling, "complete": False}
    (RESULTS / "peers.json").write_text(json.dumps(partial, sort_keys=True) + "\n")


def versus_best(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """meter's W1 rate over the best durable, exact peer's, directly and over HTTP (each where both have figures)."""
    peers = {
        n: r
        for n, r in results.items()
        if n != "meter" and "direct" in r and r["direct"]["durable"] and r["correctness"]["exact"]
    }
    out: dict[str, Any] = {}
    meter = results.get("meter", {})
    if "direct" not in meter or not peers:
        return out
    best_name = max(peers, key=lambda n: peers[n]["direct"]["w1"]["events_per_s"])
    best = peers[best_name]
    out["best_durable_exact_peer"] = best_name
    out["meter_vs_best_w1_direct"] = round(
        meter["direct"]["w1"]["events_per_s"] / best["direct"]["w1"]["events_per_s"], 1
    )
    line = f"meter / {best_name} (best durable, exact peer) on W1: {out['meter_vs_best_w1_direct']}x direct"
    if "http" in meter and "http" in best:
        out["meter_vs_best_w1_http"] = round(
            meter["http"]["w1"]["events_per_s"] / best["http"]["w1"]["events_per_s"], 1
        )
        line += f", {out['meter_vs_best_w1_http']}x over HTTP"
    print(line)
    return out


if __name__ == "__main__":
    main()
