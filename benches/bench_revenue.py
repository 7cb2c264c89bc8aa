"""bench-revenue: the month-end close (revenue recognition) of one year, for 100,000 subscriptions.

Builds (untimed, through the real write paths, kept with ``--data DIR``) one tenant for 2026: a meter in the engine,
two plans of two prices each (a fee in advance and a usage price per unit), ``--subscriptions`` customers with one
subscription each, of three kinds:

- 80% monthly, calendar cycles from 2026-01-01 (USD);
- 10% monthly, anniversary cycles anchored on day 10..24 of January (their cycles straddle month ends) (USD);
- 10% annual, anniversary cycles starting on the 1st of one of 2026's months (EUR): a fee recognized over 12
  months, most of it straddling the year end, and a year of usage not invoiced until the cycle ends (unbilled).

Usage: ``--events`` events per customer in every month it is subscribed (days 25..27), through the engine, with a
backdate window that takes the whole year. Invoices: the cycle invoices of every month from January 2026 to January
2027 (``Invoicer.run``), each month's drafts finalized before the next month runs (so each draft's basis is current).

Then, in a fresh process (its peak memory is its own), times ``Invoicer.recognize(tenant, 2026-12-31,
now=2027-01-05)``: the tenant's first close, one step per month end (12), on a copy of the built invoice store. It
checks the figures against a reference computed here independently (fees earned by day from the exported invoice
lines, usage rated per key from the events generated), and that a second close posts nothing. The ceiling, in
another fresh process: reading the same invoice lines from the invoices Parquet export (``read_invoices``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from _common import finish, methodology  # noqa: E402
from bench_pricing import peak_rss_mb  # noqa: E402
from meter import Engine  # noqa: E402
from meter.billing.invoicer import Invoicer  # noqa: E402
from meter.billing.invoices import BILLED, Invoice  # noqa: E402
from meter.billing.store import InvoiceStore  # noqa: E402
from meter.catalog.billing import BillingCatalog, Customer, Product, Subscription  # noqa: E402
from meter.catalog.prices import Price  # noqa: E402
from meter.lake.invoices import read_invoices  # noqa: E402
from meter.money.revenue.recognize import CloseStep, read_rows  # noqa: E402

TENANT = "bench"
METER = "api_calls"
YEAR_START, YEAR_END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
#: The months whose cycle invoices are run and finalized: 2026's, and January 2027's (December's usage in arrears).
MONTHS = [f"2026-{m:02d}" for m in range(1, 13)] + ["2027-01"]
#: The engine's clock while the year's usage is ingested, and its windows: every 2026 event is then accepted.
INGEST_NOW = datetime(2027, 1, 2, tzinfo=UTC)
WINDOW = timedelta(days=800)
THROUGH, RECOGNIZE_NOW = date(2026, 12, 31), datetime(2027, 1, 5, tzinfo=UTC)
UNIT_PRICE = Decimal("0.0125")  # a tenth of a cent and more: rounding each usage key to the cent matters
#: plan -> (currency, cycle, fee in advance per cycle)
PLANS = {"monthly": ("USD", "monthly", Decimal("29.00")), "annual": ("EUR", "annual", Decimal("290.00"))}
GOAL_SECONDS = 30
CENT = Decimal("0.01")


def customer_id(i: int) -> str:
    return f"cust-{i:07d}"


def kind_of(i: int) -> str:
    """``calendar`` (monthly, 1st of the month), ``anniversary`` (monthly, mid-month) or ``annual``."""
    return {0: "annual", 1: "anniversary"}.get(i % 10, "calendar")


def start_of(i: int) -> datetime:
    kind = kind_of(i)
    if kind == "annual":
        return datetime(2026, 1 + (i // 10) % 12, 1, tzinfo=UTC)
    if kind == "anniversary":
        return datetime(2026, 1, 10 + (i // 10) % 15, tzinfo=UTC)
    return YEAR_START


# ------------------------------------------------------------------------------------------------------------ usage


def usage_frame(customers: int, per_month: int) -> pl.DataFrame:
    """Every event of the year: customer ``c``, month ``m`` (1..12), its day (25..27), minute and units."""
    starts = pl.DataFrame(
        {"c": list(range(customers)), "first": [start_of(i).month for i in range(customers)]},
        schema={"c": pl.Int64, "first": pl.Int8},
    )
    months = pl.DataFrame({"m": list(range(1, 13))}, schema={"m": pl.Int8})
    js = pl.DataFrame({"j": list(range(per_month))}, schema={"j": pl.Int8})
    frame = starts.join(months, how="cross").join(js, how="cross").filter(pl.col("m") >= pl.col("first"))
    n = pl.col("c") * 1000 + pl.col("m").cast(pl.Int64) * 10 + pl.col("j").cast(pl.Int64)
    return frame.with_columns(
        day=(25 + pl.col("j")).cast(pl.Int8),
        minute=(n.hash(seed=7) % 1440).cast(pl.Int32),
        units=(n.hash(seed=8) % 1000 + 1).cast(pl.Int64),
    ).drop("first")


def reference_usage(events: pl.DataFrame) -> dict[str, dict[str, str]]:
    """Usage consumed in 2026 per currency and month, by the rule: each usage key rated for its usage so far.

    Keys are known from how the workload is made: a monthly subscription's events of one month all fall in one cycle
    (days 25..27 come after every anchor), which is the month they are consumed in; an annual one's year is one
    cycle, consumed month by month: what a month earns is the key's usage through its end rated, less the same through
    the month before, each rounded half to even to the cent. In integers: ``units x 125`` is the amount in
    ten-thousandths, divided by 100 in cents.
    """
    monthly = events.group_by("c", "m").agg(pl.col("units").sum()).sort("c", "m")
    annual = pl.col("c") % 10 == 0
    units = pl.when(annual).then(pl.col("units").cum_sum().over("c", order_by="m")).otherwise(pl.col("units"))
    x = units * 125
    q, r = x // 100, x % 100
    cents = q + ((r > 50) | ((r == 50) & (q % 2 == 1))).cast(pl.Int64)
    rated = monthly.with_columns(cents=cents, currency=pl.when(annual).then(pl.lit("EUR")).otherwise(pl.lit("USD")))
    earned = rated.with_columns(
        cents=pl.when(annual)
        .then(pl.col("cents") - pl.col("cents").shift(1, fill_value=0).over("c", order_by="m"))
        .otherwise(pl.col("cents"))
    )
    by_month = earned.group_by("currency", "m").agg(pl.col("cents").sum()).sort("currency", "m")
    out: dict[str, dict[str, str]] = {}
    for currency, month, c in by_month.iter_rows():
        out.setdefault(currency, {})[f"2026-{month:02d}"] = str(Decimal(int(c)).scaleb(-2))
    return out


def ingest_usage(engine: Engine, events: pl.DataFrame, batch: int = 10_000) -> None:
    """The events as CloudEvents JSON, in batches through the engine."""
    at = (
        pl.datetime(2026, pl.col("m"), pl.col("day"), time_zone="UTC").dt.cast_time_unit("us")
        + pl.duration(minutes=pl.col("minute"))
    ).dt.strftime("%Y-%m-%dT%H:%M:00Z")
    pieces: list[pl.Expr | str] = [
        '{"specversion":"1.0","source":"bench","type":"api","id":"e',
        pl.col("c").cast(pl.String),
        "-",
        pl.col("m").cast(pl.String),
        "-",
        pl.col("j").cast(pl.String),
        '","subject":"cust-',
        pl.col("c").cast(pl.String).str.zfill(7),
        '","time":"',
        at,
        '","data":{"units":',
        pl.col("units").cast(pl.String),
        "}}",
    ]
    text = events.select(pl.concat_str([pl.lit(p) if isinstance(p, str) else p for p in pieces])).to_series()
    for start in range(0, len(text), batch):
        body = ("[" + ",".join(text.slice(start, batch).to_list()) + "]").encode()
        result = engine.ingest(TENANT, body, now=INGEST_NOW)
        assert not result.issues, result.issues[:3]


# ------------------------------------------------------------------------------------------------------------ build


def build(data: Path, subscriptions: int, per_month: int) -> dict[str, Any]:
    """The tenant through the real write paths, then a year of invoices finalized; seconds per part, the reference."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    with Engine(data / "usage", durability="buffered", backdate_window=WINDOW, dedup_window=WINDOW) as engine:
        engine.create_meter(
            TENANT, {"slug": METER, "event_type": "api", "aggregation": "sum", "value_property": "$.units"}
        )
        catalog = BillingCatalog(data / "billing", meters=engine)
        catalog.put_product(TENANT, Product(id="api", name="API", meters=[METER]))
        for plan, (currency, _, fee) in PLANS.items():
            catalog.create_plan(TENANT, plan, plan.title())
            fee_price = {"id": f"{plan}-fee", "model": "flat", "amount": str(fee), "cadence": "in_advance"}
            usage_price = {"id": f"{plan}-{METER}", "meter": METER, "model": "per_unit", "unit_price": str(UNIT_PRICE)}
            prices = [{**fee_price, "currency": currency}, {**usage_price, "currency": currency}]
            catalog.add_plan_version(
                TENANT, plan, YEAR_START - timedelta(days=30), [msgspec.convert(p, Price) for p in prices]
            )
        for i in range(subscriptions):
            kind = kind_of(i)
            plan = "annual" if kind == "annual" else "monthly"
            catalog.put_customer(TENANT, Customer(id=customer_id(i), name=f"Customer {i}", currency=PLANS[plan][0]))
            catalog.put_subscription(
                TENANT,
                Subscription(
                    id=f"sub-{i:07d}",
                    customer=customer_id(i),
                    plan=plan,
                    version=1,
                    start=start_of(i),
                    cycle="annual" if kind == "annual" else "monthly",
                    anchor="calendar" if kind == "calendar" else "anniversary",
                ),
            )
        seconds["catalog"], t = time.perf_counter() - t, time.perf_counter()
        events = usage_frame(subscriptions, per_month)
        ingest_usage(engine, events)
        seconds["ingest"], t = time.perf_counter() - t, time.perf_counter()
        store = InvoiceStore(data / "invoices")
        invoicer = Invoicer(engine, catalog, store, data / "export")
        invoices = errors = 0
        run_seconds = finalize_seconds = 0.0
        for month in MONTHS:
            r = time.perf_counter()
            result = invoicer.run(TENANT, month)
            assert not result.errors, result.errors[:3]
            f = time.perf_counter()
            run_seconds += f - r
            # Finalized the day after the month's first, in one synced write per chunk (see finalize_all).
            first = datetime(int(month[:4]), int(month[5:]), 2, tzinfo=UTC)
            invoices += finalize_all(invoicer, store, result.invoices, first)
            errors += len(result.errors)
            finalize_seconds += time.perf_counter() - f
            print(
                f"  {month}: {len(result.invoices):,} invoices run in {f - r:.1f} s, finalized in "
                f"{time.perf_counter() - f:.1f} s",
                flush=True,
            )
        seconds["invoice_runs"], seconds["finalize"] = run_seconds, finalize_seconds
        t = time.perf_counter()
        invoicer.export([TENANT])  # the scheduled export: the invoices Parquet now holds the finalized invoices
        seconds["export"] = time.perf_counter() - t
        store.close()
        catalog.close()
    return {"seconds": seconds, "invoices": invoices, "events": events.height}


