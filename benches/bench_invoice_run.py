"""bench-invoice-run: the whole invoice run of one month, end to end, for 1,000,000 subscriptions.

Builds (untimed, through the real write paths) one tenant: five meters in the engine, three plans of six prices
(a fee in advance and five usage charges: per unit, graduated, volume, package, matrix, percentage, with allowances,
minimums and maxima) in two currencies, `--subscriptions` customers each with one subscription (a tenth of them with
a discount), and October 2026's usage as events ingested by the engine (`--events` per customer, each counted by the
five meters). The usage, raw events and catalog are exported once, as the server's scheduled export does.

Then, in a fresh process (its peak memory is its own), times `Invoicer.run(tenant, "2026-11")`: refreshing the export
(nothing new since the scheduled export but the catalog snapshot, which is always rewritten), reading the snapshot,
the cycles, the quantities, rating, assembling the invoices, storing the drafts and writing the invoices Parquet:
seconds per step (from the run's own step clock), total seconds and peak RSS, against the goal of 60 s and 6 GB.
A second run of the same period (every draft recomputed and replaced) is timed too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from _common import finish, methodology  # noqa: E402
from bench_pricing import (
    peak_rss_mb,  # noqa: E402
    prices,  # noqa: E402
)
from meter import Engine  # noqa: E402
from meter.billing.invoicer import Invoicer  # noqa: E402
from meter.billing.store import InvoiceStore  # noqa: E402
from meter.catalog.billing import BillingCatalog, Customer, Discount, Subscription  # noqa: E402
from meter.catalog.prices import Price  # noqa: E402
from meter.lake import layout  # noqa: E402
from meter.pricing import steps  # noqa: E402

TENANT = "bench"
OCT, NOV = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
#: The engine's clock while usage is ingested, and its windows: October's events are then neither too old nor new.
INGEST_NOW = datetime(2026, 11, 2, tzinfo=UTC)
WINDOW = timedelta(days=400)
PERIOD = "2026-11"
MODELS = ["small", "medium", "large"]
#: slug -> aggregation; every meter reads the events of type `ai`; input_tokens is grouped by `model` (matrix).
METERS = {"input_tokens": "sum", "output_tokens": "sum", "requests": "count", "gpu_spend": "sum", "storage_gb": "max"}
#: plan -> its currency.
PLANS = {"starter": "USD", "pro": "USD", "enterprise": "EUR"}
GOAL_SECONDS, GOAL_RSS_MB = 60, 6 * 1024


def plan_prices(plan: str) -> list[dict[str, Any]]:
    """The plan's six prices, as the catalog's JSON: a monthly fee in advance and the five meters' usage."""
    usage = prices()  # the price book of bench-pricing, so both benchmarks rate the same catalog
    fee = {"starter": "9.99", "pro": "49", "enterprise": "990"}[plan]
    currency = PLANS[plan]
    return [
        {"id": f"{plan}-base", "currency": currency, "model": "flat", "amount": fee, "cadence": "in_advance"},
        *(
            {"id": f"{plan}-{meter}", "currency": currency, "meter": meter, **spec}
            for meter, spec in usage[plan].items()
        ),
    ]


def customer_id(i: int) -> str:
    return f"cust-{i:07d}"


# ---------------------------------------------------------------------------------------------------------- build


