"""A server started on a full (or read-only) disk (issue 11).

It starts degraded instead of crash-looping, /readyz says why, what can be read is served, and every write is a 503
`store_unavailable` with Retry-After.

The real thing: the data directory sits on a size-capped tmpfs in a mount namespace of its own (`unshare -m`), which
is filled (or remounted read-only) before the server starts. Skipped where mount namespaces are not available.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_server import free_port
from meter.catalog.keys import new_key

SETUP = """
import sys
from pathlib import Path
from meter.catalog.keys import KeyStore
from meter.catalog.billing import BillingCatalog, Customer
from meter.engine import Engine
from meter.billing.store import InvoiceStore

data, operator, tenant_key = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
keys = KeyStore(data / "catalog")
keys.create_key(None, ["admin"], secret=operator)
keys.create_tenant("acme")
keys.create_key("acme", ["ingest", "read", "admin"], secret=tenant_key)
keys.close()
billing = BillingCatalog(data / "billing")
billing.put_customer("acme", Customer(id="cust-1", name="One", currency="EUR"))
billing.close()
with Engine(data / "usage") as engine:
    engine.create_meter("acme", {"slug": "calls", "event_type": "llm", "aggregation": "count"})
InvoiceStore(data / "invoices").close()
"""


def namespaces_work() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not namespaces_work(), reason="needs root and mount namespaces (unshare -m)")


class FullDiskServer:
    def __init__(self, root: Path, mode: str) -> None:
        self.root, self.port, self.mode = root, free_port(), mode
        self.reason = {"full": "disk full", "read-only": "read-only file system"}[mode]
        self.operator, self.tenant_key = new_key(), new_key()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        (root / "setup.py").write_text(SETUP)
        mnt = root / "mnt"
        mnt.mkdir()
        script = textwrap.dedent(f"""\
            set -e
            mount -t tmpfs -o size=64m tmpfs {mnt}
            {sys.executable} {root / "setup.py"} {mnt / "data"} {self.operator} {self.tenant_key}
            {
            f"dd if=/dev/zero of={mnt / 'fill'} bs=64k 2>/dev/null || true"
            if mode == "full"
            else f"mount -o remount,ro {mnt}"
        }
            exec {sys.executable} -c 'from meter.cli import main; main()' serve --data-dir {mnt / "data"} \
                --port {self.port}
            """)
        self.log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", script],
            env={**os.environ, "METER_ADMIN_KEY": self.operator},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError("the server did not start on a full disk:\n" + (root / "server.log").read_text())

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module", params=["full", "read-only"])
def full(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FullDiskServer]:
    server = FullDiskServer(tmp_path_factory.mktemp("full"), request.param)
    yield server
    server.stop()


def test_a_full_disk_starts_degraded_and_says_why(full: FullDiskServer) -> None:
    r = httpx.get(full.url + "/readyz")
    assert r.status_code == 503 and full.reason in r.json()["reason"], r.text
    assert r.headers["retry-after"]


def test_reads_that_can_be_served_are_served(full: FullDiskServer) -> None:
    with full.client(full.tenant_key) as tenant, full.client(full.operator) as operator:
        r = tenant.get("/v1/customers")
        assert r.status_code == 200 and [c["id"] for c in r.json()] == ["cust-1"], r.text
        assert tenant.get("/v1/invoices").status_code == 200
        assert [t["id"] for t in operator.get("/v1/admin/tenants").json()] == ["acme"]
        # The usage engine writes when it opens: its reads are unavailable, and say so.
        r = tenant.get("/v1/meters")
        assert r.status_code == 503 and r.json()["code"] == "store_unavailable" and r.headers["retry-after"], r.text
        assert "meter_http_responses_total" in operator.get("/metrics").text
    assert httpx.get(full.url + "/v1/meters").status_code == 401, "degraded is no reason to skip the key"


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/v1/events", [{"specversion": "1.0", "id": "e1", "source": "s", "type": "llm", "subject": "c"}]),
        ("POST", "/v1/customers", {"id": "cust-2", "name": "Two", "currency": "EUR"}),
        ("DELETE", "/v1/customers/cust-1", None),
        ("POST", "/v1/keys", {"scopes": ["read"]}),
    ],
)
def test_writes_are_503_with_retry_after(full: FullDiskServer, method: str, path: str, body: object) -> None:
    with full.client(full.tenant_key) as tenant:
        r = tenant.request(method, path, **({"json": body} if body is not None else {}))
    assert r.status_code == 503 and r.json()["code"] == "store_unavailable", r.text
    assert int(r.headers["retry-after"]) > 0
    assert full.reason in r.json()["message"]
