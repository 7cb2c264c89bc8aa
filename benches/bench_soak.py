"""bench-soak: ingest at 80% of the measured maximum for 30 minutes (or 2 h); memory, throughput and disk stay flat.

RSS, disk, events/s and ack p99 are sampled every 10 s; the figures are least-squares slopes over the last two
thirds, and the restart (open) time after the run.

The engine runs in a child process (its RSS and CPU are its own), driven through `meter.Engine` in that process with the
bench-core workload: 1000-event batches, fsync, 10k Zipf customers, three dimensions, five meters, 5% duplicates (half
as whole batches re-sent up to half a window later, half as single events of the previous batch re-sent inside the
next). First the engine ingests at full speed until the store holds a window of data and has expired some (the rate of
that phase's last third is the maximum it sustains), then the run paces batches at a fraction of it. Event times lie
near now, and the windows (dedup, back-dating, retention, minute aggregates) are short, so that a steady state comes
within the first quarter of the run; the settings the engine does not accept (yet) are listed as not in effect. The
export runs in the engine's process as the server's scheduler runs it (`meter.lake.events.export_events` every
`--export-every-s`), since retention drops only exported events; its Parquet files are deleted once written (a warehouse
would take them), so that the data directory alone is measured. After the run the data directory is reopened in a fresh
process to time the restart.

The sender builds each body from a pre-encoded template, joining its pieces around placeholders (the end of each id
and the time), so a fresh batch costs two joins (about 0.15 ms), not a JSON encoding.
"""

from __future__ import annotations

import argparse
import bisect
import inspect
import itertools
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, dir_bytes, finish, memory_kib, methodology, percentile  # noqa: E402
from workload import CUSTOMERS, METERS, Workload, zipf_weights  # noqa: E402

TENANT = "bench"
BATCH = 1000
#: Of every fresh batch, this many events are copies of the previous fresh batch's (2.5%); another 2.5% of the
#: batches sent are whole-batch retries: 5% duplicates, as in workload.py.
RESENT_PER_BATCH = 25
RETRY_SHARE = 0.025
# Placeholders in the templates, filled per batch: the end of the id (8 hex digits, the fresh batch's number) and,
# right after it, the time up to the tens of seconds (`2026-11-23T10:11:1`; the template keeps each event's last
# digit, so times spread over 10 s). Id and time are adjacent in each event, so one token covers both, and a body is
# built by joining the template's pieces around the tokens (bytes.replace of 1000 occurrences costs ten times more).
MID = b'","time":"'
CUR = b"~cur-id~" + MID + b"~cur-time-prefix~~"
PRV = b"~prv-id~" + MID + b"~prv-time-prefix~~"
#: Settings that take the soak window, in `meter._core.Engine` names (seconds).
WINDOW_SETTINGS = ("dedup_window_s", "backdate_window_s", "retention_s", "minute_aggregates_s")


def _default_maintenance_s() -> float:
    """How often the engine applies retention: `meter.Engine`'s default `maintenance_interval` (0 if it has none)."""
    import meter

    param = inspect.signature(meter.Engine).parameters.get("maintenance_interval")
    return param.default.total_seconds() if param is not None and param.default is not None else 0.0


MAINTENANCE_S = _default_maintenance_s()


# ---- the engine's settings ------------------------------------------------------------------------------------------


#: Other names a setting may have in the engine (the dedup cache's size is `cache_mb` in the core today).
ALIASES = {"dedup_cache_mb": ("cache_mb",)}


class Settings:
    """The wanted settings (named as `meter._core.Engine` names them, in seconds: `retention_s`) the engine takes.

    `meter.Engine` takes a setting under that name, or as a timedelta under the name without `_s` (`retention`), or
    through `**kwargs`. A setting that only the core takes yet is still used: the engine is then opened through
    `meter._core.Engine` with every setting, and driven through `meter.Engine`'s methods over it (`via` says so).
    A setting neither takes is left out (`refused`).
    """

    def __init__(self, wanted: dict[str, int]) -> None:
        import meter
        from meter import _core

        params = inspect.signature(meter.Engine).parameters
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        core = set(re.findall(r"(\w+)\s*=", _core.Engine.__text_signature__ or ""))
        self.python: dict[str, Any] = {}
        self.core: dict[str, int] = {}
        self.in_effect: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.core_only: list[str] = []
        for name, value in wanted.items():
            names = (name, *ALIASES.get(name, ()))
            py = next((n for n in names if n in params), None)
            py_td = next((n[:-2] for n in names if n.endswith("_s") and n[:-2] in params), None)
            in_core = next((n for n in names if n in core), None)
            if py is not None:
                self.python[py] = value
            elif py_td is not None:
                self.python[py_td] = timedelta(seconds=value)
            elif var_kw:
                self.python[name] = value
            elif in_core is not None:
                self.core_only.append(name)
            else:
                self.refused[name] = value
                continue
            self.core[in_core or name] = value
            self.in_effect[name] = value

    @property
    def via(self) -> str:
        if not self.core_only:
            return "meter.Engine"
        return f"meter._core.Engine (meter.Engine does not take {', '.join(self.core_only)} yet)"

    def drop(self, key: str) -> None:
        """Leaves out the setting an engine refused under the keyword `key`."""
        for name in list(self.in_effect):
            if key in (name, name[:-2], *ALIASES.get(name, ())):
                self.refused[name] = self.in_effect.pop(name)
                self.python = {k: v for k, v in self.python.items() if k != key}
                self.core = {k: v for k, v in self.core.items() if k != key}
                if name in self.core_only:
                    self.core_only.remove(name)
                return
        raise KeyError(key)


