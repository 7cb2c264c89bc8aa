"""Exceptions raised by meter. Every one carries a machine-readable ``code`` and a message that says what to fix.

The Rust core raises these by name (``crates/meter_core/src/py/error.rs``), so this module is the single list.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "AlreadyExists",
    "BatchRejected",
    "Conflict",
    "EngineClosed",
    "InvalidInput",
    "MeterError",
    "NotFound",
    "OutcomeUnknown",
    "Overloaded",
    "StorageError",
    "StoreFailed",
    "ValueOverflow",
]


class MeterError(Exception):
    """Root of every meter error."""

    code: str = "meter_error"

    def __init__(self, message: str, code: str | None = None, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: Any = json.loads(details) if details else None


class InvalidInput(MeterError, ValueError):
    """The request is malformed as a whole (bad JSON, too many events, a bad meter or query); nothing was applied."""

    code = "invalid_request"


class BatchRejected(InvalidInput):
    """An atomic batch held events that could not be applied; nothing was applied. ``issues`` lists them by index."""

    code = "batch_rejected"

    @property
    def issues(self) -> list[dict[str, Any]]:
        return list(self.details or [])


class Conflict(MeterError):
    """What is asked is not allowed in the object's state; nothing was changed.

    Finalizing an invoice twice, voiding a paid one, paying a draft: ``code`` says which (``invalid_state``,
    ``stale_draft``...). HTTP 409.
    """

    code = "invalid_state"


class NotFound(MeterError, LookupError):
    code = "not_found"


class AlreadyExists(MeterError):
    code = "already_exists"


class InUse(MeterError):
    """Something else still refers to what was to be deleted."""

    code = "in_use"


class Overloaded(MeterError):
    """The ingest queue is full: retry after a short pause (HTTP 429)."""

    code = "overloaded"


class StoreFailed(MeterError):
    """A write to storage failed earlier; the engine acknowledges nothing until reopened (fail-stop, HTTP 503).

    A request answered with this code was refused before anything of it was written: it was not applied.
    """

    code = "store_failed"


class OutcomeUnknown(StoreFailed):
    """The write that carried this request failed, so it may or may not be applied (HTTP 503 ``outcome_unknown``).

    The WAL write or its fsync failed: the record may have reached the log and be applied after a restart. The
    engine then fails stop like ``StoreFailed``. Retry with the same event ids once the store is back: the retry is
    a duplicate if it was applied, accepted if it was not, so it is counted once either way.
    """

    code = "outcome_unknown"


class EngineClosed(MeterError):
    code = "closed"


class StorageError(MeterError):
    code = "storage_error"


class ValueOverflow(MeterError, ArithmeticError):
    """A sum left the exact range; narrow the query rather than get a wrong number."""

    code = "overflow"
