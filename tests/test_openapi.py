"""The OpenAPI document against the route table, so that the document cannot drift from the code again.

Every route is documented, nothing is documented that is not served, and every query parameter a handler reads is
documented.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import textwrap
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import schemathesis
from meter.server.app import MeterApp
from meter.server.openapi import openapi

METHODS = ("get", "put", "post", "delete", "patch")


def template(pattern: str) -> str:
    """``/v1/meters/(?P<slug>[^/]+)/usage`` -> ``/v1/meters/{slug}/usage``."""
    path = re.sub(r"\(\?P<(\w+)>\[\^/\]\+\)", r"{\1}", pattern).replace("\\.", ".")
    assert not re.search(r"[()\[\]\\*+?|^$]", path), f"route pattern {pattern!r} is not a plain path with parameters"
    return path


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> MeterApp:
    # The route table is built by the constructor; nothing is opened before the ASGI lifespan starts.
    return MeterApp(tmp_path_factory.mktemp("routes"))


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi()


def routed(app: MeterApp) -> dict[tuple[str, str], Callable[..., Any]]:
    return {(method.lower(), template(pattern.pattern)): handler for method, pattern, _, handler in app.routes}


def documented(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): op for path, ops in document["paths"].items() for method, op in ops.items() if method in METHODS
    }


def test_every_route_is_documented_and_every_documented_operation_is_routed(
    app: MeterApp, document: dict[str, Any]
) -> None:
    routes = set(routed(app))
    ops = set(documented(document))
    assert not routes - ops, f"routes missing from python/meter/server/openapi.py: {sorted(routes - ops)}"
    assert not ops - routes, f"documented operations no route serves: {sorted(ops - routes)}"


def asgi_get(app: MeterApp, path: str) -> tuple[int, bytes]:
    """GET ``path`` from the app in process (no lifespan: nothing is opened)."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": []}
    asyncio.run(app.http(scope, receive, send))
    return int(messages[0]["status"]), bytes(messages[1]["body"])


def test_an_unknown_path_is_a_404(app: MeterApp) -> None:
    assert asgi_get(app, "/v1/nothing-here")[0] == 404


def query_parameters_read(handler: Callable[..., Any]) -> set[str]:
    """The query parameters a handler reads.

    That is: ``request.param("x")``, ``request.params("x")``, a loop over a tuple of names passed to them, and
    ``filter[...]`` (read from ``request.query``).
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(handler)))
    loops = {
        node.target.id: node.iter
        for node in ast.walk(tree)
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.args
            and node.func.attr in ("param", "params", "flag")
        ):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
            elif isinstance(arg, ast.Name) and isinstance(loops.get(arg.id), (ast.Tuple, ast.List)):
                names |= {e.value for e in loops[arg.id].elts if isinstance(e, ast.Constant)}  # type: ignore[union-attr]
            else:
                raise AssertionError(f"{handler.__qualname__} reads a query parameter this test cannot name")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("filter["):
            names.add("filter")
    return names


def test_every_query_parameter_a_handler_reads_is_documented(app: MeterApp, document: dict[str, Any]) -> None:
    ops = documented(document)
    for (method, path), handler in routed(app).items():
        params = ops[method, path].get("parameters", [])
        query = {p["name"] for p in params if p["in"] == "query"}
        read = query_parameters_read(handler)
        assert read == query, f"{method.upper()} {path}: the handler reads {sorted(read)}, documented: {sorted(query)}"
        names = {p["name"] for p in params if p["in"] == "path"}
        assert names == set(re.findall(r"{(\w+)}", path)), f"{method.upper()} {path}: path parameters {names}"


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


def test_the_served_document_is_the_generated_one(app: MeterApp) -> None:
    status, body = asgi_get(app, "/openapi.json")
    assert status == 200
    assert msgspec.json.decode(body) == msgspec.json.decode(msgspec.json.encode(openapi()))
