"""bench-pricing: one month rated for 1,000,000 subscriptions with 5 usage charges each, from the usage Parquet export.

Generates (untimed) a usage export in the real layout for one tenant: `--customers` customers, 5 meters, October 2026,
`--rows-per-meter` minute rows per customer and meter on distinct days, plus a day on each side of the month that
pricing must not read; prices in six models (per_unit, graduated, volume, package, matrix, percentage) over three
plans; one subscription per customer. Then, in a fresh process so that its peak memory is its own, times:

1. charges: the subscriptions x their plan's 5 prices (5M rows), vectorised;
2. quantities: `meter.billing.usage.period_quantities` (Parquet scan pruned to the month, join, fold per charge);
3. rating: `meter.pricing.rating.rate`;
4. invoices: per subscription, the sum of its rounded line amounts.

The ceiling, in another fresh process: the same month's Parquet read alone (scan + collect, every column).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from _common import finish, methodology  # noqa: E402
from meter.billing.usage import period_quantities  # noqa: E402
from meter.catalog.prices import Price  # noqa: E402
from meter.lake import layout  # noqa: E402
from meter.lake.usage import scan  # noqa: E402
from meter.pricing import price_frame, rate  # noqa: E402

TENANT = "bench"
MONTH, NEXT = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 31
MODELS = ["small", "medium", "large"]
#: slug -> aggregation; input_tokens has the dimension `model` (a matrix price).
METERS = {"input_tokens": "sum", "output_tokens": "sum", "requests": "count", "gpu_spend": "sum", "storage_gb": "max"}
PLANS = ["starter", "pro", "enterprise"]
_UTC = pa.timestamp("us", "UTC")


def prices() -> dict[str, dict[str, dict[str, Any]]]:
    """Per plan, per meter, the price (as the catalog's JSON): every model but flat, which has no usage."""

    def matrix(small: str, medium: str, large: str) -> dict[str, Any]:
        return {
            "model": "matrix",
            "matrix": {
                "dimensions": ["model"],
                "entries": [
                    {"values": {"model": m}, "unit_price": p}
                    for m, p in zip(MODELS, (small, medium, large), strict=True)
                ],
            },
        }

    def tiers(*rows: tuple[str, str | None, str, str]) -> list[dict[str, Any]]:
        """(from, up_to or None, unit_price, flat_fee) rows; the last tier has no up_to."""
        return [{"from": a, "unit_price": p, "flat_fee": f, **({"up_to": b} if b else {})} for a, b, p, f in rows]

    return {
        "starter": {
            "input_tokens": matrix("0.0000005", "0.000003", "0.000015"),
            "output_tokens": {"model": "per_unit", "unit_price": "0.000002", "free_allowance": "10000"},
            "requests": {"model": "package", "package": {"size": "100", "price": "0.40"}},
            "gpu_spend": {"model": "per_unit", "unit_price": "1.15"},
            "storage_gb": {
                "model": "graduated",
                "tiers": tiers(("0", "10", "0", "0"), ("10", "100", "0.10", "0"), ("100", None, "0.08", "0")),
            },
        },
        "pro": {
            "input_tokens": {**matrix("0.0000004", "0.0000025", "0.000012"), "minimum": "5"},
            "output_tokens": {
                "model": "graduated",
                "tiers": tiers(("0", "50000", "0.000004", "0"), ("50000", None, "0.000003", "2.50")),
            },
            "requests": {"model": "volume", "tiers": tiers(("0", "50", "0.02", "0"), ("50", None, "0.015", "1"))},
            "gpu_spend": {"model": "percentage", "percentage": {"percent": "5", "min_fee": "1", "max_fee": "5000"}},
            "storage_gb": {"model": "per_unit", "unit_price": "0.09", "maximum": "50"},
        },
        "enterprise": {
            "input_tokens": matrix("0.0000003", "0.000002", "0.00001"),
            "output_tokens": {
                "model": "volume",
                "tiers": tiers(("0", "100000", "0.0000035", "0"), ("100000", None, "0.000003", "0")),
            },
            "requests": {"model": "per_unit", "unit_price": "0.001", "free_allowance": "20"},
            "gpu_spend": {
                "model": "graduated",
                "tiers": tiers(("0", "100", "1.10", "0"), ("100", None, "1.05", "0")),
                "maximum": "100000",
            },
            "storage_gb": {"model": "package", "package": {"size": "10", "price": "0.50", "rounding": "down"}},
        },
    }


def price_objects() -> list[Price]:
    return [
        msgspec.convert({"id": f"{plan}-{meter}", "currency": "USD", "meter": meter, **spec}, Price)
        for plan, by_meter in prices().items()
        for meter, spec in by_meter.items()
    ]


def plan_prices() -> pl.DataFrame:
    """One row per plan and charge slot: ``plan``, ``slot``, ``meter``, ``price_id``, ``dimensions``."""
    rows = [
        {
            "plan": plan,
            "slot": slot,
            "meter": meter,
            "price_id": f"{plan}-{meter}",
            "dimensions": ["model"] if meter == "input_tokens" else None,
        }
        for plan in PLANS
        for slot, meter in enumerate(METERS)
    ]
    return pl.DataFrame(
        rows,
        schema={
            "plan": pl.String,
            "slot": pl.UInt64,
            "meter": pl.String,
            "price_id": pl.String,
            "dimensions": pl.List(pl.String),
        },
    )


def subscriptions(customers: int) -> pl.DataFrame:
    """One subscription per customer, the plans taking turns."""
    return pl.select(subscription=pl.int_range(customers, dtype=pl.UInt64)).with_columns(
        customer=_customer(pl.col("subscription")),
        plan=pl.col("subscription")
        .mod(len(PLANS))
        .replace_strict(list(range(len(PLANS))), PLANS, return_dtype=pl.String),
    )


def _customer(index: pl.Expr) -> pl.Expr:
    return pl.format("cust-{}", index.cast(pl.String).str.zfill(7))


# ---------------------------------------------------------------------------------------------------------- generate


def generate(out: Path, customers: int, rows_per_meter: int) -> int:
    """Writes the usage export (the exporter's schema, zstd, one file per meter and day) and the meters' catalog.

    Returns the rows written. Values come from hashes of the row number: deterministic, no numpy.
    """
    assert rows_per_meter <= DAYS, "each of a customer's rows falls on a day of its own"
    written = 0
    for m, (slug, aggregation) in enumerate(METERS.items()):
        i = pl.col("i")
        c, j = i // rows_per_meter, i % rows_per_meter
        h1, h2 = i.hash(seed=2 * m + 1), i.hash(seed=2 * m + 2)
        # Distinct days per customer (8 and 31 are coprime), a random minute of the day.
        day = (c * 7 + j * 8) % DAYS
        in_month = pl.select(i=pl.int_range(customers * rows_per_meter, dtype=pl.UInt64)).select(
            c=c, offset_min=day * 1440 + h1 % 1440, h1=h1, h2=h2
        )
        # 10% of the customers also have usage the day before and the day after the month: never read.
        outside = pl.select(i=pl.int_range(0, customers, 10, dtype=pl.UInt64)).select(
            c=i,
            offset_min=pl.when(i % 20 == 0).then(pl.lit(-720, pl.Int64)).otherwise(DAYS * 1440 + 720),
            h1=i.hash(seed=99),
            h2=i.hash(seed=98),
        )
        rows = pl.concat([in_month.with_columns(pl.col("offset_min").cast(pl.Int64)), outside])
        value, events = _value(slug, pl.col("h2")), pl.col("h1") % 10 + 1
        if aggregation == "count":
            events = pl.col("h2") % 20 + 1
        start = pl.lit(MONTH).dt.cast_time_unit("us") + pl.duration(minutes=pl.col("offset_min"))
        dims = (
            [
                (pl.col("h1") // 1440 % len(MODELS))
                .replace_strict(list(range(len(MODELS))), MODELS, return_dtype=pl.String)
                .alias("model")
            ]
            if slug == "input_tokens"
            else []
        )
        frame = rows.select(
            _customer(pl.col("c")).alias("customer"),
            *dims,
            window_start=start,
            window_end=start + pl.duration(minutes=1),
            value=value if aggregation != "count" else events.cast(pl.Int128) * 10**9,
            events=events.cast(pl.UInt64),
            day=start.dt.date(),
        )
        frame = frame.with_columns(value=_from_nanos(pl.col("value"))).sort("day", "customer", "window_start")
        schema = pa.schema(
            [
                ("customer", pa.string()),
                *[(d, pa.string()) for d in ("model",) if dims],
                ("window_start", _UTC),
                ("window_end", _UTC),
                ("value", pa.decimal128(38, 9)),
                ("events", pa.uint64()),
            ]
        )
        for (day_value,), part in frame.partition_by("day", as_dict=True, include_key=False).items():
            path = layout.usage_day_file(out, TENANT, slug, day_value)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(part.to_arrow().cast(schema), path, compression="zstd")
            written += part.height
    meters = layout.catalog_file(out, TENANT, "meters")
    meters.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "slug": slug,
                    "event_type": "ai",
                    "aggregation": agg,
                    "value_property": None if agg == "count" else "$.v",
                    "group_by": '{"model":"$.model"}' if slug == "input_tokens" else "{}",
                }
                for slug, agg in METERS.items()
            ]
        ),
        meters,
    )
    return written


