"""bench-revenue at a tiny scale (20 subscriptions, the same year of invoices), so that `make test` keeps it working.

The script is run as `make bench-revenue` runs it (build, the timed close in a fresh process, the ceiling in another),
with `--print-only` so that benches/results/revenue.json keeps the real run's figures. Nothing here is timed: the
checks are the benchmark's own (the close's figures against its reference, a second close posting nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from calendar import monthrange
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).parent.parent / "benches" / "bench_revenue.py"


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = tmp_path_factory.mktemp("bench-revenue") / "data"
    python = str(Path(__file__).parent.parent / "python")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [python, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, str(BENCH), "--subscriptions", "20", "--data", str(data), "--print-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("{"), done.stdout[-2000:] + done.stderr[-2000:]
    result: dict[str, Any] = json.loads(lines[-1])
    result["returncode"] = done.returncode
    return result


def test_a_year_closes_in_twelve_steps_to_the_cent_and_once(figures: dict[str, Any]) -> None:
    month_ends = [date(2026, m, monthrange(2026, m)[1]).isoformat() for m in range(1, 13)]
    assert list(figures["step_seconds"]) == month_ends
    assert figures["errors"] == 0
    assert figures["journal_entries"] == 24  # each step: one revenue entry per currency (USD, EUR)
    # 18 monthly subscriptions x 13 months invoiced; the annual ones: January 2026 and 2027, and February 2026.
    assert figures["invoices"] == 18 * 13 + 3
    assert figures["rows"] > 0
    # By hand. USD: 16 subscriptions on calendar cycles earn 12 x 29.00; the two anchored on January 10 and 11 earn
    # 11 whole cycles and December's days of the cycle [Dec d, Jan d) of 31 days: 29 x 22/31 = 20.58 (20.5806),
    # 29 x 21/31 = 19.65 (19.6452). EUR: the annual subscription from January 1 earns its 290.00; the one from
    # February 1 (365 days) earns February to December: 290 x 28/365 = 22.25, six 31-day months of 24.63 (24.6301),
    # four 30-day months of 23.84 (23.8356).
    usd = 16 * 12 * Decimal("29.00") + 2 * 11 * Decimal("29.00") + Decimal("20.58") + Decimal("19.65")
    eur = Decimal("290.00") + Decimal("22.25") + 6 * Decimal("24.63") + 4 * Decimal("23.84")
    assert (usd, eur) == (Decimal("6246.23"), Decimal("555.39"))
    fees = {cur: Decimal(sums["fees"]) for cur, sums in figures["recognized"].items()}
    assert fees == {"USD": usd, "EUR": eur}
    assert fees == {cur: Decimal(sums["fees"]) for cur, sums in figures["reference"].items()}
    assert figures["second_close_posts_nothing"]
    assert figures["ceiling_lines"] > 0 and figures["ceiling_seconds"] > 0


def test_usage_is_recognized_in_the_month_it_was_consumed(figures: dict[str, Any]) -> None:
    """Each month earns the usage consumed in it, anchored and annual cycles too (their invoices come later)."""
    assert figures["usage_months_off"] == {}
    assert figures["exact"], (figures["recognized"], figures["reference"])
    assert figures["returncode"] == 0
