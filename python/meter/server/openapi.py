"""The OpenAPI document of every route, with its parameters and the body of every answer it can give.

Schemas come from the msgspec Structs the routes decode and encode, so a field cannot drift; the list of paths,
parameters and statuses is kept here by hand, and ``tests/test_openapi.py`` checks it against the route table of
``app.py`` (every route documented, nothing documented that is not routed, every query parameter a handler reads),
while ``tests/test_bad_input.py`` checks every answer of the real server against it.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from meter.billing.invoices import CreditNote, CreditNoteBody, Invoice, InvoiceRun, InvoiceRunBody
from meter.catalog.billing import (
    Customer,
    MigrationBody,
    Plan,
    PlanBody,
    PlanVersion,
    PlanVersionBody,
    Product,
    Subscription,
)
from meter.catalog.keys import ApiKey, KeyBody, Scope, Tenant, TenantBody, TenantKeyBody
from meter.schemas import CreatedMeter, IngestResult, Meter, MeterSpec, SkippedEvents

__all__ = ["EXAMPLES", "ErrorBody", "openapi"]


class ErrorBody(msgspec.Struct):
    """Every 4xx and 5xx answer: a machine-readable ``code`` and a message that says what to fix."""

    code: str
    message: str
    #: Per-event problems (`POST /v1/events`) or per-item problems, when there are any.
    issues: list[dict[str, Any]] | None = None
    #: Ingest: events accepted with a meter that could not read them.
    warnings: list[dict[str, Any]] | None = None


class Deleted(msgspec.Struct):
    deleted: str


class Revoked(msgspec.Struct):
    revoked: str


class CreatedKey(msgspec.Struct):
    """A new key: the secret (shown once, never stored) and the stored record."""

    key: str
    id: str
    tenant: str | None
    scopes: list[Scope]
    display: str
    created_at: float
    revoked: bool = False


class UsageResult(msgspec.Struct):
    """Usage as JSON: one row per window and group.

    A row has ``window_start``, ``window_end``, ``value`` (a decimal string), ``events``, and one member per
    ``group_by`` dimension.
    """

    meter: str
    start: str = msgspec.field(name="from")
    end: str = msgspec.field(name="to")
    data: list[dict[str, Any]] = []


class Health(msgspec.Struct):
    status: str
    reason: str | None = None


_REF = "#/components/schemas/{name}"
#: A decimal amount or quantity as the API reads it: a JSON string, plain notation.
DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
_ERRORS = {
    400: "The request is malformed: its body, a query parameter or a header; the message says what to fix",
    401: "No valid API key: send 'Authorization: Bearer mk_live_...'",
    403: "The key may not use this route (a missing scope, or an operator key on tenant data or the reverse)",
    404: "Nothing with this id (or no such route)",
    409: "Already exists, or still in use by something else",
    413: "The body (or what it decompresses to) is over the limit",
    415: "Unsupported Content-Type or Content-Encoding",
    422: "An atomic batch held events that could not be applied, or a value overflowed; nothing was applied",
    429: "The ingest queue is full: retry after Retry-After seconds",
    500: "Internal error; nothing was applied",
    503: "The store has failed or is read-only (degraded); retry after Retry-After seconds",
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _list(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    scope: str | None,
    status: int,
    ok: dict[str, Any] | None,
    *,
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
    errors: tuple[int, ...] = (),
    description: str = "",
) -> dict[str, Any]:
    """One operation: its success answer ``status`` with schema ``ok``, and an ErrorBody for each error status.

    Every keyed route can answer 400 (a header), 401, 403, 500 and 503; a route with a body 413 and 415 too (the
    body is read and decompressed for every POST).
    """
    codes = set(errors)
    if scope is not None:
        codes |= {400, 401, 403, 500, 503}
    if body is not None:
        codes |= {400, 413, 415}
    params = params or []
    if any(p["in"] == "path" for p in params):
        codes.add(404)
    responses: dict[str, Any] = {str(status): {"description": "OK", **(_json(ok) if ok is not None else {})}}
    for code in sorted(codes):
        responses[str(code)] = {"$ref": f"#/components/responses/{code}"}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if scope is not None:
        op["security"] = [{"bearer": []}]
        op["description"] = (
            f"Needs a tenant key with the `{scope}` scope."
            if scope != "operator"
            else "Needs an operator key (one that belongs to no tenant)."
        )
    if description:
        op["description"] = f"{op.get('description', '')} {description}".strip()
    if body is not None:
        op["requestBody"] = {"required": True, **_json(_ref(body))}
        if body in EXAMPLES:
            op["requestBody"]["content"]["application/json"]["example"] = EXAMPLES[body]
    if params:
        op["parameters"] = list(params)
    return op


def _q(
    name: str,
    schema: dict[str, Any] | None = None,
    *,
    required: bool = False,
    description: str = "",
    repeat: bool = False,
) -> dict[str, Any]:
    if repeat:
        schema = {"type": "array", "items": schema or {"type": "string"}}
    param: dict[str, Any] = {"name": name, "in": "query", "required": required, "schema": schema or {"type": "string"}}
    if repeat:
        param["explode"] = True
    if description:
        param["description"] = description
    return param


def _path(name: str, example: str | None = None) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    if example is not None:
        param["example"] = example
    return param


_DATE_TIME = {"type": "string", "format": "date-time"}
_CLOUD_EVENT = {
    "type": "object",
    "description": "A CloudEvent (structured JSON). Each event is checked on its own: one that cannot be read is "
    "listed in `issues` by index and the others are accepted (unless `atomic`).",
    "properties": {
        "specversion": {"type": "string", "const": "1.0"},
        "id": {"type": "string", "description": "Idempotency key, unique per tenant and source"},
        "source": {"type": "string"},
        "type": {"type": "string"},
        "subject": {"type": "string", "description": "The customer"},
        "time": {**_DATE_TIME, "description": "When it happened; the server's receive time when absent"},
        "data": {"type": "object"},
    },
    "required": ["specversion", "id", "source", "type", "subject"],
}
_PRICE_EXAMPLE = {"id": "tokens", "currency": "EUR", "model": "per_unit", "meter": "tokens", "unit_price": "0.002"}
#: Request bodies that work on a fresh tenant, in this order (the examples of the document, and the seed of the
#: bad-input test, whose generated requests start from them).
EXAMPLES: dict[str, Any] = {
    "CloudEvent": {
        "specversion": "1.0",
        "id": "ev-1",
        "source": "gateway",
        "type": "llm.request",
        "subject": "cust-1",
        "time": "2026-11-23T10:00:00Z",
        "data": {"tokens": 120, "model": "small"},
    },
    "MeterSpec": {
        "slug": "tokens",
        "event_type": "llm.request",
        "aggregation": "sum",
        "value_property": "$.tokens",
        "group_by": {"model": "$.model"},
    },
    "Customer": {"id": "cust-1", "name": "Acme", "currency": "EUR"},
    "Product": {"id": "llm", "name": "LLM tokens", "meters": ["tokens"]},
    "PlanBody": {"id": "pro", "name": "Pro"},
    "PlanVersionBody": {
        "effective_from": "2026-01-01T00:00:00Z",
        "prices": [
            _PRICE_EXAMPLE,
            {"id": "platform", "currency": "EUR", "model": "flat", "cadence": "in_advance", "amount": "30.00"},
            {
                "id": "tiers",
                "currency": "EUR",
                "model": "graduated",
                "meter": "tokens",
                "free_allowance": "100",
                "tiers": [
                    {"from": "0", "up_to": "1000", "unit_price": "0.01"},
                    {"from": "1000", "unit_price": "0.005"},
                ],
                "maximum": "500.00",
            },
        ],
    },
    "Subscription": {
        "id": "sub-1",
        "customer": "cust-1",
        "plan": "pro",
        "version": 1,
        "start": "2026-01-01T00:00:00Z",
        "threshold": "1000.00",
        "discounts": [{"id": "launch", "start": "2026-01-01T00:00:00Z", "percent": "10"}],
        "credits": [{"id": "promo", "amount": "5.00", "start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"}],
    },
    "MigrationBody": {"version": 1, "at": "2026-11-15T00:00:00Z"},
    "InvoiceRunBody": {"period": "2026-11"},
    "CreditNoteBody": {"amount": "1.00", "reason": "goodwill"},
    "TenantBody": {"id": "acme", "name": "Acme Inc."},
    "KeyBody": {"tenant": "acme", "scopes": ["ingest", "read"]},
    "TenantKeyBody": {"scopes": ["ingest"]},
}
# The billing catalog: POST creates or replaces (plans: creates), GET lists or gets one, DELETE deletes what nothing
# refers to. (kind, item struct, body struct, status of a POST, example id)
_CATALOG: list[tuple[str, type[msgspec.Struct], str, int, str]] = [
    ("customers", Customer, "Customer", 200, "cust-1"),
    ("products", Product, "Product", 200, "llm"),
    ("plans", Plan, "PlanBody", 201, "pro"),
    ("subscriptions", Subscription, "Subscription", 200, "sub-1"),
]


def _catalog_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for kind, item, body, created, example in _CATALOG:
        name = item.__name__
        verb = (
            "Create a plan (its prices come with its versions)"
            if kind == "plans"
            else f"Create or replace a {name.lower()}"
        )
        paths[f"/v1/{kind}"] = {
            "post": _op(verb, "admin", created, _ref(name), body=body, errors=(404, 409)),
            "get": _op(f"List {kind}", "read", 200, _list(name)),
        }
        paths[f"/v1/{kind}/{{item_id}}"] = {
            "get": _op(f"Get a {name.lower()}", "read", 200, _ref(name), params=[_path("item_id", example)]),
            "delete": _op(
                f"Delete a {name.lower()} nothing refers to (else 409 in_use)",
                "admin",
                200,
                _ref("Deleted"),
                params=[_path("item_id", example)],
                errors=(409,),
            ),
        }
    return paths


def _components() -> dict[str, Any]:
    _, schemas = msgspec.json.schema_components(
        [
            IngestResult,
            MeterSpec,
            Meter,
            CreatedMeter,
            SkippedEvents,
            ErrorBody,
            Deleted,
            Revoked,
            UsageResult,
            Health,
            Tenant,
            TenantBody,
            ApiKey,
            KeyBody,
            TenantKeyBody,
            CreatedKey,
            InvoiceRun,
            *(item for _, item, _, _, _ in _CATALOG),
            PlanBody,
            PlanVersionBody,
            PlanVersion,
            MigrationBody,
            Invoice,
            CreditNote,
            InvoiceRunBody,
            CreditNoteBody,
        ],
        ref_template=_REF,
    )
    _refine(schemas)
    schemas["CloudEvent"] = _CLOUD_EVENT  # checked event by event by the engine, with its own time rules
    return schemas


def _refine(node: Any) -> None:
    """Say which strings a Decimal field takes where its type does not (msgspec: a string of format ``decimal``).

    Plain decimals: no exponent, no NaN or infinity (amounts travel as strings, never as JSON numbers).
    """
    if isinstance(node, dict):
        if node.get("format") == "decimal":
            node.setdefault("pattern", DECIMAL_PATTERN)
        for value in node.values():
            _refine(value)
    elif isinstance(node, list):
        for value in node:
            _refine(value)


def _operation_id(method: str, path: str) -> str:
    """``get /v1/meters/{slug}/usage`` -> ``get_v1_meters_slug_usage``: stable, for links and tools."""
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{method} {path}").strip("_")


#: What a created object's answer links to: (created by, operations it links to, parameter, where in the answer).
_LINKS: list[tuple[tuple[str, str, str], list[tuple[str, str]], str, str]] = [
    (
        ("post", "/v1/meters", "201"),
        [("get", "/v1/meters/{slug}"), ("get", "/v1/meters/{slug}/usage"), ("delete", "/v1/meters/{slug}")],
        "slug",
        "$response.body#/meter/slug",
    ),
    *(
        (
            ("post", f"/v1/{kind}", str(status)),
            [("get", f"/v1/{kind}/{{item_id}}"), ("delete", f"/v1/{kind}/{{item_id}}")],
            "item_id",
            "$response.body#/id",
        )
        for kind, _, _, status, _ in _CATALOG
    ),
    (
        ("post", "/v1/customers", "200"),
        [("get", "/v1/customers/{customer}/upcoming-invoice")],
        "customer",
        "$response.body#/id",
    ),
    (("post", "/v1/plans", "201"), [("post", "/v1/plans/{plan_id}/versions")], "plan_id", "$response.body#/id"),
    (
        ("post", "/v1/subscriptions", "200"),
        [("post", "/v1/subscriptions/{sub_id}/migrate")],
        "sub_id",
        "$response.body#/id",
    ),
    (("post", "/v1/admin/keys", "201"), [("delete", "/v1/admin/keys/{key_id}")], "key_id", "$response.body#/id"),
    (("post", "/v1/keys", "201"), [("delete", "/v1/keys/{key_id}")], "key_id", "$response.body#/id"),
    (
        ("post", "/v1/invoices/run", "200"),
        [
            ("get", "/v1/invoices/{invoice_id}"),
            ("post", "/v1/invoices/{invoice_id}/finalize"),
            ("post", "/v1/invoices/{invoice_id}/void"),
            ("post", "/v1/invoices/{invoice_id}/credit-notes"),
        ],
        "invoice_id",
        "$response.body#/invoices/0/id",
    ),
]


def _add_links(paths: dict[str, Any]) -> None:
    """OpenAPI links from what creates an object to what reads, changes or deletes it (create, get, delete)."""
    for (method, path, status), targets, name, value in _LINKS:
        if path not in paths or method not in paths[path]:
            continue
        links = paths[path][method]["responses"][status].setdefault("links", {})
        for target_method, target_path in targets:
            if target_path in paths and target_method in paths[target_path]:
                target = _operation_id(target_method, target_path)
                links[target] = {"operationId": target, "parameters": {name: value}}


def openapi() -> dict[str, Any]:
    events_body = {
        "required": True,
        "content": {
            "application/cloudevents-batch+json": {"schema": _list("CloudEvent"), "example": [EXAMPLES["CloudEvent"]]},
            "application/json": {"schema": _list("CloudEvent"), "example": [EXAMPLES["CloudEvent"]]},
            "application/cloudevents+json": {"schema": _ref("CloudEvent"), "example": EXAMPLES["CloudEvent"]},
        },
    }
    ingest = _op(
        "Ingest a batch of CloudEvents (gzip or zstd Content-Encoding accepted)",
        "ingest",
        200,
        _ref("IngestResult"),
        params=[
            _q(
                "atomic",
                {"type": "boolean"},
                description=(
                    "All or nothing: when one event cannot be applied, none is (422 batch_rejected). true/false, "
                    "1/0 or yes/no in any case; anything else is a 400"
                ),
            )
        ],
        errors=(413, 415, 422, 429),
        description="200 when at least one event was accepted (or was a duplicate); the others are in "
        "`issues`, and events a meter could not read are accepted with `warnings`. 400 "
        "`no_events_accepted` with `issues` when none was.",
    )
    ingest["requestBody"] = events_body
    usage_params = [
        _path("slug", "tokens"),
        _q("from", _DATE_TIME, required=True, description="Start (inclusive), RFC 3339"),
        _q("to", _DATE_TIME, required=True, description="End (exclusive), RFC 3339"),
        _q(
            "window_size",
            {"type": "string", "enum": ["minute", "hour", "day", "month"]},
            description="Windows of this size; the whole range when absent. Usage older than 40 days is kept per hour "
            "and older than 400 days per UTC day: windows finer than that there (or bounds off its whole "
            "hours or days) are a 400 `resolution_unavailable`",
        ),
        _q("subject", repeat=True, description="Only these customers"),
        _q("group_by", repeat=True, description="Dimensions (or `subject`) to group by"),
        {
            "name": "filter",
            "in": "query",
            "style": "deepObject",
            "explode": True,
            "schema": {"type": "object", "additionalProperties": {"type": "string"}},
            "description": "`filter[DIMENSION]=VALUE`: only rows whose dimension has this value; repeat a dimension "
            "to accept several values",
        },
        _q("tz", description="IANA time zone where day and month windows begin (default UTC)"),
        {
            "name": "accept",
            "in": "header",
            "required": False,
            "schema": {
                "type": "string",
                "enum": ["application/json", "text/csv", "application/vnd.apache.arrow.stream"],
            },
        },
    ]
    usage = _op("Usage over [from, to)", "read", 200, _ref("UsageResult"), params=usage_params)
    usage["responses"]["200"]["content"].update(
        {
            "text/csv": {"schema": {"type": "string"}},
            "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}},
        }
    )
    invoice_id = [_path("invoice_id")]
    metrics = _op("Prometheus metrics, across tenants", "operator", 200, None)
    metrics["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    paths: dict[str, Any] = {
        "/v1/events": {"post": ingest},
        "/v1/meters": {
            "post": _op(
                "Create a meter (backfilled from the retained events)",
                "admin",
                201,
                _ref("CreatedMeter"),
                body="MeterSpec",
                errors=(409,),
            ),
            "get": _op("List meters", "read", 200, _list("Meter")),
        },
        "/v1/meters/{slug}": {
            "get": _op("Get a meter", "read", 200, _ref("Meter"), params=[_path("slug", "tokens")]),
            "delete": _op(
                "Delete a meter and its usage (409 in_use while a price names it)",
                "admin",
                200,
                _ref("Deleted"),
                params=[_path("slug", "tokens")],
                errors=(409,),
            ),
        },
        "/v1/meters/{slug}/usage": {"get": usage},
        "/v1/meters/{slug}/skipped": {
            "get": _op(
                "Events of [from, to) the meter could not read, with why (pages: `limit` 1-1000, then `after`=`next`)",
                "read",
                200,
                _ref("SkippedEvents"),
                params=[
                    _path("slug", "tokens"),
                    _q("from", _DATE_TIME, required=True),
                    _q("to", _DATE_TIME, required=True),
                    _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    _q("after"),
                ],
            )
        },
        "/v1/admin/tenants": {
            "post": _op("Create a tenant", "operator", 201, _ref("Tenant"), body="TenantBody", errors=(409,)),
            "get": _op("List tenants", "operator", 200, _list("Tenant")),
        },
        "/v1/admin/keys": {
            "post": _op(
                "Create a key of a tenant, or (`tenant: null`) an operator key (the secret is shown once)",
                "operator",
                201,
                _ref("CreatedKey"),
                body="KeyBody",
                errors=(404,),
            ),
            "get": _op(
                "List keys (never their secrets)",
                "operator",
                200,
                _list("ApiKey"),
                params=[_q("tenant", description="Only this tenant's keys")],
            ),
        },
        "/v1/admin/keys/{key_id}": {
            "delete": _op(
                "Revoke any key but the last operator key (409 last_operator_key)",
                "operator",
                200,
                _ref("Revoked"),
                params=[_path("key_id")],
                errors=(409,),
            ),
        },
        "/v1/keys": {
            "post": _op(
                "Create a key of the caller's tenant (the secret is shown once)",
                "admin",
                201,
                _ref("CreatedKey"),
                body="TenantKeyBody",
            ),
            "get": _op("List the caller's tenant's keys (never their secrets)", "admin", 200, _list("ApiKey")),
        },
        "/v1/keys/{key_id}": {
            "delete": _op(
                "Revoke a key of the caller's tenant (another tenant's key is a 404)",
                "admin",
                200,
                _ref("Revoked"),
                params=[_path("key_id")],
            ),
        },
        **_catalog_paths(),
        "/v1/plans/{plan_id}/versions": {
            "post": _op(
                "Add a plan version (editing a plan)",
                "admin",
                201,
                _ref("PlanVersion"),
                body="PlanVersionBody",
                params=[_path("plan_id", "pro")],
            ),
        },
        "/v1/subscriptions/{sub_id}/migrate": {
            "post": _op(
                "Move a subscription to another version of its plan from `at`",
                "admin",
                200,
                _ref("Subscription"),
                body="MigrationBody",
                params=[_path("sub_id", "sub-1")],
            ),
        },
        "/v1/invoices/run": {
            "post": _op(
                "Compute (or recompute) the drafts of the cycles starting in a month: their fees in advance "
                "and the previous cycles' usage in arrears; subscriptions that cannot be invoiced are listed "
                "in `errors`",
                "admin",
                200,
                _ref("InvoiceRun"),
                body="InvoiceRunBody",
                errors=(404, 409),
            ),
        },
        "/v1/invoices/thresholds": {
            "post": _op("Issue the threshold invoices due now", "admin", 200, _ref("InvoiceRun"), errors=(413, 415)),
        },
        "/v1/invoices": {
            "get": _op(
                "List invoices",
                "read",
                200,
                _list("Invoice"),
                params=[
                    _q("status", {"type": "string", "enum": ["draft", "finalized", "void"]}),
                    _q("customer"),
                    _q("subscription"),
                    _q(
                        "period",
                        {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                        description="The month (YYYY-MM) the invoices' cycles start in",
                    ),
                    _q(
                        "usage_period",
                        {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                        description="The month (YYYY-MM) whose usage they bill in arrears",
                    ),
                ],
            ),
        },
        "/v1/invoices/{invoice_id}": {
            "get": _op("Get an invoice with its explained lines", "read", 200, _ref("Invoice"), params=invoice_id),
        },
        "/v1/invoices/{invoice_id}/finalize": {
            "post": _op(
                "Finalize (number) a draft", "admin", 200, _ref("Invoice"), params=invoice_id, errors=(409, 413, 415)
            ),
        },
        "/v1/invoices/{invoice_id}/void": {
            "post": _op(
                "Void a finalized invoice", "admin", 200, _ref("Invoice"), params=invoice_id, errors=(409, 413, 415)
            ),
        },
        "/v1/invoices/{invoice_id}/credit-notes": {
            "post": _op(
                "Credit part of a finalized invoice",
                "admin",
                201,
                _ref("CreditNote"),
                body="CreditNoteBody",
                params=invoice_id,
                errors=(409,),
            ),
        },
        "/v1/credit-notes": {"get": _op("List credit notes", "read", 200, _list("CreditNote"))},
        "/v1/customers/{customer}/upcoming-invoice": {
            "get": _op(
                "Preview the customer's next invoices",
                "read",
                200,
                _list("Invoice"),
                params=[_path("customer", "cust-1")],
            ),
        },
        "/healthz": {"get": _op("Alive", None, 200, _ref("Health"))},
        "/readyz": {"get": _op("Ready: the store is healthy", None, 200, _ref("Health"), errors=(503,))},
        "/metrics": {"get": metrics},
        "/openapi.json": {"get": _op("This document", None, 200, {"type": "object"})},
    }
    for path, ops in paths.items():
        for method, op in ops.items():
            op["operationId"] = _operation_id(method, path)
    _add_links(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "meter",
            "version": "1",
            "description": "Usage metering and billing. Every error answer is an ErrorBody.",
        },
        "components": {
            "schemas": _components(),
            "responses": {
                str(code): {"description": text, **_json(_ref("ErrorBody"))} for code, text in _ERRORS.items()
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
