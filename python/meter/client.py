"""The SDK an AI gateway embeds: ``meter.Client`` (threads) and ``meter.AsyncClient`` (asyncio).

Events are batched in the background (by count and by time), sent gzipped, and retried with exponential backoff
and jitter on 429, 5xx and timeouts. A retry re-sends the same bytes, so the same event ids: the server counts each
event once however often it arrives. Rejected events raise ``RejectedEvents`` (from ``ingest``, or from ``flush``
and ``close`` for events queued with ``send``).

``Client`` also speaks the rest of the HTTP API, one method per route (tenants and keys with the operator key;
meters, usage, the billing catalog, invoices and webhooks with a tenant key): this is the one HTTP client of the
package, and the ``meter`` command line talks to the server only through it. Those calls are sent once, never
retried (a create or an invoice run is not idempotent): an error answer raises ``ServerError`` (its status, code
and message), a network failure the ``httpx`` error. Meters come back as ``meter.schemas`` Structs; tenants, keys,
catalog items, invoices and webhooks as the server's JSON (``dict``s: strings for amounts and times, exactly as
sent), because their types live in server-side modules (RocksDB stores) that the SDK must not import.

Invariants: this module imports only ``meter.exceptions`` and ``meter.schemas`` of meter (nothing of the server,
the stores or the engine); every path segment it builds from an id is percent-encoded (an id with ``/``, ``?``,
``#`` or a space cannot change the route); an ``ingest`` retry re-sends the same bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
import msgspec

from meter.exceptions import MeterError
from meter.schemas import (
    AmendEvent,
    CancelEvent,
    CorrectionRequest,
    CorrectionResult,
    CreatedMeter,
    EventIssue,
    IngestResult,
    Meter,
    MeterSpec,
)

__all__ = [
    "AsyncClient",
    "CatalogKind",
    "Client",
    "JSONObject",
    "RejectedEvents",
    "RetryPolicy",
    "ServerError",
    "WindowSize",
]

#: An object of the server's JSON answer, as ``json`` decodes it (amounts and times stay strings).
JSONObject = dict[str, Any]
#: The collections of the billing catalog, as they appear in its routes (``/v1/<kind>``).
CatalogKind = Literal["customers", "products", "plans", "subscriptions"]
#: The windows usage can be cut into.
WindowSize = Literal["minute", "hour", "day", "month"]


#: The revenue reports ``revenue_report_csv`` reads.
RevenueReport = Literal["waterfall", "deferred", "unbilled", "mrr", "retention", "ar-aging"]


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


def _segment(value: str) -> str:
    """An id as one path segment: ``/``, ``?``, ``#`` and the rest percent-encoded."""
    return quote(value, safe="")


def _time(value: datetime | str) -> str:
    """A query time: a datetime as ISO 8601, a string as given (the server says what is wrong with it)."""
    return value.isoformat() if isinstance(value, datetime) else value


def _months(start: str | None, end: str | None) -> list[tuple[str, str]]:
    """The ``from``/``to`` months of a revenue report that are given."""
    return [(name, value) for name, value in (("from", start), ("to", end)) if value is not None]


def _day_or_time(value: date | datetime | str) -> str:
    """A query date or time: ``YYYY-MM-DD`` for a date, ISO 8601 for a datetime, a string as given."""
    return value.isoformat() if isinstance(value, date) else value


def _gl_days(start: date | str | None, end: date | str | None) -> list[tuple[str, str]]:
    """The query of ``GET /v1/revenue/gl``'s days that are given."""
    params = [("from", _day_or_time(start))] if start is not None else []
    return params + ([("to", _day_or_time(end))] if end is not None else [])


def _ledger_filters(
    account: str | None,
    customer: str | None,
    invoice: str | None,
    kind: str | None,
    start: datetime | str | None,
    end: datetime | str | None,
) -> list[tuple[str, str]]:
    """The query of ``GET /v1/ledger/entries``'s filters that are given."""
    given = (("account", account), ("customer", customer), ("invoice", invoice), ("kind", kind))
    params = [(name, value) for name, value in given if value is not None]
    params += [("from", _time(start))] if start is not None else []
    return params + ([("to", _time(end))] if end is not None else [])


def _gave_up(policy: RetryPolicy, started: float, last: str) -> MeterError:
    return MeterError(
        f"the batch was not acknowledged after {policy.attempts} attempts in "
        f"{time.monotonic() - started:.1f} s (last: {last}); it is safe to send it again (same ids)",
        "unavailable",
    )


class _CheckCache:
    """Entitlement answers kept ``ttl`` seconds, so a gateway can check on every request without a round trip each.

    The price of the cache, stated where it is chosen: an answer is up to ``ttl`` seconds old, so a customer may use a
    feature that long past a hard limit (or stay refused that long after a top-up). At most ``size`` answers are kept
    (the oldest go first); thread-safe.
    """

    def __init__(self, ttl: float, size: int = 100_000) -> None:
        self.ttl, self.size = ttl, size
        self._answers: dict[tuple[str, str], tuple[float, JSONObject]] = {}
        self._lock = threading.Lock()

    def get(self, customer: str, feature: str) -> JSONObject | None:
        if self.ttl <= 0:
            return None
        with self._lock:
            found = self._answers.get((customer, feature))
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]

    def put(self, customer: str, feature: str, answer: JSONObject) -> JSONObject:
        if self.ttl > 0:
            with self._lock:
                if len(self._answers) >= self.size:
                    del self._answers[next(iter(self._answers))]
                self._answers[(customer, feature)] = (time.monotonic() + self.ttl, answer)
        return answer


