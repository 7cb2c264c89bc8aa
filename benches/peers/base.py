"""What every system in `make bench-peers` implements: the same usage-metering job.

Each system does it the way a competent engineer would do it on that system.

The job: take a batch of CloudEvents (the raw request body, as the HTTP front receives it), count every event
exactly once by its identity (source, id), keep the raw events, and keep a per-minute rollup of input tokens,
output tokens and requests by customer and the three dimensions (model, region, tier). Then answer usage queries
from the rollup: one customer's input tokens over [start, end), grouped by model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec


class Data(msgspec.Struct):
    model: str
    region: str
    tier: str
    input_tokens: int
    output_tokens: int
    latency_ms: int


class Event(msgspec.Struct):
    id: str
    source: str
    type: str
    subject: str
    time: str
    data: Data
    specversion: str = "1.0"


_batch = msgspec.json.Decoder(list[Event])


def decode_batch(body: bytes) -> list[Event]:
    """The same msgspec decoding for every peer, so that only the storage path differs."""
    return _batch.decode(body)


def minute_of(time: str) -> str:
    """`2026-11-23T10:11:12Z` -> `2026-11-23 10:11:00` (UTC), the rollup's bucket, as SQL timestamp text."""
    return f"{time[:10]} {time[11:16]}:00"


class Peer(ABC):
    """One system under test.

    Methods are called from one thread at a time, except `ingest` and `usage`, which the HTTP front calls from a thread
    pool (each peer makes itself safe for that: a connection per thread, or a lock).
    """

    name: str
    #: How it deduplicates, for the results table: "exact at ingest" or "at merge time only".
    dedup: str
    #: Whether an acknowledged batch survives power loss (fsync on commit).
    durable: bool

    @abstractmethod
    def open(self, data_dir: Path) -> None:
        """Starts or opens the system on an empty directory and creates its schema."""

    @abstractmethod
    def ingest(self, body: bytes) -> tuple[int, int]:
        """Applies one batch durably (per `durable`) before returning (accepted, duplicates).

        A system that cannot tell duplicates at ingest returns (len(events), 0).
        """

    @abstractmethod
    def usage(self, customer: str, start: datetime, end: datetime) -> dict[str, int]:
        """Input tokens of one customer over [start, end) by model, from the rollup."""

    @abstractmethod
    def totals(self) -> dict[str, tuple[int, int]]:
        """Per customer: (input tokens, requests) over all time, from the rollup.

        As a usage query would see them (for ClickHouse: without FINAL).
        """

    def duplicates_seen(self) -> int:
        """Duplicate events a plain query still sees (ClickHouse before merges); 0 for exact systems."""
        return 0

    @abstractmethod
    def disk_bytes(self) -> int:
        """Bytes the system keeps on disk for what it ingested (its data directory)."""

    def server_pids(self) -> list[int]:
        """Processes outside this one that do the work (a PostgreSQL server), for CPU and memory figures."""
        return []

    def settings(self) -> dict[str, Any]:
        """What the Methodology block should say about how this system is set up."""
        return {}

    @abstractmethod
    def close(self) -> None:
        """Stops everything `open` started."""
