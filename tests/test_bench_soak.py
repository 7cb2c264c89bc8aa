"""bench-soak's own logic, without running it: the bodies it builds and how it judges a run from its samples.

The engine's retention settings are being added while this benchmark is written, so the judgement of a bounded run
is checked here on made-up samples. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benches"))
import bench_soak  # noqa: E402


def test_bodies_resend_identical_events_and_nothing_else_repeats() -> None:
    sender = bench_soak.Sender(bench_soak.templates(6, 500, seed=1), retry_age_s=60, seed=2)
    first_seen: dict[str, str] = {}
    events = duplicates = retries = 0
    for _ in range(400):
        body, retry = sender.next()
        retries += retry
        assert b"~" not in body  # every placeholder filled
        batch = json.loads(body)
        assert len(batch) == bench_soak.BATCH
        for e in batch:
            events += 1
            raw = json.dumps(e, sort_keys=True)
            if e["id"] in first_seen:
                duplicates += 1
                assert first_seen[e["id"]] == raw  # a re-sent event is the same event: a duplicate, never a conflict
            else:
                first_seen[e["id"]] = raw
    # 25 of every fresh batch (after the first) re-send the batch before; retries re-send whole batches.
    assert duplicates == (400 - retries - 1) * bench_soak.RESENT_PER_BATCH + retries * bench_soak.BATCH
    assert 0.03 < duplicates / events < 0.08
    assert all(e["time"].endswith("Z") and len(e["time"]) == 20 for e in batch)


def run_of(
    rss: Any, disk_after_fill: Any, in_effect: tuple[str, ...] = ("retention_s",), rate: Any = lambda t: 1000.0
) -> tuple[dict[str, Any], argparse.Namespace]:
    """A made-up 10-minute soak with a 60-s window.

    Disk grows by 100 bytes per unique event until the window is full, then is `disk_after_fill(t)`; `rss(t)` in KiB;
    `rate(t)` events/s, all unique.
    """
    window, start = 60, 1_000_000
    samples: list[dict[str, Any]] = [
        {
            "phase": "start",
            "t": 0.0,
            "t_ingest": 0.0,
            "unique": 0,
            "disk_bytes": start,
            "rss_kib": rss(0),
            "hwm_kib": rss(0),
        }
    ]
    unique = 0
    for t in range(10, 601, 10):
        unique += int(rate(t) * 10)
        disk = start + 100 * unique if t <= window else disk_after_fill(t)
        samples.append(
            {
                "phase": "paced",
                "t": float(t),
                "t_ingest": float(t),
                "unique": unique,
                "disk_bytes": disk,
                "rss_kib": rss(t),
                "hwm_kib": rss(t),
                "events_per_s": rate(t),
                "accepted": rate(t) * 10,
                "seconds": 10.0,
                "ack_p99_ms": 3.0,
                "cpu_share": 0.4,
                "lag_s": 0.0,
            }
        )
    run = {
        "samples": samples,
        "target_events_per_s": 1000,
        "max_events_per_s": 1250,
        "disk_start": start,
        "in_effect": {k: window for k in in_effect},
        "refused": {},
        "restart_open_s": 0.5,
        "hwm_kib": rss(600),
    }
    args = argparse.Namespace(
        window_s=window,
        rate_fraction=0.8,
        rss_growth_pct=5.0,
        throughput_change_pct=5.0,
        disk_growth_pct=10.0,
        disk_tolerance=0.5,
    )
    return run, args


def test_a_steady_bounded_run_passes() -> None:
    # One window of events is kept, and on average half a maintenance step more.
    plateau = 1_000_000 + 100 * 1000 * (60 + bench_soak.MAINTENANCE_S / 2)
    figures = bench_soak.analyse(*run_of(rss=lambda t: 500_000, disk_after_fill=lambda t: plateau * 1.1))
    assert figures["pass"] == {
        "rss_flat": True,
        "throughput_flat": True,
        "disk_as_predicted": True,
        "restart_measured": True,
    }
    assert figures["passed"] and figures["reasons"] == []
    assert figures["disk_bytes_per_unique_event_fill"] == pytest.approx(100)
    assert figures["disk_predicted_mib"] == pytest.approx(plateau / 2**20, abs=0.1)
    assert figures["disk_measured_vs_predicted"] == pytest.approx(1.1, abs=0.001)
    assert figures["rss_growth_pct"] == pytest.approx(0)


def test_growing_memory_disk_and_a_falling_rate_fail_each_criterion() -> None:
    plateau = 1_000_000 + 100 * 1000 * 60
    figures = bench_soak.analyse(
        *run_of(
            rss=lambda t: 500_000 + 100 * t,  # +8% over the last two thirds
            disk_after_fill=lambda t: plateau + 20_000 * t,
            rate=lambda t: 1000.0 - 0.2 * t,
        )
    )
    assert figures["pass"] == {
        "rss_flat": False,
        "throughput_flat": False,
        "disk_as_predicted": False,
        "restart_measured": True,
    }
    assert not figures["passed"] and len(figures["reasons"]) == 3
    assert figures["rss_growth_pct"] == pytest.approx(40_000 / 520_000 * 100, rel=1e-3)


def test_without_retention_disk_is_unbounded_and_fails_with_the_predicted_slope() -> None:
    figures = bench_soak.analyse(
        *run_of(rss=lambda t: 500_000, disk_after_fill=lambda t: 1_000_000 + 100_000 * t, in_effect=("dedup_window_s",))
    )
    assert figures["pass"]["disk_as_predicted"] is False and figures["pass"]["rss_flat"] is True
    assert figures["disk_predicted_mib"] is None
    assert figures["disk_predicted_slope_mib_per_h"] == pytest.approx(100 * 1000 * 3600 / 2**20, abs=0.1)
    assert "no retention in effect" in figures["reasons"][0]


def test_settings_the_engine_does_not_take_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    import meter
    from meter import _core

    class Engine:
        def __init__(
            self,
            path: str,
            *,
            dedup_window: timedelta = timedelta(days=35),
            dedup_cache_mb: int = 64,
            retention_s: int = 0,
        ) -> None: ...

    class Core:
        """Stands for the PyO3 class: only its `__text_signature__` is read (on a Python class, `type`'s own wins)."""

        __text_signature__ = '(path, *, durability="fsync", dedup_window_s=..., cache_mb=512, recent_dedup_s=60)'

    monkeypatch.setattr(meter, "Engine", Engine)
    monkeypatch.setattr(_core, "Engine", Core())
    wanted = {"dedup_window_s": 60, "dedup_cache_mb": 8, "retention_s": 60, "minute_aggregates_s": 60}
    s = bench_soak.Settings(wanted)
    assert s.python == {"dedup_window": timedelta(seconds=60), "dedup_cache_mb": 8, "retention_s": 60}
    assert s.in_effect == {"dedup_window_s": 60, "dedup_cache_mb": 8, "retention_s": 60}
    assert s.refused == {"minute_aggregates_s": 60} and s.via == "meter.Engine"
    s.drop("dedup_window")  # as after a TypeError naming it
    assert "dedup_window" not in s.python and s.refused == {"minute_aggregates_s": 60, "dedup_window_s": 60}
