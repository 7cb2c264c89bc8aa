"""The `meter` command line against the real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import event
from http_server import Server
from meter.catalog.keys import new_key
from meter.cli import main

# Events go through a real server, which accepts them from 35 days back only: a fixed date (conftest's T0) would make
# these tests fail a month after it. So: an hour ago, and usage over every year.
RECENT = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
ALL_TIME = ["--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("cli") / "data", admin_key=new_key())
    yield s
    s.stop()


def run(server: Server, key: str, *args: str) -> str:
    result = CliRunner().invoke(
        main, [*args], env={"METER_URL": server.url, "METER_API_KEY": key, "COLUMNS": "200"}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_admin_meters_ingest_and_usage(server: Server, tmp_path: Path) -> None:
    run(server, server.admin_key, "tenants", "create", "acme")
    key = run(
        server, server.admin_key, "keys", "create", "acme", "--scope", "ingest", "--scope", "read", "--scope", "admin"
    ).splitlines()[0]
    assert key.startswith("mk_live_")
    assert "acme" in run(server, server.admin_key, "keys", "list", "--tenant", "acme")

    spec = tmp_path / "meter.json"
    spec.write_text(
        json.dumps(
            {
                "slug": "tokens",
                "event_type": "llm",
                "aggregation": "sum",
                "value_property": "$.tokens",
                "group_by": {"model": "$.model"},
            }
        )
    )
    assert "created tokens" in run(server, key, "meters", "create", str(spec))
    yaml = tmp_path / "meters.yaml"
    yaml.write_text(
        "- slug: calls\n  event_type: llm\n  aggregation: count\n"
        "- slug: models\n  event_type: llm\n  aggregation: unique_count\n  value_property: $.model\n"
    )
    out = run(server, key, "meters", "create", str(yaml))
    assert "created calls" in out and "created models" in out
    assert "tokens" in run(server, key, "meters", "list")

    ndjson = tmp_path / "events.ndjson"
    events = [event(f"n{i}", time=RECENT, tokens=i, model="m") for i in range(2500)]
    events += [event("n0", time=RECENT, tokens=0, model="m")]
    ndjson.write_text("\n".join(json.dumps(e) for e in events))
    out = run(server, key, "ingest", str(ndjson), "--batch-size", "1000")
    assert "2501 events: 2500 accepted, 1 duplicates, 0 rejected" in out
    table = run(server, key, "usage", "tokens", *ALL_TIME, "--group-by", "model")
    assert str(sum(range(2500))) in table


def test_errors_are_clear(server: Server, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["meters", "list"], env={"METER_URL": server.url, "METER_API_KEY": "nope"})
    assert result.exit_code != 0 and "unauthorized" in result.output
    broken = tmp_path / "meter.yaml"
    broken.write_text("slug: [unclosed\n")
    result = CliRunner().invoke(
        main, ["meters", "create", str(broken)], env={"METER_URL": server.url, "METER_API_KEY": server.admin_key}
    )
    assert result.exit_code != 0 and "is not valid YAML" in result.output


def test_export_writes_parquet_once_the_server_is_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = Server(data, admin_key=new_key())
    try:
        key = s.tenant_key("acme", ["ingest", "read", "admin"])
        with s.client(key) as c:
            c.post("/v1/meters", json={"slug": "calls", "event_type": "llm", "aggregation": "count"}).raise_for_status()
            c.post("/v1/events", json=[event(f"x{i}", time=RECENT) for i in range(5)]).raise_for_status()
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
    plans.write_text(
        "id: pro\nname: Pro\nversions:\n  - effective_from: '2026-01-01T00:00:00Z'\n    prices:\n"
        "      - {id: tokens, currency: EUR, model: per_unit, meter: tokens, unit_price: '0.002'}\n"
    )
    assert "customer cust-2: saved" in run(server, key, "catalog", "put", "customers", str(customers))
    assert "plan pro: saved with 1 versions" in run(server, key, "catalog", "put", "plans", str(plans))
    assert "cust-2" in run(server, key, "catalog", "list", "customers")
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: s1\ncustomer: cust-1\nplan: pro\nversion: 9\nstart: '2026-01-01T00:00:00Z'\n")
    result = CliRunner().invoke(
        main, ["catalog", "put", "subscriptions", str(bad)], env={"METER_URL": server.url, "METER_API_KEY": key}
    )
    assert result.exit_code != 0 and "has no version 9" in result.output
    assert "customer cust-2: deleted" in run(server, key, "catalog", "delete", "customers", "cust-2")
    assert "cust-2" not in run(server, key, "catalog", "list", "customers")


def test_catalog_entitlements_and_top_ups(server: Server, tmp_path: Path) -> None:
    key = server.tenant_key("entitled-co", ["read", "admin"])
    meter = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
    assert server.client(key).post("/v1/meters", json=meter).status_code == 201
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "customers:\n  - {id: cust-1, name: One, currency: EUR}\n"
        "plans:\n  - id: pro\n    name: Pro\n    versions:\n      - effective_from: '2026-01-01T00:00:00Z'\n"
        "        prices: [{id: tokens, currency: EUR, model: per_unit, meter: tokens, unit_price: '0.002'}]\n"
        "    entitlements: [{feature: sso, kind: boolean}]\n"
        "subscriptions:\n  - {id: s1, customer: cust-1, plan: pro, version: 1, start: '2026-01-01T00:00:00Z'}\n"
    )
    run(server, key, "catalog", "load", str(catalog))
    entitlements = tmp_path / "entitlements.yaml"
    entitlements.write_text(
        "- {feature: sso, kind: boolean}\n- {feature: gpt, kind: metered, meter: tokens, limit: '1000000'}\n"
    )
    assert "plan pro: entitlements sso, gpt" in run(server, key, "catalog", "entitlements", "pro", str(entitlements))
    # Loading the file again puts its plan's entitlements back.
    assert "entitlements replaced (1)" in run(server, key, "catalog", "load", str(catalog))
    entitlements.write_text("- {feature: gpt, kind: metered, meter: tokens}\n")
    result = CliRunner().invoke(
        main, ["catalog", "entitlements", "pro", str(entitlements)], env={"METER_URL": server.url, "METER_API_KEY": key}
    )
    assert result.exit_code != 0 and "needs a `meter` and a `limit`" in result.output, result.output
    out = run(server, key, "catalog", "top-up", "cust-1", "t1", "20.00")
    assert "top-up t1: 20.00 EUR on subscription s1, invoice INV-000001 (open, total 20.00)" in out
    assert run(server, key, "catalog", "top-up", "cust-1", "t1", "20.00") == out, "a rerun answers the same"


def test_invoice_commands(server: Server, tmp_path: Path) -> None:
    key = server.tenant_key("invoice-co", ["read", "admin"])
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("- {id: cust-1, name: One, currency: USD}\n")
    run(server, key, "catalog", "put", "customers", str(catalog))
    plans = tmp_path / "plans.yaml"
    plans.write_text(
        "id: pro\nname: Pro\nversions:\n  - effective_from: '2020-01-01T00:00:00Z'\n    prices:\n"
        "      - {id: base, currency: USD, model: flat, amount: '9.99', cadence: in_advance}\n"
    )
    run(server, key, "catalog", "put", "plans", str(plans))
    month = datetime.now(UTC).strftime("%Y-%m")
    subs = tmp_path / "subs.yaml"
    subs.write_text(f"id: s1\ncustomer: cust-1\nplan: pro\nversion: 1\nstart: '{month}-01T00:00:00Z'\n")
    run(server, key, "catalog", "put", "subscriptions", str(subs))
    out = run(server, key, "invoice", "--period", month, "--finalize")
    assert "INV-000001" in out and "9.99" in out
    preview = run(server, key, "invoice", "preview", "cust-1")
    assert "base (flat)" in preview and "total 9.99 USD" in preview


# Every CLI error is one line on stderr (what happened, what to do), a non-zero exit code and no traceback.


def fails(args: list[str], env: dict[str, str], exit_code: int = 1) -> str:
    """Runs the CLI expecting an error; returns that error's one line."""
    result = CliRunner().invoke(main, args, env={"COLUMNS": "200", **env})
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def closed_url() -> str:
    from http_server import free_port

    return f"http://127.0.0.1:{free_port()}"


