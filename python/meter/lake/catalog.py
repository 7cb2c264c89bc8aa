"""The catalog snapshot dataset: what pricing needs from the billing catalog, as Parquet, and read back as a Snapshot.

Layout: ``<out>/catalog/tenant=<tenant>/{customers,prices,subscriptions,meters}.parquet`` and the tenant's manifest
``{"sequence": n}`` (:mod:`meter.lake.layout`).

- ``customers``: the stored customers' fields (:class:`_CustomerRow`), ``address`` and ``metadata`` as the JSON text
  they are stored as.
- ``prices``: one row per plan version and price: ``plan``, ``version``, ``effective_from``, the fields of
  :data:`PRICE_FIELDS` and ``parameters``, the model's parameters (:data:`PRICE_PARAMETERS`: tiers, package,
  percentage, matrix) as JSON text. Amounts are decimals, never floats.
- ``subscriptions``: the stored subscriptions' fields (:class:`_SubscriptionRow`), their terms (overrides, commits,
  credits, discounts, migrations, entitlements, auto top-up) as JSON text.
- ``meters``: the engine's meters, how a period's usage of each adds up (``slug``, ``event_type``, ``aggregation``,
  ``value_property``, ``group_by`` and the whole definition ``spec`` as JSON).

Each table's columns are declared once, here, and both halves use that declaration: :func:`export_catalog` encodes
with it and :func:`load_snapshot` decodes with it (``tests/test_lake.py`` holds them to a round trip). The stored
customers and subscriptions are decoded all at once into the row structs, without a catalog struct (or its checks)
each, so that a million subscriptions cost one decode.

Invariants:

- Pricing never reads the live catalog or RocksDB: an invoice is a function of these files, which a finance team can
  keep. :func:`refresh_catalog` (the invoice run's way in) writes them and returns the very tables it wrote, in
  memory, rather than reading them back, and :func:`snapshot_of` makes the :class:`Snapshot` of them;
  :func:`load_snapshot` reads the files, and both give the same snapshot.
- The manifest keeps the catalog's sequence number the files reflect, written after them: while nothing was written
  to the catalog since, only ``meters`` (the engine's) is written again, and the other files serve as they are.
- Times are UTC microseconds whatever offset the catalog stored them with (a column inferred from its values would
  take the first one's offset, which polars cannot read).
- Every file is replaced atomically (:mod:`meter.lake.files`).
- What the catalog stored is read as stored (:func:`meter.catalog.types.trusted`): rating refuses, by name, a price
  stored before the catalog checked it, instead of the read failing for the whole tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from meter.catalog.billing import BillingCatalog, Customer, Subscription
from meter.catalog.prices import Price
from meter.catalog.types import trusted
from meter.engine import Engine
from meter.exceptions import InvalidInput
from meter.lake import layout
from meter.lake.files import ExportSummary, read_manifest, write_manifest, write_parquet
from meter.schemas import MeterSpec

__all__ = [
    "PRICE_FIELDS",
    "PRICE_PARAMETERS",
    "CatalogTables",
    "Snapshot",
    "catalog_tables",
    "export_catalog",
    "load_snapshot",
    "meters_table",
    "read_meters",
    "refresh_catalog",
    "snapshot_of",
]

#: A price's scalar fields, each a column of ``prices``.
PRICE_FIELDS = (
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
#: A price's model parameters, kept together as the JSON text of ``prices.parameters`` (only those set).
PRICE_PARAMETERS = ("tiers", "package", "percentage", "matrix")
#: Every time in the snapshot: UTC microseconds, whatever offset the catalog stored it with.
_TIME = pa.timestamp("us", tz="UTC")
#: The catalog's tables, in the order they are written.
TABLES = ("customers", "prices", "subscriptions", "meters")


class _CustomerRow(msgspec.Struct):
    """A row of ``customers``: a stored customer's fields, the nested ones as the JSON text they are stored as."""

    id: str
    name: str
    currency: str
    timezone: str = "UTC"
    email: str | None = None
    address: msgspec.Raw = msgspec.Raw(b"null")
    metadata: msgspec.Raw = msgspec.Raw(b"{}")


