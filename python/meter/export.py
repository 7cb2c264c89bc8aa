"""Usage and the billing catalog exported as hive-partitioned Parquet (zstd) for pricing, which never reads RocksDB.

Layout: ``<out>/usage/tenant=<tenant>/meter=<slug>/date=<YYYY-MM-DD>/part-0.parquet``, one row per customer, minute and
combination of the meter's dimensions, ordered by customer then minute: ``customer``, one column per dimension,
``window_start``, ``window_end`` (UTC, ``[start, end)``), ``value`` (decimal128(38, 9)) and ``events``. A meter is a
directory of its own because each meter has its own dimensions (and each price charges one meter). A day is written
while its usage changes, long before the engine rolls its minutes up to hours (``minute_aggregates``); a day exported
for the first time after that (a new export directory) has one row per hour (or UTC day), as ``window_end`` says.

Raw events: ``<out>/events/...`` (``export_events``) is the long-term record of every accepted event; the engine
drops its retained events only once they are written there.

Catalog snapshots: ``<out>/catalog/tenant=<tenant>/{customers,prices,subscriptions,meters}.parquet``. Prices have one
row per plan version and price, with the model's parameters (tiers, package, percentage, matrix) as JSON text; amounts
are decimals, never floats.

Each file is written to a temporary name, fsynced, renamed over the old one, and its directory fsynced: a crash
leaves the old file or the new one, never a torn one. An export rewrites only the days whose usage changed since the
last one (including by late events), with the same rows for the same usage.
Data crosses from Rust as Arrow (PyCapsule stream), without per-row Python objects.
"""

from __future__ import annotations

import bisect
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal, cast

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meter.billing.invoices import Fresh, Invoice, InvoiceStore
from meter.catalog.billing import BillingCatalog
from meter.encoding import encode_json
from meter.engine import Engine
from meter.exceptions import InvalidInput
from meter.schemas import MeterSpec

__all__ = ["ExportSummary", "FreshWriter", "export_catalog", "export_events", "export_invoices", "export_usage"]

_DAY = timedelta(days=1)


class ExportSummary(msgspec.Struct):
    files: int = 0
    rows: int = 0
    #: Days left as they were: nothing counted in them since they were last written.
    unchanged: int = 0


def export_usage(
    engine: Engine, tenants: list[str], out: Path, progress: Callable[[str], None] | None = None
) -> ExportSummary:
    """Writes the days whose usage changed since the last export into `out` (all of them the first time).

    Events are only ever added, so a day changed exactly when its count of events did: `_exported.json` beside each
    tenant's meters keeps, per meter id and day, the count last written. It is written after the files, so a crash
    in between only means writing the same days again. Meters deleted since lose their directory.
    """
    summary = ExportSummary()
    for tenant in tenants:
        base = out / "usage" / f"tenant={tenant}"
        manifest_path = base / "_exported.json"
        exported: dict[str, int] = (
            msgspec.json.decode(manifest_path.read_bytes(), type=dict[str, int]) if manifest_path.exists() else {}
        )
        written: dict[str, int] = {}
        meters = engine.list_meters(tenant)
        for meter in meters:
            changed: list[tuple[datetime, Path]] = []
            for day, events in engine.day_counts(tenant, meter.slug).items():
                key, path = (
                    f"{meter.id}/{day:%Y-%m-%d}",
                    base / f"meter={meter.slug}" / f"date={day:%Y-%m-%d}" / "part-0.parquet",
                )
                # The count read here may be older than the rows written next, never newer: at worst the next
                # export writes the day again.
                written[key] = events
                if exported.get(key) == events and path.exists():
                    summary.unchanged += 1
                    continue
                changed.append((day, path))
            for day, _, rows in _write_days(engine, tenant, meter.slug, changed):
                summary.files += 1
                summary.rows += rows
                if progress:
                    progress(f"{tenant}/{meter.slug}/{day:%Y-%m-%d}: {rows} rows")
        live = {f"meter={m.slug}" for m in meters}
        for gone in base.glob("meter=*") if base.exists() else ():
            if gone.name not in live:
                shutil.rmtree(gone)
        if written != exported:
            write_file_atomically(msgspec.json.encode(written), manifest_path)
    return summary


