"""The SDK against the real server: batching, rejected events, and retries across a server crash."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import meter
import pytest
from conftest import event
from http_server import Server
from meter.catalog.keys import new_key

USAGE = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    server = Server(tmp_path / "data", admin_key=new_key())
    key = server.tenant_key("acme", ["ingest", "read", "admin"])
    with server.client(key) as c:
        c.post("/v1/meters", json={"slug": "calls", "event_type": "llm", "aggregation": "count"})
    yield server, key
    server.stop()


def counted(server: Server, key: str) -> int:
    with server.client(key) as c:
        return sum(r["events"] for r in c.get("/v1/meters/calls/usage", params=USAGE).json()["data"])


def live(i: int) -> dict[str, object]:
    return {k: v for k, v in event(f"e{i}", subject="c1").items() if k != "time"}


def test_ingest_returns_results_and_raises_for_rejected_events(served: tuple[Server, str]) -> None:
    server, key = served
    with meter.Client(server.url, key) as client:
        assert client.ingest([live(1), live(2)]).accepted == 2
        assert client.ingest([live(1)]).duplicates == 1
        with pytest.raises(meter.RejectedEvents) as info:
            client.ingest([live(3), {"type": "llm"}])
        assert [(i.index, i.code) for i in info.value.issues] == [(1, "missing_field")]
        generated = client.ingest([{"source": "gw", "type": "llm", "subject": "c1"}])
        assert generated.accepted == 1, "the SDK fills specversion and id"
    assert counted(server, key) == 4


def test_queued_events_are_batched_and_flushed_on_close(served: tuple[Server, str]) -> None:
    server, key = served
    with meter.Client(server.url, key, batch_size=100, flush_interval=0.05) as client:
        for i in range(1050):
            client.send(live(i))
    assert counted(server, key) == 1050


def test_retries_across_a_server_crash_count_every_event_once(served: tuple[Server, str]) -> None:
    server, key = served
    policy = meter.RetryPolicy(attempts=200, base_delay=0.02, max_delay=0.2)
    client = meter.Client(server.url, key, batch_size=50, flush_interval=0.02, retry=policy)
    restarted: list[Server] = []

    def crash_and_restart() -> None:
        server.kill()
        restarted.append(Server(server_dir, port=server.port, admin_key=server.admin_key))

    server_dir = Path(server.proc.args[server.proc.args.index("--data-dir") + 1])  # type: ignore[union-attr]
    for i in range(3000):
        client.send(live(i))
        if i == 1500:
            threading.Thread(target=crash_and_restart).start()
    while not restarted:
        threading.Event().wait(0.05)
    client.close()
    assert counted(restarted[0], key) == 3000
    restarted[0].stop()


def test_async_client(served: tuple[Server, str]) -> None:
    server, key = served

    async def main() -> None:
        async with meter.AsyncClient(server.url, key, batch_size=64, flush_interval=0.02) as client:
            assert (await client.ingest([live(1)])).accepted == 1
            for i in range(2, 500):
                client.send(live(i))

    asyncio.run(main())
    assert counted(server, key) == 499
