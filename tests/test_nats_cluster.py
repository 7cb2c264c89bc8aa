"""The NATS test cluster itself: a 3-replica stream keeps taking writes with one node down and has them all after."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError
from nats_cluster import NatsCluster, binary

if binary() is None:
    pytest.skip(
        "nats-server is not installed (`make test` installs the Debian package nats-server)", allow_module_level=True
    )


async def publish(js: JetStreamContext, n: int, deadline: float) -> int:
    """Publish message n (subject t.n) until it is acknowledged, across a leader election; its stream sequence."""
    while True:
        try:
            # The message id makes a retry of a publish that was stored but not acknowledged a duplicate, not a copy.
            ack = await js.publish(f"t.{n}", b"x", headers={"Nats-Msg-Id": f"m{n}"})
            return ack.seq
        except (nats.errors.TimeoutError, NoStreamResponseError, ServiceUnavailableError):
            # No stream leader yet (or the client is still reconnecting away from the killed node).
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def test_replicated_stream_survives_a_node(tmp_path: Path) -> None:
    with NatsCluster(tmp_path) as cluster:

        async def main() -> None:
            nc = await nats.connect(cluster.urls, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
            try:
                js = nc.jetstream(timeout=2)
                await js.add_stream(name="T", subjects=["t.>"], storage=StorageType.FILE, num_replicas=3)
                for n in range(1, 101):
                    assert await publish(js, n, time.monotonic() + 30) == n

                # Kill the stream's leader: the hardest node to lose, the other two must elect a new one.
                info = await js.stream_info("T")
                assert info.cluster is not None and info.cluster.leader is not None
                victim = int(info.cluster.leader.removeprefix("n"))
                cluster.kill(victim)
                deadline = time.monotonic() + 30
                for n in range(101, 201):
                    assert await publish(js, n, deadline) == n

                # In a thread: restart() blocks until the node has caught up, and this loop keeps the client alive.
                await asyncio.to_thread(cluster.restart, victim)
                info = await js.stream_info("T")
                assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (200, 1, 200)
            finally:
                await nc.close()

        asyncio.run(main())
