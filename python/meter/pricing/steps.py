"""Where an invoice run spends its time: named steps timed while a caller asks for it (the benchmark does).

``with steps.timing() as seconds:`` collects, in ``seconds``, the time of every ``with steps.step(name):`` run in
that context (added up when a step runs more than once), and under ``<name>_cpu`` the CPU time the process spent in
it (every thread's: on a machine shared with other work, the wall time says more about the others). Outside
``timing`` a step costs a context-variable read.

Invariant: timing never changes what runs; a step only observes. The collection is per context (a ``ContextVar``),
so concurrent runs in other threads or tasks do not add to each other's figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["step", "timing"]

_seconds: ContextVar[dict[str, float] | None] = ContextVar("meter_pricing_steps", default=None)


@contextmanager
def timing() -> Iterator[dict[str, float]]:
    """Collects the seconds of each step run inside the block."""
    seconds: dict[str, float] = {}
    token = _seconds.set(seconds)
    try:
        yield seconds
    finally:
        _seconds.reset(token)


@contextmanager
def step(name: str) -> Iterator[None]:
    seconds = _seconds.get()
    if seconds is None:
        yield
        return
    began, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - began
        seconds[f"{name}_cpu"] = seconds.get(f"{name}_cpu", 0.0) + time.process_time() - cpu
