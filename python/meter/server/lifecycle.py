"""Startup and shutdown: the server's stores, opened by `meter.services` (degraded when the disk is full or read-only).

`meter.services.Stores` is the one owner of opening a data directory's stores, for the server and the CLI alike;
this module adds what only the server does at startup: the operator key, the messages of a degraded start, and the
engine's settings read from the environment.

Invariants:
- Stores open once per process, in the ASGI lifespan's startup (never at import time, never across a fork), and
  close at its shutdown, after the export scheduler has stopped.
- A failed open closes whatever it had opened before it re-raises: no RocksDB lock outlives a refused start.
- Only a full or read-only disk (`meter.services.storage_full`) is survivable: the server then starts degraded,
  serving what the read-only stores hold and answering every write (and `/readyz`) 503. Any other failure refuses
  the start.
- The operator key: `admin_key` (METER_ADMIN_KEY) must be a well-formed meter key and may not be a tenant's; when
  none is given and the key store has no operator key, one is created and printed once.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from meter.catalog.keys import KEY_FORMAT, KeyStore, valid_checksum
from meter.services import Stores

__all__ = ["admin_key_message", "engine_options_from_env", "open_or_degrade"]


def open_or_degrade(data_dir: Path, admin_key: str | None, engine_options: dict[str, Any], export_dir: Path) -> Stores:
    """The stores for serving `data_dir`: all of them, or (full or read-only disk) what opens read-only."""
    if admin_key is not None and not valid_checksum(admin_key):
        raise ValueError(admin_key_message())
    stores = Stores.open_or_degrade(
        data_dir,
        engine_options=engine_options,
        export_dir=export_dir,
        prepare_keys=partial(_prepare_operator_key, admin_key),
    )
    if stores.degraded is not None:
        print(f"meter: starting degraded, read-only: {stores.degraded}", file=sys.stderr, flush=True)
        for part, error in stores.failures.items():
            print(f"meter: {part.value} is unavailable too: {error}", file=sys.stderr, flush=True)
    return stores


def _prepare_operator_key(admin_key: str | None, keys: KeyStore) -> None:
    """Make sure an operator key exists: `admin_key` (stored if new, refused if a tenant's), or a new one, printed."""
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
