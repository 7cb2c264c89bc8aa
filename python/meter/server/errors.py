"""The one table from exceptions to HTTP answers.

Every error body is ``{"code", "message"}`` (plus ``issues`` where there are per-item problems), and every message
says what to fix. `answer_of` is the only place an exception becomes an answer: the app calls it once, at the ASGI
boundary, for whatever a request raised.

Invariants:
- `ApiError` is the HTTP layer's own refusal (routing, auth, limits, input it parses itself); `MeterError`s come
  from the engine and the stores and get their status from `_STATUS` (most specific class first) or `_BY_CODE`.
- Anything else is a bug: a 500 `internal` whose message never promises that nothing was applied (it may have
  struck after a write), and says how to find out instead. A Rust panic (`PanicException`, a BaseException) is one
  of those; `KeyboardInterrupt`, `SystemExit` and task cancellation are not answered but re-raised.
- 429 and 503 answers carry Retry-After.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from typing import Any

from meter import exceptions as exc

__all__ = ["INTERNAL_MESSAGE", "ApiError", "answer_of", "status_of"]


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
    (exc.Conflict, 409),
    (exc.Overloaded, 429),
    (exc.StoreFailed, 503),
    (exc.EngineClosed, 503),
    (exc.ValueOverflow, 422),
    (exc.StorageError, 500),
]


# Request-level codes whose status is not the one of their class.
_BY_CODE = {
    "too_many_events": 413,
    "tax_unavailable": 503,
    "provider_unavailable": 503,
    "cluster_unavailable": 503,
}

INTERNAL_MESSAGE = (
    "internal error (logged by the server); the request may have been "
    "applied: read the state back before repeating a change; events can be re-sent with the same ids, "
    "which never counts them twice"
)


def status_of(e: exc.MeterError) -> int:
    if e.code in _BY_CODE:
        return _BY_CODE[e.code]
    for cls, status in _STATUS:
        if isinstance(e, cls):
            return status
    return 500


def answer_of(e: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The answer to a request that raised `e`: (status, error body, headers). Logs what is a bug."""
    if isinstance(e, ApiError):
        return e.status, {"code": e.code, "message": e.message}, dict(e.headers)
    if isinstance(e, exc.MeterError):
        body: dict[str, Any] = {"code": e.code, "message": e.message}
        if getattr(e, "details", None) is not None:
            body["issues"] = e.details
        status = status_of(e)
        return status, body, ({"retry-after": "1"} if status in (429, 503) else {})
    if isinstance(e, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):
        raise e
    # A bug, not bad input. It may have struck after a write (or while encoding the answer to one), so the answer
    # cannot promise that nothing was applied: it says how to find out instead.
    traceback.print_exception(e, file=sys.stderr)
    return 500, {"code": "internal", "message": INTERNAL_MESSAGE}, {}
