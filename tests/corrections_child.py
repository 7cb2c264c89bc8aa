"""Child process for the corrections crash test: ingests numbered batches and corrects each, logging what was acked.

Batch ``n`` holds the same events every time; its correction cancels event ``n-0`` and amends ``n-1`` to 100 tokens.
The log gets ``I n`` once the batch is acknowledged and ``C n`` once its correction is. A restarted child sends the
last batch and correction again, the way a real client retries: both are idempotent. Usage:
``python corrections_child.py DATA_DIR ACK_LOG``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta

from meter import AlreadyExists, Engine
from meter.schemas import AmendEvent, CancelEvent, CorrectionRequest

EVENTS = 20
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)


def event(n: int, i: int, tokens: int) -> dict[str, object]:
    return {"specversion": "1.0", "id": f"{n}-{i}", "source": "crash", "type": "llm", "subject": f"c{i % 3}"} | {
        "time": (T0 + timedelta(seconds=i)).isoformat(),
        "data": {"tokens": tokens, "batch": str(n)},
    }


def batch(n: int) -> bytes:
    return json.dumps([event(n, i, i + 1) for i in range(EVENTS)]).encode()


def correction(n: int) -> CorrectionRequest:
    items = [CancelEvent(source="crash", id=f"{n}-0"), AmendEvent(event=event(n, 1, 100))]
    return CorrectionRequest(reason=f"batch {n}", items=items)


#: A batch's tokens as ingested (1 + ... + EVENTS), and once corrected (1 cancelled, 2 amended to 100).
INGESTED = EVENTS * (EVENTS + 1) // 2
CORRECTED = INGESTED - 1 - 2 + 100


def main(data_dir: str, ack_log: str) -> None:
    done = open(ack_log).read().split("\n") if os.path.exists(ack_log) else []
    ingested = [int(line[2:]) for line in done if line.startswith("I ")]
    with Engine(data_dir, maintenance_interval=None) as engine:
        try:
            spec = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
            engine.create_meter("t", spec | {"group_by": {"batch": "$.batch"}})
        except AlreadyExists:
            pass
        print("ready", flush=True)
        n = max(ingested) if ingested else 0  # the last batch again: its correction may not be acknowledged
        with open(ack_log, "a") as log:
            while True:
                result = engine.ingest("t", batch(n), now=NOW)
                if result.issues:
                    sys.exit(f"batch {n} not accepted: {result.issues[0]}")
                log.write(f"I {n}\n")
                log.flush()
                engine.correct("t", correction(n), actor="crash", now=NOW)
                log.write(f"C {n}\n")
                log.flush()
                n += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
