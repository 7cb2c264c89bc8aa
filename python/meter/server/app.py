"""meter's HTTP API as a plain ASGI application: routes only.

The engine does the work (one call per request, with the raw body); msgspec reads and writes JSON; `errors.py` maps
exceptions to status codes.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import sys
import threading
import traceback
import zlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, cast, overload
from urllib.parse import parse_qsl, unquote_to_bytes

import msgspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import zstandard

from meter.billing.invoicer import Invoicer
from meter.billing.invoices import CreditNoteBody, InvoiceRunBody, InvoiceStore, RunWarning
from meter.billing.invoicing import parse_month
from meter.catalog.billing import (
    BillingCatalog,
    Customer,
    MigrationBody,
    PlanBody,
    PlanVersionBody,
    Product,
    Subscription,
)
from meter.catalog.keys import KEY_FORMAT, ApiKey, KeyBody, KeyStore, Scope, TenantBody, TenantKeyBody, valid_checksum
from meter.encoding import encode_json
from meter.engine import Engine, Usage, WindowSize
from meter.exceptions import MeterError
from meter.schemas import MeterSpec, SkippedEvents
from meter.server.errors import ApiError, status_of
from meter.server.openapi import openapi

__all__ = ["MeterApp", "create_app"]

Scope_ = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY = 16 * 1024 * 1024
JSON = [(b"content-type", b"application/json")]


class Headers:
    """A request's headers as the list they arrived in, never a dict: a header sent twice is seen twice.

    `get` answers the one value of a header, joins the values of a list-valued one (RFC 9110 5.3), and refuses (400
    `duplicate_header`) a single-valued header sent twice, so that a client can never override a header a proxy set
    (or the other way round).
    """

    #: Headers whose repeated values combine into one comma-separated list.
    LISTS = frozenset(
        {"accept", "accept-encoding", "accept-language", "cache-control", "forwarded", "via", "x-forwarded-for"}
    )

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self.pairs if k == name]

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.getall(name)
        if not values:
            return default
        if len(values) > 1:
            if name in self.LISTS:
                return ", ".join(values)
            raise ApiError(400, "duplicate_header", f"the request has {len(values)} {name!r} headers; send one")
        return values[0]

    def __contains__(self, name: object) -> bool:
        return any(k == name for k, _ in self.pairs)


class Request:
    """What the app reads of a request.

    `Request.of(scope)` is the one place where request metadata (path, query string, headers) is decoded: anything
    undecodable there is a 400, and nothing else reads the raw scope.
    """

    def __init__(self, method: str, path: str, query: list[tuple[str, str]], headers: Headers) -> None:
        self.method, self.path, self.query, self.headers = method, path, query, headers
        self.body = b""
        self.key: ApiKey | None = None

    @classmethod
    def of(cls, scope: Scope_) -> Request:
        try:
            raw_path = scope.get("raw_path")
            # The path from the bytes on the wire when the server gives them: a server may already have replaced an
            # undecodable byte in `path` (a U+FFFD that would silently name another object).
            path = unquote_to_bytes(raw_path).decode() if raw_path else str(scope["path"])
            path.encode()  # a lone surrogate (surrogateescape) is not a path either
            query = parse_qsl(bytes(scope.get("query_string", b"")).decode(), keep_blank_values=True, errors="strict")
            headers = [(bytes(k).decode("ascii").lower(), bytes(v).decode()) for k, v in scope["headers"]]
            return cls(str(scope["method"]), path, query, Headers(headers))
        except Exception:  # noqa: BLE001 - undecodable request metadata is the client's error, never a 500
            raise ApiError(
                400,
                "invalid_encoding",
                "the path, the query string and every header must be valid "
                "UTF-8 (percent-encoded where the URL needs it)",
            ) from None

    def params(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]

    def param(self, name: str) -> str | None:
        """The one value of a query parameter: given twice is a 400, never last-wins."""
        values = self.params(name)
        if len(values) > 1:
            raise ApiError(400, "invalid_query", f"'{name}' is given {len(values)} times; give it once")
        return values[0] if values else None


class Disconnected(Exception):
    """The client went away before its body arrived whole: nothing is processed, nothing answered."""


Handler = Callable[..., Awaitable[tuple[int, Any, dict[str, str]]]]
_P = ParamSpec("_P")
_T = TypeVar("_T")
_Store = TypeVar("_Store")


#: Who may call a route: a tenant key with one of these scopes, an operator key, or anyone.
Access = Scope | Literal["operator", "public"]
#: Spellings of `?atomic=` (case-insensitive); anything else is a 400.
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class MeterApp:
    """One app per process; it opens the engine and the key store at startup (ASGI lifespan)."""

    def __init__(
        self,
        data_dir: Path,
        admin_key: str | None = None,
        max_body: int = MAX_BODY,
        export: tuple[Path, float] | None = None,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        self.data_dir, self.admin_key, self.max_body = data_dir, admin_key, max_body
        #: Keyword arguments of ``meter.Engine`` (retention, roll-ups...), from ``meter serve``'s options.
        self.engine_options = engine_options or {}
        #: (directory, seconds between exports) of the scheduled Parquet export, if any.
        self.export = export
        self.exporter: threading.Thread | None = None
        self.stopping = threading.Event()
        self.exports_done = 0
        # The stores: None until startup opens them (or after a failed open), Unavailable for those a degraded start
        # could not open. Routes reach them through opened(): authorize() lets a request through only once they are.
        self.engine: Engine | Unavailable | None = None
        self.responses: dict[int, int] = {}
        self.keys: KeyStore | Unavailable | None = None
        self.billing: BillingCatalog | Unavailable | None = None
        self.invoices: InvoiceStore | Unavailable | None = None
        self.invoicer: Invoicer | Unavailable | None = None
        # Engine calls block (with the GIL released): run them on threads so that concurrent requests share commits.
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="meter-call")
        #: Set when the stores could not be opened for writing at startup (a full or read-only disk): the server
        #: runs degraded, serving what it can read, answering writes 503 and /readyz 503 with this reason.
        self.degraded: str | None = None
        self.openapi_json: bytes | None = None
        # (method, path, access, handler). Access: the scope a tenant key needs, "operator" (an operator key; every
        # /v1/admin/* route is operator-only whatever it says here), or "public" (no key).
        self.routes: list[tuple[str, re.Pattern[str], Access, Callable[..., Any]]] = [
            ("GET", re.compile(r"/healthz"), "public", self.healthz),
            ("GET", re.compile(r"/readyz"), "public", self.readyz),
            ("GET", re.compile(r"/openapi\.json"), "public", self.openapi_document),
            ("GET", re.compile(r"/metrics"), "operator", self.get_metrics),
            ("POST", re.compile(r"/v1/events"), "ingest", self.post_events),
            ("POST", re.compile(r"/v1/meters"), "admin", self.create_meter),
            ("GET", re.compile(r"/v1/meters"), "read", self.list_meters),
            ("GET", re.compile(r"/v1/meters/(?P<slug>[^/]+)"), "read", self.get_meter),
            ("DELETE", re.compile(r"/v1/meters/(?P<slug>[^/]+)"), "admin", self.delete_meter),
            ("GET", re.compile(r"/v1/meters/(?P<slug>[^/]+)/usage"), "read", self.usage),
            ("GET", re.compile(r"/v1/meters/(?P<slug>[^/]+)/skipped"), "read", self.skipped),
            ("POST", re.compile(r"/v1/admin/tenants"), "operator", self.create_tenant),
            ("GET", re.compile(r"/v1/admin/tenants"), "operator", self.list_tenants),
            ("POST", re.compile(r"/v1/admin/keys"), "operator", self.create_key),
            ("GET", re.compile(r"/v1/admin/keys"), "operator", self.list_keys),
            ("DELETE", re.compile(r"/v1/admin/keys/(?P<key_id>[^/]+)"), "operator", self.revoke_key),
            ("POST", re.compile(r"/v1/keys"), "admin", self.create_own_key),
            ("GET", re.compile(r"/v1/keys"), "admin", self.list_own_keys),
            ("DELETE", re.compile(r"/v1/keys/(?P<key_id>[^/]+)"), "admin", self.revoke_own_key),
            ("POST", re.compile(r"/v1/plans/(?P<plan_id>[^/]+)/versions"), "admin", self.add_plan_version),
            ("POST", re.compile(r"/v1/subscriptions/(?P<sub_id>[^/]+)/migrate"), "admin", self.migrate_subscription),
            ("POST", re.compile(r"/v1/invoices/run"), "admin", self.run_invoices),
            ("POST", re.compile(r"/v1/invoices/thresholds"), "admin", self.bill_thresholds),
            ("GET", re.compile(r"/v1/invoices"), "read", self.list_invoices),
            ("GET", re.compile(r"/v1/invoices/(?P<invoice_id>[^/]+)"), "read", self.get_invoice),
            ("POST", re.compile(r"/v1/invoices/(?P<invoice_id>[^/]+)/finalize"), "admin", self.finalize_invoice),
            ("POST", re.compile(r"/v1/invoices/(?P<invoice_id>[^/]+)/void"), "admin", self.void_invoice),
            ("POST", re.compile(r"/v1/invoices/(?P<invoice_id>[^/]+)/credit-notes"), "admin", self.credit_invoice),
            ("GET", re.compile(r"/v1/credit-notes"), "read", self.list_credit_notes),
            ("GET", re.compile(r"/v1/customers/(?P<customer>[^/]+)/upcoming-invoice"), "read", self.upcoming_invoice),
        ]
        # The billing catalog: POST creates or replaces (plans: creates), GET lists or fetches one, DELETE deletes
        # what nothing else refers to; per tenant.
        for singular, body_type in (
            ("customer", Customer),
            ("product", Product),
            ("plan", PlanBody),
            ("subscription", Subscription),
        ):
            self.routes += [
                ("POST", re.compile(f"/v1/{singular}s"), "admin", self.catalog_put(singular, body_type)),
                ("GET", re.compile(f"/v1/{singular}s"), "read", self.catalog_list(singular)),
                ("GET", re.compile(f"/v1/{singular}s/(?P<item_id>[^/]+)"), "read", self.catalog_get(singular)),
                ("DELETE", re.compile(f"/v1/{singular}s/(?P<item_id>[^/]+)"), "admin", self.catalog_delete(singular)),
            ]
        if os.environ.get("METER_BENCH_ENDPOINTS") == "1":
            # The receive-and-discard ceiling of `make bench-http`: the same reading, auth and answer, no engine.
            self.routes.append(("POST", re.compile(r"/bench/discard"), "ingest", self.discard))

    # ASGI

    async def __call__(self, scope: Scope_, receive: Receive, send: Send) -> None:
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
        if self.admin_key is not None and not valid_checksum(self.admin_key):
            raise ValueError(admin_key_message())
        try:
            self.open_stores()
        except Exception as e:  # noqa: BLE001 - only a full or read-only disk is survivable; the rest is re-raised
            reason = storage_full(e)
            if reason is None:
                raise
            self.close_stores()
            self.open_degraded(f"{reason} at startup: {e}")
        if self.export and not self.degraded:
            self.exporter = threading.Thread(target=self.export_on_schedule, name="meter-export", daemon=True)
            self.exporter.start()

    def open_stores(self) -> None:
        self.keys = KeyStore(self.data_dir / "catalog")
        if self.admin_key:
            known = self.keys.authenticate(self.admin_key)
            if known is not None and not known.operator:
                raise ValueError(
                    "METER_ADMIN_KEY is a tenant's key, not an operator key; `meter admin-key new` makes a new one"
                )
            if known is None:
                self.keys.create_key(None, ["admin"], secret=self.admin_key)
        elif not self.keys.has_admin_key():
            secret, _ = self.keys.create_key(None, ["admin"])
            print(f"meter: created the operator key (shown once, store it now): {secret}", flush=True)
        self.engine = Engine(self.data_dir / "usage", **self.engine_options)
        # The catalog checks prices' meters against the engine, and deletes meters (see delete_meter).
        self.billing = BillingCatalog(self.data_dir / "billing", meters=self.engine)
        self.invoices = InvoiceStore(self.data_dir / "invoices")
        out = self.export[0] if self.export else self.data_dir / "export"
        self.invoicer = Invoicer(self.engine, self.billing, self.invoices, out)

    def close_stores(self) -> None:
        for name in ("engine", "keys", "billing", "invoices"):
            store = getattr(self, name)
            if store is not None and not isinstance(store, Unavailable):
                try:
                    store.close()
                except Exception:  # noqa: BLE001, S110 - closing what half-opened on a failed disk
                    pass
            setattr(self, name, None)
        self.invoicer = None

    def open_degraded(self, reason: str) -> None:
        """Serve what can be read without writing.

        The key store, the billing catalog and the invoices open read-only; what cannot open (the usage engine, which
        writes at open; invoicing, which writes its export) answers 503 `store_unavailable`, and so does every write.
        """
        self.degraded = reason
        print(f"meter: starting degraded, read-only: {reason}", file=sys.stderr, flush=True)
        unavailable = Unavailable(reason)
        for name, path, kind in (
            ("keys", "catalog", KeyStore),
            ("billing", "billing", BillingCatalog),
            ("invoices", "invoices", InvoiceStore),
        ):
            try:
                setattr(self, name, kind(self.data_dir / path, read_only=True))
            except Exception as e:  # noqa: BLE001 - that store stays unavailable; the rest is served
                print(f"meter: {path} is unavailable too: {e}", file=sys.stderr, flush=True)
                setattr(self, name, unavailable)
        self.engine = unavailable
        self.invoicer = unavailable

    def export_on_schedule(self) -> None:
        """Exports usage, the catalog and invoices every interval, then issues the threshold invoices due.

        A failure is reported and tried again next time.
        """
        assert self.export is not None and self.invoicer is not None
        out, every = self.export
        while not self.stopping.wait(every):
            try:
                tenants = [t.id for t in opened(self.keys).list_tenants()]
                self.invoicer.export(tenants)
                self.exports_done += 1
            except Exception as e:  # noqa: BLE001 - the next interval tries again; the server keeps serving
                print(f"meter: scheduled export to {out} failed: {e!r}", file=sys.stderr, flush=True)
                continue
            # One tenant's threshold invoices never stop another's.
            for tenant in tenants:
                try:
                    self.invoicer.thresholds(tenant, datetime.now(UTC))
                except Exception as e:  # noqa: BLE001 - reported; the next interval tries again
                    print(f"meter: threshold invoices of tenant {tenant!r} failed: {e!r}", file=sys.stderr, flush=True)

    def shutdown(self) -> None:
        self.stopping.set()
        if self.exporter is not None:
            self.exporter.join()
        for store in (self.engine, self.keys, self.billing, self.invoices):
            if store is not None and not isinstance(store, Unavailable):
                store.close()
        self.pool.shutdown(wait=True)

    async def http(self, scope: Scope_, receive: Receive, send: Send) -> None:
        try:
            status, body, headers = await self.handle(scope, receive)
        except Disconnected:
            return
        except ApiError as e:
            status, body, headers = e.status, {"code": e.code, "message": e.message}, e.headers
        except MeterError as e:
            body = {"code": e.code, "message": e.message}
            if getattr(e, "details", None) is not None:
                body["issues"] = e.details
            status = status_of(e)
            headers = {"retry-after": "1"} if status in (429, 503) else {}
        except BaseException as e:  # noqa: BLE001 - a panic in Rust is a BaseException: answer 500
            if isinstance(e, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):
                raise
            # A bug, not bad input. It may have struck after a write (or while encoding the answer to one), so the
            # answer cannot promise that nothing was applied: it says how to find out instead.
            traceback.print_exc(file=sys.stderr)
            status, headers = 500, {}
            body = {
                "code": "internal",
                "message": "internal error (logged by the server); the request may have been "
                "applied: read the state back before repeating a change; events can be re-sent with the same ids, "
                "which never counts them twice",
            }
        self.responses[status] = self.responses.get(status, 0) + 1
        payload = body if isinstance(body, bytes) else encode_json(body)
        content_type = headers.pop("content-type", None)
        raw_headers = [(b"content-type", content_type.encode())] if content_type else list(JSON)
        raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})

    async def handle(self, scope: Scope_, receive: Receive) -> tuple[int, Any, dict[str, str]]:
        """Decode the request's metadata, find its route, check its key, and only then read its body.

        An unauthenticated client can make the server read (and decompress) nothing.
        """
        request = Request.of(scope)
        path, method = request.path, request.method
        for route_method, pattern, access, handler in self.routes:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                request.key = self.authorize(request, access, path)
                if self.degraded and method != "GET":
                    raise ApiError(
                        503, "store_unavailable", f"the server is read-only: {self.degraded}", {"retry-after": "30"}
                    )
                if method in ("POST", "PUT"):
                    request.body = await self.read_body(request, receive)
                answer: tuple[int, Any, dict[str, str]] = await handler(request, **match.groupdict())
                return answer
        matching = [(m, p.groups == 0) for m, p, _, _ in self.routes if p.fullmatch(path)]
        # A literal path (/v1/invoices/run) has its own methods, not those of the template it also fits.
        allowed = sorted({m for m, literal in matching if literal} or {m for m, _ in matching})
        if allowed:  # RFC 9110 15.5.6: a 405 says which methods the path has
            raise ApiError(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                {"allow": ", ".join(allowed)},
            )
        raise ApiError(404, "not_found", f"no route {path}; see /openapi.json")

    async def healthz(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, {"status": "ok"}, {}

    async def readyz(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        failure = self.degraded or (self.engine.failure() if self.engine else "starting")
        if failure:
            return 503, {"status": "unavailable", "reason": failure}, {"retry-after": "5"}
        return 200, {"status": "ready"}, {}

    async def openapi_document(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        if self.openapi_json is None:  # built once: generating the schemas would cost every request on the loop
            self.openapi_json = msgspec.json.encode(openapi())
        return 200, self.openapi_json, {}

    async def get_metrics(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, self.metrics().encode(), {"content-type": "text/plain; version=0.0.4"}

    def metrics(self) -> str:
        lines = ["# TYPE meter_http_responses_total counter"]
        lines += [f'meter_http_responses_total{{status="{k}"}} {v}' for k, v in sorted(self.responses.items())]
        if self.engine is not None and not isinstance(self.engine, Unavailable):
            s = self.engine.stats()
            for name, kind, value in [
                ("meter_events_accepted_total", "counter", s.accepted),
                ("meter_events_duplicate_total", "counter", s.duplicates),
                ("meter_events_rejected_total", "counter", s.rejected),
                ("meter_queue_depth", "gauge", s.queue_depth),
                ("meter_exports_total", "counter", self.exports_done),
                ("meter_store_healthy", "gauge", 0 if self.engine.failure() else 1),
            ]:
                lines += [f"# TYPE {name} {kind}", f"{name} {value}"]
            lines.append("# TYPE meter_commit_seconds histogram")
            for bound, count in s.commit_seconds_buckets:
                le = "+Inf" if bound is None else repr(bound)
                lines.append(f'meter_commit_seconds_bucket{{le="{le}"}} {count}')
            lines += [f"meter_commit_seconds_sum {s.commit_seconds_total}", f"meter_commit_seconds_count {s.commits}"]
            lines.append("# TYPE meter_events_skipped_total counter")
            lines += [
                f'meter_events_skipped_total{{tenant="{_label(c.tenant)}",meter="{_label(c.meter)}"}} {c.events}'
                for c in s.skipped
            ]
            m = s.maintenance
            lines += [
                "# TYPE meter_maintenance_runs_total counter",
                f"meter_maintenance_runs_total {m.runs}",
                "# TYPE meter_maintenance_healthy gauge",
                f"meter_maintenance_healthy {0 if m.last_error else 1}",
            ]
            # Retained events past retention that stay because the export has not written them (export them).
            lines.append("# TYPE meter_retained_events_held_back gauge")
            lines += [f'meter_retained_events_held_back{{tenant="{_label(h.tenant)}"}} {h.events}' for h in m.held_back]
        return "\n".join(lines) + "\n"

    def authorize(self, request: Request, access: Access, path: str) -> ApiKey | None:
        """The key of a request, allowed on its route; deny by default.

        A public route needs no key; /v1/admin/* and /metrics need an operator key; every other route needs a tenant
        key with the route's scope. Two Authorization headers are a 400, never last-wins.
        """
        if access == "public" and not path.startswith("/v1/"):
            return None
        header = request.headers.get("authorization") or ""
        secret = header[7:].strip() if header[:7].lower() == "bearer " else ""
        key = self.keys.authenticate(secret) if (secret and self.keys) else None
        if key is None:
            raise ApiError(
                401,
                "unauthorized",
                "send a valid API key as 'Authorization: Bearer mk_live_...'",
                {"www-authenticate": "Bearer"},
            )
        if access == "operator" or path.startswith("/v1/admin/"):
            if not key.operator:
                raise ApiError(
                    403,
                    "operator_only",
                    f"{path} is for the operator of the installation; a tenant's "
                    "key cannot use it (a tenant manages its own keys with /v1/keys)",
                )
            return key
        if key.operator:
            raise ApiError(
                403,
                "tenant_only",
                "an operator key reaches only /v1/admin/* and /metrics; use a key of "
                'the tenant (POST /v1/admin/keys {"tenant": ..., "scopes": [...]})',
            )
        if access not in key.scopes:
            raise ApiError(403, "forbidden", f"this key lacks the '{access}' scope")
        return key

    async def read_body(self, request: Request, receive: Receive) -> bytes:
        """The whole body, bounded, decompressed on the thread pool (not the event loop).

        A body that is not exactly its Content-Length, or a compressed body with anything undecodable in it, is
        refused: never half-read.
        """
        length = request.headers.get("content-length")
        expected: int | None = None
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                raise ApiError(400, "invalid_header", f"Content-Length must be a number of bytes; got {length!r}")
            expected = int(length)
            if expected > self.max_body:
                raise ApiError(413, "body_too_large", f"the body is {length} bytes; the limit is {self.max_body}")
        encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
        if encoding not in ("gzip", "zstd", "identity", ""):
            raise ApiError(
                415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; use gzip or zstd"
            )
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise ApiError(413, "body_too_large", f"the body exceeds the limit of {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if expected is not None and size != expected:
            raise ApiError(400, "incomplete_body", f"the body has {size} bytes; its Content-Length says {expected}")
        body = b"".join(chunks)
        if encoding == "gzip":
            return await self.call(gunzip, body, self.max_body)
        if encoding == "zstd":
            return await self.call(unzstd, body, self.max_body)
        return body

    async def call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    def tenant(self, request: Request) -> str:
        assert request.key is not None and request.key.tenant is not None, "authorize() lets only tenant keys here"
        return request.key.tenant

    # routes

    async def post_events(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media not in ("application/json", "application/cloudevents-batch+json", "application/cloudevents+json"):
            raise ApiError(
                415,
                "unsupported_media_type",
                "send application/cloudevents-batch+json, application/json or application/cloudevents+json",
            )
        atomic = parse_bool(request.param("atomic"), "atomic")
        result = await self.call(opened(self.engine).ingest, self.tenant(request), request.body, atomic=atomic)
        if result.accepted or result.duplicates or not result.issues:
            return 200, result, {}
        # Nothing accepted: an error body like every other (code, message), with the per-event issues.
        first = result.issues[0]
        message = (
            f"none of the {len(result.issues)} events was accepted; see issues (the first, #{first.index} "
            f"{first.id!r}: {first.code}: {first.message})"
        )
        return 400, {"code": "no_events_accepted", "message": message, **msgspec.structs.asdict(result)}, {}

    async def discard(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, {"received": len(request.body)}, {}

    async def create_meter(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        spec = decode(request.body, MeterSpec)
        return 201, await self.call(opened(self.engine).create_meter, self.tenant(request), spec), {}

    async def list_meters(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, opened(self.engine).list_meters(self.tenant(request)), {}

    async def get_meter(self, request: Request, slug: str) -> tuple[int, Any, dict[str, str]]:
        return 200, opened(self.engine).get_meter(self.tenant(request), slug), {}

    async def delete_meter(self, request: Request, slug: str) -> tuple[int, Any, dict[str, str]]:
        # Through the catalog: refused (409 in_use) while a price, an override or a product names the meter.
        await self.call(opened(self.billing).delete_meter, self.tenant(request), slug)
        return 200, {"deleted": slug}, {}

    async def usage(self, request: Request, slug: str) -> tuple[int, Any, dict[str, str]]:
        start, end = parse_time(request.param("from"), "from"), parse_time(request.param("to"), "to")
        filters: dict[str, list[str]] = {}
        for k, v in request.query:
            if k.startswith("filter[") and k.endswith("]"):
                filters.setdefault(k[7:-1], []).append(v)
        result = await self.call(
            opened(self.engine).usage,
            self.tenant(request),
            slug,
            start=start,
            end=end,
            # Any text: the engine refuses what is not a WindowSize (400, naming the allowed values).
            window_size=cast("WindowSize | None", request.param("window_size")),
            subjects=request.params("subject"),
            group_by=request.params("group_by"),
            filters=filters,
            tz=request.param("tz"),
        )
        # Encoding runs on a worker thread, as the query did: 88k rows take a few hundred ms, which would stall every
        # other request (health checks included) on the event loop.
        return await self.call(encode_usage, result, slug, start, end, request.headers.get("accept", ""))

    async def skipped(self, request: Request, slug: str) -> tuple[int, Any, dict[str, str]]:
        start, end = parse_time(request.param("from"), "from"), parse_time(request.param("to"), "to")
        limit = request.param("limit") or "100"
        if not (limit.isascii() and limit.isdigit()):
            raise ApiError(400, "invalid_query", f"'limit' must be a whole number 1-1000; got {limit!r}")
        page = await self.call(
            opened(self.engine).skipped,
            self.tenant(request),
            slug,
            start=start,
            end=end,
            after=request.param("after"),
            limit=int(limit),
        )
        return (
            200,
            SkippedEvents(
                meter=slug,
                from_=start.isoformat(),
                to=end.isoformat(),
                data=page.events,
                next=page.next,
                scanned=page.scanned,
            ),
            {},
        )

    async def create_tenant(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        body = decode(request.body, TenantBody)
        return 201, opened(self.keys).create_tenant(body.id, body.name), {}

    async def list_tenants(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, opened(self.keys).list_tenants(), {}

    async def create_key(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        """The operator creates a key for any tenant, or (`"tenant": null`) another operator key."""
        body = decode(request.body, KeyBody)
        secret, record = opened(self.keys).create_key(body.tenant, list(body.scopes))
        return 201, {"key": secret, **msgspec.structs.asdict(record)}, {}

    async def list_keys(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, opened(self.keys).list_keys(request.param("tenant")), {}

    async def revoke_key(self, request: Request, key_id: str) -> tuple[int, Any, dict[str, str]]:
        opened(self.keys).revoke(key_id, operator=True)
        return 200, {"revoked": key_id}, {}

    async def create_own_key(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        """A tenant's `admin` key creates keys of its own tenant (the tenant comes from the key, never the body)."""
        body = decode(request.body, TenantKeyBody)
        secret, record = opened(self.keys).create_key(self.tenant(request), list(body.scopes))
        return 201, {"key": secret, **msgspec.structs.asdict(record)}, {}

    async def list_own_keys(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, opened(self.keys).list_keys(self.tenant(request)), {}

    async def revoke_own_key(self, request: Request, key_id: str) -> tuple[int, Any, dict[str, str]]:
        opened(self.keys).revoke(
            key_id, tenant=self.tenant(request)
        )  # another tenant's key (or an operator's) is a 404
        return 200, {"revoked": key_id}, {}

    def catalog_put(self, singular: str, body_type: type[Any]) -> Handler:
        async def put(request: Request) -> tuple[int, Any, dict[str, str]]:
            tenant, item = self.tenant(request), decode(request.body, body_type, "invalid_catalog")
            # On a worker thread: a catalog write takes the catalog's lock, which a meter deletion holds meanwhile.
            if singular == "plan":
                return (
                    201,
                    await self.call(opened(self.billing).create_plan, tenant, item.id, item.name, item.versions),
                    {},
                )
            return 200, await self.call(getattr(opened(self.billing), f"put_{singular}"), tenant, item), {}

        return put

    def catalog_list(self, singular: str) -> Handler:
        async def list_all(request: Request) -> tuple[int, Any, dict[str, str]]:
            return 200, getattr(opened(self.billing), f"list_{singular}s")(self.tenant(request)), {}

        return list_all

    def catalog_get(self, singular: str) -> Handler:
        async def get(request: Request, item_id: str) -> tuple[int, Any, dict[str, str]]:
            return 200, getattr(opened(self.billing), f"get_{singular}")(self.tenant(request), item_id), {}

        return get

    def catalog_delete(self, singular: str) -> Handler:
        async def delete(request: Request, item_id: str) -> tuple[int, Any, dict[str, str]]:
            await self.call(getattr(opened(self.billing), f"delete_{singular}"), self.tenant(request), item_id)
            return 200, {"deleted": item_id}, {}

        return delete

    async def migrate_subscription(self, request: Request, sub_id: str) -> tuple[int, Any, dict[str, str]]:
        body = decode(request.body, MigrationBody, "invalid_catalog")
        return (
            200,
            await self.call(
                opened(self.billing).migrate_subscription, self.tenant(request), sub_id, body.version, body.at
            ),
            {},
        )

    # invoices (python/meter/pricing): work from the Parquet export, refreshed by each call

    async def run_invoices(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        body = decode(request.body, InvoiceRunBody)
        return 200, await self.call(opened(self.invoicer).run, self.tenant(request), body.period, body.finalize), {}

    async def bill_thresholds(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, await self.call(opened(self.invoicer).thresholds, self.tenant(request), datetime.now(UTC)), {}

    async def list_invoices(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        # period: the month the invoices' cycles start in (what a run bills fees in advance for); usage_period: the
        # month whose usage they bill in arrears.
        for name in ("period", "usage_period"):
            if (month := request.param(name)) is not None:
                parse_month(month, name)
        invoices = opened(self.invoices).list(self.tenant(request))
        for name in ("status", "customer", "subscription", "period", "usage_period"):
            if (wanted := request.param(name)) is not None:
                invoices = [i for i in invoices if getattr(i, name) == wanted]
        return 200, invoices, {}

    async def get_invoice(self, request: Request, invoice_id: str) -> tuple[int, Any, dict[str, str]]:
        return 200, opened(self.invoices).get(self.tenant(request), invoice_id), {}

    async def finalize_invoice(self, request: Request, invoice_id: str) -> tuple[int, Any, dict[str, str]]:
        return (
            200,
            with_warnings(*await self.call(opened(self.invoicer).finalize, self.tenant(request), invoice_id)),
            {},
        )

    async def void_invoice(self, request: Request, invoice_id: str) -> tuple[int, Any, dict[str, str]]:
        return 200, with_warnings(*await self.call(opened(self.invoicer).void, self.tenant(request), invoice_id)), {}

    async def credit_invoice(self, request: Request, invoice_id: str) -> tuple[int, Any, dict[str, str]]:
        body = decode(request.body, CreditNoteBody)
        done = await self.call(opened(self.invoicer).credit, self.tenant(request), invoice_id, body.amount, body.reason)
        return 201, with_warnings(*done), {}

    async def list_credit_notes(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, opened(self.invoices).credit_notes(self.tenant(request)), {}

    async def upcoming_invoice(self, request: Request, customer: str) -> tuple[int, Any, dict[str, str]]:
        as_of = datetime.now(UTC)
        return 200, await self.call(opened(self.invoicer).preview, self.tenant(request), customer, as_of), {}

    async def add_plan_version(self, request: Request, plan_id: str) -> tuple[int, Any, dict[str, str]]:
        body = decode(request.body, PlanVersionBody, "invalid_catalog")
        return (
            201,
            await self.call(
                opened(self.billing).add_plan_version, self.tenant(request), plan_id, body.effective_from, body.prices
            ),
            {},
        )


def encode_usage(
    result: Usage, slug: str, start: datetime, end: datetime, accept: str
) -> tuple[int, Any, dict[str, str]]:
    """A usage answer as CSV, Arrow IPC or JSON, whichever `accept` asks for (JSON by default)."""
    if "text/csv" in accept:
        sink = pa.BufferOutputStream()
        pa_csv.write_csv(result.table, sink)
        return 200, sink.getvalue().to_pybytes(), {"content-type": "text/csv"}
    if "application/vnd.apache.arrow.stream" in accept:
        sink = pa.BufferOutputStream()
        with pa_ipc.new_stream(sink, result.table.schema) as writer:
            writer.write_table(result.table)
        return 200, sink.getvalue().to_pybytes(), {"content-type": "application/vnd.apache.arrow.stream"}
    # The rows are encoded by the engine from the Arrow columns (no Python object per row), then spliced into the
    # envelope: the same JSON the per-row dicts gave, as fast as CSV.
    head = msgspec.json.encode({"meter": slug, "from": start.isoformat(), "to": end.isoformat(), "data": None})
    return 200, head[: -len(b"null}")] + result.json_rows() + b"}", {}


def with_warnings(result: msgspec.Struct, warnings: list[RunWarning]) -> Any:
    """``result``, with ``warnings`` about what failed after it was stored (the write stands)."""
    if not warnings:
        return result
    return {**msgspec.to_builtins(result, builtin_types=(Decimal,)), "warnings": warnings}


class Unavailable:
    """Stands for a store that could not be opened (degraded start).

    Whatever a handler asks of it is a 503 `store_unavailable` with Retry-After, never an AttributeError on None.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __getattr__(self, name: str) -> Any:
        raise ApiError(
            503, "store_unavailable", f"this needs a store that is unavailable: {self.reason}", {"retry-after": "30"}
        )


def opened(store: _Store | Unavailable | None) -> _Store | Unavailable:
    """A store as a route uses it: open, or Unavailable (degraded), never None.

    authorize() needs the key store, so no route but the public ones runs before startup opened the stores; should one
    ever, it answers 503 `store_unavailable` like a store a degraded start could not open, never an AttributeError.
    """
    if store is None:
        raise ApiError(
            503, "store_unavailable", "the stores are not open yet: the server is starting", {"retry-after": "5"}
        )
    return store


def storage_full(e: BaseException) -> str | None:
    """'disk full' or 'read-only file system' when `e` comes from one of them, else None.

    `e` is an OSError or a RocksDB error that only has a message. These are the failures a server can start through,
    degraded.
    """
    causes: list[BaseException] = []
    link: BaseException | None = e
    while link is not None and len(causes) < 10:
        causes.append(link)
        link = link.__cause__ or link.__context__
    for cause in causes:
        number = getattr(cause, "errno", None)
        text = str(cause).lower()
        if number == errno.ENOSPC or "no space left on device" in text:
            return "disk full"
        if number == errno.EROFS or "read-only file system" in text:
            return "read-only file system"
    return None


def admin_key_message() -> str:
    return (
        f"METER_ADMIN_KEY (or --admin-key) is not a meter key: it must be {KEY_FORMAT}; "
        "`meter admin-key new` prints one"
    )


def parse_bool(value: str | None, name: str) -> bool:
    """A boolean query parameter: absent is false; true/false, 1/0, yes/no in any case; anything else a 400."""
    if value is None:
        return False
    try:
        return BOOLEANS[value.strip().lower()]
    except KeyError:
        raise ApiError(
            400, "invalid_query", f"'{name}' must be true or false (or 1/0, yes/no); got {value!r}"
        ) from None


_CHUNK = 64 * 1024


def gunzip(body: bytes, limit: int) -> bytes:
    """Every member of a gzip body (concatenated members are one stream, RFC 1952).

    At most `limit` bytes out (a bomb stops there: 413). Anything after the last member, or a member cut short, is a
    400 `invalid_gzip`: a body is read whole or refused. The input is fed in chunks so that many small members cost
    linear time.
    """
    out: list[bytes] = []
    size = 0
    view = memoryview(body)
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    fed = False  # whether the current member has had any input
    pending: bytes | memoryview = b""
    pos = 0
    while True:
        if not pending:
            if pos >= len(view):
                break
            pending, pos = view[pos : pos + _CHUNK], pos + _CHUNK
        try:
            chunk = d.decompress(pending, limit + 1 - size)
        except zlib.error as e:
            what = "trailing bytes after the last gzip member" if out and not fed else "the gzip body"
            raise ApiError(400, "invalid_gzip", f"{what} could not be decompressed: {e}") from None
        fed = True
        size += len(chunk)
        out.append(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the decompressed body exceeds {limit} bytes")
        if d.eof:
            pending = d.unused_data  # the start of the next member (at most one chunk)
            d, fed = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), False
        else:
            pending = d.unconsumed_tail  # empty: output stops short of max_length only when input runs out
    if fed or not out:
        raise ApiError(
            400,
            "invalid_gzip",
            "the gzip body is empty, truncated, or followed by bytes that are not "
            "gzip: send every byte of it and nothing else",
        )
    return b"".join(out)


def unzstd(body: bytes, limit: int) -> bytes:
    """Every frame of a zstd body, at most `limit` bytes out (413 past it).

    A truncated frame or trailing garbage is a 400 `invalid_zstd`. The bounded read decodes across frames (and stops
    a bomb); then a frame-by-frame pass over the same bytes, whose output the first pass has bounded, checks that the
    last frame is complete.
    """
    try:
        with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True) as reader:
            out = reader.read(limit + 1)
        if len(out) > limit:
            raise ApiError(413, "body_too_large", f"the decompressed body exceeds {limit} bytes")
        view, pos, pending, fed = memoryview(body), 0, b"", False
        d = zstandard.ZstdDecompressor().decompressobj()
        while pending or pos < len(view):
            if not pending:
                pending, pos = bytes(view[pos : pos + _CHUNK]), pos + _CHUNK
            d.decompress(pending)
            fed = True
            if d.eof:  # the rest of the chunk starts the next frame (fed in chunks: many small frames stay linear)
                pending, fed = d.unused_data, False
                d = zstandard.ZstdDecompressor().decompressobj()
            else:
                pending = b""
        if fed:
            raise ApiError(400, "invalid_zstd", "the zstd body is truncated: its last frame is incomplete")
    except zstandard.ZstdError as e:
        raise ApiError(400, "invalid_zstd", f"the zstd body could not be decompressed: {e}") from None
    if not body:
        raise ApiError(400, "invalid_zstd", "the zstd body is empty")
    return out


def decode(body: bytes, type_: type[Any], code: str = "invalid_body") -> Any:
    """The body as ``type_``; a body that does not match it is a 400 ``code`` (the catalog's: ``invalid_catalog``)."""
    try:
        value = msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as e:
        raise ApiError(400, code, f"the body does not match the schema: {e}") from None
    except msgspec.DecodeError as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from None
    # A key given twice is refused, never last-wins (msgspec keeps the last). Numbers stay text: no int-size limit.
    try:
        json.loads(body, object_pairs_hook=_unique_keys, parse_int=str, parse_float=str, parse_constant=str)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from None
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            raise ApiError(400, "invalid_json", f"the key {k!r} appears twice in one object; give it once")
        seen.add(k)
    return dict(pairs)


def parse_time(value: str | None, name: str) -> datetime:
    if not value:
        raise ApiError(400, "invalid_query", f"'{name}' is required, as RFC 3339 such as 2026-11-01T00:00:00Z")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, "invalid_query", f"'{name}' must be RFC 3339 such as 2026-11-01T00:00:00Z; got {value!r}"
        ) from None
    if t.tzinfo is None:
        raise ApiError(400, "invalid_query", f"'{name}' needs a time zone offset or Z; got {value!r}")
    return t


def _label(value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def engine_options_from_env() -> dict[str, Any]:
    """``meter.Engine``'s settings that ``meter serve`` passes through the environment (unset: the engine's default)."""
    options: dict[str, Any] = {}
    for name, option in (
        ("METER_RETENTION_DAYS", "retention"),
        ("METER_MINUTE_AGGREGATES_DAYS", "minute_aggregates"),
        ("METER_HOUR_AGGREGATES_DAYS", "hour_aggregates"),
    ):
        if os.environ.get(name):
            options[option] = timedelta(days=float(os.environ[name]))
    if os.environ.get("METER_MAINTENANCE_EVERY"):
        options["maintenance_interval"] = timedelta(seconds=float(os.environ["METER_MAINTENANCE_EVERY"]))
    for name, option in (
        ("METER_MAX_COMBINATIONS_PER_MINUTE", "max_combinations_per_minute"),
        ("METER_MAX_CUSTOMERS_PER_MINUTE", "max_customers_per_minute"),
    ):
        if os.environ.get(name):
            options[option] = int(os.environ[name])
    return options


def create_app() -> MeterApp:
    """Factory for granian: configuration comes from the environment `meter serve` sets."""
    every = os.environ.get("METER_EXPORT_EVERY")
    export = (Path(os.environ["METER_EXPORT_DIR"]), float(every)) if every else None
    return MeterApp(
        Path(os.environ.get("METER_DATA_DIR", ".meter-data")),
        os.environ.get("METER_ADMIN_KEY") or None,
        export=export,
        engine_options=engine_options_from_env(),
    )