#: Consecutive days read from the engine in one pass (the memory of one pass: its rows, as Arrow).
_DAYS_PER_READ = 8


def _write_days(
    engine: Engine, tenant: str, meter: str, days: list[tuple[datetime, Path]]
) -> Iterator[tuple[datetime, Path, int]]:
    """Writes each day's file; consecutive days come from one read of the engine.

    The engine keeps a meter's rows by customer then minute, so that reading one day costs a pass over them all.
    """
    runs: list[list[tuple[datetime, Path]]] = []
    for day, path in sorted(days, key=lambda d: d[0]):
        if runs and runs[-1][-1][0] + _DAY == day and len(runs[-1]) < _DAYS_PER_READ:
            runs[-1].append((day, path))
        else:
            runs.append([(day, path)])
    for run in runs:
        if len(run) == 1:
            day, path = run[0]
            yield day, path, write_atomically(engine.minutes(tenant, meter, start=day, end=day + _DAY), path)
            continue
        table = engine.minutes(tenant, meter, start=run[0][0], end=run[-1][0] + _DAY).read_all()
        starts = table.column("window_start")
        for day, path in run:
            # Filtering keeps the engine's order (customer, then minute), as a read of the day alone gives it.
            inside = pc.and_(
                pc.greater_equal(starts, pa.scalar(day, starts.type)),
                pc.less(starts, pa.scalar(day + _DAY, starts.type)),
            )
            yield day, path, write_atomically(table.filter(inside), path)


def export_events(engine: Engine, tenants: list[str], out: Path, page: int = 1_000_000) -> ExportSummary:
    """Appends the raw events committed since the last export.

    Files are ``events/tenant=<t>/date=<event day>/part-<first commit>-<last commit>.parquet``. Retained events never
    change, so files are only added, never rewritten.

    `_exported.json` keeps the last commit written, after the files; a crash in between leaves files starting at the
    next commit, which the next export removes before writing them again.

    Then the engine learns it (``Engine.events_exported``): this export is the long-term record, and retention drops
    a tenant's retained events only once they are written here (and older than ``retention``). A tenant never
    exported keeps them all.
    """
    summary = ExportSummary()
    for tenant in tenants:
        base = out / "events" / f"tenant={tenant}"
        manifest_path = base / "_exported.json"
        after = (
            msgspec.json.decode(manifest_path.read_bytes(), type=dict[str, int])["after_seq"]
            if manifest_path.exists()
            else 0
        )
        if after:
            # Said again: the engine keeps the mark without syncing it, so a crash may have lost it.
            try:
                engine.events_exported(tenant, after)
            except InvalidInput:
                pass  # a manifest beyond the engine's last commit is another data directory's: nothing to say
        while True:
            table, last = engine.retained_events(tenant, after, page)
            if table.num_rows == 0:
                break
            for leftover in base.glob(f"date=*/part-{after + 1:020d}-*.parquet"):
                leftover.unlink()
            # The UTC day of each event (a cast: strftime took 1.2 s per million rows, this 0.03 s).
            days = pc.cast(table.column("time"), pa.date32())
            for day in pc.unique(days).to_pylist():
                assert day is not None, "an event's time is never null"
                rows = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
                write_atomically(rows, base / f"date={day.isoformat()}" / f"part-{after + 1:020d}-{last:020d}.parquet")
                summary.files += 1
                summary.rows += rows.num_rows
            write_file_atomically(msgspec.json.encode({"after_seq": last}), manifest_path)
            engine.events_exported(tenant, last)  # only once the files and the manifest are durable
            after = last
    return summary


