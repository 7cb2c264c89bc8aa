"""The server's periodic work: each job on a daemon thread of its own, every interval.

`PeriodicJob` runs one job every interval (the dunning job of `meter.money.payments` is one); `ExportScheduler` is
the job that writes the Parquet export of every tenant, then issues the threshold invoices due (`meter-export`).
Both are started after the stores opened (never in a degraded start, which cannot write) and stopped before they
close.

Invariants:
- A failure is reported on stderr and tried again at the next interval; the server keeps serving.
- One tenant's failing threshold invoices never stop another's.
- `stop()` returns only once the thread has finished its current run, so the stores can close under it.
- `exports_done` counts whole successful exports (the `meter_exports_total` metric).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from meter.billing.invoicer import Invoicer
from meter.catalog.keys import KeyStore

__all__ = ["ExportScheduler", "PeriodicJob"]


class PeriodicJob:
    """Runs ``job`` every ``every`` seconds on a daemon thread named ``name``, until stopped."""

    def __init__(self, name: str, every: float, job: Callable[[], object]) -> None:
        self.name, self.every, self.job = name, every, job
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                self.job()
            except Exception as e:  # noqa: BLE001 - the next interval tries again; the server keeps serving
                print(f"meter: scheduled job {self.name} failed: {e!r}", file=sys.stderr, flush=True)


class ExportScheduler(PeriodicJob):
    """Exports usage, the catalog and invoices to `out` every `every` seconds, then issues the threshold invoices."""

    def __init__(self, keys: KeyStore, invoicer: Invoicer, out: Path, every: float) -> None:
        super().__init__("meter-export", every, self.export_once)
        self.keys, self.invoicer, self.out = keys, invoicer, out
        self.exports_done = 0

    def export_once(self) -> None:
        try:
            tenants = [t.id for t in self.keys.list_tenants()]
            self.invoicer.export(tenants)
            self.exports_done += 1
        except Exception as e:  # noqa: BLE001 - the next interval tries again; the server keeps serving
            print(f"meter: scheduled export to {self.out} failed: {e!r}", file=sys.stderr, flush=True)
            return
        # One tenant's threshold invoices never stop another's.
        for tenant in tenants:
            try:
                self.invoicer.thresholds(tenant, datetime.now(UTC))
            except Exception as e:  # noqa: BLE001 - reported; the next interval tries again
                print(f"meter: threshold invoices of tenant {tenant!r} failed: {e!r}", file=sys.stderr, flush=True)
