"""meter on a three-node NATS JetStream cluster: edges and workers as real processes, started and stopped here.

- The usage plane through an edge: meters, ingest (200 with every outcome; 202 and the batch to look up while no worker
  applies), usage equal to the events sent, duplicates never counted twice, a tenant never sees another's batch.
- Failures: workers, edges and NATS nodes killed with SIGKILL under load with retries, many times; a dead worker's
  partitions are taken over (restored from a checkpoint, the log replayed from its position) and nothing is lost or
  counted twice, in queries and in the export. The takeover time is printed, not asserted.
- Rebalancing: a fourth worker takes partitions without loss; a rolling restart of every worker loses nothing; the
  partitions' exports make one dataset that pricing reads.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from meter.catalog.keys import new_key
from meter_cluster import MeterCluster, get, post
from nats_cluster import NatsCluster, binary

pytestmark = pytest.mark.skipif(binary() is None, reason="nats-server is not installed: `make test` installs it")

PARTITIONS = 4


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MeterCluster]:
    with NatsCluster(tmp_path / "nats") as nats:
        meter = MeterCluster(tmp_path, nats, partitions=PARTITIONS)
        try:
            yield meter
        finally:
            meter.close()


def event(i: int, customer: str, tokens: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"e{i}", "source": "gw", "type": "llm", "subject": customer,
            "data": {"tokens": tokens}}  # fmt: skip


def usage_by_customer(url: str, key: str) -> dict[str, Decimal]:
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    params = {"from": start.isoformat(), "to": (start + timedelta(hours=2)).isoformat(), "group_by": "subject"}
    answer = get(url, key, "/v1/meters/tokens/usage", params)
    assert answer.status_code == 200, answer.text
    return {row["subject"]: Decimal(row["value"]) for row in answer.json()["data"]}


def create_meter(url: str, key: str) -> None:
    """Creates the meter, sent again on a 503 as a client does (the log's dedup makes the retry the same entry)."""
    spec = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
    for _ in range(5):
        answer = post(url, key, "/v1/meters", spec)
        if answer.status_code != 503:
            break
    assert answer.status_code == 201, answer.text


def test_usage_through_an_edge(cluster: MeterCluster) -> None:
    for name in ("w0", "w1"):
        cluster.start_worker(name)
    url = cluster.start_edge("e0")
    acme, other = cluster.key("acme", "ingest", "read", "admin"), cluster.key("other", "ingest", "read", "admin")
    cluster.settled(balanced=True)
    create_meter(url, acme)
    assert [m["slug"] for m in get(url, acme, "/v1/meters").json()] == ["tokens"]
    assert get(url, other, "/v1/meters").json() == []

    events = [event(i, f"c{i % 7}", i) for i in range(300)]
    answer = post(url, acme, "/v1/events", [*events, {"id": 5}])
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["accepted"], result["duplicates"], result["pending"]) == (300, 0, 0)
    assert [(i["index"], i["code"]) for i in result["issues"]] == [(300, "invalid_field")]

    # The same events again, in another request: duplicates, never counted twice.
    again = post(url, acme, "/v1/events", list(reversed(events[:50])) + [event(1000, "c1", 5)]).json()
    assert (again["accepted"], again["duplicates"]) == (1, 50)
    # A changed payload under an accepted id is a conflict, named by its index in the request.
    conflict = post(url, acme, "/v1/events", [event(2000, "c2", 1), event(3, "c3", 99)]).json()
    assert [(i["index"], i["code"]) for i in conflict["issues"]] == [(1, "conflict")]

    expected: Counter[str] = Counter()
    for e in [*events, event(1000, "c1", 5), event(2000, "c2", 1)]:
        expected[e["subject"]] += e["data"]["tokens"]
    assert usage_by_customer(url, acme) == {c: Decimal(v) for c, v in expected.items()}
    # One customer: only its partition is asked, and the answer is the same.
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    params = {"from": start.isoformat(), "to": (start + timedelta(hours=2)).isoformat(), "subject": "c3"}
    assert get(url, acme, "/v1/meters/tokens/usage", params).json()["data"][0]["value"] == str(expected["c3"])
    assert get(url, other, "/v1/meters/tokens/usage", params).status_code == 404  # another tenant's meter

    # A batch is looked up by its tenant only.
    batch = result["batch"]
    assert get(url, acme, f"/v1/events/batches/{batch}").json()["accepted"] == 300
    assert get(url, other, f"/v1/events/batches/{batch}").status_code == 404
    assert get(url, acme, "/v1/events/batches/nonsense").status_code == 400

    # An unknown key is a 401, as on one node (not a 503: the cluster answered).
    assert get(url, new_key(), "/v1/meters").status_code == 401
    # A revoked key is refused by every edge once it stops trusting what it remembered (REMEMBER_S).
    doomed, doomed_id = cluster.key_and_id("acme", "read")
    assert get(url, doomed, "/v1/meters").status_code == 200
    assert "revoked" in cluster.cli("cluster", "revoke", doomed_id)
    deadline = time.monotonic() + 60
    while get(url, doomed, "/v1/meters").status_code != 401:
        assert time.monotonic() < deadline, "a revoked key is still accepted"
        time.sleep(0.5)
    assert "partition 0" in cluster.cli("cluster", "status")

    # An atomic batch is refused whole when an event is invalid, and when it spans partitions.
    refused = post(url, acme, "/v1/events?atomic=true", [event(3000, "c1", 1), {"id": 1}])
    assert refused.status_code == 422 and refused.json()["code"] == "batch_rejected"
    spread = post(url, acme, "/v1/events?atomic=true", [event(3001 + i, f"c{i}", 1) for i in range(7)])
    assert spread.status_code == 400 and spread.json()["code"] == "atomic_spans_partitions"

    # With no worker, a batch is still durable: 202 with its batch, whose outcome comes once a worker is back.
    for worker in cluster.workers.values():
        worker.signal(signal.SIGTERM)
    queued = post(url, acme, "/v1/events", [event(4000 + i, f"c{i}", 10) for i in range(7)])
    assert queued.status_code == 202, queued.text
    assert queued.json()["pending"] == 7 and queued.headers["location"].endswith(queued.json()["batch"])
    cluster.start_worker("w0")
    cluster.settled()
    later = get(url, acme, queued.headers["location"])
    assert later.status_code == 200 and later.json()["accepted"] == 7
    for i in range(7):
        expected[f"c{i}"] += 10
    assert usage_by_customer(url, acme) == {c: Decimal(v) for c, v in expected.items()}