def open_engine(path: Path, durability: str, wanted: dict[str, int]) -> tuple[Any, Settings]:
    """Opens the engine with the wanted settings it takes (see `Settings`).

    A setting that was passed on but is refused (a TypeError naming it) is left out and the open retried.
    """
    import meter
    from meter import _core

    settings = Settings(wanted)
    while True:
        try:
            if settings.core_only:
                engine = meter.Engine.__new__(meter.Engine)
                engine._inner = _core.Engine(str(path), durability=durability, **settings.core)
                return engine, settings
            return meter.Engine(path, durability=durability, **settings.python), settings  # type: ignore[arg-type]
        except TypeError as e:
            m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if m is None:
                raise
            try:
                settings.drop(m.group(1))
            except KeyError:
                raise e from None


# ---- the workload ---------------------------------------------------------------------------------------------------


class Template:
    """One batch with placeholders, cut at them: 975 fresh events (a CUR token each), then 25 copies (PRV)."""

    def __init__(self, body: bytes) -> None:
        *self.head, last = body.split(CUR)
        self.tail = last.split(PRV)
        assert len(self.head) == BATCH - RESENT_PER_BATCH and len(self.tail) == RESENT_PER_BATCH + 1
        self.size = len(body)

    def fill(self, cur: bytes, prv: bytes) -> bytes:
        return b"".join((cur.join(self.head), cur, prv.join(self.tail)))


def templates(count: int, customers: int, seed: int) -> list[Template]:
    """`count` batch templates of BATCH events with placeholders: 975 fresh events, then 25 copies.

    The copies are events of the template before (cyclically), so that sending template k after template k-1
    re-sends 25 identical events.
    """
    rng = random.Random(seed)
    names = [f"cust-{i:05d}" for i in range(customers)]
    cum = list(itertools.accumulate(zipf_weights(customers)))
    now = datetime.now(UTC)
    fresh_n = BATCH - RESENT_PER_BATCH
    fresh: list[list[dict[str, Any]]] = []
    for b in range(count):
        subjects = rng.choices(names, cum_weights=cum, k=fresh_n)
        events = []
        for i, subject in enumerate(subjects):
            e = Workload._event(rng, b, i, subject, now)  # the bench-core event shape and values
            cur_id, cur_time = CUR.decode().split(MID.decode())
            events.append(
                {
                    "specversion": e["specversion"],
                    "source": e["source"],
                    "type": e["type"],
                    "subject": e["subject"],
                    "id": f"{i:04x}{cur_id}",
                    "time": f"{cur_time}{rng.randrange(10)}Z",
                    "data": e["data"],
                }
            )
        fresh.append(events)
    out = []
    for b, events in enumerate(fresh):
        copies = []
        for e in rng.sample(fresh[b - 1], RESENT_PER_BATCH):
            body = json.dumps(e, separators=(",", ":")).replace(CUR.decode(), PRV.decode())
            copies.append(json.loads(body))
        out.append(Template(json.dumps(events + copies, separators=(",", ":")).encode()))
    return out


class Sender:
    """Builds the next body: a fresh batch from the next template, or a retry.

    A retry (RETRY_SHARE of the bodies) is a batch sent up to `retry_age_s` ago, rebuilt byte for byte from what it
    was built from.
    """

    def __init__(self, tmpl: list[Template], retry_age_s: float, seed: int) -> None:
        self.tmpl, self.retry_age_s, self.rng = tmpl, retry_age_s, random.Random(seed)
        self.fresh = 0
        self.prev: tuple[bytes, bytes] = (b"ffffffff", time_prefix())  # never sent: the first copies are new events
        # The fresh batches sent, oldest first, trimmed to `retry_age_s`: (sent at, template, ids, times).
        self.sent_at: list[float] = []
        self.sent: list[tuple[int, bytes, bytes, bytes, bytes]] = []

    def next(self) -> tuple[bytes, bool]:
        """The next body and whether it is a whole-batch retry."""
        now = time.monotonic()
        if self.sent and self.rng.random() < RETRY_SHARE:
            lo = bisect.bisect_left(self.sent_at, now - self.retry_age_s)
            if lo < len(self.sent):
                return self.build(*self.sent[self.rng.randrange(lo, len(self.sent))]), True
        k = self.fresh
        self.fresh += 1
        cur = (b"%08x" % k, time_prefix())
        recipe = (k % len(self.tmpl), cur[0], self.prev[0], cur[1], self.prev[1])
        self.prev = cur
        self.sent_at.append(now)
        self.sent.append(recipe)
        if len(self.sent) > 4096 and self.sent_at[2048] < now - self.retry_age_s:
            del self.sent_at[:2048], self.sent[:2048]  # bounded: memory must not grow with the run
        return self.build(*recipe), False

    def build(self, t: int, cur_id: bytes, prv_id: bytes, cur_time: bytes, prv_time: bytes) -> bytes:
        return self.tmpl[t].fill(cur_id + MID + cur_time, prv_id + MID + prv_time)


