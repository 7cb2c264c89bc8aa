"""The cluster's fixed facts and the names of everything it keeps in JetStream: the one owner of both.

The first process to connect creates what is missing (the stream, the buckets, the object store) and records the
settings; every later one reads them back, so the number of partitions is fixed when the cluster is created.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import msgspec
import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

__all__ = ["Cluster", "ClusterSettings", "connect"]

log = logging.getLogger("meter.cluster")

#: The stream of usage: one subject per partition, `meter.events.<partition>`.
STREAM = "METER_EVENTS"
SUBJECTS = "meter.events"
#: Requests to a partition's owner (`worker.Partition.on_ask`): `meter.ask.<partition>`.
ASK = "meter.ask"
#: Leases (`p<partition>`: the owner) and workers' heartbeats (`w-<id>`), expiring after the lease TTL.
LEASES = "meter-leases"
#: Settings and API keys.
CATALOG = "meter-catalog"
#: One checkpoint per partition, `p<partition>`.
CHECKPOINTS = "meter-checkpoints"
#: How long the log's own dedup remembers an append's idempotency key: a quick retry is stored once.
DUPLICATE_WINDOW_S = 120.0
#: How long `connect` retries a cluster that is starting.
CONNECT_DEADLINE_S = 30.0


class ClusterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a cluster fixes when it is created."""

    #: Customers are spread over this many partitions, each applied by one worker at a time.
    partitions: int = 16
    #: Copies of the log, the buckets and the checkpoints (3: a quorum survives one node lost).
    replicas: int = 3
    #: Seconds a lease lives without renewal: how long a dead worker's partitions wait before another takes them.
    lease_ttl: float = 10.0
    #: Seconds the log keeps an entry. A partition is restored from its latest checkpoint and the log after it, so
    #: this must be far longer than checkpoints take to come (a minute): a day gives a day to repair checkpoints.
    log_retention: float = 86_400.0


@dataclass
class Cluster:
    """A connection to the cluster, with what it keeps open."""

    nc: Client
    js: JetStreamContext
    settings: ClusterSettings
    leases: KeyValue
    catalog: KeyValue
    checkpoints: ObjectStore

    async def close(self) -> None:
        # Not drain(): it waits up to half a minute for subscriptions whose owners are already stopped.
        await self.nc.close()


async def connect(servers: str, name: str, wanted: ClusterSettings | None = None) -> Cluster:
    """Connects to the NATS servers (comma-separated URLs), creating the cluster's stream and stores if missing.

    Retried for ``CONNECT_DEADLINE_S``: a stream just created, or a node restarting, answers nothing until its
    replicas elect a leader.
    """
    deadline = time.monotonic() + CONNECT_DEADLINE_S
    while True:
        try:
            return await _connect(servers, name, wanted)
        except (nats.errors.Error, OSError) as e:
            if time.monotonic() > deadline:
                raise ClusterUnreachable(f"the NATS cluster at {servers} is not ready: {e!r}") from e
            await asyncio.sleep(0.5)


class ClusterUnreachable(Exception):
    """The NATS servers did not let meter set up within the deadline."""


async def _connect(servers: str, name: str, wanted: ClusterSettings | None) -> Cluster:
    nc = await nats.connect(
        servers=[s.strip() for s in servers.split(",") if s.strip()],
        name=name,
        max_reconnect_attempts=-1,  # a NATS node restarting is routine: keep trying the others
        reconnect_time_wait=0.5,
        error_cb=_connection_error,  # one line, not nats-py's traceback for every failed reconnect
    )
    try:
        js = nc.jetstream(timeout=10.0)
        wanted = wanted or ClusterSettings()
        catalog = await _bucket(js, api.KeyValueConfig(bucket=CATALOG, history=1, replicas=wanted.replicas))
        settings = await _settings(catalog, wanted)
        leases = await _bucket(
            js, api.KeyValueConfig(bucket=LEASES, history=1, ttl=settings.lease_ttl, replicas=settings.replicas)
        )
        await _stream(js, settings)
        try:
            checkpoints = await js.object_store(CHECKPOINTS)
        except NotFoundError:
            # nats-py sets the bucket from its own argument, over the config's.
            config = api.ObjectStoreConfig(replicas=settings.replicas, storage=api.StorageType.FILE)
            checkpoints = await js.create_object_store(CHECKPOINTS, config=config)
        return Cluster(nc, js, settings, leases, catalog, checkpoints)
    except BaseException:
        await nc.close()
        raise


async def _connection_error(e: Exception) -> None:
    log.warning("NATS connection: %r", e)


async def bucket_keys(js: JetStreamContext, bucket: str, token: str | None = None) -> list[str]:
    """The keys of a key-value bucket, in one request; with ``token``, only the keys ``<token>.<rest>``, whole.

    The stream's own list of subjects, filtered by the server: nats-py's ``KeyValue.keys`` watches the bucket until it
    has seen every key, and waits for ever when a key expires meanwhile (as leases and heartbeats do).
    """
    root = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=root + (f"{token}.>" if token else ">"))
    return [s[len(root) :] for s in (info.state.subjects or {})]


def subject(partition: int) -> str:
    return f"{SUBJECTS}.{partition}"


def ask_subject(partition: int) -> str:
    return f"{ASK}.{partition}"


async def _bucket(js: JetStreamContext, config: api.KeyValueConfig) -> KeyValue:
    try:
        return await js.key_value(config.bucket)
    except NotFoundError:
        try:
            return await js.create_key_value(config=config)
        except BadRequestError:  # another process created it meanwhile
            return await js.key_value(config.bucket)


async def _settings(catalog: KeyValue, wanted: ClusterSettings) -> ClusterSettings:
    try:
        await catalog.create("settings", msgspec.json.encode(wanted))
    except KeyWrongLastSequenceError:
        pass  # created before: the recorded settings win
    entry = await catalog.get("settings")
    return msgspec.json.decode(entry.value or b"", type=ClusterSettings)


async def _stream(js: JetStreamContext, settings: ClusterSettings) -> None:
    config = api.StreamConfig(
        name=STREAM,
        subjects=[f"{SUBJECTS}.*"],
        storage=api.StorageType.FILE,
        num_replicas=settings.replicas,
        retention=api.RetentionPolicy.LIMITS,
        # Entries leave the log by age only: any worker, even one that lost its lease without knowing, may write a
        # checkpoint, but none ever removes an entry, so a takeover never misses one. A partition whose checkpoint is
        # older than the log's first entry refuses to start, loudly (`worker`): nothing is silently skipped.
        max_age=settings.log_retention,
        duplicate_window=DUPLICATE_WINDOW_S,
    )
    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        try:
            await js.add_stream(config=config)
        except BadRequestError:
            await js.stream_info(STREAM)  # created meanwhile
