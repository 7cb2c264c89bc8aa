"""The catalog as pricing sees it: read back from the export's snapshot Parquet files, never from the live catalog
or RocksDB, so that an invoice is a function of files a finance team can keep.

``<out>/catalog/tenant=<tenant>/{customers,prices,subscriptions,meters}.parquet`` (see ``meter.export``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq

from meter.catalog.billing import Customer, Subscription
from meter.catalog.prices import Price
from meter.catalog.types import trusted
from meter.exceptions import InvalidInput
from meter.schemas import MeterSpec

__all__ = ["Snapshot", "load_snapshot"]

_PRICE_FIELDS = ("id", "currency", "model", "cadence", "meter", "amount", "unit_price", "free_allowance", "minimum",
                 "maximum")


@dataclass(frozen=True)
class Snapshot:
    tenant: str
    customers: dict[str, Customer]
    #: (plan, version) -> the version's prices.
    prices: dict[tuple[str, int], list[Price]]
    subscriptions: list[Subscription]
    #: meter slug -> its definition.
    meters: dict[str, MeterSpec]

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

    def rows(name: str) -> list[dict[str, Any]]:
        path = base / f"{name}.parquet"
        if not path.exists():
            raise InvalidInput(f"no catalog snapshot at {path}: run `meter export` (or the server's export) first",
                               code="no_snapshot")
        return pq.read_table(path).to_pylist()

    customers = {}
    for row in rows("customers"):
        row["address"] = msgspec.json.decode(row["address"]) if row["address"] else None
        row["metadata"] = msgspec.json.decode(row["metadata"])
        customers[row["id"]] = msgspec.convert(row, Customer)
    prices: dict[tuple[str, int], list[Price]] = {}
    for row in rows("prices"):
        fields = {k: row[k] for k in _PRICE_FIELDS if row[k] is not None}
        fields |= msgspec.json.decode(row["parameters"])
        prices.setdefault((row["plan"], row["version"]), []).append(msgspec.convert(fields, Price, strict=False))
    subscriptions = []
    for row in rows("subscriptions"):
        for terms in ("overrides", "commits", "credits", "discounts", "migrations"):
            row[terms] = msgspec.json.decode(row[terms])
        fields = {k: v for k, v in row.items() if v is not None}
        subscriptions.append(msgspec.convert(fields, Subscription, strict=False))
    meters = {row["slug"]: msgspec.json.decode(row["spec"], type=MeterSpec) for row in rows("meters")}
    return Snapshot(tenant, customers, prices, subscriptions, meters)
