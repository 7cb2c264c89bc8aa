"""The OpenAPI 3.1 document, generated from the route table: nothing in it is written twice.

Every operation comes from one `Route` of `routes.ROUTES` (the list the router serves): its method and path, the
security and description its access implies, its path, query and header parameters with their schemas and
descriptions, its request body, its success answer and every error status it can give. Schemas come from the msgspec
types the table names (`msgspec.json.schema_components`), so a field cannot drift either. What is written here is
only what a table cannot say: the meaning of each error status, the statuses every route of a kind can give, and the
links from what creates an object to what reads, changes or deletes it.

`tests/test_openapi.py` checks the document against the table and the served app (every route, parameter, body and
status), and `tests/test_bad_input.py` checks every answer of the real server against the document.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, get_args, get_origin

import msgspec

from meter.server.examples import EXAMPLES
from meter.server.models import CLOUD_EVENT, ErrorBody
from meter.server.routes import ROUTES
from meter.server.table import Param, PathParam, Route

__all__ = ["DECIMAL_PATTERN", "EXAMPLES", "openapi", "operation_id"]

_REF = "#/components/schemas/{name}"
#: A decimal amount or quantity as the API reads it: a JSON string, plain notation.
DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
#: What each error status means, whatever the route (`components/responses`).
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
    # Never "nothing was applied": a bug may strike after a write (see errors.INTERNAL_MESSAGE).
    500: "Internal error (logged by the server); the request may have been applied: read the state back first",
    503: "The store has failed or is read-only (degraded); retry after Retry-After seconds",
}
#: Every keyed route can answer 400 (a header), 401, 403, 500 and 503.
KEYED_ERRORS = frozenset({400, 401, 403, 500, 503})
#: A route with a body: 400, 413 and 415 too (the body is read and decompressed for every POST).
BODY_ERRORS = frozenset({400, 413, 415})


def error_statuses(route: Route) -> set[int]:
    """Every error status `route` can answer: its own, and those of every route of its kind."""
    codes = set(route.errors)
    if route.access != "public":
        codes |= KEYED_ERRORS
    if route.body is not None:
        codes |= BODY_ERRORS
    if route.path_params:
        codes.add(404)
    return codes


def operation_id(method: str, path: str) -> str:
    """``get /v1/meters/{slug}/usage`` -> ``get_v1_meters_slug_usage``: stable, for links and tools."""
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{method} {path}").strip("_")


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _path_param(p: PathParam) -> dict[str, Any]:
    param: dict[str, Any] = {
        "name": p.name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    }
    if p.description:
        param["description"] = p.description
    if p.example is not None:
        param["example"] = p.example
    return param


def _param(p: Param) -> dict[str, Any]:
    param: dict[str, Any] = {"name": p.name, "in": p.where, "required": p.kind.required, "schema": p.kind.schema()}
    if p.kind.style == "repeat":
        param["explode"] = True
    elif p.kind.style == "deep":
        param["style"], param["explode"] = "deepObject", True
    if p.description:
        param["description"] = p.description
    return param


class _Schemas:
    """JSON Schemas of the table's types: each type's schema (with $refs), and the components they refer to."""

    def __init__(self, types: Iterable[Any]) -> None:
        self.types = list(dict.fromkeys(types))  # unique, in first-seen order (types are hashable)
        schemas, self.components = msgspec.json.schema_components([ErrorBody, *self.types], ref_template=_REF)
        self.by_type: dict[Any, dict[str, Any]] = dict(zip(self.types, schemas[1:], strict=True))
        _refine(self.components)
        self.components["CloudEvent"] = CLOUD_EVENT  # checked event by event by the engine, with its own time rules

    def __getitem__(self, type_: Any) -> dict[str, Any]:
        return self.by_type[type_]


def _types(routes: list[Route]) -> Iterable[Any]:
    for route in routes:
        if route.returns is not None:
            yield route.returns
        if route.body is not None and route.body.type is not None:
            yield route.body.type


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    content = {"application/json": {"schema": schemas[route.returns]}} if route.returns is not None else {}
    content.update({media: {"schema": schema} for media, schema in route.media.items()})
    success: dict[str, Any] = {"description": "OK"}
    if content:
        success["content"] = content
    responses: dict[str, Any] = {str(route.status): success}
    for code in sorted(error_statuses(route)):
        responses[str(code)] = {"$ref": f"#/components/responses/{code}"}
    op: dict[str, Any] = {"summary": route.summary, "responses": responses}
    if route.access != "public":
        op["security"] = [{"bearer": []}]
        op["description"] = (
            f"Needs a tenant key with the `{route.access}` scope."
            if route.access != "operator"
            else "Needs an operator key (one that belongs to no tenant)."
        )
    if route.description:
        op["description"] = f"{op.get('description', '')} {route.description}".strip()
    if route.body is not None:
        body = route.body
        if body.type is not None:
            # A list body (PUT /v1/plans/{plan_id}/entitlements) shows a list of its item's example.
            listed = get_origin(body.type) is list
            name = (get_args(body.type)[0] if listed else body.type).__name__
            media: dict[str, Any] = {"schema": schemas[body.type]}
            if name in EXAMPLES:
                media["example"] = [EXAMPLES[name]] if listed else EXAMPLES[name]
            op["requestBody"] = {"required": True, "content": {"application/json": media}}
        else:
            op["requestBody"] = {
                "required": True,
                "content": {m: {"schema": schema, "example": example} for m, (schema, example) in body.content.items()},
            }
    parameters = [_path_param(p) for p in route.path_params] + [_param(p) for p in route.params]
    if parameters:
        op["parameters"] = parameters
    op["operationId"] = operation_id(route.method.lower(), route.path)
    return op


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


#: What a created object's answer links to: (created by, operations it links to, parameter, where in the answer).
_LINKS: list[tuple[tuple[str, str], list[tuple[str, str]], str, str]] = [
    (
        ("post", "/v1/meters"),
        [("get", "/v1/meters/{slug}"), ("get", "/v1/meters/{slug}/usage"), ("delete", "/v1/meters/{slug}")],
        "slug",
        "$response.body#/meter/slug",
    ),
    *(
        (
            ("post", f"/v1/{kind}"),
            [("get", f"/v1/{kind}/{{item_id}}"), ("delete", f"/v1/{kind}/{{item_id}}")],
            "item_id",
            "$response.body#/id",
        )
        for kind in ("customers", "products", "plans", "subscriptions")
    ),
    (
        ("post", "/v1/customers"),
        [("get", "/v1/customers/{customer}/upcoming-invoice")],
        "customer",
        "$response.body#/id",
    ),
    (("post", "/v1/plans"), [("post", "/v1/plans/{plan_id}/versions")], "plan_id", "$response.body#/id"),
    (("post", "/v1/subscriptions"), [("post", "/v1/subscriptions/{sub_id}/migrate")], "sub_id", "$response.body#/id"),
    (("post", "/v1/admin/keys"), [("delete", "/v1/admin/keys/{key_id}")], "key_id", "$response.body#/id"),
    (("post", "/v1/keys"), [("delete", "/v1/keys/{key_id}")], "key_id", "$response.body#/id"),
    (
        ("post", "/v1/invoices/run"),
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
    for (method, path), targets, name, value in _LINKS:
        if path not in paths or method not in paths[path]:
            continue
        success = next(s for s in paths[path][method]["responses"] if s.startswith("2"))
        links = paths[path][method]["responses"][success].setdefault("links", {})
        for target_method, target_path in targets:
            if target_path in paths and target_method in paths[target_path]:
                target = operation_id(target_method, target_path)
                links[target] = {"operationId": target, "parameters": {name: value}}


def openapi(routes: list[Route] | None = None) -> dict[str, Any]:
    """The document of `routes` (the served table by default); the undocumented ones (`documented=False`) left out."""
    table = [r for r in (ROUTES if routes is None else routes) if r.documented]
    schemas = _Schemas(_types(table))
    paths: dict[str, Any] = {}
    for route in table:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    _add_links(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "meter",
            "version": "1",
            "description": "Usage metering and billing. Every error answer is an ErrorBody.",
        },
        "components": {
            "schemas": schemas.components,
            "responses": {
                str(code): {"description": text, **_json({"$ref": _REF.format(name="ErrorBody")})}
                for code, text in _ERRORS.items()
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