def finalize_all(invoicer: Invoicer, store: InvoiceStore, drafts: Sequence[Invoice], now: datetime) -> int:
    """Finalizes ``drafts`` through the store's own finalization, ``chunk`` drafts per synced write.

    ``InvoiceStore.finalize`` is one synced write per invoice (about 0.5 ms each, 10 minutes for the 1.3M of a
    100k-subscription year); this runs the same steps (the staleness check, ``prepare``: tax and collection, the
    number, the journal entry, the events) for many drafts inside one ``InvoiceStore.transaction``. The drafts of
    one month belong to different subscriptions, so none reads another's unwritten change.
    """
    prepare = invoicer.prepare(TENANT, now)
    done = 0
    for part in _chunks(drafts, 20_000):
        with store.transaction(TENANT, now) as change:
            for draft in part:
                assert draft.status == "draft" and store._stale(draft) is None, draft.id  # noqa: SLF001
                store._finalize(change, draft, prepare)  # noqa: SLF001
                done += 1
    return done


def _chunks(items: Sequence[Invoice], size: int) -> Iterator[list[Invoice]]:
    it = iter(items)
    while part := list(islice(it, size)):
        yield part


# ------------------------------------------------------------------------------------------------------------ timed


def run(data: Path, store_dir: Path) -> dict[str, Any]:
    """The timed close, in a process of its own, on ``store_dir`` (a copy of the built store); then a second one."""
    figures: dict[str, Any] = {"baseline_rss_mb": peak_rss_mb()}
    with Engine(data / "usage", durability="buffered", backdate_window=WINDOW, dedup_window=WINDOW) as engine:
        catalog = BillingCatalog(data / "billing", meters=engine)
        store = InvoiceStore(store_dir)
        invoicer = Invoicer(engine, catalog, store, data / "export")
        posted_before = store.posted(TENANT)
        step_seconds: list[tuple[str, float, int]] = []
        mark = [time.perf_counter()]

        def progress(step: CloseStep) -> None:
            now = time.perf_counter()
            step_seconds.append((step.through.isoformat(), now - mark[0], step.rows))
            print(f"    step {step.through}: {now - mark[0]:.2f} s, {step.rows:,} rows", file=sys.stderr, flush=True)
            mark[0] = now

        began, cpu = time.perf_counter(), time.process_time()
        mark[0] = began
        close = invoicer.recognize(TENANT, THROUGH, now=RECOGNIZE_NOW, progress=progress)
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        figures["peak_rss_mb"] = peak_rss_mb()
        recognized: dict[str, dict[str, Decimal]] = {}
        for step in close.steps:
            for r in step.recognized:
                into = recognized.setdefault(
                    r.currency, {"fees": Decimal(0), "usage": Decimal(0), "breakage": Decimal(0)}
                )
                into["fees"] += r.fees
                into["usage"] += r.usage
                into["breakage"] += r.breakage
        posted = store.posted(TENANT)
        # Untimed: what the rows say each month recognized, by currency and kind (usage is checked by month).
        rows = pl.from_arrow(read_rows(store, TENANT))
        assert isinstance(rows, pl.DataFrame)
        by_month: dict[str, dict[str, dict[str, str]]] = {}
        sums = rows.group_by("currency", "kind", "month").agg(pl.col("amount").sum()).sort("currency", "kind", "month")
        for currency, kind, month, amount in sums.iter_rows():
            by_month.setdefault(currency, {}).setdefault(kind, {})[month] = str(amount)
        again = invoicer.recognize(TENANT, THROUGH, now=RECOGNIZE_NOW)
        figures.update(
            seconds=seconds,
            cpu_seconds=cpu,
            steps=step_seconds,
            rows=sum(s.rows for s in close.steps),
            entries=posted - posted_before,
            errors=len(close.errors),
            recognized={cur: {k: str(v) for k, v in sums.items()} for cur, sums in sorted(recognized.items())},
            by_month=by_month,
            again_steps=len(again.steps),
            again_entries=store.posted(TENANT) - posted,
        )
        store.close()
        catalog.close()
    return figures