class _SubscriptionRow(msgspec.Struct):
    """A row of ``subscriptions``: a stored subscription's fields, its terms as the JSON text they are stored as."""

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
    entitlements: msgspec.Raw = msgspec.Raw(b"[]")
    spend_ceiling: Decimal | None = None
    prepaid_only: bool = False
    auto_top_up: msgspec.Raw = msgspec.Raw(b"null")


@dataclass(frozen=True)
class CatalogTables:
    """A tenant's snapshot as the four tables the files hold."""

    customers: pa.Table
    prices: pa.Table
    subscriptions: pa.Table
    meters: pa.Table

    def named(self) -> dict[str, pa.Table]:
        return {name: getattr(self, name) for name in TABLES}


@dataclass(frozen=True)
class Snapshot:
    """The catalog snapshot of one tenant.

    Customers and subscriptions are kept as tables (``customer_table``, ``subscription_table``: the Parquet files'
    columns, terms as JSON text) and turned into objects only when asked (``customers``, ``subscriptions``,
    :meth:`subscriptions_of`): a columnar invoice run of a million subscriptions never builds them.
    """

    tenant: str
    #: (plan, version) -> the version's prices.
    prices: dict[tuple[str, int], list[Price]]
    #: meter slug -> its definition.
    meters: dict[str, MeterSpec]
    customer_table: pl.DataFrame
    subscription_table: pl.DataFrame

    @cached_property
    def customers(self) -> dict[str, Customer]:
        return {c.id: c for c in _customers(self.customer_table)}

    def customer(self, customer_id: str) -> Customer | None:
        """One customer, built when first asked for (not the million others)."""
        if customer_id not in self._found:
            row = self._customer_rows.get(customer_id)
            self._found[customer_id] = None if row is None else _customers(self.customer_table[row : row + 1])[0]
        return self._found[customer_id]

    @cached_property
    def _customer_rows(self) -> dict[str, int]:
        ids = self.customer_table.get_column("id").to_list() if self.customer_table.height else []
        return {customer_id: row for row, customer_id in enumerate(ids)}

    @cached_property
    def _found(self) -> dict[str, Customer | None]:
        return {}

    @cached_property
    def subscriptions(self) -> list[Subscription]:
        return _subscriptions(self.subscription_table)

    def subscriptions_of(self, rows: pl.Series) -> list[Subscription]:
        """The subscriptions at these positions of ``subscription_table``, in that order."""
        return _subscriptions(self.subscription_table[rows])

    def prices_of(self, sub: Subscription, version: int) -> list[Price]:
        """The prices a subscription pays on one version of its plan: the version's, with its overrides."""
        overrides = {p.id: p for p in sub.overrides} if version == sub.version else {}
        return [overrides.get(p.id, p) for p in self.prices.get((sub.plan, version), [])]


# Writing


def export_catalog(catalog: BillingCatalog, engine: Engine, tenants: list[str], out: Path) -> ExportSummary:
    """Writes a snapshot of what pricing needs from the catalog: customers, prices, subscriptions and meters.

    ``_exported.json`` keeps the catalog's sequence number the files reflect: while nothing was written to the
    catalog since, only the meters' file is written again.
    """
    summary = ExportSummary()
    # Read before the catalog: a write during the export changes it, and the next export writes the files again.
    sequence = catalog.sequence()
    for tenant in tenants:
        _export_tenant(catalog, engine, tenant, out, sequence, summary)
    return summary


def refresh_catalog(catalog: BillingCatalog, engine: Engine, tenant: str, out: Path) -> CatalogTables:
    """Exports one tenant's snapshot (as :func:`export_catalog`) and returns its tables, as written.

    The tables just written are returned from memory, not read back. When the catalog is unchanged since the files
    were written, those files are the snapshot and are read (they are the cache of the catalog's decoding); the
    meters (the engine's) are always taken from memory. :func:`snapshot_of` turns the tables into the snapshot.
    """
    meters, written = _export_tenant(catalog, engine, tenant, out, catalog.sequence(), ExportSummary())
    if written is None:
        kept = {name: _read(out, tenant, name) for name in ("customers", "prices", "subscriptions")}
        written = CatalogTables(meters=meters, **kept)
    return written


