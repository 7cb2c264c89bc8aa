"""The delivery worker: outbox events to the tenants' endpoints, signed, retried, recorded.

One daemon thread (``meter-webhooks``) runs an asyncio loop of its own, so that a thousand slow receivers never
share the request loop; its store calls run on that loop's thread pool, never on the loop. Each round (every
``poll`` seconds, or at once when woken), for every tenant with an endpoint: fan the new outbox events out
(:func:`~meter.money.webhooks.deliveries.fan_out`), then start an attempt for each delivery due, at most
``concurrency`` at a time.

An attempt: the endpoint's URL through the guard again (resolved now, connected to the address just checked),
then ``POST`` the event's JSON with the Standard Webhooks headers, signed at this attempt's timestamp. A 2xx
delivers it. Anything else (another status, a refused or reset connection, no answer within ``timeout``, an
address the guard refuses) is a failed attempt: the next one is due after a full-jitter exponential backoff
(``Backoff``), until the next would fall outside the retry window (3 days from the first), when the delivery fails
and its endpoint becomes ``failing``. Redirects are not followed (the guard checked only the URL given). An answer is
read up to ``max_response`` bytes (64 KiB), its first KiB kept in the log; the rest is never read.

Durability: an attempt's outcome is written in one synced batch after it; a crash (or stop) while an attempt is in
flight leaves the delivery pending and due, so it is made again after the restart: at least once, and receivers
dedupe on ``webhook-id``. Nothing about a delivery lives only in memory but which attempts are in flight.

Settings (``Settings.from_env``, read by the server): ``METER_ALLOW_PRIVATE_WEBHOOKS=1`` (``meter serve
--allow-private-webhooks``); for tests only, ``METER_WEBHOOK_RETRY_BASE``, ``METER_WEBHOOK_RETRY_CAP``,
``METER_WEBHOOK_RETRY_WINDOW``, ``METER_WEBHOOK_TIMEOUT`` and ``METER_WEBHOOK_POLL`` (seconds).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx

from meter.billing.store import InvoiceStore
from meter.money.webhooks import deliveries, endpoints, guard, retention, signing
from meter.money.webhooks.deliveries import Attempt
from meter.money.webhooks.retention import DEFAULT_RETENTION, retention_from_env

__all__ = ["Backoff", "Settings", "WebhookWorker"]

#: The answer's first bytes kept in a delivery's log.
KEPT_RESPONSE = 1024
#: Fan-out batches (of ``deliveries.FAN_OUT_BATCH`` events) per tenant and round.
FAN_OUT_BATCHES = 10
#: How often events past the retention are pruned.
PRUNE_EVERY = timedelta(hours=1)


@dataclass(frozen=True)
class Backoff:
    """When to try again: exponential backoff with full jitter, within a retry window.

    After failure n, a delay drawn uniformly from [0, min(cap, base * 2^(n-1))], for as long as the next attempt
    falls within ``window`` of the first.
    """

    base: timedelta = timedelta(seconds=5)
    cap: timedelta = timedelta(hours=4)
    window: timedelta = timedelta(days=3)

    def delay(self, failures: int, rng: random.Random) -> timedelta:
        ceiling = min(self.cap.total_seconds(), self.base.total_seconds() * 2 ** min(failures - 1, 60))
        return timedelta(seconds=rng.uniform(0, ceiling))


@dataclass(frozen=True)
class Settings:
    """The worker's settings; the defaults are production's."""

    allow_private: bool = False
    backoff: Backoff = field(default_factory=Backoff)
    #: Seconds to connect, and between two reads of the answer.
    timeout: float = 10.0
    #: Seconds an attempt may take in all (a receiver that trickles its answer is cut there).
    deadline: float = 30.0
    max_response: int = 64 * 1024
    #: Seconds between rounds when nothing wakes the worker.
    poll: float = 1.0
    concurrency: int = 16
    #: Due deliveries started per tenant and round.
    per_round: int = 100
    #: How long events and their delivery log are kept (:mod:`meter.money.webhooks.retention`), pruned hourly.
    retention: timedelta = DEFAULT_RETENTION

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ

        def seconds(name: str, default: timedelta) -> timedelta:
            return timedelta(seconds=float(env[name])) if env.get(name) else default

        base = Backoff()
        backoff = Backoff(
            seconds("METER_WEBHOOK_RETRY_BASE", base.base),
            seconds("METER_WEBHOOK_RETRY_CAP", base.cap),
            seconds("METER_WEBHOOK_RETRY_WINDOW", base.window),
        )
        timeout = float(env.get("METER_WEBHOOK_TIMEOUT") or cls.timeout)
        return cls(
            allow_private=env.get("METER_ALLOW_PRIVATE_WEBHOOKS") == "1",
            backoff=backoff,
            timeout=timeout,
            deadline=max(cls.deadline, 3 * timeout),
            poll=float(env.get("METER_WEBHOOK_POLL") or cls.poll),
            retention=retention_from_env(),
        )


def _now() -> datetime:
    return datetime.now(UTC)


class WebhookWorker:
    """Delivers the outbox of ``store``.

    ``start``/``stop`` run it on its own thread; ``round`` runs one round in the caller's loop (tests, with an
    injected ``clock`` and ``rng``, and ``async with worker`` around).
    """

    def __init__(
        self,
        store: InvoiceStore,
        settings: Settings | None = None,
        *,
        clock: Callable[[], datetime] = _now,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store, self.settings, self.clock = store, settings or Settings(), clock
        self._pruned_at: datetime | None = None
        self.rng = rng or random.Random()
        self._transport = transport
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._in_flight: dict[tuple[str, int, str], asyncio.Task[None]] = {}
        self._http: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        #: Attempts made since start (successful or not).
        self.attempts = 0
        #: Attempts by what they left the delivery: delivered, pending (a retry scheduled), failed (given up on).
        self.outcomes: Counter[str] = Counter()

    # The thread

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="meter-webhooks", daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self) -> None:
        """Stops the thread; attempts in flight are abandoned (their deliveries stay due: made after a restart)."""
        self._stopping = True
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()

    def wake(self) -> None:
        """Start a round now (after a replay, say) rather than at the next poll."""
        if self._loop is not None and self._wake is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # stopped meanwhile: the next start's first round does it
                pass

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        finally:
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        async with self:
            while not self._stopping:
                busy = False
                try:
                    busy = await self.round()
                except Exception as e:  # noqa: BLE001 - reported; the next round tries again
                    print(f"meter: webhook round failed: {e!r}", file=sys.stderr, flush=True)
                if busy and self._in_flight:  # a backlog: the next round as soon as an attempt ends
                    waits = {*self._in_flight.values(), asyncio.ensure_future(self._wake.wait())}
                    _, pending = await asyncio.wait(
                        waits, timeout=self.settings.poll, return_when=asyncio.FIRST_COMPLETED
                    )
                    for waiting in pending - set(self._in_flight.values()):
                        waiting.cancel()
                elif not busy:
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.settings.poll)
                    except TimeoutError:
                        pass
                self._wake.clear()
            for task in self._in_flight.values():
                task.cancel()
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def __aenter__(self) -> WebhookWorker:
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.settings.timeout),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the connection goes where the guard checked
            transport=self._transport,
            limits=httpx.Limits(max_connections=self.settings.concurrency, max_keepalive_connections=8),
        )
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()

    # Rounds

    async def round(self, wait: bool = False) -> bool:
        """Fan out every tenant's new events and start the attempts due; with ``wait``, wait for them to finish.

        True when there is more to do at once (a tenant had more events, or more deliveries due, than one round
        takes). One tenant's failure is reported and never stops another's round. Once an hour (and in the first
        round), events past the retention are pruned first.
        """
        now, busy = self.clock(), False
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            try:
                await asyncio.to_thread(retention.prune_all, self.store, now, self.settings.retention)
            except Exception as e:  # noqa: BLE001 - reported; the next hour tries again
                print(f"meter: pruning old webhook events failed: {e!r}", file=sys.stderr, flush=True)
        for tenant in await asyncio.to_thread(endpoints.tenants, self.store):
            try:
                busy |= await self._tenant_round(tenant, now)
            except Exception as e:  # noqa: BLE001 - reported; the next round tries again
                print(f"meter: webhooks of tenant {tenant!r} failed: {e!r}", file=sys.stderr, flush=True)
        if wait:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
        return busy

    async def _tenant_round(self, tenant: str, now: datetime) -> bool:
        fanned = 0
        for _ in range(FAN_OUT_BATCHES):  # bounded, so that a million new events never hold up the attempts
            fanned = await asyncio.to_thread(deliveries.fan_out, self.store, tenant, now)
            if fanned < deliveries.FAN_OUT_BATCH:
                break
        limit = self.settings.per_round
        due = await asyncio.to_thread(deliveries.due, self.store, tenant, now, limit)
        for seq, endpoint_id in due:
            key = (tenant, seq, endpoint_id)
            if key not in self._in_flight:
                task = asyncio.create_task(self._attempt(tenant, seq, endpoint_id))
                self._in_flight[key] = task
                task.add_done_callback(lambda _, key=key: self._in_flight.pop(key, None))  # type: ignore[misc]
        return fanned == deliveries.FAN_OUT_BATCH or len(due) == limit

    async def _attempt(self, tenant: str, seq: int, endpoint_id: str) -> None:
        assert self._slots is not None
        try:
            async with self._slots:
                delivery, endpoint, body = await asyncio.to_thread(
                    deliveries.prepare, self.store, tenant, seq, endpoint_id
                )
                if delivery.status != "pending":
                    return
                now = self.clock()
                if endpoint is None or endpoint.status != "enabled":
                    why = (
                        "not sent: the endpoint was deleted"
                        if endpoint is None
                        else f"not sent: the endpoint is {endpoint.status}; enable it, then replay"
                    )
                    await asyncio.to_thread(
                        deliveries.park,
                        self.store,
                        tenant,
                        seq,
                        endpoint_id,
                        why,
                        now,
                    )
                    return
                try:
                    attempt = await self.send(endpoint, delivery.event, body)
                except Exception as e:  # noqa: BLE001 - a bug here must not retry at every round: it backs off too
                    attempt = Attempt(at=now, error=f"internal error while sending: {e!r}")
                self.attempts += 1
                backoff = self.settings.backoff
                recorded = await asyncio.to_thread(
                    deliveries.record,
                    self.store,
                    tenant,
                    seq,
                    endpoint_id,
                    attempt,
                    lambda n: backoff.delay(n, self.rng),
                    backoff.window,
                )
                if recorded is not None:  # delivered, pending (to be retried) or failed (given up on)
                    self.outcomes[recorded.status] += 1
        except Exception as e:  # noqa: BLE001 - reported; the delivery stays due and is tried again
            print(f"meter: webhook delivery {tenant}/{seq}/{endpoint_id} failed: {e!r}", file=sys.stderr, flush=True)

    async def send(self, endpoint: endpoints.Endpoint, event_id: str, body: bytes) -> Attempt:
        """One attempt: the guard, then the signed POST; what happened, as an ``Attempt``."""
        assert self._http is not None
        at, started = self.clock(), time.monotonic()

        def outcome(status: int | None = None, error: str | None = None, response: str | None = None) -> Attempt:
            ms = int((time.monotonic() - started) * 1000)
            return Attempt(at=at, status=status, error=error, duration_ms=ms, response=response)

        allow = self.settings.allow_private
        try:
            target = guard.check_url(endpoint.url, allow)
            addresses = await guard.resolve_async(target, allow)
        except guard.UrlRefused as e:
            return outcome(error=f"{e.code}: {e.message}")
        headers = {
            **signing.headers(endpoint.secrets(at), event_id, int(at.timestamp()), body),
            "content-type": "application/json",
            "user-agent": "meter-webhooks/1",
            "accept-encoding": "identity",  # the kept answer is text, never compressed bytes
        }
        error = "no address to connect to"
        for address in addresses:  # the next address only when this one cannot be connected to
            url, host, extensions = guard.pinned(target, address)
            request = self._http.build_request(
                "POST", url, content=body, headers={**headers, **host}, extensions=extensions
            )
            try:
                async with asyncio.timeout(self.settings.deadline):
                    response = await self._http.send(request, stream=True)
            except httpx.ConnectError as e:
                error = f"connection failed: {e or type(e).__name__}"
                continue
            except (httpx.TimeoutException, TimeoutError):
                return outcome(error=f"timeout: no answer within {self.settings.timeout:g} s")
            except httpx.HTTPError as e:
                return outcome(error=f"{type(e).__name__}: {e or 'no answer'}")
            # The status decides; the body is only kept for the log, as much of it as comes in time.
            try:
                left = max(0.0, self.settings.deadline - (time.monotonic() - started))
                async with asyncio.timeout(left):
                    kept, cut = await self._read(response)
            except (httpx.HTTPError, TimeoutError):
                kept, cut = b"", True
            finally:
                await response.aclose()
            cut = cut or len(kept) > KEPT_RESPONSE
            text = kept[:KEPT_RESPONSE].decode("utf-8", "replace") + (" [cut]" if cut else "")
            status = response.status_code
            return outcome(status, None if 200 <= status < 300 else f"HTTP {status}", text)
        return outcome(error=error)

    async def _read(self, response: httpx.Response) -> tuple[bytes, bool]:
        """The answer's body up to ``max_response`` bytes; whether it was cut there (the rest is never read)."""
        chunks, size = [], 0
        # Raw: never decompressed (identity was asked for), so a compressed answer cannot expand past the limit.
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
            size += len(chunk)
            if size > self.settings.max_response:
                return b"".join(chunks)[: self.settings.max_response], True
        return b"".join(chunks), False
