"""The `meter` command line against the real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import event
from http_server import Server

from meter.catalog.keys import new_key
from meter.cli import main


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("cli") / "data", admin_key=new_key())
    yield s
    s.stop()


def run(server: Server, key: str, *args: str) -> str:
    result = CliRunner().invoke(main, [*args], env={"METER_URL": server.url, "METER_API_KEY": key, "COLUMNS": "200"},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_admin_meters_ingest_and_usage(server: Server, tmp_path: Path) -> None:
    run(server, server.admin_key, "tenants", "create", "acme")
    key = run(server, server.admin_key, "keys", "create", "acme", "--scope", "ingest", "--scope", "read",
              "--scope", "admin").splitlines()[0]
    assert key.startswith("mk_live_")
    assert "acme" in run(server, server.admin_key, "keys", "list", "--tenant", "acme")

    spec = tmp_path / "meter.json"
    spec.write_text(json.dumps({"slug": "tokens", "event_type": "llm", "aggregation": "sum",
                                "value_property": "$.tokens", "group_by": {"model": "$.model"}}))
    assert "created tokens" in run(server, key, "meters", "create", str(spec))
    yaml = tmp_path / "meters.yaml"
    yaml.write_text("- slug: calls\n  event_type: llm\n  aggregation: count\n"
                    "- slug: models\n  event_type: llm\n  aggregation: unique_count\n  value_property: $.model\n")
    out = run(server, key, "meters", "create", str(yaml))
    assert "created calls" in out and "created models" in out
    assert "tokens" in run(server, key, "meters", "list")

    ndjson = tmp_path / "events.ndjson"
    events = [event(f"n{i}", tokens=i, model="m") for i in range(2500)] + [event("n0", tokens=0, model="m")]
    ndjson.write_text("\n".join(json.dumps(e) for e in events))
    out = run(server, key, "ingest", str(ndjson), "--batch-size", "1000")
    assert "2501 events: 2500 accepted, 1 duplicates, 0 rejected" in out
    table = run(server, key, "usage", "tokens", "--from", "2026-11-23T00:00:00Z", "--to", "2026-11-24T00:00:00Z",
                "--group-by", "model")
    assert str(sum(range(2500))) in table


def test_errors_are_clear(server: Server, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["meters", "list"], env={"METER_URL": server.url, "METER_API_KEY": "nope"})
    assert result.exit_code != 0 and "unauthorized" in result.output
    broken = tmp_path / "meter.yaml"
    broken.write_text("slug: [unclosed\n")
    result = CliRunner().invoke(main, ["meters", "create", str(broken)],
                                env={"METER_URL": server.url, "METER_API_KEY": server.admin_key})
    assert result.exit_code != 0 and "is not valid YAML" in result.output


def test_export_writes_parquet_once_the_server_is_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = Server(data, admin_key=new_key())
    try:
        key = s.tenant_key("acme", ["ingest", "read", "admin"])
        with s.client(key) as c:
            c.post("/v1/meters", json={"slug": "calls", "event_type": "llm", "aggregation": "count"}).raise_for_status()
            c.post("/v1/events", json=[event(f"x{i}") for i in range(5)]).raise_for_status()
        busy = CliRunner().invoke(main, ["export", "--data-dir", str(data), "--out", str(tmp_path / "out")])
        assert busy.exit_code != 0 and "is `meter serve` running" in busy.output
    finally:
        s.stop()
    result = CliRunner().invoke(main, ["export", "--data-dir", str(data), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "exported 1 usage rows in 1 files" in result.output
    assert len(list((tmp_path / "out" / "usage" / "tenant=acme" / "meter=calls").rglob("part-0.parquet"))) == 1
    assert (tmp_path / "out" / "catalog" / "tenant=acme" / "prices.parquet").exists()


def test_catalog_from_yaml(server: Server, tmp_path: Path) -> None:
    key = server.tenant_key("catalog-co", ["read", "admin"])
    meter = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
    assert server.client(key).post("/v1/meters", json=meter).status_code == 201  # the plan's price names it
    customers = tmp_path / "customers.yaml"
    customers.write_text("- {id: cust-1, name: One, currency: EUR}\n- {id: cust-2, name: Two, currency: EUR}\n")
    plans = tmp_path / "plans.yaml"
    plans.write_text("id: pro\nname: Pro\nversions:\n  - effective_from: '2026-01-01T00:00:00Z'\n    prices:\n"
                     "      - {id: tokens, currency: EUR, model: per_unit, meter: tokens, unit_price: '0.002'}\n")
    assert "customer cust-2: saved" in run(server, key, "catalog", "put", "customers", str(customers))
    assert "plan pro: saved with 1 versions" in run(server, key, "catalog", "put", "plans", str(plans))
    assert "cust-2" in run(server, key, "catalog", "list", "customers")
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: s1\ncustomer: cust-1\nplan: pro\nversion: 9\nstart: '2026-01-01T00:00:00Z'\n")
    result = CliRunner().invoke(main, ["catalog", "put", "subscriptions", str(bad)],
                                env={"METER_URL": server.url, "METER_API_KEY": key})
    assert result.exit_code != 0 and "has no version 9" in result.output
    assert "customer cust-2: deleted" in run(server, key, "catalog", "delete", "customers", "cust-2")
    assert "cust-2" not in run(server, key, "catalog", "list", "customers")


def test_invoice_commands(server: Server, tmp_path: Path) -> None:
    from datetime import datetime, timezone

    key = server.tenant_key("invoice-co", ["read", "admin"])
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("- {id: cust-1, name: One, currency: USD}\n")
    run(server, key, "catalog", "put", "customers", str(catalog))
    plans = tmp_path / "plans.yaml"
    plans.write_text("id: pro\nname: Pro\nversions:\n  - effective_from: '2020-01-01T00:00:00Z'\n    prices:\n"
                     "      - {id: base, currency: USD, model: flat, amount: '9.99', cadence: in_advance}\n")
    run(server, key, "catalog", "put", "plans", str(plans))
    month = datetime.now(timezone.utc).strftime("%Y-%m")
    subs = tmp_path / "subs.yaml"
    subs.write_text(f"id: s1\ncustomer: cust-1\nplan: pro\nversion: 1\nstart: '{month}-01T00:00:00Z'\n")
    run(server, key, "catalog", "put", "subscriptions", str(subs))
    out = run(server, key, "invoice", "--period", month, "--finalize")
    assert "INV-000001" in out and "9.99" in out
    preview = run(server, key, "invoice", "preview", "cust-1")
    assert "base (flat)" in preview and "total 9.99 USD" in preview