def _export_tenant(
    catalog: BillingCatalog, engine: Engine, tenant: str, out: Path, sequence: int, summary: ExportSummary
) -> tuple[pa.Table, CatalogTables | None]:
    """Writes one tenant's files; returns its meters and, unless the catalog was unchanged, the tables written."""
    meters = meters_table(engine, tenant)
    manifest = layout.manifest(layout.catalog_tenant(out, tenant))
    if read_manifest(manifest, dict[str, int], {}) == {"sequence": sequence} and all(
        layout.catalog_file(out, tenant, name).exists() for name in ("customers", "prices", "subscriptions")
    ):
        # Nothing was written to the catalog since these files: only the meters (the engine's) are written again.
        write_parquet(meters, layout.catalog_file(out, tenant, "meters"))
        summary.files += 1
        summary.rows += meters.num_rows
        summary.unchanged += 3
        return meters, None
    tables = catalog_tables(catalog, tenant, meters)
    for name, table in tables.named().items():
        write_parquet(table, layout.catalog_file(out, tenant, name))
        summary.files += 1
        summary.rows += table.num_rows
    write_manifest({"sequence": sequence}, manifest)
    return meters, tables


def catalog_tables(catalog: BillingCatalog, tenant: str, meters: pa.Table) -> CatalogTables:
    """The tenant's snapshot tables, built in memory from the catalog (``meters``: :func:`meters_table`)."""
    return CatalogTables(
        customers=_rows_table(catalog.raw_values("customer", tenant), _CustomerRow),
        prices=_prices_table(catalog, tenant),
        subscriptions=_rows_table(catalog.raw_values("subscription", tenant), _SubscriptionRow),
        meters=meters,
    )


def meters_table(engine: Engine, tenant: str) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "slug": m.slug,
                "event_type": m.event_type,
                "aggregation": m.aggregation,
                "value_property": m.value_property,
                "group_by": msgspec.json.encode(m.group_by).decode(),
                "spec": msgspec.json.encode(m.spec()).decode(),
            }
            for m in engine.list_meters(tenant)
        ]
    )


def _prices_table(catalog: BillingCatalog, tenant: str) -> pa.Table:
    prices = []
    for plan in catalog.list_plans(tenant):
        for version in plan.versions:
            for price in version.prices:
                row: dict[str, Any] = {
                    "plan": plan.id,
                    "version": version.version,
                    "effective_from": version.effective_from,
                }
                row |= {k: getattr(price, k) for k in PRICE_FIELDS}
                parameters = {k: getattr(price, k) for k in PRICE_PARAMETERS if getattr(price, k) is not None}
                row["parameters"] = msgspec.json.encode(parameters).decode()
                prices.append(row)
    table = pa.Table.from_pylist(prices)
    return table.set_column(2, "effective_from", table.column(2).cast(_TIME)) if prices else table


def _rows_table(values: list[bytes], row: type[msgspec.Struct]) -> pa.Table:
    """The rows (one stored JSON value each) as a table, columns in the struct's order; raw JSON fields as text."""
    joined = b"[" + b",".join(values) + b"]"
    # list[row] is built at run time from the row type given, which a static type cannot name.
    rows = msgspec.json.decode(joined, type=list[row]) if values else []  # type: ignore[valid-type]
    columns: dict[str, Any] = {}
    for field in msgspec.structs.fields(row):
        found = [getattr(r, field.name) for r in rows]
        if field.type is msgspec.Raw:
            found = [None if bytes(v) == b"null" else bytes(v).decode() for v in found]
        # Times in UTC whatever offset each was stored with (inferred, the column would take the first one's).
        columns[field.name] = pa.array(found, _TIME) if field.type in (datetime, datetime | None) else found
    return pa.Table.from_pydict(columns) if rows else pa.table({})


# Reading


def load_snapshot(out: Path, tenant: str) -> Snapshot:
    """The tenant's snapshot, read from the files; ``InvalidInput`` (``no_snapshot``) when they were never written."""
    return snapshot_of(tenant, CatalogTables(**{name: _read(out, tenant, name) for name in TABLES}))