def ceiling(data: Path) -> dict[str, Any]:
    """Reading the same invoice lines from the invoices Parquet export (timed), then the fee reference (untimed)."""
    began, cpu = time.perf_counter(), time.process_time()
    tables = read_invoices(data / "export", TENANT)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    assert tables is not None
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": peak_rss_mb(),
        "lines": tables.lines.num_rows,
        "invoices": tables.invoices.num_rows,
        "fees": reference_fees(pl.from_arrow(tables.invoices), pl.from_arrow(tables.lines)),  # type: ignore[arg-type]
    }


def reference_fees(invoices: pl.DataFrame, lines: pl.DataFrame) -> dict[str, str]:
    """What the finalized invoices' fee lines have earned by the end of 2026, per currency, by the ratable rule.

    In plain integer days (every period here starts and ends at midnight UTC, the reporting zone): a line's month
    earns ``amount x its days / all days`` rounded half to even to the cent, the last month what is left. A line
    ending by 2027-01-01 has earned its amount; one that straddles it, the months before it.
    """
    billed = invoices.filter(pl.col("status").is_in(sorted(BILLED))).select(pl.col("id").alias("invoice"), "currency")
    fees = lines.filter(pl.col("kind") == "recurring").join(billed, on="invoice")
    whole = fees.filter(pl.col("period_end") <= YEAR_END)
    earned: dict[str, Decimal] = {}
    for cur, amount in whole.group_by("currency").agg(pl.col("amount").sum()).iter_rows():
        earned[cur] = earned.get(cur, Decimal(0)) + amount
    straddling = fees.filter((pl.col("period_start") < YEAR_END) & (pl.col("period_end") > YEAR_END))
    for cur, amount, start, end in straddling.select("currency", "amount", "period_start", "period_end").iter_rows():
        earned[cur] = earned.get(cur, Decimal(0)) + _earned_by_year_end(amount, start, end)
    return {cur: str(v) for cur, v in sorted(earned.items())}