def build(data: Path, subscriptions: int, events: int) -> dict[str, float]:
    """The tenant through the real write paths (engine, catalog), then the scheduled export; seconds per part."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    with Engine(data / "usage", durability="buffered", backdate_window=WINDOW, dedup_window=WINDOW) as engine:
        for slug, aggregation in METERS.items():
            engine.create_meter(
                TENANT,
                {
                    "slug": slug,
                    "event_type": "ai",
                    "aggregation": aggregation,
                    **({} if aggregation == "count" else {"value_property": f"$.{slug}"}),
                    **({"group_by": {"model": "$.model"}} if slug == "input_tokens" else {}),
                },
            )
        catalog = BillingCatalog(data / "billing", meters=engine)
        for plan in PLANS:
            catalog.create_plan(TENANT, plan, plan.title())
            catalog.add_plan_version(
                TENANT, plan, OCT - timedelta(days=60), [msgspec.convert(p, Price) for p in plan_prices(plan)]
            )
        plans = list(PLANS)
        for i in range(subscriptions):
            plan = plans[i % len(plans)]
            catalog.put_customer(
                TENANT,
                Customer(
                    id=customer_id(i),
                    name=f"Customer {i}",
                    currency=PLANS[plan],
                    timezone="Europe/Paris" if i % 7 == 0 else "UTC",
                ),
            )
            # A tenth start in the middle of the previous cycle (their first fee prorated, their usage partial);
            # every tenth has a discount on its invoice.
            start = OCT + timedelta(days=i % 28) if i % 10 == 3 else OCT - timedelta(days=90)
            discounts = [Discount(id="welcome", start=OCT, percent=Decimal(10))] if i % 10 == 5 else []
            catalog.put_subscription(
                TENANT,
                Subscription(
                    id=f"sub-{i:07d}", customer=customer_id(i), plan=plan, version=1, start=start, discounts=discounts
                ),
            )
        seconds["catalog"], t = time.perf_counter() - t, time.perf_counter()
        ingest_usage(engine, subscriptions, events)
        seconds["ingest"], t = time.perf_counter() - t, time.perf_counter()
        store = InvoiceStore(data / "invoices")
        Invoicer(engine, catalog, store, data / "export").export([TENANT])
        seconds["scheduled_export"] = time.perf_counter() - t
        store.close()
        catalog.close()
    return seconds


def ingest_usage(engine: Engine, customers: int, per_customer: int, batch: int = 10_000) -> None:
    """``per_customer`` events per customer on distinct days of October, each carrying every meter's value."""
    n = customers * per_customer
    i = pl.int_range(n, dtype=pl.UInt64)
    frame = pl.select(i=i).with_columns(
        c=pl.col("i") // per_customer,
        j=pl.col("i") % per_customer,
        h=pl.col("i").hash(seed=7),
        g=pl.col("i").hash(seed=8),
    )
    day = (pl.col("c") * 7 + pl.col("j") * 8) % 31
    minute = pl.col("h") % 1440
    at = (pl.lit(OCT).dt.cast_time_unit("us") + pl.duration(days=day, minutes=minute)).dt.strftime("%Y-%m-%dT%H:%M:00Z")
    model = (pl.col("g") % 3).replace_strict([0, 1, 2], MODELS, return_dtype=pl.String)

    def digits(value: pl.Expr, width: int) -> pl.Expr:
        return value.cast(pl.String).str.zfill(width)

    pieces: list[pl.Expr | str] = [
        '{"specversion":"1.0","source":"bench","type":"ai","id":"e',
        pl.col("i").cast(pl.String),
        '","subject":"cust-',
        digits(pl.col("c"), 7),
        '","time":"',
        at,
        '","data":{"model":"',
        model,
        '","input_tokens":',
        (pl.col("h") % 20_000 + 1).cast(pl.String),
        ',"output_tokens":',
        (pl.col("g") % 5_000 + 1).cast(pl.String),
        ',"gpu_spend":"',
        (pl.col("h") % 5).cast(pl.String),
        ".",
        digits(pl.col("g") % 1000, 3),
        '","storage_gb":"',
        (pl.col("g") % 200).cast(pl.String),
        ".",
        digits(pl.col("h") % 1000, 3),
        '"}}',
    ]
    text = frame.select(pl.concat_str([pl.lit(p) if isinstance(p, str) else p for p in pieces])).to_series()
    for start in range(0, n, batch):
        body = ("[" + ",".join(text.slice(start, batch).to_list()) + "]").encode()
        result = engine.ingest(TENANT, body, now=INGEST_NOW)
        assert not result.issues, result.issues[:3]


# -------------------------------------------------------------------------------------------------------------- timed


def run(data: Path, profile: Path | None) -> dict[str, Any]:
    """The timed invoice runs, in a process of its own: the first, then the same period again."""
    figures: dict[str, Any] = {"baseline_rss_mb": peak_rss_mb()}
    with Engine(data / "usage", durability="buffered", backdate_window=WINDOW, dedup_window=WINDOW) as engine:
        catalog = BillingCatalog(data / "billing", meters=engine)
        store = InvoiceStore(data / "invoices")
        invoicer = Invoicer(engine, catalog, store, data / "export")
        for name in ("first", "again"):
            profiler = None
            if profile is not None and name == "first":
                from pyinstrument import Profiler  # optional: `pip install pyinstrument` to profile

                profiler = Profiler(interval=0.005)
                profiler.start()
            began, cpu = time.perf_counter(), time.process_time()
            with steps.timing() as step_seconds:
                result = invoicer.run(TENANT, PERIOD)
            seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
            if profiler is not None:
                profiler.stop()
                profile.write_text(profiler.output_text(unicode=True, show_all=False))
            walls = {k: v for k, v in step_seconds.items() if not k.endswith("_cpu")}
            step_seconds["other"] = seconds - sum(walls.values())
            step_seconds["other_cpu"] = cpu - sum(v for k, v in step_seconds.items() if k.endswith("_cpu"))
            # Untimed checks, from the invoices export the run wrote (reading a million invoices back would take
            # longer than the run): one invoice per subscription, and the totals per currency.
            exported = pl.read_parquet(layout.invoices_file(data / "export", TENANT, "invoices"))
            totals = exported.group_by("currency").agg(pl.col("total").sum().cast(pl.String)).sort("currency")
            figures[name] = {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "invoices": len(result.invoices),
                "errors": len(result.errors),
                "steps": step_seconds,
                "peak_rss_mb": peak_rss_mb(),
                "exported": exported.height,
                "total": dict(totals.iter_rows()),
            }
            del result
        store.close()
        catalog.close()
    return figures


