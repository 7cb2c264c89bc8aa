"""Startup and shutdown: opening a data directory's stores, degraded when the disk is full or read-only.

`open_stores` is the one function that opens the four stores of a data directory (the key store `catalog/`, the
usage engine `usage/`, the billing catalog `billing/`, the invoices `invoices/`) and wires the invoicer over them;
`open_or_degrade` wraps it with the degraded fallback. (`meter/services.py` is to take over the opening itself;
`open_stores` will then call it, and nothing else here changes.)

Invariants:
- Stores open once per process, in the ASGI lifespan's startup (never at import time, never across a fork), and
  close at its shutdown, after the export scheduler has stopped.
- A failed open closes whatever it had opened before it re-raises: no RocksDB lock outlives a refused start.
- Only a full or read-only disk (`storage_full`) is survivable: the server then starts degraded, serving what the
  read-only stores hold and answering every write (and `/readyz`) 503. Any other failure refuses the start.
- The operator key: `admin_key` (METER_ADMIN_KEY) must be a well-formed meter key and may not be a tenant's; when
  none is given and the key store has no operator key, one is created and printed once.
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from meter.catalog.billing import BillingCatalog
from meter.catalog.keys import KEY_FORMAT, KeyStore, valid_checksum
from meter.engine import Engine
from meter.pricing.invoicer import Invoicer
from meter.pricing.invoices import InvoiceStore
from meter.server.context import Unavailable

__all__ = [
    "Stores",
    "admin_key_message",
    "close_quietly",
    "engine_options_from_env",
    "open_degraded",
    "open_stores",
    "open_or_degrade",
    "storage_full",
]


@dataclass
class Stores:
    """The opened stores of a data directory; `Unavailable` for those a degraded start could not open."""

    keys: KeyStore | Unavailable
    engine: Engine | Unavailable
    billing: BillingCatalog | Unavailable
    invoices: InvoiceStore | Unavailable
    invoicer: Invoicer | Unavailable
    #: Why the stores are read-only (set by `open_degraded`), or None.
    degraded: str | None = None


def open_or_degrade(data_dir: Path, admin_key: str | None, engine_options: dict[str, Any], export_dir: Path) -> Stores:
    """The stores for serving `data_dir`: all of them, or (full or read-only disk) what opens read-only."""
    if admin_key is not None and not valid_checksum(admin_key):
        raise ValueError(admin_key_message())
    try:
        return open_stores(data_dir, admin_key, engine_options, export_dir)
    except Exception as e:  # noqa: BLE001 - only a full or read-only disk is survivable; the rest is re-raised
        reason = storage_full(e)
        if reason is None:
            raise
        return open_degraded(data_dir, f"{reason} at startup: {e}")


def open_stores(data_dir: Path, admin_key: str | None, engine_options: dict[str, Any], export_dir: Path) -> Stores:
    """Open every store of `data_dir` for writing, and make sure an operator key exists.

    `engine_options` are ``meter.Engine``'s keyword arguments; `export_dir` is where invoicing writes its Parquet.
    On any failure, what was opened is closed again before the error propagates.
    """
    opened: list[Any] = []
    try:
        keys = KeyStore(data_dir / "catalog")
        opened.append(keys)
        if admin_key:
            known = keys.authenticate(admin_key)
            if known is not None and not known.operator:
                raise ValueError(
                    "METER_ADMIN_KEY is a tenant's key, not an operator key; `meter admin-key new` makes a new one"
                )
            if known is None:
                keys.create_key(None, ["admin"], secret=admin_key)
        elif not keys.has_admin_key():
            secret, _ = keys.create_key(None, ["admin"])
            print(f"meter: created the operator key (shown once, store it now): {secret}", flush=True)
        engine = Engine(data_dir / "usage", **engine_options)
        opened.append(engine)
        # The catalog checks prices' meters against the engine, and deletes meters (see routes/meters.py).
        billing = BillingCatalog(data_dir / "billing", meters=engine)
        opened.append(billing)
        invoices = InvoiceStore(data_dir / "invoices")
        opened.append(invoices)
        return Stores(keys, engine, billing, invoices, Invoicer(engine, billing, invoices, export_dir))
    except BaseException:
        for store in reversed(opened):
            close_quietly(store)
        raise


def open_degraded(data_dir: Path, reason: str) -> Stores:
    """Serve what can be read without writing.

    The key store, the billing catalog and the invoices open read-only; what cannot open (the usage engine, which
    writes at open; invoicing, which writes its export) answers 503 `store_unavailable`, and so does every write.
    """
    print(f"meter: starting degraded, read-only: {reason}", file=sys.stderr, flush=True)
    unavailable = Unavailable(reason)

    def read_only(path: str, kind: Any) -> Any:
        try:
            return kind(data_dir / path, read_only=True)
        except Exception as e:  # noqa: BLE001 - that store stays unavailable; the rest is served
            print(f"meter: {path} is unavailable too: {e}", file=sys.stderr, flush=True)
            return unavailable

    keys = read_only("catalog", KeyStore)
    billing = read_only("billing", BillingCatalog)
    invoices = read_only("invoices", InvoiceStore)
    return Stores(keys, unavailable, billing, invoices, unavailable, degraded=reason)


def close_quietly(store: object) -> None:
    """Close a store that may have half-opened on a failed disk; a failure to close is not news."""
    if store is None or isinstance(store, Unavailable):
        return
    try:
        store.close()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001, S110 - closing what half-opened on a failed disk
        pass


def storage_full(e: BaseException) -> str | None:
    """'disk full' or 'read-only file system' when `e` comes from one of them, else None.

    `e` is an OSError or a RocksDB error that only has a message. These are the failures a server can start through,
    degraded.
    """
    causes: list[BaseException] = []
    link: BaseException | None = e
    while link is not None and len(causes) < 10:
        causes.append(link)
        link = link.__cause__ or link.__context__
    for cause in causes:
        number = getattr(cause, "errno", None)
        text = str(cause).lower()
        if number == errno.ENOSPC or "no space left on device" in text:
            return "disk full"
        if number == errno.EROFS or "read-only file system" in text:
            return "read-only file system"
    return None


def admin_key_message() -> str:
    return (
        f"METER_ADMIN_KEY (or --admin-key) is not a meter key: it must be {KEY_FORMAT}; "
        "`meter admin-key new` prints one"
    )


def engine_options_from_env() -> dict[str, Any]:
    """``meter.Engine``'s settings that ``meter serve`` passes through the environment (unset: the engine's default)."""
    options: dict[str, Any] = {}
    for name, option in (
        ("METER_RETENTION_DAYS", "retention"),
        ("METER_MINUTE_AGGREGATES_DAYS", "minute_aggregates"),
        ("METER_HOUR_AGGREGATES_DAYS", "hour_aggregates"),
    ):
        if os.environ.get(name):
            options[option] = timedelta(days=float(os.environ[name]))
    if os.environ.get("METER_MAINTENANCE_EVERY"):
        options["maintenance_interval"] = timedelta(seconds=float(os.environ["METER_MAINTENANCE_EVERY"]))
    for name, option in (
        ("METER_MAX_COMBINATIONS_PER_MINUTE", "max_combinations_per_minute"),
        ("METER_MAX_CUSTOMERS_PER_MINUTE", "max_customers_per_minute"),
    ):
        if os.environ.get(name):
            options[option] = int(os.environ[name])
    return options
