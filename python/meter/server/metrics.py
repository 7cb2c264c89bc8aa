"""Prometheus metrics (`GET /metrics`, operator only): answers by status, the engine's counters and health.

The text exposition format 0.0.4, rendered on demand from counters the app and the engine already keep: nothing is
sampled in the background and nothing here touches a disk (`Engine.stats()` reads in-memory counters).

Invariants:
- Label values are escaped (backslash, double quote, newline): a tenant or meter id can never break a line.
- Without an open engine (starting, degraded) only the answer counter is exposed; a metric never lies about a
  store it cannot see.
"""

from __future__ import annotations

from collections.abc import Mapping

from meter.engine import Engine
from meter.server.context import Unavailable

__all__ = ["render"]


def render(
    responses: dict[int, int],
    engine: Engine | Unavailable | None,
    exports_done: int,
    webhook_attempts: Mapping[str, int] | None = None,
) -> str:
    """The exposition: `responses` (answers by status), webhook attempts, then the engine's figures if it is open."""
    lines = ["# TYPE meter_http_responses_total counter"]
    lines += [f'meter_http_responses_total{{status="{k}"}} {v}' for k, v in sorted(responses.items())]
    if webhook_attempts is not None:
        # Outgoing webhook attempts since the start, by what they left the delivery (see meter.money.webhooks).
        lines.append("# TYPE meter_webhook_attempts_total counter")
        lines += [
            f'meter_webhook_attempts_total{{outcome="{outcome}"}} {webhook_attempts.get(outcome, 0)}'
            for outcome in ("delivered", "pending", "failed")
        ]
    if engine is not None and not isinstance(engine, Unavailable):
        s = engine.stats()
        for name, kind, value in [
            ("meter_events_accepted_total", "counter", s.accepted),
            ("meter_events_duplicate_total", "counter", s.duplicates),
            ("meter_events_rejected_total", "counter", s.rejected),
            ("meter_queue_depth", "gauge", s.queue_depth),
            ("meter_exports_total", "counter", exports_done),
            ("meter_store_healthy", "gauge", 0 if engine.failure() else 1),
        ]:
            lines += [f"# TYPE {name} {kind}", f"{name} {value}"]
        lines.append("# TYPE meter_commit_seconds histogram")
        for bound, count in s.commit_seconds_buckets:
            le = "+Inf" if bound is None else repr(bound)
            lines.append(f'meter_commit_seconds_bucket{{le="{le}"}} {count}')
        lines += [f"meter_commit_seconds_sum {s.commit_seconds_total}", f"meter_commit_seconds_count {s.commits}"]
        lines.append("# TYPE meter_events_skipped_total counter")
        lines += [
            f'meter_events_skipped_total{{tenant="{_label(c.tenant)}",meter="{_label(c.meter)}"}} {c.events}'
            for c in s.skipped
        ]
        m = s.maintenance
        lines += [
            "# TYPE meter_maintenance_runs_total counter",
            f"meter_maintenance_runs_total {m.runs}",
            "# TYPE meter_maintenance_healthy gauge",
            f"meter_maintenance_healthy {0 if m.last_error else 1}",
        ]
        # Retained events past retention that stay because the export has not written them (export them).
        lines.append("# TYPE meter_retained_events_held_back gauge")
        lines += [f'meter_retained_events_held_back{{tenant="{_label(h.tenant)}"}} {h.events}' for h in m.held_back]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