class Load:
    """A client's batches, each sent until an edge acknowledges it (a retry after a lost answer included)."""

    def __init__(self, cluster: MeterCluster, key: str) -> None:
        self.cluster, self.key = cluster, key
        self.expected: Counter[str] = Counter()
        self.sent = 0
        self.rng = random.Random(7)

    def batch(self, size: int = 200) -> None:
        events = [event(self.sent + i, f"c{self.rng.randrange(40)}", self.rng.randrange(1, 100)) for i in range(size)]
        self.sent += size
        self.send(events)
        for e in events:
            self.expected[e["subject"]] += e["data"]["tokens"]
        if self.rng.random() < 0.3:  # a client retrying a batch that was acknowledged: duplicates
            self.send(events)

    def send(self, events: list[dict[str, Any]]) -> None:
        deadline = time.monotonic() + 120
        while True:
            edge = self.rng.choice([n for n, e in self.cluster.edges.items() if e.running] or ["e0"])
            try:
                answer = post(self.cluster.url(edge), self.key, "/v1/events", events, timeout=30)
                if answer.status_code in (200, 202):
                    assert not answer.json()["issues"], answer.text
                    return
                assert answer.status_code == 503, answer.text
            except OSError:
                pass  # the edge died under the request: send it again (a duplicate, or the first copy)
            except Exception as e:  # noqa: BLE001 - httpx's transport errors
                if "httpx" not in type(e).__module__:
                    raise
            assert time.monotonic() < deadline, f"no edge took the batch in 120 s\n{self.cluster.tails()}"
            time.sleep(0.3)