_prefix_cache: tuple[int, bytes] = (-1, b"")


def time_prefix() -> bytes:
    """Now, UTC, up to the tens of seconds: `2026-11-23T10:11:1`."""
    global _prefix_cache
    tens = int(time.time()) // 10
    if tens != _prefix_cache[0]:
        text = datetime.fromtimestamp(tens * 10, UTC).strftime("%Y-%m-%dT%H:%M:%S")[:-1]
        _prefix_cache = (tens, text.encode())
    return _prefix_cache[1]


# ---- the child: the engine and its driver ---------------------------------------------------------------------------


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def stats_of(engine: Any) -> dict[str, Any]:
    """The engine's own counters: every number it reports, including ones added after this benchmark.

    One level of nesting is flattened as `outer.inner`.
    """
    out: dict[str, Any] = {}
    for k, v in json.loads(engine._inner.stats()).items():
        if isinstance(v, int | float):
            out[k] = v
        elif isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items() if isinstance(vv, int | float)})
    return out


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Interval:
    """What the driver saw during one sampling interval."""

    def __init__(self) -> None:
        self.started, self.cpu = time.monotonic(), cpu_s()
        self.latencies: list[float] = []
        self.events = self.accepted = self.duplicates = self.rejected = self.retries = 0
        self.codes: dict[str, int] = {}

    def add(self, latency: float, result: Any, retry: bool) -> None:
        self.latencies.append(latency)
        self.accepted += result.accepted
        self.duplicates += result.duplicates
        self.rejected += len(result.issues)
        self.events += result.accepted + result.duplicates + len(result.issues)
        self.retries += retry
        for issue in result.issues:
            self.codes[issue.code] = self.codes.get(issue.code, 0) + 1

    def record(self, phase: str, t: float, lag_s: float, engine: Any, exporter: Exporter) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        lat = sorted(self.latencies)
        return {
            "type": "sample",
            "phase": phase,
            "t": round(t, 2),
            "seconds": round(wall, 3),
            "batches": len(lat),
            "events": self.events,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rejected_codes": self.codes,
            "retries": self.retries,
            "events_per_s": round(self.events / wall) if wall else 0,
            "ack_p50_ms": round(percentile(lat, 50) * 1000, 3) if lat else None,
            "ack_p99_ms": round(percentile(lat, 99) * 1000, 3) if lat else None,
            "ack_max_ms": round(lat[-1] * 1000, 3) if lat else None,
            "cpu_share": round((cpu_s() - self.cpu) / wall / (os.cpu_count() or 1), 3) if wall else 0,
            "lag_s": round(lag_s, 3),
            "stats": stats_of(engine),
            **exporter.figures(),
        }


class Exporter(threading.Thread):
    """Exports the tenant's events every `every` seconds, as `meter serve`'s scheduler does, then deletes the files.

    `rows`, `bytes` and `seconds` add up what it did; `error` keeps the first failure (the run goes on without it).
    """

    def __init__(self, engine: Any, out: Path, every: float) -> None:
        super().__init__(name="soak-export", daemon=True)
        self.engine, self.out, self.every = engine, out, every
        self.rows = self.bytes = self.runs = 0
        self.seconds = 0.0
        self.error: str | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        from meter.lake.events import export_events

        while not self.stopping.wait(self.every):
            t = time.perf_counter()
            try:
                summary = export_events(self.engine, [TENANT], self.out)
            except Exception as e:  # noqa: BLE001 - reported in the figures; ingest goes on
                self.error = self.error or f"{type(e).__name__}: {e}"
                continue
            self.seconds += time.perf_counter() - t
            self.rows += summary.rows
            self.runs += 1
            for part in self.out.glob("events/*/date=*/*.parquet"):
                self.bytes += part.stat().st_size
                part.unlink()

    def figures(self) -> dict[str, Any]:
        return {
            "export_runs": self.runs,
            "exported_rows": self.rows,
            "export_s": round(self.seconds, 2),
            "parquet_bytes": self.bytes,
            "export_error": self.error,
        }


