"""The OpenAPI document against the route table and the app that serves it, so that the document cannot drift.

Both the router and `/openapi.json` are generated from one table (`meter.server.routes.ROUTES`); these tests check
the generation from the outside: every served route is documented with its method, path parameters, query
parameters (`filter[...]` included), request body and answers, nothing is documented that is not served, every
handler takes exactly the parameters its route documents (and reads no others), and every documented operation
is really served (a request to each reaches its handler: neither the router's 404 nor a 405).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import re
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin
from urllib.parse import urlencode

import msgspec
import pytest
import schemathesis
from meter.catalog.keys import KeyStore
from meter.server.app import MeterApp
from meter.server.openapi import EXAMPLES, openapi
from meter.server.router import Compiled
from meter.server.routes import BENCH_ROUTES, ROUTES
from meter.server.table import Route

METHODS = ("get", "put", "post", "delete", "patch")
#: Every route with a key can answer these (a bad header, no key, a key without the scope, a bug, a failed store).
KEYED = {400, 401, 403, 500, 503}
#: Every route that reads a body can answer these (bad JSON, too large, an unsupported encoding).
WITH_BODY = {400, 413, 415}


def template(pattern: str) -> str:
    """``/v1/meters/(?P<slug>[^/]+)/usage`` -> ``/v1/meters/{slug}/usage``."""
    path = re.sub(r"\(\?P<(\w+)>\[\^/\]\+\)", r"{\1}", pattern).replace("\\.", ".")
    assert not re.search(r"[()\[\]\\*+?|^$]", path), f"route pattern {pattern!r} is not a plain path with parameters"
    return path


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeterApp]:
    # The route table is built by the constructor; nothing is opened before the ASGI lifespan starts.
    app = MeterApp(tmp_path_factory.mktemp("routes"))
    yield app
    app.pool.shutdown()


def asgi(app: MeterApp, method: str, path: str, **request: Any) -> tuple[int, bytes]:
    """One request to the app in process: (status, body). `query`, `headers` and `body` are optional."""
    messages: list[dict[str, Any]] = []
    content = request.get("body", b"")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": content, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": urlencode(request.get("query", {}), doseq=True).encode(),
        "headers": [(k.encode(), v.encode()) for k, v in request.get("headers", {}).items()],
    }

    async def run() -> None:
        request.get("loop_thread", []).append(threading.current_thread())
        await app.http(scope, receive, send)

    asyncio.run(run())
    return int(messages[0]["status"]), bytes(messages[1]["body"])


@pytest.fixture(scope="module")
def document(app: MeterApp) -> dict[str, Any]:
    """The document as the app serves it."""
    status, body = asgi(app, "GET", "/openapi.json")
    assert status == 200
    return dict(json.loads(body))


def routed(app: MeterApp) -> dict[tuple[str, str], Compiled]:
    """The routes of meter's own API (drop-in routes follow their vendor's contract: tests/test_dropin.py)."""
    return {(c.method.lower(), template(c.pattern.pattern)): c for c in app.routes if c.route.documented}


def documented(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): op for path, ops in document["paths"].items() for method, op in ops.items() if method in METHODS
    }


def test_every_route_is_documented_and_every_documented_operation_is_routed(
    app: MeterApp, document: dict[str, Any]
) -> None:
    routes = set(routed(app))
    ops = set(documented(document))
    assert not routes - ops, f"routes missing from the OpenAPI document: {sorted(routes - ops)}"
    assert not ops - routes, f"documented operations no route serves: {sorted(ops - routes)}"
    assert len([c for c in app.routes if c.route.documented]) == len(routes), "two routes share a method and a path"


def test_the_document_matches_the_route_table_route_by_route(app: MeterApp, document: dict[str, Any]) -> None:
    """Method, path parameters, query and header parameters, request body, answers and security, one by one."""
    ops = documented(document)
    for (method, path), compiled in routed(app).items():
        route, op, where = compiled.route, ops[method, path], f"{method.upper()} {path}"
        params = op.get("parameters", [])
        # Path parameters: the router's groups, each required.
        in_path = {p["name"]: p for p in params if p["in"] == "path"}
        assert set(in_path) == set(compiled.pattern.groupindex) == set(re.findall(r"{(\w+)}", path)), where
        assert all(p["required"] for p in in_path.values()), where
        # Query and header parameters: those the route reads, with their style and whether they are required.
        for location in ("query", "header"):
            declared = {p.name: p for p in route.params if p.where == location}
            shown = {p["name"]: p for p in params if p["in"] == location}
            assert set(shown) == set(declared), f"{where}: {location} {sorted(shown)} != {sorted(declared)}"
            for name, p in declared.items():
                assert shown[name]["required"] == p.kind.required, f"{where}: {name}"
                assert shown[name].get("style") == ("deepObject" if p.kind.style == "deep" else None), where
                assert shown[name].get("explode", False) == (p.kind.style != "single"), f"{where}: {name}"
        # The request body: documented exactly when the route reads one, with its type or its media types.
        if route.body is None:
            assert "requestBody" not in op, where
        else:
            content = op["requestBody"]["content"]
            if route.body.type is not None:
                schema = content["application/json"]["schema"]
                body_type = route.body.type
                if get_origin(body_type) is list:  # a list of structs (PUT /v1/plans/{plan_id}/entitlements)
                    assert schema["type"] == "array", where
                    schema, body_type = schema["items"], get_args(body_type)[0]
                assert schema["$ref"] == f"#/components/schemas/{body_type.__name__}", where
            else:
                assert set(content) == set(route.body.accept), where
        # The answers: the success status, the route's own errors and those every route of its kind can give.
        expected = {route.status, *route.errors}
        expected |= KEYED if route.access != "public" else set()
        expected |= WITH_BODY if route.body is not None else set()
        expected |= {404} if compiled.pattern.groups else set()
        assert {int(s) for s in op["responses"]} == expected, where
        assert ("security" in op) == (route.access != "public"), where


def test_the_usage_filter_and_the_admin_routes_are_documented(document: dict[str, Any]) -> None:
    """The two gaps found when the document was kept by hand."""
    usage = documented(document)["get", "/v1/meters/{slug}/usage"]
    (filters,) = [p for p in usage["parameters"] if p["name"] == "filter"]
    assert filters["in"] == "query" and filters["style"] == "deepObject" and filters["explode"] is True
    admin = {(m, p) for m, p in documented(document) if p.startswith("/v1/admin/")}
    assert admin == {
        ("post", "/v1/admin/tenants"),
        ("get", "/v1/admin/tenants"),
        ("post", "/v1/admin/keys"),
        ("get", "/v1/admin/keys"),
        ("delete", "/v1/admin/keys/{key_id}"),
    }


def test_every_handler_takes_exactly_what_its_route_declares() -> None:
    """The router hands a handler its parameters; a handler that read the request's query itself would be unchecked."""
    for route in [*ROUTES, *BENCH_ROUTES]:
        where = f"{route.method} {route.path}"
        names = list(inspect.signature(route.handler).parameters)
        assert names[:2] == ["ctx", "request"], where
        assert names[2:] == route.arguments, f"{where}: the handler takes {names[2:]}, the route: {route.arguments}"
        tree = ast.parse(textwrap.dedent(inspect.getsource(route.handler)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("param", "params", "query", "headers"):
                raise AssertionError(f"{where}: the handler reads request.{node.attr}; declare a Param instead")


def test_a_literal_path_is_tried_before_a_template_it_fits() -> None:
    for i, route in enumerate(ROUTES):
        if "{" in route.path:
            continue
        for earlier in ROUTES[:i]:
            if earlier.method == route.method and "{" in earlier.path:
                pattern = re.sub(r"\{\w+\}", "[^/]+", earlier.path.replace(".", "\\."))
                assert not re.fullmatch(pattern, route.path), f"{earlier.path} hides {route.method} {route.path}"


def test_the_benchmark_route_is_served_only_when_asked_and_never_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Drop-in routes (/compat/<vendor>) follow their vendor's contract, not meter's document: tests/test_dropin.py.
    assert all(r.documented != r.path.startswith("/compat/") for r in ROUTES)
    assert not any(r.documented for r in BENCH_ROUTES)
    monkeypatch.setenv("METER_BENCH_ENDPOINTS", "1")
    app = MeterApp(tmp_path)
    try:
        assert any(c.route.path == "/bench/discard" for c in app.routes)
        assert "/bench/discard" not in openapi()["paths"]
    finally:
        app.pool.shutdown()


def test_an_unknown_path_is_a_404_and_a_known_one_with_another_method_a_405(app: MeterApp) -> None:
    assert asgi(app, "GET", "/v1/nothing-here")[0] == 404
    status, body = asgi(app, "PUT", "/v1/meters")
    assert status == 405 and json.loads(body)["code"] == "method_not_allowed"


def sample(op: dict[str, Any], path: str) -> tuple[str, dict[str, str], bytes]:
    """A request for a documented operation: its path with example ids, its required query, its body example."""
    query: dict[str, str] = {}
    for p in op.get("parameters", []):
        if p["in"] == "path":
            path = path.replace(f"{{{p['name']}}}", p.get("example", "nothing"))
        elif p["in"] == "query" and p["required"] and p["schema"].get("format") == "date":
            query[p["name"]] = "2026-11-01"
        elif p["in"] == "query" and p["required"]:
            query[p["name"]] = "2026-11-01T00:00:00Z" if p["name"] == "from" else "2026-11-02T00:00:00Z"
    content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    return path, query, json.dumps(content["example"]).encode() if "example" in content else b""


class OffTheLoop:
    """A store whose every call must run off the event loop's thread (on the app's pool).

    `failure()` and `stats()` are exempt: they read the engine's in-memory state (under the GIL, never a disk), and
    `/readyz` and `/metrics` must answer even while the pool is saturated; so is the key store's `known()`, which
    reads only the memory of keys authenticated before; so are the live state's `check()`, `standing()` and
    `balance()`, which read the state its own thread computed (a gateway's check must not wait for the pool).
    """

    EXEMPT = frozenset({"failure", "stats", "known", "check", "standing", "balance"})

    def __init__(self, store: Any, loop_thread: list[threading.Thread], calls: list[str]) -> None:
        self.wrapped, self.loop_thread, self.calls = store, loop_thread, calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.wrapped, name)
        if not callable(attr):
            return attr

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if name not in self.EXEMPT:
                assert threading.current_thread() not in self.loop_thread, f"{name}() ran on the event loop"
            self.calls.append(name)
            return attr(*args, **kwargs)

        return guarded


def test_every_documented_operation_is_served_and_its_store_calls_run_off_the_event_loop(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    """A request per operation (with a key it may use) reaches its handler: no routing 404 or 405, no 5xx.

    Every store (engine, keys, catalog, invoices, invoicer, reservations, live state, backfills) is wrapped so
    that a call made on the event loop's thread fails the request (a 500), and each operation that is not a probe
    must have made at least one store call.
    """
    app = MeterApp(tmp_path / "data")
    app.startup()
    try:
        assert isinstance(app.keys, KeyStore)
        operator, _ = app.keys.create_key(None, ["admin"])
        app.keys.create_tenant("acme")
        tenant, _ = app.keys.create_key("acme", ["ingest", "read", "export", "admin"])
        loop_thread: list[threading.Thread] = []
        calls: list[str] = []
        for name in ("engine", "keys", "billing", "invoices", "invoicer", "reservations", "live", "backfills"):
            setattr(app, name, OffTheLoop(getattr(app, name), loop_thread, calls))
        # Deletions last, so that what the others name exists where it can.
        ops = sorted(documented(document).items(), key=lambda item: item[0][0] == "delete")
        for (method, path), op in ops:
            url, query, body = sample(op, path)
            key = operator if path.startswith("/v1/admin/") or path == "/metrics" else tenant
            calls.clear()
            status, answer = asgi(
                app,
                method.upper(),
                url,
                query=query,
                body=body,
                headers={"authorization": f"Bearer {key}"},
                loop_thread=loop_thread,
            )
            where = f"{method.upper()} {url}: {status} {answer[:300]!r}"
            assert status != 405 and status < 500, where
            assert status != 404 or not json.loads(answer)["message"].startswith("no route"), where
            assert str(status) in op["responses"], where
            if op.get("security"):
                assert calls[0] == "known" and len(calls) > 1 or path == "/metrics", f"{where}: calls {calls}"
    finally:
        for name in ("engine", "keys", "billing", "invoices", "invoicer", "reservations", "live", "backfills"):
            if isinstance(store := getattr(app, name), OffTheLoop):
                setattr(app, name, store.wrapped)
        app.shutdown()


def test_every_operation_documents_its_answers(document: dict[str, Any]) -> None:
    """A success answer with its body, and every error answer an ErrorBody; every operation has an id."""
    ids = set()
    for (method, path), op in documented(document).items():
        statuses = op["responses"]
        assert any(s.startswith("2") for s in statuses), f"{method} {path} documents no success"
        for status, answer in statuses.items():
            if status[0] in "45":
                assert answer == {"$ref": f"#/components/responses/{status}"}, f"{method} {path} {status}"
        ids.add(op["operationId"])
    assert len(ids) == len(documented(document))
    for answer in document["components"]["responses"].values():
        assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_every_body_example_is_documented_with_its_body(document: dict[str, Any]) -> None:
    shown = {
        name
        for op in documented(document).values()
        for media in op.get("requestBody", {}).get("content", {}).values()
        if "$ref" in (schema := media["schema"].get("items", media["schema"]))
        and (name := schema["$ref"].rsplit("/", 1)[1]) in EXAMPLES
    }
    assert shown == set(EXAMPLES)


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    # schemathesis validates the document against the OpenAPI 3.1 meta-schema and resolves every reference.
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(documented(document))
    for operation in operations:
        for link in (
            operation.definition.raw["responses"]
            .get("201", operation.definition.raw["responses"].get("200", {}))
            .get("links", {})
            .values()
        ):
            assert link["operationId"] in {op["operationId"] for op in documented(document).values()}


def test_the_served_document_is_the_generated_one(document: dict[str, Any]) -> None:
    assert document == msgspec.json.decode(msgspec.json.encode(openapi()))


def test_routes_are_values_of_the_table(app: MeterApp) -> None:
    assert [c.route for c in app.routes] == ROUTES
    assert all(isinstance(r, Route) for r in ROUTES)
