"""Child process for the crash test: ingests numbered batches forever, logging each acknowledged one.

Batch ``n`` always holds the same events, so a restarted child can re-send its last unacknowledged batch the way a
real client retries. Usage: ``python crash_child.py DATA_DIR ACK_LOG``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta

from meter import AlreadyExists, Engine

EVENTS_PER_BATCH = 100
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)


def events(n: int) -> list[dict[str, object]]:
    return [
        {
            "specversion": "1.0",
            "id": f"{n}-{i}",
            "source": "crash-test",
            "type": "llm",
            "subject": f"c{i % 7}",
            "time": (T0 + timedelta(seconds=i)).isoformat(),
            "data": {"tokens": i % 13 + 1, "batch": str(n)},
        }
        for i in range(EVENTS_PER_BATCH)
    ]


def batch(n: int) -> bytes:
    # A retry of one event from the previous batch rides along: always a duplicate.
    retry = events(n - 1)[:1] if n > 0 else []
    return json.dumps(events(n) + retry).encode()


def main(data_dir: str, ack_log: str) -> None:
    acked = [int(line) for line in open(ack_log).read().split()] if os.path.exists(ack_log) else []
    with Engine(data_dir) as engine:
        try:
            # One dimension value per batch, for the check: far more combinations per minute than the default limit.
            engine.create_meter(
                "t",
                {
                    "slug": "calls",
                    "event_type": "llm",
                    "aggregation": "count",
                    "group_by": {"batch": "$.batch"},
                    "limits": {"max_combinations_per_minute": 100_000},
                },
            )
        except AlreadyExists:
            pass
        print("ready", flush=True)
        n = (max(acked) + 1) if acked else 0
        with open(ack_log, "a") as log:
            while True:
                result = engine.ingest("t", batch(n), now=NOW)
                if result.issues:  # never logged as acknowledged: the check would call it lost
                    sys.exit(f"batch {n} not accepted: {result.issues[0]}")
                log.write(f"{n}\n")
                log.flush()
                n += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
