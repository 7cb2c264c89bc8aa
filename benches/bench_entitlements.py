"""bench-entitlements: entitlement checks over HTTP while ingesting at 70% of the maximum, and the live state's lag.

1. ``meter serve`` (granian, fsync) with one tenant: the workload's five meters (workload.py: 10,000 customers drawn
   from a Zipf law) and every customer subscribed to a plan with a per-unit price on input tokens, a credit, and a
   metered entitlement ``tokens`` on input tokens (limit 10^15 per cycle, so access stays on and every check does the
   same work).
2. ``max``: wrk posts 1000-event batches closed-loop: the maximum ingest rate.
3. ``paced``: the same, each connection waiting between its requests so as to offer about 70% of it, alone: the
   baseline of what ingest achieves at that pace.
4. Checks alone (no ingest): closed-loop (``checks_max``, 8 connections: the most the server answers) and paced at
   about 10,000 per second (``checks_alone``): what the check path costs by itself.
5. ``mixed``: the paced ingest again, plus a second wrk sending entitlement checks (GET .../entitlements/tokens of a
   random customer of the 10,000) paced at about 10,000 per second, plus the lag probe: a thread that ingests one
   event for customer ``probe`` every 50 ms and polls its entitlement until the usage shows it (acknowledgement to
   visible, at 2 ms resolution). Ingest lost = 1 - mixed / paced.
6. ``batch``: the same with the batch form a gateway uses instead (``POST /v1/entitlements/check``, ``--batch``
   checks a request, 4 connections paced to about 10,000 checks per second): its request latency and the lag.
7. In process, after the server stopped: one full refresh of the 10,000 customers, and the cost of one
   ``Tracker.check`` (a dictionary lookup), from Python.

Before each phase the live state is let catch up (a probe event shows), so that no phase measures the previous one's
backlog. Goals (the issue): check p99 <= 2 ms at 10,000/s, lag p99 <= 1 s, ingest lost <= 10%. Both wrk processes
and the probe run on the same 2 cores as the server: their CPU share is reported.
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
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from _common import finish, methodology, percentile  # noqa: E402
from bench_http import write_bodies  # noqa: E402
from http_server import Server  # noqa: E402
from meter.catalog.keys import new_key  # noqa: E402
from workload import CUSTOMERS, METERS, Workload  # noqa: E402

HERE = Path(__file__).parent
FEATURE = "tokens"
#: Connections sending the batch form (each paced to its share of --checks-per-s).
BATCH_CONNECTIONS = 4


def wrk(script: Path, url: str, env: dict[str, str], connections: int, seconds: int) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script), url],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = json.loads(next(x for x in out.splitlines() if x.startswith("WRK "))[4:])
    elapsed = r["duration_us"] / 1e6
    return {
        "requests_per_s": round(r["requests"] / elapsed, 1),
        "p50_ms": round(r["p50_us"] / 1000, 3),
        "p99_ms": round(r["p99_us"] / 1000, 3),
        "errors": r["errors_non2xx"] + r["socket_errors"],
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
        "seconds": round(elapsed, 2),
    }


def set_up(c: httpx.Client, start: datetime) -> None:
    """The meters, a plan with the entitlement, and 10,000 customers (and the probe) subscribed to it."""
    for spec in METERS:
        assert c.post("/v1/meters", json=spec).status_code == 201
    price = {"id": "tok", "currency": "USD", "model": "per_unit", "meter": "input-tokens", "unit_price": "0.000001"}
    plan = {"id": "pro", "name": "Pro", "versions": [{"effective_from": start.isoformat(), "prices": [price]}]}
    assert c.post("/v1/plans", json=plan).status_code == 201, "plan"
    ents = [{"feature": FEATURE, "kind": "metered", "meter": "input-tokens", "limit": "1000000000000000"}]
    r = c.put("/v1/plans/pro/entitlements", json=ents)
    assert r.status_code == 200, r.text
    credit = {
        "id": "promo",
        "amount": "1000.00",
        "start": start.isoformat(),
        "end": (start + timedelta(days=400)).isoformat(),
    }
    for customer in [f"cust-{i:05d}" for i in range(CUSTOMERS)] + ["probe"]:
        r = c.post("/v1/customers", json={"id": customer, "name": customer, "currency": "USD"})
        assert r.status_code < 300, r.text
        sub = {"id": f"s-{customer}", "customer": customer, "plan": "pro", "version": 1, "start": start.isoformat()}
        r = c.post("/v1/subscriptions", json={**sub, "credits": [credit]})
        assert r.status_code < 300, r.text


def settle(url: str, key: str) -> float:
    """Waits until the live state has caught up: an event for ``probe`` shows in its entitlement; returns the seconds.

    Each phase starts after the refresh work the previous one left (10,000 customers recomputed after the set-up, a
    backlog after an ingest run), so that one phase's figures are not another's leftovers.
    """
    probe = Probe(url, key)
    started = time.monotonic()
    probe.once()
    probe.http.close()
    return time.monotonic() - started


class Probe(threading.Thread):
    """Ingests one event for ``probe`` every ``every`` s; measures acknowledgement -> visible in the entitlement."""

    def __init__(self, url: str, key: str, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self.every, self.stopping, self.sent = every, threading.Event(), 0
        self.lags_ms: list[float] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            self.lags_ms.append(self.once() * 1000)
            self.stopping.wait(self.every)

    def once(self) -> float:
        """Ingests one event; returns the seconds from its acknowledgement until the entitlement's usage shows it."""
        before = self._usage()
        self.sent += 1
        event = {
            "specversion": "1.0",
            "id": f"probe-{time.time_ns()}",
            "source": "probe",
            "type": "llm.request",
            "subject": "probe",
            "data": {"input_tokens": 1, "output_tokens": 1, "model": "gpt-4o", "region": "eu-west", "tier": "pro"},
        }
        r = self.http.post("/v1/events", json=[event])
        acknowledged = time.monotonic()
        assert r.status_code == 200, r.text
        while self._usage() < before + 1:
            if time.monotonic() - acknowledged > 120:
                raise SystemExit("the probe's event did not show in 120 s")
            time.sleep(0.002)
        return time.monotonic() - acknowledged

    def _usage(self) -> Decimal:
        usage = self.http.get(f"/v1/customers/probe/entitlements/{FEATURE}").json().get("usage")
        return Decimal(usage) if usage is not None else Decimal(0)


