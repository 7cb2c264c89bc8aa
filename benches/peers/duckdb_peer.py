"""DuckDB, embedded: raw events keyed by (source, id), and a per-minute rollup.

Exact dedup at ingest through the primary key; the rollup is upserted in the same transaction from only the events that
were new.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from _common import dir_bytes

from .base import Peer, decode_batch

SCHEMA = """
CREATE TABLE events (
    source VARCHAR NOT NULL, id VARCHAR NOT NULL, subject VARCHAR NOT NULL, time TIMESTAMPTZ NOT NULL,
    model VARCHAR NOT NULL, region VARCHAR NOT NULL, tier VARCHAR NOT NULL,
    input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, latency_ms BIGINT NOT NULL,
    PRIMARY KEY (source, id)
);
CREATE TABLE rollup (
    customer VARCHAR NOT NULL, minute TIMESTAMPTZ NOT NULL, model VARCHAR NOT NULL, region VARCHAR NOT NULL,
    tier VARCHAR NOT NULL, input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, requests BIGINT NOT NULL,
    PRIMARY KEY (customer, minute, model, region, tier)
);
"""

# The batch arrives as a registered Arrow table `batch` with `time` still as RFC 3339 text: the cast to TIMESTAMPTZ
# honours a `Z` or an offset, where a cast to TIMESTAMP would silently drop the offset. ON CONFLICT DO NOTHING also
# skips an id repeated inside the batch (first one wins), and RETURNING hands back exactly the rows that were new.
INSERT_EVENTS = """
INSERT INTO events
SELECT source, id, subject, time::TIMESTAMPTZ, model, region, tier, input_tokens, output_tokens, latency_ms FROM batch
ON CONFLICT DO NOTHING
RETURNING subject, time, model, region, tier, input_tokens, output_tokens
"""

# Grouped first, so that each rollup key appears once: given a key twice in one statement, DuckDB 2.0.0 applies
# only the first row and silently drops the rest (tried), which would lose tokens.
UPSERT_ROLLUP = """
INSERT INTO rollup
SELECT subject, date_trunc('minute', time), model, region, tier, sum(input_tokens), sum(output_tokens), count(*)
FROM fresh
GROUP BY ALL
ON CONFLICT DO UPDATE SET
    input_tokens = rollup.input_tokens + EXCLUDED.input_tokens,
    output_tokens = rollup.output_tokens + EXCLUDED.output_tokens,
    requests = rollup.requests + EXCLUDED.requests
"""


class DuckDB(Peer):
    name = "duckdb"
    dedup = "exact at ingest"
    # With the default fsync_mode (STANDARD), every commit fdatasyncs the WAL before COMMIT returns (seen with
    # strace on duckdb 2.0.0).
    durable = True

    def open(self, data_dir: Path) -> None:
        self._dir = data_dir
        self._con = duckdb.connect(str(data_dir / "meter.duckdb"))
        # date_trunc on TIMESTAMPTZ works in the session time zone: pin it so minutes are UTC minutes.
        self._con.execute("SET TimeZone = 'UTC'")
        self._con.execute(SCHEMA)
        # DuckDB takes one writer at a time and aborts concurrent transactions that upsert the same rollup row, so
        # ingest is serialised here instead of retried; reads use a cursor per thread (a connection is not
        # thread-safe) and see committed snapshots without waiting for the writer.
        self._write = threading.Lock()
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._guard = threading.Lock()

    def ingest(self, body: bytes) -> tuple[int, int]:
        events = decode_batch(body)
        data = [e.data for e in events]
        batch = pa.table(
            {
                "source": [e.source for e in events],
                "id": [e.id for e in events],
                "subject": [e.subject for e in events],
                "time": [e.time for e in events],
                "model": [d.model for d in data],
                "region": [d.region for d in data],
                "tier": [d.tier for d in data],
                "input_tokens": pa.array([d.input_tokens for d in data], pa.int64()),
                "output_tokens": pa.array([d.output_tokens for d in data], pa.int64()),
                "latency_ms": pa.array([d.latency_ms for d in data], pa.int64()),
            }
        )
        with self._write:
            con = self._con
            # Registering under the same names replaces the previous batch's tables.
            con.register("batch", batch)
            con.begin()
            try:
                fresh = con.sql(INSERT_EVENTS).to_arrow_table()
                con.register("fresh", fresh)
                con.execute(UPSERT_ROLLUP)
                con.commit()
            except BaseException:
                con.rollback()
                raise
        return fresh.num_rows, len(events) - fresh.num_rows

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._con.cursor()
            with self._guard:
                self._cursors.append(cur)
        return cur

    def usage(self, customer: str, start: datetime, end: datetime) -> dict[str, int]:
        rows = (
            self._cursor()
            .execute(
                "SELECT model, sum(input_tokens)::BIGINT FROM rollup"
                " WHERE customer = ? AND minute >= ? AND minute < ? GROUP BY model",
                [customer, start, end],
            )
            .fetchall()
        )
        return dict(rows)

    def totals(self) -> dict[str, tuple[int, int]]:
        rows = (
            self._cursor()
            .execute("SELECT customer, sum(input_tokens)::BIGINT, sum(requests)::BIGINT FROM rollup GROUP BY customer")
            .fetchall()
        )
        return {c: (t, r) for c, t, r in rows}

    def disk_bytes(self) -> int:
        return dir_bytes(self._dir)

    def settings(self) -> dict[str, Any]:
        fsync_mode = self._con.execute("SELECT current_setting('fsync_mode')").fetchone()[0]
        return {
            "version": duckdb.__version__,
            "durability": f"fsync_mode={fsync_mode}: the WAL is fdatasync'd on every commit",
            "dedup": "PRIMARY KEY (source, id) with INSERT ... ON CONFLICT DO NOTHING RETURNING; the rollup is "
            "upserted from the returned (new) rows in the same transaction",
            "batch load": "msgspec-decoded batch as a registered Arrow table, one transaction per batch",
            "concurrency": "one writer (a lock), a cursor per reading thread",
        }

    def close(self) -> None:
        for cur in self._cursors:
            cur.close()
        self._con.close()
