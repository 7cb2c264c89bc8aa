"""The usage workload shared by the benchmarks.

AI-gateway events of about 230 bytes, 10k customers drawn from a Zipf law, three dimensions, five meters, and 5%
duplicates (whole-batch retries and single re-sent events). Event times lie up to 10 seconds before the generation time,
as from a gateway that batches for a few seconds.

Generated once from a seed and pre-encoded, so the timed loop does no per-event work.
"""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

CUSTOMERS = 10_000
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "claude-haiku", "llama-70b", "mistral-large"]
REGIONS = ["eu-west", "us-east", "us-west", "ap-south"]
TIERS = ["free", "pro", "team"]

METERS: list[dict[str, Any]] = [
    {
        "slug": "input-tokens",
        "event_type": "llm.request",
        "aggregation": "sum",
        "value_property": "$.input_tokens",
        "group_by": {"model": "$.model", "region": "$.region", "tier": "$.tier"},
    },
    {
        "slug": "output-tokens",
        "event_type": "llm.request",
        "aggregation": "sum",
        "value_property": "$.output_tokens",
        "group_by": {"model": "$.model", "region": "$.region", "tier": "$.tier"},
    },
    {
        "slug": "requests",
        "event_type": "llm.request",
        "aggregation": "count",
        "group_by": {"model": "$.model", "region": "$.region"},
    },
    {
        "slug": "peak-input",
        "event_type": "llm.request",
        "aggregation": "max",
        "value_property": "$.input_tokens",
        "group_by": {"model": "$.model"},
    },
    {
        "slug": "latency",
        "event_type": "llm.request",
        "aggregation": "avg",
        "value_property": "$.latency_ms",
        "group_by": {"model": "$.model"},
    },
]


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1 / (k**s) for k in range(1, n + 1)]


class Workload:
    """Pre-encoded batch bodies plus the counts a correct engine must report for them."""

    def __init__(self, batches: int, batch_size: int = 1000, seed: int = 42, duplicate_share: float = 0.05) -> None:
        rng = random.Random(seed)
        customers = [f"cust-{i:05d}" for i in range(CUSTOMERS)]
        cum_weights = list(itertools.accumulate(zipf_weights(CUSTOMERS)))
        now = datetime.now(UTC).replace(microsecond=0)
        self.bodies: list[bytes] = []
        #: Per body: what its first-seen events add per customer, (input tokens, requests). Duplicates only ever
        #: repeat events of earlier bodies, so the first k bodies must count exactly `expected(k)`.
        self.fresh: list[dict[str, tuple[int, int]]] = []
        self.unique_events = 0
        self.sent_events = 0
        sent: list[list[dict[str, Any]]] = []
        # Half the duplicates come as whole-batch retries, half as single events re-sent inside fresh batches.
        resend_per_batch = int(batch_size * duplicate_share / 2)
        for b in range(batches):
            if sent and rng.random() < duplicate_share / 2:
                events = rng.choice(sent)
                self.fresh.append({})
            else:
                fresh = batch_size - (resend_per_batch if sent else 0)
                subjects = rng.choices(customers, cum_weights=cum_weights, k=fresh)
                events = [self._event(rng, b, i, subjects[i], now) for i in range(fresh)]
                self.unique_events += fresh
                self.fresh.append(totals(events))
                sent.append(events)
                if len(sent) > 1:
                    pool = sent[-2]
                    events = events + rng.sample(pool, resend_per_batch)
            self.bodies.append(json.dumps(events, separators=(",", ":")).encode())
            self.sent_events += len(events)
        self.event_bytes = sum(map(len, self.bodies)) / self.sent_events

    def expected(self, bodies: int | None = None) -> dict[str, tuple[int, int]]:
        """Per customer, (input tokens, requests) that counting the first `bodies` bodies exactly once gives."""
        out: dict[str, tuple[int, int]] = {}
        for fresh in self.fresh[:bodies]:
            for customer, (tokens, requests) in fresh.items():
                t, r = out.get(customer, (0, 0))
                out[customer] = (t + tokens, r + requests)
        return out

    @staticmethod
    def _event(rng: random.Random, b: int, i: int, subject: str, now: datetime) -> dict[str, Any]:
        t = now - timedelta(seconds=rng.randrange(10))
        return {
            "specversion": "1.0",
            "id": f"{rng.getrandbits(64):016x}",
            "source": "gw-eu-1",
            "type": "llm.request",
            "subject": subject,
            "time": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "data": {
                "model": rng.choice(MODELS),
                "region": rng.choice(REGIONS),
                "tier": rng.choice(TIERS),
                "input_tokens": rng.randrange(1, 8000),
                "output_tokens": rng.randrange(1, 2000),
                "latency_ms": rng.randrange(20, 5000),
            },
        }


def totals(events: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for e in events:
        t, r = out.get(e["subject"], (0, 0))
        out[e["subject"]] = (t + e["data"]["input_tokens"], r + 1)
    return out