def alongside(
    url: str,
    key: str,
    post: Path,
    ingest_env: dict[str, str],
    check_script: Path,
    check_env: dict[str, str],
    args: argparse.Namespace,
    check_connections: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
    """The paced ingest, the checks and the lag probe at once: (ingest's figures, the checks', the lags in ms)."""
    probe = Probe(url, key)
    results: dict[str, dict[str, Any]] = {}

    def checks() -> None:
        connections = check_connections or args.check_connections
        results["checks"] = wrk(check_script, url, check_env, connections, args.seconds)

    checker = threading.Thread(target=checks)
    probe.start()
    checker.start()
    ingest = wrk(post, url, ingest_env, args.connections, args.seconds)
    checker.join()
    probe.stopping.set()
    probe.join()
    return ingest, results["checks"], sorted(probe.lags_ms)


def in_process(data: Path) -> dict[str, Any]:
    """A full refresh of every customer, then the cost of a check, from Python with no HTTP."""
    from meter.live.tracker import Tracker
    from meter.services import OpenFailed, Stores

    for _ in range(300):  # the server's worker lets go of the stores a moment after the server stopped
        try:
            stores = Stores.open(data)
            break
        except OpenFailed:
            time.sleep(0.1)
    with stores:
        tracker = Tracker(stores.engine, stores.billing, stores.invoices, data / "export", lambda: ["bench"])
        started = time.perf_counter()
        refreshed = tracker.refresh()
        refresh_s = time.perf_counter() - started
        names = [f"cust-{i:05d}" for i in range(CUSTOMERS)]
        n = 200_000
        started = time.perf_counter()
        for i in range(n):
            tracker.check("bench", names[i % CUSTOMERS], FEATURE)
        check_us = (time.perf_counter() - started) / n * 1e6
    return {"full_refresh_s": round(refresh_s, 2), "customers_refreshed": refreshed, "check_us": round(check_us, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=2000, help="distinct 1000-event bodies (re-sent in turn)")
    ap.add_argument("--seconds", type=int, default=10, help="length of each timed run")
    ap.add_argument("--connections", type=int, default=8, help="ingest connections")
    ap.add_argument("--check-connections", type=int, default=24)
    ap.add_argument("--checks-per-s", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=100, help="checks per request of the batch form")
    ap.add_argument("--share", type=float, default=0.7, help="share of the maximum ingest rate offered")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `make bench-entitlements` installs it (Debian package wrk)")
    workload = Workload(args.batches)
    methodology(
        "bench-entitlements",
        {
            "ingest": f"{args.batches} x 1000-event batches of workload.py, re-sent in turn (a re-sent body is all "
            "duplicates: the engine checks and skips each)",
            "customers": f"{CUSTOMERS:,} (Zipf) + the probe, each subscribed, with a credit and a metered entitlement",
            "checks": f"GET /v1/customers/<random>/entitlements/{FEATURE}, about {args.checks_per_s:,}/s; then "
            f"POST /v1/entitlements/check with {args.batch} random customers a request, as many checks a second",
            "probe": "one event every 50 ms, then polling its entitlement every 2 ms until the usage shows it",
        },
        {
            "server": "meter serve (granian, 1 worker), durability fsync, live state refreshed every 0.2 s",
            "ingest client": f"wrk -t1 -c{args.connections}",
            "check client": f"wrk -t1 -c{args.check_connections}, paced (batch form: -c{BATCH_CONNECTIONS})",
            "seconds per run": args.seconds,
            "share of max offered": args.share,
        },
    )
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory(prefix="meter-bench-ent-") as tmp:
        d = Path(tmp)
        bodies = write_bodies(d, "large", workload.bodies)
        server = Server(d / "data", admin_key=new_key())
        try:
            key = server.tenant_key("bench", ["ingest", "read", "admin"])
            print("setting up 10,000 customers ...", flush=True)
            settled: list[float] = []  # seconds each phase waited for the live state to catch up
            with server.client(key) as c:
                set_up(c, start)
            ingest_env = {"BODIES_LIST": str(bodies), "METER_KEY": key, "WRK_PATH": "/v1/events", "WRK_THREADS": "1"}
            post = HERE / "post_bodies.lua"
            settled.append(settle(server.url, key))
            print("max ingest ...", flush=True)
            top = wrk(post, server.url, {**ingest_env, "DELAY_MS": "0"}, args.connections, args.seconds)
            # Each connection's cycle at the maximum is connections / rate; waiting (1/share - 1) of it offers `share`.
            cycle_ms = args.connections / top["requests_per_s"] * 1000
            pause = max(1, round(cycle_ms * (1 / args.share - 1)))
            settled.append(settle(server.url, key))
            print(f"paced ingest alone (delay {pause} ms) ...", flush=True)
            paced = wrk(post, server.url, {**ingest_env, "DELAY_MS": str(pause)}, args.connections, args.seconds)
            check_pause = max(1, round(args.check_connections * 1000 / args.checks_per_s - 0.3))
            check_env = {
                "METER_KEY": key,
                "CUSTOMERS": str(CUSTOMERS),
                "FEATURE": FEATURE,
                "DELAY_MS": str(check_pause),
            }
            check_script = HERE / "check_entitlements.lua"
            settled.append(settle(server.url, key))
            print("checks alone, closed loop (the most the server answers) ...", flush=True)
            checks_max = wrk(check_script, server.url, {**check_env, "DELAY_MS": "0"}, 8, args.seconds)
            settled.append(settle(server.url, key))
            print("checks alone, paced ...", flush=True)
            checks_alone = wrk(check_script, server.url, check_env, args.check_connections, args.seconds)
            settled.append(settle(server.url, key))
            ingest_paced = {**ingest_env, "DELAY_MS": str(pause)}
            print("paced ingest + checks + probe ...", flush=True)
            mixed, checked, lags = alongside(server.url, key, post, ingest_paced, check_script, check_env, args)
            settled.append(settle(server.url, key))
            print(f"paced ingest + batch checks ({args.batch} a request) + probe ...", flush=True)
            batch_pause = max(1, round(BATCH_CONNECTIONS * 1000 * args.batch / args.checks_per_s) - 2)
            batch_env = {**check_env, "BATCH": str(args.batch), "DELAY_MS": str(batch_pause)}
            mixed_batch, batched, batch_lags = alongside(
                server.url, key, post, ingest_paced, check_script, batch_env, args, BATCH_CONNECTIONS
            )
        finally:
            server.stop()
        print(f"  lag (ms): {lags}, with batch checks: {batch_lags}", flush=True)
        local = in_process(d / "data")
    events = {name: round(r["requests_per_s"] * 1000) for name, r in (("max", top), ("paced", paced), ("mixed", mixed))}
    lost = 1 - events["mixed"] / events["paced"]
    runs = (
        ("max ingest", top),
        ("paced ingest", paced),
        ("mixed ingest", mixed),
        ("checks max", checks_max),
        ("checks alone", checks_alone),
        ("checks", checked),
        ("batch ingest", mixed_batch),
        ("batch checks", batched),
    )
    for name, r in runs:
        print(
            f"  {name:>13}: {r['requests_per_s']:>9} req/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
            f"errors {r['errors']}"
        )
    print(f"  lag: {len(lags)} probes, p50 {percentile(lags, 50):.1f} ms, p99 {percentile(lags, 99):.1f} ms")
    print(f"  in process: {local}")
    finish(
        "entitlements",
        {
            "check_p50_ms": checked["p50_ms"],
            "check_p99_ms": checked["p99_ms"],
            "checks_per_s": checked["requests_per_s"],
            "check_errors": checked["errors"],
            "settle_s": [round(x, 1) for x in settled],
            "batch_checks": {
                "checks_per_request": args.batch,
                "checks_per_s": round(batched["requests_per_s"] * args.batch),
                "request_p50_ms": batched["p50_ms"],
                "request_p99_ms": batched["p99_ms"],
                "errors": batched["errors"],
                "ingest_events_per_s": round(mixed_batch["requests_per_s"] * 1000),
                "lag_p50_ms": round(percentile(batch_lags, 50), 1),
                "lag_p99_ms": round(percentile(batch_lags, 99), 1),
            },
            "checks_alone": {k: checks_alone[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "errors")},
            "checks_max": {k: checks_max[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "errors")},
            "lag_p50_ms": round(percentile(lags, 50), 1),
            "lag_p99_ms": round(percentile(lags, 99), 1),
            "lag_samples": len(lags),
            "ingest_max_events_per_s": events["max"],
            "ingest_paced_events_per_s": events["paced"],
            "ingest_mixed_events_per_s": events["mixed"],
            "offered_share_of_max": round(events["paced"] / events["max"], 3),
            "ingest_lost": round(lost, 3),
            "client_cpu_s": {"ingest": mixed["cpu_s"], "checks": checked["cpu_s"]},
            "in_process": local,
            "goals": {"check_p99_ms": 2, "lag_p99_ms": 1000, "ingest_lost": 0.1},
        },
    )


if __name__ == "__main__":
    main()
