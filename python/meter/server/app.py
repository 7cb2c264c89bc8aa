"""meter's HTTP API as a plain ASGI application: the lifespan, and one request from scope to answer.

`MeterApp` ties the pieces together; each piece has its module:
`http.py` (request metadata, body reading, answers), `compression.py` (gzip, zstd), `auth.py` (keys and scopes),
`router.py` over the route table `routes/` (whose `table.py` vocabulary also generates `openapi.py`'s document),
`inputs.py` (bodies and query parameters), `errors.py` (exceptions to answers), `metrics.py`, `lifecycle.py`
(opening the stores, degraded starts) and `scheduler.py` (the export, and the dunning job of `meter.money.payments`);
the outgoing webhooks' delivery worker (`meter.money.webhooks.delivery`) runs beside them, on its own thread.
`create_app` is granian's factory.

A request goes: metadata decoded (400 if undecodable) -> route matched (404, 405) -> key checked (401, 403) ->
read-only refusal when degraded (503) -> body read, bounded and decompressed on the pool (413, 415, 400) -> the body
decoded into the route's type and its parameters read (400) -> the handler, whose store calls run on the pool.

Invariants:
- One app per process. Stores open in the ASGI lifespan's startup and close at its shutdown, never at import or
  construction (constructing an app opens nothing, so the route table can be read without a data directory).
- The event loop never waits for a disk: every store and engine call, decompression and large encodings run on
  `pool`, a thread pool shared by every request (engine calls release the GIL, so concurrent ingests share commits).
- Every request gets exactly one answer, counted by status for `/metrics`, except one whose client went away before
  its body arrived (nothing was processed); every error answer is an ErrorBody (`errors.answer_of`).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import msgspec

from meter.backfills import Backfills
from meter.billing.invoicer import Invoicer
from meter.billing.store import InvoiceStore
from meter.billing.top_ups import auto_top_up
from meter.catalog.billing import BillingCatalog
from meter.catalog.keys import KeyStore
from meter.console.app import ROOT as CONSOLE
from meter.console.app import Console
from meter.console.pages import ROUTES as CONSOLE_ROUTES
from meter.engine import Engine
from meter.live import alerts
from meter.live.alerts import AlertBook
from meter.live.anomaly import AnomalyJob
from meter.live.reservations import Reservations
from meter.live.tracker import Tracker
from meter.money.payments.dunning import DunningJob, Payments
from meter.money.revenue.job import DailyClose
from meter.money.webhooks.delivery import Settings as WebhookSettings
from meter.money.webhooks.delivery import WebhookWorker
from meter.server.auth import authorize
from meter.server.compression import decompress
from meter.server.context import Unavailable
from meter.server.errors import ApiError, answer_of
from meter.server.http import (
    Answer,
    AsgiScope,
    Disconnected,
    Receive,
    Request,
    Send,
    content_encoding,
    read_body,
    send_answer,
)
from meter.server.inputs import decode
from meter.server.lifecycle import engine_options_from_env, open_or_degrade
from meter.server.metrics import render
from meter.server.openapi import openapi
from meter.server.router import Compiled, Router
from meter.server.routes import BENCH_ROUTES, ROUTES
from meter.server.scheduler import ExportScheduler, PeriodicJob
from meter.server.table import Route
from meter.server.warmup import build_decoding_info
from meter.services import Part, Stores

__all__ = ["MAX_BODY", "MeterApp", "create_app"]

MAX_BODY = 16 * 1024 * 1024

_P = ParamSpec("_P")
_T = TypeVar("_T")


class MeterApp:
    """One app per process; it opens the stores at startup (ASGI lifespan). It is the handlers' `Context`."""

    def __init__(
        self,
        data_dir: Path,
        admin_key: str | None = None,
        max_body: int = MAX_BODY,
        export: tuple[Path, float] | None = None,
        engine_options: dict[str, Any] | None = None,
        payments: Payments | None = None,
        dunning_every: float = 60.0,
        recognize_every: float = 3600.0,
        webhook_settings: WebhookSettings | None = None,
    ) -> None:
        self.data_dir, self.admin_key, self.max_body = data_dir, admin_key, max_body
        #: Keyword arguments of ``meter.Engine`` (retention, roll-ups...), from ``meter serve``'s options.
        self.engine_options = engine_options or {}
        #: (directory, seconds between exports) of the scheduled Parquet export, if any.
        self.export = export
        self.scheduler: ExportScheduler | None = None
        #: Payments (providers from the environment or the tenants' settings), None until a writable start; the
        #: dunning job runs every `dunning_every` seconds beside the export.
        self._payments = payments or Payments()
        self.payments: Payments | None = None
        self.dunning_every = dunning_every
        #: The scheduled close (meter.money.revenue.job) looks for a day to close every `recognize_every` seconds.
        self.recognize_every = recognize_every
        #: The periodic jobs beside the requests (dunning, reservations' expiry, anomaly alerts), while writable.
        self.jobs: list[PeriodicJob] = []
        #: Outgoing webhooks: the delivery worker's settings, and the worker (started with the stores, if writable).
        self.webhook_settings = webhook_settings or WebhookSettings()
        self.webhooks: WebhookWorker | None = None
        #: The live account state: balances and entitlement checks (started with the stores, if writable).
        self.live: Tracker | None = None
        #: Reservations (meter.live.reservations), opened with the stores if writable; their fit check reads the
        #: live state (`reservations.standing`).
        self.reservations: Reservations | None = None
        #: Backfills (meter.backfills), opened with the stores if writable.
        self.backfills: Backfills | None = None
        # The stores: None until startup opens them (or after a failed open), Unavailable for those a degraded start
        # could not open. Routes reach them through opened(): authorize() lets a request through only once they are.
        self.engine: Engine | Unavailable | None = None
        self.keys: KeyStore | Unavailable | None = None
        self.billing: BillingCatalog | Unavailable | None = None
        self.invoices: InvoiceStore | Unavailable | None = None
        self.invoicer: Invoicer | Unavailable | None = None
        #: What startup opened (closed at shutdown); None before startup and after close_stores().
        self.stores: Stores | None = None
        #: Set when the stores could not be opened for writing at startup (a full or read-only disk): the server
        #: runs degraded, serving what it can read, answering writes 503 and /readyz 503 with this reason.
        self.degraded: str | None = None
        #: Answers given, by status (`meter_http_responses_total`).
        self.responses: dict[int, int] = {}
        # Store and engine calls block (engine calls with the GIL released): they run here, never on the event loop.
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="meter-call")
        self._openapi_json: bytes | None = None
        bench = os.environ.get("METER_BENCH_ENDPOINTS") == "1"
        self.router = Router([*ROUTES, *(BENCH_ROUTES if bench else [])])
        #: The web console's pages, under /console (meter.console): HTML for people, beside the API.
        self.console = Console(self, CONSOLE_ROUTES)

    @property
    def routes(self) -> list[Compiled]:
        """The compiled route table: (method, path pattern, route, handler), in the order the router tries them."""
        return self.router.routes

    # The handlers' Context

    async def call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    def metrics(self) -> str:
        exports = self.scheduler.exports_done if self.scheduler else 0
        return render(self.responses, self.engine, exports, self.webhooks.outcomes if self.webhooks else None)

    def openapi_json(self) -> bytes:
        if self._openapi_json is None:  # built once: generating the schemas would cost every request on the loop
            self._openapi_json = msgspec.json.encode(openapi())
        return self._openapi_json

    # Lifespan

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            await self.http(scope, receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.startup()
                except Exception as e:  # noqa: BLE001 - reported to the server, which refuses to start
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def startup(self) -> None:
        """Open the stores (degraded on a full or read-only disk), then start the export scheduler if asked."""
        build_decoding_info()  # before any thread of ours decodes (see meter.server.warmup)
        export_dir = self.export[0] if self.export else self.data_dir / "export"
        self.stores = stores = open_or_degrade(self.data_dir, self.admin_key, self.engine_options, export_dir)
        self.degraded = stores.degraded
        # Handlers see a store a degraded start could not open as Unavailable: a 503, never an AttributeError.
        unavailable = Unavailable(stores.degraded or "")
        self.keys = stores.keys if stores.has(Part.KEYS) else unavailable
        self.engine = stores.engine if stores.has(Part.USAGE) else unavailable
        self.billing = stores.billing if stores.has(Part.BILLING) else unavailable
        self.invoices = stores.invoices if stores.has(Part.INVOICES) else unavailable
        self.invoicer = unavailable if stores.degraded else stores.invoicer
        if self.export and not self.degraded:
            self.scheduler = ExportScheduler(stores.keys, stores.invoicer, *self.export)
            self.scheduler.start()
        if not self.degraded:
            self.payments = self._payments
            stores.invoicer.collect = partial(self.payments.after_finalize, stores.invoices, stores.billing)
            tenants = partial(_tenant_ids, stores.keys)
            dunning = DunningJob(self.payments, stores.keys, stores.invoices, stores.billing)
            self.webhooks = WebhookWorker(stores.invoices, self.webhook_settings)
            self.webhooks.start()
            # The live state: checks and balances read it; reservations hold against it; alerts hear each refresh.
            self.live = Tracker(stores.engine, stores.billing, stores.invoices, export_dir, tenants)
            self.reservations = Reservations(stores.invoices, self.live)
            self.backfills = Backfills(stores.engine, stores.invoices)
            self.live.held = self.reservations.held
            book = AlertBook(stores.billing, stores.engine)
            self.live.on_refresh = alerts.on_refresh(book, stores.invoices, self.webhooks.wake)
            self.live.top_up = partial(auto_top_up, stores.invoicer)
            self.live.start()
            anomalies = AnomalyJob(stores.engine, stores.billing, stores.invoices, tenants)
            self.jobs = [
                PeriodicJob("meter-dunning", self.dunning_every, dunning.run_once),
                PeriodicJob("meter-reservations", 5.0, self.reservations.expire),
                PeriodicJob("meter-anomalies", 60.0, anomalies.run_once),
                PeriodicJob("meter-revenue-close", self.recognize_every, DailyClose(stores.invoicer, tenants).run_once),
            ]
            for periodic in self.jobs:
                periodic.start()

    def close_stores(self) -> None:
        """Close the stores, as a shutdown does, and forget them (a later request answers 503)."""
        # The threads that read or write the stores, stopped before the stores close.
        for periodic in self.jobs:
            periodic.stop()
        self.jobs = []
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self.webhooks is not None:
            self.webhooks.stop()
            self.webhooks = None
        self.payments = None
        self.reservations = self.backfills = None
        stores, self.stores = self.stores, None
        self.engine = self.keys = self.billing = self.invoices = self.invoicer = None
        if stores is not None:
            stores.close()

    def shutdown(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        self.close_stores()
        self.pool.shutdown(wait=True)

    # One request

    async def http(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        route: Route | None = None
        try:
            request = Request.of(scope)
            if request.path == CONSOLE or request.path.startswith(CONSOLE + "/"):
                answer = await self.console.handle(request, receive, str(scope.get("scheme", "http")))
            else:
                route, path_args = self.router.match(request.method, request.path)
                answer = await self.handle(request, route, path_args, receive)
        except Disconnected:
            return
        except BaseException as e:  # noqa: BLE001 - a panic in Rust is a BaseException: answer 500 (answer_of)
            answer = answer_of(e)
        if route is not None and route.errors_as is not None and answer[0] >= 400:
            answer = route.errors_as(answer)  # a drop-in route answers errors in its vendor's shape
        self.responses[answer[0]] = self.responses.get(answer[0], 0) + 1
        await send_answer(send, answer)

    async def handle(self, request: Request, route: Route, path_args: dict[str, str], receive: Receive) -> Answer:
        """Check the request's key for its route, and only then read its body.

        An unauthenticated client can make the server read (and decompress) nothing.
        """
        request.key = await authorize(self, request, route.access)
        if self.degraded and request.method != "GET":
            raise ApiError(503, "store_unavailable", f"the server is read-only: {self.degraded}", {"retry-after": "30"})
        args: dict[str, Any] = dict(path_args)
        if request.method in ("POST", "PUT"):
            body = await read_body(request, receive, self.max_body)
            encoding = content_encoding(request)
            if encoding in ("gzip", "zstd"):
                body = await self.call(decompress, encoding, body, self.max_body)
            request.body = body
        if route.body is not None:
            if route.body.accept:
                media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
                if media not in route.body.accept:
                    raise ApiError(415, "unsupported_media_type", route.body.accept_message)
            if route.body.type is not None:
                args["body"] = decode(request.body, route.body.type, route.body.code)
        for param in route.params:
            args[param.argument] = param.read(request)
        return await route.handler(self, request, **args)


def create_app() -> MeterApp:
    """Factory for granian: configuration comes from the environment `meter serve` sets."""
    # The live state keeps a large heap of long-lived answers, which Python's collector would scan every 700
    # allocations (a third of a refresh's time at 10,000 customers, measured): collect the young rarely instead.
    gc.set_threshold(50_000, 20, 20)
    # Requests (a check is a dictionary lookup) wait for the GIL while the live state's thread computes: let them in
    # after 0.5 ms rather than Python's default 5 ms, which a check would otherwise wait once or twice (its p50).
    sys.setswitchinterval(0.0005)
    every = os.environ.get("METER_EXPORT_EVERY")
    export = (Path(os.environ["METER_EXPORT_DIR"]), float(every)) if every else None
    return MeterApp(
        Path(os.environ.get("METER_DATA_DIR", ".meter-data")),
        os.environ.get("METER_ADMIN_KEY") or None,
        export=export,
        engine_options=engine_options_from_env(),
        payments=Payments.from_env(),
        dunning_every=float(os.environ.get("METER_DUNNING_EVERY") or 60),
        recognize_every=float(os.environ.get("METER_RECOGNIZE_EVERY") or 3600),
        webhook_settings=WebhookSettings.from_env(),
    )


def _tenant_ids(keys: KeyStore) -> list[str]:
    """The tenants the background jobs go through (every one the key store knows)."""
    return [t.id for t in keys.list_tenants()]
