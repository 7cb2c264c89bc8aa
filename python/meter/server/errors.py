"""The one table from exceptions to HTTP answers.

Every error body is ``{"code", "message"}`` (plus ``issues`` for events), and every message says what to fix.
"""

from __future__ import annotations

from meter import exceptions as exc

__all__ = ["ApiError", "status_of"]


class ApiError(Exception):
    """An error raised by the HTTP layer itself (auth, limits, routing)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


# Most specific first.
_STATUS: list[tuple[type[BaseException], int]] = [
    (exc.BatchRejected, 422),
    (exc.InvalidInput, 400),
    (exc.NotFound, 404),
    (exc.AlreadyExists, 409),
    (exc.InUse, 409),
    (exc.Overloaded, 429),
    (exc.StoreFailed, 503),
    (exc.EngineClosed, 503),
    (exc.ValueOverflow, 422),
    (exc.StorageError, 500),
]


# Request-level codes whose status is not the one of their class.
_BY_CODE = {"too_many_events": 413, "stale_draft": 409}


def status_of(e: exc.MeterError) -> int:
    if e.code in _BY_CODE:
        return _BY_CODE[e.code]
    for cls, status in _STATUS:
        if isinstance(e, cls):
            return status
    return 500
