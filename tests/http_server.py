"""The real server in a subprocess, for end-to-end tests: `meter serve` (granian) on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from conftest import event
from meter.catalog.keys import new_key

#: When events sent to a real server happen: an hour ago, whatever today's date, so that they stay inside its
#: back-dating window (35 days) and the tests never expire. `RECENT_DAY` is the UTC day around it, `[start, end)`.
RECENT = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
RECENT_DAY = (RECENT.replace(hour=0), RECENT.replace(hour=0) + timedelta(days=1))


def recent_event(id: str, subject: str = "cust-1", **fields: Any) -> dict[str, Any]:
    """conftest's `event`, at `RECENT` unless a time is given."""
    fields.setdefault("time", RECENT)
    return event(id, subject, **fields)


#: The log files (stderr) of the servers started so far, for the report of a failing test (see tests/conftest.py).
LOGS: list[Path] = []


def log_tails(lines: int = 150) -> list[tuple[str, str]]:
    """The end of each server's log that has something in it: what a failing test's report shows."""
    tails = []
    for path in LOGS:
        if path.exists() and path.stat().st_size:
            tails.append((path.name, "\n".join(path.read_text(errors="replace").splitlines()[-lines:])))
    return tails


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        admin_key: str | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.admin_key = admin_key or new_key()
        self.url = f"http://127.0.0.1:{self.port}"
        self.clients: list[httpx.Client] = []
        # A crash of the server's process (a fault in a C extension) dumps its threads' stacks into its log.
        env = {**os.environ, **(env or {}), "METER_ADMIN_KEY": self.admin_key, "PYTHONFAULTHANDLER": "1"}
        cli = [sys.executable, "-c", "from meter.cli import main; main()"]
        # stderr kept beside the data directory (appended to across restarts), shown when a test fails.
        self.log_path = Path(data_dir).parent / f"{Path(data_dir).name}.server.log"
        if self.log_path not in LOGS:  # a restart on the same data directory appends to the same log
            LOGS.append(self.log_path)
        self.log = self.log_path.open("ab")
        # A session of its own, so that a kill reaches granian's worker too (it holds the store's lock).
        self.proc = subprocess.Popen(
            [*cli, "serve", "--data-dir", str(data_dir), "--port", str(self.port), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with httpx.Client(timeout=1) as probe:
                    if probe.get(self.url + "/readyz").status_code == 200:
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the server did not become ready in 30 s")

    def kill(self) -> None:
        """SIGKILL the server and its worker: a crash, no shutdown of any kind."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def client(self, key: str) -> httpx.Client:
        client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self.clients.append(client)
        return client

    def tenant_key(self, tenant: str, scopes: list[str]) -> str:
        with self.client(self.admin_key) as admin:
            if admin.post("/v1/admin/tenants", json={"id": tenant}).status_code not in (201, 409):
                raise AssertionError("tenant creation failed")
            r = admin.post("/v1/admin/keys", json={"tenant": tenant, "scopes": scopes})
            assert r.status_code == 201, r.text
            return str(r.json()["key"])
