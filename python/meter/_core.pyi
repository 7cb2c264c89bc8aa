"""Type stub for the Rust extension ``meter._core``. Use ``meter.Engine`` rather than this directly."""

from typing import Any

__version__: str

def parse_only(body: bytes) -> int: ...
def event_values(spec_json: bytes, data: Any) -> Any: ...
def usage_json(table: Any) -> bytes: ...

class Engine:
    def __init__(
        self,
        path: str,
        *,
        durability: str = "fsync",
        dedup_window_s: int = ...,
        backdate_window_s: int = ...,
        max_future_s: int = 300,
        queue_capacity: int = 64,
        max_batch_events: int = 10000,
        cache_mb: int = 512,
        recent_dedup_s: int = 60,
        retention_s: int | None = None,
        minute_aggregates_s: int | None = None,
        hour_aggregates_s: int | None = None,
        maintenance_interval_s: float | None = 60.0,
        max_combinations_per_minute: int = 1000,
        max_customers_per_minute: int = 100000,
        max_pending_changes: int = 1000000,
    ) -> None: ...
    def ingest(self, tenant: str, body: bytes, *, atomic: bool = False, now_us: int | None = None) -> bytes: ...
    def create_meter(self, tenant: str, spec_json: bytes, *, now_us: int | None = None) -> bytes: ...
    def get_meter(self, tenant: str, slug: str) -> bytes: ...
    def list_meters(self, tenant: str) -> bytes: ...
    def delete_meter(self, tenant: str, slug: str) -> None: ...
    def query(
        self,
        tenant: str,
        meter: str,
        from_us: int,
        to_us: int,
        *,
        window_size: str | None = None,
        tz: str | None = None,
        subjects: list[str] = ...,
        group_by: list[str] = ...,
        filters: list[tuple[str, list[str]]] = ...,
    ) -> Any: ...
    def retained_events(self, tenant: str, after_seq: int, max_events: int) -> tuple[Any, int]: ...
    def find_event(self, tenant: str, source: str, id: str) -> tuple[Any, int | None]: ...
    def changes(self) -> tuple[Any, bool]: ...
    def day_counts(self, tenant: str, meter: str) -> list[tuple[int, int]]: ...
    def minutes(self, tenant: str, meter: str, from_us: int, to_us: int, *, batch_rows: int = ...) -> Any: ...
    def skipped(
        self,
        tenant: str,
        meter: str,
        from_us: int,
        to_us: int,
        *,
        after: int | None = None,
        limit: int = 100,
        max_scan: int = ...,
    ) -> bytes: ...
    def events_exported(self, tenant: str, seq: int) -> None: ...
    def maintain(self, *, now_us: int | None = None, max_steps: int | None = None) -> bytes: ...
    def failure(self) -> str | None: ...
    def stats(self) -> bytes: ...
    def close(self) -> None: ...
