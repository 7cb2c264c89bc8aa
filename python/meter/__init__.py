"""meter: exact, durable usage metering. The engine is Rust (``meter._core``); this package is its typed face."""

from meter.client import AsyncClient, Client, RejectedEvents, RetryPolicy
from meter.engine import Engine, Usage
from meter.exceptions import (
    AlreadyExists,
    BatchRejected,
    EngineClosed,
    InvalidInput,
    MeterError,
    NotFound,
    OutcomeUnknown,
    Overloaded,
    StorageError,
    StoreFailed,
    ValueOverflow,
)
from meter.schemas import (
    CreatedMeter,
    EventIssue,
    EventWarning,
    Filter,
    IngestResult,
    Meter,
    MeterLimits,
    MeterSpec,
)

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "Client",
    "RejectedEvents",
    "RetryPolicy",
    "BatchRejected",
    "CreatedMeter",
    "Engine",
    "EngineClosed",
    "EventIssue",
    "EventWarning",
    "Filter",
    "IngestResult",
    "InvalidInput",
    "Meter",
    "MeterError",
    "MeterLimits",
    "MeterSpec",
    "NotFound",
    "OutcomeUnknown",
    "Overloaded",
    "StorageError",
    "StoreFailed",
    "Usage",
    "ValueOverflow",
]
