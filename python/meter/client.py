"""The SDK an AI gateway embeds: ``meter.Client`` (threads) and ``meter.AsyncClient`` (asyncio).

Events are batched in the background (by count and by time), sent gzipped, and retried with exponential backoff
and jitter on 429, 5xx and timeouts. A retry re-sends the same bytes, so the same event ids: the server counts each
event once however often it arrives. Rejected events raise ``RejectedEvents`` (from ``ingest``, or from ``flush``
and ``close`` for events queued with ``send``).
"""

from __future__ import annotations

import asyncio
import gzip
import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import msgspec

from meter.exceptions import MeterError
from meter.schemas import EventIssue, IngestResult

__all__ = ["AsyncClient", "Client", "RejectedEvents", "RetryPolicy", "ServerError"]


class RejectedEvents(MeterError, ValueError):
    """Some events were not counted; ``issues`` says which (by index within their batch) and why."""

    code = "rejected_events"

    def __init__(self, issues: list[EventIssue]) -> None:
        first = issues[0]
        super().__init__(
            f"{len(issues)} event(s) rejected; first: #{first.index} ({first.id}): {first.code}: {first.message}",
            self.code,
        )
        self.issues = issues


class ServerError(MeterError):
    """The server answered with an error status that a retry cannot change: its ``status``, ``code`` and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"the server answered {status} {code}: {message}", code)
        self.status = status
        self.server_message = message

    @classmethod
    def of(cls, response: httpx.Response) -> ServerError:
        """From an error response: its JSON ``{"code", "message"}``, or its text when it has none."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "message" in body:
            return cls(response.status_code, str(body.get("code", "http_error")), str(body["message"]))
        return cls(response.status_code, "http_error", " ".join(response.text.split())[:300] or response.reason_phrase)


class RetryPolicy(msgspec.Struct, frozen=True):
    """``attempts`` in all (the first one included), sleeping a jittered exponential backoff between them."""

    attempts: int = 8
    base_delay: float = 0.1
    max_delay: float = 10.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), self.max_delay)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))  # full jitter


DEFAULT_RETRY = RetryPolicy()


def _prepare(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Fills what a gateway often leaves out, once, so that every retry carries the same ids."""
    out = []
    for e in events:
        ev = dict(e)
        ev.setdefault("specversion", "1.0")
        ev.setdefault("id", uuid.uuid4().hex)
        out.append(ev)
    return out


def _encode(events: list[dict[str, Any]], compress: bool) -> tuple[bytes, dict[str, str]]:
    body = msgspec.json.encode(events)
    headers = {"content-type": "application/cloudevents-batch+json"}
    if compress:
        body = gzip.compress(body, compresslevel=1)
        headers["content-encoding"] = "gzip"
    return body, headers


def _answer(response: httpx.Response) -> IngestResult | None:
    """The result of a definite answer, None when the request should be retried."""
    if response.status_code in (429, 502, 503, 504) or response.status_code >= 500:
        return None
    if response.status_code in (200, 400) and response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        if "accepted" in body:
            return msgspec.convert(body, IngestResult)
    raise ServerError.of(response)


def _outcome(response: httpx.Response | None) -> tuple[IngestResult | None, str | None]:
    """(result, Retry-After): a result for a definite answer, None to retry (no answer, 429 or 5xx)."""
    if response is None:
        return None, None
    return _answer(response), response.headers.get("retry-after")


def _why(response: httpx.Response | None, error: httpx.TransportError | None) -> str:
    """What the last attempt got, in a few words: the status and code, or the network error."""
    if response is not None:
        e = ServerError.of(response)
        return f"{e.status} {e.code}: {e.server_message}"
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect to {error.request.url.copy_with(path='/', query=None)} ({error})"
    if isinstance(error, httpx.TimeoutException):
        return f"no answer in time ({type(error).__name__})"
    return f"{type(error).__name__}: {error}"


def _gave_up(policy: RetryPolicy, started: float, last: str) -> MeterError:
    return MeterError(
        f"the batch was not acknowledged after {policy.attempts} attempts in "
        f"{time.monotonic() - started:.1f} s (last: {last}); it is safe to send it again (same ids)",
        "unavailable",
    )


class Client:
    """Thread-safe client.

    ``send`` queues an event; a background thread sends batches of up to ``batch_size`` events at least every
    ``flush_interval`` seconds. ``ingest`` sends a batch now and returns its result.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        batch_size: int = 1000,
        flush_interval: float = 1.0,
        timeout: float = 10.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        compress: bool = True,
    ) -> None:
        self._http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)
        self._batch_size, self._interval, self._retry, self._compress = batch_size, flush_interval, retry, compress
        self._queue: list[dict[str, Any]] = []
        self._issues: list[EventIssue] = []
        self._errors: list[BaseException] = []
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="meter-client", daemon=True)
        self._thread.start()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ingest(self, events: Iterable[Mapping[str, Any]], *, check: bool = True) -> IngestResult:
        """Sends one batch now (with retries); with ``check``, raises ``RejectedEvents`` for events not counted."""
        result = self._send(_prepare(events))
        if check and result.issues:
            raise RejectedEvents(result.issues)
        return result

    def send(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            if self._closed:
                raise MeterError("the client is closed", "closed")
            self._queue.extend(_prepare([event]))
            if len(self._queue) >= self._batch_size:
                self._lock.notify()

    def flush(self) -> None:
        """Sends everything queued, then raises what went wrong since the last flush."""
        with self._lock:
            batch, self._queue = self._queue, []
        self._deliver(batch)
        with self._lock:
            issues, errors, self._issues, self._errors = self._issues, self._errors, [], []
        if errors:
            raise errors[0]
        if issues:
            raise RejectedEvents(issues)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()
        try:
            self.flush()
        finally:
            self._http.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._closed or len(self._queue) >= self._batch_size, self._interval)
                if self._closed:
                    return
                batch, self._queue = self._queue[: self._batch_size], self._queue[self._batch_size :]
            self._deliver(batch)

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        try:
            result = self._send(batch)
        except BaseException as e:  # noqa: BLE001 - surfaced by the next flush()
            with self._lock:
                self._errors.append(e)
            return
        with self._lock:
            self._issues.extend(result.issues)

    def _send(self, events: list[dict[str, Any]]) -> IngestResult:
        body, headers = _encode(events, self._compress)
        started, last, retry_after = time.monotonic(), "", None
        for attempt in range(self._retry.attempts):
            if attempt:
                time.sleep(self._retry.delay(attempt - 1, retry_after))
            response: httpx.Response | None = None
            try:
                response = self._http.post("/v1/events", content=body, headers=headers)
                result, retry_after = _outcome(response)
            except httpx.TransportError as e:
                result, retry_after, last = None, None, _why(None, e)
            if result is not None:
                return result
            if response is not None:
                last = _why(response, None)
        raise _gave_up(self._retry, started, last)


