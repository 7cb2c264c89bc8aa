"""meter itself, through the same interface as the peers: the engine in this process, fsync durability."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _common import dir_bytes
from meter import Engine

from .base import Peer

TENANT = "bench"
DIMENSIONS = {"model": "$.model", "region": "$.region", "tier": "$.tier"}
# The same rollup the peers keep: input tokens, output tokens and requests by customer and three dimensions.
METERS = [
    {
        "slug": "input-tokens",
        "event_type": "llm.request",
        "aggregation": "sum",
        "value_property": "$.input_tokens",
        "group_by": DIMENSIONS,
    },
    {
        "slug": "output-tokens",
        "event_type": "llm.request",
        "aggregation": "sum",
        "value_property": "$.output_tokens",
        "group_by": DIMENSIONS,
    },
    {"slug": "requests", "event_type": "llm.request", "aggregation": "count", "group_by": DIMENSIONS},
]
ALL_TIME = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


class MeterPeer(Peer):
    name = "meter"
    dedup = "exact at ingest"
    durable = True

    def open(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.engine = Engine(data_dir / "usage")
        for spec in METERS:
            self.engine.create_meter(TENANT, spec)

    def ingest(self, body: bytes) -> tuple[int, int]:
        result = self.engine.ingest(TENANT, body)
        return result.accepted, result.duplicates

    def usage(self, customer: str, start: datetime, end: datetime) -> dict[str, int]:
        rows = self.engine.usage(
            TENANT, "input-tokens", start=start, end=end, subjects=[customer], group_by=["model"]
        ).rows()
        return {r["model"]: int(r["value"]) for r in rows}

    def totals(self) -> dict[str, tuple[int, int]]:
        def by_customer(meter: str) -> dict[str, int]:
            rows = self.engine.usage(TENANT, meter, start=ALL_TIME[0], end=ALL_TIME[1], group_by=["subject"]).rows()
            return {r["subject"]: int(r["value"]) for r in rows}

        tokens, requests = by_customer("input-tokens"), by_customer("requests")
        return {c: (tokens.get(c, 0), requests.get(c, 0)) for c in tokens.keys() | requests.keys()}

    def disk_bytes(self) -> int:
        return dir_bytes(self.data_dir)

    def settings(self) -> dict[str, Any]:
        return {
            "version": version("meter"),
            "durability": "fsync (WAL synced before every acknowledgement)",
            "meters": ", ".join(m["slug"] for m in METERS),
        }

    def close(self) -> None:
        self.engine.close()
