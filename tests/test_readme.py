"""The README works as written: its shell and Python blocks run, in order, against a real server.

Every fenced block of README.md is run, unless an HTML comment right before it says why it cannot be
(``<!-- readme-test: skip: <why> -->``). Shell blocks run in one bash session, as a reader types them in one terminal:
each block starts from the variables the previous ones exported. Python blocks run with that session's environment.
The test substitutes only what the README's skipped setup block sets: ``METER_URL`` (its own server) and ``ADMIN``
(that server's operator key); ``meter`` is on the PATH as after ``source .venv/bin/activate``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from http_server import Server
from meter.catalog.keys import new_key

README = Path(__file__).resolve().parent.parent / "README.md"
RUNS = {"sh": "bash", "bash": "bash", "python": "python"}
SKIP = re.compile(r"<!-- readme-test: skip: (?P<why>.+) -->", re.S)
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```\s*$", re.M | re.S)

# What the walkthroughs must print: (a text that picks out exactly one block, texts its output must contain).
EXPECTED = [
    (
        "meter ingest events.ndjson",
        [
            "1 events: 1 accepted, 0 duplicates, 0 rejected",
            "1 events: 0 accepted, 1 duplicates, 0 rejected",
            "gpt-4o",
            "1200",
        ],
    ),
    ("/v1/meters/tokens/usage?", ['"subject":"customer-42","model":"gpt-4o","value":"1200","events":1']),
    ("meter.Client(os.environ", ["1 0"]),
    ("def send_all()", ["counted 150", "again 150"]),
    ("/v1/backfills/bf-42/events", ['"status":"pending"', '{"staged":1,"events":1}', '"status":"reverted"']),
    ("/v1/events/corrections", ['"status":"amended"', '"status":"cancelled"', "amended 1000 ['accepted', 'amended']"]),
    (
        "entitlements/tokens -H",
        [
            '"has_access":true',
            '"remaining":"1000000"',
            '"has_access":false,"kind":"metered","reason":"limit_reached"',
            "balance 0.00 USD of 5.00 granted",
            '"type":"usage.threshold_crossed"',
        ],
    ),
    ("meter.Engine(", ["1 0 []", "'model': 'gpt-4o', 'value': Decimal('1200.000000000'), 'events': 1"]),
]


@dataclass
class Block:
    line: int
    lang: str
    code: str
    skip: str | None

    def __str__(self) -> str:
        return f"README.md:{self.line} (```{self.lang})"


def blocks(text: str) -> list[Block]:
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip()  # the comment, if any, is what comes last before the fence
        comment = SKIP.fullmatch(before[before.rfind("<!--") :]) if before.endswith("-->") else None
        skip = " ".join(comment["why"].split()) if comment else None
        found.append(Block(text.count("\n", 0, m.start()) + 1, m["lang"], m["code"], skip))
    return found


def test_every_block_runs_or_says_why_not() -> None:
    found = blocks(README.read_text())
    assert len(found) >= 8, "the fence pattern no longer finds the README's blocks"
    unrunnable = [str(b) for b in found if b.skip is None and b.lang not in RUNS]
    assert not unrunnable, (
        f"blocks the test cannot run and that do not say why (<!-- readme-test: skip: ... -->): {unrunnable}"
    )
    for key, _ in EXPECTED:
        assert len([b for b in found if key in b.code and b.skip is None]) == 1, f"no single run block has {key!r}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "data", admin_key=new_key())
    yield s
    s.stop()


def test_the_readme_works_as_written(server: Server, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    state = tmp_path / "session.sh"  # the exported variables of the shell session so far
    env = {
        **os.environ,
        "METER_URL": server.url,
        "ADMIN": server.admin_key,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "COLUMNS": "200",
    }
    env.pop("METER_API_KEY", None)
    state.write_text("")
    outputs: dict[int, str] = {}
    for block in blocks(README.read_text()):
        if block.skip is not None:
            continue
        if RUNS[block.lang] == "bash":
            # set -e: a failing command fails the block; the session's variables carry over to the next block.
            script = f"source {state} || true\nset -euo pipefail\n{block.code}\nexport -p > {state}\n"
            result = subprocess.run(
                ["bash", "-c", script],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=120,
            )
        else:
            source = work / f"readme_{block.line}.py"
            source.write_text(block.code)
            session = subprocess.run(
                ["bash", "-c", f"source {state}; env -0"], env=env, capture_output=True, text=True, check=True
            )
            block_env = dict(v.split("=", 1) for v in session.stdout.split("\0") if "=" in v)
            result = subprocess.run(
                [sys.executable, source.name],
                cwd=work,
                env=block_env,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=120,
            )
        assert result.returncode == 0, (
            f"{block} failed:\n{block.code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
        outputs[block.line] = result.stdout
    found = {b.line: b for b in blocks(README.read_text())}
    for key, expected in EXPECTED:
        [line] = [line for line in outputs if key in found[line].code]
        for text in expected:
            assert text in outputs[line], f"{found[line]} should print {text!r}; it printed:\n{outputs[line]}"


def test_make_serve_takes_port_and_host() -> None:
    # --no-print-directory: under `make test` this make is a sub-make, which would print "Leaving directory" last.
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "serve", "PORT=9123", "HOST=0.0.0.0", "DATA_DIR=/tmp/somewhere"],
        cwd=README.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines()[-1].endswith("meter serve --data-dir /tmp/somewhere --host 0.0.0.0 --port 9123")
    readme = README.read_text()
    assert "make serve PORT=9000 HOST=0.0.0.0" in readme and "source .venv/bin/activate" in readme