def child(args: argparse.Namespace) -> None:
    """Runs in the engine's process: open, meters, the max-rate phase, the paced phase, close.

    One JSON line per event of note on stdout. SIGTERM (from the parent's guards) ends the run early, cleanly.
    """
    stop: dict[str, str | None] = {"why": None}

    def on_term(signum: int, frame: Any) -> None:
        stop["why"] = stop["why"] or f"{signal.Signals(signum).name} received"

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # Ctrl-C reaches the whole process group: the parent decides
    wanted = json.loads(args.settings)
    t = time.perf_counter()
    tmpl = templates(args.templates, args.customers, args.seed)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    engine, settings = open_engine(args.child, args.durability, wanted)
    emit(
        {
            "type": "open",
            "open_s": round(time.perf_counter() - t, 3),
            "in_effect": settings.in_effect,
            "refused": settings.refused,
            "via": settings.via,
            "generation_s": round(gen_s, 1),
            "event_bytes": round(sum(x.size for x in tmpl) / len(tmpl) / BATCH, 1),
        }
    )
    for spec in METERS:
        engine.create_meter(TENANT, spec)
    sender = Sender(tmpl, args.retry_age_s, args.seed)
    exporter = Exporter(engine, args.child.parent / "export", args.export_every_s)
    exporter.start()
    for _ in range(args.warmup):
        engine.ingest(TENANT, sender.next()[0])
    emit({"type": "start", "stats": stats_of(engine)})

    def run(phase: str, seconds: float, rate: float | None) -> int:
        """Sends until `seconds` pass (or a stop), as fast as possible or paced at `rate` events/s.

        Returns the events sent.
        """
        began = time.monotonic()
        interval, next_sample, sent, k = Interval(), began + args.interval, 0, 0
        lag = 0.0
        while stop["why"] is None:
            now = time.monotonic()
            if now >= next_sample:
                emit(interval.record(phase, now - began, lag, engine, exporter))
                interval, next_sample = Interval(), next_sample + args.interval
            if now - began >= seconds:
                break
            if rate is not None:
                due = began + k * BATCH / rate
                lag = max(0.0, now - due)
                if due > now:
                    time.sleep(min(due - now, max(0.0, next_sample - now)))
                    continue
            body, retry = sender.next()
            s = time.perf_counter()
            result = engine.ingest(TENANT, body)
            interval.add(time.perf_counter() - s, result, retry)
            sent += BATCH
            k += 1
        return sent

    # At full speed until the store holds what it will hold all run (a window of data, the first expiry done), and
    # the maximum is the rate of the last third of that: what the engine sustains, not what an empty store takes.
    fill_s = args.max_seconds * 2 / 3
    run("fill", fill_s, None)
    began = time.monotonic()
    sent = run("max", args.max_seconds - fill_s, None)
    max_rate = sent / (time.monotonic() - began)
    target = max_rate * args.rate_fraction
    emit({"type": "max", "events_per_s": round(max_rate), "target_events_per_s": round(target)})
    if stop["why"] is None:
        run("paced", args.minutes * 60, target)
    exporter.stopping.set()
    exporter.join()
    t = time.perf_counter()
    final = stats_of(engine)
    engine.close()
    emit(
        {
            "type": "closed",
            "close_s": round(time.perf_counter() - t, 3),
            "stats": final,
            "stopped": stop["why"],
            "hwm_kib": memory_kib("self", "VmHWM"),
            **exporter.figures(),
        }
    )


def reopen(args: argparse.Namespace) -> None:
    """Runs in a fresh process after the run: the restart, timed from the import to an engine ready to ingest."""
    t = time.perf_counter()
    import meter  # noqa: F401  - the import is part of a restart

    imported = time.perf_counter()
    engine, settings = open_engine(args.reopen, args.durability, json.loads(args.settings))
    opened = time.perf_counter()
    rss = memory_kib("self", "VmRSS")
    stats = stats_of(engine)
    engine.close()
    emit(
        {
            "type": "reopened",
            "import_s": round(imported - t, 3),
            "open_s": round(opened - imported, 3),
            "close_s": round(time.perf_counter() - opened, 3),
            "rss_kib_after_open": rss,
            "stats": stats,
            "in_effect": settings.in_effect,
        }
    )


# ---- the parent: sampling, guards, figures --------------------------------------------------------------------------


def lines(stream: IO[str]) -> Iterator[dict[str, Any]]:
    for line in stream:
        line = line.strip()
        if line.startswith("{"):
            yield json.loads(line)
        elif line:
            print(f"  child: {line}", flush=True)


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line through the points: (slope, intercept); (0, mean) for fewer than two distinct xs."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return 0.0, statistics.fmean(ys) if ys else 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


def trend(samples: list[dict[str, Any]], key: str, t0: float, t1: float) -> dict[str, float]:
    """Slope per hour of `key` over the samples, and the change it makes over [t0, t1].

    The change is relative to the fitted value at t0, in %.
    """
    xs, ys = [s["t"] for s in samples], [float(s[key]) for s in samples]
    slope, intercept = fit(xs, ys)
    start = intercept + slope * t0
    return {
        "slope_per_h": slope * 3600,
        "start": start,
        "change_pct": slope * (t1 - t0) / start * 100 if start else float("nan"),
    }