class AsyncClient:
    """The asyncio twin of ``Client``: ``await ingest(...)``, ``send(...)``, ``await flush()``, ``await aclose()``."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        batch_size: int = 1000,
        flush_interval: float = 1.0,
        timeout: float = 10.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        compress: bool = True,
    ) -> None:
        self._http = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)
        self._batch_size, self._interval, self._retry, self._compress = batch_size, flush_interval, retry, compress
        self._queue: list[dict[str, Any]] = []
        self._issues: list[EventIssue] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def ingest(self, events: Iterable[Mapping[str, Any]], *, check: bool = True) -> IngestResult:
        result = await self._send(_prepare(events))
        if check and result.issues:
            raise RejectedEvents(result.issues)
        return result

    def send(self, event: Mapping[str, Any]) -> None:
        self._queue.extend(_prepare([event]))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain_later())

    async def flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._batch_size], self._queue[self._batch_size :]
            self._issues.extend((await self._send(batch)).issues)
        issues, self._issues = self._issues, []
        if issues:
            raise RejectedEvents(issues)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            await self.flush()
        finally:
            await self._http.aclose()

    async def _drain_later(self) -> None:
        deadline = time.monotonic() + self._interval
        while len(self._queue) < self._batch_size and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        while self._queue:
            batch, self._queue = self._queue[: self._batch_size], self._queue[self._batch_size :]
            self._issues.extend((await self._send(batch)).issues)

    async def _send(self, events: list[dict[str, Any]]) -> IngestResult:
        body, headers = _encode(events, self._compress)
        started, last, retry_after = time.monotonic(), "", None
        for attempt in range(self._retry.attempts):
            if attempt:
                await asyncio.sleep(self._retry.delay(attempt - 1, retry_after))
            response: httpx.Response | None = None
            try:
                response = await self._http.post("/v1/events", content=body, headers=headers)
                result, retry_after = _outcome(response)
            except httpx.TransportError as e:
                result, retry_after, last = None, None, _why(None, e)
            if result is not None:
                return result
            if response is not None:
                last = _why(response, None)
        raise _gave_up(self._retry, started, last)
