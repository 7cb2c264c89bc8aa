"""meter's HTTP API as a plain ASGI application: routes only. The engine does the work (one call per request, with
the raw body); msgspec reads and writes JSON; `errors.py` maps exceptions to status codes."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
import zlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import pyarrow as pa
import zstandard
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc

from meter.catalog.billing import (BillingCatalog, Customer, MigrationBody, PlanBody, PlanVersionBody, Product,
                                   Subscription)
from meter.catalog.keys import ApiKey, KeyStore, Scope
from meter.engine import Engine
from meter.exceptions import MeterError
from meter.pricing.invoicer import Invoicer
from meter.pricing.invoices import CreditNoteBody, InvoiceRunBody, InvoiceStore
from meter.schemas import MeterSpec
from meter.server.errors import ApiError, status_of
from meter.server.openapi import BUILTIN_PATHS, openapi

__all__ = ["MeterApp", "create_app"]

Scope_ = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY = 16 * 1024 * 1024
JSON = [(b"content-type", b"application/json")]


class Request:
    def __init__(self, scope: Scope_, body: bytes) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query = parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)
        self.headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.body = body
        self.key: ApiKey | None = None

    def params(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]

    def param(self, name: str) -> str | None:
        values = self.params(name)
        return values[-1] if values else None


Handler = Callable[..., Awaitable[tuple[int, Any, dict[str, str]]]]


class TenantBody(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    name: str = ""


class KeyBody(msgspec.Struct, forbid_unknown_fields=True):
    tenant: str
    scopes: list[Scope]


class MeterApp:
    """One app per process; it opens the engine and the key store at startup (ASGI lifespan)."""

    def __init__(self, data_dir: Path, admin_key: str | None = None, max_body: int = MAX_BODY,
                 export: tuple[Path, float] | None = None) -> None:
        self.data_dir, self.admin_key, self.max_body = data_dir, admin_key, max_body
        #: (directory, seconds between exports) of the scheduled Parquet export, if any.
        self.export = export
        self.exporter: threading.Thread | None = None
        self.stopping = threading.Event()
        self.exports_done = 0
        self.engine: Engine | None = None
        self.responses: dict[int, int] = {}
        self.keys: KeyStore | None = None
        self.billing: BillingCatalog | None = None
        self.invoices: InvoiceStore | None = None
        self.invoicer: Invoicer | None = None
        # Engine calls block (with the GIL released): run them on threads so that concurrent requests share commits.
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="meter-call")
        self.routes: list[tuple[str, re.Pattern[str], Scope, Callable[..., Any]]] = [
            ("POST", re.compile(r"/v1/events"), "ingest", self.post_events),
            ("POST", re.compile(r"/v1/meters"), "admin", self.create_meter),
            ("GET", re.compile(r"/v1/meters"), "read", self.list_meters),
            ("GET", re.compile(r"/v1/meters/(?P<slug>[^/]+)"), "read", self.get_meter),
            ("DELETE", re.compile(r"/v1/meters/(?P<slug>[^/]+)"), "admin", self.delete_meter),
            ("GET", re.compile(r"/v1/meters/(?P<slug>[^/]+)/usage"), "read", self.usage),
            ("POST", re.compile(r"/v1/admin/tenants"), "admin", self.create_tenant),
            ("GET", re.compile(r"/v1/admin/tenants"), "admin", self.list_tenants),
            ("POST", re.compile(r"/v1/admin/keys"), "admin", self.create_key),
            ("GET", re.compile(r"/v1/admin/keys"), "admin", self.list_keys),
            ("DELETE", re.compile(r"/v1/admin/keys/(?P<key_id>[^/]+)"), "admin", self.revoke_key),
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
        for singular, body_type in (("customer", Customer), ("product", Product), ("plan", PlanBody),
                                    ("subscription", Subscription)):
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
        self.keys = KeyStore(self.data_dir / "catalog")
        if self.admin_key:
            if self.keys.authenticate(self.admin_key) is None:
                self.keys.create_key(None, ["admin"], secret=self.admin_key)
        elif not self.keys.has_admin_key():
            secret, _ = self.keys.create_key(None, ["admin"])
            print(f"meter: created the admin key (shown once, store it now): {secret}", flush=True)
        self.billing = BillingCatalog(self.data_dir / "billing")
        self.engine = Engine(self.data_dir / "usage")
        self.invoices = InvoiceStore(self.data_dir / "invoices")
        out = self.export[0] if self.export else self.data_dir / "export"
        self.invoicer = Invoicer(self.engine, self.billing, self.invoices, out)
        if self.export:
            self.exporter = threading.Thread(target=self.export_on_schedule, name="meter-export", daemon=True)
            self.exporter.start()

    def export_on_schedule(self) -> None:
        """Exports usage, the catalog and invoices every interval, then issues the threshold invoices due; a failure
        is reported and tried again next time."""
        assert self.export is not None and self.invoicer is not None
        out, every = self.export
        while not self.stopping.wait(every):
            try:
                tenants = [t.id for t in self.keys.list_tenants()]
                self.invoicer.export(tenants)
                self.exports_done += 1
                for tenant in tenants:
                    self.invoicer.thresholds(tenant, datetime.now(timezone.utc))
            except Exception as e:  # noqa: BLE001 - the next interval tries again; the server keeps serving
                print(f"meter: scheduled export to {out} failed: {e!r}", file=sys.stderr, flush=True)

    def shutdown(self) -> None:
        self.stopping.set()
        if self.exporter is not None:
            self.exporter.join()
        if self.engine is not None:
            self.engine.close()
        if self.keys is not None:
            self.keys.close()
        if self.billing is not None:
            self.billing.close()
        if self.invoices is not None:
            self.invoices.close()
        self.pool.shutdown(wait=True)

    async def http(self, scope: Scope_, receive: Receive, send: Send) -> None:
        try:
            status, body, headers = await self.handle(scope, receive)
        except ApiError as e:
            status, body, headers = e.status, {"code": e.code, "message": e.message}, e.headers
        except MeterError as e:
            body = {"code": e.code, "message": e.message}
            if getattr(e, "details", None) is not None:
                body["issues"] = e.details
            status = status_of(e)
            headers = {"retry-after": "1"} if status in (429, 503) else {}
        except BaseException as e:  # noqa: BLE001 - a panic in Rust is a BaseException: answer 500, ack nothing
            if isinstance(e, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):
                raise
            status, body, headers = 500, {"code": "internal", "message": "internal error; nothing was applied"}, {}
        self.responses[status] = self.responses.get(status, 0) + 1
        payload = body if isinstance(body, bytes) else msgspec.json.encode(body)
        content_type = headers.pop("content-type", None)
        raw_headers = [(b"content-type", content_type.encode())] if content_type else list(JSON)
        raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})

    async def handle(self, scope: Scope_, receive: Receive) -> tuple[int, Any, dict[str, str]]:
        path, method = scope["path"], scope["method"]
        if path in BUILTIN_PATHS and method not in ("GET", "HEAD"):
            raise ApiError(405, "method_not_allowed", f"{method} is not allowed on {path}; use GET", {"allow": "GET"})
        if path == "/healthz":
            return 200, {"status": "ok"}, {}
        if path == "/openapi.json":
            return 200, openapi(), {}
        if path == "/metrics":
            return 200, self.metrics().encode(), {"content-type": "text/plain; version=0.0.4"}
        if path == "/readyz":
            failure = self.engine.failure() if self.engine else "starting"
            if failure:
                return 503, {"status": "unavailable", "reason": failure}, {"retry-after": "5"}
            return 200, {"status": "ready"}, {}
        for route_method, pattern, scope_needed, handler in self.routes:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                body = await self.read_body(scope, receive) if method in ("POST", "PUT") else b""
                request = Request(scope, body)
                request.key = self.authorize(request, scope_needed)
                return await handler(request, **match.groupdict())
        matching = [(m, p.groups == 0) for m, p, _, _ in self.routes if p.fullmatch(path)]
        # A literal path (/v1/invoices/run) has its own methods, not those of the template it also fits.
        allowed = sorted({m for m, literal in matching if literal} or {m for m, _ in matching})
        if allowed:  # RFC 9110 15.5.6: a 405 says which methods the path has
            raise ApiError(405, "method_not_allowed", f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                           {"allow": ", ".join(allowed)})
        raise ApiError(404, "not_found", f"no route {path}; see /openapi.json")

    def metrics(self) -> str:
        lines = ["# TYPE meter_http_responses_total counter"]
        lines += [f'meter_http_responses_total{{status="{k}"}} {v}' for k, v in sorted(self.responses.items())]
        if self.engine is not None:
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
        return "\n".join(lines) + "\n"

    def authorize(self, request: Request, needed: Scope) -> ApiKey:
        header = request.headers.get("authorization", "")
        secret = header[7:].strip() if header[:7].lower() == "bearer " else ""
        key = self.keys.authenticate(secret) if (secret and self.keys) else None
        if key is None:
            raise ApiError(401, "unauthorized", "send a valid API key as 'Authorization: Bearer mk_live_...'",
                           {"www-authenticate": "Bearer"})
        if needed not in key.scopes:
            raise ApiError(403, "forbidden", f"this key lacks the '{needed}' scope")
        return key

    async def read_body(self, scope: Scope_, receive: Receive) -> bytes:
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise ApiError(413, "body_too_large", f"the body is {length} bytes; the limit is {self.max_body}")
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise ApiError(413, "body_too_large", f"the body exceeds the limit of {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            body = self.gunzip(body)
        elif encoding == "zstd":
            body = self.unzstd(body)
        elif encoding not in ("identity", ""):
            raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; use gzip or zstd")
        return body

    def unzstd(self, body: bytes) -> bytes:
        # Read at most one byte past the limit: a zstd bomb stops there.
        try:
            with zstandard.ZstdDecompressor().stream_reader(body) as reader:
                out = reader.read(self.max_body + 1)
        except zstandard.ZstdError as e:
            raise ApiError(400, "invalid_zstd", f"the zstd body could not be decompressed: {e}") from None
        if len(out) > self.max_body:
            raise ApiError(413, "body_too_large", f"the decompressed body exceeds {self.max_body} bytes")
        return out

    def gunzip(self, body: bytes) -> bytes:
        # Bounded: a gzip bomb stops at the body limit instead of filling memory.
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out = d.decompress(body, self.max_body + 1)
        except zlib.error as e:
            raise ApiError(400, "invalid_gzip", f"the gzip body could not be decompressed: {e}") from None
        if len(out) > self.max_body or d.unconsumed_tail:
            raise ApiError(413, "body_too_large", f"the decompressed body exceeds {self.max_body} bytes")
        return out

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    def tenant(self, request: Request) -> str:
        assert request.key is not None
        if request.key.tenant is None:
            raise ApiError(403, "forbidden", "the admin key belongs to no tenant; use a tenant key for this route")
        return request.key.tenant

    # routes

    async def post_events(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media not in ("application/json", "application/cloudevents-batch+json", "application/cloudevents+json"):
            raise ApiError(415, "unsupported_media_type",
                           "send application/cloudevents-batch+json, application/json or application/cloudevents+json")
        atomic = request.param("atomic") in ("1", "true")
        result = await self.call(self.engine.ingest, self.tenant(request), request.body, atomic=atomic)
        status = 200 if (result.accepted or result.duplicates or not result.issues) else 400
        return status, result, {}

    async def discard(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, {"received": len(request.body)}, {}

    async def create_meter(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        spec = decode(request.body, MeterSpec)
        return 201, await self.call(self.engine.create_meter, self.tenant(request), spec), {}

    async def list_meters(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, self.engine.list_meters(self.tenant(request)), {}

    async def get_meter(self, request: Request, slug: str) -> tuple[int, Any, dict[str, str]]:
        return 200, self.engine.get_meter(self.tenant(request), slug), {}

    async def delete_meter(self, request: Request, slug: str) -> tuple[int, Any, dict[str, str]]:
        await self.call(self.engine.delete_meter, self.tenant(request), slug)
        return 200, {"deleted": slug}, {}

    async def usage(self, request: Request, slug: str) -> tuple[int, Any, dict[str, str]]:
        start, end = parse_time(request.param("from"), "from"), parse_time(request.param("to"), "to")
        filters: dict[str, list[str]] = {}
        for k, v in request.query:
            if k.startswith("filter[") and k.endswith("]"):
                filters.setdefault(k[7:-1], []).append(v)
        result = await self.call(
            self.engine.usage, self.tenant(request), slug, start=start, end=end,
            window_size=request.param("window_size"), subjects=request.params("subject"),
            group_by=request.params("group_by"), filters=filters, tz=request.param("tz"),
        )
        accept = request.headers.get("accept", "")
        if "text/csv" in accept:
            sink = pa.BufferOutputStream()
            pa_csv.write_csv(result.table, sink)
            return 200, sink.getvalue().to_pybytes(), {"content-type": "text/csv"}
        if "application/vnd.apache.arrow.stream" in accept:
            sink = pa.BufferOutputStream()
            with pa_ipc.new_stream(sink, result.table.schema) as writer:
                writer.write_table(result.table)
            return 200, sink.getvalue().to_pybytes(), {"content-type": "application/vnd.apache.arrow.stream"}
        rows = [
            {**row, "window_start": row["window_start"].isoformat(), "window_end": row["window_end"].isoformat(),
             "value": format(row["value"].normalize(), "f")}
            for row in result.rows()
        ]
        return 200, {"meter": slug, "from": start.isoformat(), "to": end.isoformat(), "data": rows}, {}

    async def create_tenant(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        body = decode(request.body, TenantBody)
        return 201, self.keys.create_tenant(body.id, body.name), {}

    async def list_tenants(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, self.keys.list_tenants(), {}

    async def create_key(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        body = decode(request.body, KeyBody)
        secret, record = self.keys.create_key(body.tenant, list(body.scopes))
        return 201, {"key": secret, **msgspec.structs.asdict(record)}, {}

    async def list_keys(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, self.keys.list_keys(request.param("tenant")), {}

    async def revoke_key(self, request: Request, key_id: str) -> tuple[int, Any, dict[str, str]]:
        self.keys.revoke(key_id)
        return 200, {"revoked": key_id}, {}

    def catalog_put(self, singular: str, body_type: type[Any]) -> Handler:
        async def put(request: Request) -> tuple[int, Any, dict[str, str]]:
            tenant, item = self.tenant(request), decode(request.body, body_type)
            if singular == "plan":
                return 201, self.billing.create_plan(tenant, item.id, item.name), {}
            return 200, getattr(self.billing, f"put_{singular}")(tenant, item), {}
        return put

    def catalog_list(self, singular: str) -> Handler:
        async def list_all(request: Request) -> tuple[int, Any, dict[str, str]]:
            return 200, getattr(self.billing, f"list_{singular}s")(self.tenant(request)), {}
        return list_all

    def catalog_get(self, singular: str) -> Handler:
        async def get(request: Request, item_id: str) -> tuple[int, Any, dict[str, str]]:
            return 200, getattr(self.billing, f"get_{singular}")(self.tenant(request), item_id), {}
        return get

    def catalog_delete(self, singular: str) -> Handler:
        async def delete(request: Request, item_id: str) -> tuple[int, Any, dict[str, str]]:
            getattr(self.billing, f"delete_{singular}")(self.tenant(request), item_id)
            return 200, {"deleted": item_id}, {}
        return delete

    async def migrate_subscription(self, request: Request, sub_id: str) -> tuple[int, Any, dict[str, str]]:
        body = decode(request.body, MigrationBody)
        return 200, self.billing.migrate_subscription(self.tenant(request), sub_id, body.version, body.at), {}

    # invoices (python/meter/pricing): work from the Parquet export, refreshed by each call

    async def run_invoices(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        body = decode(request.body, InvoiceRunBody)
        return 200, await self.call(self.invoicer.run, self.tenant(request), body.period, body.finalize), {}

    async def bill_thresholds(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, await self.call(self.invoicer.thresholds, self.tenant(request), datetime.now(timezone.utc)), {}

    async def list_invoices(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        invoices = self.invoices.list(self.tenant(request))
        for name in ("status", "customer", "subscription"):
            if (wanted := request.param(name)) is not None:
                invoices = [i for i in invoices if getattr(i, name) == wanted]
        return 200, invoices, {}

    async def get_invoice(self, request: Request, invoice_id: str) -> tuple[int, Any, dict[str, str]]:
        return 200, self.invoices.get(self.tenant(request), invoice_id), {}

    async def finalize_invoice(self, request: Request, invoice_id: str) -> tuple[int, Any, dict[str, str]]:
        return 200, await self.call(self.invoicer.finalize, self.tenant(request), invoice_id), {}

    async def void_invoice(self, request: Request, invoice_id: str) -> tuple[int, Any, dict[str, str]]:
        return 200, await self.call(self.invoicer.void, self.tenant(request), invoice_id), {}

    async def credit_invoice(self, request: Request, invoice_id: str) -> tuple[int, Any, dict[str, str]]:
        body = decode(request.body, CreditNoteBody)
        note = await self.call(self.invoicer.credit, self.tenant(request), invoice_id, body.amount, body.reason)
        return 201, note, {}

    async def list_credit_notes(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        return 200, self.invoices.credit_notes(self.tenant(request)), {}

    async def upcoming_invoice(self, request: Request, customer: str) -> tuple[int, Any, dict[str, str]]:
        as_of = datetime.now(timezone.utc)
        return 200, await self.call(self.invoicer.preview, self.tenant(request), customer, as_of), {}

    async def add_plan_version(self, request: Request, plan_id: str) -> tuple[int, Any, dict[str, str]]:
        body = decode(request.body, PlanVersionBody)
        return 201, self.billing.add_plan_version(self.tenant(request), plan_id, body.effective_from, body.prices), {}


def decode(body: bytes, type_: type[Any]) -> Any:
    try:
        value = msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as e:
        raise ApiError(400, "invalid_body", f"the body does not match the schema: {e}") from None
    except msgspec.DecodeError as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from None
    check_times(value, "$")
    return value


#: The years a time in a body may fall in (as written, so within a day of UTC). Pricing compares times and steps
#: through billing cycles from them, so a naive time, or one a cycle or an offset away from the ends of `datetime`
#: (years 1 and 9999), would be stored and then fail every invoice run of the tenant.
YEARS = range(1900, 9000)


def check_times(value: Any, where: str) -> None:
    """Every datetime anywhere in a decoded body carries a UTC offset and falls within ``YEARS`` (else 400)."""
    if isinstance(value, datetime):
        local = value.replace(tzinfo=None)
        if value.tzinfo is None or value.utcoffset() is None:
            raise ApiError(400, "invalid_body", f"{where} needs a time zone offset or Z (RFC 3339); "
                                                f"got {local.isoformat()}")
        if local.year not in YEARS:
            raise ApiError(400, "invalid_body", f"{where} must fall in the years {YEARS.start} to {YEARS.stop - 1}; "
                                                f"got {value.isoformat()}")
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            check_times(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_times(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_times(item, f"{where}.{key}")


def parse_time(value: str | None, name: str) -> datetime:
    if not value:
        raise ApiError(400, "invalid_query", f"'{name}' is required, as RFC 3339 such as 2026-11-01T00:00:00Z")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "invalid_query", f"'{name}' must be RFC 3339 such as 2026-11-01T00:00:00Z; got {value!r}") from None
    if t.tzinfo is None:
        raise ApiError(400, "invalid_query", f"'{name}' needs a time zone offset or Z; got {value!r}")
    return t


def create_app() -> MeterApp:
    """Factory for granian: configuration comes from the environment `meter serve` sets."""
    every = os.environ.get("METER_EXPORT_EVERY")
    export = (Path(os.environ["METER_EXPORT_DIR"]), float(every)) if every else None
    return MeterApp(Path(os.environ.get("METER_DATA_DIR", ".meter-data")), os.environ.get("METER_ADMIN_KEY") or None,
                    export=export)