def export_catalog(catalog: BillingCatalog, engine: Engine, tenants: list[str], out: Path) -> ExportSummary:
    """Writes a snapshot of what pricing needs from the catalog.

    Customers, prices, subscriptions, and the meters (how a period's usage of each adds up). `_exported.json` keeps the
    catalog's sequence number the files reflect: while nothing was written to the catalog since, only the meters' file
    is written again.
    """
    summary = ExportSummary()
    # Read before the catalog: a write during the export changes it, and the next export writes the files again.
    sequence = catalog.sequence()
    for tenant in tenants:
        meters = [
            {
                "slug": m.slug,
                "event_type": m.event_type,
                "aggregation": m.aggregation,
                "value_property": m.value_property,
                "group_by": msgspec.json.encode(m.group_by).decode(),
                "spec": msgspec.json.encode(_spec_of(m)).decode(),
            }
            for m in engine.list_meters(tenant)
        ]
        base = out / "catalog" / f"tenant={tenant}"
        manifest = base / "_exported.json"
        if (
            manifest.exists()
            and msgspec.json.decode(manifest.read_bytes()) == {"sequence": sequence}
            and all((base / f"{name}.parquet").exists() for name in ("customers", "prices", "subscriptions"))
        ):
            # Nothing was written to the catalog since these files: only the meters (the engine's) are written again.
            write_atomically(pa.Table.from_pylist(meters), base / "meters.parquet")
            summary.files += 1
            summary.rows += len(meters)
            summary.unchanged += 3
            continue
        customers = _columns(catalog.raw_values("customer", tenant), _CustomerRow)
        prices = []
        for plan in catalog.list_plans(tenant):
            for version in plan.versions:
                for price in version.prices:
                    row = {
                        "plan": plan.id,
                        "version": version.version,
                        "effective_from": version.effective_from,
                        **{
                            k: getattr(price, k)
                            for k in (
                                "id",
                                "currency",
                                "model",
                                "cadence",
                                "meter",
                                "amount",
                                "unit_price",
                                "free_allowance",
                                "minimum",
                                "maximum",
                            )
                        },
                    }
                    parameters = {
                        k: getattr(price, k)
                        for k in ("tiers", "package", "percentage", "matrix")
                        if getattr(price, k) is not None
                    }
                    row["parameters"] = msgspec.json.encode(parameters).decode()
                    prices.append(row)
        subscriptions = _columns(catalog.raw_values("subscription", tenant), _SubscriptionRow)
        for name, table in (
            ("customers", customers),
            ("prices", pa.Table.from_pylist(prices)),
            ("subscriptions", subscriptions),
            ("meters", pa.Table.from_pylist(meters)),
        ):
            write_atomically(table, base / f"{name}.parquet")
            summary.files += 1
            summary.rows += table.num_rows
        write_file_atomically(msgspec.json.encode({"sequence": sequence}), manifest)
    return summary


# The stored customers and subscriptions as the snapshot's rows: their fields, the nested ones (terms, address,
# metadata) as the JSON text they are stored as. Decoded all at once, without a catalog struct (or its checks) each.


class _CustomerRow(msgspec.Struct):
    id: str
    name: str
    currency: str
    timezone: str = "UTC"
    email: str | None = None
    address: msgspec.Raw = msgspec.Raw(b"null")
    metadata: msgspec.Raw = msgspec.Raw(b"{}")


class _SubscriptionRow(msgspec.Struct):
    id: str
    customer: str
    plan: str
    version: int
    start: datetime
    end: datetime | None = None
    cycle: str = "monthly"
    anchor: str = "calendar"
    threshold: Decimal | None = None
    overrides: msgspec.Raw = msgspec.Raw(b"[]")
    commits: msgspec.Raw = msgspec.Raw(b"[]")
    credits: msgspec.Raw = msgspec.Raw(b"[]")
    discounts: msgspec.Raw = msgspec.Raw(b"[]")
    migrations: msgspec.Raw = msgspec.Raw(b"[]")


def _columns(values: list[bytes], row: type[msgspec.Struct]) -> pa.Table:
    """The rows (one stored JSON value each) as a table, columns in the struct's order; raw JSON fields as text."""
    joined = b"[" + b",".join(values) + b"]"
    # list[row] is built at run time from the row type given, which a static type cannot name.
    rows = msgspec.json.decode(joined, type=list[row]) if values else []  # type: ignore[valid-type]
    columns = {}
    for name in row.__struct_fields__:
        found = [getattr(r, name) for r in rows]
        if found and isinstance(found[0], msgspec.Raw):
            found = [None if bytes(v) == b"null" else bytes(v).decode() for v in found]
        columns[name] = found
    return pa.Table.from_pydict(columns) if rows else pa.table({})