def _value(slug: str, h: pl.Expr) -> pl.Expr:
    """A row's value in units of 10^-9 (Int128)."""
    nanos = 10**9
    scaled = {
        "input_tokens": (h % 20_000 + 1) * nanos,
        "output_tokens": (h % 5_000 + 1) * nanos,
        "gpu_spend": h % 5_000_000_000,  # up to 5 USD with 9 decimals
        "storage_gb": (h % 200_000) * 10**6,  # up to 200 GB with 3 decimals
        "requests": h * 0,
    }[slug]
    return scaled.cast(pl.Int128)


def _from_nanos(scaled: pl.Expr) -> pl.Expr:
    """Int128 counts of 10^-9 as Decimal(38, 9), exactly (as :func:`meter.pricing.exact.from_scaled`)."""
    return scaled.cast(pl.Decimal(38, 0)) * pl.lit(Decimal("0.000000001"), pl.Decimal(38, 9))


# -------------------------------------------------------------------------------------------------------------- timed


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: VmHWM, the high-water mark of its own address space.

    Not ``ru_maxrss``: on Linux it survives fork and exec, so a child of the (large) generating process would start
    with the parent's peak and hide its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_rating(out: Path, customers: int) -> dict[str, Any]:
    """The timed part, in a process of its own. Inputs (prices, subscriptions) are ready before the clock starts."""
    price_table = price_frame(price_objects())
    subs = subscriptions(customers)
    slots = plan_prices()
    baseline = peak_rss_mb()
    seconds: dict[str, float] = {}
    began = t = time.perf_counter()

    requests = subs.join(slots, on="plan").select(
        charge=pl.col("subscription") * len(METERS) + pl.col("slot"),
        subscription="subscription",
        customer="customer",
        meter="meter",
        price_id="price_id",
        dimensions="dimensions",
        **{"from": pl.lit(MONTH).dt.cast_time_unit("us"), "to": pl.lit(NEXT).dt.cast_time_unit("us")},
    )
    seconds["charges"], t = time.perf_counter() - t, time.perf_counter()

    quantities = period_quantities(out, TENANT, requests)  # aggregations from the export's catalog snapshot
    seconds["quantities"], t = time.perf_counter() - t, time.perf_counter()

    rated = rate(requests.select("charge", "price_id"), price_table, quantities.drop("events"))
    seconds["rating"], t = time.perf_counter() - t, time.perf_counter()

    # `lines` are in the order of the charges, so each line's subscription is read by position, never joined.
    invoices = (
        rated.lines.select("amount", subscription=requests.get_column("subscription"))
        .group_by("subscription")
        .agg(total=pl.col("amount").sum())
    )
    seconds["invoices"] = time.perf_counter() - t
    total_s = time.perf_counter() - began
    peak = peak_rss_mb()

    # Untimed checks and checksums: every subscription invoiced, and the quantities of the sum and count meters
    # add up to the values in the month's files (compared with the ceiling's sums by the parent).
    by_meter = (
        quantities.join(requests.select("charge", "meter"), on="charge")
        .group_by("meter")
        .agg(pl.col("quantity").sum().cast(pl.String), pl.col("events").sum())
    )
    return {
        "seconds": total_s,
        "stage_seconds": seconds,
        "charges": requests.height,
        "quantity_rows": quantities.height,
        "details": rated.details.height,
        "invoices": invoices.height,
        "invoiced_total": str(invoices.get_column("total").sum()),
        "charged_lines": rated.lines.filter(pl.col("amount") > 0).height,
        "per_meter": {r["meter"]: [r["quantity"], r["events"]] for r in by_meter.to_dicts()},
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak,
    }