def analyse(run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The figures and the pass/fail of each criterion, from the samples."""
    samples = run["samples"]
    paced = [s for s in samples if s["phase"] == "paced"]
    window = args.window_s
    out: dict[str, Any] = {
        "max_events_per_s": run.get("max_events_per_s"),
        "target_events_per_s": run.get("target_events_per_s"),
        "rate_fraction": args.rate_fraction,
        "window_s": window,
        "settings_in_effect": run.get("in_effect"),
        "settings_not_accepted": run.get("refused"),
        "opened_through": run.get("via"),
        "stopped_early": run.get("stopped"),
        "paced_minutes": round(paced[-1]["t"] / 60, 2) if paced else 0,
        "samples": len(samples),
    }
    reasons: list[str] = []
    if len(paced) < 3:
        out["pass"] = {
            "rss_flat": False,
            "throughput_flat": False,
            "disk_as_predicted": False,
            "restart_measured": "restart_open_s" in run,
        }
        out["passed"] = False
        out["reasons"] = ["fewer than 3 samples of the paced phase: nothing to judge"]
        out.update({k: run[k] for k in ("restart_open_s", "restart_process_s", "restart_rss_mib") if k in run})
        return out
    end = paced[-1]["t"]
    tail = [s for s in paced if s["t"] >= end / 3]
    t0 = tail[0]["t"]

    rss = trend(tail, "rss_kib", t0, end)
    out["rss_mib_at_start_of_last_two_thirds"] = round(rss["start"] / 1024, 1)
    out["rss_mib_end"] = round(tail[-1]["rss_kib"] / 1024, 1)
    out["rss_peak_mib"] = round(run.get("hwm_kib", max(s["hwm_kib"] for s in samples)) / 1024, 1)
    out["rss_slope_mib_per_h"] = round(rss["slope_per_h"] / 1024, 1)
    out["rss_growth_pct"] = round(rss["change_pct"], 2)
    rss_ok = rss["change_pct"] < args.rss_growth_pct
    if not rss_ok:
        reasons.append(f"RSS grew {rss['change_pct']:.1f}% over the last two thirds (limit {args.rss_growth_pct}%)")

    rates = [float(s["events_per_s"]) for s in tail]
    thr = trend(tail, "events_per_s", t0, end)
    mean_rate = statistics.fmean(rates)
    out["achieved_events_per_s"] = round(mean_rate)
    out["achieved_vs_target"] = round(mean_rate / run["target_events_per_s"], 3)
    out["throughput_slope_events_per_s_per_h"] = round(thr["slope_per_h"])
    out["throughput_change_pct"] = round(thr["change_pct"], 2)
    out["throughput_cv"] = round(statistics.pstdev(rates) / mean_rate, 4) if mean_rate else None
    out["lag_s_end"] = tail[-1]["lag_s"]
    thr_ok = abs(thr["change_pct"]) < args.throughput_change_pct and mean_rate >= 0.95 * run["target_events_per_s"]
    if not thr_ok:
        reasons.append(
            f"throughput changed {thr['change_pct']:+.1f}% over the last two thirds (limit "
            f"±{args.throughput_change_pct}%) at {mean_rate / run['target_events_per_s']:.0%} of the target "
            "(at least 95%)"
        )
    p99s = sorted(s["ack_p99_ms"] for s in tail if s["ack_p99_ms"] is not None)
    out["ack_p99_ms_median"] = percentile(p99s, 50)
    out["ack_p99_ms_max"] = p99s[-1] if p99s else None
    p99 = trend([s for s in tail if s["ack_p99_ms"] is not None], "ack_p99_ms", t0, end)
    out["ack_p99_slope_ms_per_h"] = round(p99["slope_per_h"], 2)
    out["cpu_share_mean"] = round(statistics.fmean(s["cpu_share"] for s in tail), 3)

    # Disk: before any data can expire (the first window after the first event), disk grows by a steady number of
    # bytes per unique event; the retention settings then predict the plateau: the bytes of one window of events.
    disk = trend(tail, "disk_bytes", t0, end)
    out["disk_mib_mean_last_two_thirds"] = round(statistics.fmean(s["disk_bytes"] for s in tail) / 2**20, 1)
    out["disk_slope_mib_per_h"] = round(disk["slope_per_h"] / 2**20, 1)
    out["disk_growth_pct"] = round(disk["change_pct"], 2)
    fill = [s for s in samples if s["t_ingest"] <= window]
    per_event, _ = fit([float(s["unique"]) for s in fill], [float(s["disk_bytes"]) for s in fill])
    unique_rate = statistics.fmean(s["accepted"] / s["seconds"] for s in tail)
    out["disk_bytes_per_unique_event_fill"] = round(per_event, 1)
    out["unique_events_per_s"] = round(unique_rate)
    in_effect = run.get("in_effect") or {}
    bounded = "retention_s" in in_effect
    if bounded:
        # Retention drops what is older than the window at each maintenance step (every MAINTENANCE_S, exported by
        # then since the export runs more often): on average half a step more than the window is kept.
        kept_s = window + MAINTENANCE_S / 2
        out["disk_prediction"] = f"{per_event:.0f} B x {unique_rate:,.0f} unique events/s x {kept_s:g} s kept"
        predicted = run["disk_start"] + per_event * unique_rate * kept_s
        out["disk_predicted_mib"] = round(predicted / 2**20, 1)
        ratio = statistics.fmean(s["disk_bytes"] for s in tail) / predicted if predicted else float("nan")
        out["disk_measured_vs_predicted"] = round(ratio, 3)
        disk_ok = abs(disk["change_pct"]) < args.disk_growth_pct and abs(ratio - 1) <= args.disk_tolerance
        if not disk_ok:
            reasons.append(
                f"disk {ratio:.2f}x the predicted {predicted / 2**20:,.0f} MiB (tolerance "
                f"±{args.disk_tolerance:.0%}), growing {disk['change_pct']:+.1f}% over the last two thirds "
                f"(limit ±{args.disk_growth_pct}%)"
            )
    else:
        out["disk_predicted_mib"] = None
        out["disk_predicted_slope_mib_per_h"] = round(per_event * unique_rate * 3600 / 2**20, 1)
        disk_ok = False
        reasons.append(
            "no retention in effect (the engine does not take retention_s): retained events are kept "
            "forever, so disk grows without bound; predicted slope "
            f"{out['disk_predicted_slope_mib_per_h']:,} MiB/h, measured {out['disk_slope_mib_per_h']:,}"
        )

    for k in (
        "close_s",
        "restart_open_s",
        "restart_import_s",
        "restart_process_s",
        "restart_rss_mib",
        "unique_events",
        "duplicates",
        "rejected",
        "rejected_codes",
        "disk_mib_after_close",
        "export_runs",
        "exported_rows",
        "export_s",
        "parquet_bytes",
        "export_error",
    ):
        if k in run:
            out[k] = run[k]
    restart_ok = "restart_open_s" in run
    if not restart_ok:
        reasons.append(f"the restart was not measured: {run.get('restart_error', 'no figures')}")
    if run.get("rejected"):
        reasons.append(f"{run['rejected']} events rejected: {run.get('rejected_codes')}")
    if run.get("stopped"):
        reasons.append(f"stopped early: {run['stopped']}")
    out["pass"] = {
        "rss_flat": rss_ok,
        "throughput_flat": thr_ok,
        "disk_as_predicted": disk_ok,
        "restart_measured": restart_ok,
    }
    out["passed"] = all(out["pass"].values()) and not run.get("rejected") and not run.get("stopped")
    out["reasons"] = reasons
    return out


class Watch:
    """The parent's side of the run: each record of the child, with the RSS and disk read at that moment.

    Its guards stop the run early on a shared machine (disk, memory).
    """

    def __init__(
        self,
        run: dict[str, Any],
        pid: int,
        data: Path,
        max_disk: float,
        max_rss: float,
        args: argparse.Namespace,
        window: int,
        wanted: dict[str, int],
    ) -> None:
        self.run, self.pid, self.data, self.max_disk, self.max_rss = run, pid, data, max_disk, max_rss
        self.args, self.window, self.wanted = args, window, wanted
        self.unique, self.ingest_started = 0, 0.0

    def handle(self, rec: dict[str, Any]) -> None:
        run, kind = self.run, rec["type"]
        if kind == "open":
            run.update(in_effect=rec["in_effect"], refused=rec["refused"], open_s=rec["open_s"], via=rec["via"])
            print_methodology(self.args, self.window, self.wanted, rec)
        elif kind == "start":
            self.ingest_started = time.monotonic()
            run["disk_start"] = dir_bytes(self.data)
            self.unique = rec["stats"].get("accepted", 0)
            run["samples"].append(
                {
                    "phase": "start",
                    "t": 0.0,
                    "t_ingest": 0.0,
                    "unique": self.unique,
                    "disk_bytes": run["disk_start"],
                    "rss_kib": memory_kib(self.pid, "VmRSS"),
                    "hwm_kib": memory_kib(self.pid, "VmHWM"),
                }
            )
        elif kind == "sample":
            self.unique = rec["stats"].get("accepted", self.unique)
            rec.update(
                t_ingest=round(time.monotonic() - self.ingest_started, 2),
                unique=self.unique,
                rss_kib=memory_kib(self.pid, "VmRSS"),
                hwm_kib=memory_kib(self.pid, "VmHWM"),
                disk_bytes=dir_bytes(self.data),
            )
            run["samples"].append(rec)
            print(
                f"  [{rec['phase']:5} {rec['t']:6.0f} s] {rec['events_per_s']:>9,} ev/s  "
                f"p99 {rec['ack_p99_ms'] or 0:6.1f} ms  RSS {rec['rss_kib'] / 1024:8,.0f} MiB  "
                f"disk {rec['disk_bytes'] / 2**20:8,.0f} MiB  CPU {rec['cpu_share']:.0%}  "
                f"lag {rec['lag_s']:.1f} s  exported {rec['exported_rows']:,}"
                + (f"  rejected {rec['rejected_codes']}" if rec["rejected"] else ""),
                flush=True,
            )
            self.guard(rec)
        elif kind == "max":
            run.update(max_events_per_s=rec["events_per_s"], target_events_per_s=rec["target_events_per_s"])
            print(
                f"  maximum {rec['events_per_s']:,} events/s; pacing at {self.args.rate_fraction:.0%}: "
                f"{rec['target_events_per_s']:,} events/s for {self.args.minutes:g} min",
                flush=True,
            )
        elif kind == "closed":
            run.update(
                {k: rec[k] for k in ("export_runs", "exported_rows", "export_s", "parquet_bytes", "export_error")}
            )
            run.update(
                close_s=rec["close_s"],
                hwm_kib=rec["hwm_kib"],
                unique_events=rec["stats"].get("accepted"),
                duplicates=rec["stats"].get("duplicates"),
                rejected=rec["stats"].get("rejected"),
            )
            if rec["stopped"] and not run.get("stopped"):
                run["stopped"] = f"the engine's process stopped early: {rec['stopped']}"

    def guard(self, rec: dict[str, Any]) -> None:
        why = None
        if rec["disk_bytes"] > self.max_disk:
            why = f"data directory above {self.max_disk / 2**30:.2f} GiB"
        elif rec["rss_kib"] * 1024 > self.max_rss:
            why = f"engine RSS above {self.max_rss / 2**30:.2f} GiB"
        elif shutil.disk_usage(self.data).free < 2 * 2**30:
            why = "less than 2 GiB free on the disk"
        if why and not self.run.get("stopped"):
            self.run["stopped"] = why
            print(f"  stopping early: {why}", flush=True)
            os.kill(self.pid, signal.SIGTERM)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30, help="paced phase (default 30; the long soak: 120)")
    ap.add_argument("--rate-fraction", type=float, default=0.8, help="of the measured maximum (default 0.8)")
    ap.add_argument(
        "--max-seconds",
        type=float,
        help="the full-speed phase before, whose last third gives the "
        "maximum (default: the window and a maintenance step)",
    )
    ap.add_argument("--interval", type=float, default=10, help="seconds between samples (default 10)")
    ap.add_argument(
        "--window-s",
        type=int,
        help="dedup, back-dating, retention and minute-aggregate window (default: a quarter of the run, 30-600 s)",
    )
    ap.add_argument(
        "--export-every-s", type=float, help="the export's period (default: a sixth of the window, 10-60 s)"
    )
    ap.add_argument("--dedup-cache-mb", type=int, help="engine setting, if it takes it (default: its own)")
    ap.add_argument("--recent-dedup-s", type=int, help="engine setting, if it takes it (default: its own)")
    ap.add_argument("--customers", type=int, default=CUSTOMERS)
    ap.add_argument("--templates", type=int, default=200, help="distinct pre-encoded batches (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="batches before the max-rate phase")
    ap.add_argument("--durability", default="fsync", choices=["fsync", "buffered"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data", type=Path, help="data directory (must not exist; default a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the data directory after the run")
    ap.add_argument("--max-disk-gb", type=float, help="stop early above this (default: 60%% of the free space)")
    ap.add_argument("--max-rss-gb", type=float, help="stop early above this (default: half the machine's memory)")
    ap.add_argument("--rss-growth-pct", type=float, default=5.0, help="pass: RSS growth over the last two thirds")
    ap.add_argument("--throughput-change-pct", type=float, default=5.0, help="pass: throughput change, same span")
    ap.add_argument("--disk-growth-pct", type=float, default=10.0, help="pass: disk growth, same span")
    ap.add_argument("--disk-tolerance", type=float, default=0.5, help="pass: measured disk within this of predicted")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--reopen", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    ap.add_argument("--retry-age-s", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.reopen:
        return reopen(args)

    run_s = args.minutes * 60
    window = args.window_s or int(min(600, max(30, run_s / 4)))
    args.window_s = window
    args.export_every_s = args.export_every_s or min(60.0, max(10.0, window / 6))
    # The maximum is measured at the steady state (a window of data held, the first expiry done) with the export
    # running, as in the paced phase: its CPU is part of what the engine's process sustains.
    args.max_seconds = args.max_seconds or max(window + MAINTENANCE_S, 3 * args.export_every_s)
    wanted = {name: window for name in WINDOW_SETTINGS}
    # Events lie at most 9 s ahead; a short allowance keeps dedup markers (kept for the window plus it) in step.
    wanted["max_future_s"] = max(15, window // 10)
    if args.recent_dedup_s is not None:
        wanted["recent_dedup_s"] = args.recent_dedup_s
    if args.dedup_cache_mb is not None:
        wanted["dedup_cache_mb"] = args.dedup_cache_mb
    args.retry_age_s = window / 2  # whole-batch retries stay inside the back-dating window

    own_dir = args.data is None
    data = Path(tempfile.mkdtemp(prefix="meter-soak-")) / "db" if own_dir else args.data
    if not own_dir and data.exists():
        raise SystemExit(f"{data} exists: the soak needs a fresh data directory")
    data.parent.mkdir(parents=True, exist_ok=True)
    max_disk = args.max_disk_gb * 2**30 if args.max_disk_gb is not None else 0.6 * shutil.disk_usage(data.parent).free
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    max_rss = args.max_rss_gb * 2**30 if args.max_rss_gb is not None else mem / 2

    run: dict[str, Any] = {"samples": []}
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(data),
        "--settings",
        json.dumps(wanted),
        "--minutes",
        str(args.minutes),
        "--rate-fraction",
        str(args.rate_fraction),
        "--max-seconds",
        str(args.max_seconds),
        "--interval",
        str(args.interval),
        "--customers",
        str(args.customers),
        "--templates",
        str(args.templates),
        "--warmup",
        str(args.warmup),
        "--durability",
        args.durability,
        "--seed",
        str(args.seed),
        "--retry-age-s",
        str(args.retry_age_s),
        "--export-every-s",
        str(args.export_every_s),
    ]
    print(f"soak: building {args.templates} batch templates and opening the engine in a child process ...", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    watch = Watch(run, proc.pid, data, max_disk, max_rss, args, window, wanted)
    try:
        while True:
            try:
                for rec in lines(proc.stdout):
                    watch.handle(rec)
                break
            except KeyboardInterrupt:
                if run.get("stopped") == "interrupted":
                    proc.kill()
                    raise
                # Ctrl-C reached the child too, which stops at its next batch and closes the engine; the figures
                # so far are still worked out. A second Ctrl-C kills it.
                run["stopped"] = "interrupted"
                print("  interrupted: stopping the run (Ctrl-C again to abandon it)", flush=True)
                proc.send_signal(signal.SIGTERM)
        proc.wait()
        if proc.returncode != 0:
            run["stopped"] = run.get("stopped") or f"the engine's process exited with {proc.returncode}"
        codes: dict[str, int] = {}
        for s in run["samples"]:
            for code, n in s.get("rejected_codes", {}).items():
                codes[code] = codes.get(code, 0) + n
        run["rejected_codes"] = codes
        if data.exists():
            run["disk_mib_after_close"] = round(dir_bytes(data) / 2**20, 1)
            restart(run, data, args, wanted)
        figures = analyse(run, args)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if own_dir and not args.keep:
            shutil.rmtree(data.parent, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "soak_samples.jsonl").open("w") as f:
        for s in run["samples"]:
            f.write(json.dumps(s, sort_keys=True) + "\n")
    verdict = "PASS" if figures["passed"] else "FAIL"
    print(f"  result: {verdict}; " + "; ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in figures["pass"].items()))
    for reason in figures["reasons"]:
        print(f"    - {reason}")
    if args.keep or not own_dir:
        print(f"  data kept in {data}")
    print(f"  samples: {RESULTS / 'soak_samples.jsonl'}")
    finish("soak", figures)


def restart(run: dict[str, Any], data: Path, args: argparse.Namespace, wanted: dict[str, int]) -> None:
    """Reopens the data directory in a fresh process: the open time, and the process's start to ready."""
    t = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--reopen",
            str(data),
            "--settings",
            json.dumps(wanted),
            "--durability",
            args.durability,
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    recs = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not recs:
        run["restart_error"] = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
        print(f"  restart failed: {run['restart_error']}", flush=True)
        return
    rec = recs[-1]
    run.update(
        restart_open_s=rec["open_s"],
        restart_import_s=rec["import_s"],
        restart_process_s=round(wall - rec["close_s"], 3),
        restart_rss_mib=round(rec["rss_kib_after_open"] / 1024, 1),
    )
    print(
        f"  restart: open {rec['open_s']} s (import {rec['import_s']} s; process start to ready "
        f"{run['restart_process_s']} s), RSS after open {run['restart_rss_mib']:,} MiB",
        flush=True,
    )


def print_methodology(args: argparse.Namespace, window: int, wanted: dict[str, int], opened: dict[str, Any]) -> None:
    from meter import _core

    refused = opened["refused"]
    methodology(
        "bench-soak",
        {
            "batches": f"{BATCH} events each, built from {args.templates} pre-encoded templates (ids and times "
            "replaced per batch)",
            "event_bytes": opened["event_bytes"],
            "customers": f"{args.customers:,} (Zipf s=1.1)",
            "dimensions": "model, region, tier",
            "meters": ", ".join(f"{m['slug']} ({m['aggregation']})" for m in METERS),
            "duplicates": f"{RETRY_SHARE:.1%} whole batches re-sent up to {args.retry_age_s:.0f} s later + "
            f"{RESENT_PER_BATCH / BATCH:.1%} events of the previous batch re-sent",
            "event_times": "now, spread over 10 s",
            "export": f"meter.lake.events.export_events every {args.export_every_s:g} s in the engine's process "
            "(Parquet deleted once written)",
            "phases": f"{args.max_seconds:g} s at full speed (the maximum: its last third), "
            f"then {args.minutes:g} min at {args.rate_fraction:.0%} of it, paced; a sample every {args.interval:g} s",
            "generation_s": opened["generation_s"],
        },
        {
            "durability": args.durability,
            "calling_threads": 1,
            "meter": _core.__version__,
            "process": "engine and driver in a child process (RSS, CPU its own); restart timed in a fresh process",
            "window_s": window,
            "in_effect": ", ".join(f"{k}={v}" for k, v in opened["in_effect"].items()) or "none",
            "opened_through": opened["via"],
            "not_accepted_by_this_engine": ", ".join(f"{k}={v}" for k, v in refused.items()) or "none",
            "pass": f"RSS growth < {args.rss_growth_pct}% and throughput change within ±{args.throughput_change_pct}% "
            f"(at >= 95% of the target) over the last two thirds; disk within ±{args.disk_tolerance:.0%} of the "
            f"retention prediction and growing < {args.disk_growth_pct}%; restart measured",
        },
    )


if __name__ == "__main__":
    main()