def test_server_down_is_one_line(tmp_path: Path) -> None:
    url = closed_url()
    line = fails(["meters", "list"], {"METER_URL": url, "METER_API_KEY": new_key()})
    assert f"cannot connect to {url}/" in line and "is `meter serve` running there? Set METER_URL" in line


def test_ingest_with_the_server_down_stops_soon_with_one_line(tmp_path: Path) -> None:
    import time

    events = tmp_path / "events.ndjson"
    events.write_text("\n".join(json.dumps(event(f"d{i}")) for i in range(3)))
    started = time.monotonic()
    line = fails(["ingest", str(events)], {"METER_URL": closed_url(), "METER_API_KEY": new_key()})
    assert time.monotonic() - started < 6, "retries are capped (17.6 s before)"
    assert "not acknowledged after 4 attempts" in line and "cannot connect to" in line
    assert "0 of 3 events were answered before it stopped; running the same command again is safe" in line


def test_a_wrong_key_is_one_line(server: Server, tmp_path: Path) -> None:
    env = {"METER_URL": server.url, "METER_API_KEY": new_key()}
    line = fails(["meters", "list"], env)
    assert "the server answered 401 unauthorized" in line and "check the key (METER_API_KEY or --api-key)" in line
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(event("w1")))
    assert "the server answered 401 unauthorized" in fails(["ingest", str(events)], env)
    assert "no API key: set METER_API_KEY or pass --api-key" in fails(["meters", "list"], {"METER_URL": server.url}, 2)


