"""A request whose own WAL fsync failed is answered 503 `outcome_unknown`; later ones 503 `store_failed`.

The failed request may still be applied after a restart (its record reached the log), so its answer cannot say "not
applied"; requests refused because the store had already failed were not applied. A client that retries with the same
ids, as the SDK does, then gets each event counted once. The failure is real: `strace` attached to the running
server makes every `fdatasync` fail with EIO.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import body, event
from http_server import Server

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (Debian package strace)")

FROM, TO = "2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z"


def fail_fdatasync(pgid: int) -> subprocess.Popen[bytes]:
    """Attaches strace to every process of the server's group, making each fdatasync fail with EIO.

    Returns once every thread is attached.
    """
    pids = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True, check=True).stdout.split()
    args = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync", "-e", "inject=fdatasync:error=EIO"]
    tracer = subprocess.Popen([*args, *(a for p in pids for a in ("-p", p))], stderr=subprocess.PIPE)
    # strace attaches to every thread of each process before it lets them run; /proc then shows the tracer.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tracers = set()
        for pid in pids:
            for task in Path(f"/proc/{pid}/task").iterdir():
                status = (task / "status").read_text()
                tracers.add(next(line.split()[1] for line in status.splitlines() if line.startswith("TracerPid")))
        if tracers == {str(tracer.pid)}:
            return tracer
        if tracer.poll() is not None:
            raise RuntimeError(f"strace could not attach: {tracer.stderr.read().decode() if tracer.stderr else ''}")
        time.sleep(0.05)
    tracer.kill()
    tracer.wait()
    raise RuntimeError("strace did not attach in 20 s")


def test_a_failed_fsync_answers_outcome_unknown_and_a_retry_counts_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = Server(data)
    try:
        acme = server.client(server.tenant_key("acme", ["ingest", "read", "admin"]))
        meter = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
        assert acme.post("/v1/meters", json=meter).status_code == 201
        assert acme.post("/v1/events", content=body(event("before", tokens=1))).json()["accepted"] == 1

        tracer = fail_fdatasync(server.proc.pid)
        try:
            failed = body(event("x1", tokens=10), event("x2", tokens=100))
            r = acme.post("/v1/events", content=failed)
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert r.json()["code"] == "outcome_unknown", r.text
            assert "retry with the same event ids" in r.json()["message"]
            later = acme.post("/v1/events", content=body(event("y1", tokens=1000)))
            assert later.status_code == 503 and later.headers["retry-after"]
            assert later.json()["code"] == "store_failed", later.text
            message = later.json()["message"]
            assert message.count("the store has failed") == 1 and message.count("storage error") == 1, message
            assert acme.get("/readyz").status_code == 503
        finally:
            tracer.send_signal(signal.SIGINT)  # strace detaches and lets the server run on
            tracer.wait(timeout=20)
            if tracer.stderr is not None:
                tracer.stderr.close()
    finally:
        for client in server.clients:
            client.close()
        server.kill()

    # After a restart the failed request is applied or not (here its record usually reached the log); a retry with the
    # same ids is a duplicate or accepted, so each event counts once. The refused one was never applied.
    server = Server(data, admin_key=server.admin_key)
    try:
        acme = server.client(server.tenant_key("acme", ["ingest", "read"]))
        retry = acme.post("/v1/events", content=failed).json()
        assert retry["accepted"] + retry["duplicates"] == 2, retry
        usage = acme.get("/v1/meters/tokens/usage", params={"from": FROM, "to": TO}).json()
        assert [row["value"] for row in usage["data"]] == ["111"]
        assert acme.post("/v1/events", content=body(event("y1", tokens=1000))).json()["accepted"] == 1
    finally:
        server.stop()