def read_meters(out: Path, tenant: str, columns: list[str] | None = None) -> pl.DataFrame | None:
    """The tenant's ``meters`` table (these columns of it), or None when no snapshot was written."""
    path = layout.catalog_file(out, tenant, "meters")
    return pl.read_parquet(path, columns=columns) if path.exists() else None


def snapshot_of(tenant: str, tables: CatalogTables) -> Snapshot:
    """The snapshot the tables hold, whether just built (:func:`refresh_catalog`) or read (:func:`load_snapshot`)."""
    # What the catalog stored is read as stored: rating refuses, by name, a price stored before the catalog checked
    # it, instead of this read failing for the whole tenant.
    with trusted():
        prices: dict[tuple[str, int], list[Price]] = {}
        for row in tables.prices.to_pylist():
            fields = {k: row[k] for k in PRICE_FIELDS if row[k] is not None}
            fields |= msgspec.json.decode(row["parameters"])
            prices.setdefault((row["plan"], row["version"]), []).append(msgspec.convert(fields, Price, strict=False))
        meters = {row["slug"]: msgspec.json.decode(row["spec"], type=MeterSpec) for row in tables.meters.to_pylist()}
        return Snapshot(
            tenant,
            prices,
            meters,
            _frame(tables.customers, _CUSTOMER_TYPES),
            _frame(tables.subscriptions, _SUBSCRIPTION_TYPES),
        )


def _read(out: Path, tenant: str, name: str) -> pa.Table:
    path = layout.catalog_file(out, tenant, name)
    if not path.exists():
        raise InvalidInput(
            f"no catalog snapshot at {path}: run `meter export` (or the server's export) first", code="no_snapshot"
        )
    return pq.read_table(path)


_UTC = pl.Datetime("us", "UTC")


def _column_types(row: type[msgspec.Struct]) -> dict[str, pl.DataType]:
    """The frame types of a row struct's columns, whatever the values (a column of nulls only is written as nulls).

    Text and JSON text are String, integers Int64, times UTC microseconds; decimals stay as written (their scale is
    the catalog's).
    """
    types: dict[str, pl.DataType] = {}
    for field in msgspec.structs.fields(row):
        kind = field.type
        if kind in (str, str | None, msgspec.Raw):
            types[field.name] = pl.String()
        elif kind is int:
            types[field.name] = pl.Int64()
        elif kind in (datetime, datetime | None):
            types[field.name] = _UTC
    return types


_CUSTOMER_TYPES = _column_types(_CustomerRow)
_SUBSCRIPTION_TYPES = _column_types(_SubscriptionRow)
#: The columns of each row struct that hold JSON text, decoded when a row becomes a catalog object.
_CUSTOMER_JSON = tuple(f.name for f in msgspec.structs.fields(_CustomerRow) if f.type is msgspec.Raw)
_SUBSCRIPTION_JSON = tuple(f.name for f in msgspec.structs.fields(_SubscriptionRow) if f.type is msgspec.Raw)


def _frame(table: pa.Table, types: dict[str, pl.DataType]) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if frame.height == 0:
        return pl.DataFrame(schema=types)  # written from no rows, the file may have no columns
    # A file written before a column existed (kept while the catalog is unchanged) reads it as nulls: its defaults.
    missing = [pl.lit(None, dtype).alias(name) for name, dtype in types.items() if name not in frame.columns]
    return frame.with_columns(*missing).with_columns(pl.col(name).cast(dtype) for name, dtype in types.items())


def _customers(frame: pl.DataFrame) -> list[Customer]:
    found = []
    with trusted():
        for row in frame.to_dicts():
            for name in _CUSTOMER_JSON:
                row[name] = msgspec.json.decode(row[name]) if row[name] else None
            found.append(msgspec.convert(row, Customer))
    return found


def _subscriptions(frame: pl.DataFrame) -> list[Subscription]:
    found = []
    with trusted():
        for row in frame.to_dicts():
            for name in _SUBSCRIPTION_JSON:
                row[name] = msgspec.json.decode(row[name]) if row[name] is not None else None
            fields = {k: v for k, v in row.items() if v is not None}
            found.append(msgspec.convert(fields, Subscription, strict=False))
    return found