def test_server_errors_show_their_code_and_message(server: Server, tmp_path: Path) -> None:
    key = server.tenant_key("errors-co", ["read", "admin"])
    env = {"METER_URL": server.url, "METER_API_KEY": key}
    line = fails(["usage", "nope", "--from", "yesterday", "--to", "2026-12-01T00:00:00Z"], env)
    assert line.startswith("Error: the server answered 400 invalid_query: 'from' must be RFC 3339"), line
    spec = tmp_path / "meter.json"
    spec.write_text(json.dumps({"slug": "calls", "event_type": "llm", "aggregation": "count"}))
    run(server, key, "meters", "create", str(spec))
    assert "the server answered 409" in fails(["meters", "create", str(spec)], env)


class Failing:
    """A stand-in for a server that fails: every request gets ``status`` with ``body`` (a proxy's HTML page, say)."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def test_5xx_answers_are_one_line(tmp_path: Path) -> None:
    failing = Failing(500, b'{"code": "internal", "message": "the store\\nhas failed"}', "application/json")
    proxy = Failing(502, b"<html>\n<body>Bad Gateway</body>\n</html>\n", "text/html")
    try:
        line = fails(["meters", "list"], {"METER_URL": failing.url, "METER_API_KEY": new_key()})
        assert line == (
            "Error: the server answered 500 internal: the store has failed; the server failed: its log says why"
        )
        line = fails(["meters", "list"], {"METER_URL": proxy.url, "METER_API_KEY": new_key()})
        assert "the server answered 502 http_error: <html> <body>Bad Gateway</body> </html>" in line
        events = tmp_path / "events.ndjson"
        events.write_text(json.dumps(event("p1")))
        line = fails(["ingest", str(events)], {"METER_URL": proxy.url, "METER_API_KEY": new_key()})
        assert "not acknowledged after 4 attempts" in line and "(last: 502 http_error: <html>" in line
    finally:
        failing.close()
        proxy.close()


def test_malformed_ndjson_names_the_file_and_line_and_sends_nothing(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(event("m1")) + "\n\n" + '{"id": "m2", "source": gw}\n')
    # A closed port: had anything been sent, the error would be the connection's.
    line = fails(["ingest", str(events)], {"METER_URL": closed_url(), "METER_API_KEY": new_key()})
    assert line.startswith(f"Error: {events}:3: not valid JSON (Expecting value, column 24)"), line
    assert "nothing was sent" in line
    array = tmp_path / "events.json"
    array.write_text('[\n  {"id": "a"},\n  {"id": "b",}\n]')
    line = fails(["ingest", str(array)], {"METER_URL": closed_url(), "METER_API_KEY": new_key()})
    assert line.startswith(f"Error: {array}:3: not valid JSON"), line
    scalar = tmp_path / "scalars.ndjson"
    scalar.write_text('{"id": "a"}\n42\n')
    line = fails(["ingest", str(scalar)], {"METER_URL": closed_url(), "METER_API_KEY": new_key()})
    assert f"{scalar}: line 2: an event is a JSON object, not int" in line


def test_a_missing_or_unreadable_file_is_one_line(tmp_path: Path) -> None:
    env = {"METER_URL": closed_url(), "METER_API_KEY": new_key()}
    line = fails(["ingest", str(tmp_path / "nope.ndjson")], env, 2)
    assert "does not exist" in line and "see 'main ingest --help'" in line
    assert "is a directory" in fails(["ingest", str(tmp_path)], env, 2)
    assert "does not exist" in fails(["meters", "create", str(tmp_path / "nope.yaml")], env, 2)
    not_utf8 = tmp_path / "latin1.ndjson"
    not_utf8.write_bytes(b'{"id": "caf\xe9"}\n')
    assert f"{not_utf8}: not UTF-8 text (byte 11); nothing was sent" in fails(["ingest", str(not_utf8)], env)
    assert "No such command 'nope'" in fails(["nope"], env, 2)
    # --batch-size 0 was range()'s "arg 3 must not be zero" traceback; above 10,000 the server refuses every batch.
    assert "0 is not in the range 1<=x<=10000" in fails(["ingest", str(not_utf8), "--batch-size", "0"], env, 2)


# `meter ingest` gives events without an id a stable one, so that a re-run counts nothing twice.


def test_ingesting_the_same_file_twice_counts_nothing_twice(server: Server, tmp_path: Path) -> None:
    key = server.tenant_key("rerun-co", ["ingest", "read", "admin"])
    spec = tmp_path / "meter.json"
    spec.write_text(
        json.dumps({"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"})
    )
    run(server, key, "meters", "create", str(spec))
    no_ids = [{k: v for k, v in event("x", time=RECENT, tokens=i).items() if k != "id"} for i in range(1, 6)]
    ndjson = tmp_path / "events.ndjson"
    ndjson.write_text("\n".join(json.dumps(e) for e in no_ids[:3]) + "\n")
    array = tmp_path / "events.json"
    array.write_text(json.dumps(no_ids[3:]))
    assert "3 events: 3 accepted, 0 duplicates, 0 rejected" in run(server, key, "ingest", str(ndjson))
    assert "3 events: 0 accepted, 3 duplicates, 0 rejected" in run(server, key, "ingest", str(ndjson))
    assert "2 events: 2 accepted, 0 duplicates, 0 rejected" in run(server, key, "ingest", str(array))
    assert "2 events: 0 accepted, 2 duplicates, 0 rejected" in run(
        server, key, "ingest", str(array), "--batch-size", "1"
    )
    table = run(server, key, "usage", "tokens", *ALL_TIME)
    assert "│ 15 " in table or " 15 " in table.replace("│", " "), table


def test_derived_ids_are_the_file_hash_and_the_line(tmp_path: Path) -> None:
    import hashlib

    from meter.cli.events import read_events as _read_events

    ndjson = tmp_path / "events.ndjson"
    # A JSON string may hold U+2028, a line break for str.splitlines() but not for NDJSON.
    ndjson.write_text('{"a": 1}\n\n{"a": "x\u2028y"}\r\n{"id": "mine"}\n', encoding="utf-8")
    digest = hashlib.sha256(ndjson.read_bytes()).hexdigest()[:32]
    events, places = _read_events(ndjson)
    assert [e["id"] for e in events] == [f"{digest}-1", f"{digest}-3", "mine"]
    assert places == ["line 1", "line 3", "line 4"] and events[1]["a"] == "x\u2028y"
    array = tmp_path / "events.json"
    array.write_text('[{"a": 1}, {"a": 2}]')
    digest = hashlib.sha256(array.read_bytes()).hexdigest()[:32]
    assert [e["id"] for e in _read_events(array)[0]] == [f"{digest}-1", f"{digest}-2"]


def test_demo_writes_where_serve_reads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = CliRunner().invoke(main, ["demo", "--data-dir", str(data), "--events", "300"])
    assert result.exit_code == 0, result.output
    assert "ingested 300 events" in result.output
    s = Server(data, admin_key=new_key())
    try:
        assert "demo" in run(s, s.admin_key, "tenants", "list")
        key = s.tenant_key("demo", ["read"])
        with s.client(key) as c:
            r = c.get("/v1/meters/tokens/usage", params={"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"})
        assert r.status_code == 200, r.text
        assert sum(row["events"] for row in r.json()["data"]) == 300
        busy = CliRunner().invoke(main, ["demo", "--data-dir", str(data), "--events", "1"])
        assert busy.exit_code == 1 and "is `meter serve` running on it? Stop it first" in busy.stderr
    finally:
        s.stop()


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from meter.cli import main; main()",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "backtrace" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98); stop what uses it or choose "
        "another port (--port, or make serve PORT=...)"
    )


def test_ingest_says_which_events_a_meter_skipped(server: Server, tmp_path: Path) -> None:
    """An event a meter cannot read is accepted (its other meters count it); the CLI says which meter skipped it."""
    key = server.tenant_key("skips-co", ["ingest", "read", "admin"])
    spec = tmp_path / "meters.json"
    spec.write_text(
        json.dumps(
            [
                {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"},
                {"slug": "cached", "event_type": "llm", "aggregation": "sum", "value_property": "$.cached_tokens"},
            ]
        )
    )
    run(server, key, "meters", "create", str(spec))
    ndjson = tmp_path / "events.ndjson"
    ndjson.write_text(
        json.dumps(event("w1", time=RECENT, tokens=5))
        + "\n"
        + json.dumps(event("w2", time=RECENT, tokens=7, cached_tokens=2))
        + "\n"
    )
    result = CliRunner().invoke(main, ["ingest", str(ndjson)], env={"METER_URL": server.url, "METER_API_KEY": key})
    assert result.exit_code == 0, result.output
    assert "2 events: 2 accepted, 0 duplicates, 0 rejected; a meter skipped 1 accepted events" in result.output
    assert f"{ndjson}: line 1 (w1): meter cached skipped it: value_missing" in result.output
    assert " 12 " in run(server, key, "usage", "tokens", *ALL_TIME).replace("│", " ")