def export_invoices(
    store: InvoiceStore, tenants: list[str], out: Path, fresh: dict[str, Fresh] | None = None
) -> ExportSummary:
    """Writes every invoice (drafts, finalized, void) and its lines for finance tools.

    Files are ``invoices/tenant=<t>/{invoices,invoice_lines,credit_notes}.parquet``. Amounts are decimals; a line's
    details are JSON text (decimals as plain text, see ``meter.encoding``), the invoices it corrects a comma-separated
    list.

    Derived from the invoices store, which refuses what these files cannot hold (``InvoiceStore`` checks amounts
    against ``decimal128(38, 9)`` before it writes), so a stored invoice never makes this fail. ``fresh`` holds, per
    tenant, the rows of invoices just stored (an invoice run's drafts, see ``meter.pricing.batch``): those are taken
    as they are, a part at a time, instead of being read back and decoded one by one.
    """
    summary = ExportSummary()
    for tenant in tenants:
        given = (fresh or {}).get(tenant)
        base = out / "invoices" / f"tenant={tenant}"
        try:
            skip = given.ids if given is not None else frozenset()
            invoices, lines = [], []
            for raw in store.stored_except(tenant, skip):
                invoice = msgspec.json.decode(raw, type=Invoice)
                row = msgspec.to_builtins(invoice, builtin_types=(datetime, Decimal))
                for i, line in enumerate(row.pop("lines"), start=1):
                    line["details"] = encode_json(line.get("details", [])).decode()
                    line["corrects"] = ", ".join(line.get("corrects", [])) or None
                    lines.append({"invoice": invoice.id, "number": invoice.number, "line": i, **line})
                invoices.append(row)
            # In the store's order (by id): the given rows and what was read are each in that order, and merged.
            for name, rows, schema, key in (
                ("invoices", invoices, _INVOICE_SCHEMA, "id"),
                ("invoice_lines", lines, _LINE_SCHEMA, "invoice"),
            ):
                read = pa.Table.from_pylist(rows, schema=schema)
                written = given.directory / f"{name}.parquet" if given is not None else None
                summary.rows += _write_merged(read, written, schema, key, base / f"{name}.parquet")
                summary.files += 1
        finally:
            if given is not None:
                given.discard()
        notes = pa.Table.from_pylist(
            [msgspec.to_builtins(n, builtin_types=(datetime, Decimal)) for n in store.credit_notes(tenant)],
            schema=_NOTE_SCHEMA,
        )
        write_atomically(notes, base / "credit_notes.parquet")
        summary.files += 1
        summary.rows += notes.num_rows
    return summary


def _write_merged(read: pa.Table, given: Path | None, schema: pa.Schema, key: str, path: Path) -> int:
    """Writes ``read`` and the rows of the file ``given``, each sorted by ``key``, as one file; the rows written.

    The file is sorted by ``key`` (then line), as the store keeps the invoices. ``given`` alone is moved into place;
    otherwise the two are merged a row group of ``given`` at a time.
    """
    order: list[tuple[str, Literal["ascending", "descending"]]] = [(key, "ascending")]
    order += [("line", "ascending")] if key == "invoice" else []
    if given is None:
        return write_atomically(read.take(pc.sort_indices(read, sort_keys=order)) if read.num_rows else read, path)
    rows = pq.ParquetFile(given).metadata.num_rows
    if read.num_rows == 0:
        _replace(path, lambda tmp: os.replace(given, tmp))
        return int(rows)
    keys = read.column(key).to_pylist()
    written = 0

    def write(tmp: Path) -> None:
        nonlocal written
        at = 0
        source = pq.ParquetFile(given)
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for group in range(source.num_row_groups):
                table = source.read_row_group(group).cast(schema)
                if table.num_rows == 0:
                    continue
                upto = bisect.bisect_right(keys, table.column(key)[-1].as_py(), lo=at)
                if upto > at:  # rows read from the store fall among these: merged in order
                    table = pa.concat_tables([read.slice(at, upto - at), table])
                    table = table.take(pc.sort_indices(table, sort_keys=order))
                at = upto
                writer.write_table(table)
                written += table.num_rows
            if at < read.num_rows:
                writer.write_table(read.slice(at))
                written += read.num_rows - at

    _replace(path, write)
    return written


