"""The vocabulary of the route table: a `Route` says everything the router and `/openapi.json` need to know.

Each route module (`routes/*.py`) declares its routes as `Route` values; `routes/__init__.py` joins them into
`ROUTES`, the one table. `router.py` compiles it into the matcher the app serves, `openapi.py` renders it into the
document, and `tests/test_openapi.py` checks that the two agree and that every handler takes exactly what its
route declares. Nothing else lists routes, so the document cannot drift from what is served.

A route declares:
- `method`, `path` (a template: literal segments and `{name}` parameters, each one whole segment), `access` (the
  tenant scope a key needs, `"operator"`, or `"public"`), the handler;
- its request body (`Body`: the msgspec type the router decodes it into and hands the handler as ``body``), its
  query and header parameters (`Param`: name, `Kind`, description; the router reads them and hands the handler
  each one as a keyword argument), and its path parameters (`PathParam`, handed over as strings);
- its success status and body type (a msgspec type, or media types with schemas), and the error statuses beyond
  the ones every route of its kind can give (see `openapi.py`).

Invariants (checked when a `Route` is made, a ValueError at import otherwise): every `{name}` in the path has its
`PathParam` and no other; a path is plain ASCII letters, digits, `/`, `-`, `_`, `.` besides its parameters; every
/v1/admin/ route has `"operator"` access (which `auth.py` enforces whatever the table says).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec

from meter.billing.invoicing import parse_month
from meter.catalog.keys import Scope
from meter.exceptions import InvalidInput
from meter.money.revenue.days import parse_day
from meter.server.http import Answer, Request
from meter.server.inputs import parse_bool, parse_time, read_filters, read_limit

__all__ = [
    "BOOL",
    "FILTER",
    "LIMIT",
    "MONTH",
    "TEXT",
    "TEXTS",
    "TIME",
    "Access",
    "Body",
    "Handler",
    "Kind",
    "Param",
    "PathParam",
    "Route",
    "enum",
]

#: Who may call a route: a tenant key with this scope, an operator key, or anyone.
Access = Scope | Literal["operator", "public"]
#: A handler: ``(context, request, **path and query arguments[, body=...]) -> Answer``.
Handler = Callable[..., Awaitable[Answer]]


@dataclass(frozen=True)
class Kind:
    """How a parameter is read from a request, and what it is in the document.

    `type` is the parameter's type as the document shows it (msgspec renders its JSON Schema, `schema_extra` adds
    what the type cannot say); `read(request, name)` gives the handler's value, or raises a 400.
    """

    type: Any
    read: Callable[[Request, str], Any]
    required: bool = False
    #: "single": `?x=1`; "repeat": `?x=1&x=2` (a list); "deep": `?x[a]=1&x[b]=2` (an OpenAPI deepObject).
    style: Literal["single", "repeat", "deep"] = "single"
    schema_extra: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        return {**msgspec.json.schema(self.type), **self.schema_extra}


def _month(request: Request, name: str) -> str | None:
    if (month := request.param(name)) is not None:
        parse_month(month, name)  # InvalidInput (400 invalid_period) for anything but YYYY-MM
    return month


def _day(request: Request, name: str, required: bool = True) -> date | None:
    value = request.param(name)
    if not value and required:
        raise InvalidInput(f"'{name}' is required, as a day YYYY-MM-DD", code="invalid_query")
    return parse_day(value, name) if value is not None else None


#: Optional text, as given.
TEXT = Kind(str, lambda r, n: r.param(n))
#: Repeatable text, every value in order.
TEXTS = Kind(list[str], lambda r, n: r.params(n), style="repeat")
#: A required RFC 3339 instant with an offset.
TIME = Kind(datetime, lambda r, n: parse_time(r.param(n), n), required=True, schema_extra={"format": "date-time"})
#: A boolean: absent is false.
BOOL = Kind(bool, lambda r, n: parse_bool(r.param(n), n))
#: A page size, 100 when absent.
LIMIT = Kind(Annotated[int, msgspec.Meta(ge=1, le=1000)], read_limit)
#: A month as YYYY-MM (checked; handed over as text).
MONTH = Kind(Annotated[str, msgspec.Meta(pattern="^[0-9]{4}-[0-9]{2}$")], _month)
#: An optional day as YYYY-MM-DD.
DAY = Kind(date, lambda r, n: _day(r, n, required=False), schema_extra={"format": "date"})
#: A required day as YYYY-MM-DD.
REQUIRED_DAY = Kind(date, _day, required=True, schema_extra={"format": "date"})
#: `name[KEY]=VALUE` pairs: each key's values.
FILTER = Kind(dict[str, str], read_filters, style="deep")


def enum(*values: str) -> Kind:
    """Optional text the document lists the values of; handed over as given (the reader refuses other values)."""
    return Kind(str, lambda r, n: r.param(n), schema_extra={"enum": list(values)})


@dataclass(frozen=True)
class Param:
    """A query (or header) parameter: read by the router, handed to the handler as keyword `arg`."""

    name: str
    kind: Kind
    description: str = ""
    where: Literal["query", "header"] = "query"
    #: The handler's keyword; by default the name (with a `_` after a Python keyword: `from` -> `from_`).
    arg: str = ""

    @property
    def argument(self) -> str:
        if self.arg:
            return self.arg
        name = self.name.replace("-", "_")
        return f"{name}_" if keyword.iskeyword(name) else name

    def read(self, request: Request) -> Any:
        if self.where == "header":
            return request.headers.get(self.name, "")
        return self.kind.read(request, self.name)


@dataclass(frozen=True)
class PathParam:
    """A path parameter (`{name}`): one whole, non-empty segment, handed to the handler as a string."""

    name: str
    example: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Body:
    """A request body.

    With `type`, the router decodes the body into it (a mismatch is a 400 `code`) and hands it over as ``body``;
    without, the handler gets the raw bytes in `request.body` and `content` documents it. With `accept`, a
    Content-Type outside it is a 415 before anything else is read.
    """

    type: Any = None
    code: str = "invalid_body"
    #: Media type -> (schema, example) for a body the router does not decode.
    content: dict[str, tuple[dict[str, Any], Any]] = field(default_factory=dict)
    accept: tuple[str, ...] = ()
    accept_message: str = ""


_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+|\{[a-z_]+\}")


@dataclass(frozen=True)
class Route:
    """One operation: what it takes, who may call it, what it answers, and the handler that does it."""

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    access: Access
    handler: Handler
    summary: str
    status: int = 200
    #: The success body's type (a msgspec Struct, `list[...]`, `dict[str, Any]`), or None (see `media`).
    returns: Any = None
    #: Success bodies in other media types: media type -> schema (beside `returns` as JSON).
    media: dict[str, dict[str, Any]] = field(default_factory=dict)
    body: Body | None = None
    path_params: tuple[PathParam, ...] = ()
    params: tuple[Param, ...] = ()
    #: Error statuses beyond those of every route of its kind (keyed: 400 401 403 500 503; body: 413 415; path: 404).
    errors: tuple[int, ...] = ()
    description: str = ""
    #: False for a route that is served but not part of the API (the benchmark's `/bench/discard`).
    documented: bool = True
    #: A drop-in route's errors in its vendor's shape: meter's error answer made the vendor's (`meter.server.dropin`).
    errors_as: Callable[[Answer], Answer] | None = None

    def __post_init__(self) -> None:
        segments = self.path.strip("/").split("/")
        if not (self.path.startswith("/") and all(_SEGMENT.fullmatch(s) for s in segments)):
            raise ValueError(f"{self.path!r}: a path is /-separated segments of [A-Za-z0-9_.-] or {{name}}")
        names = [s[1:-1] for s in segments if s.startswith("{")]
        declared = [p.name for p in self.path_params]
        if names != declared:
            raise ValueError(f"{self.method} {self.path}: path parameters {names}, declared {declared}")
        if self.path.startswith("/v1/admin/") and self.access != "operator":
            raise ValueError(f"{self.method} {self.path}: every /v1/admin/ route is the operator's")

    @property
    def arguments(self) -> list[str]:
        """The keyword arguments the handler takes after (context, request), in order."""
        return (
            [p.name for p in self.path_params]
            + [p.argument for p in self.params]
            + (["body"] if self.body is not None and self.body.type is not None else [])
        )
