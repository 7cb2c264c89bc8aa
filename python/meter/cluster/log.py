"""The log: where an edge appends a part of a request, and whence a worker reads its partition in order.

This module is the seam a second log would implement (a Kafka-protocol one: a topic with one partition per meter
partition, the producer's idempotence for the quick-retry dedup, offsets for positions): ``append`` a part with an
idempotency key and get its position, ``read_after`` a position in a partition's order, and ``first_position``, the
oldest entry the log still holds (entries leave it by age). The position the worker stores with its state is the
other half (``worker``).

An entry is the request's bytes (the events' JSON, unchanged; a meter's spec) with headers saying whose, what, and
when the edge received it: the clock the engine decides the entry by, so that any replay decides as the first did.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from typing import Literal

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from meter.cluster.runner import ClusterUnavailable
from meter.cluster.settings import STREAM, subject
from meter.engine import LogEntry

__all__ = ["LogUnavailable", "append", "first_position", "read_after"]

Op = Literal["ingest", "create_meter", "delete_meter"]
OPS: tuple[Op, ...] = ("ingest", "create_meter", "delete_meter")

TENANT, RECEIVED, OP, ATOMIC, INDEXES = "Meter-Tenant", "Meter-Received", "Meter-Op", "Meter-Atomic", "Meter-Indexes"
#: How long an append retries while the log elects a leader or a node restarts, before the edge gives up (503).
APPEND_DEADLINE_S = 20.0


class LogUnavailable(ClusterUnavailable):
    """The log did not store an append within the deadline: the client should retry (503)."""


async def append(
    js: JetStreamContext,
    partition: int,
    tenant: str,
    op: Op,
    body: bytes,
    received_us: int,
    *,
    atomic: bool = False,
    indexes: Sequence[int] = (),
) -> int:
    """Appends an entry to a partition and returns its position once a quorum of the log stored it.

    Retried until stored: the idempotency key is the entry's content (tenant, partition, op, flags, body; not the
    receive time), so a retry of a quick failure, this edge's or the client's, is stored once by the log itself,
    and a later retry is a duplicate for the engine's dedup.
    """
    flags = f"{tenant}\0{partition}\0{op}\0{int(atomic)}\0{','.join(map(str, indexes))}\0".encode()
    headers = {
        "Nats-Msg-Id": hashlib.blake2b(flags + body, digest_size=16).hexdigest(),
        TENANT: tenant,
        RECEIVED: str(received_us),
        OP: op,
        ATOMIC: "1" if atomic else "0",
    }
    if indexes:
        headers[INDEXES] = ",".join(map(str, indexes))
    deadline = time.monotonic() + APPEND_DEADLINE_S
    while True:
        try:
            ack = await js.publish(subject(partition), body, stream=STREAM, headers=headers, timeout=5.0)
            return ack.seq
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, NoStreamResponseError) as e:
            failure: Exception = e
        except APIError as e:  # 503: no quorum right now (a node down, an election)
            if e.code != 503:
                raise
            failure = e
        if time.monotonic() > deadline:
            raise LogUnavailable(f"the log did not store the events within {APPEND_DEADLINE_S:.0f} s: {failure!r}")
        await asyncio.sleep(0.2)


async def read_after(js: JetStreamContext, partition: int, position: int, limit: int) -> list[LogEntry]:
    """The partition's entries after ``position``, in order, at most ``limit`` of them (none when it has no more)."""
    entries: list[LogEntry] = []
    while len(entries) < limit:
        try:
            raw = await js.get_msg(STREAM, seq=position + 1, subject=subject(partition), next=True)
        except NotFoundError:
            break
        entries.append(_entry(raw.seq or 0, raw.headers or {}, raw.data or b""))
        position = entries[-1].seq
    return entries


def _entry(seq: int, headers: dict[str, str], body: bytes) -> LogEntry:
    indexes = headers.get(INDEXES)
    return LogEntry(
        seq=seq,
        tenant=headers[TENANT],
        received_us=int(headers[RECEIVED]),
        op=_op(headers[OP]),
        body=body,
        atomic=headers.get(ATOMIC) == "1",
        indexes=[int(i) for i in indexes.split(",")] if indexes else (),
    )


async def first_position(js: JetStreamContext) -> int:
    """The position of the oldest entry the log holds (of any partition); 0 when it holds none."""
    state = (await js.stream_info(STREAM)).state
    return state.first_seq if state.messages else 0


def _op(value: str) -> Op:
    for op in OPS:
        if value == op:
            return op
    raise ValueError(f"unknown log entry op {value!r}")
