"""A SIGKILL during an export leaves every Parquet file readable: the old one or the new one, never a torn one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

CHILD = """
import json, sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from meter import Engine
from meter.lake.usage import export_usage

data, out = Path(sys.argv[1]), Path(sys.argv[2])
now = datetime(2026, 11, 23, tzinfo=timezone.utc)
with Engine(data) as engine:
    if not engine.list_meters("acme"):
        engine.create_meter("acme", {"slug": "tokens", "event_type": "llm", "aggregation": "sum",
                                     "value_property": "$.tokens", "group_by": {"model": "$.model"}})
        events = [{"specversion": "1.0", "id": f"e{i}", "source": "gw", "type": "llm", "subject": f"c{i % 50}",
                   "time": (now - timedelta(minutes=i * 7)).isoformat(), "data": {"tokens": i, "model": f"m{i % 5}"}}
                  for i in range(6000)]
        engine.ingest("acme", json.dumps(events).encode(), now=now)
    print("ready", flush=True)
    while True:
        export_usage(engine, ["acme"], out)
"""


def test_a_kill_during_export_never_leaves_a_torn_file(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    rng = random.Random(11)
    kills = 0
    for _ in range(10):
        with subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(out)], stdout=subprocess.PIPE) as child:
            assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.05, 0.4))
            os.kill(child.pid, signal.SIGKILL)
        kills += 1
        for f in out.rglob("part-0.parquet"):
            pq.read_table(f)  # raises on a torn file
    files = list(out.rglob("part-0.parquet"))
    assert kills == 10 and len(files) > 20, "the kills landed while days were being written"
    # Readers skip the temporary files a kill may leave (their names start with a dot).
    assert ds.dataset(out / "usage", format="parquet", partitioning="hive").to_table().num_rows > 0