@pytest.mark.slow
def test_failures_lose_nothing_and_count_nothing_twice(cluster: MeterCluster) -> None:
    """SIGKILL of workers, edges and NATS nodes at random under load; every acknowledged event counted once."""
    for name in ("w0", "w1", "w2"):
        cluster.start_worker(name)
    for name in ("e0", "e1"):
        cluster.start_edge(name)
    key = cluster.key("acme", "ingest", "read", "admin")
    cluster.settled()
    create_meter(cluster.url("e0"), key)
    load, rng = Load(cluster, key), random.Random(11)
    takeovers = []
    for round_ in range(12):
        for _ in range(3):
            load.batch()
        victim = ["worker", "edge", "nats"][round_ % 3]
        if victim == "worker":
            # A worker that holds partitions, so that there is something to take over.
            cluster.settled()
            name = rng.choice(sorted(set(cluster_owners(cluster).values()) & set(cluster.workers)))
            cluster.workers[name].signal(signal.SIGKILL)
            killed = time.monotonic()
            load.batch()
            cluster.settled()
            takeovers.append(time.monotonic() - killed)
            cluster.start_worker(name)
        elif victim == "edge":
            name = rng.choice(sorted(cluster.edges))
            cluster.edges[name].signal(signal.SIGKILL)
            load.batch()
            cluster.start_edge(name)
        else:
            node = rng.randrange(3)
            cluster.nats.kill(node)
            load.batch()
            cluster.nats.restart(node)
        print(f"round {round_}: killed a {victim}")
    load.batch()
    cluster.settled()
    for edge in sorted(cluster.edges):
        assert usage_by_customer(cluster.url(edge), key) == {c: Decimal(v) for c, v in load.expected.items()}
    # The export is exact too, whichever owners wrote which files of it along the way.
    assert cluster.cli("cluster", "export").count("rows written") == PARTITIONS
    assert exported_usage(cluster.lake, "acme") == {c: Decimal(v) for c, v in load.expected.items()}
    print(f"takeover after a worker's SIGKILL (lease TTL {cluster.lease_ttl} s): {[round(t, 1) for t in takeovers]} s")


@pytest.mark.slow
def test_a_new_worker_and_a_rolling_restart_lose_nothing(cluster: MeterCluster) -> None:
    for name in ("w0", "w1", "w2"):
        cluster.start_worker(name)
    url = cluster.start_edge("e0")
    key = cluster.key("acme", "ingest", "read", "admin")
    cluster.settled()
    create_meter(url, key)
    load = Load(cluster, key)
    for _ in range(5):
        load.batch()
    cluster.start_worker("w3")
    for _ in range(5):
        load.batch()
    # The fourth worker takes its share.
    deadline = time.monotonic() + 60
    while "w3" not in cluster_owners(cluster).values():
        assert time.monotonic() < deadline, cluster.tails()
        time.sleep(0.5)
    for name in sorted(cluster.workers):  # one at a time: stopped (hands its partitions back), then started
        cluster.workers[name].signal(signal.SIGTERM)
        load.batch()
        cluster.start_worker(name)
        load.batch()
    cluster.settled()
    assert usage_by_customer(url, key) == {c: Decimal(v) for c, v in load.expected.items()}

    # Every partition exports its own files of the one usage dataset, which pricing reads as from one node.
    said = cluster.cli("cluster", "export")
    assert said.count("rows written") == PARTITIONS, said
    files = sorted(p.name for p in (cluster.lake / "usage").rglob("*.parquet"))
    assert files and set(files) <= {f"part-p{n}.parquet" for n in range(PARTITIONS)}, files
    assert exported_usage(cluster.lake, "acme") == {c: Decimal(v) for c, v in load.expected.items()}
    again = cluster.cli("cluster", "export")  # nothing moved: every day is left as it is
    assert again.count(" 0 files, 0 rows written") == PARTITIONS, again


def exported_usage(lake: Path, tenant: str) -> dict[str, Decimal]:
    """Each customer's usage of `tokens` over the last and next hour, as pricing reads the export."""
    import polars as pl
    from meter.billing.usage import period_quantities

    start = datetime.now(UTC).replace(second=0, microsecond=0, tzinfo=None) - timedelta(hours=1)
    customers = [f"c{i}" for i in range(40)]
    requests = pl.DataFrame(
        {
            "charge": customers,
            "customer": customers,
            "meter": ["tokens"] * len(customers),
            "from": [start] * len(customers),
            "to": [start + timedelta(hours=2)] * len(customers),
        }
    )
    quantities = period_quantities(lake, tenant, requests, meters={"tokens": "sum"})
    return {row["charge"]: row["quantity"] for row in quantities.iter_rows(named=True)}


def cluster_owners(cluster: MeterCluster) -> dict[int, str]:
    import asyncio

    from meter.cluster.leases import Leases
    from meter.cluster.settings import connect

    async def owners() -> dict[int, str]:
        c = await connect(cluster.nats.url, "meter-test")
        try:
            deadline = time.monotonic() + 30
            while not (held := await Leases(c.js, c.leases, "meter-test").owners()):
                assert time.monotonic() < deadline, "no partition has an owner"
                await asyncio.sleep(0.5)  # the bucket electing a leader after a NATS node restarted
            return held
        finally:
            await c.close()

    return asyncio.run(owners())