def child(data: Path, profile: Path | None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--stage", "run", "--data", str(data)]
    if profile is not None:
        command += ["--profile", str(profile)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"the timed run failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscriptions", type=int, default=1_000_000, help="subscriptions = customers (default 1M)")
    ap.add_argument("--events", type=int, default=4, help="October events per customer (default 4)")
    ap.add_argument("--data", type=Path, help="data directory to reuse or create (default: a temporary one)")
    ap.add_argument("--profile", type=Path, help="write a pyinstrument profile of the first run here")
    ap.add_argument("--build-only", action="store_true", help="build (or keep) the tenant in --data, time nothing")
    ap.add_argument("--stage", choices=["all", "run"], default="all", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage == "run":
        print(json.dumps(run(args.data, args.profile)))
        return

    methodology(
        "bench-invoice-run",
        {
            "subscriptions": f"{args.subscriptions:,}, one per customer, plans {', '.join(PLANS)} in turn "
            f"({', '.join(sorted(set(PLANS.values())))}); a tenth started in October, a tenth discounted",
            "charges": "6 per subscription: a fee in advance (November) and 5 usage charges in arrears (October)",
            "usage": f"{args.events} events per customer in October through the engine, each counted by the 5 meters",
        },
        {
            "timed": f"Invoicer.run(tenant, {PERIOD!r}) after the scheduled export, then the same run again; one fresh "
            "process",
            "memory": "peak resident memory (VmHWM) of that process",
            "threads": f"polars pool {pl.thread_pool_size()}",
        },
    )
    with tempfile.TemporaryDirectory(prefix="meter-bench-invoice-run-") as tmp:
        data = args.data or Path(tmp) / "data"
        marker, workload = data / "_bench.json", json.dumps([args.subscriptions, args.events])
        built: dict[str, float] = {}
        if not marker.exists() or marker.read_text() != workload:
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            print(f"building the tenant in {data} ...", flush=True)
            built = build(data, args.subscriptions, args.events)
            marker.write_text(workload)
            print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in built.items()) + " (untimed)", flush=True)
        if args.build_only:
            return
        shutil.rmtree(data / "invoices", ignore_errors=True)  # every timed run starts without invoices
        shutil.rmtree(layout.invoices_root(data / "export"), ignore_errors=True)
        figures = child(data, args.profile)
    for name in ("first", "again"):
        f = figures[name]
        print(
            f"  {name}: {f['seconds']:.2f} s ({f['cpu_seconds']:.2f} s of CPU), {f['invoices']:,} invoices "
            f"({f['exported']:,} exported), {f['errors']} errors, totals {f['total']}, "
            f"peak RSS {f['peak_rss_mb']:,.0f} MiB"
        )
        print(
            "    seconds (CPU seconds) per step: "
            + ", ".join(
                f"{step} {s:.2f} ({f['steps'][step + '_cpu']:.2f})"
                for step, s in f["steps"].items()
                if not step.endswith("_cpu")
            )
        )
    finish(
        "invoice_run",
        {
            "subscriptions": args.subscriptions,
            **{f"build_{k}_seconds": round(v, 1) for k, v in built.items()},
            "seconds": round(figures["first"]["seconds"], 3),
            "cpu_seconds": round(figures["first"]["cpu_seconds"], 3),
            "again_seconds": round(figures["again"]["seconds"], 3),
            "peak_rss_mb": round(figures["again"]["peak_rss_mb"]),
            **{f"{step}_seconds": round(s, 3) for step, s in figures["first"]["steps"].items()},
            "invoices": figures["first"]["invoices"],
            "errors": figures["first"]["errors"],
            "totals": figures["first"]["total"],
            "goal_seconds": GOAL_SECONDS,
            "goal_peak_rss_mb": GOAL_RSS_MB,
        },
    )


if __name__ == "__main__":
    main()
