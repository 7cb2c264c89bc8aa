"""`meter.services.Stores`: opens what is asked, closes everything on an error, and the server's degraded start."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from meter import services
from meter.catalog.billing import Customer
from meter.catalog.keys import KeyStore
from meter.services import EVERY_PART, OpenFailed, Part, Stores, StoreUnavailable, storage_full


def reopenable(data: Path, *parts: Part) -> None:
    """Every part opens again in this process: RocksDB refuses a store this process still holds."""
    Stores.open(data, parts).close()


def test_open_everything_then_close(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Stores.open(data) as stores:
        stores.keys.create_tenant("acme")
        stores.engine.create_meter("acme", {"slug": "calls", "event_type": "llm", "aggregation": "count"})
        stores.billing.put_customer("acme", Customer(id="c1", name="One", currency="EUR"))
        assert stores.invoices.list("acme") == []
        assert stores.invoicer.engine is stores.engine and stores.invoicer.out == data / "export"
        assert all(stores.has(p) for p in EVERY_PART) and stores.degraded is None
    assert sorted(p.name for p in data.iterdir()) == ["billing", "catalog", "invoices", "usage"]
    with pytest.raises(RuntimeError, match="closed"):
        _ = stores.keys
    stores.close()  # idempotent
    reopenable(data, *EVERY_PART)


def test_open_only_what_is_asked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Stores.open(data, {Part.KEYS}) as stores:
        assert [t.id for t in stores.keys.list_tenants()] == []
        assert not stores.has(Part.USAGE)
        with pytest.raises(RuntimeError, match="usage store .* was not opened"):
            _ = stores.engine
        with pytest.raises(RuntimeError, match="not opened"):
            _ = stores.invoicer
    assert [p.name for p in data.iterdir()] == ["catalog"]


def test_the_invoicer_exports_where_asked(tmp_path: Path) -> None:
    with Stores.open(tmp_path / "data", export_dir=tmp_path / "out") as stores:
        assert stores.invoicer.out == tmp_path / "out"
        assert stores.invoicer is stores.invoicer  # one per Stores: it holds the export lock


def test_a_store_that_cannot_open_closes_the_others(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "billing").write_text("not a directory")
    with pytest.raises(OpenFailed) as failed:
        Stores.open(data)
    assert failed.value.part is Part.BILLING and failed.value.path == data / "billing"
    assert failed.value.__cause__ is failed.value.cause and str(failed.value) == str(failed.value.cause)
    assert not failed.value.in_use
    reopenable(data, Part.KEYS, Part.USAGE)  # opened before billing failed, and closed since


def test_a_held_store_is_in_use(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Stores.open(data, {Part.KEYS}):
        with pytest.raises(OpenFailed) as failed:
            Stores.open(data)
    assert failed.value.part is Part.KEYS and failed.value.in_use
    with Stores.open(data, {Part.USAGE}):
        with pytest.raises(OpenFailed) as failed:
            Stores.open(data)
    # The engine's own error code is kept, so that a caller's message stays the engine's.
    assert failed.value.part is Part.USAGE and failed.value.in_use and failed.value.code != OpenFailed.code
    reopenable(data, *EVERY_PART)


def test_prepare_keys_runs_before_the_engine_and_its_error_propagates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    seen: list[bool] = []

    def prepare(keys: KeyStore) -> None:
        seen.append((data / "usage").exists())
        raise ValueError("not an operator key")

    with pytest.raises(ValueError, match="not an operator key"):
        Stores.open(data, prepare_keys=prepare)
    assert seen == [False]
    reopenable(data, Part.KEYS)


def seed(data: Path) -> None:
    with Stores.open(data) as stores:
        stores.keys.create_tenant("acme")
        stores.billing.put_customer("acme", Customer(id="c1", name="One", currency="EUR"))


def test_degraded_serves_what_opens_read_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    seed(data)
    with Stores.open_degraded(data, "disk full at startup: boom") as stores:
        assert stores.degraded == "disk full at startup: boom" and stores.failures == {}
        assert [t.id for t in stores.keys.list_tenants()] == ["acme"]
        assert [c.id for c in stores.billing.list_customers("acme")] == ["c1"]
        assert stores.invoices.list("acme") == []
        for unavailable in ("engine", "invoicer"):
            with pytest.raises(StoreUnavailable, match="unavailable: disk full at startup: boom") as e:
                getattr(stores, unavailable)
            assert e.value.code == "store_unavailable" and e.value.retry_after == 30
        assert not stores.has(Part.USAGE)
        with pytest.raises(Exception):  # noqa: B017 - read-only: rocksdict's own error
            stores.keys.create_tenant("other")
    reopenable(data, *EVERY_PART)


def test_degraded_records_a_store_that_cannot_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    seed(data)
    (data / "invoices").rename(tmp_path / "elsewhere")
    with Stores.open_degraded(data, "read-only file system at startup") as stores:
        assert list(stores.failures) == [Part.INVOICES]
        with pytest.raises(StoreUnavailable):
            _ = stores.invoices
        assert stores.has(Part.KEYS) and stores.has(Part.BILLING)


def test_open_or_degrade_degrades_on_a_full_disk_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    seed(data)

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(services, "Engine", full)
    with Stores.open_or_degrade(data) as stores:
        assert stores.degraded == "disk full at startup: [Errno 28] No space left on device"
        assert [t.id for t in stores.keys.list_tenants()] == ["acme"]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(services, "Engine", broken)
    with pytest.raises(OpenFailed, match="a bug"):
        Stores.open_or_degrade(data)
    reopenable(data, Part.KEYS)


def test_storage_full_reads_the_cause_chain() -> None:
    rofs = OpenFailed(Part.KEYS, Path("x"), Exception("IO error: While open a file: Read-only file system"))
    assert storage_full(rofs) == "read-only file system"
    assert storage_full(OpenFailed(Part.USAGE, Path("x"), OSError(errno.ENOSPC, "full"))) == "disk full"
    assert storage_full(ValueError("nope")) is None
