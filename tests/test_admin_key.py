"""The operator key (issue 11).

A malformed METER_ADMIN_KEY refuses to start, `meter admin-key new` makes a good one, and `meter admin-key reset`
rotates the operator keys of a stopped server's data directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from http_server import Server, free_port
from meter.catalog.keys import KeyStore, new_key, valid_checksum
from meter.cli import main
from meter.exceptions import InvalidInput
from meter.lake import layout
from meter.server.app import MeterApp

CLI = [sys.executable, "-c", "from meter.cli import main; main()"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def test_admin_key_new_prints_a_wellformed_key() -> None:
    result = CliRunner().invoke(main, ["admin-key", "new"])
    assert result.exit_code == 0, result.output
    key = result.output.strip()
    assert valid_checksum(key) and key != CliRunner().invoke(main, ["admin-key", "new"]).output.strip()


@pytest.mark.parametrize(
    "bad", ["my-admin-secret", "mk_live_" + "a" * 49, new_key()[:-1]], ids=["free-text", "too-long", "bad-checksum"]
)
def test_a_malformed_admin_key_refuses_to_start(tmp_path: Path, bad: str) -> None:
    try:
        result = run(
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(free_port()),
            env={"METER_ADMIN_KEY": bad},
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the server started with a malformed METER_ADMIN_KEY")
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert "METER_ADMIN_KEY" in line and "mk_live_" in line and "meter admin-key new" in line, line
    assert "Traceback" not in result.stderr


def test_the_app_refuses_a_malformed_or_tenant_admin_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="meter admin-key new"):
        MeterApp(tmp_path / "data", admin_key="my-admin-secret").startup()
    store = KeyStore(tmp_path / "data" / "catalog")
    store.create_tenant("acme")
    tenant_key, _ = store.create_key("acme", ["admin"])
    store.close()
    app = MeterApp(tmp_path / "data", admin_key=tenant_key)
    with pytest.raises(ValueError, match="tenant's key"):
        app.startup()
    app.close_stores()
    app.pool.shutdown()


def test_admin_key_reset_rotates_the_operator_keys_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = KeyStore(data / "catalog")
    old, _ = store.create_key(None, ["admin"])
    store.create_tenant("acme")
    tenant_key, _ = store.create_key("acme", ["ingest"])
    store.close()
    result = run("admin-key", "reset", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    new = result.stdout.strip()
    assert valid_checksum(new) and "revoked 1 operator key" in result.stderr
    store = KeyStore(data / "catalog")
    try:
        assert store.authenticate(old) is None
        record = store.authenticate(new)
        assert record is not None and record.operator
        assert store.authenticate(tenant_key) is not None
    finally:
        store.close()
    # The new key works on the next start.
    server = Server(data, admin_key=new)
    try:
        assert server.client(new).get("/v1/admin/tenants").status_code == 200
    finally:
        server.stop()


def test_admin_key_reset_refuses_a_running_servers_directory(tmp_path: Path) -> None:
    server = Server(tmp_path / "data")
    try:
        result = run("admin-key", "reset", "--data-dir", str(tmp_path / "data"))
        assert result.returncode != 0
        [line] = result.stderr.strip().splitlines()
        assert "running server" in line and "stop" in line, line
        assert server.client(server.admin_key).get("/v1/admin/tenants").status_code == 200
    finally:
        server.stop()
    result = run("admin-key", "reset", "--data-dir", str(tmp_path / "nothing-here"))
    assert result.returncode != 0 and "not a meter data directory" in result.stderr


def test_a_remembered_key_is_forgotten_by_its_revocation(tmp_path: Path) -> None:
    """Keys authenticated before are found in memory; revoking one (or resetting the operator's) ends that at once."""
    keys = KeyStore(tmp_path / "catalog")
    try:
        keys.create_tenant("acme")
        secret, record = keys.create_key("acme", ["read"])
        assert keys.known(secret) is None  # never authenticated: not in memory
        assert keys.authenticate(secret) == record
        assert keys.known(secret) == record
        keys.revoke(record.id, tenant="acme")
        assert keys.known(secret) is None
        assert keys.authenticate(secret) is None
        operator, _ = keys.create_key(None, ["admin"])
        assert keys.authenticate(operator) is not None and keys.known(operator) is not None
        keys.reset_operator_keys()
        assert keys.known(operator) is None and keys.authenticate(operator) is None
    finally:
        keys.close()


def test_a_tenant_id_is_one_the_export_can_name(tmp_path: Path) -> None:
    """The key store takes the tenant ids the Parquet export can name a directory after, and only those."""
    keys = KeyStore(tmp_path / "catalog")
    try:
        for bad in ("café", "", "a" * 65, "a b", "a.b"):
            with pytest.raises(InvalidInput) as info:
                keys.create_tenant(bad)
            assert info.value.code == "invalid_tenant"
        keys.create_tenant("Acme_1-2")
        assert layout.usage_tenant(tmp_path, "Acme_1-2").name == "tenant=Acme_1-2"
    finally:
        keys.close()
