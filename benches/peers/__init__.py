"""The systems `make bench-peers` compares meter with, each behind the same interface (`base.Peer`)."""

from __future__ import annotations

from .base import Peer

NAMES = ("meter", "postgres", "duckdb", "chdb")


def load(name: str) -> Peer:
    if name == "meter":
        from .meter_peer import MeterPeer

        return MeterPeer()
    if name == "postgres":
        from .postgres import Postgres

        return Postgres()
    if name == "duckdb":
        from .duckdb_peer import DuckDB

        return DuckDB()
    if name == "chdb":
        from .chdb_peer import ChDB

        return ChDB()
    raise SystemExit(f"unknown system {name!r}; one of {', '.join(NAMES)}")
