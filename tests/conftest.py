"""Shared helpers: an engine in a temporary directory, and CloudEvents built the way gateways send them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from meter import Engine

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)


def event(
    id: str,
    subject: str = "cust-1",
    *,
    type: str = "llm",
    time: datetime | None = T0,
    source: str = "gw",
    **data: Any,
) -> dict[str, Any]:
    ev: dict[str, Any] = {"specversion": "1.0", "id": id, "source": source, "type": type, "subject": subject}
    if time is not None:
        ev["time"] = time.isoformat().replace("+00:00", "Z")
    if data:
        ev["data"] = data
    return ev


def body(*events: dict[str, Any]) -> bytes:
    return json.dumps(list(events)).encode()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(tmp_path / "db") as e:
        yield e


@pytest.fixture
def now() -> datetime:
    """A clock shortly after T0, so that events at T0 are inside every window."""
    return T0 + timedelta(hours=1)
