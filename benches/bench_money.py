"""bench-money: what one money event costs: an invoice finalized (taxed, numbered, posted), paid, refunded.

Each operation is the real path of its HTTP route without the HTTP: `InvoiceStore.finalize` with the tax module's
preparation (New York sales tax from the catalog, each of three lines taxed), `payments.collect.record_manual` (a
bank transfer settling the invoice), `collect.start_refund` (a manual refund of part of it). Every one is a synced
write of the invoice store holding the state change, its journal entry, the account totals it moves and its outgoing
event. Then the reads the books serve: the trial balance (from the running totals), a customer's entries (through
the journal's customer index), and the ledger's Parquet export.

The peer in the same run is the floor of any durable write on this disk: one synced rocksdict write of a value the
size of a finalized invoice, timed the same way. Figures: operations per second and latency percentiles per kind,
CPU seconds per operation (the process is the only client: its CPU is all the work), and the bytes (keys and values,
before compression) the store holds more per invoice taken through the three operations: the finalized invoice over
its draft, three journal entries and their indexes, the account totals, the payment with its refund, five events.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
import msgspec  # noqa: E402
from _common import finish, methodology, percentile  # noqa: E402
from meter.billing.invoices import Invoice, InvoiceLine  # noqa: E402
from meter.billing.store import InvoiceStore  # noqa: E402
from meter.catalog.billing import Address, BillingCatalog, Customer  # noqa: E402
from meter.catalog.tax import TaxRate, TaxSettings  # noqa: E402
from meter.lake.ledger import export_ledger  # noqa: E402
from meter.money import reports  # noqa: E402
from meter.money.payments import collect  # noqa: E402
from meter.money.payments.records import PaymentBody, RefundBody  # noqa: E402
from meter.money.tax import Taxes  # noqa: E402
from rocksdict import Rdict, WriteOptions  # noqa: E402

TENANT = "bench"
START = datetime(2026, 11, 1, tzinfo=UTC)
CUSTOMERS = 100


def draft(n: int) -> Invoice:
    lines = [
        InvoiceLine(
            kind="usage",
            description=f"tokens, model {m}",
            amount=Decimal(f"{10 + n % 7}.{m}5"),
            period_start=START,
            period_end=START,
            meter="tokens",
            quantity=Decimal(1000 * (m + 1)),
        )
        for m in range(3)
    ]
    total = sum((line.amount for line in lines), Decimal("0.00"))
    return Invoice(
        id=f"sub-{n:07d}-20261101",
        tenant=TENANT,
        customer=f"cust-{n % CUSTOMERS:04d}",
        subscription=f"sub-{n:07d}",
        currency="USD",
        reason="cycle",
        period_start=START,
        period_end=START,
        issued_at=START,
        lines=lines,
        subtotal=total,
        total=total,
    )


def stored_bytes(store: InvoiceStore) -> int:
    """Keys and values the store holds, before RocksDB's compression (what a lifecycle adds is what it costs)."""
    return sum(len(key) + len(value) for key, value in store.raw_items(""))


def timed(ops: list[Callable[[], object]]) -> dict[str, float]:
    latencies: list[float] = []
    cpu, wall = time.process_time(), time.perf_counter()
    for op in ops:
        t = time.perf_counter()
        op()
        latencies.append(time.perf_counter() - t)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    latencies.sort()
    return {
        "ops_per_s": round(len(ops) / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "cpu_us_per_op": round(cpu / len(ops) * 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--invoices", type=int, default=2_000, help="invoices taken through the three operations")
    args = ap.parse_args()
    n = args.invoices
    methodology(
        "bench-money",
        {
            "invoices": n,
            "customers": CUSTOMERS,
            "lines_per_invoice": 3,
            "operations": "finalize (NY sales tax 8.875 %, exclusive), manual payment, partial refund",
            "peer": "one synced rocksdict write of a finalized invoice's bytes",
        },
        {
            "durability": "every operation one synced write batch",
            "client": "in-process, one thread: its CPU share is the whole of the work measured",
        },
    )
    work = Path(tempfile.mkdtemp(prefix="meter-bench-money-"))
    try:
        catalog, store = BillingCatalog(work / "billing"), InvoiceStore(work / "invoices")
        catalog.put_tax_settings(TENANT, TaxSettings(country="US", region="NY"))
        ny = {"id": "ny", "name": "NY sales tax", "country": "US", "region": "NY", "percentage": Decimal("8.875")}
        catalog.create_tax_rate(TENANT, TaxRate(**ny, effective_from=START))
        for c in range(CUSTOMERS):
            address = Address(country="US", region="NY")
            catalog.put_customer(TENANT, Customer(id=f"cust-{c:04d}", name="c", currency="USD", address=address))
        drafts = [draft(i) for i in range(n)]
        for d in drafts:
            store.save_draft(d)
        before = stored_bytes(store)
        taxer = Taxes(catalog).taxer(TENANT)
        finalized: list[Invoice] = []
        figures: dict[str, object] = {"invoices": n}
        figures["finalize"] = timed(
            [lambda d=d: finalized.append(store.finalize(TENANT, d.id, prepare=taxer)) for d in drafts]  # type: ignore[misc]
        )
        payments: list[str] = []

        def pay(invoice: Invoice) -> None:
            body = PaymentBody(amount=invoice.amount_remaining or Decimal(0), reference="wire")
            payments.append(collect.record_manual(store, TENANT, invoice.id, body).id)

        figures["payment"] = timed([lambda i=i: pay(i) for i in finalized])  # type: ignore[misc]
        figures["refund"] = timed(
            [
                lambda p=p: collect.start_refund(store, TENANT, p, RefundBody(amount=Decimal("1.00"), reason="x"))
                for p in payments
            ]  # type: ignore[misc]
        )
        per_invoice = (stored_bytes(store) - before) / n
        t = time.perf_counter()
        trial = reports.trial_balance(store, TENANT)
        figures["trial_balance_ms"] = round((time.perf_counter() - t) * 1000, 2)
        assert trial.balanced and trial.entries == 3 * n, trial
        t = time.perf_counter()
        entries = reports.entries(store, TENANT, reports.EntryFilter(customer="cust-0001"), limit=10_000)
        figures["customer_entries_ms"] = round((time.perf_counter() - t) * 1000, 2)
        assert len(entries.data) == 3 * len(range(1, n, CUSTOMERS)), len(entries.data)
        t = time.perf_counter()
        export_ledger(store, [TENANT], work / "export")
        figures["ledger_export_ms"] = round((time.perf_counter() - t) * 1000, 2)
        figures["stored_bytes_per_invoice_lifecycle"] = round(per_invoice)
        tax = sum((i.tax or Decimal(0) for i in finalized), Decimal(0))
        figures["tax_total"] = str(tax)
        store.close()
        catalog.close()

        # The peer: the floor of a durable write here.
        floor = Rdict(os.fspath(work / "floor"))
        sync = WriteOptions()
        sync.sync = True
        value = msgspec.json.encode(finalized[0])
        figures["peer_synced_write"] = timed(
            [lambda i=i: floor.put(f"k{i}".encode(), value, sync) for i in range(n)]  # type: ignore[misc]
        )
        floor.close()
        for kind in ("finalize", "payment", "refund"):
            kind_figures = figures[kind]
            assert isinstance(kind_figures, dict)
            peer = figures["peer_synced_write"]
            assert isinstance(peer, dict)
            kind_figures["x_peer_p50"] = round(kind_figures["p50_ms"] / peer["p50_ms"], 2)
        finish("money", figures)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