class Client:
    """Thread-safe client.

    ``send`` queues an event; a background thread sends batches of up to ``batch_size`` events at least every
    ``flush_interval`` seconds. ``ingest`` sends a batch now and returns its result. The other public methods call
    one route each (tenants and keys, meters and usage, the billing catalog, invoices), once, waiting at most
    ``timeout`` seconds: see the module's docstring.
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
        check_cache: float = 1.0,
    ) -> None:
        self._http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)
        self._batch_size, self._interval, self._retry, self._compress = batch_size, flush_interval, retry, compress
        self._checks = _CheckCache(check_cache)
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

    # The rest of the API: one call per route, sent once (see the module's docstring).

    def _call(self, method: str, path: str, body: Any = None, params: Any = None) -> Any:
        """The decoded JSON of a successful answer; an error answer raises ``ServerError``."""
        content, headers = None, None
        if body is not None:
            content, headers = msgspec.json.encode(body), {"content-type": "application/json"}
        response = self._http.request(method, path, content=content, headers=headers, params=params)
        if response.status_code >= 400:
            raise ServerError.of(response)
        return response.json()

    def _bytes(self, path: str, params: Any = None) -> bytes:
        """The body of a successful answer as it is (CSV, Parquet); an error answer raises ``ServerError``."""
        response = self._http.request("GET", path, params=params)
        if response.status_code >= 400:
            raise ServerError.of(response)
        return response.content

    # Live balances and entitlements

    def check(self, customer: str, feature: str) -> JSONObject:
        """May ``customer`` use ``feature`` now? ``{"has_access", "reason", "usage", "limit", "remaining", ...}``.

        ``GET /v1/customers/{customer}/entitlements/{feature}``, answered from the server's memory; kept
        ``check_cache`` seconds here (1 by default, 0 for none), so a gateway may call it on every request.
        """
        cached = self._checks.get(customer, feature)
        if cached is not None:
            return cached
        answer: JSONObject = self._call("GET", f"/v1/customers/{_segment(customer)}/entitlements/{_segment(feature)}")
        return self._checks.put(customer, feature, answer)

    def check_many(self, checks: Iterable[tuple[str, str]]) -> list[JSONObject]:
        """``POST /v1/entitlements/check``: many (customer, feature) checks in one call (at most 1000), not cached."""
        body = {"checks": [{"customer": c, "feature": f} for c, f in checks]}
        results: list[JSONObject] = self._call("POST", "/v1/entitlements/check", body)["results"]
        return results

    def entitlements(self, customer: str) -> list[JSONObject]:
        """``GET /v1/customers/{customer}/entitlements``: every feature of the customer, as ``check`` answers it."""
        found: list[JSONObject] = self._call("GET", f"/v1/customers/{_segment(customer)}/entitlements")
        return found

    def balance(self, customer: str) -> JSONObject:
        """``GET /v1/customers/{customer}/balance``: the live credit balance, per grant, with what consumed it."""
        found: JSONObject = self._call("GET", f"/v1/customers/{_segment(customer)}/balance")
        return found

    # Tenants and keys (the operator key)

    def create_tenant(self, tenant_id: str, name: str = "") -> JSONObject:
        """``POST /v1/admin/tenants``: the new tenant, ``{"id", "name", "created_at"}``."""
        created: JSONObject = self._call("POST", "/v1/admin/tenants", {"id": tenant_id, "name": name})
        return created

    def list_tenants(self) -> list[JSONObject]:
        """``GET /v1/admin/tenants``: every tenant, ``{"id", "name", "created_at"}``."""
        tenants: list[JSONObject] = self._call("GET", "/v1/admin/tenants")
        return tenants

    def create_key(self, tenant: str | None, scopes: Sequence[str]) -> JSONObject:
        """``POST /v1/admin/keys``: a key of ``tenant`` (None: another operator key).

        The answer holds the secret once, as ``"key"``, beside the stored record (``id``, ``tenant``, ``scopes``,
        ``display``, ``created_at``, ``revoked``). ``scopes``: ``ingest``, ``read``, ``export``, ``admin``.
        """
        created: JSONObject = self._call("POST", "/v1/admin/keys", {"tenant": tenant, "scopes": list(scopes)})
        return created

    def list_keys(self, tenant: str | None = None) -> list[JSONObject]:
        """``GET /v1/admin/keys``: the keys (never their secrets) of ``tenant``, or of every tenant."""
        keys: list[JSONObject] = self._call("GET", "/v1/admin/keys", params={"tenant": tenant} if tenant else {})
        return keys

    def revoke_key(self, key_id: str) -> None:
        """``DELETE /v1/admin/keys/{key_id}``: the key stops working at once."""
        self._call("DELETE", f"/v1/admin/keys/{_segment(key_id)}")

    # Meters and usage (a tenant key)

    def create_meter(self, spec: MeterSpec | Mapping[str, Any]) -> CreatedMeter:
        """``POST /v1/meters``: the meter, and what its backfill over the retained events counted."""
        return msgspec.convert(self._call("POST", "/v1/meters", spec), CreatedMeter)

    def list_meters(self) -> list[Meter]:
        """``GET /v1/meters``: the tenant's meters."""
        return msgspec.convert(self._call("GET", "/v1/meters"), list[Meter])

    def usage(
        self,
        meter: str,
        start: datetime | str,
        end: datetime | str,
        *,
        window_size: WindowSize | None = None,
        group_by: Sequence[str] = (),
        subject: Sequence[str] = (),
        tz: str | None = None,
    ) -> list[JSONObject]:
        """``GET /v1/meters/{meter}/usage`` over ``[start, end)``: its rows, as JSON.

        A row has ``window_start`` and ``window_end`` (when ``window_size`` is given), the ``group_by`` dimensions,
        ``value`` (a decimal string) and ``events``. ``subject`` keeps those customers only; ``tz`` is the time zone
        of day and month windows.
        """
        params: list[tuple[str, str]] = [("from", _time(start)), ("to", _time(end))]
        params += [("window_size", window_size)] if window_size else []
        params += [("tz", tz)] if tz else []
        params += [("group_by", g) for g in group_by] + [("subject", s) for s in subject]
        rows: list[JSONObject] = self._call("GET", f"/v1/meters/{_segment(meter)}/usage", params=params)["data"]
        return rows

    # The billing catalog (a tenant key)

    def put_catalog_item(self, kind: CatalogKind, item: msgspec.Struct | Mapping[str, Any]) -> JSONObject:
        """``POST /v1/{kind}``: creates or replaces the item; a plan is created whole (an existing one: 409).

        Returns the stored item.
        """
        stored: JSONObject = self._call("POST", f"/v1/{kind}", item)
        return stored

    def get_catalog_item(self, kind: CatalogKind, item_id: str) -> JSONObject:
        """``GET /v1/{kind}/{item_id}``: one item (a plan with its versions)."""
        item: JSONObject = self._call("GET", f"/v1/{kind}/{_segment(item_id)}")
        return item

    def list_catalog(self, kind: CatalogKind) -> list[JSONObject]:
        """``GET /v1/{kind}``: every item of one kind."""
        items: list[JSONObject] = self._call("GET", f"/v1/{kind}")
        return items

    def delete_catalog_item(self, kind: CatalogKind, item_id: str) -> None:
        """``DELETE /v1/{kind}/{item_id}``; refused (409 ``in_use``) while something still refers to it."""
        self._call("DELETE", f"/v1/{kind}/{_segment(item_id)}")

    def add_plan_version(self, plan_id: str, version: msgspec.Struct | Mapping[str, Any]) -> JSONObject:
        """``POST /v1/plans/{plan_id}/versions``: a version (``{effective_from, prices}``) after the stored ones."""
        plan: JSONObject = self._call("POST", f"/v1/plans/{_segment(plan_id)}/versions", version)
        return plan

    def put_plan_entitlements(
        self, plan_id: str, entitlements: Sequence[msgspec.Struct | Mapping[str, Any]]
    ) -> JSONObject:
        """``PUT /v1/plans/{plan_id}/entitlements``: replaces the plan's entitlements (the whole list); the plan.

        An entitlement is ``{feature, kind: boolean|static|metered, enabled, value, meter, limit, reset, hard,
        overage_price}`` (:class:`meter.catalog.entitlements.Entitlement`).
        """
        plan: JSONObject = self._call("PUT", f"/v1/plans/{_segment(plan_id)}/entitlements", list(entitlements))
        return plan

    def top_up(
        self,
        customer: str,
        top_up_id: str,
        amount: str,
        *,
        expires_at: datetime | str | None = None,
        priority: int = 0,
        subscription: str | None = None,
    ) -> JSONObject:
        """``POST /v1/customers/{customer}/top-ups``: buys prepaid credit now, exactly once by ``top_up_id``.

        The answer is ``{"top_up", "invoice"}``: the grant and its invoice, finalized at once. A retry with the same
        arguments answers the same; other arguments under the same id are refused (409 ``conflict``).
        """
        body: dict[str, Any] = {"id": top_up_id, "amount": amount, "priority": priority}
        if expires_at is not None:
            body["expires_at"] = _time(expires_at)
        if subscription is not None:
            body["subscription"] = subscription
        done: JSONObject = self._call("POST", f"/v1/customers/{_segment(customer)}/top-ups", body)
        return done

    def list_top_ups(self, customer: str) -> list[JSONObject]:
        """``GET /v1/customers/{customer}/top-ups``: the customer's top-ups."""
        found: list[JSONObject] = self._call("GET", f"/v1/customers/{_segment(customer)}/top-ups")
        return found

    def migrate_subscription(self, subscription_id: str, version: int, at: datetime | str) -> JSONObject:
        """``POST /v1/subscriptions/{id}/migrate``: onto ``version`` of its plan from ``at``; the subscription."""
        body = {"version": version, "at": _time(at)}
        subscription: JSONObject = self._call("POST", f"/v1/subscriptions/{_segment(subscription_id)}/migrate", body)
        return subscription

    # Tax (a tenant key): rates and the seller's settings

    def create_tax_rate(self, rate: msgspec.Struct | Mapping[str, Any]) -> JSONObject:
        """``POST /v1/tax-rates``: a new rate (``id``, ``name``, ``country``, ``percentage``, ``effective_from``...)."""
        created: JSONObject = self._call("POST", "/v1/tax-rates", rate)
        return created

    def list_tax_rates(self) -> list[JSONObject]:
        """``GET /v1/tax-rates``: every rate, ended ones included."""
        rates: list[JSONObject] = self._call("GET", "/v1/tax-rates")
        return rates

    def get_tax_rate(self, rate_id: str) -> JSONObject:
        """``GET /v1/tax-rates/{rate_id}``."""
        rate: JSONObject = self._call("GET", f"/v1/tax-rates/{_segment(rate_id)}")
        return rate

    def end_tax_rate(self, rate_id: str, at: datetime | str | None = None) -> JSONObject:
        """``POST /v1/tax-rates/{rate_id}/end``: the rate stops applying at ``at`` (now when None); the rate."""
        body = {"at": _time(at)} if at is not None else {}
        rate: JSONObject = self._call("POST", f"/v1/tax-rates/{_segment(rate_id)}/end", body)
        return rate

    def put_tax_settings(self, settings: msgspec.Struct | Mapping[str, Any]) -> JSONObject:
        """``PUT /v1/tax-settings``: the seller's ``country`` (and ``region``), ``provider``; the settings."""
        stored: JSONObject = self._call("PUT", "/v1/tax-settings", settings)
        return stored

    def get_tax_settings(self) -> JSONObject:
        """``GET /v1/tax-settings`` (a ``ServerError`` 404 until they are set)."""
        settings: JSONObject = self._call("GET", "/v1/tax-settings")
        return settings

    # Revenue recognition and its reports (a tenant key; settings need an admin one)

    def put_revenue_settings(self, settings: msgspec.Struct | Mapping[str, Any]) -> JSONObject:
        """``PUT /v1/revenue/settings``: the reporting ``timezone``, ``breakage``, GL ``accounts``; the settings."""
        stored: JSONObject = self._call("PUT", "/v1/revenue/settings", settings)
        return stored

    def get_revenue_settings(self) -> JSONObject:
        """``GET /v1/revenue/settings`` (the defaults until they are set)."""
        settings: JSONObject = self._call("GET", "/v1/revenue/settings")
        return settings

    def revenue_mrr(self, start: str | None = None, end: str | None = None, by_customer: bool = False) -> JSONObject:
        """``GET /v1/revenue/mrr``: the months ``[start, end)`` (``YYYY-MM``; the last 12 by default).

        ``months``: per month and currency, ``opening``, the movements (``new``, ``expansion``, ``contraction``,
        ``churn``, ``reactivation``), ``closing`` (the MRR), ``arr``, ``customers``, ``usage`` and ``usage_arr``;
        ``by_customer`` adds ``customers``: each customer's ``previous``, ``mrr``, ``movement`` and ``usage``.
        """
        params = [("by_customer", "true" if by_customer else "false"), *_months(start, end)]
        report: JSONObject = self._call("GET", "/v1/revenue/mrr", params=params)
        return report

    def revenue_retention(self, start: str | None = None, end: str | None = None) -> JSONObject:
        """``GET /v1/revenue/retention``: ``cohorts`` (first-revenue months ``[start, end)``), month by month.

        Each cohort: ``cohort``, ``currency``, ``customers``, ``base`` (their revenue in the cohort month) and
        ``months``: ``revenue``, ``customers`` with revenue, ``retention`` (a decimal ratio, four decimals).
        """
        report: JSONObject = self._call("GET", "/v1/revenue/retention", params=_months(start, end))
        return report

    def revenue_report_csv(self, report: RevenueReport, **params: str) -> bytes:
        """``GET /v1/revenue/{report}?format=csv`` with ``params`` as the query (``from``, ``to``, ``by``...)."""
        return self._bytes(f"/v1/revenue/{report}", {**params, "format": "csv"})

    def recognize_revenue(self, through: date | str) -> JSONObject:
        """``POST /v1/revenue/recognize?through=``: the close through a day (``YYYY-MM-DD``, reporting time zone).

        The answer: ``through``, ``timezone``, ``steps`` (one per month end closed: ``recognized`` per currency as
        ``fees``, ``usage`` and ``breakage``; the journal ``entries`` posted) and ``errors``. A second close through
        the same day posts nothing (``steps`` is empty).
        """
        closed: JSONObject = self._call("POST", "/v1/revenue/recognize", params=[("through", _day_or_time(through))])
        return closed

    def revenue_waterfall(
        self, start: str | None = None, end: str | None = None, by: str | None = None, top: int | None = None
    ) -> JSONObject:
        """``GET /v1/revenue/waterfall``: recognized revenue per month in ``[start, end)``, by ``by`` when given."""
        params = [*_months(start, end), *([("by", by)] if by else []), *([("top", str(top))] if top else [])]
        report: JSONObject = self._call("GET", "/v1/revenue/waterfall", params=params)
        return report

    def revenue_deferred(self, start: str | None = None, end: str | None = None) -> list[JSONObject]:
        """``GET /v1/revenue/deferred``: deferred revenue rolled forward, one row per month and currency."""
        months: list[JSONObject] = self._call("GET", "/v1/revenue/deferred", params=_months(start, end))
        return months

    def revenue_unbilled(self, as_of: date | str | None = None) -> JSONObject:
        """``GET /v1/revenue/unbilled``: revenue earned and not invoiced at the end of ``as_of`` (yesterday)."""
        params = [("as_of", _day_or_time(as_of))] if as_of is not None else []
        report: JSONObject = self._call("GET", "/v1/revenue/unbilled", params=params)
        return report

    def ar_aging(self, as_of: date | datetime | str | None = None) -> JSONObject:
        """``GET /v1/revenue/ar-aging``: what each customer owes at ``as_of`` by days past due (JSON).

        ``as_of``: a date (through its end in the reporting time zone), an instant, or now when None. The answer has
        ``customers`` and ``totals`` (``current``, ``1_30``, ``31_60``, ``61_90``, ``90_plus``, ``total`` per
        currency) and ``invoices`` (each one owed something, with its ``days_past_due`` and ``bucket``).
        """
        params = [("as_of", _day_or_time(as_of))] if as_of is not None else []
        report: JSONObject = self._call("GET", "/v1/revenue/ar-aging", params=params)
        return report

    def ar_aging_csv(self, as_of: date | datetime | str | None = None) -> bytes:
        """``GET /v1/revenue/ar-aging?format=csv``: a row per customer and currency, then each currency's total."""
        params = [("format", "csv")] + ([("as_of", _day_or_time(as_of))] if as_of is not None else [])
        return self._bytes("/v1/revenue/ar-aging", params)

    def gl_lines(
        self, start: date | str | None = None, end: date | str | None = None, after: int = 0, limit: int = 100
    ) -> JSONObject:
        """``GET /v1/revenue/gl?format=json``: a page ``{"data", "next", "scanned"}`` of general-ledger lines.

        Lines booked in ``[start, end)``, days of the reporting time zone; ``next`` is the ``after`` of the next page.
        """
        params = _gl_days(start, end) + [("format", "json"), ("after", str(after)), ("limit", str(limit))]
        found: JSONObject = self._call("GET", "/v1/revenue/gl", params=params)
        return found

    def gl_export(
        self, start: date | str | None = None, end: date | str | None = None, limit: int = 10_000
    ) -> Iterator[bytes]:
        """``GET /v1/revenue/gl`` as CSV, page after page (``limit`` entries each): each page's file, with its header.

        The pages follow the ``Meter-Next`` header to the end of the journal.
        """
        after: str | None = "0"
        while after is not None:
            query: list[tuple[str, str | int | float | bool | None]] = [
                *_gl_days(start, end),
                ("format", "csv"),
                ("after", after),
                ("limit", limit),
            ]
            response = self._http.request("GET", "/v1/revenue/gl", params=query)
            if response.status_code >= 400:
                raise ServerError.of(response)
            yield response.content
            after = response.headers.get("meter-next")

    # Corrections and backfills (a tenant key: ingest to change, read to look)

    def correct(self, reason: str, items: Sequence[CancelEvent | AmendEvent]) -> CorrectionResult:
        """``POST /v1/events/corrections``: cancels or amends accepted events, all or nothing, restating their usage.

        A refusal raises ``ServerError`` (``batch_rejected``, the message naming the first item that cannot be applied).
        """
        body = CorrectionRequest(reason=reason, items=list(items))
        return msgspec.convert(self._call("POST", "/v1/events/corrections", body), CorrectionResult)

    def event(self, source: str, event_id: str) -> JSONObject:
        """``GET /v1/events/{source}/{id}``: the version that counts, its status, its history, what its meters count."""
        found: JSONObject = self._call("GET", f"/v1/events/{_segment(source)}/{_segment(event_id)}")
        return found

    def open_backfill(self, backfill: Mapping[str, Any]) -> JSONObject:
        """``POST /v1/backfills``: ``{"start", "end", "reason"}``, optionally ``id``, ``customer``, ``event_type``."""
        opened: JSONObject = self._call("POST", "/v1/backfills", backfill)
        return opened

    def stage_backfill(self, backfill_id: str, events: Iterable[Mapping[str, Any]]) -> JSONObject:
        """``POST /v1/backfills/{id}/events``: stages CloudEvents into the backfill (they count once it closes)."""
        staged: JSONObject = self._call("POST", f"/v1/backfills/{_segment(backfill_id)}/events", list(events))
        return staged

    def close_backfill(self, backfill_id: str) -> JSONObject:
        """``POST /v1/backfills/{id}/close``: the range's usage replaced by the backfill's events, in one correction."""
        closed: JSONObject = self._call("POST", f"/v1/backfills/{_segment(backfill_id)}/close")
        return closed

    def revert_backfill(self, backfill_id: str) -> JSONObject:
        """``POST /v1/backfills/{id}/revert``: a pending backfill dropped, a closed one undone."""
        reverted: JSONObject = self._call("POST", f"/v1/backfills/{_segment(backfill_id)}/revert")
        return reverted

    # Invoices (a tenant key)

    def line_events(self, invoice_id: str, line: int, limit: int = 1000) -> Iterator[bytes]:
        """``GET /v1/invoices/{id}/lines/{line}/events`` as CSV, page after page: the events behind a usage line.

        Each page's file has its header; the pages follow the ``Meter-Next`` header to the last.
        """
        after: str | None = None
        while True:
            query: list[tuple[str, str | int | float | bool | None]] = [("limit", limit)]
            query += [("after", after)] if after else []
            path = f"/v1/invoices/{_segment(invoice_id)}/lines/{line}/events"
            response = self._http.request("GET", path, params=query, headers={"accept": "text/csv"})
            if response.status_code >= 400:
                raise ServerError.of(response)
            yield response.content
            after = response.headers.get("meter-next")
            if after is None:
                return

    def run_invoices(self, period: str, finalize: bool = False) -> JSONObject:
        """``POST /v1/invoices/run``: the drafts of the cycles starting in ``period`` (``YYYY-MM``).

        The run: ``invoices``, ``errors`` (per subscription), ``warnings``, and the service periods it bills
        (``fees_in_advance``, ``usage_in_arrears``: ``{"start", "end"}`` or null). ``finalize`` numbers them.
        """
        run: JSONObject = self._call("POST", "/v1/invoices/run", {"period": period, "finalize": finalize})
        return run

    def list_invoices(
        self, *, status: str | None = None, period: str | None = None, usage_period: str | None = None
    ) -> list[JSONObject]:
        """``GET /v1/invoices``, filtered by status, by the month their cycles start in, or by the usage month."""
        wanted = (("status", status), ("period", period), ("usage_period", usage_period))
        invoices: list[JSONObject] = self._call("GET", "/v1/invoices", params={k: v for k, v in wanted if v})
        return invoices

    def get_invoice(self, invoice_id: str) -> JSONObject:
        """``GET /v1/invoices/{invoice_id}``: the invoice with its lines."""
        invoice: JSONObject = self._call("GET", f"/v1/invoices/{_segment(invoice_id)}")
        return invoice

    def upcoming_invoices(self, customer: str) -> list[JSONObject]:
        """``GET /v1/customers/{customer}/upcoming-invoice``: the next cycle's invoices, with usage so far."""
        upcoming: list[JSONObject] = self._call("GET", f"/v1/customers/{_segment(customer)}/upcoming-invoice")
        return upcoming

    def invoice_pdf(self, invoice_id: str) -> bytes:
        """``GET /v1/invoices/{id}/pdf``: a finalized invoice's PDF, as written at its finalization."""
        return self._bytes(f"/v1/invoices/{_segment(invoice_id)}/pdf")

    def credit_note_pdf(self, number: str) -> bytes:
        """``GET /v1/credit-notes/{number}/pdf``: a credit note's PDF, as written when it was issued."""
        return self._bytes(f"/v1/credit-notes/{_segment(number)}/pdf")

    def finalize_invoice(self, invoice_id: str) -> JSONObject:
        """``POST /v1/invoices/{id}/finalize``: numbers the draft; the invoice, with any export ``warnings``."""
        final: JSONObject = self._call("POST", f"/v1/invoices/{_segment(invoice_id)}/finalize")
        return final

    def void_invoice(self, invoice_id: str) -> JSONObject:
        """``POST /v1/invoices/{id}/void``: its charges become billable again; the invoice, with any ``warnings``."""
        void: JSONObject = self._call("POST", f"/v1/invoices/{_segment(invoice_id)}/void")
        return void

    def credit_invoice(self, invoice_id: str, amount: str, reason: str) -> JSONObject:
        """``POST /v1/invoices/{id}/credit-notes``: the credit note (``number``, ``amount``...), with ``warnings``."""
        body = {"amount": amount, "reason": reason}
        note: JSONObject = self._call("POST", f"/v1/invoices/{_segment(invoice_id)}/credit-notes", body)
        return note

    # Outgoing webhooks (a tenant key: admin to change, read to look)

    def create_webhook_endpoint(
        self, url: str, types: Sequence[str] | None = None, *, description: str = "", enabled: bool = True
    ) -> JSONObject:
        """``POST /v1/webhook-endpoints``: the endpoint, with its signing ``secret`` (shown this once).

        ``types``: the event types it receives (None: every type).
        """
        body = {"url": url, "types": None if types is None else list(types), "description": description}
        created: JSONObject = self._call("POST", "/v1/webhook-endpoints", {**body, "enabled": enabled})
        return created

    def list_webhook_endpoints(self) -> list[JSONObject]:
        """``GET /v1/webhook-endpoints``: the tenant's endpoints (never their secrets)."""
        found: list[JSONObject] = self._call("GET", "/v1/webhook-endpoints")
        return found

    def get_webhook_endpoint(self, endpoint_id: str) -> JSONObject:
        """``GET /v1/webhook-endpoints/{id}``: one endpoint, with its ``status`` (enabled, disabled, failing)."""
        found: JSONObject = self._call("GET", f"/v1/webhook-endpoints/{_segment(endpoint_id)}")
        return found

    def update_webhook_endpoint(self, endpoint_id: str, **changes: Any) -> JSONObject:
        """``POST /v1/webhook-endpoints/{id}``: changes what is given, the rest stays.

        ``url``, ``types`` (None: every type), ``description``, ``enabled`` (True also ends ``failing``).
        """
        updated: JSONObject = self._call("POST", f"/v1/webhook-endpoints/{_segment(endpoint_id)}", changes)
        return updated

    def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        """``DELETE /v1/webhook-endpoints/{id}``."""
        self._call("DELETE", f"/v1/webhook-endpoints/{_segment(endpoint_id)}")

    def rotate_webhook_secret(self, endpoint_id: str) -> JSONObject:
        """``POST /v1/webhook-endpoints/{id}/rotate-secret``: the new ``secret``, shown once.

        The previous one still signs until ``previous_valid_until``.
        """
        rotated: JSONObject = self._call("POST", f"/v1/webhook-endpoints/{_segment(endpoint_id)}/rotate-secret")
        return rotated

    def webhook_deliveries(
        self, endpoint_id: str, *, status: str | None = None, limit: int | None = None, after: str | None = None
    ) -> JSONObject:
        """``GET /v1/webhook-endpoints/{id}/deliveries``: a page (``data``, ``next``) of its log, newest first."""
        wanted = (("status", status), ("limit", limit), ("after", after))
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}/deliveries"
        page: JSONObject = self._call("GET", path, params={k: v for k, v in wanted if v is not None})
        return page

    def replay_webhook_endpoint(self, endpoint_id: str, since: datetime | str) -> JSONObject:
        """``POST /v1/webhook-endpoints/{id}/replay``: its failed deliveries of events since ``since``, again.

        The answer: ``{"replayed", "more"}`` (``more``: call again).
        """
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}/replay"
        done: JSONObject = self._call("POST", path, {"since": _time(since)})
        return done

    def list_webhook_events(
        self, *, type: str | None = None, limit: int | None = None, after: str | None = None
    ) -> JSONObject:
        """``GET /v1/webhook-events``: a page (``data``, ``next``) of the outbox, newest first."""
        wanted = (("type", type), ("limit", limit), ("after", after))
        page: JSONObject = self._call("GET", "/v1/webhook-events", params={k: v for k, v in wanted if v is not None})
        return page

    def get_webhook_event(self, event_id: str) -> JSONObject:
        """``GET /v1/webhook-events/{id}``: the event, as its deliveries send it."""
        event: JSONObject = self._call("GET", f"/v1/webhook-events/{_segment(event_id)}")
        return event

    def webhook_event_deliveries(self, event_id: str) -> list[JSONObject]:
        """``GET /v1/webhook-events/{id}/deliveries``: one delivery per endpoint."""
        found: list[JSONObject] = self._call("GET", f"/v1/webhook-events/{_segment(event_id)}/deliveries")
        return found

    def replay_webhook_event(self, event_id: str, endpoint: str | None = None) -> JSONObject:
        """``POST /v1/webhook-events/{id}/replay``: to every enabled endpoint it went to, or to ``endpoint``."""
        path = f"/v1/webhook-events/{_segment(event_id)}/replay"
        done: JSONObject = self._call("POST", path, {"endpoint": endpoint})
        return done

    # The ledger (a tenant key)

    def ledger_entries(
        self,
        *,
        account: str | None = None,
        customer: str | None = None,
        invoice: str | None = None,
        kind: str | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> JSONObject:
        """``GET /v1/ledger/entries``: a page ``{"data", "next", "scanned"}`` of journal entries, in posting order.

        Filters: a line on ``account``, about ``customer``, of ``invoice``, of ``kind``, created in ``[start, end)``.
        ``next`` is the ``after`` of the next page (null after the last one).
        """
        params = _ledger_filters(account, customer, invoice, kind, start, end) + [
            ("after", str(after)),
            ("limit", str(limit)),
        ]
        page: JSONObject = self._call("GET", "/v1/ledger/entries", params=params)
        return page

    def ledger_export(
        self,
        format: Literal["csv", "parquet"] = "csv",  # noqa: A002 - the route's parameter
        *,
        account: str | None = None,
        customer: str | None = None,
        invoice: str | None = None,
        kind: str | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        limit: int = 10_000,
    ) -> Iterator[bytes]:
        """``GET /v1/ledger/entries?format=csv|parquet``, page after page: each page's file (CSV: with its header).

        One row per journal line; the pages follow the ``Meter-Next`` header to the end of the journal.
        """
        params = _ledger_filters(account, customer, invoice, kind, start, end)
        after: str | None = "0"
        while after is not None:
            query: list[tuple[str, str | int | float | bool | None]] = [
                *params,
                ("format", format),
                ("after", after),
                ("limit", limit),
            ]
            response = self._http.request("GET", "/v1/ledger/entries", params=query)
            if response.status_code >= 400:
                raise ServerError.of(response)
            yield response.content
            after = response.headers.get("meter-next")

    def trial_balance(self, as_of: datetime | str | None = None, by_customer: bool = False) -> JSONObject:
        """``GET /v1/ledger/trial-balance``: ``accounts`` (debit, credit, balance per currency), ``totals``...

        Over the entries created before ``as_of`` (all of them when None); ``by_customer`` adds ``customers``.
        """
        params = [("by_customer", "true" if by_customer else "false")]
        params += [("as_of", _time(as_of))] if as_of is not None else []
        balance: JSONObject = self._call("GET", "/v1/ledger/trial-balance", params=params)
        return balance

    def ledger_balances(self, customer: str | None = None, as_of: datetime | str | None = None) -> list[JSONObject]:
        """``GET /v1/ledger/balances``: per customer and currency, ``owed`` (receivable) and ``credit`` (balance)."""
        params = [("customer", customer)] if customer is not None else []
        params += [("as_of", _time(as_of))] if as_of is not None else []
        balances: list[JSONObject] = self._call("GET", "/v1/ledger/balances", params=params)
        return balances

    # Payments and dunning (a tenant key: admin to change, read to look)

    def record_payment(
        self,
        invoice_id: str,
        amount: str,
        method: str = "bank_transfer",
        reference: str | None = None,
        date: datetime | str | None = None,
    ) -> JSONObject:
        """``POST /v1/invoices/{id}/payments``: a payment received by hand (``bank_transfer``, ``check``...).

        ``amount`` is a decimal string in the invoice's currency (at most its minor unit's digits); more than what
        remains becomes the customer's credit balance. Returns the payment (``applied``, ``to_credit``...).
        """
        body: dict[str, Any] = {"amount": amount, "method": method}
        if reference is not None:
            body["reference"] = reference
        if date is not None:
            body["date"] = _time(date)
        payment: JSONObject = self._call("POST", f"/v1/invoices/{_segment(invoice_id)}/payments", body)
        return payment

    def list_payments(
        self,
        *,
        invoice: str | None = None,
        customer: str | None = None,
        status: str | None = None,
        method: str | None = None,
    ) -> list[JSONObject]:
        """``GET /v1/payments``, filtered: failed charges included, with their refunds."""
        wanted = (("invoice", invoice), ("customer", customer), ("status", status), ("method", method))
        payments: list[JSONObject] = self._call("GET", "/v1/payments", params={k: v for k, v in wanted if v})
        return payments

    def get_payment(self, payment_id: str) -> JSONObject:
        """``GET /v1/payments/{id}``: the payment with its refunds."""
        payment: JSONObject = self._call("GET", f"/v1/payments/{_segment(payment_id)}")
        return payment

    def refund_payment(self, payment_id: str, amount: str | None = None, reason: str = "") -> JSONObject:
        """``POST /v1/payments/{id}/refunds``: all that is left (``amount`` None) or part; the payment after it."""
        body: dict[str, Any] = {"reason": reason} if amount is None else {"amount": amount, "reason": reason}
        payment: JSONObject = self._call("POST", f"/v1/payments/{_segment(payment_id)}/refunds", body)
        return payment

    def invoice_attempts(self, invoice_id: str) -> list[JSONObject]:
        """``GET /v1/invoices/{id}/attempts``: every attempt to collect it, with its outcome and next retry."""
        attempts: list[JSONObject] = self._call("GET", f"/v1/invoices/{_segment(invoice_id)}/attempts")
        return attempts

    def pay_invoice(self, invoice_id: str) -> JSONObject:
        """``POST /v1/invoices/{id}/pay``: charges the customer's payment method now; ``{"invoice", "attempt"}``."""
        collected: JSONObject = self._call("POST", f"/v1/invoices/{_segment(invoice_id)}/pay")
        return collected

    def mark_uncollectible(self, invoice_id: str) -> JSONObject:
        """``POST /v1/invoices/{id}/mark-uncollectible``: writes the open invoice off; the invoice."""
        invoice: JSONObject = self._call("POST", f"/v1/invoices/{_segment(invoice_id)}/mark-uncollectible")
        return invoice

    def get_dunning(self) -> JSONObject:
        """``GET /v1/dunning``: ``{"retry_days", "after_last"}``."""
        settings: JSONObject = self._call("GET", "/v1/dunning")
        return settings

    def put_dunning(self, retry_days: Sequence[int], after_last: str = "uncollectible") -> JSONObject:
        """``PUT /v1/dunning``: retries ``retry_days`` days after the first failure; then ``after_last``."""
        settings: JSONObject = self._call(
            "PUT", "/v1/dunning", {"retry_days": list(retry_days), "after_last": after_last}
        )
        return settings

    def run_dunning(self, as_of: datetime | str | None = None) -> list[JSONObject]:
        """``POST /v1/dunning/run``: the attempts due now (or at ``as_of``), made; the attempts."""
        attempts: list[JSONObject] = self._call(
            "POST", "/v1/dunning/run", {} if as_of is None else {"as_of": _time(as_of)}
        )
        return attempts

    def payment_settings(self) -> JSONObject:
        """``GET /v1/payments/settings``: the Stripe secrets, shown by their last four characters."""
        settings: JSONObject = self._call("GET", "/v1/payments/settings")
        return settings

    def put_payment_settings(
        self, stripe_secret_key: str | None = None, stripe_webhook_secret: str | None = None
    ) -> JSONObject:
        """``PUT /v1/payments/settings``: sets the secrets given (None leaves one as it is); the settings, masked."""
        secrets = {"stripe_secret_key": stripe_secret_key, "stripe_webhook_secret": stripe_webhook_secret}
        body = {name: value for name, value in secrets.items() if value is not None}
        settings: JSONObject = self._call("PUT", "/v1/payments/settings", body)
        return settings

    # Alerts (admin to change, read to look) and reservations (ingest to make, settle and release)

    def create_alert(self, alert: Mapping[str, Any]) -> JSONObject:
        """``POST /v1/alerts``: ``{id, kind: usage|spend|balance|anomaly, meter?, thresholds, customer?|plan?...}``."""
        created: JSONObject = self._call("POST", "/v1/alerts", dict(alert))
        return created

    def list_alerts(self) -> list[JSONObject]:
        """``GET /v1/alerts``: the tenant's alerts."""
        found: list[JSONObject] = self._call("GET", "/v1/alerts")
        return found

    def delete_alert(self, alert_id: str) -> None:
        """``DELETE /v1/alerts/{id}``."""
        self._call("DELETE", f"/v1/alerts/{_segment(alert_id)}")

    def reserve(
        self, customer: str, reservation_id: str, target: str, amount: str, expires_in_seconds: int = 3600
    ) -> JSONObject:
        """``POST /v1/customers/{customer}/reservations``: holds ``amount`` of a feature or the credit balance.

        ``target``: a metered feature's id, or ``"balance"``. 409 ``insufficient`` when it does not fit; a retry with
        the same id answers the same reservation.
        """
        body = {"id": reservation_id, "target": target, "amount": amount, "expires_in_seconds": expires_in_seconds}
        held: JSONObject = self._call("POST", f"/v1/customers/{_segment(customer)}/reservations", body)
        return held

    def settle_reservation(self, reservation_id: str, actual: str) -> JSONObject:
        """``POST /v1/reservations/{id}/settle``: ends the hold, recording what the work used."""
        path = f"/v1/reservations/{_segment(reservation_id)}/settle"
        settled: JSONObject = self._call("POST", path, {"actual": actual})
        return settled

    def release_reservation(self, reservation_id: str) -> JSONObject:
        """``DELETE /v1/reservations/{id}``: ends the hold with nothing used."""
        released: JSONObject = self._call("DELETE", f"/v1/reservations/{_segment(reservation_id)}")
        return released

    # The background sender

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
        check_cache: float = 1.0,
    ) -> None:
        self._http = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)
        self._batch_size, self._interval, self._retry, self._compress = batch_size, flush_interval, retry, compress
        self._checks = _CheckCache(check_cache)
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

    async def check(self, customer: str, feature: str) -> JSONObject:
        """``Client.check``, awaited: may ``customer`` use ``feature`` now? (kept ``check_cache`` seconds)."""
        cached = self._checks.get(customer, feature)
        if cached is not None:
            return cached
        response = await self._http.get(f"/v1/customers/{_segment(customer)}/entitlements/{_segment(feature)}")
        if response.status_code >= 400:
            raise ServerError.of(response)
        answer: JSONObject = response.json()
        return self._checks.put(customer, feature, answer)

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
