"""Crash and shutdown test over HTTP: the server is killed or stopped while a client retries its batches.

A client sends numbered batches and retries each until it is acknowledged, while the server is killed with SIGKILL (or
stopped with SIGTERM, which must drain) at random moments and restarted. At the end every acknowledged batch is counted
exactly once, and nothing (acknowledged or not) is counted twice.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import httpx
import pytest
from http_server import Server
from meter.catalog.keys import new_key

KILLS = 8
EVENTS = 50


def batch(n: int) -> bytes:
    return json.dumps(
        [
            {
                "specversion": "1.0",
                "id": f"{n}-{i}",
                "source": "http-crash",
                "type": "llm",
                "subject": f"c{i % 5}",
                "data": {"batch": str(n)},
            }
            for i in range(EVENTS)
        ]
    ).encode()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("stop", ["kill", "stop"], ids=["sigkill", "sigterm"])
def test_stopped_server_never_loses_or_doubles_acknowledged_events(tmp_path: Path, stop: str) -> None:
    rng = random.Random(7)
    data, admin = tmp_path / "data", new_key()
    server = Server(data, admin_key=admin)
    port = server.port
    key = server.tenant_key("acme", ["ingest", "read", "admin"])
    with server.client(key) as c:
        # One dimension value per batch, for the check: more combinations per minute than the default limit.
        assert (
            c.post(
                "/v1/meters",
                json={
                    "slug": "calls",
                    "event_type": "llm",
                    "aggregation": "count",
                    "group_by": {"batch": "$.batch"},
                    "limits": {"max_combinations_per_minute": 100_000},
                },
            ).status_code
            == 201
        )

    acked: list[int] = []
    unexpected: list[int] = []
    done = threading.Event()
    retries = 0

    def client() -> None:
        nonlocal retries
        n = 0
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=5
        ) as http:
            while not done.is_set():
                try:
                    r = http.post("/v1/events", content=batch(n))
                except httpx.TransportError:
                    r = None
                if r is not None and r.status_code == 200:
                    body = r.json()
                    assert body["accepted"] + body["duplicates"] == EVENTS and not body["issues"], body
                    acked.append(n)
                    n += 1
                else:  # down, or answering 503 while draining: the same batch again, like an SDK
                    if r is not None and r.status_code != 503:
                        unexpected.append(r.status_code)
                    retries += 1
                    time.sleep(0.05)

    sender = threading.Thread(target=client)
    sender.start()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.2))
            getattr(server, stop)()
            server = Server(data, port=port, admin_key=admin)
        time.sleep(0.5)
    finally:
        done.set()
        sender.join()

    with server.client(key) as c:
        rows = c.get(
            "/v1/meters/calls/usage",
            params={"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "group_by": "batch"},
        ).json()["data"]
    server.stop()
    counts = {int(r["batch"]): r["events"] for r in rows}
    lost = [n for n in acked if counts.get(n) != EVENTS]
    doubled = [n for n, c in counts.items() if c > EVENTS]
    print(
        json.dumps(
            {
                "signal": stop,
                "kills": KILLS,
                "acked_batches": len(acked),
                "retries": retries,
                "lost": len(lost),
                "duplicated": len(doubled),
            }
        )
    )
    assert not lost and not doubled and not unexpected, unexpected
    assert set(counts) <= set(acked) | {max(acked, default=-1) + 1}
    assert len(acked) > KILLS
