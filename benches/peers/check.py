"""A quick correctness check of one system, without HTTP: `python benches/peers/check.py NAME [--batches N]`.

Ingests N 1000-event batches, replays them all (every event a duplicate), and compares the per-customer totals
with what the workload generator says they must be.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
from workload import Workload  # noqa: E402

from peers import load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("name")
    ap.add_argument("--batches", type=int, default=30)
    args = ap.parse_args()
    w = Workload(args.batches)
    peer = load(args.name)
    with tempfile.TemporaryDirectory(prefix=f"peer-{args.name}-") as tmp:
        peer.open(Path(tmp))
        try:
            started = time.perf_counter()
            accepted = duplicates = 0
            for body in w.bodies:
                a, d = peer.ingest(body)
                accepted, duplicates = accepted + a, duplicates + d
            elapsed = time.perf_counter() - started
            for body in w.bodies:
                peer.ingest(body)
            got, want = peer.totals(), w.expected()
            wrong = {c: (got.get(c), v) for c, v in want.items() if got.get(c) != v}
            print(
                f"{args.name}: {w.sent_events / elapsed:,.0f} events/s, accepted {accepted}, duplicates {duplicates} "
                f"(unique in workload {w.unique_events}); customers miscounted: {len(wrong)} of {len(want)}; "
                f"duplicates a query sees: {peer.duplicates_seen()}; disk {peer.disk_bytes():,} bytes"
            )
            for c, (g, v) in list(wrong.items())[:5]:
                print(f"  {c}: got {g}, want {v}")
        finally:
            peer.close()


if __name__ == "__main__":
    main()