def _earned_by_year_end(amount: Decimal, start: datetime, end: datetime) -> Decimal:
    assert start.time() == end.time() == datetime.min.time(), (start, end)  # whole UTC days
    total = (end - start).days
    earned, at = Decimal(0), start.date()
    while at < YEAR_END.date():
        month_end = date(at.year + at.month // 12, at.month % 12 + 1, 1)
        days = (min(month_end, end.date()) - at).days
        earned += Decimal(round(Fraction(amount) * days / total * 100)).scaleb(-2)  # half to even
        at = month_end
    return earned.quantize(CENT, ROUND_HALF_EVEN)


def child(stage: str, *extra: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--stage", stage, *extra]
    # Its stderr (the close's steps as they end) goes straight through; its stdout ends with the figures.
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout)
        raise SystemExit(f"the {stage} stage failed (exit {done.returncode})")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscriptions", type=int, default=100_000, help="subscriptions = customers (default 100k)")
    ap.add_argument("--events", type=int, default=1, choices=[1, 2, 3], help="events per customer and month (1)")
    ap.add_argument("--data", type=Path, help="data directory to reuse or create (default: a temporary one)")
    ap.add_argument("--build-only", action="store_true", help="build (or keep) the tenant in --data, time nothing")
    ap.add_argument("--print-only", action="store_true", help="print the figures, leave results/revenue.json alone")
    ap.add_argument("--stage", choices=["all", "run", "ceiling"], default="all", help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage == "run":
        print(json.dumps(run(args.data, args.store)))
        return
    if args.stage == "ceiling":
        print(json.dumps(ceiling(args.data)))
        return

    methodology(
        "bench-revenue",
        {
            "subscriptions": f"{args.subscriptions:,}, one per customer: 80% monthly on calendar cycles (USD), 10% "
            "monthly anchored on day 10..24 of the month (USD), 10% annual anchored on the 1st of a month of 2026 "
            "(EUR); all start in 2026",
            "prices": f"a fee in advance (monthly 29.00 USD, annual 290.00 EUR) and usage per unit ({UNIT_PRICE})",
            "usage": f"{args.events} event(s) per customer and month subscribed (days 25..27 of 2026's months), "
            "through the engine",
            "invoices": f"the cycle invoices of {MONTHS[0]} .. {MONTHS[-1]} (Invoicer.run), each month's finalized "
            "before the next is run, by the store's own finalization (_stale, _finalize) with 20,000 invoices per "
            "synced InvoiceStore.transaction instead of one synced write each (setup only)",
        },
        {
            "timed": f"Invoicer.recognize(tenant, {THROUGH}, now={RECOGNIZE_NOW:%Y-%m-%d}): the tenant's first close, "
            "12 month-end steps; one fresh process, on a copy of the built invoice store",
            "memory": "peak resident memory (VmHWM) of that process",
            "ceiling": "read_invoices (the invoices Parquet export: invoices, lines, credit notes) in another fresh "
            "process",
            "checks": "recognized fees = the finalized fee lines earned by day through 2026 (computed here in integer "
            "days); recognized usage = the events generated, rated per key and rounded to the cent; a second close "
            "posts nothing",
            "threads": f"polars pool {pl.thread_pool_size()}",
        },
    )
    with tempfile.TemporaryDirectory(prefix="meter-bench-revenue-") as tmp:
        data = args.data or Path(tmp) / "data"
        marker, workload = data / "_bench.json", [args.subscriptions, args.events]
        built: dict[str, Any] = {}
        if not marker.exists() or json.loads(marker.read_text())["workload"] != workload:
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            print(f"building the tenant in {data} ...", flush=True)
            built = build(data, args.subscriptions, args.events)
            marker.write_text(json.dumps({"workload": workload, **built}))
            print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in built["seconds"].items()) + " (untimed)", flush=True)
        else:
            built = json.loads(marker.read_text())
        if args.build_only:
            return
        store = data / "run-invoices"  # every timed close starts from the built store, never closed before
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(data / "invoices", store)
        figures = child("run", "--data", str(data), "--store", str(store))
        roof = child("ceiling", "--data", str(data))
        shutil.rmtree(store, ignore_errors=True)

    usage = reference_usage(usage_frame(args.subscriptions, args.events))
    want = {
        cur: {
            "fees": roof["fees"].get(cur, "0"),
            "usage": str(sum((Decimal(v) for v in usage.get(cur, {}).values()), Decimal(0))),
        }
        for cur in sorted({*roof["fees"], *usage})
    }
    got = figures["recognized"]
    exact = all(
        Decimal(got.get(cur, {}).get(k, "0")) == Decimal(v) for cur, sums in want.items() for k, v in sums.items()
    )
    # Usage by the month it was consumed in: the rows' month against the reference's, every month that differs.
    months_off = {
        f"{cur} {month}": {"recognized": str(Decimal(got_m)), "consumed": want_m}
        for cur in sorted({*usage, *figures["by_month"]})
        for month in sorted({*usage.get(cur, {}), *figures["by_month"].get(cur, {}).get("usage", {})})
        if Decimal(got_m := figures["by_month"].get(cur, {}).get("usage", {}).get(month, "0"))
        != Decimal(want_m := usage.get(cur, {}).get(month, "0"))
    }
    idempotent = figures["again_steps"] == 0 and figures["again_entries"] == 0
    print(
        f"  close: {figures['seconds']:.2f} s ({figures['cpu_seconds']:.2f} s of CPU), {figures['rows']:,} rows, "
        f"{figures['entries']} journal entries, {figures['errors']} errors, peak RSS {figures['peak_rss_mb']:,.0f} MiB"
    )
    print("    seconds per step: " + ", ".join(f"{day[5:]} {s:.2f}" for day, s, _ in figures["steps"]))
    print(f"  recognized {got}")
    verdict = f"{'exact' if exact else 'MISMATCH'}; second close: {'nothing' if idempotent else 'POSTED'}"
    print(f"  reference  {want}: {verdict}")
    if months_off:
        print(f"  usage recognized in another month than consumed: {months_off}")
    print(
        f"  ceiling: read_invoices {roof['seconds']:.2f} s ({roof['lines']:,} lines of {roof['invoices']:,} invoices); "
        f"close / ceiling = {figures['seconds'] / roof['seconds']:.0f}"
    )
    figures_out = {
        "subscriptions": args.subscriptions,
        "events": built["events"],
        "invoices": built["invoices"],
        **{f"build_{k}_seconds": round(v, 1) for k, v in built["seconds"].items()},
        "seconds": round(figures["seconds"], 3),
        "cpu_seconds": round(figures["cpu_seconds"], 3),
        "peak_rss_mb": round(figures["peak_rss_mb"]),
        "step_seconds": {day: round(s, 3) for day, s, _ in figures["steps"]},
        "rows": figures["rows"],
        "journal_entries": figures["entries"],
        "errors": figures["errors"],
        "recognized": got,
        "reference": want,
        "exact": exact,
        "usage_months_off": months_off,
        "second_close_posts_nothing": idempotent,
        "ceiling_seconds": round(roof["seconds"], 3),
        "ceiling_lines": roof["lines"],
        "ratio_to_ceiling": round(figures["seconds"] / roof["seconds"], 1),
        "goal_seconds": GOAL_SECONDS,
    }
    if args.print_only:
        print(json.dumps(figures_out, sort_keys=True))
    else:
        finish("revenue", figures_out)
    if not (exact and idempotent and not months_off):
        raise SystemExit("bench-revenue: the close's figures are wrong (see above)")


if __name__ == "__main__":
    main()
