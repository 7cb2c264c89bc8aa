"""Crash test for corrections: a child ingests batches and corrects each, and is killed with SIGKILL at random.

After each kill, every batch whose correction was acknowledged is corrected, exactly (never twice, never half), and
every batch acknowledged is either as ingested or as corrected: a correction is one synced write, all or nothing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from meter import Engine

sys.path.insert(0, str(Path(__file__).parent))
from corrections_child import CORRECTED, EVENTS, INGESTED, T0  # noqa: E402

KILLS = 12
CHILD = Path(__file__).parent / "corrections_child.py"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_never_tears_or_repeats_a_correction(tmp_path: Path) -> None:
    rng = random.Random(20261203)
    data, ack_log = tmp_path / "db", tmp_path / "acked.log"
    checked = {"kills": 0, "corrected": 0, "ingested_only": 0}
    for _ in range(KILLS):
        with subprocess.Popen(
            [sys.executable, str(CHILD), str(data), str(ack_log)], stdout=subprocess.PIPE, text=True
        ) as child:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.05, 0.6))
            os.kill(child.pid, signal.SIGKILL)
        checked["kills"] += 1
        lines = ack_log.read_text().split("\n")
        ingested = {int(line[2:]) for line in lines if line.startswith("I ")}
        corrected = {int(line[2:]) for line in lines if line.startswith("C ")}
        with Engine(data, maintenance_interval=None) as engine:
            rows = engine.usage("t", "tokens", start=T0, end=T0 + timedelta(minutes=5), group_by=["batch"]).rows()
            totals = {int(r["batch"]): (int(r["value"]), r["events"]) for r in rows}
        for n in ingested:
            if n in corrected:
                assert totals[n] == (CORRECTED, EVENTS - 1), (n, totals.get(n))
            else:  # the correction may have been written before the kill, never half of it
                assert totals[n] in ((INGESTED, EVENTS), (CORRECTED, EVENTS - 1)), (n, totals.get(n))
        assert all(v in ((INGESTED, EVENTS), (CORRECTED, EVENTS - 1)) for v in totals.values()), totals
        checked["corrected"], checked["ingested_only"] = len(corrected), len(ingested - corrected)
    assert checked["corrected"] >= 5, checked