class FreshWriter:
    """Writes an invoice run's rows for the invoices export as it stores them (see ``Fresh``), a chunk at a time."""

    def __init__(self, directory: Path) -> None:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        self.directory, self.ids = directory, set[str]()
        self._invoices = pq.ParquetWriter(directory / "invoices.parquet", _INVOICE_SCHEMA, compression="zstd")
        self._lines = pq.ParquetWriter(directory / "invoice_lines.parquet", _LINE_SCHEMA, compression="zstd")

    def write(self, invoices: pa.Table, lines: pa.Table) -> None:
        """Rows in the export's columns, after those written before in the order of the ids."""
        self._invoices.write_table(invoices.select(_INVOICE_SCHEMA.names).cast(_INVOICE_SCHEMA))
        self._lines.write_table(lines.select(_LINE_SCHEMA.names).cast(_LINE_SCHEMA))
        self.ids.update(cast("list[str]", invoices.column("id").to_pylist()))  # ids are never null

    def close(self) -> Fresh:
        self._invoices.close()
        self._lines.close()
        return Fresh(self.directory, frozenset(self.ids))


_MONEY: pa.DataType = pa.decimal128(38, 9)
_UTC: pa.DataType = pa.timestamp("us", tz="UTC")
_INVOICE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("number", pa.string()),
        ("status", pa.string()),
        ("tenant", pa.string()),
        ("customer", pa.string()),
        ("subscription", pa.string()),
        ("currency", pa.string()),
        ("reason", pa.string()),
        ("period_start", _UTC),
        ("period_end", _UTC),
        ("issued_at", _UTC),
        ("subtotal", _MONEY),
        ("total", _MONEY),
        ("finalized_at", _UTC),
        ("voided_at", _UTC),
        ("period", pa.string()),
        ("usage_start", _UTC),
        ("usage_end", _UTC),
        ("usage_period", pa.string()),
        ("reissues", pa.string()),
    ]
)
_LINE_FIELDS: list[tuple[str, pa.DataType]] = [
    ("invoice", pa.string()),
    ("number", pa.string()),
    ("line", pa.int32()),
    ("kind", pa.string()),
    ("description", pa.string()),
    ("amount", _MONEY),
    ("period_start", _UTC),
    ("period_end", _UTC),
    ("key", pa.string()),
    ("price", pa.string()),
    ("version", pa.int32()),
    ("model", pa.string()),
    ("meter", pa.string()),
    ("quantity", _MONEY),
    ("rated", _MONEY),
    ("details", pa.string()),
    ("events", pa.string()),
    ("grant", pa.string()),
    ("timing", pa.string()),
    ("billed", _MONEY),
    ("billed_quantity", _MONEY),
    ("corrects", pa.string()),
]
_LINE_SCHEMA = pa.schema(_LINE_FIELDS)
_NOTE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("number", pa.string()),
        ("invoice", pa.string()),
        ("amount", _MONEY),
        ("reason", pa.string()),
        ("created_at", _UTC),
    ]
)


def _spec_of(meter: MeterSpec) -> MeterSpec:
    """A stored meter's definition alone (without the engine's id and creation time)."""
    return MeterSpec(**{name: getattr(meter, name) for name in MeterSpec.__struct_fields__})


def write_atomically(data: pa.Table | pa.RecordBatchReader, path: Path) -> int:
    """Writes a table, or a stream batch by batch (each a row group), and returns the rows written.

    The old file or the new one survives a crash, never a torn one.
    """
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        if isinstance(data, pa.Table):
            pq.write_table(data, tmp, compression="zstd")
            rows = data.num_rows
            return
        with pq.ParquetWriter(tmp, data.schema, compression="zstd") as writer:
            for batch in data:
                writer.write_batch(batch)
                rows += batch.num_rows

    _replace(path, write)
    return rows


def write_file_atomically(data: bytes, path: Path) -> None:
    _replace(path, lambda tmp: tmp.write_bytes(data))


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    # The temporary name starts with a dot, so Parquet readers skip one a crash leaves behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