def _scan(out: Path, slug: str) -> pl.LazyFrame:
    usage = scan(out, TENANT, slug)
    assert usage is not None, f"no usage generated for {slug}"
    return usage


def run_ceiling(out: Path) -> dict[str, Any]:
    """Reading the month's usage alone: every meter scanned (pruned to the month) and collected, every column."""
    baseline = peak_rss_mb()
    days = pl.date_range(date(2026, 10, 1), date(2026, 10, DAYS), eager=True)
    began = time.perf_counter()
    frames = pl.collect_all([_scan(out, slug).filter(pl.col("date").is_in(days)) for slug in METERS])
    seconds = time.perf_counter() - began
    peak = peak_rss_mb()
    per_meter = {
        slug: [str(f.get_column("value").sum()), int(f.get_column("events").sum())]
        for slug, f in zip(METERS, frames, strict=True)
    }
    return {
        "seconds": seconds,
        "rows": sum(f.height for f in frames),
        "per_meter": per_meter,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak,
    }


def child(stage: str, out: Path, customers: int) -> dict[str, Any]:
    """Runs a stage in a fresh interpreter (its peak RSS is then its own) and returns the JSON of its last line."""
    done = subprocess.run(
        [sys.executable, __file__, "--stage", stage, "--data", str(out), "--customers", str(customers)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"the {stage} stage failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000, help="customers = subscriptions (default 1M)")
    ap.add_argument("--rows-per-meter", type=int, default=4, help="minute rows per customer and meter (default 4)")
    ap.add_argument("--data", type=Path, help="export directory to reuse or create (default: a temporary one)")
    ap.add_argument("--stage", choices=["all", "rate", "ceiling"], default="all", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage != "all":
        figures = run_rating(args.data, args.customers) if args.stage == "rate" else run_ceiling(args.data)
        print(json.dumps(figures))
        return

    methodology(
        "bench-pricing",
        {
            "subscriptions": f"{args.customers:,}, one per customer, plans {', '.join(PLANS)} in turn",
            "charges": f"{len(METERS)} usage charges per subscription ({args.customers * len(METERS):,}), October 2026",
            "meters": ", ".join(f"{s} ({a})" for s, a in METERS.items()) + "; input_tokens by model (matrix price)",
            "prices": "per_unit, graduated, volume, package, matrix, percentage (period); minimums, maxima, allowances",
            "usage": f"{args.rows_per_meter} minute rows per customer and meter on distinct days, "
            "plus 10% of customers on the day before and after the month (never read)",
        },
        {
            "timed": "charges frame, period_quantities (Parquet, pruned to the month), rate, per-subscription totals; "
            "one fresh process, inputs loaded before the clock starts",
            "memory": "peak resident memory (VmHWM) of that process (peak_rss_mb), "
            "and before the clock (baseline_rss_mb)",
            "ceiling": "the month's Parquet scanned and collected alone (every column), in another fresh process",
            "threads": f"polars pool {pl.thread_pool_size()}",
        },
    )
    with tempfile.TemporaryDirectory(prefix="meter-bench-pricing-") as tmp:
        out = args.data or Path(tmp) / "out"
        # A kept export is reused only if it was generated for the same workload.
        marker, workload = out / "_bench.json", json.dumps([args.customers, args.rows_per_meter])
        if not marker.exists() or marker.read_text() != workload:
            shutil.rmtree(out, ignore_errors=True)
            print(f"generating the usage export in {out} ...", flush=True)
            began = time.perf_counter()
            written = generate(out, args.customers, args.rows_per_meter)
            marker.write_text(workload)
            print(f"  {written:,} rows in {time.perf_counter() - began:.1f} s (untimed)", flush=True)
        files = sum(1 for _ in layout.usage_root(out).rglob("*.parquet"))
        size_mb = sum(p.stat().st_size for p in layout.usage_root(out).rglob("*.parquet")) / 2**20
        rated = child("rate", out, args.customers)
        ceiling = child("ceiling", out, args.customers)

    for slug, aggregation in METERS.items():
        if aggregation in ("sum", "count"):
            assert rated["per_meter"][slug] == ceiling["per_meter"][slug], (
                slug,
                rated["per_meter"][slug],
                ceiling["per_meter"][slug],
            )
    stages = rated["stage_seconds"]
    print(f"  export: {files} files, {size_mb:,.0f} MiB; the month: {ceiling['rows']:,} rows")
    for name, s in stages.items():
        print(f"  {name}: {s:.2f} s")
    print(
        f"  total: {rated['seconds']:.2f} s for {rated['charges']:,} charges ({rated['quantity_rows']:,} quantity "
        f"rows, {rated['details']:,} detail rows), {rated['invoices']:,} invoices totalling {rated['invoiced_total']}"
        " USD"
    )
    print(f"  peak RSS: {rated['peak_rss_mb']:,.0f} MiB (before the clock: {rated['baseline_rss_mb']:,.0f} MiB)")
    print(
        f"  ceiling (the month's Parquet read alone): {ceiling['seconds']:.2f} s, "
        f"peak RSS {ceiling['peak_rss_mb']:,.0f} MiB"
    )
    print("  check: the sum and count meters' quantities add up to the values in the month's files")
    finish(
        "pricing",
        {
            "seconds": round(rated["seconds"], 3),
            "peak_rss_mb": round(rated["peak_rss_mb"]),
            "baseline_rss_mb": round(rated["baseline_rss_mb"]),
            **{f"{name}_seconds": round(s, 3) for name, s in stages.items()},
            "subscriptions": rated["invoices"],
            "charges": rated["charges"],
            "rows_read": ceiling["rows"],
            "quantity_rows": rated["quantity_rows"],
            "invoiced_total": rated["invoiced_total"],
            "ceiling_read_seconds": round(ceiling["seconds"], 3),
            "ceiling_peak_rss_mb": round(ceiling["peak_rss_mb"]),
            "goal_seconds": 30,
        },
    )


if __name__ == "__main__":
    main()
