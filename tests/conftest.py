"""Shared helpers: an engine, CloudEvents built the way gateways send them, and the invoicing desk.

The desk is the engine, catalog and invoicer of one tenant, which the invoicing tests share.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from meter import Engine
from meter.billing.invoicer import Invoicer
from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog, Customer
from meter.catalog.prices import Price

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def event(
    id: str,
    subject: str = "cust-1",
    *,
    type: str = "llm",
    time: datetime | None = T0,
    source: str = "gw",
    **data: Any,
) -> dict[str, Any]:
    ev: dict[str, Any] = {"specversion": "1.0", "id": id, "source": source, "type": type, "subject": subject}
    if time is not None:
        ev["time"] = time.isoformat().replace("+00:00", "Z")
    if data:
        ev["data"] = data
    return ev


def body(*events: dict[str, Any]) -> bytes:
    return json.dumps(list(events)).encode()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report shows the end of the logs of the real servers started (their stderr, fault dumps)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed and "http_server" in sys.modules:
        for name, tail in sys.modules["http_server"].log_tails():
            report.sections.append((f"server log {name}", tail))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(tmp_path / "db") as e:
        yield e


@pytest.fixture
def now() -> datetime:
    """A clock shortly after T0, so that events at T0 are inside every window."""
    return T0 + timedelta(hours=1)


# Invoicing: tenant "acme", customer "c1" in EUR, a `tokens` meter (sum of $.tokens by model), plan "pro".

OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 24, tzinfo=UTC)
#: The engine's back-dating and dedup windows in the invoicing tests: their events are from fixed 2026 dates.
YEAR = timedelta(days=400)


@dataclass
class Desk:
    engine: Engine
    catalog: BillingCatalog
    invoicer: Invoicer

    def usage(self, *events: dict[str, Any], now: datetime = NOW) -> None:
        result = self.engine.ingest("acme", body(*events), now=now)
        assert not result.issues, result.issues

    def plan(self, version_prices: list[list[dict[str, Any]]]) -> None:
        self.catalog.create_plan("acme", "pro", "Pro")
        for i, prices in enumerate(version_prices):
            self.catalog.add_plan_version(
                "acme", "pro", OCT - timedelta(days=30 - i), [msgspec.convert(p, Price) for p in prices]
            )


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    with Engine(tmp_path / "usage", durability="buffered", backdate_window=YEAR, dedup_window=YEAR) as engine:
        catalog, store = BillingCatalog(tmp_path / "billing"), InvoiceStore(tmp_path / "invoices")
        engine.create_meter(
            "acme",
            {
                "slug": "tokens",
                "event_type": "llm",
                "aggregation": "sum",
                "value_property": "$.tokens",
                "group_by": {"model": "$.model"},
            },
        )
        catalog.put_customer("acme", Customer(id="c1", name="One", currency="EUR"))
        yield Desk(engine, catalog, Invoicer(engine, catalog, store, tmp_path / "export"))
        catalog.close()
        store.close()
