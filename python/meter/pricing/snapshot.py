"""The catalog as pricing sees it: read back from the export's snapshot Parquet files.

Never from the live catalog or RocksDB, so that an invoice is a function of files a finance team can keep.

``<out>/catalog/tenant=<tenant>/{customers,prices,subscriptions,meters}.parquet`` (see ``meter.export``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from meter.catalog.billing import Customer, Subscription
from meter.catalog.prices import Price
from meter.catalog.types import trusted
from meter.exceptions import InvalidInput
from meter.schemas import MeterSpec

__all__ = ["Snapshot", "load_snapshot"]

_PRICE_FIELDS = (
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


def load_snapshot(out: Path, tenant: str) -> Snapshot:
    # What the catalog stored is read as stored (see meter.catalog.types.trusted): rating refuses, by name, a price
    # stored before the catalog checked it, instead of this read failing for the whole tenant.
    with trusted():
        return _load_snapshot(out, tenant)


def _load_snapshot(out: Path, tenant: str) -> Snapshot:
    base = out / "catalog" / f"tenant={tenant}"

    def table(name: str) -> pa.Table:
        path = base / f"{name}.parquet"
        if not path.exists():
            raise InvalidInput(
                f"no catalog snapshot at {path}: run `meter export` (or the server's export) first", code="no_snapshot"
            )
        return pq.read_table(path)

    customers = _frame(table("customers"), _CUSTOMER_TYPES)
    prices: dict[tuple[str, int], list[Price]] = {}
    for row in table("prices").to_pylist():
        fields = {k: row[k] for k in _PRICE_FIELDS if row[k] is not None}
        fields |= msgspec.json.decode(row["parameters"])
        prices.setdefault((row["plan"], row["version"]), []).append(msgspec.convert(fields, Price, strict=False))
    subscriptions = _frame(table("subscriptions"), _SUBSCRIPTION_TYPES)
    meters = {row["slug"]: msgspec.json.decode(row["spec"], type=MeterSpec) for row in table("meters").to_pylist()}
    return Snapshot(tenant, prices, meters, customers, subscriptions)


_UTC = pl.Datetime("us", "UTC")
#: The columns' types whatever the values: a column of nulls only (no subscription ends) is written as nulls.
_CUSTOMER_TYPES: dict[str, pl.DataType] = {"id": pl.String(), "currency": pl.String(), "timezone": pl.String()}
_SUBSCRIPTION_TYPES: dict[str, pl.DataType] = {
    "id": pl.String(),
    "customer": pl.String(),
    "plan": pl.String(),
    "version": pl.Int64(),
    "start": _UTC,
    "end": _UTC,
    "cycle": pl.String(),
    "anchor": pl.String(),
    **dict.fromkeys(("overrides", "commits", "credits", "discounts", "migrations"), pl.String()),
}


def _frame(table: pa.Table, types: dict[str, pl.DataType]) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if frame.height == 0:
        return pl.DataFrame(schema=types)  # written from no rows, the file may have no columns
    return frame.with_columns(pl.col(name).cast(dtype) for name, dtype in types.items())


def _customers(frame: pl.DataFrame) -> list[Customer]:
    found = []
    with trusted():
        for row in frame.to_dicts():
            row["address"] = msgspec.json.decode(row["address"]) if row["address"] else None
            row["metadata"] = msgspec.json.decode(row["metadata"])
            found.append(msgspec.convert(row, Customer))
    return found


def _subscriptions(frame: pl.DataFrame) -> list[Subscription]:
    found = []
    with trusted():
        for row in frame.to_dicts():
            for terms in ("overrides", "commits", "credits", "discounts", "migrations"):
                row[terms] = msgspec.json.decode(row[terms])
            fields = {k: v for k, v in row.items() if v is not None}
            found.append(msgspec.convert(fields, Subscription, strict=False))
    return found
